//! The outbox of events: written by the other aggregates' transactions (the `record_*`
//! helpers), read by the feed.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{AnyConnection, Row};

use super::db::*;
use super::rows::*;
use super::*;
use crate::domain::consent::ConsentView;
use crate::domain::event::{Event, EventType, new_event_id};
use crate::domain::fair_use::budget;

/// Which events to list; oldest first, after `after_seq`.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_type: Option<EventType>,
    pub consent_id: Option<String>,
    /// The position to continue from: events after it, or before it when `newest_first`.
    pub after_seq: Option<i64>,
    pub limit: u32,
    /// Newest first (the console) rather than oldest first (the feed).
    pub newest_first: bool,
}

/// The outbox, as the feed reads it.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Events oldest first, with the position of each (for cursors).
    async fn list_events(&self, filter: &EventFilter) -> StoreResult<Vec<(i64, Event)>>;
    /// One event and its position.
    async fn get_event(&self, event_id: &str) -> StoreResult<Option<(i64, Event)>>;
}

#[async_trait]
impl EventStore for SqlStore {
    async fn list_events(&self, f: &EventFilter) -> StoreResult<Vec<(i64, Event)>> {
        let (seek, order, from) = keyset("seq", 3, f.after_seq, f.newest_first);
        // Through `events_by_consent` when a consent is asked for, else `events_by_type`.
        let (kind, consent) = (f.event_type.is_some(), f.consent_id.is_some());
        let rows = sqlx::query(&format!(
            "SELECT seq, event_id, type, data, created_at FROM events
             WHERE {} AND {} AND {seek}
             ORDER BY {order} LIMIT $4",
            filter_eq("type", 1, kind && !consent),
            filter_eq("consent_id", 2, consent)
        ))
        .bind(f.event_type.map(|t| t.as_str()))
        .bind(f.consent_id.as_deref())
        .bind(from)
        .bind(f.limit as i64)
        .fetch_all(&mut *self.read().await?)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn get_event(&self, event_id: &str) -> StoreResult<Option<(i64, Event)>> {
        let row = sqlx::query(
            "SELECT seq, event_id, type, data, created_at FROM events WHERE event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(&mut *self.read().await?)
        .await?;
        row.as_ref().map(event_from_row).transpose()
    }
}

fn event_from_row(r: &sqlx::any::AnyRow) -> StoreResult<(i64, Event)> {
    let data: String = r.try_get("data")?;
    let kind: String = r.try_get("type")?;
    Ok((
        r.try_get("seq")?,
        Event {
            id: r.try_get("event_id")?,
            event_type: parse_enum("event type", &kind)?,
            timestamp: from_ms(r.try_get("created_at")?)?,
            data: serde_json::from_str(&data)
                .map_err(|e| StoreError::Corrupt(format!("event data: {e}")))?,
        },
    ))
}

async fn insert_event(
    conn: &mut AnyConnection,
    event_type: EventType,
    consent_id: Option<&str>,
    data: &Value,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let event_id = new_event_id();
    // With the count of enabled endpoints, so that an event with nowhere to go (no endpoint
    // configured, the common case) costs one call to the database, not two.
    let (seq, endpoints): (i64, i64) = sqlx::query_as(
        "INSERT INTO events (event_id, type, consent_id, data, created_at) VALUES ($1, $2, $3, $4, $5)
         RETURNING seq, (SELECT COUNT(*) FROM webhook_endpoints WHERE status = 'enabled')",
    )
    .bind(&event_id)
    .bind(event_type.as_str())
    .bind(consent_id)
    .bind(data.to_string())
    .bind(to_ms(now))
    .fetch_one(&mut *conn)
    .await?;
    // The outbox fans out in the same transaction: no event is told to one endpoint and lost
    // for another.
    if endpoints > 0 {
        super::notify::fan_out(conn, seq, &event_id, event_type, now).await?;
    }
    Ok(())
}

/// The consent as the API shows it (with its usage at `now`).
async fn consent_data(
    conn: &mut AnyConnection,
    consent_id: &str,
    now: DateTime<Utc>,
) -> StoreResult<Option<Value>> {
    let row = sqlx::query(&format!(
        "SELECT {CONSENT_COLUMNS} FROM consents WHERE consent_id = $1"
    ))
    .bind(consent_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((_, consent)) = row.as_ref().map(consent_from_row).transpose()? else {
        return Ok(None);
    };
    let used = sent_since(conn, consent_id, &budget(&consent.limits(), now)).await?;
    let view = ConsentView::new(consent, &used, now);
    Ok(Some(
        serde_json::to_value(view).expect("consents serialise"),
    ))
}

/// Records a pull event in the transaction of `conn`.
pub(super) async fn record_pull_event(
    conn: &mut AnyConnection,
    event_type: EventType,
    pull_id: &str,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let row = sqlx::query(&format!(
        "SELECT {PULL_COLUMNS}, {PULL_LINK_ID} FROM pulls WHERE pull_id = $1"
    ))
    .bind(pull_id)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => record_pull_event_from(conn, event_type, &row, now).await,
        None => Ok(()),
    }
}

/// With [`PULL_COLUMNS`], what a pull event shows of the pull: the pull as the API shows it,
/// and its consent's `link_id`. The statements that end a pull return them
/// (`RETURNING {PULL_COLUMNS}, {PULL_LINK_ID}`): an event is written with every ending of
/// every pull, and reading the pull again was one more call to the database.
pub(super) const PULL_LINK_ID: &str =
    "(SELECT c.link_id FROM consents c WHERE c.consent_id = pulls.consent_id) AS link_id";

/// [`record_pull_event`] from a row of [`PULL_COLUMNS`] and [`PULL_LINK_ID`].
pub(super) async fn record_pull_event_from(
    conn: &mut AnyConnection,
    event_type: EventType,
    row: &sqlx::any::AnyRow,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let (_, pull) = pull_from_row(row)?;
    let link_id: Option<String> = row.try_get("link_id")?;
    let mut data = serde_json::to_value(&pull).expect("pulls serialise");
    data["link_id"] = link_id.map_or(Value::Null, Value::String);
    insert_event(conn, event_type, Some(&pull.consent_id), &data, now).await
}

/// Records a consent event in the transaction of `conn`.
pub(super) async fn record_consent_event(
    conn: &mut AnyConnection,
    event_type: EventType,
    consent_id: &str,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    if let Some(data) = consent_data(conn, consent_id, now).await? {
        insert_event(conn, event_type, Some(consent_id), &data, now).await?;
    }
    Ok(())
}

/// Records a journey event in the transaction of `conn`: the session as
/// `GET /api/v1/consent-sessions/{id}` shows it, with its consents.
pub(super) async fn record_session_event(
    conn: &mut AnyConnection,
    event_type: EventType,
    session_id: &str,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let session = session_in(conn, session_id).await?;
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT consent_id FROM consents WHERE session_id = $1 ORDER BY seq")
            .bind(session_id)
            .fetch_all(&mut *conn)
            .await?;
    let mut consents = vec![];
    for id in ids {
        if let Some(c) = consent_data(conn, &id, now).await? {
            consents.push(c);
        }
    }
    let mut data = serde_json::to_value(&session).expect("sessions serialise");
    data["consents"] = Value::Array(consents);
    insert_event(conn, event_type, None, &data, now).await
}
