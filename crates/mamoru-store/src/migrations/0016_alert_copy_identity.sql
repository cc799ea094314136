-- An alert's copies take their envelope sender and Message-ID domain from
-- the alert, not from each outbox row.
--
-- Publishing writes one outbox row per recipient in one statement; the
-- sender (the same for every copy) and the Message-ID
-- `alert.ALERT.SUBSCRIBER@DOMAIN` (which follows from the row's alert and
-- subscriber ids) were a fifth of each row's bytes. The alert keeps them
-- once; the claim builds each copy's from them. Copies queued with both
-- (by an older version) keep their own.
ALTER TABLE alerts ADD COLUMN sender TEXT NOT NULL DEFAULT '';
ALTER TABLE alerts ADD COLUMN mail_domain TEXT NOT NULL DEFAULT '';
