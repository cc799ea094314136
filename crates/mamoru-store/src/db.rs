//! One connection type over both backends, so every flow's SQL is written
//! once and runs on SQLite (the embedded default) and on PostgreSQL.
//!
//! The statements are plain SQL that both engines read alike: numbered
//! parameters `?1`, `?2`, … (rewritten to `$1`, `$2`, … for PostgreSQL),
//! `ON CONFLICT … DO UPDATE/NOTHING`, `RETURNING`, `CASE` instead of the
//! scalar `min`/`max` of SQLite, no blob literals (a blob is a parameter), and
//! `CAST(SUM(…) AS BIGINT)` where a sum is read (PostgreSQL sums integers
//! as `NUMERIC`). Where the engines must differ, the flow asks
//! [`Conn::dialect`] and keeps both statements side by side.
//!
//! Values cross the boundary as [`Value`]: the four storage classes SQLite
//! has (PostgreSQL's schema uses `BIGINT`, `DOUBLE PRECISION`, `TEXT` and
//! `BYTEA` for them), and rows are read into values before a flow sees them.
//! Conversions are written here once ([`ToValue`], [`FromValue`]) instead of
//! once per driver.
//!
//! Transactions are explicit: [`Conn`] from `Store::begin` is inside one,
//! [`Conn::commit`] ends it, and dropping it uncommitted rolls it back — a
//! flow that refuses half way (a rate limit) returns early and nothing it
//! touched stays. On SQLite a transaction is `BEGIN IMMEDIATE`: writers
//! queue on the database's lock. On PostgreSQL it is `SERIALIZABLE`, which
//! gives the same answer as running the flows one after another, so the
//! flows need no locking of their own; a transaction PostgreSQL had to
//! abort to keep that promise is [`StoreError::Busy`], which callers treat
//! as "try again" exactly like a locked SQLite file.
//!
//! The store's API is synchronous (callers run it on blocking threads), so
//! the PostgreSQL driver, which is asynchronous, runs on a small runtime the
//! backend owns; a call blocks its thread until the database answers.

use std::cell::Cell;
use std::sync::MutexGuard;

use mamoru_core::{AdminId, AlertId, OutboxId, SubscriberId, TestId};

use crate::{Result, StoreError};

/// How a transaction on PostgreSQL is kept apart from concurrent ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isolation {
    /// The default: the same answer as running the flows one at a time.
    Serializable,
    /// For the relay's own work on outbox rows only: rows it picks with
    /// `FOR UPDATE SKIP LOCKED` or names by id, each statement guarded by
    /// the row's state. PostgreSQL re-checks a locked row's condition
    /// against its newest version, so nothing is claimed or finished twice;
    /// and under `SERIALIZABLE` these busy, overlapping transactions
    /// aborted each other through predicate locks on shared index pages
    /// (see `Store::begin_rows`).
    ReadCommitted,
}

/// Which SQL engine a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// One value of a parameter or a column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// What can be bound as a parameter.
pub trait ToValue {
    fn to_value(&self) -> Value;
}

/// What a column can be read as. A value of the wrong kind is an error,
/// never a default.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> Result<Self>;
}

fn wrong(want: &str, v: &Value) -> StoreError {
    StoreError::Column(format!("expected {want}, found {v:?}"))
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

macro_rules! int_value {
    ($($t:ty),+) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(i64::from(*self))
            }
        }
        impl FromValue for $t {
            fn from_value(v: &Value) -> Result<Self> {
                match v {
                    Value::Int(i) => <$t>::try_from(*i).map_err(|_| wrong(stringify!($t), v)),
                    _ => Err(wrong(stringify!($t), v)),
                }
            }
        }
    )+};
}
int_value!(i64, i32, u32, u16, u8);

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl FromValue for bool {
    fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Int(i) => Ok(*i != 0),
            _ => Err(wrong("bool", v)),
        }
    }
}

impl ToValue for usize {
    fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}

impl FromValue for f64 {
    fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Real(f) => Ok(*f),
            // SQLite keeps a REAL that is a whole number as an integer.
            Value::Int(i) => Ok(*i as f64),
            _ => Err(wrong("f64", v)),
        }
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl FromValue for String {
    fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            _ => Err(wrong("text", v)),
        }
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}

impl<const N: usize> ToValue for [u8; N] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Blob(b) => Ok(b.clone()),
            _ => Err(wrong("blob", v)),
        }
    }
}

