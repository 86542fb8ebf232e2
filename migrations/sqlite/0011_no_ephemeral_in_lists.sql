-- SQLite evaluates `x IN ('a', 'b', 'c')` (more than two constants), where no index serves
-- it, by building a temporary b-tree of the list each time the statement runs: a pager
-- opened, a page zeroed, three rows inserted, all closed again. A partial index's WHERE is
-- evaluated on every insert and update of its table, and a trigger's WHEN on every update it
-- watches, so these lists cost a pull about 16 such b-trees (docs/benchmarks.md, "seventh
-- session"). The same tests written as ORs of equalities are evaluated in place.
--
-- A query reaches a partial index only when one of its terms is the index's WHERE as
-- written, so the one query that reads jobs_finished (housekeeping) spells it the same way.

DROP INDEX jobs_finished;
CREATE INDEX jobs_finished ON jobs (status, updated_at)
    WHERE status = 'done' OR status = 'cancelled' OR status = 'dead';

DROP INDEX pulls_open;
CREATE INDEX pulls_open ON pulls (created_at)
    WHERE status = 'queued' OR status = 'submitted' OR status = 'fetching';

DROP TRIGGER pulls_counted_end;
CREATE TRIGGER pulls_counted_end AFTER UPDATE OF status ON pulls
    WHEN (OLD.status = 'queued' OR OLD.status = 'submitted' OR OLD.status = 'fetching')
     AND (NEW.status = 'completed' OR NEW.status = 'failed' OR NEW.status = 'expired') BEGIN
    UPDATE pull_outcome_counts SET n = n + 1 WHERE kind = NEW.kind AND outcome = NEW.status;
END;

DROP TRIGGER pulls_counted_hourly;
CREATE TRIGGER pulls_counted_hourly AFTER UPDATE OF status ON pulls
    WHEN (OLD.status = 'queued' OR OLD.status = 'submitted' OR OLD.status = 'fetching')
     AND (NEW.status = 'completed' OR NEW.status = 'failed' OR NEW.status = 'expired') BEGIN
    INSERT INTO pull_outcomes_hourly (hour, outcome, n)
        VALUES ((COALESCE(NEW.completed_at, NEW.updated_at) + 19800000) / 3600000, NEW.status, 1)
        ON CONFLICT (hour, outcome) DO UPDATE SET n = n + 1;
END;
