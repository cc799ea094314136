-- Which relay sends for each carrier pool (the SQLite twin,
-- 0014_relay_holders.sql, says why).
CREATE TABLE relay_holders (
    pool TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    held_until BIGINT NOT NULL
);

-- Every statement that queues outbox rows notifies the channel
-- mamoru_outbox when its transaction commits (PostgreSQL folds repeats
-- within one transaction into one), so the relays of other nodes wake at
-- once instead of at their next poll.
CREATE FUNCTION mamoru_outbox_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mamoru_outbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER outbox_queued AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION mamoru_outbox_queued();
