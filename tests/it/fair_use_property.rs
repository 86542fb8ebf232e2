//! Property: under random schedules, manual pulls and failures, no calendar window ever holds
//! more sent pulls than the consent and Sahamati allow. Runs the service's own code paths (the
//! scheduler's tick, the API's planning, the submitter's ledger) against a real store (SQLite,
//! or Postgres in the suite's Postgres pass). Beside it, the budget check's edges: each period
//! filled exactly to its maximum, and queued pulls counted until they end.

use std::sync::Arc;

use aa_recurring::clock::{Clock, ManualClock};
use aa_recurring::domain::consent::{Consent, FrequencyUnit, UseCase};
use aa_recurring::domain::fair_use::Budget;
use aa_recurring::domain::fair_use::{budget, next_period_start, period_start};
use aa_recurring::domain::pull::{PullKind, PullStatus};
use aa_recurring::pulls;
use aa_recurring::scheduler::{self, SchedulerSettings};
use aa_recurring::store::{CreatePull, DynStore, PullFilter};
use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Time passes.
    Advance(u32),
    /// The scheduler looks for due consents.
    Tick,
    /// The lender asks for a pull.
    Manual,
    /// A worker tries to send the oldest queued pull; the call then succeeds, certainly never
    /// left (connection refused), or ends ambiguously (timeout: stays counted, retried later).
    Send(Outcome),
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Accepted,
    NotSent,
    Ambiguous,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u32..3000).prop_map(Op::Advance),
        Just(Op::Tick),
        Just(Op::Manual),
        prop_oneof![
            Just(Outcome::Accepted),
            Just(Outcome::NotSent),
            Just(Outcome::Ambiguous)
        ]
        .prop_map(Op::Send),
    ]
}

fn unit() -> impl Strategy<Value = FrequencyUnit> {
    prop_oneof![
        Just(FrequencyUnit::Hour),
        Just(FrequencyUnit::Day),
        Just(FrequencyUnit::Month),
        Just(FrequencyUnit::Year)
    ]
}

async fn store() -> (DynStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::common::fresh_store(dir.path()).await;
    store.migrate().await.unwrap();
    (store, dir)
}

/// A store holding consent `c`, approved at the returned time. The budgets the tests below
/// pass are their own, whatever the consent's limits.
async fn consent_c() -> (DynStore, tempfile::TempDir, Consent, DateTime<Utc>) {
    let (store, dir) = store().await;
    let t0 = at("2026-04-10T10:00:00Z");
    let consent = crate::common::insert_consent(
        &store,
        "c",
        UseCase::Monitoring,
        FrequencyUnit::Month,
        5,
        t0,
    )
    .await;
    (store, dir, consent, t0)
}

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Utc)
}

/// The budget check and the ledger row are one statement (`db::fits_budget`): each period
/// fills to its maximum, the fullest decides, and a period counts only what was sent since it
/// began.
#[tokio::test]
async fn a_reservation_fills_every_period_of_the_budget_to_its_maximum_and_no_further() {
    let (store, _dir, _, t0) = consent_c().await;
    let budget = |short_since: DateTime<Utc>| {
        [
            Budget {
                period_start: t0 - Duration::days(10),
                max: 3,
            },
            Budget {
                period_start: short_since,
                max: 2,
            },
        ]
    };
    let early = budget(t0 - Duration::hours(3));
    let reserve = |pull: &'static str, budget: [Budget; 2], now| {
        let store = store.clone();
        async move {
            store
                .reserve_attempt("c", pull, &budget, now)
                .await
                .unwrap()
        }
    };
    assert!(reserve("p1", early, t0).await.is_some());
    assert!(reserve("p2", early, t0).await.is_some());
    assert_eq!(
        reserve("p3", early, t0).await,
        None,
        "the short period holds two"
    );
    // A later short period has nothing in it yet; the long one has one left.
    let later = budget(t0 + Duration::hours(1));
    let t1 = t0 + Duration::hours(2);
    assert!(reserve("p3", later, t1).await.is_some());
    assert_eq!(
        reserve("p4", later, t1).await,
        None,
        "the long period holds three"
    );
    assert_eq!(store.attempts_since("c", &later).await.unwrap(), vec![3, 1]);
    // No limits at all: nothing stops a send.
    assert!(
        store
            .reserve_attempt("c", "p5", &[], t1)
            .await
            .unwrap()
            .is_some()
    );
}

