//! The store: the only crate that touches SQL, on SQLite (the embedded
//! default) or PostgreSQL ([`db`] is the seam between them). Ingest, web and
//! relay never talk to each other; they meet here.
//!
//! Layout:
//! - [`Store`]: a connection with the schema migrated, and the operations
//!   the flows need, each one transaction.
//! - [`relay`]: what the carrier-aware relay needs: claims per pool, group
//!   commits of outcomes, undeliverable addresses, pool state, queue shape.
//! - [`imap`]: where ingest stands in each watched IMAP mailbox.
//! - [`counters`]: event counters every process adds to, for the metrics
//!   of the serving one.
//! - [`keys`]: reading and creating the key files in the data dir.
//! - `migrations/`: numbered, append-only SQL, tracked in `PRAGMA user_version`.
//!
//! Invariants:
//! - The database is in WAL mode with `synchronous=FULL`: when a method that
//!   acknowledges inbound mail returns `Ok`, the change is on disk.
//! - No address is written in clear: addresses and queued mail are sealed
//!   with the [`Sealer`], looked up by blind index.
//! - Every multi-statement operation runs in one transaction: `IMMEDIATE` on
//!   SQLite, so concurrent processes (the pipe command, `mamoru serve`)
//!   serialise on the write lock instead of failing half way; `SERIALIZABLE`
//!   on PostgreSQL, where a transaction aborted to stay serial is
//!   [`StoreError::Busy`], transient like a held lock.
//! - On SQLite, the database is in WAL mode with `synchronous=FULL` (above);
//!   on PostgreSQL, a commit is durable when the server's own settings make
//!   it so (`synchronous_commit`, the default `on`).

pub mod backup;
pub mod db;
mod pg;
pub mod bounces;
pub mod imap;
pub mod confirm;
pub mod copy;
pub mod counters;
pub mod import;
pub mod admins;
pub mod alerts;
pub mod keys;
pub mod manage;
pub mod problems;
pub mod reception;
pub mod relay;
mod queue;
pub mod states;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use db::{Conn, Dialect, OptionalExt};
use std::time::Duration;

use mamoru_core::mail::{MailKind, OutgoingMail};
use mamoru_core::seal::{BlindIndex, SealError, Sealer};
use mamoru_core::token::{Claims, Nonce, Purpose};
use mamoru_core::{EmailAddress, UnixTime};
use rusqlite::{Connection, ErrorCode};
use states::{OutboxState, SubscriberStatus};

pub use keys::Keys;

/// Numbered, append-only. Never edit a migration that has shipped; add one.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_subscriber_links.sql"),
    include_str!("migrations/0003_relay.sql"),
    include_str!("migrations/0004_selfservice.sql"),
    include_str!("migrations/0005_alerts.sql"),
    include_str!("migrations/0006_fanout.sql"),
    include_str!("migrations/0007_autoincrement.sql"),
    include_str!("migrations/0008_learned_limits.sql"),
    include_str!("migrations/0009_imap.sql"),
    include_str!("migrations/0010_followups_preferences.sql"),
    include_str!("migrations/0011_reception.sql"),
    include_str!("migrations/0012_counters.sql"),
    include_str!("migrations/0013_outbox_shape_index.sql"),
    include_str!("migrations/0014_relay_holders.sql"),
    include_str!("migrations/0015_outbox_fewer_indexes.sql"),
    include_str!("migrations/0016_alert_copy_identity.sql"),
    include_str!("migrations/0017_outbox_one_claim_index.sql"),
    include_str!("migrations/0018_subscribers_fanout_index.sql"),
    include_str!("migrations/0019_alert_queue.sql"),
];

/// How long [`Store::serially`] runs a transaction again before it answers
/// `Busy` (transient: LMTP 451, exit 75, a page that asks to try again).
const SERIAL_RETRY_FOR: Duration = Duration::from_secs(5);

/// A few random bits for a pause; not for anything secret. The standard
/// library's hasher keys are random per process and step per call, which is
/// all a pause needs, without a generator of its own.
fn jitter() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// The footer-link nonce of a subscriber who never confirmed (the
/// column's default).
pub(crate) const NO_NONCE: Nonce = [0; 8];

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "mamoru.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database is locked by another process")]
    Busy,
    #[error("database is read-only")]
    ReadOnly,
    #[error("cannot open database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    #[error("database error: {0}")]
    Postgres(String),
    #[error("database URL: {0}")]
    Url(String),
    /// A column held a value of another kind than the code reads.
    #[error("database value: {0}")]
    Column(String),
    /// A query for one row found none; [`db::OptionalExt::optional`] turns
    /// it into `None`, and no public method returns it.
    #[error("no such row")]
    NoRow,
    /// What this backend does not do (the message says what to use).
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("sealed data: {0}")]
    Seal(#[from] SealError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("database schema version {found} is newer than this build ({known})")]
    TooNew { found: i64, known: i64 },
    /// A migration left a row whose foreign key points nowhere; nothing of
    /// it was committed.
    #[error("database migration would break a foreign key of table {table}")]
    BrokenForeignKey { table: String },
}

