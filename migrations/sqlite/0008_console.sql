-- The operator console (docs/architecture.md, "The console").

-- Signed-in operators. The cookie carries a random secret; only its SHA-256 is stored, so a
-- copy of the database signs no one in. `token_fingerprint` names which API token signed in:
-- a session ends when its token is no longer configured.
CREATE TABLE console_sessions (
    session_hash      TEXT PRIMARY KEY,
    token_fingerprint TEXT NOT NULL,
    csrf_token        TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL
);
CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);

-- The key that signs console cookies, made once and shared by every instance.
CREATE TABLE console_keys (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    key TEXT NOT NULL
);

-- Webhook deliveries that were not stored as new: duplicates and rejections (by reason). A
-- rejected delivery's body is never kept.
CREATE TABLE webhook_receipts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    outcome     TEXT NOT NULL, -- duplicate | rejected
    reason      TEXT,
    dedupe_key  TEXT,
    body_bytes  INTEGER NOT NULL,
    request_id  TEXT,
    received_at INTEGER NOT NULL
);
CREATE INDEX webhook_receipts_by_outcome ON webhook_receipts (outcome, received_at);
CREATE INDEX webhook_receipts_by_age ON webhook_receipts (received_at);

-- Pulls ended per hour by outcome, kept by a trigger, for the overview and its 30-day chart
-- without scanning the pulls. Hours are counted on Indian time (UTC+05:30, no daylight
-- saving), so that they fall into Indian calendar days exactly.
CREATE TABLE pull_outcomes_hourly (
    hour    INTEGER NOT NULL, -- (milliseconds since the epoch + 19,800,000) / 3,600,000
    outcome TEXT NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (hour, outcome)
);
INSERT INTO pull_outcomes_hourly (hour, outcome, n)
    SELECT (COALESCE(completed_at, updated_at) + 19800000) / 3600000, status, COUNT(*)
    FROM pulls WHERE status IN ('completed', 'failed', 'expired')
    GROUP BY 1, 2;
CREATE TRIGGER pulls_counted_hourly AFTER UPDATE OF status ON pulls
    WHEN OLD.status IN ('queued', 'submitted', 'fetching')
     AND NEW.status IN ('completed', 'failed', 'expired') BEGIN
    INSERT INTO pull_outcomes_hourly (hour, outcome, n)
        VALUES ((COALESCE(NEW.completed_at, NEW.updated_at) + 19800000) / 3600000, NEW.status, 1)
        ON CONFLICT (hour, outcome) DO UPDATE SET n = n + 1;
END;

-- The overview's count of failed notifications, and the notifications page, newest first.
CREATE INDEX deliveries_by_status ON deliveries (status, seq);
