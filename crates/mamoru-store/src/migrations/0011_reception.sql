-- 受信テスト: a parent's test mail and whether its 届きました link came
-- back. No address and no subscriber: the mail itself is an ordinary
-- outbox row (sealed, unattached); this row keeps the recipient's domain
-- only, to show the help of the right carrier. Deleted at `expires_at`.
CREATE TABLE reception_tests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    arrived_nonce BLOB NOT NULL,
    waiting_nonce BLOB NOT NULL,
    domain TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    arrived_at INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX reception_tests_expiry ON reception_tests (expires_at);

-- 確認しました: an alert may ask its readers to confirm. The admin's
-- choice, per alert.
ALTER TABLE alerts ADD COLUMN ask_confirm INTEGER NOT NULL DEFAULT 0;

-- The district an alert copy's 確認しました link counts under (the lowest
-- of the alert's districts the subscriber had at publication), so the copy
-- renders the same every time and delivered copies can be counted per
-- district. 0 for alerts that do not ask.
ALTER TABLE outbox ADD COLUMN confirm_district INTEGER NOT NULL DEFAULT 0;

-- Confirmations counted per alert, district and carrier (as the admin
-- pages group domains): numbers, never who.
CREATE TABLE confirm_counts (
    alert_id INTEGER NOT NULL,
    district_id INTEGER NOT NULL,
    carrier TEXT NOT NULL,
    confirmed INTEGER NOT NULL,
    PRIMARY KEY (alert_id, district_id, carrier)
) STRICT, WITHOUT ROWID;

-- The copies already counted, so each copy counts once (a double click, a
-- forwarded mail, a second device). `copy` is the copy's nonce, a keyed
-- hash of alert, subscriber and footer nonce: alone it names nobody, but
-- with the keys it could be matched to a subscriber, so every row goes
-- when the confirmation window of its alert ends (`expires_at`), leaving
-- only `confirm_counts`.
CREATE TABLE confirm_seen (
    alert_id INTEGER NOT NULL,
    copy BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (alert_id, copy)
) STRICT, WITHOUT ROWID;
CREATE INDEX confirm_seen_expiry ON confirm_seen (expires_at);
