//! The relay: drains the SQLite outbox to the carriers, as fast as each
//! carrier allows and no faster, without losing a message.
//!
//! [`run`] starts one [`pool`] per carrier (`[carriers.NAME]`): a feeder
//! claims that pool's due rows (with a lease) into a small bounded queue, and
//! up to `max_connections` workers, each with its own connection, take
//! messages from it as the pool's [`shaper::Shaper`] admits them. Outcomes go
//! to one committer, which writes them in groups (one transaction per group)
//! right after the replies. When nothing is due a feeder waits for a wake-up
//! (mail queued in this process), the poll interval (mail queued by other
//! processes, such as the pipe command) or the next retry time.
//!
//! Layout:
//! - [`shaper`]: token bucket plus adaptive pause and recovery, pure.
//! - [`pool`]: the tasks of one pool: feeder, workers; and the committer.
//! - [`dkim`]: DKIM signatures (ed25519, and rsa-sha256 with an operator key).
//! - [`backoff`]: the retry schedule, a pure function of the attempt count.
//! - [`charset`]: a pool's `charset = "iso-2022-jp"`, for old handsets.
//! - [`outcome`]: [`DeliveryOutcome`] and the scrubbing of failure reasons.
//! - [`file`]: the `file` transport, atomic `.eml` files under the data dir.
//! - [`smtp`]: the `smtp://HOST:PORT` transport over lettre's connection API.
//! - [`splice`]: alert rows are queued without content; each subscriber's
//!   copy is rendered right after the claim ([`RenderAlert`]).
//!
//! Invariants:
//! - One pool never waits for another: each claims only its own domains and
//!   has its own queue, connections and shaper.
//! - A pool never has more than `max_connections` sessions open: each worker
//!   owns at most one.
//! - An SMTP transaction is never cut half way: shutdown is only looked at
//!   between messages. Claimed rows not yet tried go back to the queue.
//! - Delivery is at least once: a row is marked sent only after the next hop
//!   accepted it; if that commit fails, the lease brings the row back.
//! - Logs carry the outbox id and the recipient's domain, never the address
//!   or the content; reasons have the address masked before they are logged
//!   or stored.

pub mod backoff;
pub mod charset;
pub mod dkim;
pub mod file;
pub mod outcome;
pub mod pool;
pub mod shaper;
pub mod smtp;
pub mod splice;

use std::path::PathBuf;
use std::collections::BTreeMap;
use std::sync::Arc;

use mamoru_core::carriers::CarrierConfig;
use mamoru_core::config::{RelayConfig, Transport};
use mamoru_core::token::TokenKey;
use mamoru_store::{QueuedMail, Store, StoreError};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use outcome::DeliveryOutcome;
pub use splice::RenderAlert;

use crate::file::FileHop;
use crate::smtp::SmtpHop;


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
    /// Renders a subscriber's copy of an alert (alert rows are queued
    /// without content). Without it, alert rows fail.
    pub render_alert: Option<RenderAlert>,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot create the mail directory {path}: {source}")]
    MailDir { path: PathBuf, source: std::io::Error },
}

/// Where one worker's messages go: the configured transport with its state
/// (one open SMTP connection).
pub enum NextHop {
    File(FileHop),
    Smtp(SmtpHop),
}

impl NextHop {
    pub fn new(
        transport: &Transport,
        data_dir: &std::path::Path,
        hostname: &str,
        messages_per_connection: u32,
    ) -> Result<Self, RelayError> {
        Ok(match transport {
            Transport::File => NextHop::File(
                FileHop::new(data_dir)
                    .map_err(|source| RelayError::MailDir { path: data_dir.join(file::MAIL_DIR), source })?,
            ),
            Transport::Smtp { host, port } => NextHop::Smtp(
                SmtpHop::new(host, *port, hostname).with_messages_per_connection(messages_per_connection as usize),
            ),
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
    NextHop::new(&relay.transport, &relay.data_dir, &relay.hostname, 1)?;
    tracing::info!(transport = %describe(&relay.transport), pools = relay.pools.len(), "relay started");
    pool::run_pools(relay, wake, shutdown).await;
    tracing::info!("relay stopped");
    Ok(())
}

fn describe(transport: &Transport) -> String {
    match transport {
        Transport::File => "file".into(),
        Transport::Smtp { host, port } => format!("smtp://{host}:{port}"),
    }
}

#[derive(Debug, thiserror::Error)]
enum BlockingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
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
