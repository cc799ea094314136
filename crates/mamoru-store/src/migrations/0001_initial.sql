-- Subscribers. The address is never stored in clear: `addr_sealed` is the
-- AEAD ciphertext, `addr_index` the HMAC blind index used for lookups.
-- `domain` (the carrier's domain, not personal on its own) feeds per-carrier
-- statistics and relay pools.
CREATE TABLE subscribers (
    id INTEGER PRIMARY KEY,
    addr_index BLOB NOT NULL UNIQUE,
    addr_sealed BLOB NOT NULL,
    domain TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'active', 'suspended')),
    created_at INTEGER NOT NULL,
    confirmed_at INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE INDEX subscribers_pending ON subscribers (status, created_at);

CREATE TABLE subscriber_districts (
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    district_id INTEGER NOT NULL,
    PRIMARY KEY (subscriber_id, district_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX subscriber_districts_by_district ON subscriber_districts (district_id, subscriber_id);

-- One row per issued token. `used_at` is set in the same transaction as the
-- change the token authorises, which makes tokens single use.
CREATE TABLE tokens (
    nonce BLOB PRIMARY KEY,
    purpose TEXT NOT NULL,
    subject_id INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE INDEX tokens_by_subject ON tokens (subject_id);

-- Mail waiting for the relay. Recipient and content are sealed (the content
-- holds the address in its To: header). `message_id` is stable, so a
-- duplicate delivery is identical and countable.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    subscriber_id INTEGER NOT NULL DEFAULT 0,
    domain TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient_sealed BLOB NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    content_sealed BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'sending', 'sent', 'failed', 'expired')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_until INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    done_at INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_by_subscriber ON outbox (subscriber_id);

-- Fixed-window counters for anti-abuse limits, updated with one atomic
-- upsert each. `key` is a blind index or a constant, never an address.
CREATE TABLE rate_limits (
    scope TEXT NOT NULL,
    key BLOB NOT NULL,
    window_start INTEGER NOT NULL,
    count INTEGER NOT NULL,
    last_at INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
) STRICT, WITHOUT ROWID;

-- Who did what, when. Addresses appear masked, if at all.
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
) STRICT;
