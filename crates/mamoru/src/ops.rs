//! The operator's side of `mamoru serve` and `mamoru relay`: the metrics
//! listener (`[metrics] listen`: `/metrics`, `/healthz`, `/readyz`) and
//! systemd's readiness and watchdog notifications, wired once by [`Ops`].
//!
//! A scrape encodes what is in memory ([`Metrics::encode`]): the counters
//! recorded where things happen and the gauges of the relay's
//! once-a-second snapshot; it never reads the database. `/readyz` does one
//! cheap store check (a write lock taken and given back), as the watchdog
//! does before each ping, so a process whose store hangs stops pinging and
//! systemd restarts it.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use mamoru_app::metrics::Metrics;
use mamoru_core::Config;
use mamoru_store::Store;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Connections the metrics listener serves at once (a scraper or two and a
/// health checker); one more is closed unanswered.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the store check may take before the store counts as stuck.
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// A long-running command's operator side: its metrics registry, its health
/// checks and, with `[metrics] listen`, the bound metrics listener.
pub struct Ops {
    pub metrics: Arc<Metrics>,
    health: Arc<Health>,
    listener: Option<TcpListener>,
}

impl Ops {
    /// Binds `[metrics] listen` if it is set; the keys are loaded (the store
    /// is open).
    pub async fn bind(cfg: &Config, store: Arc<Store>) -> anyhow::Result<Self> {
        let health = Arc::new(Health::new(store));
        health.keys_loaded();
        let listener = match cfg.metrics.listen {
            Some(addr) => Some(crate::serve::bind(addr, "metrics").await?),
            None => None,
        };
        // The counters kept in the store are in memory before the first
        // scrape can come: a series that read 0 for a moment after a restart
        // and then its stored total would look like a burst of events.
        let metrics = Arc::new(Metrics::new());
        let (m, s) = (metrics.clone(), health.store.clone());
        tokio::task::spawn_blocking(move || {
            for c in s.counters()? {
                m.stored(&c.name, &c.labels, c.value);
            }
            Ok::<_, mamoru_store::StoreError>(())
        })
        .await?
        .context("read the stored counters")?;
        Ok(Self { metrics, health, listener })
    }

    /// Prints `metrics listening on ADDR` when there is a listener.
    pub fn announce(&self) -> anyhow::Result<()> {
        match &self.listener {
            Some(l) => crate::serve::announce("metrics", l),
            None => Ok(()),
        }
    }

    /// Once the command's own listeners are bound: marks them so, tells
    /// systemd the process is ready, and returns the tasks of the metrics
    /// listener (if any) and the watchdog.
    pub fn start(self, shutdown: &CancellationToken) -> Vec<(&'static str, JoinHandle<anyhow::Result<()>>)> {
        let mut tasks = Vec::new();
        if let Some(l) = self.listener {
            let (metrics, health, token) = (self.metrics.clone(), self.health.clone(), shutdown.clone());
            tasks.push(("metrics", tokio::spawn(async move { Ok::<(), anyhow::Error>(run(l, metrics, health, token).await?) })));
        }
        self.health.listeners_bound();
        notify_ready();
        tasks.push(("watchdog", tokio::spawn(watchdog(self.health, shutdown.clone()))));
        tasks
    }
}

/// What `/readyz` and the watchdog check.
pub struct Health {
    store: Arc<Store>,
    keys_loaded: AtomicBool,
    listeners_bound: AtomicBool,
}

impl Health {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store, keys_loaded: AtomicBool::new(false), listeners_bound: AtomicBool::new(false) }
    }

    pub fn keys_loaded(&self) {
        self.keys_loaded.store(true, Ordering::Release);
    }

    pub fn listeners_bound(&self) {
        self.listeners_bound.store(true, Ordering::Release);
    }

    /// The checks that fail, each a short fixed text; empty when ready.
    pub async fn problems(&self) -> Vec<&'static str> {
        let mut problems = Vec::new();
        if !self.keys_loaded.load(Ordering::Acquire) {
            problems.push("keys: not loaded");
        }
        if !self.listeners_bound.load(Ordering::Acquire) {
            problems.push("listeners: not bound");
        }
        let store = self.store.clone();
        let check = tokio::task::spawn_blocking(move || store.check_writable());
        match tokio::time::timeout(STORE_CHECK_TIMEOUT, check).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(mamoru_store::StoreError::Busy))) => problems.push("store: locked"),
            Ok(Ok(Err(mamoru_store::StoreError::ReadOnly))) => problems.push("store: read-only"),
            Ok(Ok(Err(_))) => problems.push("store: error"),
            Ok(Err(_)) => problems.push("store: check failed"),
            Err(_) => problems.push("store: not answering"),
        }
        problems
    }
}

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    r.headers_mut().insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
    r
}

async fn handle(req: Request<Incoming>, metrics: &Metrics, health: &Health) -> Resp {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n");
        r.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => text(StatusCode::OK, mamoru_app::metrics::CONTENT_TYPE, metrics.encode()),
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
        "/readyz" => {
            let problems = health.problems().await;
            if problems.is_empty() {
                text(StatusCode::OK, PLAIN, "ready\n")
            } else {
                let body: String = problems.iter().map(|p| format!("{p}\n")).collect();
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, body)
            }
        }
        _ => text(StatusCode::NOT_FOUND, PLAIN, "/metrics, /healthz, /readyz\n"),
    }
}

/// Serves the metrics listener until `shutdown`; then lets requests in
/// flight finish.
pub async fn run(listener: TcpListener, metrics: Arc<Metrics>, health: Arc<Health>, shutdown: CancellationToken) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    loop {
        let stream = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        let service = service_fn(move |req| {
            let (metrics, health) = (metrics.clone(), health.clone());
            async move { Ok::<_, Infallible>(handle(req, &metrics, &health).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Tells systemd (`Type=notify`) that start-up is done; nothing without
/// `NOTIFY_SOCKET`.
pub fn notify_ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot notify systemd of readiness");
    }
}

/// Tells systemd that shutdown has begun.
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// With `WatchdogSec=` (systemd sets `WATCHDOG_USEC`): pings the watchdog
/// at half its period, each time only after the health checks pass, so a
/// process whose store or runtime hangs stops pinging and is restarted.
/// Without a watchdog it only waits for shutdown (a task of `serve` that
/// ends early is a failure).
pub async fn watchdog(health: Arc<Health>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Some(period) = sd_notify::watchdog_enabled() else {
        shutdown.cancelled().await;
        return Ok(());
    };
    let every = (period / 2).max(Duration::from_millis(100));
    tracing::info!(period_ms = period.as_millis() as u64, "systemd watchdog enabled");
    let mut failing = false;
    loop {
        let problems = health.problems().await;
        if problems.is_empty() {
            if failing {
                tracing::info!("healthy again; watchdog pings resumed");
                failing = false;
            }
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
                tracing::warn!(error = %e, "cannot ping the systemd watchdog");
            }
        } else if !failing {
            tracing::error!(problems = ?problems, "not healthy; watchdog pings withheld");
            failing = true;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
    }
}
