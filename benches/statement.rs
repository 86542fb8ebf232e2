//! What one call to SQLite costs through sqlx, which runs each connection on a thread of its
//! own: every call is a message to that thread and a wake-up back. This fixed cost is why the
//! store counts its statements per pull (docs/benchmarks.md), and why the writer releases a
//! finished savepoint in the same call that opens the next (`store/writer.rs`).
//!
//! Run: `cargo bench --bench statement`. Reports wall and process CPU time a call, and
//! `SAVEPOINT` + `RELEASE` as two calls beside the same two statements in one call. Then the
//! cost of sqlx's `Any` driver, which the store uses to speak SQLite and Postgres with one
//! code path: the same reads through `Any` and through the SQLite driver itself, side by side.
//! Last, a read through the pool with and without sqlx's ping before each acquire.

use std::time::Instant;

use sqlx::{Connection, Executor, Row};

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
    drop(conn);
    pool.close().await;
    any_against_native(&url).await;
}

/// Rows like a consent's (a dozen columns of text and integers): a point read by key and a
/// read of 1,000 rows (a scheduler batch), through `Any` and through `SqliteConnection`.
async fn any_against_native(url: &str) {
    const ROWS: i64 = 1_000;
    let mut native = sqlx::SqliteConnection::connect(url).await.expect("native");
    native
        .execute(
            "CREATE TABLE wide (id INTEGER PRIMARY KEY, a TEXT, b TEXT, c TEXT, d TEXT, e TEXT,
             f INTEGER, g INTEGER, h INTEGER, i INTEGER, j TEXT, k INTEGER)",
        )
        .await
        .expect("table");
    native.execute("BEGIN").await.expect("begin");
    for id in 0..ROWS {
        sqlx::query(
            "INSERT INTO wide VALUES ($1, 'consent-0000000000', 'link-000000', 'active', 'month',
             'monitoring', 5, 12, 1700000000000, 1700000000000, '2025-01-01', 0)",
        )
        .bind(id)
        .execute(&mut native)
        .await
        .expect("row");
    }
    native.execute("COMMIT").await.expect("commit");
    let mut any = sqlx::AnyConnection::connect(url).await.expect("any");

    const ROUNDS: u32 = 500;
    let point = "SELECT * FROM wide WHERE id = $1";
    let batch = "SELECT * FROM wide ORDER BY id LIMIT 1000";
    println!("reads of a 12-column row, {ROUNDS} rounds each");
    macro_rules! time {
        ($name:expr, $conn:expr, $sql:expr, $per_round:expr) => {{
            let (wall, cpu) = (Instant::now(), cpu_seconds());
            for round in 0..ROUNDS {
                for _ in 0..$per_round {
                    let rows = sqlx::query($sql)
                        .bind(i64::from(round) % ROWS)
                        .fetch_all(&mut $conn)
                        .await
                        .expect("read");
                    let first: i64 = rows[0].try_get(0).expect("id");
                    std::hint::black_box((first, rows.len()));
                }
            }
            let per = |total: f64| total * 1e6 / f64::from(ROUNDS * $per_round);
            println!(
                "{:<36} {:>8.1} µs wall, {:>8.1} µs CPU a read",
                $name,
                per(wall.elapsed().as_secs_f64()),
                per(cpu_seconds() - cpu)
            );
        }};
    }
    time!("point read, SQLite driver", native, point, 20);
    time!("point read, Any driver", any, point, 20);
    time!("1,000 rows, SQLite driver", native, batch, 1);
    time!("1,000 rows, Any driver", any, batch, 1);
    drop((native, any));
    pooled_reads(url, point).await;
}

/// A point read through the pool (how the store reads), with sqlx's default ping of the
/// connection before each acquire and without it (`store/db.rs` turns it off on SQLite).
async fn pooled_reads(url: &str, point: &str) {
    const READS: u32 = 10_000;
    for (name, ping) in [
        ("pooled point read, ping first", true),
        ("pooled point read, no ping", false),
    ] {
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(ping)
            .connect(url)
            .await
            .expect("pool");
        let (wall, cpu) = (Instant::now(), cpu_seconds());
        for i in 0..READS {
            let row = sqlx::query(point)
                .bind(i64::from(i % 1000))
                .fetch_optional(&pool)
                .await
                .expect("read");
            std::hint::black_box(row);
        }
        let per = |total: f64| total * 1e6 / f64::from(READS);
        println!(
            "{name:<36} {:>8.1} µs wall, {:>8.1} µs CPU a read",
            per(wall.elapsed().as_secs_f64()),
            per(cpu_seconds() - cpu)
        );
        pool.close().await;
    }
}
