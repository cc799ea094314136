//! The PostgreSQL backend: a pool of tokio-postgres connections
//! (deadpool-postgres) on a runtime of its own, behind the synchronous
//! [`Conn`](crate::db::Conn).
//!
//! Schema versions live in `mamoru_schema`; a node that starts takes a
//! transaction-scoped advisory lock before it migrates, so several nodes
//! starting together apply each migration once.

use std::str::FromStr;
use std::time::Duration;

use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::db::Value;
use crate::{Result, StoreError};

/// Numbered like SQLite's: the PostgreSQL schema starts at the version the
/// SQLite migrations had reached when the backend was added (13), with the
/// whole schema in one file; every later migration comes in both dialects.
pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
    (13, include_str!("migrations/pg/0013_schema.sql")),
    (14, include_str!("migrations/pg/0014_relay_holders.sql")),
    (15, include_str!("migrations/pg/0015_outbox_fewer_indexes.sql")),
    (16, include_str!("migrations/pg/0016_alert_copy_identity.sql")),
    (17, include_str!("migrations/pg/0017_outbox_one_claim_index.sql")),
    (18, include_str!("migrations/pg/0018_subscribers_fanout_index.sql")),
    (19, include_str!("migrations/pg/0019_alert_queue.sql")),
];

/// Key of the advisory lock that serialises migrations across nodes.
const MIGRATION_LOCK: i64 = 0x6d61_6d6f_7275;

