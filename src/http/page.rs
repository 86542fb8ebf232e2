//! Cursor pagination shared by the list endpoints: `{items, next_cursor}`, oldest first.
//!
//! A cursor is an opaque token naming its list and a position: a row's sequence number, or
//! for timelines `(timestamp, sequence)`. A token from one list is refused by another.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use super::error::ApiError;
use crate::domain::invalid;

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A position in a list.
pub trait Position: Sized {
    fn encode(&self) -> String;
    fn decode(s: &str) -> Option<Self>;
}

impl Position for i64 {
    fn encode(&self) -> String {
        self.to_string()
    }
    fn decode(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

impl Position for (String, i64) {
    fn encode(&self) -> String {
        format!("{}|{}", self.0, self.1)
    }
    fn decode(s: &str) -> Option<Self> {
        let (at, seq) = s.rsplit_once('|')?;
        // A timestamp as the upstream writes it; nothing else is sent to the database.
        if at.len() > 32 || at.chars().any(char::is_control) {
            return None;
        }
        Some((at.to_string(), seq.parse().ok()?))
    }
}

/// A validated page request: rows after `after`, `limit` of them.
pub struct PageRequest<P> {
    scope: &'static str,
    pub after: Option<P>,
    pub limit: u32,
}

impl<P: Position> PageRequest<P> {
    pub fn new(
        scope: &'static str,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Self, ApiError> {
        let limit = page_limit(limit)?;
        let after = cursor
            .map(|c| {
                decode(scope, c).and_then(|k| P::decode(&k)).ok_or_else(|| {
                    ApiError::bad_request("INVALID_CURSOR", "cursor is not one this list gave out")
                })
            })
            .transpose()?;
        Ok(PageRequest {
            scope,
            after,
            limit,
        })
    }

    /// How many rows to ask the store for: one extra says whether another page exists.
    pub fn fetch_limit(&self) -> u32 {
        self.limit + 1
    }

    /// Turns the fetched rows (with their positions) into a page.
    pub fn page<R, T>(&self, mut rows: Vec<(P, R)>, view: impl Fn(R) -> T) -> Page<T> {
        let next_cursor = if rows.len() > self.limit as usize {
            rows.truncate(self.limit as usize);
            rows.last()
                .map(|(pos, _)| encode(self.scope, &pos.encode()))
        } else {
            None
        };
        Page {
            items: rows.into_iter().map(|(_, r)| view(r)).collect(),
            next_cursor,
        }
    }
}

/// A page's size: 50 unless given, 1 to 200.
pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(invalid("INVALID_LIMIT", format!("limit must be 1 to {MAX_LIMIT}")).into());
    }
    Ok(limit)
}

/// Parses an optional filter value, naming the allowed ones in the error.
pub fn parse_filter<T: std::str::FromStr>(
    code: &'static str,
    field: &str,
    v: Option<&str>,
    all: &[&str],
) -> Result<Option<T>, ApiError> {
    v.map(|s| {
        s.parse::<T>().map_err(|_| {
            invalid(
                code,
                format!("{field} must be one of {}, got `{s}`", all.join(", ")),
            )
            .into()
        })
    })
    .transpose()
}

fn encode(scope: &str, key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{scope}:{key}"))
}

fn decode(scope: &str, c: &str) -> Option<String> {
    let raw = URL_SAFE_NO_PAD.decode(c).ok()?;
    Some(
        std::str::from_utf8(&raw)
            .ok()?
            .strip_prefix(scope)?
            .strip_prefix(':')?
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_forgeries() {
        let ok = PageRequest::<i64>::new("consent", None, Some(&encode("consent", "42"))).unwrap();
        assert_eq!(ok.after, Some(42));
        assert!(PageRequest::<i64>::new("consent", None, Some("42")).is_err());
        assert!(PageRequest::<i64>::new("consent", None, Some(&encode("pull", "42"))).is_err());
        assert!(PageRequest::<i64>::new("consent", None, Some(&encode("consent", "x"))).is_err());
        let keyed = PageRequest::<(String, i64)>::new(
            "txn",
            None,
            Some(&encode("txn", "2025-01-02 10:00:00|7")),
        )
        .unwrap();
        assert_eq!(keyed.after, Some(("2025-01-02 10:00:00".to_string(), 7)));
    }

    #[test]
    fn pages_say_whether_more_exist() {
        let req = PageRequest::<i64>::new("x", Some(2), None).unwrap();
        let page = req.page(vec![(1, 'a'), (2, 'b'), (3, 'c')], |c| c);
        assert_eq!(page.items, vec!['a', 'b']);
        let next = PageRequest::<i64>::new("x", Some(2), page.next_cursor.as_deref()).unwrap();
        assert_eq!(next.after, Some(2));
        assert_eq!(req.page(vec![(3, 'c')], |c| c).next_cursor, None);
        assert!(PageRequest::<i64>::new("x", Some(0), None).is_err());
        assert!(PageRequest::<i64>::new("x", Some(201), None).is_err());
    }
}
