-- Counters of events that may happen in a process other than `mamoru
-- serve` (the pipe command, `ingest --imap-once`, `mamoru alert post`), so
-- the serving process's metrics can show them: a counter's name and its
-- label values (closed sets chosen by the code, joined with ','), never an
-- address, a token or an admin. Only ever incremented.
CREATE TABLE counters (
    name TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '',
    value INTEGER NOT NULL DEFAULT 0 CHECK (value >= 0),
    PRIMARY KEY (name, labels)
) STRICT, WITHOUT ROWID;
