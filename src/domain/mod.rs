//! The rules of consents, sessions and schedules: pure functions and plain types, no I/O.

pub mod consent;
pub mod event;
pub mod fair_use;
pub mod input;
pub mod notify;
pub mod pull;
pub mod schedule;
pub mod session;

use chrono::FixedOffset;

pub use input::{ValidationError, invalid};

/// India Standard Time. Sahamati's calendar windows and consent tenures are Indian calendar
/// units; IST has had no daylight saving since 1945, so a fixed offset is exact.
pub fn ist() -> FixedOffset {
    FixedOffset::east_opt(5 * 3600 + 1800).expect("IST offset is in range")
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
