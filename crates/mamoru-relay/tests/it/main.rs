//! Integration tests of the relay against real peers on loopback: a real
//! [`Store`] in a temp dir, the real file system, and Postfix's `smtp-sink`
//! (Debian package `postfix`) as the SMTP server. No SMTP mocks.
//!
//! Waiting is always "poll the store or the sink until a deadline", never a
//! fixed sleep.

mod alerts;
mod carriers;
mod dkim;
mod file;
mod smtp;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mamoru_core::config::{RelayConfig, Transport};
use mamoru_core::mail::{self, MailKind, OutgoingMail};
use mamoru_core::{Config, EmailAddress, OutboxId, UnixTime};
use mamoru_relay::{Relay, RelayError};
use mamoru_store::{RegistrationLimits, RegistrationRequest, Store};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const DOMAIN: &str = "mamoru.test";
pub const SENDER: &str = "ans@mamoru.test";

/// A data dir with keys and a store.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: Arc<Store>,
    cfg: Config,
}

/// A row queued by [`Env::queue`].
#[derive(Debug, Clone)]
pub struct Queued {
    pub id: OutboxId,
    pub message_id: String,
    pub content: Vec<u8>,
}

/// An outbox row as the database holds it. The store has no accessor for
/// these columns, so the test reads them directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: UnixTime,
    pub last_error: String,
    pub done_at: UnixTime,
}

const NO_LIMITS: RegistrationLimits = RegistrationLimits {
    cooldown_secs: 0,
    daily_cap: 1000,
    global_hourly_cap: 100_000,
    web_global_hourly_cap: 100_000,
    web_client_hourly_cap: 100_000,
};

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = mamoru_store::keys::load_or_create(dir.path()).expect("keys");
        let store = Arc::new(Store::open(dir.path(), &keys, Duration::from_secs(5)).expect("store"));
        // One pool with one connection: these tests look at a single
        // session. The carrier tests configure their own pools.
        let mut single = mamoru_core::carriers::default_carriers()
            .remove(mamoru_core::carriers::DEFAULT_POOL)
            .expect("built-in default pool");
        single.max_connections = 1;
        let carriers = [(mamoru_core::carriers::DEFAULT_POOL.to_string(), single)].into_iter().collect();
        let cfg = Config { domain: DOMAIN.into(), carriers, ..Config::default() };
        Env { dir, store, cfg }
    }

    /// Uses these carrier pools from now on.
    pub fn set_pools(&mut self, pools: std::collections::BTreeMap<String, mamoru_core::carriers::CarrierConfig>) {
        self.cfg.carriers = pools;
    }

    /// Queues `content` for `to` as the store's registration flow does.
    pub fn queue(&self, to: &str, content: impl FnOnce(&EmailAddress, &str) -> Vec<u8>) -> Queued {
        self.queue_as(to, &unique_message_id(), content)
    }

    /// Like [`Env::queue`] with a given Message-ID.
    pub fn queue_as(&self, to: &str, message_id: &str, content: impl FnOnce(&EmailAddress, &str) -> Vec<u8>) -> Queued {
        let to = EmailAddress::parse(to).expect("test address");
        let message_id = message_id.to_string();
        let now = mamoru_core::now();
        let bytes = content(&to, &message_id);
        let r = self
            .store
            .request_registration(&to, now, &NO_LIMITS, now + 3600, |_, _| {
                OutgoingMail {
                    kind: MailKind::RegistrationReceived,
                    sender: SENDER.into(),
                    to: to.clone(),
                    message_id: message_id.clone(),
                    bytes: bytes.clone(),
                }
            })
            .expect("queue");
        let RegistrationRequest::Queued { outbox, .. } = r else { panic!("not queued: {r:?}") };
        Queued { id: outbox, message_id, content: bytes }
    }

    /// Queues a hand-written message that exercises the data phase: 8-bit
    /// text, a lone dot line (would end DATA if not stuffed) and lines that
    /// start with dots.
    pub fn queue_tricky(&self, to: &str) -> Queued {
        self.queue(to, tricky_message)
    }

    /// Queues a 登録受付 mail as mamoru renders it.
    pub fn queue_rendered(&self, to: &str) -> Queued {
        let cfg = self.cfg.clone();
        self.queue(to, move |to, mid| {
            mail::registration_received(&cfg, to, "TOKEN", mamoru_core::now(), mid.to_string()).bytes
        })
    }

    pub fn row(&self, id: OutboxId) -> Row {
        let conn = rusqlite::Connection::open_with_flags(self.store.path(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open db read-only");
        conn.query_row(
            "SELECT state, attempts, next_attempt_at, last_error, done_at FROM outbox WHERE id = ?1",
            [id],
            |r| {
                Ok(Row {
                    state: r.get(0)?,
                    attempts: r.get(1)?,
                    next_attempt_at: r.get(2)?,
                    last_error: r.get(3)?,
                    done_at: r.get(4)?,
                })
            },
        )
        .expect("outbox row")
    }

    /// Waits until row `id` is in `state` and returns it.
    pub async fn wait_state(&self, id: OutboxId, state: &str, limit: Duration) -> Row {
        wait_for(&format!("row {id} to be {state}"), limit, || {
            let row = self.row(id);
            if row.state == state { Ok(row) } else { Err(format!("last seen: {row:?}")) }
        })
        .await
    }

    /// The use cases over this store (the relay renders alert copies with them).
    pub fn app(&self) -> Arc<mamoru_app::App> {
        let key = mamoru_store::keys::load_or_create(self.dir.path()).expect("keys").token_key();
        Arc::new(mamoru_app::App::new(Arc::new(self.cfg.clone()), Arc::clone(&self.store), key))
    }

    pub fn relay(&self, transport: Transport, settings: RelayConfig) -> Running {
        let relay = Arc::new(Relay {
            store: Arc::clone(&self.store),
            transport,
            data_dir: self.dir.path().to_path_buf(),
            settings,
            hostname: DOMAIN.into(),
            pools: self.cfg.carriers.clone(),
            verp_key: None,
            dkim: None,
            alerts: self.app(),
        });
        let metrics = Arc::clone(relay.alerts.metrics());
        let wake = Arc::new(Notify::new());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(mamoru_relay::run(relay, Arc::clone(&wake), shutdown.clone()));
        Running { wake, shutdown, task, metrics }
    }
}

/// Fast retries and polling, so the retry tests finish in seconds.
pub fn fast(retry_base_secs: i64) -> RelayConfig {
    RelayConfig { retry_base_secs, retry_max_secs: 4, poll_interval_ms: 20, lease_secs: 60, ..RelayConfig::default() }
}

pub fn smtp(port: u16) -> Transport {
    Transport::Smtp { host: "127.0.0.1".into(), port }
}

pub fn unique_message_id() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}.{}.it@{DOMAIN}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub fn tricky_message(to: &EmailAddress, mid: &str) -> Vec<u8> {
    format!(
        "From: =?UTF-8?B?5a6I44KL44ON44OD44OI?= <{SENDER}>\r\n\
         To: {to}\r\n\
         Subject: test\r\n\
         Message-ID: <{mid}>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         不審者情報です。\r\n\
         .\r\n\
         ..two dots\r\n\
         .one dot\r\n\
         \r\n\
         last line\r\n"
    )
    .into_bytes()
}

