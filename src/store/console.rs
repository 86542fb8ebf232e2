//! The operator console's sessions and the key that signs its cookies
//! (docs/architecture.md, "The console").
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::*;

/// A signed-in operator. Only the SHA-256 of the cookie's secret is stored, so a copy of the
/// database signs no one in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    pub session_hash: String,
    /// Which API token signed in (a hash prefix, never the token): the session ends when
    /// that token is no longer configured.
    pub token_fingerprint: String,
    /// The token every form of this session carries.
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[async_trait]
pub trait ConsoleStore: Send + Sync {
    /// The key that signs console cookies. The first instance to ask stores `candidate`;
    /// every instance then reads the same key, so a cookie from one is good on all.
    async fn console_key(&self, candidate: &str) -> StoreResult<String>;
    async fn create_console_session(&self, session: &ConsoleSession) -> StoreResult<()>;
    /// The session, if it exists and has not expired at `now`.
    async fn console_session(
        &self,
        session_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<ConsoleSession>>;
    async fn end_console_session(&self, session_hash: &str) -> StoreResult<()>;
}

#[async_trait]
impl ConsoleStore for SqlStore {
    async fn console_key(&self, candidate: &str) -> StoreResult<String> {
        sqlx::query(
            "INSERT INTO console_keys (id, key) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
        )
        .bind(candidate)
        .execute(&mut *self.write_conn().await?)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT key FROM console_keys WHERE id = 1")
                .fetch_one(&mut *self.read().await?)
                .await?,
        )
    }

    async fn create_console_session(&self, s: &ConsoleSession) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO console_sessions (session_hash, token_fingerprint, csrf_token, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&s.session_hash)
        .bind(&s.token_fingerprint)
        .bind(&s.csrf_token)
        .bind(to_ms(s.created_at))
        .bind(to_ms(s.expires_at))
        .execute(&mut *self.write_conn().await?)
        .await?;
        Ok(())
    }

    async fn console_session(
        &self,
        session_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<ConsoleSession>> {
        let row = sqlx::query(
            "SELECT session_hash, token_fingerprint, csrf_token, created_at, expires_at
             FROM console_sessions WHERE session_hash = $1 AND expires_at > $2",
        )
        .bind(session_hash)
        .bind(to_ms(now))
        .fetch_optional(&mut *self.read().await?)
        .await?;
        row.map(|r| {
            Ok(ConsoleSession {
                session_hash: r.try_get("session_hash")?,
                token_fingerprint: r.try_get("token_fingerprint")?,
                csrf_token: r.try_get("csrf_token")?,
                created_at: from_ms(r.try_get("created_at")?)?,
                expires_at: from_ms(r.try_get("expires_at")?)?,
            })
        })
        .transpose()
    }

    async fn end_console_session(&self, session_hash: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM console_sessions WHERE session_hash = $1")
            .bind(session_hash)
            .execute(&mut *self.write_conn().await?)
            .await?;
        Ok(())
    }
}
