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
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)
            .map_err(|source| StoreError::Io { path: dest.to_path_buf(), source })?;
        let mut to = Connection::open(dest).map_err(|source| StoreError::Open { path: dest.to_path_buf(), source })?;
        {
            let conn = self.conn();
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
