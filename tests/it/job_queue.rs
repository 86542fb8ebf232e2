//! The durable queue's contract, against a real SQLite file.

use std::time::Duration;

use aa_recurring::queue::{JobOutcome, NewJob, Task};
use aa_recurring::store::{DynStore, connect};
use chrono::Utc;

async fn store() -> (DynStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = connect(
        &crate::common::fresh_database(dir.path()).await,
        &Default::default(),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    (store, dir)
}

/// A job keyed `key` (a capture of that session), or one without a key (webhook processing).
fn job(key: Option<&str>) -> NewJob {
    let task = match key {
        Some(session_id) => Task::CaptureConsents {
            session_id: session_id.into(),
        },
        None => Task::ProcessWebhook { inbox_ids: vec![1] },
    };
    NewJob::new(task, Utc::now())
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

#[tokio::test]
async fn housekeeping_drops_dead_jobs_stale_sessions_and_old_ledger_rows_in_batches() {
    use aa_recurring::clock::ManualClock;
    use aa_recurring::domain::consent::{FrequencyUnit, UseCase};
    use aa_recurring::domain::session::{NewSession, Session};
    use aa_recurring::housekeeping::{LEDGER_DAYS, OPEN_SESSION_DAYS, PURGE_BATCH};
    use chrono::Duration as Days;
    use std::sync::Arc;

    let (store, _dir) = store().await;
    let long_ago = Utc::now() - Days::days(LEDGER_DAYS + 10);
    let now = Utc::now();

    // More dead jobs than one batch holds, long finished; and one that died just now.
    for at in std::iter::repeat_n(long_ago, PURGE_BATCH as usize + 5).chain([now]) {
        let mut old = job(None);
        old.run_at = at;
        store.enqueue_job(&old, at).await.unwrap();
        let j = store
            .claim_jobs("w", at, at + Duration::from_secs(60), 1)
            .await
            .unwrap()
            .remove(0);
        let dead = JobOutcome::Dead {
            error: "gave up".into(),
        };
        store.finish_job(j.id, "w", &dead, at).await.unwrap();
    }
    // A journey never finished, and one started yesterday.
    let journey = |link: &str| NewSession {
        link_id: link.into(),
        use_case: UseCase::Monitoring,
        journey_mode: aa_recurring::domain::consent::JourneyMode::OnlyRecurring,
        tenure_months: 12,
        frequency_unit: FrequencyUnit::Month,
        frequency_value: 5,
        from_date: None,
        to_date: None,
        bank_name: None,
        mobile_number: None,
    };
    let stale_at = now - Days::days(OPEN_SESSION_DAYS + 1);
    store
        .insert_session(&Session::started("stale".into(), &journey("a"), stale_at))
        .await
        .unwrap();
    store
        .insert_session(&Session::started(
            "recent".into(),
            &journey("b"),
            now - Days::days(1),
        ))
        .await
        .unwrap();
    // Fair-use ledger rows from before the longest budget window, and one from now.
    let consent = crate::common::insert_consent(
        &store,
        "c-ledger",
        UseCase::Monitoring,
        FrequencyUnit::Month,
        5,
        long_ago,
    )
    .await;
    let budget = [aa_recurring::domain::fair_use::Budget {
        period_start: long_ago - Days::days(1),
        max: 1000,
    }];
    store
        .reserve_attempt(&consent.consent_id, "p-old", &budget, long_ago)
        .await
        .unwrap()
        .unwrap();
    store
        .reserve_attempt(&consent.consent_id, "p-new", &budget, now)
        .await
        .unwrap()
        .unwrap();

    let state = crate::common::bare_state(store.clone(), Arc::new(ManualClock::new(now)));
    aa_recurring::housekeeping::run(&state).await.unwrap();

    assert_eq!(store.job_counts().await.unwrap(), vec![("dead".into(), 1)]);
    assert!(store.get_session("stale").await.unwrap().is_none());
    assert!(store.get_session("recent").await.unwrap().is_some());
    assert_eq!(
        store
            .attempts_since(&consent.consent_id, &budget)
            .await
            .unwrap(),
        vec![1],
        "only the recent ledger row is left"
    );
}

#[tokio::test]
async fn a_batch_of_outcomes_ends_each_job_it_still_holds() {
    let (store, _dir) = store().await;
    for key in ["a", "b", "c", "d"] {
        store
            .enqueue_job(&job(Some(key)), Utc::now())
            .await
            .unwrap();
    }
    let now = Utc::now();
    let lease = Duration::from_secs(30);
    let mine = store.claim_jobs("w", now, now + lease, 3).await.unwrap();
    let theirs = store.claim_jobs("v", now, now + lease, 3).await.unwrap();
    assert_eq!((mine.len(), theirs.len()), (3, 1));
    let retry_at = now + chrono::Duration::minutes(5);
    store
        .finish_jobs(
            "w",
            &[
                (mine[0].id, JobOutcome::Done),
                (mine[1].id, JobOutcome::Done),
                (
                    mine[2].id,
                    JobOutcome::Retry {
                        run_at: retry_at,
                        error: "later".into(),
                    },
                ),
                // Not held by "w": left alone.
                (theirs[0].id, JobOutcome::Done),
            ],
            now,
        )
        .await
        .unwrap();
    let state = |id| {
        let store = store.clone();
        async move { store.get_job(id).await.unwrap().unwrap() }
    };
    assert_eq!(state(mine[0].id).await.state.to_string(), "done");
    assert_eq!(state(mine[1].id).await.state.to_string(), "done");
    let retried = state(mine[2].id).await;
    assert_eq!(retried.state.to_string(), "queued");
    assert_eq!(retried.last_error.as_deref(), Some("later"));
    let held = state(theirs[0].id).await;
    assert_eq!(held.state.to_string(), "running");
    assert!(held.lease_expires_at.is_some());
}
