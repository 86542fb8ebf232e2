-- The outbox: every state change the lender cares about, written in the transaction of the
-- change (see docs/architecture.md, "Events"). Oldest first by seq.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT NOT NULL UNIQUE,
    type       TEXT NOT NULL,
    consent_id TEXT,
    data       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX events_by_type ON events (type, seq);
CREATE INDEX events_by_consent ON events (consent_id, seq);

-- updated_after on the lists.
CREATE INDEX pulls_by_update ON pulls (updated_at, seq);
CREATE INDEX consents_by_update ON consents (updated_at, seq);