impl StoreError {
    /// Everything but a schema from the future (or one a migration could
    /// not carry over) may go away by itself (a
    /// lock released, disk space freed, a permission fixed): the MTA should
    /// retry.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            StoreError::TooNew { .. }
                | StoreError::BrokenForeignKey { .. }
                | StoreError::Seal(_)
                | StoreError::Url(_)
                | StoreError::Column(_)
                | StoreError::Unsupported(_)
        )
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy,
            _ => StoreError::Sqlite(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Subscriber row id.
pub use mamoru_core::{AdminId, AlertId, OutboxId, SubscriberId};

/// Limits on 登録受付 mails (and 登録内容の変更 mails, which count alike).
///
/// The per-address limits count per *mailbox*
/// ([`mamoru_core::mailbox::mailbox_key`]), whatever the spelling and
/// whichever way the request came. The global budget is one per channel, so
/// a flood through the PC form cannot spend the budget of the phones'
/// empty mails; the PC form is also limited per client address.
#[derive(Debug, Clone, Copy)]
pub struct RegistrationLimits {
    pub cooldown_secs: i64,
    pub daily_cap: i64,
    /// Per clock hour, for empty mails to `ans@`.
    pub global_hourly_cap: i64,
    /// Per clock hour, for the PC form.
    pub web_global_hourly_cap: i64,
    /// Per clock hour and client address, for the PC form.
    pub web_client_hourly_cap: i64,
}

impl From<&mamoru_core::config::LimitsConfig> for RegistrationLimits {
    fn from(c: &mamoru_core::config::LimitsConfig) -> Self {
        Self {
            cooldown_secs: c.register_cooldown_secs,
            daily_cap: c.register_daily_cap,
            global_hourly_cap: c.register_global_hourly_cap,
            web_global_hourly_cap: c.register_web_global_hourly_cap,
            web_client_hourly_cap: c.register_web_client_hourly_cap,
        }
    }
}

/// Where a registration request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// An empty mail to `ans@` (pipe or LMTP).
    Mail,
    /// The PC form, from the client whose keyed hash this is (see
    /// `mamoru_web`: IPv6 by /64, behind a TLS proxy the forwarded address).
    Web { client: BlindIndex },
}

/// Which limit refused a 登録受付 mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Cooldown,
    DailyCap,
    /// The global budget of the request's channel.
    GlobalHourlyCap,
    /// The PC form's budget for one client address.
    ClientHourlyCap,
}

impl Limited {
    pub fn as_str(self) -> &'static str {
        match self {
            Limited::Cooldown => "cooldown",
            Limited::DailyCap => "daily-cap",
            Limited::GlobalHourlyCap => "global-hourly-cap",
            Limited::ClientHourlyCap => "client-hourly-cap",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationRequest {
    /// A 登録受付 mail is queued for this (pending or existing) subscriber.
    Queued { subscriber: SubscriberId, outbox: OutboxId },
    /// Nothing was queued: a limit applies.
    Limited(Limited),
}

/// What the registration page shows for a live token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationView {
    pub subscriber: SubscriberId,
    /// Districts currently chosen (empty for a new registration).
    pub districts: Vec<u32>,
    /// Kinds and quiet hours (none for a new registration).
    pub prefs: Preferences,
}

/// What a subscriber receives, and when, besides the districts: the
/// configured kinds they turned off (so every kind, a newly configured one
/// included, is on by default) and quiet hours as minutes of the day in
/// Japan time `[start, end)`, wrapping past midnight when start > end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preferences {
    pub kinds_off: Vec<String>,
    pub quiet: Option<(i64, i64)>,
}

impl Preferences {
    /// Quiet hours that mean something: both ends a minute of the day, and
    /// different.
    pub fn valid_quiet(quiet: Option<(i64, i64)>) -> Option<(i64, i64)> {
        quiet.filter(|(a, b)| a != b && (0..1440).contains(a) && (0..1440).contains(b))
    }
}

/// Replaces a subscriber's preferences inside the caller's transaction.
fn write_preferences(tx: &Conn<'_>, subscriber: SubscriberId, prefs: &Preferences) -> Result<()> {
    let (start, end) = Preferences::valid_quiet(prefs.quiet).unwrap_or((-1, -1));
    tx.execute("UPDATE subscribers SET quiet_start = ?1, quiet_end = ?2 WHERE id = ?3", params![start, end, subscriber])?;
    tx.execute("DELETE FROM subscriber_kinds_off WHERE subscriber_id = ?1", params![subscriber])?;
    for k in &prefs.kinds_off {
        tx.execute(
            "INSERT INTO subscriber_kinds_off (subscriber_id, kind) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![subscriber, k],
        )?;
    }
    Ok(())
}

