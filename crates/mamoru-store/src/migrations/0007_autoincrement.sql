-- Ids that leave the database are never reused.
--
-- A subscriber id is a token subject and part of alert Message-IDs, an
-- alert id a token subject and part of Message-IDs, an outbox id the VERP
-- return path `bounce+ID-TAG@`. Without AUTOINCREMENT SQLite hands out
-- max(id) + 1, so deleting the newest row gave its id to the next one: a
-- late bounce or an old link would then name a stranger's row.
-- AUTOINCREMENT keeps the highest id ever used in sqlite_sequence.
--
-- SQLite cannot add AUTOINCREMENT to a table, so each is rebuilt: create,
-- copy (ids kept, so the sequence starts at the current maximum), drop,
-- rename, recreate its indexes. The runner applies migrations with foreign
-- key enforcement off (dropping `subscribers` would otherwise cascade into
-- `subscriber_districts`) and checks every foreign key before committing.

CREATE TABLE subscribers_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    addr_index BLOB NOT NULL UNIQUE,
    addr_sealed BLOB NOT NULL,
    domain TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'active', 'suspended')),
    created_at INTEGER NOT NULL,
    confirmed_at INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL,
    link_nonce BLOB NOT NULL DEFAULT X'0000000000000000',
    suspended_reason TEXT NOT NULL DEFAULT '',
    undeliverable_at INTEGER NOT NULL DEFAULT 0,
    bounce_score INTEGER NOT NULL DEFAULT 0,
    suspended_at INTEGER NOT NULL DEFAULT 0
) STRICT;
INSERT INTO subscribers_new (id, addr_index, addr_sealed, domain, status, created_at, confirmed_at, updated_at,
                             link_nonce, suspended_reason, undeliverable_at, bounce_score, suspended_at)
    SELECT id, addr_index, addr_sealed, domain, status, created_at, confirmed_at, updated_at,
           link_nonce, suspended_reason, undeliverable_at, bounce_score, suspended_at
    FROM subscribers;
DROP TABLE subscribers;
ALTER TABLE subscribers_new RENAME TO subscribers;
CREATE INDEX subscribers_pending ON subscribers (status, created_at);

CREATE TABLE outbox_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
    done_at INTEGER NOT NULL DEFAULT 0,
    alert_id INTEGER NOT NULL DEFAULT 0
) STRICT;
INSERT INTO outbox_new (id, kind, priority, subscriber_id, domain, sender, recipient_sealed, message_id,
                        content_sealed, state, attempts, next_attempt_at, lease_until, last_error, created_at,
                        expires_at, done_at, alert_id)
    SELECT id, kind, priority, subscriber_id, domain, sender, recipient_sealed, message_id,
           content_sealed, state, attempts, next_attempt_at, lease_until, last_error, created_at,
           expires_at, done_at, alert_id
    FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_by_subscriber ON outbox (subscriber_id);
CREATE INDEX outbox_pool_due ON outbox (state, domain, priority DESC, id);
CREATE INDEX outbox_queued_priority ON outbox (state, priority DESC, id);
CREATE INDEX outbox_by_alert ON outbox (alert_id) WHERE alert_id <> 0;

CREATE TABLE alerts_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    admin_id INTEGER NOT NULL REFERENCES admins (id),
    source TEXT NOT NULL CHECK (source IN ('mail', 'web', 'cli')),
    source_key TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT '',
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    districts TEXT NOT NULL,
    is_test INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'draft' CHECK (state IN ('draft', 'published', 'rejected')),
    created_at INTEGER NOT NULL,
    published_at INTEGER NOT NULL DEFAULT 0,
    recipients INTEGER NOT NULL DEFAULT 0
) STRICT;
INSERT INTO alerts_new (id, admin_id, source, source_key, kind, title, text, districts, is_test, state,
                        created_at, published_at, recipients)
    SELECT id, admin_id, source, source_key, kind, title, text, districts, is_test, state,
           created_at, published_at, recipients
    FROM alerts;
DROP TABLE alerts;
ALTER TABLE alerts_new RENAME TO alerts;
CREATE UNIQUE INDEX alerts_by_source_key ON alerts (source_key) WHERE source_key <> '';
CREATE INDEX alerts_published ON alerts (state, published_at);
