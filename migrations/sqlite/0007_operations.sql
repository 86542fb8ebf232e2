-- Operations (see docs/architecture.md, "Operating it"): the jobs list and its gauges, and
-- counts that /metrics reads without scanning a table.

-- GET /api/v1/jobs?state=&kind= and the jobs{kind,state} gauge read live and dead jobs only.
CREATE INDEX jobs_by_state ON jobs (status, kind, id);

-- consents{status}: kept by triggers, so a scrape reads five rows, not a million consents.
-- Every status has its row from the start, so the triggers only ever UPDATE.
CREATE TABLE consent_status_counts (
    status TEXT PRIMARY KEY,
    n      INTEGER NOT NULL
);
INSERT INTO consent_status_counts (status, n)
    VALUES ('active', 0), ('paused', 0), ('revoked', 0), ('expired', 0), ('invalid', 0);
UPDATE consent_status_counts
    SET n = (SELECT COUNT(*) FROM consents WHERE consents.status = consent_status_counts.status);

CREATE TRIGGER consents_counted_insert AFTER INSERT ON consents BEGIN
    UPDATE consent_status_counts SET n = n + 1 WHERE status = NEW.status;
END;
-- One statement for both rows: two instances moving consents in opposite directions take
-- the rows in the same order.
CREATE TRIGGER consents_counted_update AFTER UPDATE OF status ON consents
    WHEN OLD.status <> NEW.status BEGIN
    UPDATE consent_status_counts
        SET n = n + CASE WHEN status = NEW.status THEN 1 ELSE -1 END
        WHERE status IN (OLD.status, NEW.status);
END;
CREATE TRIGGER consents_counted_delete AFTER DELETE ON consents BEGIN
    UPDATE consent_status_counts SET n = n - 1 WHERE status = OLD.status;
END;

-- pulls_total{kind,outcome}: pulls that ended, by kind and end state, since the database began.
CREATE TABLE pull_outcome_counts (
    kind    TEXT NOT NULL,
    outcome TEXT NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (kind, outcome)
);
INSERT INTO pull_outcome_counts (kind, outcome, n)
    SELECT k.kind, o.outcome, 0
    FROM (SELECT 'insights' AS kind UNION ALL SELECT 'transactions') k,
         (SELECT 'completed' AS outcome UNION ALL SELECT 'failed' UNION ALL SELECT 'expired') o;
UPDATE pull_outcome_counts
    SET n = (SELECT COUNT(*) FROM pulls
             WHERE pulls.kind = pull_outcome_counts.kind AND pulls.status = pull_outcome_counts.outcome);

CREATE TRIGGER pulls_counted_end AFTER UPDATE OF status ON pulls
    WHEN OLD.status IN ('queued', 'submitted', 'fetching')
     AND NEW.status IN ('completed', 'failed', 'expired') BEGIN
    UPDATE pull_outcome_counts SET n = n + 1 WHERE kind = NEW.kind AND outcome = NEW.status;
END;
