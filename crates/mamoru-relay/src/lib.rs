//! The relay: drains the SQLite outbox to the carriers, as fast as each
//! carrier allows and no faster, without losing a message. [`run`] starts
//! one [`pool`] per carrier (`[carriers.NAME]`). How pools, sessions,
//! outcomes, the learning of each carrier's limits and leases fit together,
//! and the invariants they keep, is told once in docs/ARCHITECTURE.md
//! (`mamoru-relay`).
//!
//! Layout:
//! - [`pool`]: the tasks: per pool a feeder and its workers; the committer
//!   and the supervisor.
//! - [`shaper`]: the learned pace and connection cap of one pool, pure.
//! - [`outcome`]: [`DeliveryOutcome`], reply classification by codes, and
//!   the scrubbing of failure reasons.
//! - [`smtp`]: the `smtp://HOST:PORT` and `mx` transports over lettre's
//!   connection API (STARTTLS, AUTH).
//! - [`mx`]: MX lookups and the order of hosts to try (hickory).
//! - [`file`]: the `file` transport, atomic `.eml` files under the data dir.
//! - [`backoff`]: the retry schedule, a pure function of the attempt count.
//! - [`splice`]: alert copies rendered right after the claim.
//! - [`dkim`]: DKIM signatures (ed25519, and rsa-sha256 with an operator key).
//! - [`charset`]: a pool's `charset = "iso-2022-jp"`, for old handsets.

pub mod backoff;
pub mod charset;
pub mod dkim;
pub mod file;
pub mod mx;
pub mod outcome;
pub mod pool;
pub mod shaper;
pub mod smtp;
pub mod splice;

use std::path::PathBuf;
use std::collections::BTreeMap;
use std::sync::Arc;

use mamoru_core::carriers::CarrierConfig;
use mamoru_core::config::{RelayConfig, SmtpTls, Transport};
use mamoru_core::token::TokenKey;
use mamoru_store::{QueuedMail, Store, StoreError};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use outcome::DeliveryOutcome;

use crate::file::FileHop;
use crate::smtp::{SmtpHop, SmtpSecurity};


/// Everything the relay needs; built by the binary from the configuration.
pub struct Relay {
    pub store: Arc<Store>,
    pub transport: Transport,
    /// The file transport writes under `data_dir/mail/`.
    pub data_dir: PathBuf,
    pub settings: RelayConfig,
    /// The EHLO name: the mail domain.
    pub hostname: String,
    /// The carrier pools (`Config::carriers`).
    pub pools: BTreeMap<String, CarrierConfig>,
    /// With a key, the envelope sender of each message becomes its signed
    /// VERP address `bounce+ID-TAG@hostname`, so bounces name the row.
    pub verp_key: Option<TokenKey>,
    /// With keys, every message is DKIM-signed right before delivery.
    pub dkim: Option<dkim::Dkim>,
    /// Renders each subscriber's copy of an alert (alert rows are queued
    /// without content) as it is sent.
    pub alerts: Arc<mamoru_app::App>,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot create the mail directory {path}: {source}")]
    MailDir { path: PathBuf, source: std::io::Error },
    #[error("relay.{key}: {reason}")]
    Setup { key: &'static str, reason: String },
}

/// What every worker's [`NextHop`] shares, loaded once when the relay
/// starts: the file transport's directory, the EHLO name, the smarthost's
/// TLS roots and credentials, and the DNS resolver (whose cache all
/// workers share).
pub struct Hops {
    pub data_dir: PathBuf,
    pub hostname: String,
    pub smtp: SmtpSecurity,
    /// The `mx` transport's resolver, when some pool uses it.
    pub resolver: Option<Arc<mx::DnsResolver>>,
    pub mx_port: u16,
}

impl Hops {
    /// Reads the CA and password files and sets up the resolver (when a
    /// pool's route or the transport is `mx`).
    pub fn load(relay: &Relay) -> Result<Self, RelayError> {
        let s = &relay.settings;
        let setup = |key, reason: String| RelayError::Setup { key, reason };
        let tls = s.smtp_tls;
        let ca = if s.smtp_tls_ca_file.is_empty() || tls != SmtpTls::Required {
            None
        } else {
            let pem = std::fs::read(&s.smtp_tls_ca_file).map_err(|e| setup("smtp_tls_ca_file", format!("{}: {e}", s.smtp_tls_ca_file)))?;
            Some(
                lettre::transport::smtp::client::Certificate::from_pem(&pem)
                    .map_err(|e| setup("smtp_tls_ca_file", format!("{}: {e}", s.smtp_tls_ca_file)))?,
            )
        };
        let credentials = if s.smtp_username.is_empty() {
            None
        } else {
            let path = &s.smtp_password_file;
            let text = std::fs::read_to_string(path).map_err(|e| setup("smtp_password_file", format!("{path}: {e}")))?;
            // One line; the final newline an editor adds is not part of it.
            let password = text.strip_suffix('\n').map(|p| p.strip_suffix('\r').unwrap_or(p)).unwrap_or(&text);
            if password.is_empty() {
                return Err(setup("smtp_password_file", format!("{path} is empty")));
            }
            Some(lettre::transport::smtp::authentication::Credentials::new(s.smtp_username.clone(), password.to_string()))
        };
        let uses_mx = relay.transport == Transport::Mx || relay.pools.values().any(|p| p.route == Some(Transport::Mx));
        let resolver = if uses_mx {
            Some(Arc::new(mx::DnsResolver::new(s.resolver).map_err(|e| setup("resolver", e))?))
        } else {
            None
        };
        Ok(Self {
            data_dir: relay.data_dir.clone(),
            hostname: relay.hostname.clone(),
            smtp: SmtpSecurity { tls, ca, credentials },
            resolver,
            mx_port: s.mx_port,
        })
    }
}

/// Where one worker's messages go: the configured transport with its state
/// (one open SMTP connection).
pub enum NextHop {
    File(FileHop),
    /// Boxed: a session with its TLS state is large next to a file hop.
    Smtp(Box<SmtpHop>),
}

impl NextHop {
    pub fn new(transport: &Transport, hops: &Hops, messages_per_connection: u32) -> Result<Self, RelayError> {
        let per_connection = messages_per_connection as usize;
        Ok(match transport {
            Transport::File => NextHop::File(
                FileHop::new(&hops.data_dir)
                    .map_err(|source| RelayError::MailDir { path: hops.data_dir.join(file::MAIL_DIR), source })?,
            ),
            Transport::Smtp { host, port } => NextHop::Smtp(Box::new(
                SmtpHop::smarthost(host, *port, transport.is_loopback(), &hops.hostname, &hops.smtp)
                    .map_err(|reason| RelayError::Setup { key: "smtp_tls", reason })?
                    .with_messages_per_connection(per_connection),
            )),
            Transport::Mx => {
                let resolver = hops.resolver.clone().ok_or_else(|| RelayError::Setup {
                    key: "transport",
                    reason: "the mx transport has no resolver".into(),
                })?;
                NextHop::Smtp(Box::new(
                    SmtpHop::mx(resolver, hops.mx_port, &hops.hostname).with_messages_per_connection(per_connection),
                ))
            }
        })
    }