fn preferences_of(conn: &Conn<'_>, subscriber: SubscriberId) -> Result<Preferences> {
    let (start, end): (i64, i64) =
        conn.query_row("SELECT quiet_start, quiet_end FROM subscribers WHERE id = ?1", params![subscriber], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let kinds_off =
        conn.query_map("SELECT kind FROM subscriber_kinds_off WHERE subscriber_id = ?1 ORDER BY kind", params![subscriber], |r| r.get(0))?;
    Ok(Preferences { kinds_off, quiet: Preferences::valid_quiet(Some((start, end))) })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    Completed { subscriber: SubscriberId, outbox: OutboxId },
    /// The token was already used, revoked, or its subscriber is gone.
    TokenUnusable,
}

/// A subscriber as tests and the CLI see it (the address decrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    pub id: SubscriberId,
    pub address: EmailAddress,
    pub status: SubscriberStatus,
    pub districts: Vec<u32>,
}

/// A claimed outbox row, decrypted for delivery.
#[derive(Debug, Clone)]
pub struct QueuedMail {
    pub id: OutboxId,
    pub kind: MailKind,
    pub sender: String,
    pub recipient: EmailAddress,
    pub message_id: String,
    /// The message; empty for an alert row until the relay renders it
    /// from [`QueuedMail::alert`].
    pub content: Vec<u8>,
    /// Attempts including this one.
    pub attempts: i64,
    /// Set for a subscriber's copy of a published alert: the row holds no
    /// content, and the relay renders it when it sends the row.
    pub alert: Option<AlertRef>,
}

/// What the relay needs, besides the recipient, to render one subscriber's
/// copy of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertRef {
    pub alert_id: alerts::AlertId,
    pub subscriber_id: SubscriberId,
    /// The subscriber's footer-link nonce.
    pub link_nonce: Nonce,
}

/// Outbox rows per state, for `mamoru queue` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub queued: i64,
    pub sending: i64,
    pub sent: i64,
    pub failed: i64,
    pub expired: i64,
}

pub struct Store {
    backend: Backend,
    sealer: Sealer,
    path: PathBuf,
    /// The throwaway cluster of a test store on PostgreSQL, stopped with it.
    #[cfg(test)]
    cluster: Option<pgtest::PgCluster>,
}

enum Backend {
    Sqlite(Mutex<Connection>),
    /// Boxed: the pool with its runtime is large next to a connection.
    Postgres(Box<pg::PgBackend>),
}

impl Store {
    /// Opens (creating if needed) `DATA_DIR/mamoru.db` and migrates it.
    pub fn open(data_dir: &Path, keys: &Keys, busy_timeout: Duration) -> Result<Self> {
        let path = data_dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(|source| StoreError::Open { path: path.clone(), source })?;
        conn.busy_timeout(busy_timeout)?;
        // WAL lets the web and relay read while ingest writes; FULL makes every
        // commit durable before it returns, which the ack contract needs.
        set_wal(&conn, busy_timeout)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Deleted rows (a deleted registration's sealed address) are
        // overwritten with zeros instead of lingering in free pages of the
        // database file.
        conn.pragma_update(None, "secure_delete", "ON")?;
        let store = Store {
            backend: Backend::Sqlite(Mutex::new(conn)),
            sealer: keys.sealer(),
            path,
            #[cfg(test)]
            cluster: None,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Connects to the PostgreSQL database at `url` and migrates it. The
    /// data dir still holds the keys; `wait` bounds how long a statement
    /// waits for a connection.
    pub fn open_postgres(url: &str, keys: &Keys, wait: Duration) -> Result<Self> {
        Self::open_postgres_with(url, None, keys, wait)
    }

    /// [`Store::open_postgres`] with TLS verified against the certificates
    /// of `ca_file` (PEM) instead of the system's roots. A server on another
    /// machine needs `sslmode=require` in the URL; on loopback or a Unix
    /// socket TLS is used when the server offers it.
    pub fn open_postgres_with(url: &str, ca_file: Option<&Path>, keys: &Keys, wait: Duration) -> Result<Self> {
        let backend = pg::PgBackend::connect(url, wait, ca_file)?;
        backend.migrate()?;
        Ok(Store {
            backend: Backend::Postgres(Box::new(backend)),
            sealer: keys.sealer(),
            path: PathBuf::new(),
            #[cfg(test)]
            cluster: None,
        })
    }

    /// The store the flows' tests run on: SQLite in `data_dir`, or, with
    /// `MAMORU_TEST_BACKEND=postgres`, a fresh PostgreSQL cluster of its own
    /// (`scripts/test` runs this crate's tests both ways).
    #[cfg(test)]
    pub(crate) fn open_for_test(data_dir: &Path, keys: &Keys, busy_timeout: Duration) -> Result<Self> {
        if std::env::var("MAMORU_TEST_BACKEND").as_deref() == Ok("postgres") {
            let cluster = pgtest::PgCluster::start();
            let mut store = Store::open_postgres(&cluster.url(), keys, Duration::from_secs(10))?;
            store.cluster = Some(cluster);
            return Ok(store);
        }
        Store::open(data_dir, keys, busy_timeout)
    }

    /// Calls `queued` whenever any process commits new outbox rows, so a
    /// relay on another node wakes at once. On PostgreSQL (a trigger
    /// notifies `mamoru_outbox`; see [`pg`]) it returns true; SQLite has no
    /// such signal across processes, and there the relays poll
    /// (`[relay] poll_interval_ms`).
    pub fn on_queued(&self, queued: impl Fn() + Send + Sync + 'static) -> Result<bool> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(false),
            Backend::Postgres(pg) => pg.watch("mamoru_outbox", Box::new(queued)).map(|()| true),
        }
    }

    /// Which engine holds the data.
    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// The key of `addr`'s per-address rate limits: a keyed hash of the
    /// mailbox it reaches, so every spelling of one inbox shares them.
    pub(crate) fn mailbox_index(&self, addr: &EmailAddress) -> BlindIndex {
        self.sealer.keyed_index(MAILBOX_SCOPE, mamoru_core::mailbox::mailbox_key(addr).as_bytes())
    }

    /// Whether the database takes writes now: opened read-write, and a
    /// write lock is granted within the busy timeout (and given back at
    /// once, nothing written). What `/readyz` and the watchdog ask.
    pub fn check_writable(&self) -> Result<()> {
        let conn = self.conn()?;
        if let Some(c) = conn.as_sqlite() {
            if c.is_readonly(rusqlite::MAIN_DB)? {
                return Err(StoreError::ReadOnly);
            }
        }
        let tx = conn.begin()?;
        if tx.dialect() == Dialect::Postgres {
            // A standby, or a primary set read-only, answers here.
            tx.execute("SELECT pg_catalog.txid_current()", params![])?;
        }
        drop(tx);
        Ok(())
    }

    /// A connection outside any transaction: one statement at a time.
    pub(crate) fn conn(&self) -> Result<Conn<'_>> {
        match &self.backend {
            // A panic while holding the lock leaves SQLite consistent (the
            // transaction rolls back on drop), so a poisoned lock is still
            // usable.
            Backend::Sqlite(c) => Ok(Conn::sqlite(c.lock().unwrap_or_else(|p| p.into_inner()))),
            Backend::Postgres(pg) => Ok(Conn::postgres(pg.get()?)),
        }
    }

    /// A connection inside a new transaction (see [`db`]): commit it, or
    /// drop it to roll back.
    pub(crate) fn begin(&self) -> Result<Conn<'_>> {
        self.conn()?.begin()
    }

