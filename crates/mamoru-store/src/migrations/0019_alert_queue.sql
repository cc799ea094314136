-- An alert's copies wait here, not in the outbox, until a relay claims them.
--
-- Publishing to a million subscribers wrote an outbox row per recipient:
-- a heap row and three index entries each (the primary key, the claim
-- index, the index by alert), for rows that mostly live a few minutes. A
-- copy needs no more than what names it (the alert, the subscriber) and
-- what the claim looks it up by (its domain), its times and the district
-- its 確認しました link counts under; so it waits as one entry of one
-- key-ordered table, which is about half the writing per copy. The claim
-- takes copies of the oldest alert first, domain by domain, and turns each
-- into an outbox row already leased, in the same transaction that deletes
-- it here: a copy is in exactly one of the two tables at every commit.
--
-- What ends a copy before any claim (its expiry, a retraction, the
-- subscriber's suspension) moves it into the outbox in its final state, so
-- delivery statistics and follow-ups read the same history as before;
-- deleting the registration deletes its waiting copies.
--
-- `due_at` is when the copy may go (later than `created_at` inside the
-- subscriber's quiet hours); `expires_at` when it is no use any more.
CREATE TABLE alert_queue (
    alert_id INTEGER NOT NULL,
    domain TEXT NOT NULL,
    subscriber_id INTEGER NOT NULL,
    due_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    confirm_district INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (alert_id, domain, subscriber_id)
) STRICT, WITHOUT ROWID;