impl<const N: usize> FromValue for [u8; N] {
    fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Blob(b) => b.as_slice().try_into().map_err(|_| wrong("blob of the right length", v)),
            _ => Err(wrong("blob", v)),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

macro_rules! id_value {
    ($($t:ty),+) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(self.get())
            }
        }
        impl FromValue for $t {
            fn from_value(v: &Value) -> Result<Self> {
                i64::from_value(v).map(<$t>::new)
            }
        }
    )+};
}
id_value!(SubscriberId, AlertId, AdminId, OutboxId, TestId);

/// `params![a, b]`: the parameters of one statement, as values.
#[macro_export]
#[doc(hidden)]
macro_rules! params {
    () => { &[] as &[$crate::db::Value] };
    ($($p:expr),+ $(,)?) => { &[$($crate::db::ToValue::to_value(&$p)),+] as &[$crate::db::Value] };
}

/// One row of a result, read into values.
#[derive(Debug, Clone)]
pub struct Row {
    values: Vec<Value>,
}

impl Row {
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T> {
        let v = self.values.get(i).ok_or_else(|| StoreError::Column(format!("no column {i}")))?;
        T::from_value(v)
    }
}

/// A connection of either backend, possibly inside a transaction.
pub struct Conn<'a> {
    inner: Inner<'a>,
    in_tx: Cell<bool>,
}

enum Inner<'a> {
    Sqlite(MutexGuard<'a, rusqlite::Connection>),
    Postgres(Box<crate::pg::PgConn<'a>>),
}

impl<'a> Conn<'a> {
    pub(crate) fn sqlite(guard: MutexGuard<'a, rusqlite::Connection>) -> Self {
        Conn { inner: Inner::Sqlite(guard), in_tx: Cell::new(false) }
    }

    pub(crate) fn postgres(conn: crate::pg::PgConn<'a>) -> Self {
        Conn { inner: Inner::Postgres(Box::new(conn)), in_tx: Cell::new(false) }
    }

    pub fn dialect(&self) -> Dialect {
        match self.inner {
            Inner::Sqlite(_) => Dialect::Sqlite,
            Inner::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The SQLite connection, for what only SQLite has (pragmas, the
    /// online backup); `None` on PostgreSQL.
    pub(crate) fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.inner {
            Inner::Sqlite(c) => Some(c),
            Inner::Postgres(_) => None,
        }
    }

    /// Starts this connection's transaction (see the module's notes).
    pub(crate) fn begin(self) -> Result<Self> {
        self.begin_at(Isolation::Serializable)
    }

    /// Starts this connection's transaction at `level` on PostgreSQL; on
    /// SQLite every transaction takes the write lock and `level` changes
    /// nothing.
    pub(crate) fn begin_at(self, level: Isolation) -> Result<Self> {
        match &self.inner {
            Inner::Sqlite(c) => c.execute_batch("BEGIN IMMEDIATE")?,
            Inner::Postgres(c) => c.batch(match level {
                Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
                Isolation::ReadCommitted => "BEGIN ISOLATION LEVEL READ COMMITTED",
            })?,
        }
        self.in_tx.set(true);
        Ok(self)
    }

    /// Commits the transaction. On an error the transaction is rolled back
    /// as the connection drops.
    pub fn commit(self) -> Result<()> {
        match &self.inner {
            Inner::Sqlite(c) => c.execute_batch("COMMIT")?,
            Inner::Postgres(c) => c.batch("COMMIT")?,
        }
        self.in_tx.set(false);
        Ok(())
    }

    /// Several statements without parameters or results.
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.inner {
            Inner::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Inner::Postgres(c) => c.batch(sql),
        }
    }

    /// Runs one statement; the number of rows it changed.
    pub fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        match &self.inner {
            Inner::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(params.iter()))?)
            }
            Inner::Postgres(c) => c.execute(sql, params),
        }
    }

    /// Every row of a query, each mapped by `f`.
    pub fn query_map<T>(&self, sql: &str, params: &[Value], mut f: impl FnMut(&Row) -> Result<T>) -> Result<Vec<T>> {
        match &self.inner {
            Inner::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let width = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let values = (0..width).map(|i| r.get_ref(i).map(Value::from)).collect::<rusqlite::Result<_>>()?;
                    out.push(f(&Row { values })?);
                }
                Ok(out)
            }
            Inner::Postgres(c) => c.query(sql, params)?.into_iter().map(|values| f(&Row { values })).collect(),
        }
    }

    /// The first row of a query mapped by `f`; [`StoreError::NoRow`] when
    /// there is none (see [`OptionalExt::optional`]).
    pub fn query_row<T>(&self, sql: &str, params: &[Value], f: impl FnOnce(&Row) -> Result<T>) -> Result<T> {
        let mut f = Some(f);
        let mut first = None;
        // Only the first row is mapped; a query for one row that finds more
        // takes the first, as SQLite's own `query_row` does.
        self.query_map(sql, params, |r| {
            if let Some(f) = f.take() {
                first = Some(f(r)?);
            }
            Ok(())
        })?;
        first.ok_or(StoreError::NoRow)
    }
}