    /// A transaction for the relay's statements on outbox rows that it
    /// locks or names by id (claims, acceptances, retries, lease renewals):
    /// `READ COMMITTED` on PostgreSQL (see [`db::Isolation`]). Under
    /// `SERIALIZABLE`, a drain of two nodes saw one in six of these
    /// transactions aborted by PostgreSQL's predicate locks on the pages of
    /// the outbox indexes they share, though none touched another's rows;
    /// an outcome group given up after its retries leaves its rows leased,
    /// and they are sent again when the lease ends. Anything that reads
    /// rows to decide about others (suspending an undeliverable subscriber)
    /// stays in [`Store::begin`]. The publish of an alert uses it too
    /// (`publish_alert`, which says why).
    pub(crate) fn begin_rows(&self) -> Result<Conn<'_>> {
        self.conn()?.begin_at(db::Isolation::ReadCommitted)
    }

    /// Runs a whole transaction `f` again when PostgreSQL aborted it to keep
    /// concurrent transactions serial, for up to [`SERIAL_RETRY_FOR`]; on
    /// SQLite writers queue on the lock instead, and `f` runs once. `f`
    /// must have no effect outside its transaction (a mail it renders is
    /// rendered again).
    ///
    /// Flows that meet on one row (a rate limit's hourly count, the
    /// confirmations of one alert, a counter) abort each other under
    /// `SERIALIZABLE` whenever they overlap: eight registrations at once
    /// had six in seven refused before they were run again here. The pause
    /// before each new try is random and grows, so the transactions that
    /// collided do not collide again in step.
    pub(crate) fn serially<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let started = std::time::Instant::now();
        let mut tries: u32 = 0;
        loop {
            match f() {
                Err(StoreError::Busy) if self.dialect() == Dialect::Postgres && started.elapsed() < SERIAL_RETRY_FOR => {
                    tries += 1;
                    let ceiling = 2u64 << tries.min(5);
                    std::thread::sleep(Duration::from_millis(1 + jitter() % ceiling));
                }
                other => return other,
            }
        }
    }

    /// The SQLite connection, for what only SQLite has; `None` on
    /// PostgreSQL.
    pub(crate) fn sqlite(&self) -> Option<std::sync::MutexGuard<'_, Connection>> {
        match &self.backend {
            Backend::Sqlite(c) => Some(c.lock().unwrap_or_else(|p| p.into_inner())),
            Backend::Postgres(_) => None,
        }
    }

    /// Applies the migrations this database lacks, in one transaction.
    ///
    /// Foreign key enforcement is off meanwhile, as SQLite's procedure for
    /// rebuilding a table asks (`PRAGMA foreign_keys` cannot change inside a
    /// transaction, and dropping a parent table with it on runs its `ON
    /// DELETE` actions); `PRAGMA foreign_key_check` must find nothing before
    /// the commit.
    fn migrate(&self) -> Result<()> {
        let Some(mut conn) = self.sqlite() else { return Ok(()) };
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        let applied = Self::apply_migrations(&mut conn);
        conn.pragma_update(None, "foreign_keys", "ON")?;
        applied
    }

    fn apply_migrations(conn: &mut Connection) -> Result<()> {
        use rusqlite::OptionalExtension;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew { found: version, known });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tracing::info!(version = i + 1, "applied database migration");
        }
        let broken: Option<String> = tx.query_row("PRAGMA foreign_key_check", [], |r| r.get(0)).optional()?;
        if let Some(table) = broken {
            return Err(StoreError::BrokenForeignKey { table });
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a 登録受付 request for `addr`: checks the limits atomically,
    /// finds or creates a pending subscriber, records a fresh token nonce, and
    /// queues the mail `render` builds from the subscriber id and nonce — all
    /// in one durable transaction, or nothing.
    pub fn request_registration(
        &self,
        addr: &EmailAddress,
        now: UnixTime,
        limits: &RegistrationLimits,
        token_expires_at: UnixTime,
        mut render: impl FnMut(SubscriberId, Nonce) -> OutgoingMail,
    ) -> Result<RegistrationRequest> {
        let index = self.sealer.index(addr);
        let mailbox = self.mailbox_index(addr);
        self.serially(|| {
            let tx = self.begin()?;
            if let Some(limited) = take_registration_slot(&tx, &mailbox, &Channel::Mail, now, limits)? {
                // Dropping the transaction rolls back the counters it touched.
                return Ok(RegistrationRequest::Limited(limited));
            }
            let existing: Option<SubscriberId> =
                tx.query_row("SELECT id FROM subscribers WHERE addr_index = ?1", params![&index[..]], |r| r.get(0)).optional()?;
            let subscriber = match existing {
                Some(id) => id,
                None => {
                    tx.query_row(
                        "INSERT INTO subscribers (addr_index, addr_sealed, domain, status, created_at, updated_at)
                         VALUES (?1, ?2, ?3, 'pending', ?4, ?4) RETURNING id",
                        params![&index[..], self.sealer.seal_address(addr)?, addr.domain(), now],
                        |r| r.get(0),
                    )?
                }
            };
            let nonce = self.issue_token(&tx, Purpose::Register, subscriber.get(), token_expires_at)?;
            let mail = render(subscriber, nonce);
            // The mail is worthless once its link has expired.
            let outbox = self.insert_outbox(&tx, &mail, Some(subscriber), 10, now, token_expires_at)?;
            audit(&tx, now, "ingest", "registration-requested", &format!("subscriber={subscriber} addr={}", addr.masked()))?;
            tx.commit()?;
            Ok(RegistrationRequest::Queued { subscriber, outbox })
        })
    }

    /// For the GET of a registration link: is the token still unused, and
    /// what is the subscriber's current choice? Changes nothing.
    pub fn registration_view(&self, claims: &Claims, now: UnixTime) -> Result<Option<RegistrationView>> {
        let conn = self.conn()?;
        let live: Option<SubscriberId> = conn
            .query_row(
                "SELECT t.subject_id FROM tokens t JOIN subscribers s ON s.id = t.subject_id
                 WHERE t.nonce = ?1 AND t.purpose = ?2 AND t.subject_id = ?3 AND t.used_at = 0 AND t.expires_at > ?4",
                params![&claims.nonce[..], claims.purpose.as_str(), claims.subject as i64, now],
                |r| r.get(0),
            )
            .optional()?;
        let Some(subscriber) = live else { return Ok(None) };
        let districts = districts_of(&conn, subscriber)?;
        let prefs = preferences_of(&conn, subscriber)?;
        Ok(Some(RegistrationView { subscriber, districts, prefs }))
    }

    /// For the POST of a registration link: consumes the token, activates the
    /// subscriber with exactly `districts` and `prefs`, and queues the 登録完了 mail
    /// `render` builds from the address and the subscriber's footer-link
    /// nonce (the mail carries the manage link) — one transaction.
    pub fn complete_registration(
        &self,
        claims: &Claims,
        districts: &[u32],
        prefs: &Preferences,
        now: UnixTime,
        mail_expires_at: UnixTime,
        mut render: impl FnMut(&EmailAddress, Nonce) -> OutgoingMail,
    ) -> Result<Completion> {
        self.serially(|| {
            let tx = self.begin()?;
            let consumed = consume_token(&tx, claims, claims.purpose, now)?;
            let Some(subscriber) = SubscriberId::from_subject(claims.subject) else { return Ok(Completion::TokenUnusable) };
            let sealed: Option<Vec<u8>> = tx
                .query_row("SELECT addr_sealed FROM subscribers WHERE id = ?1", params![subscriber], |r| r.get(0))
                .optional()?;
            let (true, Some(sealed)) = (consumed, sealed) else {
                return Ok(Completion::TokenUnusable);
            };
            let addr = self.sealer.open_address(&sealed)?;
            let status: SubscriberStatus = tx.query_row("SELECT status FROM subscribers WHERE id = ?1", params![subscriber], |r| r.get(0))?;
            if status == SubscriberStatus::Pending {
                // A parent who has just chosen districts may notice a wrong one
                // and send another empty mail at once. Completing the
                // registration proved the mailbox is theirs, so it lifts the
                // mailbox's cooldown once; the daily count (and so the daily
                // cap) stays as it is, and the next request starts a cooldown
                // again.
                tx.execute(
                    "UPDATE rate_limits SET last_at = 0 WHERE scope = ?1 AND key = ?2",
                    params![MAILBOX_SCOPE, &self.mailbox_index(&addr)[..]],
                )?;
            }
            let mut link_nonce: Nonce = [0; 8];
            self.sealer.random(&mut link_nonce)?;
            // The footer-link nonce is set once, at the first confirmation.
            tx.execute(
                "UPDATE subscribers SET link_nonce = ?1 WHERE id = ?2 AND link_nonce = ?3",
                params![&link_nonce[..], subscriber, &NO_NONCE[..]],
            )?;
            let link_nonce: Nonce = tx.query_row("SELECT link_nonce FROM subscribers WHERE id = ?1", params![subscriber], |r| r.get(0))?;
            tx.execute(
                "UPDATE subscribers SET status = 'active', updated_at = ?1,
                        confirmed_at = CASE WHEN confirmed_at = 0 THEN ?1 ELSE confirmed_at END
                 WHERE id = ?2",
                params![now, subscriber],
            )?;
            tx.execute("DELETE FROM subscriber_districts WHERE subscriber_id = ?1", params![subscriber])?;
            for d in districts {
                tx.execute("INSERT INTO subscriber_districts (subscriber_id, district_id) VALUES (?1, ?2)", params![subscriber, d])?;
            }
            write_preferences(&tx, subscriber, prefs)?;
            let mail = render(&addr, link_nonce);
            let outbox = self.insert_outbox(&tx, &mail, Some(subscriber), 10, now, mail_expires_at)?;
            let list: Vec<String> = districts.iter().map(u32::to_string).collect();
            audit(&tx, now, "web", "registration-completed", &format!("subscriber={subscriber} districts={}", list.join(",")))?;
            tx.commit()?;
            Ok(Completion::Completed { subscriber, outbox })
        })
    }

    /// Records a fresh nonce for a one-time token of `purpose` about
    /// `subject`, inside the caller's transaction, and returns it to be signed.
    fn issue_token(
        &self,
        tx: &Conn<'_>,
        purpose: Purpose,
        subject: i64,
        expires_at: UnixTime,
    ) -> Result<Nonce> {
        let mut nonce: Nonce = [0; 8];
        self.sealer.random(&mut nonce)?;
        tx.execute(
            "INSERT INTO tokens (nonce, purpose, subject_id, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![&nonce[..], purpose.as_str(), subject, expires_at],
        )?;
        Ok(nonce)
    }

    fn insert_outbox(
        &self,
        tx: &Conn<'_>,
        mail: &OutgoingMail,
        subscriber: Option<SubscriberId>,
        priority: i64,
        now: UnixTime,
        expires_at: UnixTime,
    ) -> Result<OutboxId> {
        tx.query_row(
            "INSERT INTO outbox (kind, priority, subscriber_id, domain, sender, recipient_sealed, message_id,
                                 content_sealed, next_attempt_at, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10) RETURNING id",
            params![
                mail.kind.as_str(),
                priority,
                subscriber.map_or(0, SubscriberId::get),
                mail.to.domain(),
                mail.sender,
                self.sealer.seal_address(&mail.to)?,
                mail.message_id,
                self.sealer.seal(b"content", &mail.bytes)?,
                now,
                expires_at,
            ],
            |r| r.get(0),
        )
    }

    /// Records an event in the audit log.
    pub fn audit(&self, now: UnixTime, actor: &str, action: &str, detail: &str) -> Result<()> {
        let conn = self.conn()?;
        audit(&conn, now, actor, action, detail)
    }

    /// Looks a subscriber up by address (through the blind index).
    pub fn find_subscriber(&self, addr: &EmailAddress) -> Result<Option<Subscriber>> {
        let index = self.sealer.index(addr);
        let conn = self.conn()?;
        let row: Option<(SubscriberId, Vec<u8>, SubscriberStatus)> = conn
            .query_row("SELECT id, addr_sealed, status FROM subscribers WHERE addr_index = ?1", params![&index[..]], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some((id, sealed, status)) = row else { return Ok(None) };
        let districts = districts_of(&conn, id)?;
        Ok(Some(Subscriber { id, address: self.sealer.open_address(&sealed)?, status, districts }))
    }

    /// The nonce of the subscriber's footer links (`mamoru_core::links`);
    /// `None` for an unknown or never-confirmed subscriber.
    pub fn link_nonce(&self, subscriber: SubscriberId) -> Result<Option<Nonce>> {
        let conn = self.conn()?;
        let n: Option<Vec<u8>> = conn
            .query_row(
                "SELECT link_nonce FROM subscribers WHERE id = ?1 AND link_nonce <> ?2",
                params![subscriber, &NO_NONCE[..]],
                |r| r.get(0),
            )
            .optional()?;
        Ok(n.and_then(|v| v.try_into().ok()))
    }

    /// Deletes registrations that were never confirmed before `before`, with
    /// their tokens and queued mail.
    pub fn purge_unconfirmed(&self, before: UnixTime) -> Result<usize> {
        let tx = self.begin()?;
        let stale = "SELECT id FROM subscribers WHERE status = 'pending' AND created_at < ?1";
        tx.execute(&format!("DELETE FROM tokens WHERE subject_id IN ({stale})"), params![before])?;
        // Alerts go to active subscribers only, so a registration never
        // confirmed has no copy of one (`alert_id = 0` names the index).
        tx.execute(&format!("DELETE FROM outbox WHERE state IN ('queued', 'sending') AND alert_id = 0 AND subscriber_id IN ({stale})"), params![before])?;
        let n = tx.execute("DELETE FROM subscribers WHERE status = 'pending' AND created_at < ?1", params![before])?;
        tx.commit()?;
        Ok(n)
    }

    /// Claims up to `limit` due outbox rows for `lease_secs`. Rows whose lease
    /// ran out (a relay died holding them) are due again. Rows past their
    /// expiry are marked expired instead of being returned.
    pub fn claim_due(&self, now: UnixTime, lease_secs: i64, limit: usize) -> Result<Vec<QueuedMail>> {
        let tx = self.begin()?;
        relay::expire(&tx, now)?;
        let mut rows: Vec<relay::ClaimedRow> = tx.query_map(
            &format!(
                "UPDATE outbox SET state = 'sending', lease_until = ?1, attempts = attempts + 1
                 WHERE id IN (SELECT id FROM outbox
                              WHERE (state = 'queued' AND next_attempt_at <= ?2) OR (state = 'sending' AND lease_until <= ?2)
                              ORDER BY priority DESC, id LIMIT ?3{})
                 RETURNING id, kind, sender, recipient_sealed, message_id, content_sealed, attempts, alert_id, subscriber_id",
                db::skip_locked(&tx)
            ),
            params![now + lease_secs, now, limit as i64],
            relay::claimed_row,
        )?;
        let room = limit.saturating_sub(rows.len());
        if room > 0 {
            rows.extend(queue::claim(&tx, now, now + lease_secs, room, &relay::DomainFilter::Except(vec![]))?);
        }
        let rows = relay::attach_alerts(&tx, rows, now)?;
        tx.commit()?;
        self.open_claimed(rows)
    }

    /// The row was accepted by the next hop.
    pub fn mark_sent(&self, id: OutboxId, now: UnixTime) -> Result<()> {
        self.conn()?.execute(
            "UPDATE outbox SET state = 'sent', done_at = ?1, last_error = '', lease_until = 0 WHERE id = ?2",
            params![now, id],
        )?;
        Ok(())
    }

    /// Delivery failed transiently: try again at `next_attempt_at`.
    pub fn mark_retry(&self, id: OutboxId, next_attempt_at: UnixTime, reason: &str) -> Result<()> {
        self.conn()?.execute(
            "UPDATE outbox SET state = 'queued', next_attempt_at = ?1, last_error = ?2, lease_until = 0 WHERE id = ?3",
            params![next_attempt_at, reason, id],
        )?;
        Ok(())
    }

    pub fn outbox_counts(&self) -> Result<OutboxCounts> {
        let conn = self.conn()?;
        let mut c = OutboxCounts::default();
        let rows = conn.query_map("SELECT state, COUNT(*) FROM outbox GROUP BY state", params![], |r| {
            Ok((r.get::<OutboxState>(0)?, r.get::<i64>(1)?))
        })?;
        for (state, n) in rows {
            *match state {
                OutboxState::Queued => &mut c.queued,
                OutboxState::Sending => &mut c.sending,
                OutboxState::Sent => &mut c.sent,
                OutboxState::Failed => &mut c.failed,
                OutboxState::Expired => &mut c.expired,
            } = n;
        }
        // The copies of alerts no relay has claimed yet are queued mail too.
        c.queued += conn.query_row("SELECT COUNT(*) FROM alert_queue", params![], |r| r.get::<i64>(0))?;
        Ok(c)
    }
}

