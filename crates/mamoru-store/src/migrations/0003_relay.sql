-- The carrier-aware relay.
--
-- A recipient the carrier says does not exist (550 5.1.1, "unknown user") is
-- suspended at once: docomo and SoftBank block senders that keep mailing dead
-- addresses. `suspended_reason` says why a subscriber is suspended
-- ('unknown-user' here, as for an unknown-user bounce), and
-- `undeliverable_at` when the carrier first refused the address.
ALTER TABLE subscribers ADD COLUMN suspended_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE subscribers ADD COLUMN undeliverable_at INTEGER NOT NULL DEFAULT 0;

-- The relay claims rows per carrier pool, that is per recipient domain, in
-- priority order: these indexes let each claim walk only the rows it takes
-- instead of sorting the whole backlog.
CREATE INDEX outbox_pool_due ON outbox (state, domain, priority DESC, id);
CREATE INDEX outbox_queued_priority ON outbox (state, priority DESC, id);

-- The live state of each carrier pool, written by the relay every second or
-- so and read by `mamoru queue`. One row per pool; not an audit trail.
CREATE TABLE relay_pools (
    name TEXT PRIMARY KEY,
    rate_configured REAL NOT NULL DEFAULT 0,
    rate_now REAL NOT NULL DEFAULT 0,
    paused_until_ms INTEGER NOT NULL DEFAULT 0,
    connections INTEGER NOT NULL DEFAULT 0,
    max_connections INTEGER NOT NULL DEFAULT 0,
    throttles INTEGER NOT NULL DEFAULT 0,
    sent INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL DEFAULT 0
) STRICT, WITHOUT ROWID;
