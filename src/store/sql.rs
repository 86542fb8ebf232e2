//! The store's SQL, written once for both backends. Each backend module defines its pool,
//! `write_tx`, `LOCK_CONSENT` and `CLAIM_JOBS`, then expands [`sql_store!`] to get the
//! whole `Store` implementation. Placeholders are `$N`, which both SQLite and Postgres read.

/// Expands to the row mappers, the shared helpers and `impl Store for $store`.
macro_rules! sql_store {
    ($store:ident, $row:ty, $conn:ty) => {
        const SESSION_COLUMNS: &str = "session_id, link_id, use_case, journey_mode, tenure_months, frequency_unit, \
             frequency_value, from_date, to_date, bank_name, status, error_code, error_message, created_at, updated_at";

        const CONSENT_COLUMNS: &str = "seq, consent_id, session_id, link_id, use_case, journey_mode, bank_name, \
             masked_account_number, tenure_months, frequency_unit, frequency_value, status, approved_at, \
             expires_at, next_pull_at, pull_blocked_until, pull_interval_secs, created_at, updated_at";

        fn opt_date(v: Option<String>) -> StoreResult<Option<NaiveDate>> {
            v.map(|s| {
                NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                    .map_err(|_| StoreError::Corrupt(format!("date `{s}`")))
            })
            .transpose()
        }

        fn session_from_row(r: &$row) -> StoreResult<Session> {
            Ok(Session {
                session_id: r.try_get("session_id")?,
                link_id: r.try_get("link_id")?,
                use_case: parse_enum("use_case", r.try_get("use_case")?)?,
                journey_mode: parse_enum("journey_mode", r.try_get("journey_mode")?)?,
                tenure_months: r.try_get::<i64, _>("tenure_months")? as u32,
                frequency_unit: parse_enum("frequency_unit", r.try_get("frequency_unit")?)?,
                frequency_value: r.try_get::<i64, _>("frequency_value")? as u32,
                from_date: opt_date(r.try_get("from_date")?)?,
                to_date: opt_date(r.try_get("to_date")?)?,
                bank_name: r.try_get("bank_name")?,
                status: parse_enum("session status", r.try_get("status")?)?,
                error_code: r.try_get("error_code")?,
                error_message: r.try_get("error_message")?,
                created_at: from_ms(r.try_get("created_at")?)?,
                updated_at: from_ms(r.try_get("updated_at")?)?,
            })
        }

        fn consent_from_row(r: &$row) -> StoreResult<(i64, Consent)> {
            let consent = Consent {
                consent_id: r.try_get("consent_id")?,
                session_id: r.try_get("session_id")?,
                link_id: r.try_get("link_id")?,
                use_case: parse_enum("use_case", r.try_get("use_case")?)?,
                journey_mode: parse_enum("journey_mode", r.try_get("journey_mode")?)?,
                bank_name: r.try_get("bank_name")?,
                masked_account_number: r.try_get("masked_account_number")?,
                tenure_months: r.try_get::<i64, _>("tenure_months")? as u32,
                frequency_unit: parse_enum("frequency_unit", r.try_get("frequency_unit")?)?,
                frequency_value: r.try_get::<i64, _>("frequency_value")? as u32,
                status: parse_enum("consent status", r.try_get("status")?)?,
                approved_at: from_ms(r.try_get("approved_at")?)?,
                expires_at: from_ms(r.try_get("expires_at")?)?,
                next_pull_at: opt_ms(r.try_get("next_pull_at")?)?,
                pull_blocked_until: opt_ms(r.try_get("pull_blocked_until")?)?,
                pull_interval_secs: r.try_get("pull_interval_secs")?,
                created_at: from_ms(r.try_get("created_at")?)?,
                updated_at: from_ms(r.try_get("updated_at")?)?,
            };
            Ok((r.try_get("seq")?, consent))
        }

        async fn session_in(conn: &mut $conn, session_id: &str) -> StoreResult<Session> {
            let row = sqlx::query(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1"
            ))
            .bind(session_id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::NotFound("session"))?;
            session_from_row(&row)
        }

        async fn insert_job(
            conn: &mut $conn,
            job: &NewJob,
            now: DateTime<Utc>,
        ) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO jobs (kind, payload, status, run_at, attempts, max_attempts, dedupe_key, pull_id, created_at, updated_at)
                 VALUES ($1, $2, 'queued', $3, 0, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(job.task.kind())
            .bind(job.task.payload())
            .bind(to_ms(job.run_at))
            .bind(job.task.max_attempts())
            .bind(job.task.dedupe_key())
            .bind(job.task.pull_id())
            .bind(to_ms(now))
            .bind(to_ms(now))
            .execute(&mut *conn)
            .await?;
            Ok(())
        }

        #[async_trait]
        impl Store for $store {
            async fn migrate(&self) -> StoreResult<()> {
                MIGRATOR.run(&self.pool).await?;
                Ok(())
            }

            async fn ping(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn insert_session(&self, s: &Session) -> StoreResult<()> {
                sqlx::query(&format!(
                    "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
                ))
                .bind(&s.session_id)
                .bind(&s.link_id)
                .bind(s.use_case.as_str())
                .bind(s.journey_mode.as_str())
                .bind(s.tenure_months as i64)
                .bind(s.frequency_unit.as_str())
                .bind(s.frequency_value as i64)
                .bind(s.from_date.map(|d| d.to_string()))
                .bind(s.to_date.map(|d| d.to_string()))
                .bind(s.bank_name.as_deref())
                .bind(s.status.as_str())
                .bind(s.error_code.as_deref())
                .bind(s.error_message.as_deref())
                .bind(to_ms(s.created_at))
                .bind(to_ms(s.updated_at))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn get_session(&self, session_id: &str) -> StoreResult<Option<Session>> {
                let mut conn = self.pool.acquire().await?;
                match session_in(&mut conn, session_id).await {
                    Ok(s) => Ok(Some(s)),
                    Err(StoreError::NotFound(_)) => Ok(None),
                    Err(e) => Err(e),
                }
            }

            async fn begin_capture(
                &self,
                session_id: &str,
                job: &NewJob,
                now: DateTime<Utc>,
            ) -> StoreResult<Session> {
                let mut tx = self.write_tx().await?;
                let session = session_in(&mut tx, session_id).await?;
                if session.status == SessionStatus::Completed {
                    tx.commit().await?;
                    return Ok(session);
                }
                sqlx::query(
                    "UPDATE sessions SET status = 'capturing', callback_at = COALESCE(callback_at, $1), updated_at = $2,
                            error_code = NULL, error_message = NULL
                     WHERE session_id = $3",
                )
                .bind(to_ms(now))
                .bind(to_ms(now))
                .bind(session_id)
                .execute(&mut *tx)
                .await?;
                insert_job(&mut tx, job, now).await?;
                let session = session_in(&mut tx, session_id).await?;
                tx.commit().await?;
                Ok(session)
            }

            async fn abandon_session(&self, session_id: &str, now: DateTime<Utc>) -> StoreResult<Session> {
                let mut tx = self.write_tx().await?;
                sqlx::query(
                    "UPDATE sessions SET status = 'abandoned', callback_at = COALESCE(callback_at, $1), updated_at = $2
                     WHERE session_id = $3 AND status = 'pending'",
                )
                .bind(to_ms(now))
                .bind(to_ms(now))
                .bind(session_id)
                .execute(&mut *tx)
                .await?;
                let session = session_in(&mut tx, session_id).await?;
                tx.commit().await?;
                Ok(session)
            }

            async fn complete_session(
                &self,
                session_id: &str,
                consents: &[Consent],
                now: DateTime<Utc>,
            ) -> StoreResult<()> {
                let mut tx = self.write_tx().await?;
                for c in consents {
                    sqlx::query(&format!(
                        "INSERT INTO consents ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
                         ON CONFLICT (consent_id) DO NOTHING",
                        CONSENT_COLUMNS.trim_start_matches("seq, ")
                    ))
                    .bind(&c.consent_id)
                    .bind(&c.session_id)
                    .bind(&c.link_id)
                    .bind(c.use_case.as_str())
                    .bind(c.journey_mode.as_str())
                    .bind(c.bank_name.as_deref())
                    .bind(c.masked_account_number.as_deref())
                    .bind(c.tenure_months as i64)
                    .bind(c.frequency_unit.as_str())
                    .bind(c.frequency_value as i64)
                    .bind(c.status.as_str())
                    .bind(to_ms(c.approved_at))
                    .bind(to_ms(c.expires_at))
                    .bind(c.next_pull_at.map(to_ms))
                    .bind(c.pull_blocked_until.map(to_ms))
                    .bind(c.pull_interval_secs)
                    .bind(to_ms(c.created_at))
                    .bind(to_ms(c.updated_at))
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(
                    "UPDATE sessions SET status = 'completed', error_code = NULL, error_message = NULL, updated_at = $1
                     WHERE session_id = $2",
                )
                .bind(to_ms(now))
                .bind(session_id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn record_session_error(
                &self,
                session_id: &str,
                status: SessionStatus,
                code: &str,
                message: &str,
                now: DateTime<Utc>,
            ) -> StoreResult<()> {
                sqlx::query(
                    "UPDATE sessions SET status = $1, error_code = $2, error_message = $3, updated_at = $4
                     WHERE session_id = $5 AND status <> 'completed'",
                )
                .bind(status.as_str())
                .bind(code)
                .bind(message)
                .bind(to_ms(now))
                .bind(session_id)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn fail_capture(
                &self,
                session_id: &str,
                code: &str,
                message: &str,
                now: DateTime<Utc>,
            ) -> StoreResult<bool> {
                let r = sqlx::query(
                    "UPDATE sessions SET status = 'failed', error_code = $1, error_message = $2, updated_at = $3
                     WHERE session_id = $4 AND status = 'capturing'",
                )
                .bind(code)
                .bind(message)
                .bind(to_ms(now))
                .bind(session_id)
                .execute(&self.pool)
                .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn get_consent(&self, consent_id: &str) -> StoreResult<Option<Consent>> {
                let row = sqlx::query(&format!(
                    "SELECT {CONSENT_COLUMNS} FROM consents WHERE consent_id = $1"
                ))
                .bind(consent_id)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| consent_from_row(&r).map(|(_, c)| c))
                    .transpose()
            }

            async fn list_consents(&self, f: &ConsentFilter) -> StoreResult<ConsentPage> {
                let rows = sqlx::query(&format!(
                    "SELECT {CONSENT_COLUMNS} FROM consents
                     WHERE ($1 IS NULL OR link_id = $1) AND ($2 IS NULL OR status = $2) AND seq > $3
                     ORDER BY seq LIMIT $4"
                ))
                .bind(f.link_id.as_deref())
                .bind(f.status.map(|s| s.as_str()))
                .bind(f.after_seq.unwrap_or(0))
                .bind(f.limit as i64)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(consent_from_row).collect()
            }

            async fn consents_for_session(&self, session_id: &str) -> StoreResult<Vec<Consent>> {
                let rows = sqlx::query(&format!(
                    "SELECT {CONSENT_COLUMNS} FROM consents WHERE session_id = $1 ORDER BY seq"
                ))
                .bind(session_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| consent_from_row(r).map(|(_, c)| c))
                    .collect()
            }

            async fn set_consent_status(
                &self,
                consent_id: &str,
                status: ConsentStatus,
                now: DateTime<Utc>,
            ) -> StoreResult<()> {
                let ended = matches!(
                    status,
                    ConsentStatus::Revoked | ConsentStatus::Expired | ConsentStatus::Invalid
                );
                sqlx::query(
                    "UPDATE consents SET status = $1, ended_at = CASE WHEN $2 THEN COALESCE(ended_at, $3) END, updated_at = $4
                     WHERE consent_id = $5",
                )
                .bind(status.as_str())
                .bind(ended)
                .bind(to_ms(now))
                .bind(to_ms(now))
                .bind(consent_id)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn block_consent_until(
                &self,
                consent_id: &str,
                until: DateTime<Utc>,
                now: DateTime<Utc>,
            ) -> StoreResult<()> {
                sqlx::query(
                    "UPDATE consents SET pull_blocked_until = CASE WHEN COALESCE(pull_blocked_until, 0) > $1 THEN pull_blocked_until ELSE $1 END, updated_at = $2
                     WHERE consent_id = $3",
                )
                .bind(to_ms(until))
                .bind(to_ms(now))
                .bind(consent_id)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn create_pull(&self, new: &NewPull, job: &NewJob) -> StoreResult<CreatePull> {
                let p = &new.pull;
                let mut tx = self.write_tx().await?;
                lock_consent(&mut tx, &p.consent_id).await?;
                if let Some(key) = &new.idempotency_key {
                    let row = sqlx::query(&format!(
                        "SELECT {PULL_COLUMNS}, request_hash FROM pulls WHERE consent_id = $1 AND idempotency_key = $2"
                    ))
                    .bind(&p.consent_id)
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(row) = row {
                        let hash: Option<String> = row.try_get("request_hash")?;
                        let (_, pull) = pull_from_row(&row)?;
                        tx.commit().await?;
                        return Ok(CreatePull::Existing {
                            pull,
                            same_request: hash.as_deref() == Some(new.request_hash.as_str()),
                        });
                    }
                }
                if !budget_allows(&mut tx, &p.consent_id, &new.budget, true).await? {
                    tx.commit().await?;
                    return Ok(CreatePull::OverBudget);
                }
                insert_pull(&mut tx, new).await?;
                insert_job(&mut tx, job, p.created_at).await?;
                tx.commit().await?;
                Ok(CreatePull::Created(p.clone()))
            }

            async fn get_pull(&self, pull_id: &str) -> StoreResult<Option<Pull>> {
                let mut conn = self.pool.acquire().await?;
                pull_where(&mut conn, "pull_id", pull_id).await
            }

            async fn pull_by_upstream_session(
                &self,
                upstream_session_id: &str,
            ) -> StoreResult<Option<Pull>> {
                let mut conn = self.pool.acquire().await?;
                pull_where(&mut conn, "upstream_session_id", upstream_session_id).await
            }

            async fn list_pulls(&self, f: &PullFilter) -> StoreResult<Vec<(i64, Pull)>> {
                let rows = sqlx::query(&format!(
                    "SELECT {PULL_COLUMNS} FROM pulls
                     WHERE ($1 IS NULL OR consent_id = $1) AND ($2 IS NULL OR status = $2) AND seq > $3
                     ORDER BY seq LIMIT $4"
                ))
                .bind(f.consent_id.as_deref())
                .bind(f.status.map(|s| s.as_str()))
                .bind(f.after_seq.unwrap_or(0))
                .bind(f.limit as i64)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(pull_from_row).collect()
            }

            async fn last_completed_to(&self, consent_id: &str) -> StoreResult<Option<NaiveDate>> {
                let v: Option<Option<String>> = sqlx::query_scalar(
                    "SELECT MAX(to_date) FROM pulls WHERE consent_id = $1 AND status = 'completed'",
                )
                .bind(consent_id)
                .fetch_optional(&self.pool)
                .await?;
                opt_date(v.flatten())
            }

            async fn reserve_attempt(
                &self,
                consent_id: &str,
                pull_id: &str,
                budget: &[(DateTime<Utc>, u32)],
                now: DateTime<Utc>,
            ) -> StoreResult<Option<i64>> {
                let mut tx = self.write_tx().await?;
                lock_consent(&mut tx, consent_id).await?;
                if !budget_allows(&mut tx, consent_id, budget, false).await? {
                    tx.commit().await?;
                    return Ok(None);
                }
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO pull_attempts (consent_id, pull_id, sent_at) VALUES ($1, $2, $3) RETURNING id",
                )
                .bind(consent_id)
                .bind(pull_id)
                .bind(to_ms(now))
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Some(id))
            }

            async fn attempts_since(
                &self,
                consent_id: &str,
                budget: &[(DateTime<Utc>, u32)],
            ) -> StoreResult<Vec<u32>> {
                let mut conn = self.pool.acquire().await?;
                let mut out = Vec::with_capacity(budget.len());
                for (start, _) in budget {
                    out.push(sent_since(&mut conn, consent_id, *start).await?);
                }
                Ok(out)
            }

            async fn cancel_attempt(&self, attempt_id: i64) -> StoreResult<()> {
                sqlx::query("DELETE FROM pull_attempts WHERE id = $1")
                    .bind(attempt_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn mark_submitted(
                &self,
                pull_id: &str,
                upstream_session_id: &str,
                poll: &NewJob,
                now: DateTime<Utc>,
            ) -> StoreResult<()> {
                let mut tx = self.write_tx().await?;
                sqlx::query(
                    "UPDATE pulls SET status = 'submitted', upstream_session_id = $1, submitted_at = $2, updated_at = $3,
                            error_code = NULL, error_message = NULL
                     WHERE pull_id = $4 AND status = 'queued'",
                )
                .bind(upstream_session_id)
                .bind(to_ms(now))
                .bind(to_ms(now))
                .bind(pull_id)
                .execute(&mut *tx)
                .await?;
                insert_job(&mut tx, poll, now).await?;
                // A webhook that overtook this commit found no pull; process it again now.
                let early: Vec<i64> =
                    sqlx::query_scalar("SELECT id FROM webhook_inbox WHERE upstream_session_id = $1")
                        .bind(upstream_session_id)
                        .fetch_all(&mut *tx)
                        .await?;
                for inbox_id in early {
                    insert_job(&mut tx, &NewJob::new(Task::ProcessWebhook { inbox_id }, now), now).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn start_fetching(
                &self,
                pull_id: &str,
                fetch: &NewJob,
                now: DateTime<Utc>,
            ) -> StoreResult<bool> {
                let mut tx = self.write_tx().await?;
                let moved = sqlx::query(
                    "UPDATE pulls SET status = 'fetching', updated_at = $1 WHERE pull_id = $2 AND status = 'submitted'",
                )
                .bind(to_ms(now))
                .bind(pull_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if moved {
                    // The webhook's safety net is not needed any more.
                    let poll = Task::PollPull { pull_id: pull_id.to_string() };
                    cancel_pull_jobs(&mut tx, pull_id, Some(poll.kind()), now).await?;
                    insert_job(&mut tx, fetch, now).await?;
                }
                tx.commit().await?;
                Ok(moved)
            }

            async fn end_pull(
                &self,
                pull_id: &str,
                status: PullStatus,
                code: &str,
                message: &str,
                now: DateTime<Utc>,
            ) -> StoreResult<bool> {
                let mut tx = self.write_tx().await?;
                let ended = sqlx::query(
                    "UPDATE pulls SET status = $1, error_code = $2, error_message = $3, updated_at = $4
                     WHERE pull_id = $5 AND status IN ('queued', 'submitted', 'fetching')",
                )
                .bind(status.as_str())
                .bind(code)
                .bind(message)
                .bind(to_ms(now))
                .bind(pull_id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if ended {
                    cancel_pull_jobs(&mut tx, pull_id, None, now).await?;
                }
                tx.commit().await?;
                Ok(ended)
            }

            async fn complete_pull(
                &self,
                consent_id: &str,
                d: &StoredData,
                timeline: &[TimelineEntry],
                now: DateTime<Utc>,
            ) -> StoreResult<()> {
                let mut tx = self.write_tx().await?;
                sqlx::query(
                    "INSERT INTO pull_data (pull_id, kind, content_encoding, body, raw_size, fetched_at)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (pull_id) DO NOTHING",
                )
                .bind(&d.pull_id)
                .bind(d.kind.as_str())
                .bind(&d.content_encoding)
                .bind(&d.body)
                .bind(d.raw_size)
                .bind(to_ms(d.fetched_at))
                .execute(&mut *tx)
                .await?;
                for t in timeline {
                    sqlx::query(
                        "INSERT INTO transactions (consent_id, hash, txn_at, pull_id, body, fetched_at)
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (consent_id, hash) DO NOTHING",
                    )
                    .bind(consent_id)
                    .bind(&t.hash)
                    .bind(&t.txn_at)
                    .bind(&t.pull_id)
                    .bind(t.body.to_string())
                    .bind(to_ms(d.fetched_at))
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(
                    "UPDATE pulls SET status = 'completed', completed_at = COALESCE(completed_at, $1), updated_at = $2,
                            error_code = NULL, error_message = NULL
                     WHERE pull_id = $3 AND status IN ('submitted', 'fetching')",
                )
                .bind(to_ms(now))
                .bind(to_ms(now))
                .bind(&d.pull_id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn timeline(
                &self,
                consent_id: &str,
                from: NaiveDate,
                to: NaiveDate,
                after: Option<&TimelineCursor>,
                limit: u32,
            ) -> StoreResult<Vec<(TimelineCursor, TimelineEntry)>> {
                let (after_at, after_seq) = after.cloned().unwrap_or_default();
                let rows = sqlx::query(
                    "SELECT seq, hash, txn_at, pull_id, body FROM transactions
                     WHERE consent_id = $1 AND txn_at >= $2 AND txn_at < $3 AND (txn_at, seq) > ($4, $5)
                     ORDER BY txn_at, seq LIMIT $6",
                )
                .bind(consent_id)
                .bind(from.to_string())
                .bind((to + chrono::Days::new(1)).to_string())
                .bind(after_at)
                .bind(after_seq)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let body: String = r.try_get("body")?;
                        let entry = TimelineEntry {
                            hash: r.try_get("hash")?,
                            txn_at: r.try_get("txn_at")?,
                            pull_id: r.try_get("pull_id")?,
                            body: serde_json::from_str(&body)
                                .map_err(|e| StoreError::Corrupt(format!("transaction: {e}")))?,
                        };
                        Ok(((entry.txn_at.clone(), r.try_get("seq")?), entry))
                    })
                    .collect()
            }

            async fn due_consents(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<Consent>> {
                let rows = sqlx::query(&format!(
                    "SELECT {CONSENT_COLUMNS} FROM consents
                     WHERE status = 'active' AND next_pull_at <= $1 ORDER BY next_pull_at LIMIT $2"
                ))
                .bind(to_ms(now))
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| consent_from_row(r).map(|(_, c)| c))
                    .collect()
            }

            async fn fire_scheduled(
                &self,
                batch: &[ScheduledPull],
                now: DateTime<Utc>,
            ) -> StoreResult<FireReport> {
                let mut report = FireReport::default();
                let mut tx = self.write_tx().await?;
                for item in batch {
                    lock_consent(&mut tx, &item.consent_id).await?;
                    let in_flight: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM pulls WHERE consent_id = $1 AND status IN ('queued', 'submitted', 'fetching')",
                    )
                    .bind(&item.consent_id)
                    .fetch_one(&mut *tx)
                    .await?;
                    let in_flight = in_flight > 0;
                    let over = !in_flight
                        && !budget_allows(&mut tx, &item.consent_id, &item.pull.budget, true).await?;
                    let next = if over {
                        item.next_when_over_budget
                    } else {
                        item.next_pull_at
                    };
                    let moved = sqlx::query(
                        "UPDATE consents SET next_pull_at = $1, updated_at = $2
                         WHERE consent_id = $3 AND next_pull_at = $4 AND status = 'active'",
                    )
                    .bind(to_ms(next))
                    .bind(to_ms(now))
                    .bind(&item.consent_id)
                    .bind(to_ms(item.expected))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1;
                    if !moved {
                        report.lost += 1;
                    } else if in_flight {
                        report.in_flight += 1;
                    } else if over {
                        report.deferred += 1;
                    } else {
                        insert_pull(&mut tx, &item.pull).await?;
                        insert_job(&mut tx, &item.job, now).await?;
                        report.fired += 1;
                    }
                }
                tx.commit().await?;
                Ok(report)
            }

            async fn pause_consent(
                &self,
                consent_id: &str,
                now: DateTime<Utc>,
            ) -> StoreResult<Option<Consent>> {
                sqlx::query("UPDATE consents SET status = 'paused', updated_at = $1 WHERE consent_id = $2 AND status = 'active'")
                    .bind(to_ms(now))
                    .bind(consent_id)
                    .execute(&self.pool)
                    .await?;
                self.get_consent(consent_id).await
            }

            async fn resume_consent(
                &self,
                consent_id: &str,
                next_pull_at: DateTime<Utc>,
                now: DateTime<Utc>,
            ) -> StoreResult<Option<Consent>> {
                sqlx::query(
                    "UPDATE consents SET status = 'active', next_pull_at = $1, updated_at = $2
                     WHERE consent_id = $3 AND status = 'paused'",
                )
                .bind(to_ms(next_pull_at))
                .bind(to_ms(now))
                .bind(consent_id)
                .execute(&self.pool)
                .await?;
                self.get_consent(consent_id).await
            }

            async fn set_pull_interval(
                &self,
                consent_id: &str,
                secs: Option<i64>,
                next_pull_at: DateTime<Utc>,
                now: DateTime<Utc>,
            ) -> StoreResult<Option<Consent>> {
                sqlx::query(
                    "UPDATE consents SET pull_interval_secs = $1, next_pull_at = $2, updated_at = $3 WHERE consent_id = $4",
                )
                .bind(secs)
                .bind(to_ms(next_pull_at))
                .bind(to_ms(now))
                .bind(consent_id)
                .execute(&self.pool)
                .await?;
                self.get_consent(consent_id).await
            }

            async fn expire_consents(&self, now: DateTime<Utc>) -> StoreResult<u64> {
                let r = sqlx::query(
                    "UPDATE consents SET status = 'expired', ended_at = COALESCE(ended_at, expires_at), updated_at = $1
                     WHERE status IN ('active', 'paused') AND expires_at <= $2",
                )
                .bind(to_ms(now))
                .bind(to_ms(now))
                .execute(&self.pool)
                .await?;
                Ok(r.rows_affected())
            }

            async fn purge_batch(
                &self,
                purge: &Purge,
                limit: u32,
                now: DateTime<Utc>,
            ) -> StoreResult<PurgeReport> {
                let data_before = to_ms(purge.data_before);
                let limit = limit as i64;
                let mut report = PurgeReport::default();

                // Stored payloads past their data life, or of consents that ended long ago.
                // The pull rows stay, marked purged.
                let mut tx = self.write_tx().await?;
                let pulls: Vec<String> = sqlx::query_scalar(
                    "SELECT d.pull_id FROM pull_data d
                     WHERE d.fetched_at < $1
                        OR d.pull_id IN (SELECT p.pull_id FROM pulls p JOIN consents c ON c.consent_id = p.consent_id
                                         WHERE c.ended_at < $1)
                     LIMIT $2",
                )
                .bind(data_before)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                for pull_id in &pulls {
                    sqlx::query("UPDATE pulls SET data_purged_at = $1, updated_at = $1 WHERE pull_id = $2")
                        .bind(to_ms(now))
                        .bind(pull_id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM pull_data WHERE pull_id = $1")
                        .bind(pull_id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                report.pulls = pulls.len() as u64;

                report.transactions = sqlx::query(
                    "DELETE FROM transactions WHERE seq IN (
                        SELECT seq FROM transactions
                        WHERE fetched_at < $1 OR consent_id IN (SELECT consent_id FROM consents WHERE ended_at < $1)
                        LIMIT $2)",
                )
                .bind(data_before)
                .bind(limit)
                .execute(&self.pool)
                .await?
                .rows_affected();
                report.webhooks = sqlx::query(
                    "DELETE FROM webhook_inbox WHERE id IN (SELECT id FROM webhook_inbox WHERE received_at < $1 LIMIT $2)",
                )
                .bind(data_before)
                .bind(limit)
                .execute(&self.pool)
                .await?
                .rows_affected();
                report.jobs = sqlx::query(
                    "DELETE FROM jobs WHERE id IN (
                        SELECT id FROM jobs WHERE status IN ('done', 'cancelled', 'dead') AND updated_at < $1 LIMIT $2)",
                )
                .bind(data_before)
                .bind(limit)
                .execute(&self.pool)
                .await?
                .rows_affected();
                report.sessions = sqlx::query(
                    "DELETE FROM sessions WHERE session_id IN (
                        SELECT session_id FROM sessions WHERE status <> 'completed' AND updated_at < $1 LIMIT $2)",
                )
                .bind(to_ms(purge.sessions_before))
                .bind(limit)
                .execute(&self.pool)
                .await?
                .rows_affected();
                report.ledger = sqlx::query(
                    "DELETE FROM pull_attempts WHERE id IN (SELECT id FROM pull_attempts WHERE sent_at < $1 LIMIT $2)",
                )
                .bind(to_ms(purge.ledger_before))
                .bind(limit)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(report)
            }

            async fn expire_overdue_pulls(
                &self,
                created_before: DateTime<Utc>,
                code: &str,
                message: &str,
                limit: u32,
                now: DateTime<Utc>,
            ) -> StoreResult<Vec<String>> {
                let mut tx = self.write_tx().await?;
                let expired: Vec<String> = sqlx::query_scalar(
                    "UPDATE pulls SET status = 'expired', error_code = $1, error_message = $2, updated_at = $3
                     WHERE status IN ('queued', 'submitted', 'fetching') AND pull_id IN (
                        SELECT pull_id FROM pulls
                        WHERE status IN ('queued', 'submitted', 'fetching') AND created_at < $4
                        LIMIT $5)
                     RETURNING pull_id",
                )
                .bind(code)
                .bind(message)
                .bind(to_ms(now))
                .bind(to_ms(created_before))
                .bind(limit as i64)
                .fetch_all(&mut *tx)
                .await?;
                for pull_id in &expired {
                    cancel_pull_jobs(&mut tx, pull_id, None, now).await?;
                }
                tx.commit().await?;
                Ok(expired)
            }

            async fn pull_data(&self, pull_id: &str) -> StoreResult<Option<StoredData>> {
                let row = sqlx::query(
                    "SELECT pull_id, kind, content_encoding, body, raw_size, fetched_at FROM pull_data WHERE pull_id = $1",
                )
                .bind(pull_id)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| {
                    Ok(StoredData {
                        pull_id: r.try_get("pull_id")?,
                        kind: parse_enum("pull kind", r.try_get("kind")?)?,
                        content_encoding: r.try_get("content_encoding")?,
                        body: r.try_get("body")?,
                        raw_size: r.try_get("raw_size")?,
                        fetched_at: from_ms(r.try_get("fetched_at")?)?,
                    })
                })
                .transpose()
            }

            async fn record_webhooks(&self, batch: &[NewWebhook], now: DateTime<Utc>) -> StoreResult<Vec<bool>> {
                if batch.is_empty() {
                    return Ok(vec![]);
                }
                let mut tx = self.write_tx().await?;
                // One statement for the inbox rows and one for their jobs, whatever the batch size.
                let mut inbox = sqlx::QueryBuilder::new(
                    "INSERT INTO webhook_inbox (dedupe_key, event_name, upstream_session_id, body, received_at) ",
                );
                inbox.push_values(batch, |mut row, w| {
                    row.push_bind(&w.dedupe_key)
                        .push_bind(w.event_name.as_deref())
                        .push_bind(w.upstream_session_id.as_deref())
                        .push_bind(&w.body)
                        .push_bind(to_ms(now));
                });
                inbox.push(" ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key");
                let stored: Vec<(i64, String)> = inbox.build_query_as().fetch_all(&mut *tx).await?;
                if !stored.is_empty() {
                    let jobs: Vec<NewJob> = stored
                        .iter()
                        .map(|(inbox_id, _)| NewJob::new(Task::ProcessWebhook { inbox_id: *inbox_id }, now))
                        .collect();
                    let mut insert = sqlx::QueryBuilder::new(
                        "INSERT INTO jobs (kind, payload, status, run_at, attempts, max_attempts, dedupe_key, created_at, updated_at) ",
                    );
                    insert.push_values(&jobs, |mut row, j| {
                        row.push_bind(j.task.kind())
                            .push_bind(j.task.payload())
                            .push_bind("queued")
                            .push_bind(to_ms(j.run_at))
                            .push_bind(0i32)
                            .push_bind(j.task.max_attempts())
                            .push_bind(j.task.dedupe_key())
                            .push_bind(to_ms(now))
                            .push_bind(to_ms(now));
                    });
                    insert.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                // The first delivery with a key is the new one; a repeat in the same batch is not.
                let mut fresh_keys: std::collections::HashSet<String> = stored.into_iter().map(|(_, k)| k).collect();
                Ok(batch.iter().map(|w| fresh_keys.remove(&w.dedupe_key)).collect())
            }

            async fn get_webhook(&self, id: i64) -> StoreResult<Option<InboxEvent>> {
                let row = sqlx::query(
                    "SELECT id, dedupe_key, event_name, upstream_session_id, body, received_at FROM webhook_inbox WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| {
                    Ok(InboxEvent {
                        id: r.try_get("id")?,
                        dedupe_key: r.try_get("dedupe_key")?,
                        event_name: r.try_get("event_name")?,
                        upstream_session_id: r.try_get("upstream_session_id")?,
                        body: r.try_get("body")?,
                        received_at: from_ms(r.try_get("received_at")?)?,
                    })
                })
                .transpose()
            }

            async fn enqueue_job(&self, job: &NewJob, now: DateTime<Utc>) -> StoreResult<()> {
                let mut tx = self.write_tx().await?;
                insert_job(&mut tx, job, now).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn claim_jobs(
                &self,
                owner: &str,
                now: DateTime<Utc>,
                lease_until: DateTime<Utc>,
                limit: u32,
            ) -> StoreResult<Vec<Job>> {
                let rows = sqlx::query(
                    CLAIM_JOBS,
                )
                .bind(owner)
                .bind(to_ms(lease_until))
                .bind(to_ms(now))
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let payload: String = r.try_get("payload")?;
                        let kind: String = r.try_get("kind")?;
                        Ok(Job {
                            id: r.try_get("id")?,
                            task: Task::from_row(&kind, &payload),
                            kind,
                            attempts: r.try_get("attempts")?,
                            max_attempts: r.try_get("max_attempts")?,
                        })
                    })
                    .collect()
            }

            async fn extend_lease(
                &self,
                job_id: i64,
                owner: &str,
                lease_until: DateTime<Utc>,
            ) -> StoreResult<bool> {
                let r = sqlx::query(
                    "UPDATE jobs SET lease_expires_at = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'running'",
                )
                .bind(to_ms(lease_until))
                .bind(job_id)
                .bind(owner)
                .execute(&self.pool)
                .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn finish_job(
                &self,
                job_id: i64,
                owner: &str,
                outcome: &JobOutcome,
                now: DateTime<Utc>,
            ) -> StoreResult<()> {
                let (status, run_at, error, attempts_delta) = match outcome {
                    JobOutcome::Done => ("done", None, None, 0),
                    JobOutcome::Retry { run_at, error } => {
                        ("queued", Some(to_ms(*run_at)), Some(error.as_str()), 0)
                    }
                    JobOutcome::Dead { error } => ("dead", None, Some(error.as_str()), 0),
                    JobOutcome::Release => ("queued", Some(to_ms(now)), None, -1),
                };
                let finished: Option<Option<String>> = sqlx::query_scalar(
                    "UPDATE jobs SET status = $1, run_at = COALESCE($2, run_at), last_error = COALESCE($3, last_error),
                            attempts = attempts + $4, lease_owner = NULL, lease_expires_at = NULL, updated_at = $5
                     WHERE id = $6 AND lease_owner = $7 AND status = 'running'
                     RETURNING pull_id",
                )
                .bind(status)
                .bind(run_at)
                .bind(error)
                .bind(attempts_delta)
                .bind(to_ms(now))
                .bind(job_id)
                .bind(owner)
                .fetch_optional(&self.pool)
                .await?;
                // The pull keeps the tally of its steps' attempts (a release was no attempt).
                // A second statement, not a transaction: most jobs concern no pull, and a
                // crash in between costs the tally one count, nothing else.
                if let Some(Some(pull_id)) = finished
                    && !matches!(outcome, JobOutcome::Release)
                {
                    sqlx::query(
                        "UPDATE pulls SET attempts = attempts + 1, last_error = COALESCE($1, last_error) WHERE pull_id = $2",
                    )
                    .bind(error)
                    .bind(pull_id)
                    .execute(&self.pool)
                    .await?;
                }
                Ok(())
            }

            async fn job_counts(&self) -> StoreResult<Vec<(String, i64)>> {
                let rows =
                    sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status ORDER BY status")
                        .fetch_all(&self.pool)
                        .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
                    .collect()
            }
        }

        /// A pull's own columns, and when its next step is planned: the soonest queued job
        /// that works on it.
        const PULL_COLUMNS: &str = "seq, pull_id, consent_id, kind, status, from_date, to_date, upstream_session_id, \
             error_code, error_message, submitted_at, completed_at, data_purged_at, created_at, updated_at, attempts, \
             last_error, (SELECT MIN(j.run_at) FROM jobs j WHERE j.pull_id = pulls.pull_id AND j.status = 'queued') \
             AS next_attempt_at";

        fn date(v: String) -> StoreResult<NaiveDate> {
            opt_date(Some(v)).map(|d| d.expect("some in, some out"))
        }

        fn opt_ms(v: Option<i64>) -> StoreResult<Option<DateTime<Utc>>> {
            v.map(from_ms).transpose()
        }

        fn pull_from_row(r: &$row) -> StoreResult<(i64, Pull)> {
            let pull = Pull {
                pull_id: r.try_get("pull_id")?,
                consent_id: r.try_get("consent_id")?,
                status: parse_enum("pull status", r.try_get("status")?)?,
                kind: parse_enum("pull kind", r.try_get("kind")?)?,
                from: date(r.try_get("from_date")?)?,
                to: date(r.try_get("to_date")?)?,
                upstream_session_id: r.try_get("upstream_session_id")?,
                error_code: r.try_get("error_code")?,
                error_message: r.try_get("error_message")?,
                created_at: from_ms(r.try_get("created_at")?)?,
                updated_at: from_ms(r.try_get("updated_at")?)?,
                submitted_at: opt_ms(r.try_get("submitted_at")?)?,
                completed_at: opt_ms(r.try_get("completed_at")?)?,
                data_purged_at: opt_ms(r.try_get("data_purged_at")?)?,
                attempts: r.try_get::<i64, _>("attempts")?,
                last_error: r.try_get("last_error")?,
                next_attempt_at: opt_ms(r.try_get("next_attempt_at")?)?,
            };
            Ok((r.try_get("seq")?, pull))
        }

        /// Serialises the budget-checking transactions of one consent across instances (a no-op
        /// where the transaction already holds the database's only write lock).
        async fn lock_consent(conn: &mut $conn, consent_id: &str) -> StoreResult<()> {
            if let Some(sql) = LOCK_CONSENT {
                sqlx::query(sql).bind(consent_id).execute(&mut *conn).await?;
            }
            Ok(())
        }

        /// Fetch Recurring AA Data calls sent for a consent since `start`.
        async fn sent_since(
            conn: &mut $conn,
            consent_id: &str,
            start: DateTime<Utc>,
        ) -> StoreResult<u32> {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pull_attempts WHERE consent_id = $1 AND sent_at >= $2",
            )
            .bind(consent_id)
            .bind(to_ms(start))
            .fetch_one(&mut *conn)
            .await?;
            Ok(n as u32)
        }

        /// Whether one more pull fits every `(window start, max)` of a consent's budget. With
        /// `count_queued`, pulls accepted but not yet sent count as well, since each will send.
        async fn budget_allows(
            conn: &mut $conn,
            consent_id: &str,
            budget: &[(DateTime<Utc>, u32)],
            count_queued: bool,
        ) -> StoreResult<bool> {
            let queued: i64 = if count_queued {
                sqlx::query_scalar("SELECT COUNT(*) FROM pulls WHERE consent_id = $1 AND status = 'queued'")
                    .bind(consent_id)
                    .fetch_one(&mut *conn)
                    .await?
            } else {
                0
            };
            for (start, max) in budget {
                if i64::from(sent_since(conn, consent_id, *start).await?) + queued >= i64::from(*max) {
                    return Ok(false);
                }
            }
            Ok(true)
        }

        /// Queued jobs of a pull that has moved on no longer run (all of them, or those of `kind`).
        async fn cancel_pull_jobs(
            conn: &mut $conn,
            pull_id: &str,
            kind: Option<&str>,
            now: DateTime<Utc>,
        ) -> StoreResult<()> {
            sqlx::query(
                "UPDATE jobs SET status = 'cancelled', updated_at = $1
                 WHERE pull_id = $2 AND status = 'queued' AND ($3 IS NULL OR kind = $3)",
            )
            .bind(to_ms(now))
            .bind(pull_id)
            .bind(kind)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }

        async fn insert_pull(conn: &mut $conn, new: &NewPull) -> StoreResult<()> {
            let p = &new.pull;
            sqlx::query(
                "INSERT INTO pulls (pull_id, consent_id, kind, status, from_date, to_date, idempotency_key, request_hash,
                                    created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&p.pull_id)
            .bind(&p.consent_id)
            .bind(p.kind.as_str())
            .bind(p.status.as_str())
            .bind(p.from.to_string())
            .bind(p.to.to_string())
            .bind(new.idempotency_key.as_deref())
            .bind(&new.request_hash)
            .bind(to_ms(p.created_at))
            .bind(to_ms(p.updated_at))
            .execute(&mut *conn)
            .await?;
            Ok(())
        }

        async fn pull_where(
            conn: &mut $conn,
            column: &str,
            value: &str,
        ) -> StoreResult<Option<Pull>> {
            let row = sqlx::query(&format!(
                "SELECT {PULL_COLUMNS} FROM pulls WHERE {column} = $1"
            ))
            .bind(value)
            .fetch_optional(&mut *conn)
            .await?;
            row.map(|r| pull_from_row(&r).map(|(_, p)| p)).transpose()
        }
    };
}
