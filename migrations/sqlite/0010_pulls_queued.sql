-- The queued pulls of a consent, which count against its fair-use budget when a pull is
-- accepted (db::fits_budget). SQLite keeps no statistics: for `consent_id = ? AND status =
-- 'queued'` it chose pulls_by_status and walked every queued pull of every consent, so a
-- burst of N pulls cost N² row visits (docs/benchmarks.md). Only queued pulls are in this
-- index, so a pull enters it when accepted and leaves it when sent.
CREATE INDEX pulls_queued ON pulls (consent_id) WHERE status = 'queued';
