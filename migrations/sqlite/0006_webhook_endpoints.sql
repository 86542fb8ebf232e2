-- The lender's webhook endpoints and the deliveries of events to them.
CREATE TABLE webhook_endpoints (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id      TEXT NOT NULL UNIQUE,
    url              TEXT NOT NULL,
    description      TEXT,
    event_types      TEXT, -- a JSON array; NULL: every type
    status           TEXT NOT NULL, -- enabled | disabled
    disabled_reason  TEXT,
    secret           TEXT NOT NULL,
    old_secret       TEXT,
    old_secret_until INTEGER,
    failing_since    INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);

-- One row per event and endpoint: pending until delivered or given up (failed).
CREATE TABLE deliveries (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq       INTEGER NOT NULL,
    event_id        TEXT NOT NULL,
    endpoint_id     TEXT NOT NULL,
    status          TEXT NOT NULL, -- pending | delivered | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, status, event_seq);
-- The metric of the oldest undelivered event per endpoint reads only pending rows.
CREATE INDEX deliveries_pending ON deliveries (endpoint_id, created_at) WHERE status = 'pending';

-- Every attempt, for GET /api/v1/events/{id}/deliveries.
CREATE TABLE delivery_attempts (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_seq INTEGER NOT NULL,
    event_id     TEXT NOT NULL,
    endpoint_id  TEXT NOT NULL,
    attempted_at INTEGER NOT NULL,
    http_status  INTEGER,
    latency_ms   INTEGER NOT NULL,
    response     TEXT,
    error        TEXT
);
CREATE INDEX delivery_attempts_by_event ON delivery_attempts (event_id, seq);
