//! Event counters kept in the database, for events that may happen in a
//! process other than `mamoru serve`: the pipe command runs once per
//! message, `mamoru alert post --yes` publishes from the command line. Each
//! increments a row here; the relay's once-a-second snapshot reads the
//! table and its process's metrics expose the values, so every process's
//! events are counted, once.
//!
//! **Invariant:** a counter's name and labels are constants of the code
//! (`&'static str`), never an address, a token or an admin; a value only
//! grows.

use crate::db::Conn;
use crate::params;

use crate::{Result, Store};

/// Inbound mails of the entry points that count here, labels
/// `ENTRY,CLASS` (`pipe,registration`).
pub const INBOUND: &str = "inbound";
/// Link mails queued, labels `CHANNEL,KIND` (`mail,register`).
pub const REGISTRATIONS_REQUESTED: &str = "registrations_requested";
/// Alerts published, by any publisher; no labels.
pub const ALERTS_PUBLISHED: &str = "alerts_published";

/// One counter and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    pub name: String,
    /// The label values, in the counter's order, joined with `,`.
    pub labels: String,
    pub value: u64,
}

/// Adds one to a counter, inside the caller's transaction.
pub(crate) fn bump(conn: &Conn<'_>, name: &'static str, labels: &[&'static str]) -> Result<()> {
    conn.execute(
        "INSERT INTO counters (name, labels, value) VALUES (?1, ?2, 1)
         ON CONFLICT (name, labels) DO UPDATE SET value = counters.value + 1",
        params![name, labels.join(",")],
    )?;
    Ok(())
}

impl Store {
    /// Adds one to a counter, in a transaction of its own.
    pub fn count(&self, name: &'static str, labels: &[&'static str]) -> Result<()> {
        self.serially(|| {
            let tx = self.begin()?;
            bump(&tx, name, labels)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Every counter, by name and labels.
    pub fn counters(&self) -> Result<Vec<Counter>> {
        let conn = self.conn()?;
        conn.query_map("SELECT name, labels, value FROM counters ORDER BY name, labels", params![], |r| {
            Ok(Counter { name: r.get(0)?, labels: r.get(1)?, value: u64::try_from(r.get::<i64>(2)?).unwrap_or(0) })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn counters_only_grow_and_keep_their_labels_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = crate::keys::load_or_create(dir.path()).expect("keys");
        let store = Store::open_for_test(dir.path(), &keys, Duration::from_millis(100)).expect("store");
        assert_eq!(store.counters().expect("counters"), vec![]);
        store.count(INBOUND, &["pipe", "registration"]).expect("count");
        store.count(INBOUND, &["pipe", "registration"]).expect("count");
        store.count(INBOUND, &["pipe", "null-sender"]).expect("count");
        store.count(ALERTS_PUBLISHED, &[]).expect("count");
        let row = |name: &str, labels: &str, value| Counter { name: name.into(), labels: labels.into(), value };
        assert_eq!(
            store.counters().expect("counters"),
            vec![row(ALERTS_PUBLISHED, "", 1), row(INBOUND, "pipe,null-sender", 1), row(INBOUND, "pipe,registration", 2)]
        );
        // Another process's store sees the same rows (a second connection
        // to the same database).
        if store.dialect() == crate::db::Dialect::Sqlite {
            drop(store);
            let again = Store::open(dir.path(), &keys, Duration::from_millis(100)).expect("store");
            assert_eq!(again.counters().expect("counters").len(), 3);
        }
    }
}
