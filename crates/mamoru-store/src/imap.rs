//! Where ingest stands in each watched IMAP mailbox (`imap_mailboxes`,
//! migration 0009), and the watcher's state `mamoru queue` shows.

use mamoru_core::UnixTime;
use crate::db::OptionalExt;
use crate::params;

use crate::{Result, Store};

/// What a watcher is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchState {
    Connecting,
    Idle,
    Scanning,
    /// Waiting out a back-off after a failure (`detail` says which).
    Retrying,
}

impl WatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Idle => "idle",
            Self::Scanning => "scanning",
            Self::Retrying => "retrying",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "idle" => Self::Idle,
            "scanning" => Self::Scanning,
            "retrying" => Self::Retrying,
            _ => Self::Connecting,
        }
    }
}

/// Which folder a message went to (a counter each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    Processed,
    Dropped,
    Quarantined,
}

/// One mailbox's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxState {
    pub name: String,
    pub uid_validity: u32,
    pub last_uid: u32,
    pub state: WatchState,
    pub detail: String,
    pub retry_at: UnixTime,
    pub processed: i64,
    pub dropped: i64,
    pub quarantined: i64,
    pub updated_at: UnixTime,
}

impl Store {
    /// The mailbox's UIDVALIDITY and last UID disposed of, if known.
    pub fn imap_cursor(&self, name: &str) -> Result<Option<(u32, u32)>> {
        let conn = self.conn()?;
        let row = conn
            .prepare_cached("SELECT uid_validity, last_uid FROM imap_mailboxes WHERE name = ?1")?
            .query_row(params![name], |r| Ok((r.get::<u32>(0)?, r.get::<u32>(1)?)))
            .optional()?;
        Ok(row)
    }

    /// The mailbox was selected with `uid_validity`: a value other than the
    /// stored one starts it again from UID 0. Returns the last UID disposed
    /// of under this UIDVALIDITY, and whether it changed.
    pub fn imap_selected(&self, name: &str, uid_validity: u32, now: UnixTime) -> Result<(u32, bool)> {
        self.serially(|| {
            let tx = self.begin()?;
            let old: Option<(u32, u32)> = tx
                .prepare_cached("SELECT uid_validity, last_uid FROM imap_mailboxes WHERE name = ?1")?
                .query_row(params![name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let (last, changed) = match old {
                Some((v, last)) if v == uid_validity => (last, false),
                // 0: never selected yet (a state row written before the login).
                Some((0, _)) => (0, false),
                Some(_) => (0, true),
                None => (0, false),
            };
            tx.prepare_cached(
                "INSERT INTO imap_mailboxes (name, uid_validity, last_uid, state, detail, updated_at)
                 VALUES (?1, ?2, ?3, 'scanning', '', ?4)
                 ON CONFLICT (name) DO UPDATE SET uid_validity = excluded.uid_validity, last_uid = excluded.last_uid,
                     state = 'scanning', detail = '', retry_at = 0, updated_at = excluded.updated_at",
            )?
            .execute(params![name, uid_validity, last, now])?;
            tx.commit()?;
            Ok((last, changed))
        })
    }

    /// A message was moved out of the mailbox: counts it, and raises the
    /// last UID (never lowers it).
    pub fn imap_moved(&self, name: &str, uid: u32, to: Moved, now: UnixTime) -> Result<()> {
        let column = match to {
            Moved::Processed => "processed",
            Moved::Dropped => "dropped",
            Moved::Quarantined => "quarantined",
        };
        self.conn()?
            .prepare_cached(&format!(
                "UPDATE imap_mailboxes SET last_uid = CASE WHEN last_uid > ?2 THEN last_uid ELSE ?2 END, {column} = {column} + 1, updated_at = ?3 WHERE name = ?1"
            ))?
            .execute(params![name, uid, now])?;
        Ok(())
    }

    /// What the watcher does now; `detail` and `retry_at` only for `Retrying`.
    pub fn imap_set_state(&self, name: &str, state: WatchState, detail: &str, retry_at: UnixTime, now: UnixTime) -> Result<()> {
        self.conn()?
            .prepare_cached(
                "INSERT INTO imap_mailboxes (name, state, detail, retry_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (name) DO UPDATE SET state = excluded.state, detail = excluded.detail,
                     retry_at = excluded.retry_at, updated_at = excluded.updated_at",
            )?
            .execute(params![name, state.as_str(), detail, retry_at, now])?;
        Ok(())
    }

    /// Every watched mailbox's row, by name.
    pub fn imap_states(&self) -> Result<Vec<MailboxState>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT name, uid_validity, last_uid, state, detail, retry_at, processed, dropped, quarantined, updated_at
             FROM imap_mailboxes ORDER BY name",
        )?;
        let rows = stmt.query_map(params![], |r| {
            Ok(MailboxState {
                name: r.get(0)?,
                uid_validity: r.get(1)?,
                last_uid: r.get(2)?,
                state: WatchState::parse(&r.get::<String>(3)?),
                detail: r.get(4)?,
                retry_at: r.get(5)?,
                processed: r.get(6)?,
                dropped: r.get(7)?,
                quarantined: r.get(8)?,
                updated_at: r.get(9)?,
            })
        })?;
        rows.collect::<Result<_>>()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn store(dir: &std::path::Path) -> Store {
        let keys = crate::keys::load_or_create(dir).unwrap();
        Store::open_for_test(dir, &keys, Duration::from_millis(100)).unwrap()
    }

    #[test]
    fn the_cursor_follows_uidvalidity() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        assert_eq!(s.imap_cursor("ans").unwrap(), None);
        // A state written before the first SELECT is no UIDVALIDITY change.
        s.imap_set_state("ans", WatchState::Connecting, "", 0, 99).unwrap();
        assert_eq!(s.imap_selected("ans", 7, 100).unwrap(), (0, false));
        s.imap_moved("ans", 5, Moved::Processed, 101).unwrap();
        s.imap_moved("ans", 3, Moved::Dropped, 102).unwrap();
        assert_eq!(s.imap_cursor("ans").unwrap(), Some((7, 5)), "never lowered");
        assert_eq!(s.imap_selected("ans", 7, 103).unwrap(), (5, false));
        // Recreated mailbox: start again.
        assert_eq!(s.imap_selected("ans", 8, 104).unwrap(), (0, true));
        assert_eq!(s.imap_cursor("ans").unwrap(), Some((8, 0)));
        s.imap_set_state("ans", WatchState::Retrying, "login refused [AUTHENTICATIONFAILED]", 200, 105).unwrap();
        s.imap_set_state("other", WatchState::Connecting, "", 0, 105).unwrap();
        let st = s.imap_states().unwrap();
        assert_eq!(st.len(), 2);
        assert_eq!((st[0].name.as_str(), st[0].state, st[0].retry_at), ("ans", WatchState::Retrying, 200));
        assert_eq!((st[0].processed, st[0].dropped, st[0].quarantined), (1, 1, 0));
        assert_eq!(st[1].state, WatchState::Connecting);
    }
}