/// Switches the database to WAL. On a brand-new file several processes may
/// race to do this (the pipe command and `mamoru serve` starting together),
/// and SQLite answers the loser SQLITE_BUSY at once, without consulting the
/// busy handler; so retry here, within the same busy timeout.
fn set_wal(conn: &Connection, busy_timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + busy_timeout;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL").map_err(StoreError::from) {
            Err(StoreError::Busy) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// Marks a one-time token used, if it is one of `purpose` for the claimed
/// subject, unused and unexpired; inside the transaction of the change it
/// authorises, so the change and the consumption commit together or not at all.
/// Returns whether it was consumed.
fn consume_token(tx: &Conn<'_>, claims: &Claims, purpose: Purpose, now: UnixTime) -> Result<bool> {
    let n = tx.execute(
        "UPDATE tokens SET used_at = ?1
         WHERE nonce = ?2 AND purpose = ?3 AND subject_id = ?4 AND used_at = 0 AND expires_at > ?1",
        params![now, &claims.nonce[..], purpose.as_str(), claims.subject as i64],
    )?;
    Ok(n == 1)
}

fn audit(conn: &Conn<'_>, now: UnixTime, actor: &str, action: &str, detail: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
        params![now, actor, action, detail],
    )?;
    Ok(())
}

