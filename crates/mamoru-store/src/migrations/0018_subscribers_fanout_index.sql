-- What publishing reads of every subscriber, in id order, without the rows.
--
-- The fan-out walks all subscribers in id order (the outbox rows of an
-- alert go in by subscriber, so its index grows at one end) and needs of
-- each its status, domain and quiet hours. The rows also hold the sealed
-- address, its blind index and more: at a million subscribers the table is
-- about four times this index, and reading it was a tenth of the time to
-- publish on PostgreSQL. Registration and bounces, which change these
-- columns, are rare beside the reads.
CREATE INDEX subscribers_fanout ON subscribers (id, status, domain, quiet_start, quiet_end);
