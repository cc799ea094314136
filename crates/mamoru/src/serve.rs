//! `mamoru serve`, `mamoru relay` and `mamoru queue`.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mamoru_core::Config;
use mamoru_ingest::Registrar;
use mamoru_ingest::lmtp::server::{self as lmtp, LmtpConfig};
use mamoru_store::Store;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cli::QueueArgs;
use crate::setup;

/// How long shutdown waits for SMTP/LMTP transactions in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Unconfirmed registrations are deleted after this long (design §5).
const UNCONFIRMED_TTL: i64 = 72 * 3600;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start async runtime")
}

pub fn serve(cfg: Config) -> anyhow::Result<()> {
    setup::init_logging("info");
    runtime()?.block_on(async move {
        let cfg = Arc::new(cfg);
        let (store, keys) = setup::open_store(&cfg)?;
        let lmtp_listener = bind(cfg.lmtp_listen()?, "LMTP").await?;
        let web_listener = bind(cfg.web_listen()?, "HTTP").await?;
        announce("lmtp", &lmtp_listener)?;
        announce("http", &web_listener)?;

        let shutdown = CancellationToken::new();
        let wake = Arc::new(Notify::new());
        let registrar = {
            let wake = wake.clone();
            Registrar::new(cfg.clone(), store.clone(), keys.token_key()).on_queued(move || wake.notify_one())
        };
        let lmtp_cfg = LmtpConfig {
            hostname: cfg.domain.clone(),
            max_message_bytes: cfg.ingest.max_message_bytes,
            max_recipients: 100,
            idle_timeout: Duration::from_secs(300),
        };
        let web = Arc::new(mamoru_web::Web { cfg: cfg.clone(), store: store.clone(), tokens: keys.token_key(), queued: wake.clone() });

        let tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)> = vec![
            ("lmtp", spawn(lmtp::run(lmtp_listener, lmtp_cfg, Arc::new(registrar), shutdown.clone()))),
            ("web", if cfg.web_tls() {
                let tls = mamoru_web::tls_config(std::path::Path::new(&cfg.web.tls_cert), std::path::Path::new(&cfg.web.tls_key))
                    .context("load [web] tls_cert / tls_key")?;
                spawn(mamoru_web::run_tls(web_listener, web, tls, shutdown.clone()))
            } else {
                spawn(mamoru_web::run(web_listener, web, shutdown.clone()))
            }),
            ("relay", spawn(mamoru_relay::run(relay(&cfg, &store)?, wake, shutdown.clone()))),
            ("housekeeping", tokio::spawn(housekeeping(store, shutdown.clone()))),
        ];
        run_until_signal(tasks, shutdown).await
    })
}

pub fn relay_only(cfg: Config) -> anyhow::Result<()> {
    setup::init_logging("info");
    runtime()?.block_on(async move {
        let (store, _keys) = setup::open_store(&cfg)?;
        let shutdown = CancellationToken::new();
        let tasks = vec![("relay", spawn(mamoru_relay::run(relay(&cfg, &store)?, Arc::new(Notify::new()), shutdown.clone())))];
        run_until_signal(tasks, shutdown).await
    })
}

pub fn queue(cfg: Config, args: QueueArgs) -> anyhow::Result<()> {
    let (store, _keys) = setup::open_store(&cfg)?;
    let c = store.outbox_counts()?;
    let rows = [("queued", c.queued), ("sending", c.sending), ("sent", c.sent), ("failed", c.failed), ("expired", c.expired)];
    let mut out = std::io::stdout().lock();
    if args.json {
        let fields: Vec<String> = rows.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        writeln!(out, "{{{}}}", fields.join(","))?;
    } else {
        for (k, v) in rows {
            writeln!(out, "{k:<8} {v:>8}")?;
        }
    }
    Ok(())
}

fn relay(cfg: &Config, store: &Arc<Store>) -> anyhow::Result<Arc<mamoru_relay::Relay>> {
    Ok(Arc::new(mamoru_relay::Relay {
        store: store.clone(),
        transport: cfg.transport()?,
        data_dir: cfg.data_dir.clone(),
        settings: cfg.relay.clone(),
        hostname: cfg.domain.clone(),
    }))
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("bind {what} listener on {addr}"))
}

/// Prints the listening line tests and operators wait for, with the real
/// port when 0 was configured.
fn announce(what: &str, listener: &TcpListener) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{what} listening on {}", listener.local_addr()?)?;
    out.flush()?;
    Ok(())
}

fn spawn<E>(fut: impl Future<Output = Result<(), E>> + Send + 'static) -> JoinHandle<anyhow::Result<()>>
where
    E: Into<anyhow::Error> + Send + 'static,
{
    tokio::spawn(async move { fut.await.map_err(Into::into) })
}

async fn housekeeping(store: Arc<Store>, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        let s = store.clone();
        let purged = tokio::task::spawn_blocking(move || s.purge_unconfirmed(mamoru_core::now() - UNCONFIRMED_TTL)).await?;
        match purged {
            Ok(0) => {}
            Ok(n) => tracing::info!(n, "purged unconfirmed registrations older than 72 h"),
            Err(e) => tracing::warn!(error = %e, "purging unconfirmed registrations failed; will retry"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(Duration::from_secs(600)) => {}
        }
    }
}

/// Waits for SIGINT/SIGTERM (or a task stopping on its own, which is a
/// failure), then cancels everything and waits for the tasks to finish their
/// transactions in flight.
async fn run_until_signal(tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut set = tokio::task::JoinSet::new();
    for (name, handle) in tasks {
        set.spawn(async move { (name, handle.await) });
    }
    let mut failed: Option<anyhow::Error> = None;
    let note = |name: &str, r: Result<anyhow::Result<()>, tokio::task::JoinError>, failed: &mut Option<anyhow::Error>| match r {
        Ok(Ok(())) => tracing::debug!(task = name, "stopped"),
        Ok(Err(e)) => *failed = Some(e.context(format!("{name} failed"))),
        Err(e) => *failed = Some(anyhow::anyhow!("{name} task panicked: {e}")),
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        Some(Ok((name, r))) = set.join_next() => {
            note(name, r, &mut failed);
            if failed.is_none() {
                failed = Some(anyhow::anyhow!("{name} stopped unexpectedly"));
            }
        }
    }
    shutdown.cancel();
    let drain = async {
        while let Some(joined) = set.join_next().await {
            if let Ok((name, r)) = joined {
                note(name, r, &mut failed);
            }
        }
    };
    tokio::time::timeout(SHUTDOWN_GRACE, drain).await.context("shutdown timed out")?;
    match failed {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}
