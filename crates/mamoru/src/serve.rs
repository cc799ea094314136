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

/// Unconfirmed registrations are deleted after this long.
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
            ("relay", spawn(mamoru_relay::run(relay(&cfg, &store, &keys)?, wake, shutdown.clone()))),
            ("housekeeping", tokio::spawn(housekeeping(store, shutdown.clone()))),
        ];
        run_until_signal(tasks, shutdown).await
    })
}

pub fn relay_only(cfg: Config) -> anyhow::Result<()> {
    setup::init_logging("info");
    runtime()?.block_on(async move {
        let (store, keys) = setup::open_store(&cfg)?;
        let shutdown = CancellationToken::new();
        let tasks = vec![("relay", spawn(mamoru_relay::run(relay(&cfg, &store, &keys)?, Arc::new(Notify::new()), shutdown.clone())))];
        run_until_signal(tasks, shutdown).await
    })
}

/// `mamoru queue`: the outbox by carrier pool × state × age (minutes since
/// queued, in qshape's buckets), then the live state each pool's relay last
/// wrote (at most a second or so old while a relay runs).
pub fn queue(cfg: Config, args: QueueArgs) -> anyhow::Result<()> {
    use mamoru_store::relay::AGE_BUCKETS_MIN;
    let (store, _keys) = setup::open_store(&cfg)?;
    let now = mamoru_core::now();
    let shape = store.outbox_shape(now).context("read the outbox")?;
    let pools = store.pool_states().context("read the pool state")?;
    // (pool, state) -> buckets, states in their life order.
    let order = |s: &str| ["queued", "sending", "sent", "failed", "expired"].iter().position(|x| *x == s).unwrap_or(9);
    let mut rows: std::collections::BTreeMap<(String, usize, String), Vec<i64>> = std::collections::BTreeMap::new();
    for r in shape {
        let pool = cfg.pool_of(&r.domain).to_string();
        let slot = rows.entry((pool, order(&r.state), r.state.clone())).or_insert_with(|| vec![0; AGE_BUCKETS_MIN.len() + 1]);
        for (a, b) in slot.iter_mut().zip(&r.buckets) {
            *a += b;
        }
    }
    let now_ms = now * 1000;
    let mut out = std::io::stdout().lock();
    if args.json {
        let outbox: Vec<serde_json::Value> = rows
            .iter()
            .map(|((pool, _, state), b)| {
                serde_json::json!({ "pool": pool, "state": state, "total": b.iter().sum::<i64>(), "age_buckets": b })
            })
            .collect();
        let pools: Vec<serde_json::Value> = pools
            .iter()
            .map(|p| {
                serde_json::json!({
                    "pool": p.name, "rate_configured": p.rate_configured, "rate_now": p.rate_now,
                    "paused_until_ms": p.paused_until_ms, "paused": p.paused_until_ms > now_ms,
                    "connections": p.connections, "max_connections": p.max_connections,
                    "throttles": p.throttles, "sent": p.sent, "updated_at": p.updated_at,
                })
            })
            .collect();
        let doc = serde_json::json!({ "age_buckets_min": AGE_BUCKETS_MIN, "outbox": outbox, "pools": pools });
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    write!(out, "{:<10} {:<8} {:>7}", "pool", "state", "total")?;
    for m in AGE_BUCKETS_MIN {
        write!(out, " {:>6}", format!("{m}m"))?;
    }
    writeln!(out, " {:>6}", format!("{}m+", AGE_BUCKETS_MIN[AGE_BUCKETS_MIN.len() - 1]))?;
    for ((pool, _, state), b) in &rows {
        write!(out, "{pool:<10} {state:<8} {:>7}", b.iter().sum::<i64>())?;
        for n in b {
            write!(out, " {n:>6}")?;
        }
        writeln!(out)?;
    }
    if !pools.is_empty() {
        writeln!(out)?;
        writeln!(out, "{:<10} {:>9} {:>9} {:>8} {:>5} {:>9} {:>8} {:>8}", "pool", "rate/s", "limit/s", "paused", "conns", "throttles", "sent", "age")?;
        for p in &pools {
            let paused = if p.paused_until_ms > now_ms { format!("{}s", (p.paused_until_ms - now_ms + 999) / 1000) } else { "-".into() };
            let limit = if p.rate_configured > 0.0 { format!("{:.1}", p.rate_configured) } else { "none".into() };
            let rate = if p.rate_configured > 0.0 { format!("{:.1}", p.rate_now) } else { "-".into() };
            writeln!(
                out,
                "{:<10} {rate:>9} {limit:>9} {paused:>8} {:>5} {:>9} {:>8} {:>7}s",
                p.name,
                format!("{}/{}", p.connections, p.max_connections),
                p.throttles,
                p.sent,
                (now - p.updated_at).max(0)
            )?;
        }
    }
    Ok(())
}

fn relay(cfg: &Config, store: &Arc<Store>, keys: &mamoru_store::Keys) -> anyhow::Result<Arc<mamoru_relay::Relay>> {
    Ok(Arc::new(mamoru_relay::Relay {
        store: store.clone(),
        transport: cfg.transport()?,
        data_dir: cfg.data_dir.clone(),
        settings: cfg.relay.clone(),
        hostname: cfg.domain.clone(),
        pools: cfg.carriers.clone(),
        verp_key: Some(keys.token_key()),
        dkim: dkim(cfg)?,
        render_alert: Some(Arc::new(mamoru_web::publish::alert_renderer(Arc::new(cfg.clone()), keys.token_key()))),
    }))
}

/// The DKIM signer, unless `relay.dkim_selector` is empty. Creates the
/// ed25519 key on first start.
pub fn dkim(cfg: &Config) -> anyhow::Result<Option<mamoru_relay::dkim::Dkim>> {
    if cfg.relay.dkim_selector.is_empty() {
        return Ok(None);
    }
    let dir = mamoru_store::keys::keys_dir(&cfg.data_dir);
    let d = mamoru_relay::dkim::Dkim::load_or_create(&dir, &cfg.domain, &cfg.relay.dkim_selector).context("DKIM keys")?;
    let (name, value) = d.ed25519_record();
    tracing::info!(rsa = d.has_rsa(), "DKIM signing; publish {name} TXT \"{value}\"");
    Ok(Some(d))
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
