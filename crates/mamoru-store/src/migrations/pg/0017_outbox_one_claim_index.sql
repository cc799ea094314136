-- One index for the claims' order instead of two (the SQLite twin,
-- 0017_outbox_one_claim_index.sql, says why).
DROP INDEX outbox_queued_priority;
