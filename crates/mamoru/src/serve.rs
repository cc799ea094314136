//! `mamoru serve`, `mamoru relay` and `mamoru queue`.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mamoru_core::Config;
use mamoru_core::conn_limit::ConnectionLimits;
use mamoru_app::App;
use mamoru_app::metrics::Entry;
use mamoru_ingest::Registrar;
use mamoru_ingest::imap::client::Watcher;
use mamoru_ingest::lmtp::server::{self as lmtp, LmtpConfig};
use mamoru_store::Store;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cli::QueueArgs;
use crate::{ops, setup};

/// How long shutdown waits for SMTP/LMTP transactions in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Unconfirmed registrations are deleted after this long.
const UNCONFIRMED_TTL: i64 = 72 * 3600;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start async runtime")
}

pub fn serve(mut cfg: Config) -> anyhow::Result<()> {
    setup::init_logging("info", cfg.log.format);
    apply_fd_budget(&mut cfg);
    runtime()?.block_on(async move {
        let cfg = Arc::new(cfg);
        let (store, keys) = setup::open_store(&cfg)?;
        let lmtp_listener = bind(cfg.ingest.lmtp_listen, "LMTP").await?;
        let web_listener = bind(cfg.web.listen, "HTTP").await?;
        let ops = ops::Ops::bind(&cfg, store.clone()).await?;
        announce("lmtp", &lmtp_listener)?;
        announce("http", &web_listener)?;
        ops.announce()?;

        let shutdown = CancellationToken::new();
        let wake = Arc::new(Notify::new());
        // One set of use cases for every adapter; what they queue wakes the
        // relay, what they do is counted in the one registry.
        let app = Arc::new(
            App::new(cfg.clone(), store.clone(), keys.token_key()).with_wake(wake.clone()).with_metrics(ops.metrics.clone()),
        );
        let registrar = Arc::new(Registrar::new(app.clone()));
        let lmtp_cfg = LmtpConfig {
            hostname: cfg.domain.clone(),
            max_message_bytes: cfg.ingest.max_message_bytes,
            max_recipients: 100,
            idle_timeout: Duration::from_secs(cfg.ingest.lmtp_idle_secs),
            transaction_timeout: Duration::from_secs(cfg.ingest.lmtp_transaction_secs),
            connections: ConnectionLimits::new(cfg.ingest.lmtp_max_connections, cfg.ingest.lmtp_max_connections_per_client),
        };
        let web = Arc::new(mamoru_web::Web::new(app.clone()));

        let imap_registrar = Arc::new(Registrar::new(app.clone()).with_entry(Entry::Imap));
        let imap =
            cfg.ingest.imap.iter().map(|m| imap_watcher(&cfg, m, &imap_registrar, &store)).collect::<anyhow::Result<Vec<_>>>()?;
        let mut tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)> = vec![
            ("lmtp", spawn(lmtp::run(lmtp_listener, lmtp_cfg, registrar.clone(), shutdown.clone()))),
            ("web", if cfg.web_tls() {
                let tls = mamoru_web::tls_config(std::path::Path::new(&cfg.web.tls_cert), std::path::Path::new(&cfg.web.tls_key))
                    .context("load [web] tls_cert / tls_key")?;
                spawn(mamoru_web::run_tls(web_listener, web, tls, shutdown.clone()))
            } else {
                spawn(mamoru_web::run(web_listener, web, shutdown.clone()))
            }),
            ("relay", spawn(mamoru_relay::run(relay(&app, &keys)?, wake, shutdown.clone()))),
            ("housekeeping", tokio::spawn(housekeeping(store, shutdown.clone()))),
        ];
        if !imap.is_empty() {
            // Each watcher retries on its own and returns only at shutdown.
            let token = shutdown.clone();
            tasks.push(("imap", tokio::spawn(async move {
                let mut set = tokio::task::JoinSet::new();
                for w in imap {
                    set.spawn(w.watch(token.clone()));
                }
                while set.join_next().await.is_some() {}
                Ok(())
            })));
        }
        tasks.extend(ops.start(&shutdown));
        run_until_signal(tasks, shutdown).await
    })
}

/// The watcher of one `[[ingest.imap]]` mailbox, handing its messages to
/// the same registrar as LMTP.
pub fn imap_watcher(
    cfg: &Config,
    m: &mamoru_core::config::ImapMailbox,
    registrar: &Arc<Registrar>,
    store: &Arc<Store>,
) -> anyhow::Result<Arc<Watcher<Registrar>>> {
    let tls = mamoru_ingest::imap::client::tls_config(m).with_context(|| format!("[[ingest.imap]] {}", m.label()))?;
    Ok(Arc::new(Watcher {
        mailbox: m.clone(),
        deliver: registrar.clone(),
        store: store.clone(),
        max_message_bytes: cfg.ingest.max_message_bytes,
        max_header_bytes: mamoru_ingest::registrar::MAX_HEADER_BYTES,
        tls,
        unmoved: Default::default(),
    }))
}

