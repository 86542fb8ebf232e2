-- Instants are unix milliseconds (BIGINT); calendar dates are TEXT 'YYYY-MM-DD'.
-- Kept column for column with migrations/sqlite, so one set of SQL serves both.

CREATE TABLE sessions (
    session_id      TEXT PRIMARY KEY,
    link_id         TEXT NOT NULL,
    use_case        TEXT NOT NULL,
    journey_mode    TEXT NOT NULL,
    tenure_months   BIGINT NOT NULL,
    frequency_unit  TEXT NOT NULL,
    frequency_value BIGINT NOT NULL,
    from_date       TEXT,
    to_date         TEXT,
    bank_name       TEXT,
    status          TEXT NOT NULL,
    error_code      TEXT,
    error_message   TEXT,
    callback_at     BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE TABLE consents (
    seq                   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consent_id            TEXT NOT NULL UNIQUE,
    session_id            TEXT NOT NULL REFERENCES sessions (session_id),
    link_id               TEXT NOT NULL,
    use_case              TEXT NOT NULL,
    journey_mode          TEXT NOT NULL,
    bank_name             TEXT,
    masked_account_number TEXT,
    tenure_months         BIGINT NOT NULL,
    frequency_unit        TEXT NOT NULL,
    frequency_value       BIGINT NOT NULL,
    status                TEXT NOT NULL,
    approved_at           BIGINT NOT NULL,
    expires_at            BIGINT NOT NULL,
    next_pull_at          BIGINT,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL
);
CREATE INDEX consents_by_link ON consents (link_id, seq);
CREATE INDEX consents_by_status ON consents (status, seq);
CREATE INDEX consents_by_session ON consents (session_id);

CREATE TABLE jobs (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'queued',
    run_at           BIGINT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    last_error       TEXT,
    dedupe_key       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX jobs_queued ON jobs (status, run_at);
CREATE INDEX jobs_leased ON jobs (status, lease_expires_at);
CREATE UNIQUE INDEX jobs_live_dedupe ON jobs (dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running');
