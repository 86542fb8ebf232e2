CREATE TABLE pulls (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    pull_id             TEXT NOT NULL UNIQUE,
    consent_id          TEXT NOT NULL REFERENCES consents (consent_id),
    kind                TEXT NOT NULL,
    status              TEXT NOT NULL,
    from_date           TEXT NOT NULL,
    to_date             TEXT NOT NULL,
    upstream_session_id TEXT UNIQUE,
    error_code          TEXT,
    error_message       TEXT,
    idempotency_key     TEXT,
    request_hash        TEXT,
    submitted_at        INTEGER,
    completed_at        INTEGER,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
CREATE UNIQUE INDEX pulls_idempotency ON pulls (consent_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX pulls_by_consent ON pulls (consent_id, seq);
CREATE INDEX pulls_by_status ON pulls (status, seq);

-- Every Fetch Recurring AA Data call that may have reached the upstream: the fair-use ledger.
CREATE TABLE pull_attempts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    consent_id TEXT NOT NULL,
    pull_id    TEXT NOT NULL,
    sent_at    INTEGER NOT NULL
);
CREATE INDEX pull_attempts_by_consent ON pull_attempts (consent_id, sent_at);

-- Enriched data as fetched, gzip-compressed; one row per pull.
CREATE TABLE pull_data (
    pull_id          TEXT PRIMARY KEY REFERENCES pulls (pull_id),
    kind             TEXT NOT NULL,
    content_encoding TEXT NOT NULL,
    body             BLOB NOT NULL,
    raw_size         INTEGER NOT NULL,
    fetched_at       INTEGER NOT NULL
);

-- Every authentic webhook, as received. dedupe_key is the sender's id or the body's hash.
CREATE TABLE webhook_inbox (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe_key          TEXT NOT NULL UNIQUE,
    event_name          TEXT,
    upstream_session_id TEXT,
    body                BLOB NOT NULL,
    received_at         INTEGER NOT NULL
);

-- Set when the upstream said CONSENT_OVERUSED: no pull is sent before this instant.
ALTER TABLE consents ADD COLUMN pull_blocked_until INTEGER;
