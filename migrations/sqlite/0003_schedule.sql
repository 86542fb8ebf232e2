-- The lender's own slower cadence for a consent, if any.
ALTER TABLE consents ADD COLUMN pull_interval_secs INTEGER;
-- When the consent left the schedule for good (revoked, expired, invalid).
ALTER TABLE consents ADD COLUMN ended_at INTEGER;
-- The scheduler's only query: due consents, in due order, through this index.
CREATE INDEX consents_due ON consents (status, next_pull_at);
-- Housekeeping: consents reaching tenure end, and consents whose data life is over.
CREATE INDEX consents_expiry ON consents (status, expires_at);
CREATE INDEX consents_ended ON consents (ended_at) WHERE ended_at IS NOT NULL;

-- Set when the pull's stored data was deleted at the end of its data life.
ALTER TABLE pulls ADD COLUMN data_purged_at INTEGER;
CREATE INDEX pull_data_by_age ON pull_data (fetched_at);

-- One merged timeline per consent: a transaction that several pulls returned is kept once.
CREATE TABLE transactions (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    consent_id TEXT NOT NULL,
    hash       TEXT NOT NULL,
    txn_at     TEXT NOT NULL, -- 'YYYY-MM-DD HH:MM:SS' as the upstream sends it
    pull_id    TEXT NOT NULL,
    body       TEXT NOT NULL,
    fetched_at INTEGER NOT NULL,
    UNIQUE (consent_id, hash)
);
CREATE INDEX transactions_timeline ON transactions (consent_id, txn_at, seq);
CREATE INDEX transactions_by_age ON transactions (fetched_at);

-- Housekeeping: the inbox is kept for the data life too.
CREATE INDEX webhook_inbox_by_age ON webhook_inbox (received_at);
-- Webhooks that overtake their pull's submission are found again by session.
CREATE INDEX webhook_inbox_by_session ON webhook_inbox (upstream_session_id);
