-- The nonce of a subscriber's long-lived footer links (manage, unsubscribe;
-- see mamoru_core::links). Set at first confirmation; rotating it revokes
-- every link sent so far.
ALTER TABLE subscribers ADD COLUMN link_nonce BLOB NOT NULL DEFAULT X'0000000000000000';
