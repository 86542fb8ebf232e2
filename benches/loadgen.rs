//! The project's load generator. It runs the release service as a child process, so its CPU
//! time and peak memory can be read from `/proc`, and measures a baseline in the same run:
//!
//! ```text
//! cargo bench --bench loadgen -- intake [--requests N] [--concurrency C] [--rate R]
//! cargo bench --bench loadgen -- e2e [--consents N] [--concurrency C] [--days D]
//! cargo bench --bench loadgen -- payload [--mib M]   # one pull of an M MiB document
//! cargo bench --bench loadgen -- payload --per-day N  # six months of a busy account
//! cargo bench --bench loadgen -- smoke        # small runs of both; checks correctness only
//! ```
//!
//! Any run also takes:
//! - `--service-log FILE`: the service's stdout and stderr go to FILE instead of nowhere;
//! - `--service-filter DIRECTIVES`: its `RUST_LOG` (`warn` unless given; logs are JSON).
//!   `--service-filter sqlx::query=debug` logs every statement, which is how the statements a
//!   pull costs were counted (docs/benchmarks.md);
//! - `--service-bin PATH`: run another build of the service (say, the last commit's, copied
//!   aside), so two builds compare under the same load generator and sandbox;
//! - `--service-env NAME=VALUE` (repeatable): one more setting for the service, to compare
//!   settings (say, `DATABASE_MAX_CONNECTIONS=4`) side by side.
//!
//! - `intake`: N unique authenticated webhooks (secret-key scheme) at concurrency C (closed
//!   loop), or at R a second (open loop: latency counts from when each was due). Baseline: a
//!   bare axum handler (this binary, `bare`), in its own process, under the same load.
//! - `e2e`: N consents through the real journey against the standalone sandbox, one pull
//!   each fired at once, until every pull has completed. The sandbox's own CPU time for the
//!   same pulls is the baseline. Reports how long accepting each pull took (the `POST`, at the
//!   client) and completing it (from its `created_at` to its `completed_at`, the service's
//!   clock). With `--days D` each pull asks for the last D days (the
//!   sandbox gives about one transaction a day), as a monitoring pull of months would; without
//!   it, the window since the consent began, which holds a couple of transactions.
//! - `payload`: one pull whose Insights document the sandbox pads to M MiB, fetched, stored and
//!   served back in full (uncompressed); reports how far the service's peak RSS (and its
//!   anonymous memory) rose above what it was before the pull, and how long webhooks sent
//!   every 20 ms meanwhile waited for their commit. With `--per-day N`, instead, a
//!   Transactions pull of the last 180 days of an account with N transactions a day (~250
//!   bytes each), every one of which goes into the consent's timeline.
//!
//! Every run checks that each acknowledged item is stored: each 2xx webhook is in the inbox,
//! each accepted pull completed with its data served back. Traffic stays on 127.0.0.1, and
//! every run is bounded in count and time. Results: docs/benchmarks.md.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

#[path = "support/journey.rs"]
mod journey;
use journey::journey;

const SECRET: &str = "loadgen-secret";
const TOKEN: &str = "loadgen-token";
/// No run may take longer than this, whatever it is asked.
const MAX_RUN: Duration = Duration::from_secs(300);

