-- Fewer index entries per alert copy (the SQLite twin,
-- 0015_outbox_fewer_indexes.sql, says why and what each index holds).
ALTER TABLE outbox DROP CONSTRAINT outbox_message_id_key;
DROP INDEX outbox_due, outbox_by_subscriber, outbox_by_alert, outbox_pool_due, outbox_queued_priority;

CREATE UNIQUE INDEX outbox_message_id ON outbox (message_id) WHERE alert_id = 0;
CREATE INDEX outbox_by_subscriber ON outbox (subscriber_id) WHERE alert_id = 0;
CREATE UNIQUE INDEX outbox_by_alert ON outbox (alert_id, subscriber_id) WHERE alert_id <> 0;
CREATE INDEX outbox_pool_due ON outbox (domain, priority DESC, id, created_at) WHERE state = 'queued';
CREATE INDEX outbox_queued_priority ON outbox (priority DESC, id) WHERE state = 'queued';
CREATE INDEX outbox_sending ON outbox (lease_until) WHERE state = 'sending';
