//! `mamoru store copy --to URL`: an SQLite installation copied into an
//! empty PostgreSQL database, for a city that outgrows one file.
//!
//! - The SQLite file is opened read-only, and every table is read inside
//!   one read transaction: the copy is the database as of one commit, and
//!   the file is never written. The operator stops mamoru first (a commit
//!   made after the snapshot would not be copied).
//! - The target is opened with [`Store::open_postgres`], which migrates it
//!   to the current schema, and must hold no row at all: the copy never
//!   merges. Everything is then written in one PostgreSQL transaction that
//!   first locks every table, so a node started too early waits instead of
//!   writing, and either the whole copy commits or nothing does.
//! - The tables are those of the PostgreSQL schema (`information_schema`),
//!   each required in SQLite with the same columns; a table of SQLite that
//!   PostgreSQL lacks is an error too (SQLite's own `sqlite_*` tables
//!   excepted), so a table added later is never silently left behind.
//!   Tables are written parents first (the foreign keys of the PostgreSQL
//!   catalog), each with `COPY … FROM STDIN (FORMAT binary)`; ids are kept,
//!   blobs stay blobs, sealed addresses stay valid because both backends
//!   use the keys of the data dir.
//! - Then every identity (or serial) sequence is moved past the highest id
//!   SQLite ever handed out (`sqlite_sequence` remembers ids of deleted
//!   rows, which must not come back), and the rows of every table are
//!   counted on both sides before the commit.
//!
//! Nothing here reads a sealed value: addresses are neither opened nor
//! shown, and the URL (which may hold a password) is part of no message.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use crate::db::Value;
use crate::{Keys, Store, StoreError};

/// The PostgreSQL table of schema versions, the counterpart of SQLite's
/// `PRAGMA user_version`: migration bookkeeping, not data.
const PG_SCHEMA_TABLE: &str = "mamoru_schema";

/// Rows between two progress reports of a table.
const PROGRESS_EVERY: u64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no SQLite database at {0}")]
    NoDatabase(std::path::PathBuf),
    /// The target holds rows: the copy only fills an empty database.
    #[error("the target database is not empty (rows in {}); the copy only fills an empty database", .tables.join(", "))]
    NotEmpty { tables: Vec<String> },
    /// SQLite and PostgreSQL are not at the same schema version.
    #[error("the SQLite database is at schema version {sqlite}, PostgreSQL at {postgres}: run this version of mamoru on the SQLite database once (it migrates at start), then copy")]
    Version { sqlite: i64, postgres: i64 },
    /// The two schemas do not have the same tables or columns.
    #[error("schemas differ: {0}")]
    Schema(String),
    /// After the copy, a table does not hold as many rows as in SQLite;
    /// nothing was committed.
    #[error("row counts differ after the copy, nothing committed: {0}")]
    Counts(String),
}

impl From<rusqlite::Error> for CopyError {
    fn from(e: rusqlite::Error) -> Self {
        CopyError::Store(e.into())
    }
}

impl From<tokio_postgres::Error> for CopyError {
    fn from(e: tokio_postgres::Error) -> Self {
        CopyError::Store(e.into())
    }
}

/// What the copy reports while it runs.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// Before the first row: the tables in the order they are copied and
    /// their rows in SQLite.
    Plan { tables: &'a [(String, u64)] },
    /// A table's copy starts.
    Table { name: &'a str, rows: u64 },
    /// `rows` more rows of the current table were written.
    Rows { rows: u64 },
    /// The rows are written; sequences and counts are being checked.
    Verifying,
}

/// One table's rows on both sides, counted in the copy's transactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCount {
    pub table: String,
    pub sqlite: u64,
    pub postgres: u64,
}