/// A relay task started by [`Env::relay`].
pub struct Running {
    pub wake: Arc<Notify>,
    pub shutdown: CancellationToken,
    task: JoinHandle<Result<(), RelayError>>,
    /// What the relay recorded.
    pub metrics: Arc<mamoru_app::metrics::Metrics>,
}

/// The value of one sample line of the metrics' text (`name{labels}`), 0
/// when the series does not exist.
pub fn sample(metrics: &mamoru_app::metrics::Metrics, series: &str) -> f64 {
    let text = metrics.encode();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.parse().expect("a number"))
}

impl Running {
    /// Cancels the relay and waits for `run` to return, at most `limit`.
    pub async fn stop(self, limit: Duration) -> Duration {
        let started = Instant::now();
        self.shutdown.cancel();
        match tokio::time::timeout(limit, self.task).await {
            Ok(Ok(Ok(()))) => started.elapsed(),
            Ok(Ok(Err(e))) => panic!("relay failed: {e}"),
            Ok(Err(e)) => panic!("relay task panicked: {e}"),
            Err(_) => panic!("relay did not stop within {limit:?}"),
        }
    }
}

/// Polls `f` until it returns `Ok`; at the deadline, fails with `what` and
/// the last `Err` (what was seen instead).
pub async fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let seen = match f() {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}; {seen}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port that was free a moment ago, for peers that cannot bind port 0
/// themselves. Drawn at random below the kernel's ephemeral range
/// (32768–60999), so no port-0 listener and no outgoing connection of a
/// concurrently running test can take it before the peer binds it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher as _, Hasher as _};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Is anything listening on 127.0.0.1:`port`? Read from /proc so the check
/// does not open an SMTP session (the sink counts sessions).
fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    fs::read_to_string("/proc/net/tcp")
        .map(|t| {
            t.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1] == want && f[3] == "0A"
            })
        })
        .unwrap_or(false)
}