pub(crate) struct PgBackend {
    /// `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    pool: Pool,
    /// For the connections outside the pool ([`PgBackend::watch`]).
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        // The store may go away inside an async function (the end of
        // `mamoru serve`), where waiting for a runtime's threads is not
        // allowed; its tasks (the connections) are only abandoned.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl PgBackend {
    /// A pool for `url` (libpq's URL or key=value form), TLS verified with
    /// the certificates of `ca_file` (PEM), or the system's roots when it
    /// is `None`. No connection is made until the first statement.
    pub(crate) fn connect(url: &str, wait: Duration, ca_file: Option<&std::path::Path>) -> Result<Self> {
        let config = tokio_postgres::Config::from_str(url).map_err(|e| StoreError::Url(e.to_string()))?;
        let tls = tls_for(&config, ca_file)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mamoru-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Postgres(format!("cannot start the database runtime: {e}")))?;
        let manager = Manager::from_config(config.clone(), tls.clone(), ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(wait))
            .create_timeout(Some(wait))
            .recycle_timeout(Some(wait))
            .build()
            .map_err(|e| StoreError::Postgres(e.to_string()))?;
        Ok(PgBackend { rt: Some(rt), pool, config, tls })
    }

    pub(crate) fn get(&self) -> Result<PgConn<'_>> {
        let rt = self.rt.as_ref().ok_or(StoreError::Unsupported("the store is closing"))?;
        let client = block(rt, self.pool.get()).map_err(|e| StoreError::Postgres(with_causes(&e)))?;
        Ok(PgConn { client, rt })
    }

    /// Calls `on` each time a transaction that notified `channel` commits,
    /// from a connection of its own that listens until the store is
    /// dropped. A lost connection is made again (1 s, doubling up to 30 s);
    /// `on` is also called each time listening starts, for what was
    /// notified while nobody listened.
    pub(crate) fn watch(&self, channel: &'static str, on: Box<dyn Fn() + Send + Sync>) -> Result<()> {
        let rt = self.rt.as_ref().ok_or(StoreError::Unsupported("the store is closing"))?;
        let (config, tls) = (self.config.clone(), self.tls.clone());
        rt.spawn(async move {
            let mut pause = Duration::from_secs(1);
            loop {
                let began = std::time::Instant::now();
                let lost = listen(&config, tls.clone(), channel, &*on).await;
                if began.elapsed() > Duration::from_secs(60) {
                    pause = Duration::from_secs(1);
                }
                tracing::warn!(channel, error = %lost, retry_secs = pause.as_secs(), "lost the database connection that listens for queued mail");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        });
        Ok(())
    }

    /// Applies the migrations this database lacks, each in one transaction.
    pub(crate) fn migrate(&self) -> Result<()> {
        let conn = self.get()?;
        conn.batch("BEGIN")?;
        let applied = (|| {
            conn.execute("SELECT pg_advisory_xact_lock(?1)", &[Value::Int(MIGRATION_LOCK)])?;
            conn.batch("CREATE TABLE IF NOT EXISTS mamoru_schema (version BIGINT NOT NULL)")?;
            let version = match conn.query("SELECT version FROM mamoru_schema", &[])?.first().and_then(|r| r.first()) {
                Some(Value::Int(v)) => *v,
                _ => 0,
            };
            let known = MIGRATIONS.last().map_or(0, |m| m.0);
            if version > known {
                return Err(StoreError::TooNew { found: version, known });
            }
            for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > version) {
                conn.batch(sql)?;
                conn.execute("DELETE FROM mamoru_schema", &[])?;
                conn.execute("INSERT INTO mamoru_schema (version) VALUES (?1)", &[Value::Int(*v)])?;
                tracing::info!(version = v, "applied database migration");
            }
            Ok(())
        })();
        match applied {
            Ok(()) => conn.batch("COMMIT"),
            Err(e) => {
                let _ = conn.batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

/// One pooled connection; back to the pool when dropped.
pub(crate) struct PgConn<'a> {
    client: Object,
    rt: &'a tokio::runtime::Runtime,
}

impl PgConn<'_> {
    pub(crate) fn batch(&self, sql: &str) -> Result<()> {
        Ok(block(self.rt, self.client.batch_execute(sql))?)
    }

    pub(crate) fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        let sql = numbered(sql);
        let n = block(self.rt, async {
            let stmt = self.client.prepare_cached(&sql).await?;
            self.client.execute(&stmt, &refs(params)).await
        })?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    pub(crate) fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>> {
        let sql = numbered(sql);
        let rows = block(self.rt, async {
            let stmt = self.client.prepare_cached(&sql).await?;
            self.client.query(&stmt, &refs(params)).await
        })?;
        rows.iter().map(|r| (0..r.len()).map(|i| column(r, i)).collect()).collect()
    }
}

/// `e` and its causes, "a: b: c": the pool's and the driver's errors say
/// what failed (a TLS handshake) and keep why (an unknown issuer) in their
/// sources.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// The TLS of every connection to the server of `config`: refused
/// without `sslmode=require` off this machine ([`check_tls`]), verified
/// with `ca_file` or the system's roots.
pub(crate) fn tls_for(config: &tokio_postgres::Config, ca_file: Option<&std::path::Path>) -> Result<MakeRustlsConnect> {
    check_tls(config)?;
    Ok(MakeRustlsConnect::new(tls_config(ca_file)?))
}

/// A server on another machine is reached over verified TLS only: the
/// URL must say `sslmode=require` (with the default, `prefer`, whoever sits
/// between could answer that the server has no TLS and read everything).
/// On loopback or a Unix socket, TLS is used when the server offers it.
fn check_tls(config: &tokio_postgres::Config) -> Result<()> {
    let remote = config.get_hosts().iter().any(|h| match h {
        Host::Tcp(name) => !(name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())),
        Host::Unix(_) => false,
    }) || config.get_hostaddrs().iter().any(|ip| !ip.is_loopback());
    if remote && config.get_ssl_mode() != SslMode::Require {
        return Err(StoreError::Url(
            "a PostgreSQL server on another machine is reached over TLS only: add sslmode=require to the URL \
             (its certificate is verified)"
                .into(),
        ));
    }
    Ok(())
}

/// rustls with ring, as everywhere else in mamoru: `ca_file`'s
/// certificates, or the system's roots; the server is always verified.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
        Some(path) => {
            let bad = |e: String| StoreError::Url(format!("tls_ca_file {}: {e}", path.display()));
            for cert in rustls_pki_types::CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
                roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("no certificate in the file".into()));
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Postgres(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// One connection's LISTEN on `channel`, until the connection is lost: the
/// reason.
async fn listen(config: &tokio_postgres::Config, tls: MakeRustlsConnect, channel: &str, on: &(dyn Fn() + Send + Sync)) -> StoreError {
    let (client, mut connection) = match config.connect(tls).await {
        Ok(c) => c,
        Err(e) => return StoreError::Postgres(with_causes(&e)),
    };
    // The connection delivers notifications only while it is polled, which
    // its own task does; they reach this task through the channel.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                    if tx.send(()).is_err() {
                        return StoreError::Postgres("stopped listening".into());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return e.into(),
                None => return StoreError::Postgres("the server closed the connection".into()),
            }
        }
    });
    // The channel is one of ours, a plain identifier: nothing to quote.
    if let Err(e) = client.batch_execute(&format!("LISTEN {channel}")).await {
        driver.abort();
        return e.into();
    }
    on();
    while rx.recv().await.is_some() {
        on();
    }
    drop(client);
    driver.await.unwrap_or_else(|e| StoreError::Postgres(format!("the listening task failed: {e}")))
}

