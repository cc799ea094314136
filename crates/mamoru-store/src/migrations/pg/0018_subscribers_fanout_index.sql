-- What publishing reads of every subscriber, in id order, without the rows
-- (the SQLite twin, 0018_subscribers_fanout_index.sql, says why).
CREATE INDEX subscribers_fanout ON subscribers (id, status, domain, quiet_start, quiet_end);
