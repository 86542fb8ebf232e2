//! aa-recurring: a lender's backend for FinBox BankConnect Account Aggregator recurring pulls.

pub mod bankconnect;
pub mod clock;
pub mod config;
pub mod domain;
pub mod housekeeping;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod operator;
pub mod pulls;
pub mod queue;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod scheduler;
pub mod startup;
pub mod state;
pub mod store;
pub mod supervise;
pub mod webhook_auth;