/// Runs `f` on the backend's runtime and waits for it. A caller on a thread
/// that drives another runtime's tasks (an async function that calls the
/// store directly, as SQLite allows) cannot block on a runtime there; it
/// waits on a short-lived thread instead.
fn block<F>(rt: &tokio::runtime::Runtime, f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return rt.block_on(f);
    }
    std::thread::scope(|s| match s.spawn(|| rt.block_on(f)).join() {
        Ok(out) => out,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

fn refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// `?N` → `$N` outside string literals and quoted names; a bare `?` takes
/// the next number, as in SQLite.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut quote: Option<char> = None;
    let mut next = 1;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (None, '?') => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() {
                    digits = next.to_string();
                }
                next = digits.parse::<usize>().unwrap_or(next) + 1;
                out.push('$');
                out.push_str(&digits);
            }
            (None, c) => out.push(c),
        }
    }
    out
}

fn column(row: &tokio_postgres::Row, i: usize) -> Result<Value> {
    let ty = row.columns()[i].type_();
    let v = match *ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int),
        Type::INT4 => row.try_get::<_, Option<i32>>(i)?.map(|v| Value::Int(v.into())),
        Type::INT2 => row.try_get::<_, Option<i16>>(i)?.map(|v| Value::Int(v.into())),
        Type::BOOL => row.try_get::<_, Option<bool>>(i)?.map(|v| Value::Int(v.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(Value::Real),
        Type::FLOAT4 => row.try_get::<_, Option<f32>>(i)?.map(|v| Value::Real(v.into())),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => row.try_get::<_, Option<String>>(i)?.map(Value::Text),
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob),
        Type::VOID => None,
        _ => return Err(StoreError::Column(format!("column {i} has type {ty}, which the store does not read (cast it)"))),
    };
    Ok(v.unwrap_or(Value::Null))
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::BOOL) => (*i != 0).to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT8) => (*i as f64).to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Value::Real(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (Value::Text(s), _) => s.as_str().to_sql(ty, out),
            (Value::Blob(b), _) => b.as_slice().to_sql(ty, out),
            (v, ty) => Err(format!("cannot bind {v:?} as {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code() {
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED => StoreError::Busy,
            Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE => StoreError::Busy,
            Some(c) if *c == SqlState::READ_ONLY_SQL_TRANSACTION => StoreError::ReadOnly,
            _ => StoreError::Postgres(e.as_db_error().map_or_else(|| e.to_string(), |d| format!("{}: {}", d.code().code(), d.message()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn a_server_on_another_machine_needs_sslmode_require() {
        let wait = std::time::Duration::from_secs(1);
        for url in ["postgres://mamoru@db.example.jp/mamoru", "postgres://mamoru@192.0.2.7:5432/mamoru?sslmode=prefer", "host=db.example.jp user=mamoru"] {
            let Err(e) = super::PgBackend::connect(url, wait, None) else { panic!("{url} was taken without TLS") };
            assert!(e.to_string().contains("sslmode=require"), "{url}: {e}");
        }
        for url in [
            "postgres://mamoru@db.example.jp/mamoru?sslmode=require",
            "postgres://mamoru@127.0.0.1:5432/mamoru",
            "postgres://mamoru@localhost/mamoru",
            "postgres://mamoru@[::1]/mamoru",
            "postgres://mamoru@%2Frun%2Fpostgresql/mamoru",
        ] {
            // No connection is made here: only the URL is judged.
            assert!(super::PgBackend::connect(url, wait, None).is_ok(), "{url}");
        }
    }

    #[test]
    fn placeholders_are_numbered_outside_literals() {
        assert_eq!(numbered("SELECT ?1, ?12 WHERE a = '?3' AND \"q?\" = ?"), "SELECT $1, $12 WHERE a = '?3' AND \"q?\" = $13");
        assert_eq!(numbered("VALUES (?, ?)"), "VALUES ($1, $2)");
    }
}
