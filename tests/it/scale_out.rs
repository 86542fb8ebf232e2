//! Scale-out, black-box: three instances on one Postgres with the standalone sandbox as the
//! upstream; one is SIGKILLed mid-run and left down. Every pull must still complete exactly
//! once. Runs when TEST_POSTGRES_URL is set (`.ci/run` sets it) and says so loudly otherwise.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_aa-recurring");
const TOKEN: &str = "scale-token";
const SECRET: &str = "scale-webhook-secret";

/// A child process that is killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn command(dir: &std::path::Path, log: &str) -> Command {
    let mut c = Command::new(BIN);
    // Run away from the repository, so a developer's `.env` cannot leak in.
    c.current_dir(dir)
        .env("RUST_LOG", "warn")
        .env("APP_ENV", "development")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(log)).unwrap());
    c
}

async fn wait_ready(http: &reqwest::Client, url: &str) {
    for _ in 0..300 {
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never became ready");
}

async fn json(r: reqwest::RequestBuilder) -> (StatusCode, Value) {
    crate::common::decode(r.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_lose_one_and_still_complete_every_pull_exactly_once() {
    // Postgres-only already: it runs in the main pass, not again in the Postgres pass.
    if crate::common::on_postgres() {
        return;
    }
    let Ok(admin) = std::env::var("TEST_POSTGRES_URL") else {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SCALE-OUT TEST SKIPPED: set TEST_POSTGRES_URL to run three instances on Postgres ***\n"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = crate::common::fresh_postgres_database(&admin).await;
    let http = reqwest::Client::new();

    let status = command(dir.path(), "migrate.log")
        .arg("migrate")
        .env("DATABASE_URL", &db)
        .status()
        .unwrap();
    assert!(status.success(), "migrate failed");

    let sandbox_port = free_port();
    let sandbox = format!("http://127.0.0.1:{sandbox_port}");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let bases: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let hooks: Vec<String> = bases
        .iter()
        .map(|b| format!("{b}/webhooks/bankconnect"))
        .collect();
    let _sandbox = Proc(
        command(dir.path(), "sandbox.log")
            .args(["sandbox", "--bind", &format!("127.0.0.1:{sandbox_port}")])
            .args([
                "--webhook-url",
                &hooks.join(","),
                "--webhook-secret",
                SECRET,
            ])
            .spawn()
            .unwrap(),
    );
    let mut instances: Vec<Option<Proc>> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            Some(Proc(
                command(dir.path(), &format!("instance-{i}.log"))
                    .env("DATABASE_URL", &db)
                    .env("BIND_ADDR", format!("127.0.0.1:{port}"))
                    .env("PUBLIC_BASE_URL", &bases[i])
                    .env("BANKCONNECT_BASE_URL", &sandbox)
                    .env("BANKCONNECT_API_KEY", "k")
                    .env("BANKCONNECT_SERVER_HASH", "h")
                    .env("WEBHOOK_VERIFY", "hmac-sha256")
                    .env("WEBHOOK_SECRETS", SECRET)
                    .env("API_TOKENS", TOKEN)
                    .env("POLL_FALLBACK_AFTER_SECS", "2")
                    .env("JOB_LEASE_SECS", "3")
                    .spawn()
                    .unwrap(),
            ))
        })
        .collect();
    wait_ready(&http, &format!("{sandbox}/_control/settings")).await;
    for b in &bases {
        wait_ready(&http, &format!("{b}/readyz")).await;
    }
    // Webhooks come late enough that some are in flight when an instance dies.
    let (status, _) = json(
        http.post(format!("{sandbox}/_control/settings"))
            .json(&json!({"webhook_delay_ms": 1500})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // The lender's endpoint: every completed pull must reach it, whichever instance did it.
    let receiver = std::sync::Arc::new(crate::notify::Receiver::default());
    let receiver_url = crate::notify::receiver_on(0, receiver.clone()).await;
    let (status, ep) = json(
        http.post(format!("{}/api/v1/webhook-endpoints", bases[0]))
            .bearer_auth(TOKEN)
            .json(&json!({"url": receiver_url, "event_types": ["pull.completed"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{ep}");

    // A burst of consents, spread across the instances.
    let mut consents = vec![];
    for i in 0..12 {
        let base = &bases[i % 3];
        let (status, s) = json(
            http.post(format!("{base}/api/v1/consent-sessions")).bearer_auth(TOKEN).json(&json!({
                "link_id": format!("scale-{i}"), "tenure_months": 12, "frequency_unit": "day", "frequency_value": 5
            })),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{s}");
        let answer =
            crate::common::press(&http, s["redirect_url"].as_str().unwrap(), "approve", true).await;
        let (_, cb) = crate::common::decode(answer).await;
        assert_eq!(cb["status"], "completed", "{cb}");
        consents.push(
            cb["consents"][0]["consent_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }

    // A wave of pulls; each asked twice, through two instances, with one Idempotency-Key.
    let mut pull_ids = vec![];
    for (i, consent) in consents.iter().enumerate() {
        let mut ids = vec![];
        for base in [&bases[(i + 1) % 3], &bases[(i + 2) % 3]] {
            let (status, p) = json(
                http.post(format!("{base}/api/v1/consents/{consent}/pulls"))
                    .bearer_auth(TOKEN)
                    .header("idempotency-key", format!("wave-1-{i}")),
            )
            .await;
            assert_eq!(status, StatusCode::ACCEPTED, "{p}");
            ids.push(p["pull_id"].as_str().unwrap().to_string());
        }
        assert_eq!(
            ids[0], ids[1],
            "one key, one pull, whichever instance is asked"
        );
        pull_ids.push(ids.remove(0));
    }

    // Once the wave is sent upstream, kill one instance while its webhooks, polls and
    // fetches are still in flight, and leave it down.
    let a = &bases[0];
    for _ in 0..200 {
        let (_, q) = json(
            http.get(format!("{a}/api/v1/pulls?status=queued"))
                .bearer_auth(TOKEN),
        )
        .await;
        if q["items"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(instances[2].take());

    // A second wave through the survivors.
    for (i, consent) in consents.iter().enumerate() {
        let base = &bases[i % 2];
        let (status, p) = json(
            http.post(format!("{base}/api/v1/consents/{consent}/pulls"))
                .bearer_auth(TOKEN),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{p}");
        pull_ids.push(p["pull_id"].as_str().unwrap().to_string());
    }

    // Every pull completes.
    let mut done = false;
    for _ in 0..600 {
        let (_, c) = json(
            http.get(format!("{a}/api/v1/pulls?status=completed&limit=200"))
                .bearer_auth(TOKEN),
        )
        .await;
        if c["items"].as_array().unwrap().len() == pull_ids.len() {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, all) = json(
        http.get(format!("{a}/api/v1/pulls?limit=200"))
            .bearer_auth(TOKEN),
    )
    .await;
    assert!(done, "not every pull completed: {all}");

    // Exactly once: one upstream call and one stored payload per pull, no dead job, and
    // every acknowledged webhook stored and processed.
    let (_, calls) = json(http.get(format!("{sandbox}/_control/calls"))).await;
    assert_eq!(
        calls["calls"]["fetch_recurring_aa_data"],
        pull_ids.len(),
        "{calls}"
    );
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let payloads: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pull_data")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(payloads as usize, pull_ids.len());
    let delivered = calls["calls"]["webhooks_delivered"].as_i64().unwrap_or(0);
    let inbox: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_inbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(inbox, delivered, "every acknowledged webhook is stored");
    let mut settled = false;
    for _ in 0..150 {
        // Finished: done, or cancelled because its pull had moved on.
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE status NOT IN ('done', 'cancelled')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if open == 0 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(settled, "jobs left unfinished: {rows:?}");

    // Every pull.completed event reached the endpoint; a repeat (after the crash) is the same
    // event with the same webhook-id.
    let (_, feed) = json(
        http.get(format!("{a}/api/v1/events?type=pull.completed&limit=200"))
            .bearer_auth(TOKEN),
    )
    .await;
    let events = feed["items"].as_array().unwrap();
    assert_eq!(events.len(), pull_ids.len());
    let got = receiver.got.lock().unwrap().clone();
    let mut repeated = 0;
    for e in events {
        let id = e["id"].as_str().unwrap();
        let copies: Vec<_> = got.iter().filter(|(h, _)| h["webhook-id"] == id).collect();
        assert!(!copies.is_empty(), "event {id} never reached the endpoint");
        assert!(copies.iter().all(|(_, b)| b == &copies[0].1));
        repeated += copies.len() - 1;
    }
    // Only deliveries the killed instance had in flight may repeat: at most its worker pool.
    assert!(repeated <= 16, "{repeated} repeated deliveries");
    drop(instances);
}
