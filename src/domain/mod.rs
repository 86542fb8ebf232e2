//! The rules of consents, sessions and schedules: pure functions and plain types, no I/O.

pub mod consent;
pub mod event;
pub mod fair_use;
pub mod input;
pub mod notify;
pub mod pull;
pub mod schedule;
pub mod session;

use chrono::{DateTime, FixedOffset, Utc};

pub use input::{ValidationError, invalid};

/// India Standard Time. Sahamati's calendar windows and consent tenures are Indian calendar
/// units; IST has had no daylight saving since 1945, so a fixed offset is exact.
pub fn ist() -> FixedOffset {
    FixedOffset::east_opt(5 * 3600 + 1800).expect("IST offset is in range")
}

/// The hour that holds `t`, counted from the epoch on Indian time: hour `h` covers the
/// Indian local time `h * 3600` seconds after 1970-01-01 00:00. (UTC hours would not do:
/// with IST's half-hour offset, one straddles each Indian midnight.)
pub fn ist_hour(t: DateTime<Utc>) -> i64 {
    (t.timestamp() + i64::from(ist().local_minus_utc())).div_euclid(3600)
}

/// A new id for a row we create often (pulls, events): `prefix`, `_` and 32 hex digits of a
/// UUIDv7, which starts with its creation time. Ids issued in time order go into their
/// indexes (the pull's own, its jobs', its events') at the right-hand end, so the writes of
/// pulls committed together share index pages; random ids put each on a page of its own, and
/// every commit wrote all of them to the log (docs/benchmarks.md, 2026-12-02, fourth session).
/// The time in an id is no secret: the resource shows when it was created.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// Generates `as_str` and `FromStr` from one list, so the database, the API and the
/// upstream all spell a value the same way.
macro_rules! string_enum {
    ($ty:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [&'static str] = &[$($s),+];
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $s),+ }
            }
        }
        impl std::str::FromStr for $ty {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $($s => Ok($ty::$variant),)+ _ => Err(()) }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use string_enum;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_keep_their_shape_and_sort_in_the_order_they_were_issued() {
        let ids: Vec<String> = (0..1000).map(|_| new_id("pull")).collect();
        for id in &ids {
            let hex = id.strip_prefix("pull_").expect("prefixed");
            assert_eq!(hex.len(), 32, "{id}");
            assert!(hex.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        }
        // Issued in one millisecond or many, each sorts after the one before.
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }
}
