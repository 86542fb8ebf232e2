//! Cursor pagination shared by the list endpoints: `{items, next_cursor}`, oldest first.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use super::error::ApiError;
use crate::domain::session::invalid;

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A validated page request: rows after `after_seq`, `limit` of them.
pub struct PageRequest {
    /// Names the list, so a cursor from one list is refused by another.
    scope: &'static str,
    pub after_seq: Option<i64>,
    pub limit: u32,
}

impl PageRequest {
    pub fn new(
        scope: &'static str,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Self, ApiError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(invalid("INVALID_LIMIT", format!("limit must be 1 to {MAX_LIMIT}")).into());
        }
        let after_seq = cursor
            .map(|c| {
                decode(scope, c).ok_or_else(|| {
                    ApiError::bad_request("INVALID_CURSOR", "cursor is not one this list gave out")
                })
            })
            .transpose()?;
        Ok(PageRequest {
            scope,
            after_seq,
            limit,
        })
    }

    /// How many rows to ask the store for: one extra says whether another page exists.
    pub fn fetch_limit(&self) -> u32 {
        self.limit + 1
    }

    /// Turns the fetched rows (with their positions) into a page.
    pub fn page<R, T>(&self, mut rows: Vec<(i64, R)>, view: impl Fn(R) -> T) -> Page<T> {
        let next_cursor = if rows.len() > self.limit as usize {
            rows.truncate(self.limit as usize);
            rows.last().map(|(seq, _)| encode(self.scope, *seq))
        } else {
            None
        };
        Page {
            items: rows.into_iter().map(|(_, r)| view(r)).collect(),
            next_cursor,
        }
    }
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

fn encode(scope: &str, seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{scope}:{seq}"))
}

fn decode(scope: &str, c: &str) -> Option<i64> {
    let raw = URL_SAFE_NO_PAD.decode(c).ok()?;
    std::str::from_utf8(&raw)
        .ok()?
        .strip_prefix(scope)?
        .strip_prefix(':')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_forgeries() {
        assert_eq!(decode("consent", &encode("consent", 42)), Some(42));
        assert_eq!(decode("consent", "42"), None);
        assert_eq!(decode("consent", &encode("pull", 42)), None);
    }

    #[test]
    fn pages_say_whether_more_exist() {
        let req = PageRequest::new("x", Some(2), None).unwrap();
        let page = req.page(vec![(1, 'a'), (2, 'b'), (3, 'c')], |c| c);
        assert_eq!(page.items, vec!['a', 'b']);
        assert_eq!(
            page.next_cursor.as_deref().and_then(|c| decode("x", c)),
            Some(2)
        );
        let last = req.page(vec![(3, 'c')], |c| c);
        assert_eq!(last.next_cursor, None);
        assert!(PageRequest::new("x", Some(0), None).is_err());
        assert!(PageRequest::new("x", Some(201), None).is_err());
    }
}
