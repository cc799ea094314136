//! `mamoru backup FILE`: a consistent copy of the database while the
//! service runs, through SQLite's online backup API.
//!
//! All pages are copied in one backup step, i.e. under one read transaction
//! of the source: in WAL mode writers carry on meanwhile, and the copy is
//! the database as of one commit. The copy holds what the database holds:
//! sealed addresses and blind indexes, no address in clear, and no key (the
//! keys live in `DATA_DIR/keys/`, which a restore needs as well).

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::backup::{Backup, StepResult};

use crate::{Result, Store, StoreError};

impl Store {
    /// Writes a consistent copy of the database to `dest`, a new file (mode
    /// 0600; an existing file is an error, never overwritten).
    pub fn backup_to(&self, dest: &Path) -> Result<()> {
        if self.sqlite().is_none() {
            return Err(StoreError::Unsupported("mamoru backup copies the SQLite file; back PostgreSQL up with its own tools (pg_dump, or the cluster's base backups)"));
        }
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)
            .map_err(|source| StoreError::Io { path: dest.to_path_buf(), source })?;
        let mut to = Connection::open(dest).map_err(|source| StoreError::Open { path: dest.to_path_buf(), source })?;
        {
            let conn = self.sqlite().ok_or(StoreError::Unsupported("backup"))?;
            let backup = Backup::new(&conn, &mut to)?;
            loop {
                match backup.step(-1)? {
                    StepResult::Done => break,
                    // Another connection holds a lock that blocks reading:
                    // wait a little, as the busy timeout would.
                    StepResult::Busy | StepResult::Locked => std::thread::sleep(Duration::from_millis(20)),
                    _ => {}
                }
            }
        }
        // The copy is a plain rollback-journal database: one self-contained file.
        to.pragma_update(None, "journal_mode", "DELETE")?;
        let check: String = to.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(StoreError::Sqlite(rusqlite::Error::InvalidQuery));
        }
        to.close().map_err(|(_, e)| StoreError::from(e))?;
        std::fs::File::open(dest).and_then(|f| f.sync_all()).map_err(|source| StoreError::Io { path: dest.to_path_buf(), source })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::keys;

    /// A backup taken while another connection keeps committing is one
    /// consistent snapshot: it passes the integrity check and holds a whole
    /// number of the writer's transactions (each inserts two rows).
    #[test]
    fn backup_while_another_connection_writes() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys::load_or_create(dir.path()).unwrap();
        let store = Store::open(dir.path(), &keys, Duration::from_secs(5)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            let path = store.path().to_path_buf();
            std::thread::spawn(move || {
                let mut conn = Connection::open(path).unwrap();
                conn.busy_timeout(Duration::from_secs(5)).unwrap();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) || n < 20 {
                    let tx = conn.transaction().unwrap();
                    for _ in 0..2 {
                        tx.execute("INSERT INTO audit_log (at, actor, action, detail) VALUES (?1, 't', 'pair', '')", [n]).unwrap();
                    }
                    tx.commit().unwrap();
                    n += 1;
                }
                n
            })
        };
        // Let some commits happen, then copy while the writer carries on.
        while store.conn().unwrap().query_row("SELECT COUNT(*) FROM audit_log", crate::params![], |r| r.get::<i64>(0)).unwrap() < 10 {
            std::thread::yield_now();
        }
        let copies: Vec<_> = (0..3).map(|i| dir.path().join(format!("copy{i}.db"))).collect();
        for c in &copies {
            store.backup_to(c).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let written = writer.join().unwrap();
        for c in &copies {
            let copy = Connection::open(c).unwrap();
            let rows: i64 = copy.query_row("SELECT COUNT(*) FROM audit_log WHERE action = 'pair'", [], |r| r.get(0)).unwrap();
            assert!(rows >= 10 && rows % 2 == 0 && rows <= 2 * written, "{rows} rows of {written} pairs");
            let mode: String = copy.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
            assert_eq!(mode, "delete", "one self-contained file");
        }
        assert!(store.backup_to(&copies[0]).is_err(), "never overwrites");
    }
}