const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

/// Postfix's `smtp-sink` on 127.0.0.1:`port`, dumping each transaction to a
/// file and printing session counters (`-c`).
pub struct Sink {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// One transaction as `smtp-sink -d` dumped it.
#[derive(Debug, Clone)]
pub struct Dump {
    /// The sink's own `X-...` lines: envelope and EHLO as received.
    pub envelope: Vec<String>,
    /// The message as received, after the sink's Received header. The sink
    /// writes LF line ends and removes the dot-stuffing.
    pub message: Vec<u8>,
}

/// What `smtp-sink` writes for `content`: LF line ends plus an empty line.
pub fn as_dumped(content: &[u8]) -> Vec<u8> {
    let mut out = String::from_utf8_lossy(content).replace("\r\n", "\n").into_bytes();
    out.push(b'\n');
    out
}

impl Sink {
    pub async fn start(port: u16, extra: &[&str]) -> Sink {
        assert!(Path::new(SMTP_SINK).exists(), "{SMTP_SINK} is missing: install Debian's postfix package");
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("dump")).expect("dump dir");
        let out = fs::File::create(dir.path().join("counters")).expect("counters file");
        let mut cmd = Command::new(SMTP_SINK);
        // As root the sink must be told which user to switch to.
        if fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false) {
            cmd.args(["-u", "root"]);
        }
        cmd.arg("-c").args(extra);
        cmd.arg("-d").arg(dir.path().join("dump/%M."));
        cmd.arg(format!("127.0.0.1:{port}")).arg("100");
        let child = cmd.stdin(Stdio::null()).stdout(out).spawn().expect("start smtp-sink");
        let mut sink = Sink { child, port, dir };
        wait_for(&format!("smtp-sink to listen on port {port}"), Duration::from_secs(10), || {
            if let Ok(Some(status)) = sink.child.try_wait() {
                panic!("smtp-sink exited at start: {status}");
            }
            if listening(port) { Ok(()) } else { Err("not listening yet".into()) }
        })
        .await;
        sink
    }

    /// Kills the sink (our own child, by its pid) and waits for it.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn dump_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(self.dir.path().join("dump"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    /// All dumps that hold a message (rejected transactions leave a file
    /// with envelope lines only).
    pub fn dumps(&self) -> Vec<Dump> {
        self.dump_files().iter().filter_map(|p| parse_dump(&fs::read(p).ok()?)).collect()
    }

    /// Waits for the dump of the message with `message_id`, complete.
    pub async fn wait_dump(&self, message_id: &str, expected: &[u8]) -> Dump {
        let needle = format!("Message-ID: <{message_id}>");
        wait_for(&format!("the sink to hold {message_id}"), Duration::from_secs(10), || {
            let dumps = self.dumps();
            dumps
                .iter()
                .find(|d| String::from_utf8_lossy(&d.message).contains(&needle) && d.message.len() >= expected.len())
                .cloned()
                .ok_or_else(|| format!("dumps: {dumps:?}"))
        })
        .await
    }

    /// The last `sess=N quit=N mesg=N` record (ended by CR or LF).
    pub fn counters(&self) -> Option<(u32, u32, u32)> {
        let text = fs::read_to_string(self.dir.path().join("counters")).ok()?;
        let line = text.split(['\r', '\n']).rev().find(|l| l.starts_with("sess="))?;
        let mut n = line.split_whitespace().filter_map(|kv| kv.split_once('=')?.1.parse().ok());
        Some((n.next()?, n.next()?, n.next()?))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.kill();
    }
}

fn parse_dump(bytes: &[u8]) -> Option<Dump> {
    let text = String::from_utf8_lossy(bytes);
    let start = text.find("\nReceived: ")? + 1;
    let envelope = text[..start].lines().map(str::to_string).collect();
    // The Received header is three lines: "Received: from", "\tby", "\tdate".
    let mut rest = &text[start..];
    for _ in 0..3 {
        rest = &rest[rest.find('\n')? + 1..];
    }
    Some(Dump { envelope, message: rest.as_bytes().to_vec() })
}
