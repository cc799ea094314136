-- What the relay learned about each carrier pool's real limits, kept so a
-- restarted relay (or the next alert hours later) starts from it instead
-- of provoking the same push-backs again. One row per pool, rewritten when
-- a learned value changes; not an audit trail.
--
-- `connections` / `pace` are the learned connection cap and pace (messages
-- per second, 0 = no limit) under the ceilings the pool had then
-- (`connections_ceiling`, `pace_ceiling`). A mark is the level at which
-- the carrier pushed back (a session count, a pace), how often near it,
-- and when last (Unix seconds; level 0 = none): the pool stays below it
-- until `[relay] learn_drift_secs` after that time. The last push-back
-- keeps its time, its signal ('sessions' or 'pace') and the carrier's
-- reply code and enhanced code only: never the reply's text, which may
-- echo an address.
CREATE TABLE relay_learned (
    pool TEXT PRIMARY KEY,
    connections INTEGER NOT NULL,
    connections_ceiling INTEGER NOT NULL,
    pace REAL NOT NULL,
    pace_ceiling REAL NOT NULL,
    sessions_mark_level INTEGER NOT NULL DEFAULT 0,
    sessions_mark_hits INTEGER NOT NULL DEFAULT 0,
    sessions_mark_at INTEGER NOT NULL DEFAULT 0,
    pace_mark_level REAL NOT NULL DEFAULT 0,
    pace_mark_hits INTEGER NOT NULL DEFAULT 0,
    pace_mark_at INTEGER NOT NULL DEFAULT 0,
    push_back_at INTEGER NOT NULL DEFAULT 0,
    push_back_signal TEXT NOT NULL DEFAULT '' CHECK (push_back_signal IN ('', 'sessions', 'pace')),
    push_back_code INTEGER NOT NULL DEFAULT 0,
    push_back_enhanced TEXT NOT NULL DEFAULT '',
    updated_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