/// File descriptors kept out of the listeners' caps for everything else:
/// stdio, SQLite (database, WAL and shared memory per connection), key and
/// quarantine files, the resolver's sockets, the runtime's own. The relay's
/// outgoing SMTP connections come on top (see [`fd_reserve`]).
const FD_RESERVE_BASE: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, then makes the two
/// listeners' total connection caps fit in what is left after the reserve
/// for the relay and the store: a flood of one listener then ends at its own
/// cap, and neither it nor the other listener nor the relay ever meets
/// EMFILE.
fn apply_fd_budget(cfg: &mut Config) {
    let nofile = raise_nofile();
    let reserve = fd_reserve(cfg);
    let (web, lmtp) = (cfg.web.max_connections, cfg.ingest.lmtp_max_connections);
    let (web2, lmtp2) = fd_budget(nofile, reserve, web, lmtp);
    if (web2, lmtp2) != (web, lmtp) {
        tracing::warn!(
            nofile, reserve, web.max_connections = web2, ingest.lmtp_max_connections = lmtp2,
            "the file-descriptor limit cannot hold the configured connection caps; lowered them (raise the hard limit, e.g. LimitNOFILE=)"
        );
    } else {
        tracing::info!(nofile, reserve, web.max_connections = web, ingest.lmtp_max_connections = lmtp, "file-descriptor budget");
    }
    cfg.web.max_connections = web2;
    cfg.ingest.lmtp_max_connections = lmtp2;
}

/// The soft `RLIMIT_NOFILE` after raising it as far as the hard limit allows.
fn raise_nofile() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    // None is "unlimited"; Linux never reports that for NOFILE, but take it
    // at its word then.
    let current = lim.current.unwrap_or(u64::MAX);
    match lim.maximum {
        Some(max) if max > current => match setrlimit(Resource::Nofile, Rlimit { current: Some(max), maximum: Some(max) }) {
            Ok(()) => max,
            Err(e) => {
                tracing::warn!(error = %e, current, max, "could not raise the file-descriptor limit");
                current
            }
        },
        _ => current,
    }
}

/// Descriptors kept for everything but the listeners: the base reserve and
/// one per relay connection (every pool's `max_connections`).
fn fd_reserve(cfg: &Config) -> u64 {
    let metrics = if cfg.metrics.listen.is_some() { ops::MAX_CONNECTIONS as u64 } else { 0 };
    FD_RESERVE_BASE + metrics + cfg.carriers.values().map(|p| u64::from(p.max_connections)).sum::<u64>()
}

/// The listeners' total caps `(web, lmtp)` within `nofile - reserve`: as
/// configured when they fit, otherwise scaled down in proportion (each at
/// least 1).
fn fd_budget(nofile: u64, reserve: u64, web: usize, lmtp: usize) -> (usize, usize) {
    let available = nofile.saturating_sub(reserve).max(2);
    let wanted = web as u64 + lmtp as u64;
    if wanted <= available {
        return (web, lmtp);
    }
    let lmtp2 = (lmtp as u64 * available / wanted).max(1);
    let web2 = available.saturating_sub(lmtp2).max(1);
    (web2.min(web as u64) as usize, lmtp2.min(lmtp as u64) as usize)
}

