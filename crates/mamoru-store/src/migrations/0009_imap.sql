-- Watched IMAP mailboxes ([[ingest.imap]]), one row per configured name.
--
-- `uid_validity` and `last_uid` are where ingest stands in the mailbox:
-- the highest UID it disposed of (moved out) under that UIDVALIDITY. A
-- mailbox whose UIDVALIDITY changed is scanned again from the start
-- (re-handling a message is harmless: registration cooldown, alert source
-- keys, bounce keys).
--
-- `state` is what the watcher is doing ('connecting', 'idle', 'scanning',
-- 'retrying'), `detail` why it retries (a fixed phrase of ours and the
-- server's response code, never its text, which may hold the login), and
-- `retry_at` when (Unix seconds). The counters count dispositions since
-- the row was created.
CREATE TABLE imap_mailboxes (
    name TEXT PRIMARY KEY,
    uid_validity INTEGER NOT NULL DEFAULT 0,
    last_uid INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'connecting' CHECK (state IN ('connecting', 'idle', 'scanning', 'retrying')),
    detail TEXT NOT NULL DEFAULT '',
    retry_at INTEGER NOT NULL DEFAULT 0,
    processed INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0,
    quarantined INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
