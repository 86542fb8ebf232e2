-- A pull's next attempt (the soonest queued job on it, read with every pull) is found by an
-- exact seek. With (pull_id, status) alone, SQLite answered MIN(run_at) by walking
-- jobs_queued in run_at order until it met the pull: every queued job in the queue, for a
-- pull with none (docs/benchmarks.md).
DROP INDEX jobs_by_pull;
CREATE INDEX jobs_by_pull ON jobs (pull_id, status, run_at) WHERE pull_id IS NOT NULL;
