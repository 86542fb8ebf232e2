ALTER TABLE consents ADD COLUMN pull_interval_secs BIGINT;
ALTER TABLE consents ADD COLUMN ended_at BIGINT;
CREATE INDEX consents_due ON consents (status, next_pull_at);
CREATE INDEX consents_expiry ON consents (status, expires_at);
CREATE INDEX consents_ended ON consents (ended_at) WHERE ended_at IS NOT NULL;

ALTER TABLE pulls ADD COLUMN data_purged_at BIGINT;
CREATE INDEX pull_data_by_age ON pull_data (fetched_at);

CREATE TABLE transactions (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consent_id TEXT NOT NULL,
    hash       TEXT NOT NULL,
    txn_at     TEXT NOT NULL,
    pull_id    TEXT NOT NULL,
    body       TEXT NOT NULL,
    fetched_at BIGINT NOT NULL,
    UNIQUE (consent_id, hash)
);
CREATE INDEX transactions_timeline ON transactions (consent_id, txn_at, seq);
CREATE INDEX transactions_by_age ON transactions (fetched_at);

-- Housekeeping: the inbox is kept for the data life too.
CREATE INDEX webhook_inbox_by_age ON webhook_inbox (received_at);
-- Webhooks that overtake their pull's submission are found again by session.
CREATE INDEX webhook_inbox_by_session ON webhook_inbox (upstream_session_id);
