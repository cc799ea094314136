//! mamoru's use cases, one module per flow, between the store and the
//! adapters that receive input (ingest: pipe and LMTP; web; relay; CLI).
//!
//! - [`registration`]: ask for a link (an empty mail or the PC form), show
//!   and complete a registration, show, change and delete it.
//! - [`alerts`]: draft a post from any channel (a typed [`alerts::Post`]),
//!   answer a malformed one, preview, publish, and render a subscriber's
//!   copy at send time.
//! - [`admins`]: add, disable, enable an admin; set or change a password.
//! - [`bounces`]: check a VERP return path, record a bounce, apply its
//!   effect.
//! - [`confirm`]: 確認しました, counted per alert, district and carrier,
//!   never per reader.
//! - [`reception`]: a parent's 受信テスト: a test mail with a 届きました
//!   link, and the carrier's help when it does not come back.
//!
//! An adapter turns bytes, forms and commands into the typed requests here,
//! and the outcomes back into its own replies: a page, an LMTP reply, an
//! exit code. A use case is one call; each call that changes anything is
//! one store transaction.
//!
//! **Invariant:** a use case that queued mail wakes the relay
//! ([`App::wake`]) after its transaction committed, never before.
//!
//! Everything here is blocking (SQLite). [`App::run`] is the one way async
//! code calls it.

pub mod admins;
pub mod alerts;
pub mod bounces;
pub mod confirm;
pub mod reception;
pub mod registration;

use std::sync::Arc;

use mamoru_core::token::TokenKey;
use mamoru_core::Config;
use mamoru_store::{Store, StoreError};
use tokio::sync::Notify;

pub use mamoru_metrics as metrics;
use mamoru_metrics::Metrics;

/// The use cases of one mamoru installation: configuration, store and
/// token key, shared by every adapter of a process.
pub struct App {
    pub cfg: Arc<Config>,
    pub store: Arc<Store>,
    pub tokens: TokenKey,
    wake: Arc<Notify>,
    copies: alerts::Copies,
    metrics: Arc<Metrics>,
}

impl App {
    pub fn new(cfg: Arc<Config>, store: Arc<Store>, tokens: TokenKey) -> Self {
        Self {
            cfg,
            store,
            tokens,
            wake: Arc::new(Notify::new()),
            copies: alerts::Copies::default(),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Shares `wake` with the relay of the same process: it is notified
    /// whenever a use case queued mail.
    pub fn with_wake(mut self, wake: Arc<Notify>) -> Self {
        self.wake = wake;
        self
    }

    /// Shares the process's metrics with every adapter that records.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Where the use cases and the adapters record what happened.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What the relay waits on for new mail.
    pub fn wake(&self) -> &Arc<Notify> {
        &self.wake
    }

    fn queued(&self) {
        self.wake.notify_one();
    }

    /// Twelve random bytes for a Message-ID.
    fn random12(&self) -> Result<[u8; 12], Error> {
        let mut random = [0u8; 12];
        self.store.sealer().random(&mut random).map_err(|e| Error::Store(e.into()))?;
        Ok(random)
    }

    /// Runs a use case on a blocking thread: the one boundary between async
    /// adapters and the store.
    pub async fn run<T: Send + 'static>(self: &Arc<Self>, f: impl FnOnce(&App) -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
        let app = Arc::clone(self);
        let r = match tokio::task::spawn_blocking(move || f(&app)).await {
            Ok(r) => r,
            Err(e) => Err(Error::Stopped(e.to_string())),
        };
        if let Err(Error::Store(e)) = &r {
            self.metrics.store_error("app", matches!(e, StoreError::Busy));
        }
        r
    }
}

/// Why a use case could not run. Every variant is logged once where it is
/// mapped to a reply, with no address in it: a web page says "busy, try
/// again" (503), LMTP and the pipe command ask the MTA to retry when
/// [`Error::is_transient`], and the CLI exits with its store-error code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking task did not finish (it panicked or the runtime is
    /// shutting down).
    #[error("task stopped: {0}")]
    Stopped(String),
}

impl Error {
    /// Whether the same request may succeed later (a lock released, disk
    /// space freed): what an MTA retry or a "try again" page is for.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store(e) => e.is_transient(),
            Error::Stopped(_) => true,
        }
    }
}

#[cfg(test)]
mod tests;