/// Which service binary runs, with which extra settings, where its output goes and what it
/// logs (`--service-bin`, `--service-env`, `--service-log`, `--service-filter`).
struct ServiceOptions {
    bin: std::path::PathBuf,
    log: Option<std::path::PathBuf>,
    filter: String,
    env: Vec<(String, String)>,
}
static SERVICE: OnceLock<ServiceOptions> = OnceLock::new();

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; it is not ours.
    let args: Vec<String> = args.into_iter().filter(|a| a != "--bench").collect();
    let flag = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name} takes a number"))
            })
            .unwrap_or(default)
    };
    let text = |name: &str| {
        args.iter().position(|a| a == name).map(|i| {
            args.get(i + 1)
                .unwrap_or_else(|| panic!("{name} takes a value"))
        })
    };
    let _ = SERVICE.set(ServiceOptions {
        bin: text("--service-bin")
            .map_or(env!("CARGO_BIN_EXE_aa-recurring"), |s| s.as_str())
            .into(),
        log: text("--service-log").map(Into::into),
        filter: text("--service-filter")
            .cloned()
            .unwrap_or_else(|| "warn".into()),
        env: args
            .windows(2)
            .filter(|w| w[0] == "--service-env")
            .map(|w| {
                let (k, v) = w[1]
                    .split_once('=')
                    .expect("--service-env takes NAME=VALUE");
                (k.to_string(), v.to_string())
            })
            .collect(),
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    match args.first().map(String::as_str) {
        Some("bare") => runtime.block_on(bare(flag("--port", 0) as u16)),
        Some("intake") => runtime.block_on(async {
            let load = Load {
                requests: flag("--requests", 200_000),
                concurrency: flag("--concurrency", 64),
                rate: args
                    .iter()
                    .any(|a| a == "--rate")
                    .then(|| flag("--rate", 0)),
            };
            intake(&load, true).await;
        }),
        Some("e2e") => runtime.block_on(async {
            let days = args
                .iter()
                .any(|a| a == "--days")
                .then(|| flag("--days", 0));
            e2e(
                flag("--consents", 1000),
                flag("--concurrency", 32),
                days,
                true,
            )
            .await;
        }),
        Some("payload") => {
            let doc = if args.iter().any(|a| a == "--per-day") {
                Document::Busy {
                    per_day: flag("--per-day", 0),
                }
            } else {
                Document::Padded {
                    mib: flag("--mib", 50),
                }
            };
            runtime.block_on(payload(doc))
        }
        Some("smoke") => runtime.block_on(async {
            let load = Load {
                requests: 2_000,
                concurrency: 16,
                rate: None,
            };
            intake(&load, false).await;
            e2e(40, 8, None, false).await;
            println!("smoke: every acknowledged item is stored");
        }),
        _ => {
            eprintln!(
                "usage: cargo bench --bench loadgen -- intake|e2e|smoke [options] (see benches/loadgen.rs)"
            );
            std::process::exit(2);
        }
    }
}

/// The baseline: a bare axum handler that reads the body and answers as intake does.
async fn bare(port: u16) {
    let router = axum::Router::new().route(
        "/webhooks/bankconnect",
        axum::routing::post(|body: Bytes| async move {
            std::hint::black_box(body);
            axum::Json(json!({"status": "accepted"}))
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    axum::serve(listener, router).await.unwrap();
}

/// A child process, killed when dropped, whose CPU time and peak RSS are read from `/proc`.
struct Process {
    child: Child,
    /// The most anonymous memory (`RssAnon`: heap and stacks) seen, in KiB, sampled every
    /// 50 ms by a thread that ends with the process. `VmHWM` also counts the database file's
    /// pages that SQLite maps into memory (`mmap_size`, in each connection), which can be
    /// most of it and are page cache, not memory the service holds.
    peak_anon_kib: Arc<AtomicU64>,
}

impl Process {
    /// Starts `command` with its output discarded.
    fn start(name: &'static str, mut command: Command) -> Self {
        command.stdout(Stdio::null()).stderr(Stdio::null());
        Self::spawn(name, command)
    }

    /// Starts `command` with the output it was given.
    fn spawn(name: &'static str, mut command: Command) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let peak_anon_kib = Arc::new(AtomicU64::new(0));
        let (pid, peak) = (child.id(), peak_anon_kib.clone());
        std::thread::spawn(move || {
            while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                peak.fetch_max(status_kib(&status, "RssAnon:") as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Process {
            child,
            peak_anon_kib,
        }
    }

    /// User and system CPU seconds so far (`/proc/PID/stat`, in clock ticks of 1/100 s).
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // The fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }

    /// Bytes it has caused to be written to storage so far (`/proc/PID/io`, `write_bytes`):
    /// the WAL, the database file and its checkpoints.
    fn disk_write_bytes(&self) -> f64 {
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.child.id())).unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("write_bytes: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Peak resident memory in MiB (`VmHWM`).
    fn peak_rss_mib(&self) -> f64 {
        self.status_mib("VmHWM:")
    }

    /// Resident memory now, in MiB (`VmRSS`).
    fn rss_mib(&self) -> f64 {
        self.status_mib("VmRSS:")
    }

    /// Anonymous memory now, in MiB (`RssAnon`: the heap and stacks, not mapped files).
    fn anon_mib(&self) -> f64 {
        self.status_mib("RssAnon:")
    }

    /// Peak anonymous memory in MiB, as sampled (see [`Process::peak_anon_kib`]).
    fn peak_anon_mib(&self) -> f64 {
        self.peak_anon_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }

    fn status_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status_kib(&status, field) / 1024.0
    }
}

/// A `kB` field of `/proc/PID/status`, 0 if absent.
fn status_kib(status: &str, field: &str) -> f64 {
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_ready(url: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(url).send().await.is_err() {
        assert!(Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The service (this build's release binary, or `--service-bin`) on `port`, on a fresh
/// SQLite file in `dir`.
fn service(dir: &std::path::Path, port: u16, upstream: Option<&str>) -> Process {
    let options = SERVICE.get().expect("set in main");
    let mut c = Command::new(&options.bin);
    c.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/loadgen.db", dir.display()),
        )
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("PUBLIC_BASE_URL", format!("http://127.0.0.1:{port}"))
        .env("WEBHOOK_VERIFY", "secret-key")
        .env("WEBHOOK_SECRETS", SECRET)
        .env("API_TOKENS", TOKEN)
        .env("MAX_CONCURRENT_REQUESTS", "4096");
    if let Some(u) = upstream {
        c.env("BANKCONNECT_BASE_URL", u)
            .env("BANKCONNECT_API_KEY", "loadgen")
            .env("BANKCONNECT_SERVER_HASH", "loadgen");
    }
    c.env("RUST_LOG", &options.filter)
        .env("LOG_FORMAT", "json")
        .envs(options.env.iter().cloned());
    match &options.log {
        Some(path) => {
            let file =
                std::fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            c.stdout(file.try_clone().unwrap()).stderr(file);
            Process::spawn("aa-recurring serve", c)
        }
        None => Process::start("aa-recurring serve", c),
    }
}

struct Load {
    requests: u64,
    concurrency: u64,
    /// Requests a second (open loop); closed loop at `concurrency` when `None`.
    rate: Option<u64>,
}

#[derive(Default)]
struct Stats {
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: u64,
    /// The indexes of the requests answered 2xx.
    acknowledged: Vec<u64>,
}

impl Stats {
    /// Timings of requests that all succeeded, over `elapsed`.
    fn timed(elapsed: Duration, mut latencies: Vec<Duration>) -> Self {
        latencies.sort();
        Stats {
            elapsed,
            latencies,
            ..Stats::default()
        }
    }
    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
    fn quantile(&self, q: f64) -> Duration {
        let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
        self.latencies.get(i).copied().unwrap_or_default()
    }
    fn line(&self, name: &str) -> String {
        format!(
            "{name:<28} {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  errors {}",
            self.throughput(),
            self.quantile(0.5).as_secs_f64() * 1e3,
            self.quantile(0.99).as_secs_f64() * 1e3,
            self.latencies
                .last()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3,
            self.errors
        )
    }
}

fn webhook_body(run: &str, i: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"event_name":"ENRICHMENT_NOTIFICATION","session_id":"lg-{run}-{i}","insights_available":true,"accounts":[]}}"#
    ))
}

/// Sends `load.requests` unique webhooks to `url` and times each.
async fn send_webhooks(url: &str, run: &str, load: &Load) -> Stats {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(load.concurrency as usize * 2)
        .build_http();
    let uri: hyper::Uri = url.parse().unwrap();
    let send = {
        let (client, uri, run) = (client.clone(), uri.clone(), run.to_string());
        move |i: u64| {
            let req = hyper::Request::post(uri.clone())
                .header("content-type", "application/json")
                .header("x-secret-key", SECRET)
                .body(Full::new(webhook_body(&run, i)))
                .unwrap();
            let client = client.clone();
            async move {
                match client.request(req).await {
                    Ok(r) => {
                        let ok = r.status().is_success();
                        let _ = r.into_body().collect().await;
                        ok
                    }
                    Err(_) => false,
                }
            }
        }
    };
    let started = Instant::now();
    let deadline = started + MAX_RUN;
    let mut set = tokio::task::JoinSet::new();
    match load.rate {
        None => {
            let next = Arc::new(AtomicU64::new(0));
            for _ in 0..load.concurrency {
                let (next, send, total) = (next.clone(), send.clone(), load.requests);
                set.spawn(async move {
                    let mut out = vec![];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total || Instant::now() > deadline {
                            break out;
                        }
                        let t = Instant::now();
                        let ok = send(i).await;
                        out.push((i, t.elapsed(), ok));
                    }
                });
            }
        }
        Some(rate) => {
            let spacing = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            for i in 0..load.requests {
                let due = started + spacing * i as u32;
                if due > deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let send = send.clone();
                // Open loop: latency from when the request was due, so a stall counts.
                set.spawn(async move {
                    let ok = send(i).await;
                    vec![(i, due.elapsed(), ok)]
                });
            }
        }
    }
    let mut stats = Stats::default();
    while let Some(done) = set.join_next().await {
        for (i, latency, ok) in done.unwrap() {
            stats.latencies.push(latency);
            if ok {
                stats.acknowledged.push(i);
            } else {
                stats.errors += 1;
            }
        }
    }
    stats.elapsed = started.elapsed();
    stats.latencies.sort();
    stats
}

async fn intake(load: &Load, report: bool) {
    let how = match load.rate {
        Some(r) => format!("{} webhooks at {r}/s", load.requests),
        None => format!(
            "{} webhooks at concurrency {}",
            load.requests, load.concurrency
        ),
    };
    println!("== intake: {how}, SQLite synchronous=FULL");

    let port = free_port();
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["bare", "--port", &port.to_string()]);
    let bare_process = Process::start("bare axum", c);
    let url = format!("http://127.0.0.1:{port}/webhooks/bankconnect");
    wait_ready(&url).await;
    let cpu = bare_process.cpu_seconds();
    let bare_stats = send_webhooks(&url, "bare", load).await;
    let bare_cpu = bare_process.cpu_seconds() - cpu;
    drop(bare_process);

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let svc = service(dir.path(), port, None);
    wait_ready(&format!("http://127.0.0.1:{port}/healthz")).await;
    let (cpu, written) = (svc.cpu_seconds(), svc.disk_write_bytes());
    let run = uuid::Uuid::new_v4().simple().to_string();
    let stats = send_webhooks(
        &format!("http://127.0.0.1:{port}/webhooks/bankconnect"),
        &run,
        load,
    )
    .await;
    let svc_cpu = svc.cpu_seconds() - cpu;
    let sent_at = Instant::now();

    // Every acknowledged delivery is in the inbox, and is processed: the CPU a webhook costs
    // counts its processing too, which may run on after the last acknowledgement.
    let db = format!("sqlite://{}/loadgen.db?mode=ro", dir.path().display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let open: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')")
                .fetch_one(&pool)
                .await
                .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} webhook jobs still open 120 s after the last acknowledgement"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = sent_at.elapsed();
    let total_cpu = svc.cpu_seconds() - cpu;
    let written = svc.disk_write_bytes() - written;
    let rss = svc.peak_rss_mib();
    let stored: HashSet<String> =
        sqlx::query_scalar::<_, Option<String>>("SELECT upstream_session_id FROM webhook_inbox")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .flatten()
            .collect();
    let missing = stats
        .acknowledged
        .iter()
        .filter(|i| !stored.contains(&format!("lg-{run}-{i}")))
        .count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged webhooks are not stored",
        stats.acknowledged.len()
    );
    assert!(!stats.acknowledged.is_empty(), "nothing was acknowledged");
    if report {
        println!("{}", bare_stats.line("bare axum handler"));
        println!("{}", stats.line("webhook intake"));
        let per = |cpu: f64| cpu * 1e6 / stats.latencies.len().max(1) as f64;
        println!(
            "ratio {:.1}% of bare axum; service CPU {:.2} s ({:.1} µs a webhook; bare {:.1} µs); peak RSS {:.1} MiB (anonymous {:.1} MiB); {} acknowledged, all stored",
            100.0 * stats.throughput() / bare_stats.throughput(),
            svc_cpu,
            per(svc_cpu),
            bare_cpu * 1e6 / bare_stats.latencies.len().max(1) as f64,
            rss,
            svc.peak_anon_mib(),
            stats.acknowledged.len()
        );
        println!(
            "all processed {:.2} s after the last acknowledgement ({:.0}/s acknowledged and processed); with processing, service CPU {:.2} s ({:.1} µs a webhook), disk writes {:.1} KiB a webhook",
            drained.as_secs_f64(),
            stats.latencies.len() as f64 / (stats.elapsed + drained).as_secs_f64(),
            total_cpu,
            per(total_cpu),
            written / 1024.0 / stats.latencies.len().max(1) as f64
        );
    } else {
        println!(
            "intake: {} acknowledged ({} errors), all stored",
            stats.acknowledged.len(),
            stats.errors
        );
    }
}

async fn e2e(consents: u64, concurrency: u64, days: Option<u64>, report: bool) {
    println!(
        "== end to end: {consents} consents through the journey, one pull each{}, against the standalone sandbox",
        days.map(|d| format!(" of the last {d} days"))
            .unwrap_or_default()
    );
    // The service dates windows in Indian time.
    let body = days.map(|d| {
        let today = (chrono::Utc::now() + chrono::Duration::minutes(330)).date_naive();
        json!({"from": (today - chrono::Days::new(d)).to_string()})
    });
    let dir = tempfile::tempdir().unwrap();
    let (sandbox, svc, base, _) = sandbox_and_service(dir.path()).await;
    let http = reqwest::Client::new();

    // Seed through the real journey, `concurrency` at a time.
    let seeded = Instant::now();
    let ids = run_all(consents, concurrency, |i| {
        let (http, base) = (http.clone(), base.clone());
        async move { journey(&http, &base, TOKEN, &format!("loadgen-{i}")).await }
    })
    .await;
    println!(
        "seeded {} consents in {:.1} s",
        ids.len(),
        seeded.elapsed().as_secs_f64()
    );

    let (cpu, sandbox_cpu, written) = (
        svc.cpu_seconds(),
        sandbox.cpu_seconds(),
        svc.disk_write_bytes(),
    );
    let started = Instant::now();
    let accepted = run_all(ids.len() as u64, concurrency, |i| {
        let (http, base, consent) = (http.clone(), base.clone(), ids[i as usize].clone());
        let body = body.clone();
        async move {
            let sent = Instant::now();
            let mut r = http
                .post(format!("{base}/api/v1/consents/{consent}/pulls"))
                .bearer_auth(TOKEN);
            if let Some(body) = &body {
                r = r.json(body);
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
            let pull_id = r.json::<Value>().await.unwrap()["pull_id"]
                .as_str()
                .unwrap()
                .to_string();
            (pull_id, sent.elapsed())
        }
    })
    .await;
    let (pulls, latencies): (Vec<String>, Vec<Duration>) = accepted.into_iter().unzip();
    let accepting = Stats::timed(started.elapsed(), latencies);
    // Done when the service says every pull completed.
    let deadline = Instant::now() + MAX_RUN;
    loop {
        let metrics = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let completed: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("aa_recurring_pulls_total{") && l.contains("outcome=\"completed\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if completed as usize >= pulls.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{completed} of {} pulls completed in time",
            pulls.len()
        );
        // A scrape reads the job gauges from the database: not so often that it is the load.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let elapsed = started.elapsed();
    let (ours, theirs) = (svc.cpu_seconds() - cpu, sandbox.cpu_seconds() - sandbox_cpu);
    let written = svc.disk_write_bytes() - written;

    // Every accepted pull completed and its data is served back; how long each took, from
    // its acceptance to its completion, by the service's own timestamps.
    let checked = run_all(pulls.len() as u64, concurrency, |i| {
        let (http, base, pull) = (http.clone(), base.clone(), pulls[i as usize].clone());
        async move {
            let p = api_get(&http, &format!("{base}/api/v1/pulls/{pull}")).await;
            assert_eq!(p["status"], "completed", "{p}");
            let at = |field: &str| {
                chrono::DateTime::parse_from_rfc3339(p[field].as_str().unwrap()).unwrap()
            };
            let took = (at("completed_at") - at("created_at")).to_std().unwrap();
            let kind = p["kind"].as_str().unwrap();
            let data = http
                .get(format!("{base}/api/v1/pulls/{pull}/{kind}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(data.status(), 200);
            assert!(!data.bytes().await.unwrap().is_empty());
            took
        }
    })
    .await;
    assert_eq!(checked.len(), pulls.len());
    let completing = Stats::timed(elapsed, checked);
    let n = pulls.len() as f64;
    if report {
        println!("{}", accepting.line("accepted (POST …/pulls)"));
        println!("{}", completing.line("completed (from accepted)"));
        println!(
            "{} pulls completed in {:.2} s: {:.0} pulls/s; our CPU {:.2} s ({:.2} ms a pull), the sandbox's {:.2} s ({:.2} ms a pull), ratio {:.1}×; disk writes {:.1} KiB a pull; peak RSS ours {:.1} MiB (anonymous {:.1} MiB), sandbox {:.1} MiB",
            pulls.len(),
            elapsed.as_secs_f64(),
            n / elapsed.as_secs_f64(),
            ours,
            ours * 1e3 / n,
            theirs,
            theirs * 1e3 / n,
            ours / theirs.max(0.001),
            written / 1024.0 / n,
            svc.peak_rss_mib(),
            svc.peak_anon_mib(),
            sandbox.peak_rss_mib()
        );
    } else {
        println!(
            "end to end: {} pulls completed, each with its data",
            pulls.len()
        );
    }
}

/// The sandbox and the service on fresh ports, the service on a SQLite file in `dir`.
async fn sandbox_and_service(dir: &std::path::Path) -> (Process, Process, String, String) {
    let (sandbox_port, port) = (free_port(), free_port());
    let mut c = Command::new(env!("CARGO_BIN_EXE_aa-recurring"));
    c.args([
        "sandbox",
        "--bind",
        &format!("127.0.0.1:{sandbox_port}"),
        "--webhook-url",
        &format!("http://127.0.0.1:{port}/webhooks/bankconnect"),
        "--webhook-verify",
        "secret-key",
        "--webhook-secret",
        SECRET,
    ])
    .env("RUST_LOG", "warn");
    let sandbox = Process::start("sandbox", c);
    let upstream = format!("http://127.0.0.1:{sandbox_port}");
    let svc = service(dir, port, Some(&upstream));
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{base}/healthz")).await;
    wait_ready(&upstream).await;
    (sandbox, svc, base, upstream)
}

/// The large document of a `payload` run.
enum Document {
    /// Insights padded to `mib` MiB: a big document with few transactions.
    Padded { mib: u64 },
    /// Six months of Transactions with `per_day` a day: a big timeline.
    Busy { per_day: u64 },
}

async fn payload(doc: Document) {
    let (settings, pull_body, kind) = match doc {
        Document::Padded { mib } => {
            println!("== payload: one pull of an Insights document padded to {mib} MiB");
            (
                json!({"data_padding_bytes": mib * 1024 * 1024}),
                json!({"kind": "insights"}),
                "insights",
            )
        }
        Document::Busy { per_day } => {
            println!(
                "== payload: one Transactions pull of 180 days with {per_day} transactions a day"
            );
            // The service dates windows in Indian time.
            let today = (chrono::Utc::now() + chrono::Duration::minutes(330)).date_naive();
            (
                json!({"transactions_per_day": per_day}),
                json!({"kind": "transactions", "from": (today - chrono::Days::new(180)).to_string()}),
                "transactions",
            )
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let (_sandbox, svc, base, upstream) = sandbox_and_service(dir.path()).await;
    let http = reqwest::Client::builder().no_gzip().build().unwrap();
    let consent = journey(&http, &base, TOKEN, "loadgen-payload").await;
    let r = http
        .post(format!("{upstream}/_control/settings"))
        .json(&settings)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (before, anon_before) = (svc.rss_mib(), svc.anon_mib());
    let r = http
        .post(format!("{base}/api/v1/consents/{consent}/pulls"))
        .bearer_auth(TOKEN)
        .json(&pull_body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let pull: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{pull}");
    let pull_id = pull["pull_id"].as_str().unwrap().to_string();
    let started = Instant::now();
    // While the pull is fetched and stored, a webhook every 20 ms: how long each waits for its
    // commit shows how long the pull holds SQLite's writer.
    let probing = tokio_util::sync::CancellationToken::new();
    let probe = tokio::spawn({
        let (http, url, stop) = (
            http.clone(),
            format!("{base}/webhooks/bankconnect"),
            probing.clone(),
        );
        async move {
            let mut waits = vec![];
            for i in 0.. {
                if stop.is_cancelled() {
                    break;
                }
                let sent = Instant::now();
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-secret-key", SECRET)
                    .body(webhook_body("payload-probe", i))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.status());
                waits.push(sent.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            waits.sort();
            waits
        }
    });
    let deadline = started + MAX_RUN;
    loop {
        let p = api_get(&http, &format!("{base}/api/v1/pulls/{pull_id}")).await;
        if p["status"] == "completed" {
            break;
        }
        assert!(p["status"] != "failed" && Instant::now() < deadline, "{p}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    probing.cancel();
    let waits = probe.await.unwrap();
    let pct = |q: f64| waits[((waits.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    let (fetched, anon_fetched) = (svc.peak_rss_mib(), svc.peak_anon_mib());
    // Served back whole and uncompressed, read as it streams.
    let mut data = http
        .get(format!("{base}/api/v1/pulls/{pull_id}/{kind}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(data.status(), 200);
    let mut served = 0usize;
    while let Some(chunk) = data.chunk().await.unwrap() {
        served += chunk.len();
    }
    if let Document::Padded { mib } = doc {
        assert!(served as u64 >= mib * 1024 * 1024, "{served} bytes served");
    }
    // Every transaction of the document is in the consent's timeline.
    let mut in_timeline = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/api/v1/consents/{consent}/transactions?limit=200");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = api_get(&http, &url).await;
        in_timeline += page["items"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    if let Document::Busy { per_day } = doc {
        assert!(
            in_timeline as u64 >= 180 * per_day,
            "{in_timeline} in the timeline"
        );
    }
    println!(
        "webhooks acknowledged while the pull was fetched and stored: {}, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        waits.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "{:.1} MiB served, {in_timeline} transactions in the timeline; completed in {:.2} s; service RSS {:.1} MiB before the pull, peak {:.1} MiB after fetching and storing, {:.1} MiB after serving: growth {:.1} MiB; anonymous {:.1} MiB before, peak {:.1} MiB after fetching and storing, {:.1} MiB after serving: growth {:.1} MiB",
        served as f64 / 1048576.0,
        took.as_secs_f64(),
        before,
        fetched,
        svc.peak_rss_mib(),
        svc.peak_rss_mib() - before,
        anon_before,
        anon_fetched,
        svc.peak_anon_mib(),
        svc.peak_anon_mib() - anon_before,
    );
}

/// The service's JSON answer to an authenticated GET.
async fn api_get(http: &reqwest::Client, url: &str) -> Value {
    http.get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Runs `f(0..n)` with at most `concurrency` at a time; the answers in order.
async fn run_all<T, F, Fut>(n: u64, concurrency: u64, f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency as usize));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let fut = f(i);
        set.spawn(async move {
            let out = fut.await;
            drop(permit);
            (i, out)
        });
    }
    let mut out: Vec<(u64, T)> = Vec::with_capacity(n as usize);
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, t)| t).collect()
}
