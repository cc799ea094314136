-- An alert's copies wait here, not in the outbox, until a relay claims them
-- (the SQLite twin, 0019_alert_queue.sql, says why).
CREATE TABLE alert_queue (
    alert_id BIGINT NOT NULL,
    domain TEXT NOT NULL,
    subscriber_id BIGINT NOT NULL,
    due_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    confirm_district BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (alert_id, domain, subscriber_id)
);
-- A publish wakes the relays of other nodes as a queued outbox row does.
CREATE TRIGGER alert_queue_queued AFTER INSERT ON alert_queue FOR EACH STATEMENT EXECUTE FUNCTION mamoru_outbox_queued();
