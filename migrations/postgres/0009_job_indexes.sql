-- Job indexes that serve the queries that read them and nothing more (docs/benchmarks.md).
--
-- A pull's next attempt (the soonest queued job on it, read with every pull) is an exact
-- seek. With (pull_id, status) alone, SQLite answered MIN(run_at) by walking jobs_queued in
-- run_at order until it met the pull: the whole queue, for a pull with no queued job.
DROP INDEX jobs_by_pull;
CREATE INDEX jobs_by_pull ON jobs (pull_id, status, run_at) WHERE pull_id IS NOT NULL;

-- The claim reads queued and leased jobs, housekeeping finished ones. Each index holds only
-- the rows in its state, so a job moving queued -> running -> done changes a few index
-- entries instead of every status index twice, and finished jobs (most of the table) sit in
-- jobs_finished and jobs_by_state only. The status column stays first so that SQLite, which
-- has no statistics, still prefers these over jobs_by_state.
DROP INDEX jobs_queued;
CREATE INDEX jobs_queued ON jobs (status, run_at) WHERE status = 'queued';
DROP INDEX jobs_leased;
CREATE INDEX jobs_leased ON jobs (status, lease_expires_at) WHERE status = 'running';
DROP INDEX jobs_finished;
CREATE INDEX jobs_finished ON jobs (status, updated_at) WHERE status IN ('done', 'cancelled', 'dead');