/// Copies the SQLite database at `sqlite_path` (read-only, one snapshot)
/// into the empty PostgreSQL database at `url` (see the module's notes).
/// `wait` bounds how long a connection to PostgreSQL, or the SQLite file's
/// read lock, may take; `ca_file` is `[store] tls_ca_file` (see
/// [`Store::open_postgres_with`]). Returns the row counts per table, in
/// copy order.
///
/// Blocks its thread; not for an async caller.
pub fn sqlite_to_postgres(
    sqlite_path: &Path,
    url: &str,
    ca_file: Option<&Path>,
    keys: &Keys,
    wait: Duration,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Vec<TableCount>, CopyError> {
    if !sqlite_path.is_file() {
        return Err(CopyError::NoDatabase(sqlite_path.to_path_buf()));
    }
    let lite = Connection::open_with_flags(sqlite_path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|source| StoreError::Open { path: sqlite_path.to_path_buf(), source })?;
    lite.busy_timeout(wait)?;
    // One read transaction for everything read below: a snapshot.
    lite.execute_batch("BEGIN DEFERRED")?;
    let sqlite_version: i64 = lite.query_row("PRAGMA user_version", [], |r| r.get(0))?;

    // Migrated to the current schema by the store itself, then closed: the
    // rows go through a connection of the copy's own (COPY needs one).
    drop(Store::open_postgres_with(url, ca_file, keys, wait)?);
    let config = tokio_postgres::Config::from_str(url).map_err(|e| StoreError::Url(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Postgres(format!("cannot start the database runtime: {e}")))?;
    let mut config = config;
    config.connect_timeout(wait);
    let tls = crate::pg::tls_for(&config, ca_file)?;
    let (mut client, connection) = rt.block_on(config.connect(tls))?;
    rt.spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "copy: connection to PostgreSQL ended");
        }
    });
    let counts = rt.block_on(async {
        let tx = client.transaction().await?;
        let counts = copy_in(&tx, &lite, sqlite_version, progress).await?;
        tx.commit().await?;
        Ok::<_, CopyError>(counts)
    })?;
    drop(client);
    lite.execute_batch("COMMIT")?;
    Ok(counts)
}

