-- Fewer index entries per alert copy.
--
-- Publishing an alert writes one outbox row per recipient in one statement,
-- and each index of the table costs an entry per row: at 400 000 recipients
-- the seven indexes were most of the time to commit. Now a copy of an alert
-- writes four, and each index holds only the rows its queries look for:
--
-- - outbox_pool_due and outbox_queued_priority, the claims' orders, hold
--   the queued rows alone (a claimed row leaves them); outbox_sending holds
--   the leased ones, for the claim of a dead relay's rows and the queue
--   shape. (state, next_attempt_at) served nothing these do not.
-- - outbox_by_alert is (alert_id, subscriber_id) and unique: an alert's rows
--   and one subscriber's copy of it. The Message-ID of a copy is
--   alert.ALERT.SUBSCRIBER@…, so this also keeps those Message-IDs unique;
--   the Message-ID index holds the other rows only.
-- - outbox_by_subscriber holds the rows that are not copies of an alert; a
--   subscriber's copies are found through outbox_by_alert, one probe per
--   alert (OUTBOX_OF_SUBSCRIBER in manage.rs). That is rare work (a
--   registration deleted or suspended); publishing is not.
--
-- Every query names the partial indexes' conditions literally
-- (`state = 'queued'`, `alert_id <> 0`, `alert_id = 0`): neither engine uses
-- a partial index for a condition it cannot prove from the query text.
--
-- SQLite cannot drop a column's UNIQUE, so the table is rebuilt as in
-- 0007_autoincrement.sql, ids kept and the AUTOINCREMENT sequence carried
-- over (an outbox id is part of a VERP return path and is never reused).

CREATE TEMP TABLE outbox_seq AS SELECT seq FROM sqlite_sequence WHERE name = 'outbox';

CREATE TABLE outbox_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    subscriber_id INTEGER NOT NULL DEFAULT 0,
    domain TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient_sealed BLOB NOT NULL,
    message_id TEXT NOT NULL,
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
    alert_id INTEGER NOT NULL DEFAULT 0,
    confirm_district INTEGER NOT NULL DEFAULT 0
) STRICT;
INSERT INTO outbox_new (id, kind, priority, subscriber_id, domain, sender, recipient_sealed, message_id,
                        content_sealed, state, attempts, next_attempt_at, lease_until, last_error, created_at,
                        expires_at, done_at, alert_id, confirm_district)
    SELECT id, kind, priority, subscriber_id, domain, sender, recipient_sealed, message_id,
           content_sealed, state, attempts, next_attempt_at, lease_until, last_error, created_at,
           expires_at, done_at, alert_id, confirm_district
    FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;
DELETE FROM sqlite_sequence WHERE name = 'outbox';
INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox', seq FROM temp.outbox_seq;
DROP TABLE temp.outbox_seq;

CREATE UNIQUE INDEX outbox_message_id ON outbox (message_id) WHERE alert_id = 0;
CREATE INDEX outbox_by_subscriber ON outbox (subscriber_id) WHERE alert_id = 0;
CREATE UNIQUE INDEX outbox_by_alert ON outbox (alert_id, subscriber_id) WHERE alert_id <> 0;
CREATE INDEX outbox_pool_due ON outbox (domain, priority DESC, id, created_at) WHERE state = 'queued';
CREATE INDEX outbox_queued_priority ON outbox (priority DESC, id) WHERE state = 'queued';
CREATE INDEX outbox_sending ON outbox (lease_until) WHERE state = 'sending';
