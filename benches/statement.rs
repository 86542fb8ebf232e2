//! What one call to SQLite costs through sqlx, which runs each connection on a thread of its
//! own: every call is a message to that thread and a wake-up back. This fixed cost is why the
//! store counts its statements per pull (docs/benchmarks.md), and why the writer releases a
//! finished savepoint in the same call that opens the next (`store/writer.rs`).
//!
//! Run: `cargo bench --bench statement`. Reports wall and process CPU time a call, and
//! `SAVEPOINT` + `RELEASE` as two calls beside the same two statements in one call.

use std::time::Instant;

use sqlx::Executor;

const CALLS: u32 = 20_000;

/// User and system CPU seconds of this process so far (`/proc/self/stat`, 1/100 s ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("procfs");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / 100.0
}

#[tokio::main]
async fn main() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/statement.db?mode=rwc", dir.path().display());
    let pool = sqlx::AnyPool::connect(&url).await.expect("open");
    let mut conn = pool.acquire().await.expect("connection");
    conn.execute("PRAGMA journal_mode = WAL")
        .await
        .expect("wal");
    conn.execute("BEGIN").await.expect("begin");

    let cases: [(&str, &[&str]); 3] = [
        ("SELECT 1 (one call)", &["SELECT 1"]),
        (
            "SAVEPOINT, RELEASE (two calls)",
            &["SAVEPOINT m", "RELEASE m"],
        ),
        ("SAVEPOINT; RELEASE (one call)", &["SAVEPOINT m; RELEASE m"]),
    ];
    println!("{CALLS} rounds each, on one connection inside a transaction");
    for (name, calls) in cases {
        let (wall, cpu) = (Instant::now(), cpu_seconds());
        for _ in 0..CALLS {
            for sql in calls {
                conn.execute(*sql).await.expect("statement");
            }
        }
        let per = |total: f64| total * 1e6 / f64::from(CALLS);
        println!(
            "{name:<32} {:>6.1} µs wall, {:>6.1} µs CPU a round",
            per(wall.elapsed().as_secs_f64()),
            per(cpu_seconds() - cpu)
        );
    }
    conn.execute("COMMIT").await.expect("commit");
}
