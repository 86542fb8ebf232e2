-- The lender's webhook endpoints and the deliveries of events to them.
CREATE TABLE webhook_endpoints (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id      TEXT NOT NULL UNIQUE,
    url              TEXT NOT NULL,
    description      TEXT,
    event_types      TEXT, -- a JSON array; NULL: every type
    status           TEXT NOT NULL, -- enabled | disabled
    disabled_reason  TEXT,
    secret           TEXT NOT NULL,
    old_secret       TEXT,
    old_secret_until BIGINT,
    failing_since    BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

-- One row per event and endpoint: pending until delivered or given up (failed).
CREATE TABLE deliveries (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_seq       BIGINT NOT NULL,
    event_id        TEXT NOT NULL,
    endpoint_id     TEXT NOT NULL,
    status          TEXT NOT NULL, -- pending | delivered | failed
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, status, event_seq);
-- The metric of the oldest undelivered event per endpoint reads only pending rows.
CREATE INDEX deliveries_pending ON deliveries (endpoint_id, created_at) WHERE status = 'pending';

-- Every attempt, for GET /api/v1/events/{id}/deliveries.
CREATE TABLE delivery_attempts (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_seq BIGINT NOT NULL,
    event_id     TEXT NOT NULL,
    endpoint_id  TEXT NOT NULL,
    attempted_at BIGINT NOT NULL,
    http_status  BIGINT,
    latency_ms   BIGINT NOT NULL,
    response     TEXT,
    error        TEXT
);
CREATE INDEX delivery_attempts_by_event ON delivery_attempts (event_id, seq);
