//! The relay: drains the SQLite outbox to the next hop, with retries.
//!
//! [`run`] loops: claim a batch of due rows (with a lease), hand each message
//! to the [`NextHop`], and commit the [`DeliveryOutcome`] right after the
//! reply — sent, deferred with exponential backoff and jitter, or failed.
//! When nothing is due it waits for a wake-up (mail queued in this process),
//! the poll interval (mail queued by other processes, such as the pipe
//! command) or the next retry time, whichever comes first.
//!
//! Layout:
//! - [`backoff`]: the retry schedule, a pure function of the attempt count.
//! - [`outcome`]: [`DeliveryOutcome`] and the scrubbing of failure reasons.
//! - [`file`]: the `file` transport, atomic `.eml` files under the data dir.
//! - [`smtp`]: the `smtp://HOST:PORT` transport over lettre's connection API.
//!
//! Invariants:
//! - An SMTP transaction is never cut half way: shutdown is only looked at
//!   between messages. Claimed rows not yet tried go back to the queue.
//! - Delivery is at least once: a row is marked sent only after the next hop
//!   accepted it; if that commit fails, the lease brings the row back.
//! - Logs carry the outbox id and the recipient's domain, never the address
//!   or the content; reasons have the address masked before they are logged
//!   or stored.

pub mod backoff;
pub mod file;
pub mod outcome;
pub mod smtp;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mamoru_core::UnixTime;
use mamoru_core::config::{RelayConfig, Transport};
use mamoru_store::{QueuedMail, Store, StoreError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use outcome::DeliveryOutcome;

use crate::file::FileHop;
use crate::smtp::SmtpHop;

/// Rows claimed per round trip to the store.
const BATCH: usize = 32;
/// Pause after a store error, doubling while errors continue.
const STORE_PAUSE_MIN: Duration = Duration::from_millis(100);
const STORE_PAUSE_MAX: Duration = Duration::from_secs(5);
/// Shortest idle wait, so a clock oddity cannot spin the loop.
const IDLE_MIN: Duration = Duration::from_millis(20);

/// Everything the relay needs; built by the binary from the configuration.
pub struct Relay {
    pub store: Arc<Store>,
    pub transport: Transport,
    /// The file transport writes under `data_dir/mail/`.
    pub data_dir: PathBuf,
    pub settings: RelayConfig,
    /// The EHLO name: the mail domain.
    pub hostname: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot create the mail directory {path}: {source}")]
    MailDir { path: PathBuf, source: std::io::Error },
}

/// Where messages go: the configured transport with its state (an open SMTP
/// connection). The later carrier-aware engine replaces this with pools.
pub enum NextHop {
    File(FileHop),
    Smtp(SmtpHop),
}

impl NextHop {
    pub fn new(transport: &Transport, data_dir: &std::path::Path, hostname: &str) -> Result<Self, RelayError> {
        Ok(match transport {
            Transport::File => NextHop::File(
                FileHop::new(data_dir)
                    .map_err(|source| RelayError::MailDir { path: data_dir.join(file::MAIL_DIR), source })?,
            ),
            Transport::Smtp { host, port } => NextHop::Smtp(SmtpHop::new(host, *port, hostname)),
        })
    }

    pub async fn deliver(&mut self, mail: &QueuedMail) -> DeliveryOutcome {
        match self {
            NextHop::File(hop) => hop.deliver(mail).await,
            NextHop::Smtp(hop) => hop.deliver(mail).await,
        }
    }

    /// Releases idle resources (the SMTP session) while nothing is due.
    pub async fn close(&mut self) {
        if let NextHop::Smtp(hop) = self {
            hop.close().await;
        }
    }
}

/// Drains the outbox until `shutdown` is cancelled, then finishes the message
/// in flight and returns. Store errors are logged and retried; only a setup
/// failure (the mail directory cannot be created) ends the relay with an error.
pub async fn run(relay: Arc<Relay>, wake: Arc<Notify>, shutdown: CancellationToken) -> Result<(), RelayError> {
    let mut hop = NextHop::new(&relay.transport, &relay.data_dir, &relay.hostname)?;
    tracing::info!(transport = %describe(&relay.transport), "relay started");
    let mut store_pause = STORE_PAUSE_MIN;
    while !shutdown.is_cancelled() {
        let now = mamoru_core::now();
        let lease = relay.settings.lease_secs;
        let batch = match blocking(&relay.store, move |s| s.claim_due(now, lease, BATCH)).await {
            Ok(batch) => {
                store_pause = STORE_PAUSE_MIN;
                batch
            }
            Err(e) => {
                tracing::warn!(error = %e, pause_ms = store_pause.as_millis() as u64, "cannot claim outbox rows");
                hop.close().await;
                tokio::select! {
                    _ = tokio::time::sleep(store_pause) => {}
                    _ = shutdown.cancelled() => {}
                }
                store_pause = (store_pause * 2).min(STORE_PAUSE_MAX);
                continue;
            }
        };
        if batch.is_empty() {
            hop.close().await;
            idle(&relay, &wake, &shutdown).await;
            continue;
        }
        let mut rows = batch.into_iter();
        while !shutdown.is_cancelled() {
            let Some(mail) = rows.next() else { break };
            deliver_one(&relay, &mut hop, mail).await;
        }
        release(&relay, rows.map(|m| m.id).collect()).await;
    }
    hop.close().await;
    tracing::info!("relay stopped");
    Ok(())
}

fn describe(transport: &Transport) -> String {
    match transport {
        Transport::File => "file".into(),
        Transport::Smtp { host, port } => format!("smtp://{host}:{port}"),
    }
}

async fn deliver_one(relay: &Relay, hop: &mut NextHop, mail: QueuedMail) {
    let span = tracing::info_span!(
        "deliver",
        outbox = mail.id,
        domain = mail.recipient.domain(),
        attempt = mail.attempts,
        message_id = %mail.message_id,
    );
    async move {
        let outcome = hop.deliver(&mail).await;
        let now = mamoru_core::now();
        let id = mail.id;
        let commit = match outcome {
            DeliveryOutcome::Sent => {
                tracing::info!("delivered");
                Commit::Sent
            }
            DeliveryOutcome::Retry { reason } => {
                let reason = outcome::scrub(&reason, &mail.recipient);
                let s = &relay.settings;
                let delay =
                    backoff::retry_delay(mail.attempts, s.retry_base_secs, s.retry_max_secs, backoff::random_jitter());
                tracing::warn!(%reason, retry_in_secs = delay, "delivery deferred");
                Commit::Retry { at: now.saturating_add(delay), reason }
            }
            DeliveryOutcome::Failed { reason } => {
                let reason = outcome::scrub(&reason, &mail.recipient);
                tracing::warn!(%reason, "delivery failed permanently");
                Commit::Failed { reason }
            }
        };
        if let Err(e) = blocking(&relay.store, move |s| commit.apply(s, id, now)).await {
            // The row stays leased; when the lease runs out it is tried again.
            // At least once: a sent message may go out twice, identically.
            tracing::error!(error = %e, "cannot record the delivery outcome");
        }
    }
    .instrument(span)
    .await
}

enum Commit {
    Sent,
    Retry { at: UnixTime, reason: String },
    Failed { reason: String },
}

impl Commit {
    fn apply(self, store: &Store, id: i64, now: UnixTime) -> mamoru_store::Result<()> {
        match self {
            Commit::Sent => store.mark_sent(id, now),
            Commit::Retry { at, reason } => store.mark_retry(id, at, &reason),
            Commit::Failed { reason } => store.mark_failed(id, now, &reason),
        }
    }
}

/// Puts claimed but untried rows back so they are due at once, instead of
/// waiting for their lease after a shutdown.
async fn release(relay: &Relay, ids: Vec<i64>) {
    if ids.is_empty() {
        return;
    }
    let n = ids.len();
    let now = mamoru_core::now();
    let result = blocking(&relay.store, move |s| {
        ids.iter().try_for_each(|&id| s.mark_retry(id, now, "relay stopped before trying this message"))
    })
    .await;
    match result {
        Ok(()) => tracing::info!(rows = n, "returned untried rows to the queue"),
        Err(e) => tracing::warn!(rows = n, error = %e, "cannot return untried rows; they come back after their lease"),
    }
}

/// Waits for a wake-up, the poll interval, the next due row or shutdown.
async fn idle(relay: &Relay, wake: &Notify, shutdown: &CancellationToken) {
    let poll = Duration::from_millis(relay.settings.poll_interval_ms.max(1));
    let delay = match blocking(&relay.store, |s| s.next_due()).await {
        Ok(Some(due)) => {
            let secs = due.saturating_sub(mamoru_core::now()).max(0) as u64;
            poll.min(Duration::from_secs(secs)).max(IDLE_MIN.min(poll))
        }
        Ok(None) => poll,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the next due time");
            poll
        }
    };
    tokio::select! {
        _ = wake.notified() => {}
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.cancelled() => {}
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
