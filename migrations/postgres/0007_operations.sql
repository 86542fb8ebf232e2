-- Operations (see docs/architecture.md, "Operating it"): the jobs list and its gauges, and
-- counts that /metrics reads without scanning a table.

-- GET /api/v1/jobs?state=&kind= and the jobs{kind,state} gauge read live and dead jobs only.
CREATE INDEX jobs_by_state ON jobs (status, kind, id);

-- consents{status}: kept by triggers, so a scrape reads five rows, not a million consents.
-- Every status has its row from the start, so the triggers only ever UPDATE.
CREATE TABLE consent_status_counts (
    status TEXT PRIMARY KEY,
    n      BIGINT NOT NULL
);
INSERT INTO consent_status_counts (status, n)
    VALUES ('active', 0), ('paused', 0), ('revoked', 0), ('expired', 0), ('invalid', 0);
UPDATE consent_status_counts
    SET n = (SELECT COUNT(*) FROM consents WHERE consents.status = consent_status_counts.status);

-- One statement for both rows: two instances moving consents in opposite directions take
-- the rows in the same order.
CREATE FUNCTION count_consent_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE consent_status_counts SET n = n + 1 WHERE status = NEW.status;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE consent_status_counts SET n = n - 1 WHERE status = OLD.status;
    ELSE
        UPDATE consent_status_counts
            SET n = n + CASE WHEN status = NEW.status THEN 1 ELSE -1 END
            WHERE status IN (OLD.status, NEW.status);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER consents_counted AFTER INSERT OR DELETE ON consents
    FOR EACH ROW EXECUTE FUNCTION count_consent_status();
CREATE TRIGGER consents_counted_update AFTER UPDATE OF status ON consents
    FOR EACH ROW WHEN (OLD.status <> NEW.status) EXECUTE FUNCTION count_consent_status();

-- pulls_total{kind,outcome}: pulls that ended, by kind and end state, since the database began.
CREATE TABLE pull_outcome_counts (
    kind    TEXT NOT NULL,
    outcome TEXT NOT NULL,
    n       BIGINT NOT NULL,
    PRIMARY KEY (kind, outcome)
);
INSERT INTO pull_outcome_counts (kind, outcome, n)
    SELECT k.kind, o.outcome, 0
    FROM (VALUES ('insights'), ('transactions')) AS k (kind),
         (VALUES ('completed'), ('failed'), ('expired')) AS o (outcome);
UPDATE pull_outcome_counts
    SET n = (SELECT COUNT(*) FROM pulls
             WHERE pulls.kind = pull_outcome_counts.kind AND pulls.status = pull_outcome_counts.outcome);

CREATE FUNCTION count_pull_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pull_outcome_counts SET n = n + 1 WHERE kind = NEW.kind AND outcome = NEW.status;
    RETURN NULL;
END $$;
CREATE TRIGGER pulls_counted_end AFTER UPDATE OF status ON pulls
    FOR EACH ROW
    WHEN (OLD.status IN ('queued', 'submitted', 'fetching')
          AND NEW.status IN ('completed', 'failed', 'expired'))
    EXECUTE FUNCTION count_pull_outcome();
