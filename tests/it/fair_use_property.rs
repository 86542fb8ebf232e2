//! Property: under random schedules, manual pulls and failures, no calendar window ever holds
//! more sent pulls than the consent and Sahamati allow. Runs the service's own code paths (the
//! scheduler's tick, the API's planning, the submitter's ledger) against a real SQLite store.

use std::sync::Arc;

use aa_recurring::clock::{Clock, ManualClock};
use aa_recurring::domain::consent::{FrequencyUnit, UseCase};
use aa_recurring::domain::fair_use::{budget, next_period_start, period_start};
use aa_recurring::domain::pull::{PullKind, PullStatus};
use aa_recurring::pulls;
use aa_recurring::queue::{NewJob, Task};
use aa_recurring::scheduler::{self, SchedulerSettings};
use aa_recurring::store::{PullFilter, connect};
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

async fn run_case(use_case: UseCase, unit: FrequencyUnit, value: u32, ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let store = connect(
        &crate::common::fresh_database(dir.path()).await,
        &Default::default(),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let t0: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-03-31T18:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
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
                        let poll = NewJob::new(
                            Task::PollPull {
                                pull_id: pull.pull_id.clone(),
                            },
                            now,
                        );
                        store
                            .mark_submitted(&pull.pull_id, &format!("up-{attempt}"), &poll, now)
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