fn districts_of(conn: &Conn<'_>, subscriber: SubscriberId) -> Result<Vec<u32>> {
    conn.query_map(
        "SELECT district_id FROM subscriber_districts WHERE subscriber_id = ?1 ORDER BY district_id",
        params![subscriber],
        |r| r.get(0),
    )
}

/// Scope (and keyed-hash context) of the per-mailbox limits. Rows of the
/// scope `register-addr`, keyed by the address's blind index as typed, are
/// from older versions: windows that simply run out (and go with a deleted
/// registration).
pub(crate) const MAILBOX_SCOPE: &str = "register-mailbox";

/// Takes one slot from each registration limit, or says which limit is
/// exhausted. Each limit is one upsert whose `WHERE` refuses the update when
/// the limit applies, so check and increment are a single atomic statement.
/// The caller's transaction rolls back every increment if any limit refuses.
///
/// Order: the PC form's client budget first (a flooding client spends
/// nothing else), then the mailbox's cooldown and daily cap, then the
/// channel's global budget (`register-global-mail` or `register-global-web`).
fn take_registration_slot(
    tx: &Conn<'_>,
    mailbox: &BlindIndex,
    channel: &Channel,
    now: UnixTime,
    limits: &RegistrationLimits,
) -> Result<Option<Limited>> {
    let hour = now.div_euclid(3600);
    if let Channel::Web { client } = channel {
        if !take_hourly(tx, "register-web-client", client, hour, now, limits.web_client_hourly_cap)? {
            return Ok(Some(Limited::ClientHourlyCap));
        }
    }
    if let Some(limited) = take_mailbox_slot(tx, MAILBOX_SCOPE, mailbox, now, limits.cooldown_secs, limits.daily_cap)? {
        return Ok(Some(limited));
    }
    let (scope, cap) = match channel {
        Channel::Mail => ("register-global-mail", limits.global_hourly_cap),
        Channel::Web { .. } => ("register-global-web", limits.web_global_hourly_cap),
    };
    if !take_hourly(tx, scope, &[], hour, now, cap)? {
        return Ok(Some(Limited::GlobalHourlyCap));
    }
    Ok(None)
}

