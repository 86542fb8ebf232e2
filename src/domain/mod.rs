//! The rules of consents, sessions and schedules: pure functions and plain types, no I/O.

pub mod consent;
pub mod fair_use;
pub mod pull;
pub mod schedule;
pub mod session;

use chrono::FixedOffset;

/// India Standard Time. Sahamati's calendar windows and consent tenures are Indian calendar
/// units; IST has had no daylight saving since 1945, so a fixed offset is exact.
pub fn ist() -> FixedOffset {
    FixedOffset::east_opt(5 * 3600 + 1800).expect("IST offset is in range")
}
