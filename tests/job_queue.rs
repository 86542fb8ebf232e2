//! The durable queue's contract, against a real SQLite file.

mod common;

use std::time::Duration;

use aa_recurring::jobs::{JobKind, JobOutcome, NewJob};
use aa_recurring::store::{DynStore, connect};
use chrono::Utc;
use serde_json::json;

async fn store() -> (DynStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = connect(
        &common::fresh_database(dir.path()).await,
        &Default::default(),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    (store, dir)
}

fn job(key: Option<&str>) -> NewJob {
    NewJob::new(
        JobKind::CaptureConsents,
        json!({"session_id": "s"}),
        Utc::now(),
        key.map(String::from),
    )
}

#[tokio::test]
async fn a_live_dedupe_key_is_enqueued_once() {
    let (store, _dir) = store().await;
    store
        .enqueue_job(&job(Some("k")), Utc::now())
        .await
        .unwrap();
    store
        .enqueue_job(&job(Some("k")), Utc::now())
        .await
        .unwrap();
    store.enqueue_job(&job(None), Utc::now()).await.unwrap();
    assert_eq!(
        store.job_counts().await.unwrap(),
        vec![("queued".into(), 2)]
    );

    // Once finished, the same key may be enqueued again.
    let now = Utc::now();
    let claimed = store
        .claim_jobs("w", now, now + Duration::from_secs(60), 10)
        .await
        .unwrap();
    for j in &claimed {
        store
            .finish_job(j.id, "w", &JobOutcome::Done, now)
            .await
            .unwrap();
    }
    store
        .enqueue_job(&job(Some("k")), Utc::now())
        .await
        .unwrap();
    assert_eq!(
        store.job_counts().await.unwrap(),
        vec![("done".into(), 2), ("queued".into(), 1)]
    );
}

#[tokio::test]
async fn an_expired_lease_is_reclaimed_and_the_old_owner_cannot_finish() {
    let (store, _dir) = store().await;
    store.enqueue_job(&job(None), Utc::now()).await.unwrap();
    let t0 = Utc::now();
    let lease = Duration::from_secs(30);
    let first = store.claim_jobs("a", t0, t0 + lease, 10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempts, 1);
    // Leased: nobody else gets it.
    assert!(
        store
            .claim_jobs("b", t0, t0 + lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A heartbeat keeps it.
    assert!(
        store
            .extend_lease(first[0].id, "a", t0 + lease * 2)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_jobs("b", t0 + lease, t0 + lease * 3, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // "a" dies; once its lease has run out, "b" takes over.
    let later = t0 + lease * 2 + Duration::from_millis(1);
    let second = store
        .claim_jobs("b", later, later + lease, 10)
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id, first[0].id);
    assert_eq!(second[0].attempts, 2);
    assert!(
        !store
            .extend_lease(first[0].id, "a", later + lease)
            .await
            .unwrap()
    );
    store
        .finish_job(first[0].id, "a", &JobOutcome::Done, later)
        .await
        .unwrap();
    assert_eq!(
        store.job_counts().await.unwrap(),
        vec![("running".into(), 1)]
    );
    store
        .finish_job(second[0].id, "b", &JobOutcome::Done, later)
        .await
        .unwrap();
    assert_eq!(store.job_counts().await.unwrap(), vec![("done".into(), 1)]);
}

#[tokio::test]
async fn retries_wait_and_releases_do_not_count_as_attempts() {
    let (store, _dir) = store().await;
    store.enqueue_job(&job(None), Utc::now()).await.unwrap();
    let t0 = Utc::now();
    let lease = Duration::from_secs(30);
    let j = store
        .claim_jobs("a", t0, t0 + lease, 1)
        .await
        .unwrap()
        .remove(0);
    let retry_at = t0 + Duration::from_secs(10);
    store
        .finish_job(
            j.id,
            "a",
            &JobOutcome::Retry {
                run_at: retry_at,
                error: "boom".into(),
            },
            t0,
        )
        .await
        .unwrap();
    assert!(
        store
            .claim_jobs("a", t0, t0 + lease, 1)
            .await
            .unwrap()
            .is_empty()
    );
    let j = store
        .claim_jobs("a", retry_at, retry_at + lease, 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(j.attempts, 2);
    store
        .finish_job(j.id, "a", &JobOutcome::Release, retry_at)
        .await
        .unwrap();
    let j = store
        .claim_jobs("a", retry_at, retry_at + lease, 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(j.attempts, 2, "a released attempt is not counted");
    store
        .finish_job(
            j.id,
            "a",
            &JobOutcome::Dead {
                error: "gave up".into(),
            },
            retry_at,
        )
        .await
        .unwrap();
    assert_eq!(store.job_counts().await.unwrap(), vec![("dead".into(), 1)]);
    assert!(
        store
            .claim_jobs("a", retry_at + lease * 10, retry_at + lease * 11, 1)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The same tests on Postgres (or a loud note that they were skipped).
#[test]
fn postgres_pass() {
    common::postgres_pass();
}