impl<'a> Conn<'a> {
    /// A statement to run several times (each run prepares it from the
    /// connection's statement cache).
    pub fn prepare<'c>(&'c self, sql: &str) -> Result<Stmt<'c, 'a>> {
        Ok(Stmt { conn: self, sql: sql.to_owned() })
    }

    /// The same as [`Conn::prepare`]: every statement is cached.
    pub fn prepare_cached<'c>(&'c self, sql: &str) -> Result<Stmt<'c, 'a>> {
        self.prepare(sql)
    }
}

/// A statement of a [`Conn`].
pub struct Stmt<'c, 'a> {
    conn: &'c Conn<'a>,
    sql: String,
}

impl Stmt<'_, '_> {
    pub fn execute(&mut self, params: &[Value]) -> Result<usize> {
        self.conn.execute(&self.sql, params)
    }

    /// The rows, each mapped by `f`, as an iterator of results (all read
    /// before it is returned).
    pub fn query_map<T>(&mut self, params: &[Value], f: impl FnMut(&Row) -> Result<T>) -> Result<std::vec::IntoIter<Result<T>>> {
        Ok(self.conn.query_map(&self.sql, params, f)?.into_iter().map(Ok).collect::<Vec<_>>().into_iter())
    }

    pub fn query_row<T>(&mut self, params: &[Value], f: impl FnOnce(&Row) -> Result<T>) -> Result<T> {
        self.conn.query_row(&self.sql, params, f)
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if self.in_tx.get() {
            let rolled_back = match &self.inner {
                Inner::Sqlite(c) => c.execute_batch("ROLLBACK").map_err(StoreError::from),
                Inner::Postgres(c) => c.batch("ROLLBACK"),
            };
            if let Err(e) = rolled_back {
                // SQLite rolls back by itself when the statement that
                // failed was the COMMIT; PostgreSQL ends the transaction
                // when the connection goes (the pool then discards it).
                tracing::debug!(error = %e, "rollback failed");
            }
        }
    }
}

/// What a claim's subquery appends so that claimers on several nodes skip
/// each other's rows instead of queueing on them: PostgreSQL's `FOR UPDATE
/// SKIP LOCKED`. SQLite has one writer at a time and needs nothing.
pub fn skip_locked(conn: &Conn<'_>) -> &'static str {
    match conn.dialect() {
        Dialect::Sqlite => "",
        Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
    }
}

/// SQLite's `INDEXED BY index`, for a query whose plan must not depend on
/// the planner's statistics; PostgreSQL chooses by itself.
pub fn indexed_by(conn: &Conn<'_>, index: &str) -> String {
    match conn.dialect() {
        Dialect::Sqlite => format!("INDEXED BY {index}"),
        Dialect::Postgres => String::new(),
    }
}

/// `.optional()` on a one-row query: no row is `None`.
pub trait OptionalExt<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExt<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::NoRow) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl From<rusqlite::types::ValueRef<'_>> for Value {
    fn from(v: rusqlite::types::ValueRef<'_>) -> Self {
        use rusqlite::types::ValueRef;
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Int(i),
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_as_written_and_refuse_the_wrong_kind() {
        assert_eq!(i64::from_value(&7i64.to_value()).unwrap(), 7);
        assert_eq!(String::from_value(&"x".to_value()).unwrap(), "x");
        assert_eq!(<[u8; 2]>::from_value(&[1u8, 2].to_value()).unwrap(), [1, 2]);
        assert_eq!(Option::<i64>::from_value(&Value::Null).unwrap(), None);
        assert!(i64::from_value(&Value::Text("7".into())).is_err());
        assert!(u8::from_value(&Value::Int(300)).is_err());
        assert!(<[u8; 3]>::from_value(&Value::Blob(vec![1])).is_err());
        assert_eq!(SubscriberId::from_value(&SubscriberId::new(5).to_value()).unwrap(), SubscriberId::new(5));
    }
}
