-- Admins post alerts. The address previews go to is sealed like a
-- subscriber's, and found by blind index when a post arrives by mail.
-- `districts` limits where an admin may post ('' = everywhere).
CREATE TABLE admins (
    id INTEGER PRIMARY KEY,
    login TEXT NOT NULL UNIQUE,
    email_index BLOB NOT NULL,
    email_sealed BLOB NOT NULL,
    password_hash TEXT NOT NULL,
    districts TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

CREATE INDEX admins_by_email ON admins (email_index);

-- One row per post, from its draft to its publication. `source_key` (the
-- Message-ID of a mailed post, or a digest of it) makes a redelivered post
-- a no-op; refused posts keep their key too, so a retry is not answered twice.
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
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

CREATE UNIQUE INDEX alerts_by_source_key ON alerts (source_key) WHERE source_key <> '';
CREATE INDEX alerts_published ON alerts (state, published_at);

-- Which alert an outbox row delivers (0 for other mail), for per-carrier
-- delivery progress.
ALTER TABLE outbox ADD COLUMN alert_id INTEGER NOT NULL DEFAULT 0;
CREATE INDEX outbox_by_alert ON outbox (alert_id) WHERE alert_id <> 0;

-- Admin panel sessions. The cookie holds a random id; only its SHA-256 is
-- stored, so a database leak cannot be replayed as a login. `csrf` is the
-- per-session token every POST must carry.
CREATE TABLE admin_sessions (
    id_hash BLOB PRIMARY KEY,
    admin_id INTEGER NOT NULL REFERENCES admins (id),
    csrf TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
) STRICT;
