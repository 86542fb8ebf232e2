//! The black-box suite, as one binary: each module spawns the service on port 0 against the
//! sandbox (or drives the store) and checks it over HTTP. `postgres_pass` runs every test again
//! on a fresh Postgres database when `TEST_POSTGRES_URL` is set, and says loudly when it is not.

mod common;

mod browser;
mod cli;
mod consent_journey;
mod console;
mod contract;
mod db_outage;
mod events;
mod fair_use_property;
mod hostile_input;
mod input_property;
mod job_queue;
mod notify;
mod operations;
mod pull_endings;
mod pulls;
mod sandbox;
mod scale_out;
mod schedule;
mod webhooks;

/// Every test of this binary again on Postgres (or a loud note that it was skipped).
#[test]
fn postgres_pass() {
    common::postgres_pass();
}