/// Accepting a pull promises one send, so pulls accepted and not yet sent count against the
/// budget with those sent, and stop counting when they end unsent.
#[tokio::test]
async fn pulls_accepted_but_not_sent_count_against_the_budget() {
    let (store, _dir, consent, t0) = consent_c().await;
    let budget = vec![Budget {
        period_start: t0 - Duration::days(1),
        max: 2,
    }];
    let create = || {
        let (mut new, job) = pulls::plan(
            &consent,
            PullKind::Insights,
            (t0.date_naive() - Duration::days(1), t0.date_naive()),
            t0,
            None,
            String::new(),
        );
        new.budget = budget.clone();
        let store = store.clone();
        async move { store.create_pull(&new, &job).await.unwrap() }
    };
    let CreatePull::Created(first) = create().await else {
        panic!("the first pull fits")
    };
    let CreatePull::Created(second) = create().await else {
        panic!("the second pull fits")
    };
    assert!(
        matches!(create().await, CreatePull::OverBudget),
        "two queued pulls take the budget of two"
    );
    // Each accepted pull has its submit job, and the refused one none.
    let jobs = store
        .list_jobs(&aa_recurring::store::JobFilter {
            kind: Some("submit_pull".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut submitted: Vec<_> = jobs.iter().filter_map(|j| j.pull_id.clone()).collect();
    submitted.sort();
    let mut accepted = vec![first.pull_id.clone(), second.pull_id.clone()];
    accepted.sort();
    assert_eq!((jobs.len(), submitted), (2, accepted));
    // The first is sent: one sent and one queued still take both.
    store
        .reserve_attempt("c", &first.pull_id, &budget, t0)
        .await
        .unwrap()
        .unwrap();
    store
        .mark_submitted(&first.pull_id, "up-1", t0)
        .await
        .unwrap();
    assert!(matches!(create().await, CreatePull::OverBudget));
    // The second ends without being sent: its place is free again.
    store
        .end_pull(&second.pull_id, PullStatus::Failed, "X", "never sent", t0)
        .await
        .unwrap();
    assert!(matches!(create().await, CreatePull::Created(_)));
    assert!(matches!(create().await, CreatePull::OverBudget));
}

async fn run_case(use_case: UseCase, unit: FrequencyUnit, value: u32, ops: Vec<Op>) {
    let (store, _dir) = store().await;
    let t0 = at("2026-03-31T18:00:00Z");
    let clock = Arc::new(ManualClock::new(t0));
    let st = crate::common::bare_state(store.clone(), clock.clone());

    let consent = crate::common::insert_consent(&store, "c", use_case, unit, value, t0).await;

    let settings = SchedulerSettings::default();
    let mut sent: Vec<DateTime<Utc>> = vec![];
    for op in ops {
        let now = clock.now();
        match op {
            Op::Advance(minutes) => clock.advance(Duration::minutes(minutes.into())),
            Op::Tick => {
                scheduler::tick(&st, &settings).await.unwrap();
            }
            Op::Manual => {
                let today = now.date_naive();
                let (pull, job) = pulls::plan(
                    &consent,
                    PullKind::Insights,
                    (today - Duration::days(1), today),
                    now,
                    None,
                    String::new(),
                );
                store.create_pull(&pull, &job).await.unwrap();
            }
            Op::Send(outcome) => {
                let queued = store
                    .list_pulls(&PullFilter {
                        status: Some(PullStatus::Queued),
                        limit: 1,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                let Some((_, pull)) = queued.into_iter().next() else {
                    continue;
                };
                let budget = budget(&consent.limits(), now);
                let Some(attempt) = store
                    .reserve_attempt("c", &pull.pull_id, &budget, now)
                    .await
                    .unwrap()
                else {
                    continue;
                };
                match outcome {
                    Outcome::Accepted => {
                        sent.push(now);
                        store
                            .mark_submitted(&pull.pull_id, &format!("up-{attempt}"), now)
                            .await
                            .unwrap();
                        store
                            .end_pull(&pull.pull_id, PullStatus::Failed, "X", "done here", now)
                            .await
                            .unwrap();
                    }
                    Outcome::NotSent => store.cancel_attempt(attempt).await.unwrap(),
                    Outcome::Ambiguous => sent.push(now),
                }
            }
        }
    }

    // Every calendar window of every limit holds at most its max.
    for limit in consent.limits() {
        for t in &sent {
            let (start, end) = (
                period_start(limit.unit, *t),
                next_period_start(limit.unit, *t),
            );
            let n = sent.iter().filter(|s| **s >= start && **s < end).count();
            assert!(
                n <= limit.max as usize,
                "{n} pulls sent in the {:?} window from {start}, limit {}",
                limit.unit,
                limit.max
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_budget_is_never_exceeded(
        collections in any::<bool>(),
        unit in unit(),
        value in 1u32..=5,
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let use_case = if collections { UseCase::Collections } else { UseCase::Monitoring };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run_case(use_case, unit, value, ops));
    }
}