async fn copy_in(
    pg: &tokio_postgres::Transaction<'_>,
    lite: &Connection,
    sqlite_version: i64,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Vec<TableCount>, CopyError> {
    let pg_version: i64 = pg.query_one("SELECT version FROM mamoru_schema", &[]).await?.get(0);
    if pg_version != sqlite_version {
        return Err(CopyError::Version { sqlite: sqlite_version, postgres: pg_version });
    }
    let tables = table_order(pg).await?;
    let lite_tables: BTreeSet<String> = lite
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let pg_tables: BTreeSet<String> = tables.iter().cloned().collect();
    let only_lite: Vec<&String> = lite_tables.difference(&pg_tables).collect();
    let only_pg: Vec<&String> = pg_tables.difference(&lite_tables).collect();
    if !only_lite.is_empty() || !only_pg.is_empty() {
        return Err(CopyError::Schema(format!("tables only in SQLite: {only_lite:?}; only in PostgreSQL: {only_pg:?}")));
    }

    // Nothing else writes while the copy runs, and the emptiness checked
    // below holds until the commit.
    let list = tables.iter().map(|t| quote(t)).collect::<Vec<_>>().join(", ");
    pg.batch_execute(&format!("LOCK TABLE {list} IN EXCLUSIVE MODE")).await?;
    let mut not_empty = Vec::new();
    for t in &tables {
        let any: bool = pg.query_one(&format!("SELECT EXISTS (SELECT 1 FROM {})", quote(t)), &[]).await?.get(0);
        if any {
            not_empty.push(t.clone());
        }
    }
    if !not_empty.is_empty() {
        return Err(CopyError::NotEmpty { tables: not_empty });
    }

    let mut plan = Vec::with_capacity(tables.len());
    for t in &tables {
        let n: i64 = lite.query_row(&format!("SELECT COUNT(*) FROM {}", quote(t)), [], |r| r.get(0))?;
        plan.push((t.clone(), u64::try_from(n).unwrap_or(0)));
    }
    progress(Progress::Plan { tables: &plan });

    for (table, rows) in &plan {
        progress(Progress::Table { name: table, rows: *rows });
        copy_table(pg, lite, table, progress).await?;
    }

    progress(Progress::Verifying);
    reset_sequences(pg, lite).await?;
    let mut counts = Vec::with_capacity(plan.len());
    let mut wrong = Vec::new();
    for (table, sqlite) in plan {
        let n: i64 = pg.query_one(&format!("SELECT COUNT(*) FROM {}", quote(&table)), &[]).await?.get(0);
        let postgres = u64::try_from(n).unwrap_or(0);
        if postgres != sqlite {
            wrong.push(format!("{table}: {sqlite} in SQLite, {postgres} in PostgreSQL"));
        }
        counts.push(TableCount { table, sqlite, postgres });
    }
    if !wrong.is_empty() {
        return Err(CopyError::Counts(wrong.join("; ")));
    }
    Ok(counts)
}

/// The data tables of the PostgreSQL schema, every table after the tables
/// its foreign keys point to. A cycle of foreign keys would need deferred
/// constraints, which the schema does not declare: it is an error.
async fn table_order(pg: &tokio_postgres::Transaction<'_>) -> Result<Vec<String>, CopyError> {
    let names: Vec<String> = pg
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .filter(|t: &String| t != PG_SCHEMA_TABLE)
        .collect();
    let mut parents: BTreeMap<String, BTreeSet<String>> = names.iter().map(|t| (t.clone(), BTreeSet::new())).collect();
    for r in pg
        .query(
            "SELECT k.conrelid::regclass::text, k.confrelid::regclass::text FROM pg_constraint k
             WHERE k.contype = 'f' AND k.connamespace = current_schema()::regnamespace",
            &[],
        )
        .await?
    {
        let (child, parent): (String, String) = (r.get(0), r.get(1));
        // A table that refers to itself needs no order between tables; its
        // rows are written in primary-key order.
        if child != parent {
            parents.entry(child).or_default().insert(parent);
        }
    }
    let mut order: Vec<String> = Vec::with_capacity(names.len());
    while order.len() < names.len() {
        let ready: Vec<String> = names
            .iter()
            .filter(|t| !order.contains(t) && parents[*t].iter().all(|p| order.contains(p) || !parents.contains_key(p)))
            .cloned()
            .collect();
        if ready.is_empty() {
            let left: Vec<&String> = names.iter().filter(|t| !order.contains(t)).collect();
            return Err(CopyError::Schema(format!("the foreign keys of {left:?} form a cycle")));
        }
        order.extend(ready);
    }
    Ok(order)
}

/// One table: the columns of PostgreSQL, each required in SQLite, read in
/// primary-key order and written with one binary COPY.
async fn copy_table(
    pg: &tokio_postgres::Transaction<'_>,
    lite: &Connection,
    table: &str,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<(), CopyError> {
    let columns: Vec<String> = pg
        .query(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lite_columns: BTreeSet<String> =
        lite.prepare("SELECT name FROM pragma_table_info(?1)")?.query_map([table], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    let pg_columns: BTreeSet<String> = columns.iter().cloned().collect();
    if lite_columns != pg_columns {
        return Err(CopyError::Schema(format!(
            "table {table}: columns only in SQLite: {:?}; only in PostgreSQL: {:?}",
            lite_columns.difference(&pg_columns).collect::<Vec<_>>(),
            pg_columns.difference(&lite_columns).collect::<Vec<_>>()
        )));
    }
    let mut key: Vec<String> = lite
        .prepare("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")?
        .query_map([table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if key.is_empty() {
        key = columns.clone();
    }
    let list = columns.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
    let order = key.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
    // The types COPY writes, as PostgreSQL declares them.
    let types: Vec<Type> = pg.prepare(&format!("SELECT {list} FROM {}", quote(table))).await?.columns().iter().map(|c| c.type_().clone()).collect();

    let sink = pg.copy_in(&format!("COPY {} ({list}) FROM STDIN (FORMAT binary)", quote(table))).await?;
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &types));
    let mut stmt = lite.prepare(&format!("SELECT {list} FROM {} ORDER BY {order}", quote(table)))?;
    let mut rows = stmt.query([])?;
    let mut pending = 0;
    while let Some(r) = rows.next()? {
        let values: Vec<Value> = (0..columns.len()).map(|i| r.get_ref(i).map(Value::from)).collect::<rusqlite::Result<_>>()?;
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        writer.as_mut().write(&refs).await.map_err(|e| column_error(table, e))?;
        pending += 1;
        if pending == PROGRESS_EVERY {
            progress(Progress::Rows { rows: pending });
            pending = 0;
        }
    }
    writer.as_mut().finish().await.map_err(|e| column_error(table, e))?;
    if pending > 0 {
        progress(Progress::Rows { rows: pending });
    }
    Ok(())
}

/// An error of COPY, with the table it happened in (never a value).
fn column_error(table: &str, e: tokio_postgres::Error) -> CopyError {
    match StoreError::from(e) {
        StoreError::Postgres(m) => StoreError::Postgres(format!("table {table}: {m}")).into(),
        other => other.into(),
    }
}

/// Moves every sequence that fills a column (identity or serial) past the
/// highest id SQLite has used for it: the largest id copied, or, for an
/// AUTOINCREMENT table, the largest it ever handed out.
async fn reset_sequences(pg: &tokio_postgres::Transaction<'_>, lite: &Connection) -> Result<(), CopyError> {
    let owned = pg
        .query(
            "SELECT c.table_name::text, c.column_name::text FROM information_schema.columns c
             WHERE c.table_schema = current_schema()
               AND pg_get_serial_sequence(quote_ident(c.table_name::text), c.column_name::text) IS NOT NULL",
            &[],
        )
        .await?;
    let has_sequence_table: bool =
        lite.query_row("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence')", [], |r| r.get(0))?;
    for r in owned {
        let (table, column): (String, String) = (r.get(0), r.get(1));
        if table == PG_SCHEMA_TABLE {
            continue;
        }
        let handed_out: Option<i64> = if has_sequence_table {
            lite.query_row("SELECT seq FROM sqlite_sequence WHERE name = ?1", [&table], |r| r.get(0)).optional()?
        } else {
            None
        };
        let copied: Option<i64> =
            pg.query_one(&format!("SELECT MAX({}) FROM {}", quote(&column), quote(&table)), &[]).await?.get(0);
        let last = copied.into_iter().chain(handed_out).max().filter(|&n| n > 0);
        // setval(…, n, true): the next id is n + 1; (…, 1, false): it is 1.
        pg.execute(
            "SELECT setval(pg_get_serial_sequence(quote_ident($1), $2), $3, $4)",
            &[&table, &column, &last.unwrap_or(1), &last.is_some()],
        )
        .await?;
    }
    Ok(())
}

/// A name as an identifier of either engine.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use mamoru_core::mail::{MailKind, OutgoingMail};
    use mamoru_core::{EmailAddress, UnixTime};

    use super::*;
    use crate::admins::AdminAdded;
    use crate::alerts::{Drafted, NewAlert, PublishAuth, Published};
    use crate::pgtest::PgCluster;
    use crate::{RegistrationRequest, keys};

    const T0: UnixTime = 1_800_000_000;
    const WAIT: Duration = Duration::from_secs(10);
    use crate::tests::LIMITS;

    fn addr(s: &str) -> EmailAddress {
        EmailAddress::parse(s).unwrap()
    }

    fn mail(kind: MailKind, to: &EmailAddress, id: String) -> OutgoingMail {
        OutgoingMail { kind, sender: "ans@x".into(), to: to.clone(), message_id: id, bytes: b"x".to_vec() }
    }

    fn request(store: &Store, a: &EmailAddress, now: UnixTime) -> crate::SubscriberId {
        let r = store.request_registration(a, now, &LIMITS, now + 86_400, |sid, _| mail(MailKind::RegistrationReceived, a, format!("reg.{sid}@x"))).unwrap();
        let RegistrationRequest::Queued { subscriber, .. } = r else { panic!("{r:?}") };
        subscriber
    }

    /// An SQLite installation filled through the flows: subscribers (one
    /// pending, one deleted after the others), an admin, a published
    /// alert with its outbox rows, a counter. Returns the data dir, the
    /// keys and the alert.
    fn installation() -> (tempfile::TempDir, Keys, crate::AlertId) {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys::load_or_create(dir.path()).unwrap();
        let store = Store::open(dir.path(), &keys, WAIT).unwrap();
        let subs = vec![(addr("a@docomo.ne.jp"), vec![1]), (addr("b@ezweb.ne.jp"), vec![1, 3]), (addr("c@i.softbank.jp"), vec![2])];
        assert_eq!(store.import_active_subscribers(&subs, "test", T0).unwrap(), 3);
        request(&store, &addr("pending@au.com"), T0 + 100);
        // The highest id SQLite handed out belongs to a row deleted since.
        request(&store, &addr("gone@au.com"), T0);
        assert_eq!(store.purge_unconfirmed(T0 + 1).unwrap(), 1);
        let AdminAdded::Added(admin) = store.add_admin("chuo", &addr("staff@city.test"), "$argon2id$x", &[1, 3], "cli", T0).unwrap() else {
            panic!("admin")
        };
        let a = NewAlert { title: "t", text: "x", districts: &[1, 3], ..NewAlert::new(admin, "cli") };
        let Drafted::Created { alert, .. } = store
            .draft_alert(&a, T0, T0 + 3600, |id, _, _| mail(MailKind::AlertPreview, &addr("staff@city.test"), format!("preview.{id}@x")))
            .unwrap()
        else {
            panic!("draft")
        };
        let published = store.publish_alert(PublishAuth::Direct(alert), "cli", T0 + 1, T0 + 7200, "ans@x", "x").unwrap();
        assert_eq!(published, Published::Published { alert, recipients: 2 });
        store.count("inbound", &["pipe"]).unwrap();
        (dir, keys, alert)
    }

    fn copy(dir: &Path, url: &str, keys: &Keys) -> Result<Vec<TableCount>, CopyError> {
        let mut seen = Vec::new();
        let counts = sqlite_to_postgres(&dir.join(crate::DB_FILE), url, None, keys, WAIT, &mut |p| {
            if let Progress::Table { name, .. } = p {
                seen.push(name.to_owned());
            }
        })?;
        assert_eq!(seen, counts.iter().map(|c| c.table.clone()).collect::<Vec<_>>(), "progress names every table");
        Ok(counts)
    }

    #[test]
    fn a_filled_sqlite_store_answers_the_same_on_postgres() {
        let (dir, keys, alert) = installation();
        let lite = Store::open(dir.path(), &keys, WAIT).unwrap();
        let a = lite.find_subscriber(&addr("b@ezweb.ne.jp")).unwrap().unwrap();
        let pending = lite.find_subscriber(&addr("pending@au.com")).unwrap().unwrap();
        let nonce = lite.link_nonce(a.id).unwrap();
        let alert_row = lite.alert(alert).unwrap().unwrap();
        let outbox = lite.outbox_counts().unwrap();
        let admins = lite.list_admins().unwrap();
        let highest: i64 = lite.conn().unwrap().query_row("SELECT seq FROM sqlite_sequence WHERE name = 'subscribers'", crate::params![], |r| r.get(0)).unwrap();
        drop(lite);

        let cluster = PgCluster::start();
        let counts = copy(dir.path(), &cluster.url(), &keys).unwrap();
        let by_table: BTreeMap<&str, u64> = counts.iter().map(|c| (c.table.as_str(), c.postgres)).collect();
        assert!(counts.iter().all(|c| c.sqlite == c.postgres), "{counts:?}");
        assert!(by_table.len() >= 18, "every table of the schema: {by_table:?}");
        assert!(!by_table.contains_key(PG_SCHEMA_TABLE));
        for (table, n) in [("subscribers", 4), ("subscriber_districts", 4), ("admins", 1), ("alerts", 1), ("outbox", 2), ("alert_queue", 2), ("counters", 2)] {
            assert_eq!(by_table[table], n, "{table}");
        }
        assert!(by_table["tokens"] >= 2 && by_table["audit_log"] >= 3 && by_table["rate_limits"] >= 1, "{by_table:?}");
        let order: Vec<&str> = counts.iter().map(|c| c.table.as_str()).collect();
        let at = |t: &str| order.iter().position(|o| *o == t).unwrap();
        assert!(at("subscribers") < at("subscriber_districts") && at("admins") < at("alerts") && at("admins") < at("admin_sessions"));

        let pg = Store::open_postgres(&cluster.url(), &keys, WAIT).unwrap();
        assert_eq!(pg.find_subscriber(&addr("b@ezweb.ne.jp")).unwrap().unwrap(), a, "the sealed address opens with the same keys");
        assert_eq!(pg.find_subscriber(&addr("pending@au.com")).unwrap().unwrap(), pending);
        assert!(pg.find_subscriber(&addr("gone@au.com")).unwrap().is_none());
        assert_eq!(pg.link_nonce(a.id).unwrap(), nonce);
        assert_eq!(pg.alert(alert).unwrap().unwrap(), alert_row);
        assert_eq!(pg.outbox_counts().unwrap(), outbox);
        assert_eq!(pg.list_admins().unwrap(), admins);
        assert_eq!(pg.find_admin_by_email(&addr("staff@city.test")).unwrap().unwrap().login, "chuo");
        // The queued copies decrypt and render from the copied rows.
        let claimed = pg.claim_due(T0 + 200, 60, 10).unwrap();
        assert_eq!(claimed.len(), 4);
        let b = claimed.iter().find(|m| m.alert.is_some_and(|r| r.subscriber_id == a.id)).expect("b's copy");
        assert_eq!((b.recipient.clone(), b.alert.unwrap().link_nonce), (a.address.clone(), nonce.unwrap()));
        // Sequences moved past every id SQLite handed out, a deleted row's too.
        let new = request(&pg, &addr("new@au.com"), T0 + 1000);
        assert!(new.get() > highest, "{new} after {highest}");
        let AdminAdded::Added(second) = pg.add_admin("kita", &addr("kita@city.test"), "h", &[], "cli", T0).unwrap() else { panic!() };
        assert!(second.get() > admins[0].id.get());
    }

    #[test]
    fn the_copy_refuses_a_target_with_data_or_another_schema_and_leaves_sqlite_as_it_was() {
        let (dir, keys, _) = installation();
        let db = dir.path().join(crate::DB_FILE);
        let before = std::fs::read(&db).unwrap();
        let cluster = PgCluster::start();

        let url = cluster.create_db("first");
        copy(dir.path(), &url, &keys).unwrap();
        assert_eq!(std::fs::read(&db).unwrap(), before, "the SQLite file is not written");
        match copy(dir.path(), &url, &keys) {
            Err(CopyError::NotEmpty { tables }) => assert!(tables.contains(&"subscribers".to_owned()) && tables.contains(&"outbox".to_owned()), "{tables:?}"),
            other => panic!("{other:?}"),
        }

        // One admin is enough to refuse, and nothing is copied.
        let url = cluster.create_db("admin_only");
        let pg = Store::open_postgres(&url, &keys, WAIT).unwrap();
        pg.add_admin("root", &addr("root@city.test"), "h", &[], "cli", T0).unwrap();
        match copy(dir.path(), &url, &keys) {
            Err(e @ CopyError::NotEmpty { .. }) => {
                let CopyError::NotEmpty { tables } = &e else { unreachable!() };
                assert!(tables.contains(&"admins".to_owned()), "{tables:?}");
                assert!(e.to_string().contains("not empty"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(pg.list_admins().unwrap().len(), 1);
        assert!(pg.find_subscriber(&addr("a@docomo.ne.jp")).unwrap().is_none());
        assert_eq!(std::fs::read(&db).unwrap(), before);

        // A table of SQLite that PostgreSQL lacks is never left behind.
        let extra = tempfile::tempdir().unwrap();
        std::fs::copy(&db, extra.path().join(crate::DB_FILE)).unwrap();
        rusqlite::Connection::open(extra.path().join(crate::DB_FILE)).unwrap().execute_batch("CREATE TABLE extra (x INTEGER)").unwrap();
        let url = cluster.create_db("schema");
        match copy(extra.path(), &url, &keys) {
            Err(CopyError::Schema(m)) => assert!(m.contains("extra"), "{m}"),
            other => panic!("{other:?}"),
        }
        let pg = Store::open_postgres(&url, &keys, WAIT).unwrap();
        assert!(pg.find_subscriber(&addr("a@docomo.ne.jp")).unwrap().is_none(), "nothing committed");
    }
}
