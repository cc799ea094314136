-- Which relay sends for each carrier pool. Several relays may share one
-- database (`mamoru serve` on several nodes, or `mamoru relay` beside it),
-- but a carrier's budget (its sessions and pace) belongs to the pool, not
-- to a process: only the relay whose hold has not lapsed claims a pool's
-- rows. A relay renews its holds every third of `[relay] lease_secs` and
-- deletes them when it stops; the hold of one that died lapses after
-- `held_until` (Unix seconds), and another relay takes the pool over.
CREATE TABLE relay_holders (
    pool TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    held_until INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
