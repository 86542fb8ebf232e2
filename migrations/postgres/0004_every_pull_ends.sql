-- Every pull ends (see docs/architecture.md, "Every pull ends").

-- A job that works on a pull names it, so the pull can show its progress (attempts, last
-- error, next attempt) and a job that dies can fail its pull.
ALTER TABLE jobs ADD COLUMN pull_id TEXT;
CREATE INDEX jobs_by_pull ON jobs (pull_id, status) WHERE pull_id IS NOT NULL;
-- Housekeeping drops finished jobs (done, cancelled, dead) by age.
CREATE INDEX jobs_finished ON jobs (status, updated_at);

ALTER TABLE pulls ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE pulls ADD COLUMN last_error TEXT;
-- The deadline sweep: open pulls by age.
CREATE INDEX pulls_open ON pulls (created_at) WHERE status IN ('queued', 'submitted', 'fetching');

-- Housekeeping: sessions never completed, and fair-use ledger rows past the longest window.
CREATE INDEX sessions_by_age ON sessions (status, updated_at);
CREATE INDEX pull_attempts_by_age ON pull_attempts (sent_at);