    pub async fn deliver(&mut self, mail: &QueuedMail) -> DeliveryOutcome {
        match self {
            NextHop::File(hop) => hop.deliver(mail).await,
            NextHop::Smtp(hop) => hop.deliver(mail).await,
        }
    }

    /// Is a connection open (counts against the pool's cap)?
    pub fn is_connected(&self) -> bool {
        matches!(self, NextHop::Smtp(hop) if hop.is_connected())
    }

    /// Releases idle resources (the SMTP session) while nothing is due.
    pub async fn close(&mut self) {
        if let NextHop::Smtp(hop) = self {
            hop.close().await;
        }
    }
}

/// Drains the outbox until `shutdown` is cancelled, then finishes the
/// messages in flight, returns untried rows to the queue, commits and
/// returns. Store errors are logged and retried; only a setup failure (the
/// mail directory cannot be created) ends the relay with an error.
pub async fn run(relay: Arc<Relay>, wake: Arc<Notify>, shutdown: CancellationToken) -> Result<(), RelayError> {
    // Fail early on a setup error rather than in every worker.
    let hops = Arc::new(Hops::load(&relay)?);
    NextHop::new(&relay.transport, &hops, 1)?;
    tracing::info!(transport = %relay.transport, pools = relay.pools.len(), "relay started");
    // Rows queued by another node (PostgreSQL) wake this relay at once.
    let heard = Arc::clone(&wake);
    match relay.store.on_queued(move || heard.notify_one()) {
        Ok(listening) => tracing::debug!(listening, "wake-ups from other nodes"),
        Err(e) => tracing::warn!(error = %e, "cannot listen for mail queued by other nodes; polling only"),
    }
    pool::run_pools(relay, hops, wake, shutdown).await;
    tracing::info!("relay stopped");
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum BlockingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl BlockingError {
    /// The database stayed locked past the busy timeout.
    fn is_busy(&self) -> bool {
        matches!(self, BlockingError::Store(StoreError::Busy))
    }
}

/// Runs a store call on the blocking pool: rusqlite must not block the reactor.
async fn blocking<T, F>(store: &Arc<Store>, f: F) -> Result<T, BlockingError>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> mamoru_store::Result<T> + Send + 'static,
{
    let store = Arc::clone(store);
    Ok(tokio::task::spawn_blocking(move || f(&store)).await??)
}