/// One slot of a mailbox's limits under (`scope`, `key`): at most one per
/// `cooldown` seconds and `daily_cap` per calendar day in Japan (UTC+9),
/// where parents are. One upsert: check and increment are one statement.
pub(crate) fn take_mailbox_slot(
    tx: &Conn<'_>,
    scope: &str,
    mailbox: &BlindIndex,
    now: UnixTime,
    cooldown: i64,
    daily_cap: i64,
) -> Result<Option<Limited>> {
    let day = (now + 9 * 3600).div_euclid(86_400);
    let per_mailbox = tx.execute(
        "INSERT INTO rate_limits (scope, key, window_start, count, last_at) VALUES (?6, ?1, ?2, 1, ?3)
         ON CONFLICT (scope, key) DO UPDATE SET
             count = CASE WHEN rate_limits.window_start = excluded.window_start THEN rate_limits.count + 1 ELSE 1 END,
             window_start = excluded.window_start,
             last_at = excluded.last_at
         WHERE rate_limits.last_at <= ?3 - ?4 AND (rate_limits.window_start <> excluded.window_start OR rate_limits.count < ?5)",
        params![&mailbox[..], day, now, cooldown, daily_cap, scope],
    )?;
    if per_mailbox > 0 {
        return Ok(None);
    }
    let last_at: i64 =
        tx.query_row("SELECT last_at FROM rate_limits WHERE scope = ?1 AND key = ?2", params![scope, &mailbox[..]], |r| r.get(0))?;
    Ok(Some(if last_at > now - cooldown { Limited::Cooldown } else { Limited::DailyCap }))
}

/// One slot of an hourly budget of `cap` under (`scope`, `key`), or `false`.
pub(crate) fn take_hourly(tx: &Conn<'_>, scope: &str, key: &[u8], hour: i64, now: UnixTime, cap: i64) -> Result<bool> {
    let taken = tx.execute(
        "INSERT INTO rate_limits (scope, key, window_start, count, last_at) VALUES (?1, ?2, ?3, 1, ?4)
         ON CONFLICT (scope, key) DO UPDATE SET
             count = CASE WHEN rate_limits.window_start = excluded.window_start THEN rate_limits.count + 1 ELSE 1 END,
             window_start = excluded.window_start,
             last_at = excluded.last_at
         WHERE rate_limits.window_start <> excluded.window_start OR rate_limits.count < ?5",
        params![scope, key, hour, now, cap],
    )?;
    Ok(taken > 0)
}

#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "pgtest"))]
pub mod pgtest;
