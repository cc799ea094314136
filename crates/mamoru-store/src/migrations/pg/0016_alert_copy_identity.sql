-- The alert keeps its copies' sender and Message-ID domain (the SQLite
-- twin, 0016_alert_copy_identity.sql, says why).
ALTER TABLE alerts ADD COLUMN sender TEXT NOT NULL DEFAULT '';
ALTER TABLE alerts ADD COLUMN mail_domain TEXT NOT NULL DEFAULT '';
