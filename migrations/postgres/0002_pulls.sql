CREATE TABLE pulls (
    seq                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
    submitted_at        BIGINT,
    completed_at        BIGINT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);
CREATE UNIQUE INDEX pulls_idempotency ON pulls (consent_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX pulls_by_consent ON pulls (consent_id, seq);
CREATE INDEX pulls_by_status ON pulls (status, seq);

CREATE TABLE pull_attempts (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consent_id TEXT NOT NULL,
    pull_id    TEXT NOT NULL,
    sent_at    BIGINT NOT NULL
);
CREATE INDEX pull_attempts_by_consent ON pull_attempts (consent_id, sent_at);

CREATE TABLE pull_data (
    pull_id          TEXT PRIMARY KEY REFERENCES pulls (pull_id),
    kind             TEXT NOT NULL,
    content_encoding TEXT NOT NULL,
    body             BYTEA NOT NULL,
    raw_size         BIGINT NOT NULL,
    fetched_at       BIGINT NOT NULL
);

CREATE TABLE webhook_inbox (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dedupe_key          TEXT NOT NULL UNIQUE,
    event_name          TEXT,
    upstream_session_id TEXT,
    body                BYTEA NOT NULL,
    received_at         BIGINT NOT NULL
);

ALTER TABLE consents ADD COLUMN pull_blocked_until BIGINT;
