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

-- A claim of waiting copies and the end of waiting copies insert outbox
-- rows too, already leased or finished: nothing another relay has to wake
-- for. The outbox's trigger now notifies only when a statement inserted a
-- row still to send; woken for every claim, every node's pools claimed
-- once more for each claim of any of them.
DROP TRIGGER outbox_queued ON outbox;
CREATE FUNCTION mamoru_outbox_rows_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted WHERE state = 'queued') THEN
        PERFORM pg_notify('mamoru_outbox', '');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_queued AFTER INSERT ON outbox REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION mamoru_outbox_rows_queued();
