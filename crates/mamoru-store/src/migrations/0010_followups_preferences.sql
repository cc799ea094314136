-- Follow-ups of an incident, when it happened, and what and when each
-- subscriber receives.
--
-- A follow-up (続報 / 解決 / 取消) is an alerts row of its own, drafted and
-- published like a first report, with `followup_of` naming the first
-- report and `followup_kind` what it says. The first report keeps the
-- incident's state (`incident_state`: '' open, or the kind of the latest
-- published follow-up) and `updated_at`, the time of that follow-up, for
-- the archive and the feed (one entry per incident).
ALTER TABLE alerts ADD COLUMN followup_of INTEGER NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN followup_kind TEXT NOT NULL DEFAULT ''
    CHECK (followup_kind IN ('', 'update', 'resolved', 'retracted'));
ALTER TABLE alerts ADD COLUMN incident_state TEXT NOT NULL DEFAULT ''
    CHECK (incident_state IN ('', 'update', 'resolved', 'retracted'));
ALTER TABLE alerts ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
CREATE INDEX alerts_followups ON alerts (followup_of) WHERE followup_of <> 0;

-- When the incident happened, as the post said (0: unknown, never the
-- post time). `occurred_flags`: 1 = approximate (ごろ), 2 = the day only.
ALTER TABLE alerts ADD COLUMN occurred_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN occurred_flags INTEGER NOT NULL DEFAULT 0;
-- 緊急: delivered inside quiet hours too.
ALTER TABLE alerts ADD COLUMN urgent INTEGER NOT NULL DEFAULT 0;

-- Quiet hours, minutes of the day in Japan time, [start, end) and wrapping
-- past midnight when start > end; -1 for none.
ALTER TABLE subscribers ADD COLUMN quiet_start INTEGER NOT NULL DEFAULT -1;
ALTER TABLE subscribers ADD COLUMN quiet_end INTEGER NOT NULL DEFAULT -1;

-- The kinds of alert a subscriber turned off. Kept as the kinds *not*
-- wanted, so every subscriber gets every kind by default, a kind added to
-- the configuration later included.
CREATE TABLE subscriber_kinds_off (
    subscriber_id INTEGER NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    PRIMARY KEY (subscriber_id, kind)
) STRICT, WITHOUT ROWID;
