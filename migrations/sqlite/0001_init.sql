-- Instants are unix milliseconds (INTEGER); calendar dates are TEXT 'YYYY-MM-DD'.

CREATE TABLE sessions (
    session_id      TEXT PRIMARY KEY,
    link_id         TEXT NOT NULL,
    use_case        TEXT NOT NULL,
    journey_mode    TEXT NOT NULL,
    tenure_months   INTEGER NOT NULL,
    frequency_unit  TEXT NOT NULL,
    frequency_value INTEGER NOT NULL,
    from_date       TEXT,
    to_date         TEXT,
    bank_name       TEXT,
    status          TEXT NOT NULL,
    error_code      TEXT,
    error_message   TEXT,
    callback_at     INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE TABLE consents (
    seq                   INTEGER PRIMARY KEY AUTOINCREMENT,
    consent_id            TEXT NOT NULL UNIQUE,
    session_id            TEXT NOT NULL REFERENCES sessions (session_id),
    link_id               TEXT NOT NULL,
    use_case              TEXT NOT NULL,
    journey_mode          TEXT NOT NULL,
    bank_name             TEXT,
    masked_account_number TEXT,
    tenure_months         INTEGER NOT NULL,
    frequency_unit        TEXT NOT NULL,
    frequency_value       INTEGER NOT NULL,
    status                TEXT NOT NULL,
    approved_at           INTEGER NOT NULL,
    expires_at            INTEGER NOT NULL,
    next_pull_at          INTEGER,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL
);
CREATE INDEX consents_by_link ON consents (link_id, seq);
CREATE INDEX consents_by_status ON consents (status, seq);
CREATE INDEX consents_by_session ON consents (session_id);

-- The durable job queue: every piece of follow-up work is a row here.
CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    kind             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'queued', -- queued | running | done | dead
    run_at           INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    last_error       TEXT,
    dedupe_key       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX jobs_queued ON jobs (status, run_at);
CREATE INDEX jobs_leased ON jobs (status, lease_expires_at);
-- At most one live job per dedupe key; finished ones do not block a new one.
CREATE UNIQUE INDEX jobs_live_dedupe ON jobs (dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running');
