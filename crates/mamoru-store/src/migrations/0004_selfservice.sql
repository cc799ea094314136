-- Self-service and bounces.
-- `bounce_score` adds up soft bounces (mailbox full, temporary, other); at
-- the configured threshold the subscriber is suspended. An unknown-user
-- bounce suspends at once. `suspended_reason` says which ('unknown-user',
-- 'soft-bounces'); '' while active.
ALTER TABLE subscribers ADD COLUMN bounce_score INTEGER NOT NULL DEFAULT 0;
-- (`suspended_reason` itself comes with 0003.)
ALTER TABLE subscribers ADD COLUMN suspended_at INTEGER NOT NULL DEFAULT 0;

-- One row per bounced outbox row: the primary key makes a bounce the MTA
-- delivers twice count once. No address: the carrier's domain and the class
-- are enough for per-carrier statistics ("blocked as spam" by docomo today).
CREATE TABLE bounces (
    outbox_id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    subscriber_id INTEGER NOT NULL,
    domain TEXT NOT NULL,
    class TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT ''
) STRICT;

CREATE INDEX bounces_by_domain ON bounces (domain, class, at);