/// `mamoru relay`: the relay alone, and with `[metrics] listen` the same
/// metrics listener and systemd notifications as `serve`.
pub fn relay_only(cfg: Config) -> anyhow::Result<()> {
    setup::init_logging("info", cfg.log.format);
    runtime()?.block_on(async move {
        let (store, keys) = setup::open_store(&cfg)?;
        let ops = ops::Ops::bind(&cfg, store.clone()).await?;
        ops.announce()?;
        let app = Arc::new(App::new(Arc::new(cfg), store, keys.token_key()).with_metrics(ops.metrics.clone()));
        let shutdown = CancellationToken::new();
        let mut tasks = vec![("relay", spawn(mamoru_relay::run(relay(&app, &keys)?, app.wake().clone(), shutdown.clone())))];
        tasks.extend(ops.start(&shutdown));
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
    let learned = store.learned_limits().context("read the learned limits")?;
    let holders = store.pool_holders().context("read which relay holds each pool")?;
    let imap = store.imap_states().context("read the IMAP mailbox states")?;
    let deferred = store.deferred().context("read the deferred rows")?;
    let suspended = store.suspended_counts().context("read the suspended subscribers")?;
    let unfinished = store.unfinished_registrations(now - 7 * 86_400).context("read the unfinished registrations")?;
    // (pool, state) -> buckets, states in their life order.
    let mut rows: std::collections::BTreeMap<(String, mamoru_store::states::OutboxState), Vec<i64>> = std::collections::BTreeMap::new();
    for r in shape {
        let pool = cfg.pool_of(&r.domain).to_string();
        let slot = rows.entry((pool, r.state)).or_insert_with(|| vec![0; AGE_BUCKETS_MIN.len() + 1]);
        for (a, b) in slot.iter_mut().zip(&r.buckets) {
            *a += b;
        }
    }
    let now_ms = now * 1000;
    let mut out = std::io::stdout().lock();
    if args.json {
        let outbox: Vec<serde_json::Value> = rows
            .iter()
            .map(|((pool, state), b)| {
                serde_json::json!({ "pool": pool, "state": state.as_str(), "total": b.iter().sum::<i64>(), "age_buckets": b })
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
        let mark = |m: Option<mamoru_store::relay::LearnedMark>| {
            m.map(|m| serde_json::json!({ "level": m.level, "hits": m.hits, "at": m.at }))
        };
        let learned: Vec<serde_json::Value> = learned
            .iter()
            .map(|l| {
                let push_back = l.last_push_back.as_ref().map(|p| {
                    serde_json::json!({ "at": p.at, "signal": p.signal.as_str(), "code": p.code, "enhanced": p.enhanced })
                });
                serde_json::json!({
                    "pool": l.pool, "connections": l.connections, "connections_ceiling": l.connections_ceiling,
                    "pace": l.pace, "pace_ceiling": l.pace_ceiling, "sessions_mark": mark(l.sessions_mark),
                    "pace_mark": mark(l.pace_mark), "last_push_back": push_back, "updated_at": l.updated_at,
                })
            })
            .collect();
        let holders: Vec<serde_json::Value> = holders
            .iter()
            .map(|(pool, node, until)| serde_json::json!({ "pool": pool, "node": node, "held_until": until, "lapsed": *until <= now }))
            .collect();
        let imap: Vec<serde_json::Value> = imap
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name, "state": m.state.as_str(), "detail": m.detail, "retry_at": m.retry_at,
                    "uid_validity": m.uid_validity, "last_uid": m.last_uid, "processed": m.processed,
                    "dropped": m.dropped, "quarantined": m.quarantined, "updated_at": m.updated_at,
                })
            })
            .collect();
        let deferred: Vec<serde_json::Value> = deferred
            .iter()
            .map(|d| serde_json::json!({ "pool": cfg.pool_of(&d.domain), "domain": d.domain, "code": d.code, "count": d.count }))
            .collect();
        let suspended: Vec<serde_json::Value> =
            suspended.iter().map(|(reason, n)| serde_json::json!({ "reason": reason, "count": n })).collect();
        let unfinished: Vec<serde_json::Value> = unfinished
            .iter()
            .map(|u| serde_json::json!({ "pool": cfg.pool_of(&u.domain), "domain": u.domain, "pending": u.pending, "completed": u.completed }))
            .collect();
        let doc = serde_json::json!({
            "age_buckets_min": AGE_BUCKETS_MIN, "outbox": outbox, "pools": pools, "learned": learned, "holders": holders,
            "imap": imap, "deferred": deferred, "suspended": suspended, "unfinished_registrations_7d": unfinished,
        });
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    write!(out, "{:<10} {:<8} {:>7}", "pool", "state", "total")?;
    for m in AGE_BUCKETS_MIN {
        write!(out, " {:>6}", format!("{m}m"))?;
    }
    writeln!(out, " {:>6}", format!("{}m+", AGE_BUCKETS_MIN[AGE_BUCKETS_MIN.len() - 1]))?;
    for ((pool, state), b) in &rows {
        write!(out, "{pool:<10} {:<8} {:>7}", state.as_str(), b.iter().sum::<i64>())?;
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
    if !learned.is_empty() {
        writeln!(out)?;
        writeln!(out, "{:<10} {:>9} {:>13}  last push-back", "pool", "sessions", "pace/s")?;
        for l in &learned {
            let pace = if l.pace_ceiling > 0.0 { format!("{:.1}/{:.1}", l.pace, l.pace_ceiling) } else { "none".into() };
            let last = match &l.last_push_back {
                Some(p) => {
                    let code = if p.code == 0 { "no reply".to_string() } else { format!("{} {}", p.code, p.enhanced).trim_end().to_string() };
                    format!("{} ago, {}, {code}", ago(now - p.at), p.signal.as_str())
                }
                None => "-".into(),
            };
            writeln!(out, "{:<10} {:>9} {pace:>13}  {last}", l.pool, format!("{}/{}", l.connections, l.connections_ceiling))?;
        }
    }
    if !holders.is_empty() {
        writeln!(out)?;
        writeln!(out, "{:<10} {:<10}  relay (node)", "pool", "held")?;
        for (pool, node, until) in &holders {
            let held = if *until > now { format!("{}s more", until - now) } else { "lapsed".into() };
            writeln!(out, "{pool:<10} {held:<10}  {node}")?;
        }
    }
    if !imap.is_empty() {
        writeln!(out)?;
        writeln!(out, "{:<16} {:<10} {:>9} {:>9} {:>8} {:>11} {:>6}  detail", "imap mailbox", "state", "processed", "dropped", "quarant.", "last uid", "age")?;
        for m in &imap {
            let detail = match m.state {
                mamoru_store::imap::WatchState::Retrying if m.retry_at > now => format!("{} (retry in {})", m.detail, ago(m.retry_at - now)),
                _ => m.detail.clone(),
            };
            writeln!(
                out,
                "{:<16} {:<10} {:>9} {:>9} {:>8} {:>11} {:>6}  {detail}",
                m.name,
                m.state.as_str(),
                m.processed,
                m.dropped,
                m.quarantined,
                m.last_uid,
                ago(now - m.updated_at)
            )?;
        }
    }
    if !deferred.is_empty() {
        writeln!(out)?;
        writeln!(out, "{:<10} {:<20} {:<12} {:>7}", "pool", "deferred: domain", "reply", "rows")?;
        for d in &deferred {
            writeln!(out, "{:<10} {:<20} {:<12} {:>7}", cfg.pool_of(&d.domain), d.domain, d.code, d.count)?;
        }
    }
    if !suspended.is_empty() {
        writeln!(out)?;
        writeln!(out, "{:<20} {:>7}", "suspended: reason", "subscribers")?;
        for (reason, n) in &suspended {
            writeln!(out, "{reason:<20} {n:>7}")?;
        }
    }
    if !unfinished.is_empty() {
        writeln!(out)?;
        writeln!(out, "{:<10} {:<28} {:>7} {:>9}", "pool", "unfinished (7d): domain", "pending", "completed")?;
        for u in &unfinished {
            writeln!(out, "{:<10} {:<28} {:>7} {:>9}", cfg.pool_of(&u.domain), u.domain, u.pending, u.completed)?;
        }
    }
    Ok(())
}

/// `42s`, `5m`, `3h`, `2d`: how long ago, roughly.
fn ago(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn relay(app: &Arc<App>, keys: &mamoru_store::Keys) -> anyhow::Result<Arc<mamoru_relay::Relay>> {
    let cfg = &*app.cfg;
    Ok(Arc::new(mamoru_relay::Relay {
        store: app.store.clone(),
        transport: cfg.relay.transport.clone(),
        data_dir: cfg.data_dir.clone(),
        settings: cfg.relay.clone(),
        hostname: cfg.domain.clone(),
        pools: cfg.carriers.clone(),
        verp_key: Some(keys.token_key()),
        dkim: dkim(cfg)?,
        alerts: app.clone(),
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

pub(crate) async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("bind {what} listener on {addr}"))
}

/// Prints the listening line tests and operators wait for, with the real
/// port when 0 was configured.
pub(crate) fn announce(what: &str, listener: &TcpListener) -> anyhow::Result<()> {
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
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.purge_reception(mamoru_core::now())).await? {
            Ok(0) => {}
            Ok(n) => tracing::info!(n, "purged expired reception tests"),
            Err(e) => tracing::warn!(error = %e, "purging reception tests failed; will retry"),
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.purge_confirmations(mamoru_core::now())).await? {
            Ok(0) => {}
            Ok(n) => tracing::info!(n, "deleted the counted-copy records of closed confirmation windows"),
            Err(e) => tracing::warn!(error = %e, "purging confirmation records failed; will retry"),
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
    crate::ops::notify_stopping();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caps_fit_the_descriptors_left_after_the_reserve() {
        assert_eq!(fd_budget(1_048_576, 100, 1024, 100), (1024, 100));
        // 1024 descriptors, 100 reserved: 924 shared in proportion.
        let (web, lmtp) = fd_budget(1024, 100, 1024, 100);
        assert!(web + lmtp <= 924, "{web} + {lmtp}");
        assert_eq!(lmtp, 82);
        assert_eq!(web, 842);
        // Nothing left: each listener still gets one.
        assert_eq!(fd_budget(50, 100, 1024, 100), (1, 1));
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        let n = raise_nofile();
        let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(Some(n), lim.current);
        assert_eq!(lim.current, lim.maximum);
    }
}
