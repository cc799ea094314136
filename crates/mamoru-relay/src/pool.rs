//! The tasks of the relay: per carrier pool a feeder and its workers, one
//! committer for everyone, and the supervisor ([`run_pools`]) that writes
//! the pools' state and learned limits, expires stale rows and renews
//! leases. What each does and why is told in docs/ARCHITECTURE.md
//! (`mamoru-relay`, "Pools, workers, leases").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mamoru_core::carriers::{CarrierConfig, Charset, DEFAULT_POOL};
use mamoru_core::config::Transport;
use mamoru_app::metrics::{Delivery, Metrics, PoolGauges};
use mamoru_core::{AlertId, OutboxId, UnixTime, verp};
use mamoru_store::relay::{AGE_BUCKETS_MIN, DomainFilter, LearnedLimits, LearnedMark, OutcomeRecord, PoolState, PushBack, PushBackSignal};
use mamoru_store::{QueuedMail, Store};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::shaper::{Learning, Mark, Saved, SessionCap, Shaper, drift};
use crate::splice::Splicer;
use crate::{DeliveryOutcome, Hops, NextHop, Relay, backoff, blocking, charset, outcome};

/// How often pool state is written and stale rows expired.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// A worker with nothing to send closes its connection after this long.
const IDLE_CLOSE: Duration = Duration::from_secs(1);
/// A pause longer than this closes the worker's connection.
const PAUSE_CLOSES: f64 = 2.0;
/// How soon a relay tries again when renewing its holds failed.
const HOLD_RETRY: Duration = Duration::from_secs(1);
/// How often, at most, a relay looks for lapsed holds of other relays.
const HOLD_WATCH: Duration = Duration::from_secs(5);
/// Pause after a store error.
const STORE_PAUSE: Duration = Duration::from_millis(200);
/// Outcomes per committed group at most.
const GROUP_MAX: usize = 1024;
/// A worker waiting for a session looks again this often (a freed session
/// wakes it at once).
const SESSION_POLL: Duration = Duration::from_millis(250);
/// Queue length bounds per pool.
const QUEUE_MIN: usize = 4;
const QUEUE_MAX: usize = 512;

/// Seconds since the relay started, monotonic: the shapers' clock. `epoch`
/// is the Unix time (seconds) of its zero, fixed at start, so learned
/// marks convert to stored times and back without drifting.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: Instant,
    epoch: f64,
}

impl Clock {
    fn start() -> Self {
        Self { start: Instant::now(), epoch: unix_ms() as f64 / 1000.0 }
    }

    fn now(self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn to_unix(self, at: f64) -> UnixTime {
        (self.epoch + at).round() as UnixTime
    }

    fn clock_at(self, at: UnixTime) -> f64 {
        at as f64 - self.epoch
    }
}

struct Pool {
    name: String,
    cfg: CarrierConfig,
    /// The pool's `route`, or the relay's transport.
    transport: Transport,
    filter: DomainFilter,
    /// The rate the shaper enforces (0 for the file transport: pacing is for
    /// carriers, not for the local disk).
    rate: f64,
    shaper: Mutex<Shaper>,
    /// The learned connection cap and the sessions granted under it.
    sessions: Mutex<SessionCap>,
    session_freed: Notify,
    /// The last push-back, kept with the learned limits.
    push_back: Mutex<Option<PushBack>>,
    connections: AtomicI64,
    sent: AtomicI64,
    wake: Notify,
    /// Rows claimed by this pool whose outcome is not yet handed to the
    /// committer: their leases are renewed while they wait.
    held: Mutex<BTreeSet<OutboxId>>,
    /// Alerts with a copy decided since the supervisor last looked: it
    /// checks whether their last copy is done, for the delivery metric.
    touched_alerts: Mutex<BTreeSet<AlertId>>,
    /// Until when (Unix milliseconds) this relay may send for the pool: its
    /// hold in the store less a third of a lease, the margin for clocks
    /// that differ between nodes. 0 while another relay holds the pool.
    sends_until_ms: AtomicI64,
    hops: Arc<Hops>,
}

impl Pool {
    /// Does this relay hold the pool now (see [`hold_pools`])?
    fn holds(&self) -> bool {
        unix_ms() < self.sends_until_ms.load(Ordering::Relaxed)
    }

    fn shaper(&self) -> std::sync::MutexGuard<'_, Shaper> {
        // The shaper is plain data; a panic elsewhere cannot leave it torn.
        self.shaper.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, SessionCap> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one of the pool's sessions, waiting while the learned cap has
    /// none free; false on shutdown.
    async fn take_session(&self, shutdown: &CancellationToken, clock: Clock) -> bool {
        loop {
            {
                let mut s = self.sessions();
                let taken = s.take(clock.now());
                if let Some(cap) = s.cap_changed() {
                    tracing::info!(learned_connections = cap, ceiling = s.ceiling(), "learned connection cap raised");
                }
                if taken {
                    return true;
                }
            }
            tokio::select! {
                _ = self.session_freed.notified() => {}
                _ = tokio::time::sleep(SESSION_POLL) => {}
                _ = shutdown.cancelled() => return false,
            }
        }
    }

    fn push_back(&self) -> std::sync::MutexGuard<'_, Option<PushBack>> {
        self.push_back.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a push-back: when, which signal, and the reply's codes (never
    /// its text).
    fn pushed_back(&self, metrics: &Metrics, signal: PushBackSignal, reason: &str) {
        let reply = outcome::Reply::find(reason);
        metrics.push_back(&self.name, signal.as_str(), reply.as_ref().map(|r| r.code));
        *self.push_back() = Some(PushBack {
            at: mamoru_core::now(),
            signal,
            code: reply.as_ref().map_or(0, |r| r.code),
            enhanced: reply.and_then(|r| r.enhanced).map(|e| e.to_string()).unwrap_or_default(),
        });
    }

    /// What this pool learned, as it is stored (`updated_at` left 0).
    fn learned(&self, clock: Clock) -> LearnedLimits {
        let mark = |m: Option<Mark>| m.map(|m| LearnedMark { level: m.level, hits: m.hits, at: clock.to_unix(m.at) });
        let (connections, connections_ceiling, sessions_mark) = {
            let s = self.sessions();
            (s.cap(), s.ceiling(), mark(s.mark()))
        };
        let (pace, pace_ceiling, pace_mark) = {
            let s = self.shaper();
            (s.learned_pace(), s.ceiling(), mark(s.mark()))
        };
        LearnedLimits {
            pool: self.name.clone(),
            connections,
            connections_ceiling,
            pace,
            pace_ceiling,
            sessions_mark,
            pace_mark,
            last_push_back: self.push_back().clone(),
            updated_at: 0,
        }
    }

    /// Starts from what an earlier relay learned, drifted to now.
    fn restore(&self, stored: &LearnedLimits, learning: &Learning, clock: Clock) {
        let now = clock.now();
        let mark = |m: Option<LearnedMark>| m.map(|m| Mark { level: m.level, hits: m.hits, at: clock.clock_at(m.at) });
        // A limit that was at its old ceiling learned nothing: a raised
        // ceiling applies at once.
        let saved = Saved {
            cap: if stored.connections >= stored.connections_ceiling { self.cfg.max_connections } else { stored.connections },
            pace: if stored.pace >= stored.pace_ceiling { self.rate } else { stored.pace },
            sessions_mark: mark(stored.sessions_mark),
            pace_mark: mark(stored.pace_mark),
            at: clock.clock_at(stored.updated_at),
        };
        let d = drift(saved, self.cfg.max_connections, self.rate, learning, now);
        let (cap, pace) = {
            let mut sessions = self.sessions();
            sessions.restore(d.cap, d.sessions_mark, now);
            let mut shaper = self.shaper();
            shaper.restore(d.pace, d.pace_mark, now);
            (sessions.cap(), shaper.learned_pace())
        };
        *self.push_back() = stored.last_push_back.clone();
        if cap < self.cfg.max_connections || pace < self.rate {
            tracing::info!(
                pool = %self.name,
                learned_connections = cap,
                connections_ceiling = self.cfg.max_connections,
                learned_pace = pace,
                ceiling = self.rate,
                "starting from learned limits"
            );
        }
    }

    fn give_back_session(&self) {
        self.sessions().release();
        self.session_freed.notify_one();
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeSet<OutboxId>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue_len(&self) -> usize {
        let n = if self.rate > 0.0 { (self.rate * 2.0).ceil() as usize } else { QUEUE_MAX };
        n.max(2 * self.cfg.max_connections as usize).clamp(QUEUE_MIN, QUEUE_MAX)
    }

    fn state(&self, clock: Clock) -> PoolState {
        let now = clock.now();
        let shaper = self.shaper();
        let unix_ms = unix_ms();
        let paused_ms = ((shaper.paused_until() - now) * 1000.0).max(0.0) as i64;
        PoolState {
            name: self.name.clone(),
            rate_configured: self.rate,
            rate_now: shaper.rate_now(now),
            paused_until_ms: if paused_ms > 0 { unix_ms + paused_ms } else { 0 },
            connections: self.connections.load(Ordering::Relaxed),
            max_connections: i64::from(self.cfg.max_connections),
            throttles: i64::try_from(shaper.throttles()).unwrap_or(i64::MAX),
            sent: self.sent.load(Ordering::Relaxed),
            updated_at: mamoru_core::now(),
        }
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) async fn run_pools(relay: Arc<Relay>, hops: Arc<Hops>, wake: Arc<Notify>, shutdown: CancellationToken) {
    let clock = Clock::start();
    let stored = match blocking(&relay.store, |s| s.learned_limits()).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the learned limits; starting at the ceilings");
            Vec::new()
        }
    };
    let listed: Vec<String> = relay.pools.values().flat_map(|p| p.domains.iter().cloned()).collect();
    let mut pools = Vec::new();
    for (name, cfg) in &relay.pools {
        let filter = if name == DEFAULT_POOL {
            DomainFilter::Except(listed.clone())
        } else if cfg.domains.is_empty() {
            continue;
        } else {
            DomainFilter::Only(cfg.domains.clone())
        };
        let transport = cfg.route.clone().unwrap_or_else(|| relay.transport.clone());
        let rate = if transport == Transport::File { 0.0 } else { cfg.rate_per_second };
        let learning = learning(&relay);
        let pool = Arc::new(Pool {
            name: name.clone(),
            cfg: cfg.clone(),
            transport,
            filter,
            rate,
            shaper: Mutex::new(Shaper::learning(rate, cfg.burst, learning, clock.now())),
            sessions: Mutex::new(SessionCap::new(cfg.max_connections, learning, clock.now())),
            session_freed: Notify::new(),
            push_back: Mutex::new(None),
            connections: AtomicI64::new(0),
            sent: AtomicI64::new(0),
            wake: Notify::new(),
            held: Mutex::new(BTreeSet::new()),
            touched_alerts: Mutex::new(BTreeSet::new()),
            sends_until_ms: AtomicI64::new(0),
            hops: Arc::clone(&hops),
        });
        if let Some(l) = stored.iter().find(|l| l.pool == *name) {
            pool.restore(l, &learning, clock);
        }
        pools.push(pool);
    }
    // What each pool's stored learned row says, to write only changes.
    let mut saved: Vec<Option<LearnedLimits>> =
        pools.iter().map(|p| stored.iter().find(|l| l.pool == p.name).map(|l| LearnedLimits { updated_at: 0, ..l.clone() })).collect();
    let splicer = Arc::new(Splicer::new(Arc::clone(&relay.alerts)));
    let (commit_tx, commit_rx) = mpsc::unbounded_channel();
    let committer = tokio::spawn(committer(Arc::clone(&relay.store), Arc::clone(relay.alerts.metrics()), commit_rx));
    let mut tasks = JoinSet::new();
    for pool in &pools {
        let span = tracing::info_span!("pool", pool = %pool.name);
        tasks.spawn(
            run_pool(Arc::clone(&relay), Arc::clone(pool), Arc::clone(&splicer), commit_tx.clone(), shutdown.clone(), clock)
                .instrument(span),
        );
    }
    drop(commit_tx);
    let mut alerts = AlertWatch::default();
    let mut tick = tokio::time::interval(REPORT_EVERY);
    let lease = relay.settings.lease_secs.max(1);
    let node = node_name(&relay);
    tracing::info!(node = %node, "relay node");
    let mut holds = Holds { node: node.clone(), lease, first: true };
    let first_renewal = holds.renew(&relay, &pools, clock).await;
    // Holds and leases are renewed by a task of their own, so a slow
    // report (a busy database) never lets them lapse under a live relay.
    let renewals = {
        let (relay, pools, shutdown) = (Arc::clone(&relay), pools.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut renew_at = tokio::time::Instant::now() + first_renewal;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(renew_at) => {
                        renew_at = tokio::time::Instant::now() + holds.renew(&relay, &pools, clock).await;
                        renew_leases(&relay.store, &pools, lease).await;
                    }
                    _ = shutdown.cancelled() => return,
                }
            }
        })
    };
    loop {
        tokio::select! {
            _ = wake.notified() => pools.iter().for_each(|p| p.wake.notify_one()),
            _ = tick.tick() => {
                report(&relay, &pools, clock, &mut saved).await;
                alerts.check(&relay, &pools).await;
            }
            _ = shutdown.cancelled() => break,
        }
    }
    let _ = renewals.await;
    while tasks.join_next().await.is_some() {}
    report(&relay, &pools, clock, &mut saved).await;
    if committer.await.is_err() {
        tracing::error!("the committer task failed; uncommitted rows come back after their lease");
    }
    if let Err(e) = blocking(&relay.store, move |s| s.let_go_pools(&node)).await {
        tracing::warn!(error = %e, "cannot give up the pools; another relay takes them over when the holds lapse");
    }
}

/// This relay's name in `relay_holders`: the machine and the data dir.
/// It stays the same across restarts, so a relay restarted after a crash
/// takes its pools back at once instead of waiting for its own old holds
/// to lapse; two nodes differ by machine, or by data dir on one machine.
fn node_name(relay: &Relay) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let host = if host.is_empty() { "localhost".to_string() } else { host };
    let dir = std::path::absolute(&relay.data_dir).unwrap_or_else(|_| relay.data_dir.clone());
    format!("{host}:{}", dir.display())
}

/// This relay's holds on its pools. Several relays may share one database,
/// but a carrier's sessions and pace are the pool's: only the relay that
/// holds a pool claims its rows (`Store::hold_pools`). Holds last a lease
/// and are renewed every third of one; a relay that dies loses its pools
/// when the lease lapses, one that stops gives them up at once. Why one
/// holder rather than a budget shared between relays is told in
/// docs/ARCHITECTURE.md.
struct Holds {
    node: String,
    lease: i64,
    /// The first renewal comes right after the pools restored what was
    /// learned; later ones reload it when they take a pool over.
    first: bool,
}

impl Holds {
    /// Renews the holds and takes free or lapsed pools; returns when to
    /// look again: a third of a lease while this relay holds every pool,
    /// sooner while another holds some (to take them over soon after they
    /// lapse), and after a second when the store did not answer.
    async fn renew(&mut self, relay: &Arc<Relay>, pools: &[Arc<Pool>], clock: Clock) -> Duration {
        let names: Vec<String> = pools.iter().map(|p| p.name.clone()).collect();
        let (node, lease) = (self.node.clone(), self.lease);
        let now = mamoru_core::now();
        // Sends stop a third of a lease before the hold ends, so a relay
        // whose clock is that much ahead takes nothing over early.
        let sends_until = (now + lease) * 1000 - lease * 1000 / 3;
        let held = match blocking(&relay.store, move |s| s.hold_pools(&node, &names, now, now + lease)).await {
            Ok(held) => held,
            Err(e) => {
                // The holds lapse by themselves if this goes on.
                relay.alerts.metrics().store_error("relay", e.is_busy());
                tracing::warn!(error = %e, "cannot renew the holds on the pools");
                return HOLD_RETRY;
            }
        };
        let taken: Vec<usize> =
            pools.iter().enumerate().filter(|(_, p)| held.contains(&p.name) && !p.holds()).map(|(i, _)| i).collect();
        if !taken.is_empty() && !self.first {
            // What the previous holder learned of these carriers.
            match blocking(&relay.store, |s| s.learned_limits()).await {
                Ok(stored) => {
                    for &i in &taken {
                        if let Some(l) = stored.iter().find(|l| l.pool == pools[i].name) {
                            pools[i].restore(l, &learning(relay), clock);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the learned limits of the pools taken over"),
            }
        }
        for p in pools {
            if held.contains(&p.name) {
                if !p.holds() {
                    tracing::info!(pool = %p.name, "holding the pool: this relay sends its mail");
                }
                p.sends_until_ms.store(sends_until, Ordering::Relaxed);
                p.wake.notify_one();
            } else if p.sends_until_ms.swap(0, Ordering::Relaxed) != 0 || self.first {
                tracing::info!(pool = %p.name, "another relay holds the pool: this one waits");
            }
        }
        self.first = false;
        let every = Duration::from_secs((self.lease / 3).max(1) as u64);
        if held.len() < pools.len() { every.min(HOLD_WATCH) } else { every }
    }
}

fn learning(relay: &Relay) -> Learning {
    Learning {
        probe_secs: relay.settings.learn_probe_secs.max(1) as f64,
        drift_secs: relay.settings.learn_drift_secs.max(1) as f64,
    }
}

/// The `age` label of each of [`AGE_BUCKETS_MIN`]'s buckets.
const AGE_LABELS: [&str; AGE_BUCKETS_MIN.len() + 1] =
    ["0-5m", "5m-10m", "10m-20m", "20m-40m", "40m-80m", "80m-160m", "160m-320m", "320m-640m", "640m-1280m", "1280m+"];

/// Alerts whose copies are being delivered, until their last copy is done:
/// then the time since publication goes to the delivery histogram, once.
#[derive(Default)]
struct AlertWatch {
    active: BTreeSet<AlertId>,
    done: BTreeSet<AlertId>,
}

impl AlertWatch {
    async fn check(&mut self, relay: &Arc<Relay>, pools: &[Arc<Pool>]) {
        for p in pools {
            let touched = std::mem::take(&mut *p.touched_alerts.lock().unwrap_or_else(|e| e.into_inner()));
            self.active.extend(touched.into_iter().filter(|a| !self.done.contains(a)));
        }
        if self.active.is_empty() {
            return;
        }
        let ids: Vec<AlertId> = self.active.iter().copied().collect();
        let metrics = relay.alerts.metrics();
        match blocking(&relay.store, move |s| s.alerts_finished(&ids)).await {
            Ok(finished) => {
                let now = mamoru_core::now();
                for (id, published_at) in finished {
                    self.active.remove(&id);
                    self.done.insert(id);
                    metrics.alert_delivered((now - published_at) as f64);
                    tracing::info!(alert = id.get(), secs = now - published_at, "alert delivered: last copy done");
                }
            }
            Err(e) => {
                metrics.store_error("relay", e.is_busy());
                tracing::warn!(error = %e, "cannot check which alerts are delivered");
            }
        }
    }
}

/// Writes the pools' live state, their learned limits where they changed
/// since the last write (`saved`), and expires stale rows; sets the pools'
/// gauges and the outbox shape of the metrics from the same snapshot, and
/// copies the counters other processes keep in the store (the pipe
/// command's inbound mails, alerts published from the command line).
async fn report(relay: &Arc<Relay>, pools: &[Arc<Pool>], clock: Clock, saved: &mut [Option<LearnedLimits>]) {
    let store = &relay.store;
    let metrics = relay.alerts.metrics();
    let states: Vec<PoolState> = pools.iter().map(|p| p.state(clock)).collect();
    // Only the holder of a pool speaks for it in the store.
    let written: Vec<PoolState> = pools.iter().zip(&states).filter(|(p, _)| p.holds()).map(|(_, s)| s.clone()).collect();
    let now_ms = unix_ms();
    for (p, st) in pools.iter().zip(&states) {
        let (connection_cap, pace) = (p.sessions().cap(), st.rate_now);
        metrics.pool(
            &p.name,
            PoolGauges {
                pace,
                pace_ceiling: st.rate_configured,
                connection_cap: i64::from(connection_cap),
                max_connections: st.max_connections,
                connections: st.connections,
                paused_secs: (st.paused_until_ms - now_ms).max(0) as f64 / 1000.0,
            },
        );
    }
    let now = mamoru_core::now();
    let changed: Vec<(usize, LearnedLimits)> = pools
        .iter()
        .enumerate()
        .map(|(i, p)| (i, p.learned(clock)))
        .filter(|(i, l)| pools[*i].holds() && saved.get(*i).is_some_and(|s| s.as_ref() != Some(l)))
        .collect();
    let learned: Vec<LearnedLimits> = changed.iter().map(|(_, l)| LearnedLimits { updated_at: now, ..l.clone() }).collect();
    match blocking(store, move |s| {
        s.save_pool_states(&written)?;
        if !learned.is_empty() {
            s.save_learned_limits(&learned)?;
        }
        let expired = s.expire_due(now)?;
        Ok((expired, s.pending_shape(now)?, s.counters()?))
    })
    .await
    {
        Ok((n, pending, counters)) => {
            outbox_metrics(metrics, &relay.pools, pools, &pending, now);
            for c in &counters {
                metrics.stored(&c.name, &c.labels, c.value);
            }
            for (i, l) in changed {
                saved[i] = Some(l);
            }
            if n > 0 {
                tracing::warn!(rows = n, "expired undelivered mail");
            }
        }
        Err(e) => {
            metrics.store_error("relay", e.is_busy());
            tracing::warn!(error = %e, "cannot write pool state or learned limits, or expire rows");
        }
    }
}

/// Sets every pool × state × age gauge (zeros included, so a drained
/// bucket reads 0 rather than vanishing) and each pool's oldest row.
fn outbox_metrics(
    metrics: &Metrics,
    cfg: &BTreeMap<String, CarrierConfig>,
    pools: &[Arc<Pool>],
    pending: &[mamoru_store::relay::PendingRow],
    now: UnixTime,
) {
    let mut counts: BTreeMap<(&str, &str), Vec<i64>> = BTreeMap::new();
    let mut oldest: BTreeMap<&str, UnixTime> = BTreeMap::new();
    for r in pending {
        let pool = mamoru_core::carriers::pool_of(cfg, &r.domain);
        let slot = counts.entry((pool, r.state.as_str())).or_insert_with(|| vec![0; AGE_LABELS.len()]);
        for (a, b) in slot.iter_mut().zip(&r.buckets) {
            *a += b;
        }
        let o = oldest.entry(pool).or_insert(r.oldest);
        *o = (*o).min(r.oldest);
    }
    for p in pools {
        for state in ["queued", "sending"] {
            let b = counts.get(&(p.name.as_str(), state));
            for (i, age) in AGE_LABELS.iter().enumerate() {
                metrics.outbox_rows(&p.name, state, age, b.and_then(|b| b.get(i).copied()).unwrap_or(0));
            }
        }
        metrics.outbox_oldest(&p.name, oldest.get(p.name.as_str()).map_or(0, |o| now - o));
    }
}

/// Extends the leases of every row a pool holds to a full lease from now.
async fn renew_leases(store: &Arc<Store>, pools: &[Arc<Pool>], lease: i64) {
    let ids: Vec<OutboxId> = pools.iter().flat_map(|p| p.held().iter().copied().collect::<Vec<_>>()).collect();
    if ids.is_empty() {
        return;
    }
    let until = mamoru_core::now().saturating_add(lease);
    let count = ids.len();
    match blocking(store, move |s| s.renew_leases(&ids, until)).await {
        Ok(n) => tracing::debug!(held = count, renewed = n, "renewed leases"),
        // The rows come back after their lease, as if this relay had died.
        Err(e) => tracing::warn!(error = %e, rows = count, "cannot renew leases"),
    }
}

async fn run_pool(
    relay: Arc<Relay>,
    pool: Arc<Pool>,
    splicer: Arc<Splicer>,
    commits: mpsc::UnboundedSender<(OutboxId, OutcomeRecord)>,
    shutdown: CancellationToken,
    clock: Clock,
) {
    let (tx, rx) = mpsc::channel::<QueuedMail>(pool.queue_len());
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = JoinSet::new();
    for _ in 0..pool.cfg.max_connections {
        workers.spawn(
            worker(Arc::clone(&relay), Arc::clone(&pool), Arc::clone(&rx), commits.clone(), shutdown.clone(), clock)
                .in_current_span(),
        );
    }
    feeder(&relay, &pool, &splicer, &tx, &commits, &shutdown).await;
    drop(tx);
    while workers.join_next().await.is_some() {}
    // Rows still queued here were claimed but never tried.
    let mut left = Vec::new();
    {
        let mut rx = rx.lock().await;
        while let Ok(m) = rx.try_recv() {
            left.push(m.id);
        }
    }
    release(&pool, &commits, left, Release::Stopping);
}

/// Why claimed rows go back untried.
#[derive(Debug, Clone, Copy)]
enum Release {
    Stopping,
    HoldLost,
    /// Past the places the feeder reserved (a claim that returned more rows
    /// than it was asked for).
    NoPlace,
}

/// Puts claimed but untried rows back, due at once, instead of letting them
/// wait for their lease.
fn release(pool: &Pool, commits: &mpsc::UnboundedSender<(OutboxId, OutcomeRecord)>, ids: Vec<OutboxId>, why: Release) {
    if ids.is_empty() {
        return;
    }
    {
        let mut held = pool.held();
        for id in &ids {
            held.remove(id);
        }
    }
    tracing::info!(rows = ids.len(), "returning untried rows to the queue");
    let now = mamoru_core::now();
    for id in ids {
        let reason = match why {
            Release::Stopping => "relay stopped before trying this message",
            Release::HoldLost => "another relay holds the pool now",
            Release::NoPlace => "claimed past the relay's room",
        }
        .to_string();
        // If the committer is gone the rows come back after their lease.
        let _ = commits.send((id, OutcomeRecord::Retry { at: now, reason }));
    }
}

async fn feeder(
    relay: &Arc<Relay>,
    pool: &Pool,
    splicer: &Arc<Splicer>,
    tx: &mpsc::Sender<QueuedMail>,
    commits: &mpsc::UnboundedSender<(OutboxId, OutcomeRecord)>,
    shutdown: &CancellationToken,
) {
    let chunk = (pool.queue_len() / 2).max(1);
    let poll = Duration::from_millis(relay.settings.poll_interval_ms.max(1));
    loop {
        if !pool.holds() {
            tokio::select! {
                _ = pool.wake.notified() => {}
                _ = tokio::time::sleep(poll.max(Duration::from_millis(500))) => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        let permits = tokio::select! {
            p = tx.reserve_many(chunk) => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let now = mamoru_core::now();
        let lease = relay.settings.lease_secs;
        let filter = pool.filter.clone();
        let splicer = Arc::clone(splicer);
        // Alert rows are rendered here, on the blocking pool with the claim.
        let claimed = blocking(&relay.store, move |s| Ok(splicer.splice(s.claim_due_in(now, lease, chunk, &filter)?, now)));
        let (batch, dropped) = match claimed.await {
            Ok(b) => b,
            Err(e) => {
                relay.alerts.metrics().store_error("relay", e.is_busy());
                tracing::warn!(error = %e, "cannot claim outbox rows");
                drop(permits);
                tokio::select! {
                    _ = tokio::time::sleep(STORE_PAUSE) => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
        };
        let nothing_due = batch.is_empty() && dropped.is_empty();
        for d in dropped {
            // If the committer is gone the rows come back after their lease.
            let _ = commits.send(d);
        }
        if batch.is_empty() {
            drop(permits);
            if !nothing_due {
                continue;
            }
            tokio::select! {
                _ = pool.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        if shutdown.is_cancelled() {
            release(pool, commits, batch.iter().map(|m| m.id).collect(), Release::Stopping);
            return;
        }
        let mut batch = batch;
        if batch.len() > chunk {
            // Held rows past the reserved places would never be sent while
            // their leases were renewed: they go back to the queue.
            let extra: Vec<OutboxId> = batch.split_off(chunk).iter().map(|m| m.id).collect();
            tracing::error!(rows = extra.len(), asked = chunk, "a claim returned more rows than asked for");
            release(pool, commits, extra, Release::NoPlace);
        }
        pool.held().extend(batch.iter().map(|m| m.id));
        for (permit, mail) in permits.zip(batch) {
            permit.send(mail);
        }
    }
}

enum Next {
    Mail(QueuedMail),
    Idle,
    Stop,
}

async fn worker(
    relay: Arc<Relay>,
    pool: Arc<Pool>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<QueuedMail>>>,
    commits: mpsc::UnboundedSender<(OutboxId, OutcomeRecord)>,
    shutdown: CancellationToken,
    clock: Clock,
) {
    let mut hop = match NextHop::new(&pool.transport, &pool.hops, pool.cfg.messages_per_connection) {
        Ok(hop) => hop,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a delivery worker");
            return;
        }
    };
    let mut conn = Connected(false);
    let mut session = false;
    loop {
        // Over a lowered cap: this worker's session goes, between messages.
        if session && {
            let mut s = pool.sessions();
            let over = s.over();
            if over {
                s.release();
            }
            over
        } {
            session = false;
            hop.close().await;
            conn.sync(&hop, &pool);
        }
        if !session {
            if !pool.take_session(&shutdown, clock).await {
                break;
            }
            session = true;
        }
        let next = {
            let mut rx = rx.lock().await;
            // Shutdown first: a message already queued is returned, not started.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => Next::Stop,
                m = rx.recv() => m.map_or(Next::Stop, Next::Mail),
                _ = tokio::time::sleep(IDLE_CLOSE), if hop.is_connected() => Next::Idle,
            }
        };
        let mut mail = match next {
            Next::Mail(m) => m,
            Next::Idle => {
                hop.close().await;
                conn.sync(&hop, &pool);
                session = false;
                pool.give_back_session();
                continue;
            }
            Next::Stop => break,
        };
        // Wait for the shaper. Shutdown while waiting returns the row.
        let admitted = loop {
            let wait = {
                let mut s = pool.shaper();
                let admitted = s.admit(clock.now());
                if let Some(pace) = s.pace_changed() {
                    tracing::info!(learned_pace = pace, ceiling = s.ceiling(), "learned pace raised");
                }
                match admitted {
                    Ok(()) => break true,
                    Err(wait) => wait,
                }
            };
            if wait > PAUSE_CLOSES && hop.is_connected() {
                hop.close().await;
                conn.sync(&hop, &pool);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(wait.min(60.0))) => {}
                _ = shutdown.cancelled() => break false,
            }
        };
        if !admitted {
            release(&pool, &commits, vec![mail.id], Release::Stopping);
            break;
        }
        if !pool.holds() {
            // The hold lapsed while the row waited: the pool is (or is
            // about to be) another relay's, and so is the carrier's budget.
            release(&pool, &commits, vec![mail.id], Release::HoldLost);
            continue;
        }
        if let (Some(key), false) = (&relay.verp_key, mail.sender.is_empty()) {
            mail.sender = verp::encode(key, mail.id, &relay.hostname);
        }
        if pool.cfg.charset == Charset::Iso2022Jp {
            match charset::to_iso2022jp(&mail.content) {
                Ok(converted) => mail.content = converted,
                Err(e) => tracing::info!(outbox = mail.id.get(), reason = %e, "not re-encoded as ISO-2022-JP; sending in UTF-8"),
            }
        }
        if let Some(dkim) = &relay.dkim {
            match dkim.sign(&mail.content) {
                Ok(signed) => mail.content = signed,
                // Unsigned mail still beats no mail for a safety alert; the
                // signer only fails on a message without headers.
                Err(e) => tracing::warn!(outbox = mail.id.get(), error = %e, "cannot DKIM-sign; sending unsigned"),
            }
        }
        let (record, refused) = deliver(&mut hop, &pool, &relay, &mail, clock).await;
        conn.sync(&hop, &pool);
        if refused && !hop.is_connected() {
            session = false;
            pool.give_back_session();
        }
        pool.held().remove(&mail.id);
        if commits.send((mail.id, record)).is_err() {
            tracing::error!(outbox = mail.id.get(), "the committer is gone; the row comes back after its lease");
        }
    }
    hop.close().await;
    conn.sync(&hop, &pool);
    if session {
        pool.give_back_session();
    }
}

/// Whether this worker's connection is counted in the pool's gauge.
struct Connected(bool);

impl Connected {
    fn sync(&mut self, hop: &NextHop, pool: &Pool) {
        let now = hop.is_connected();
        if now != self.0 {
            pool.connections.fetch_add(if now { 1 } else { -1 }, Ordering::Relaxed);
            self.0 = now;
        }
    }
}

/// Delivers one message; also says whether the carrier refused the session.
async fn deliver(hop: &mut NextHop, pool: &Pool, relay: &Relay, mail: &QueuedMail, clock: Clock) -> (OutcomeRecord, bool) {
    let span = tracing::info_span!(
        "deliver",
        outbox = mail.id.get(),
        domain = mail.recipient.domain(),
        attempt = mail.attempts,
        message_id = %mail.message_id,
    );
    let metrics = relay.alerts.metrics();
    async move {
        let mut outcome = hop.deliver(mail).await;
        if let Some(a) = mail.alert {
            pool.touched_alerts.lock().unwrap_or_else(|e| e.into_inner()).insert(a.alert_id);
        }
        let code = |reason: &str| outcome::Reply::find(reason).map(|r| r.code);
        let now: UnixTime = mamoru_core::now();
        let mut refused = false;
        if let DeliveryOutcome::SessionRefused { reason } = outcome {
            refused = true;
            let reason = outcome::scrub(&reason, &mail.recipient);
            pool.pushed_back(metrics, PushBackSignal::Sessions, &reason);
            let lowered = {
                let mut s = pool.sessions();
                let lowered = s.on_refusal(clock.now());
                if let Some(cap) = s.cap_changed() {
                    tracing::info!(learned_connections = cap, ceiling = s.ceiling(), "learned connection cap lowered");
                }
                lowered
            };
            if lowered {
                // One session too many: the message goes on another session
                // at once, the pool's pace is untouched.
                metrics.delivery(&pool.name, Delivery::SessionRefused, code(&reason));
                tracing::warn!(%reason, "carrier refused one more session");
                return (OutcomeRecord::Retry { at: now, reason }, true);
            }
            // Refused with no other session open: the carrier counts more
            // sessions than this pool's (another sender's, or ours it has
            // not seen end yet), or is down. Still too many sessions, not
            // too fast: the pool (a smarthost) pauses and keeps its pace;
            // with mx only this domain's message waits.
            if pool.transport == Transport::Mx {
                outcome = DeliveryOutcome::Retry { reason };
            } else {
                let pause = pool.shaper().on_refused_alone(clock.now(), backoff::random_jitter());
                metrics.delivery(&pool.name, Delivery::SessionRefused, code(&reason));
                tracing::warn!(%reason, pause_ms = (pause * 1000.0) as u64, "carrier refused the pool's only session; pool paused");
                return (OutcomeRecord::Retry { at: now.saturating_add(pause.ceil() as i64), reason }, true);
            }
        }
        let record = match outcome {
            DeliveryOutcome::Sent => {
                pool.shaper().on_success(clock.now());
                pool.sent.fetch_add(1, Ordering::Relaxed);
                metrics.delivery(&pool.name, Delivery::Sent, Some(250));
                tracing::debug!("delivered");
                OutcomeRecord::Sent
            }
            DeliveryOutcome::Throttled { reason } => {
                let reason = outcome::scrub(&reason, &mail.recipient);
                pool.pushed_back(metrics, PushBackSignal::Pace, &reason);
                let (pause, rate_now) = {
                    let mut s = pool.shaper();
                    let t = clock.now();
                    let pause = s.on_throttle(t, backoff::random_jitter());
                    if let Some(pace) = s.pace_changed() {
                        tracing::info!(learned_pace = pace, ceiling = s.ceiling(), "learned pace lowered");
                    }
                    (pause, s.rate_now(t + pause))
                };
                metrics.delivery(&pool.name, Delivery::Throttled, code(&reason));
                tracing::warn!(%reason, pause_ms = (pause * 1000.0) as u64, rate_now, "carrier pushed back; pool paused");
                // The row is due again when the pool resumes.
                OutcomeRecord::Retry { at: now.saturating_add(pause.ceil() as i64), reason }
            }
            DeliveryOutcome::Retry { reason } | DeliveryOutcome::SessionRefused { reason } => {
                let reason = outcome::scrub(&reason, &mail.recipient);
                let s = &relay.settings;
                let delay =
                    backoff::retry_delay(mail.attempts, s.retry_base_secs, s.retry_max_secs, backoff::random_jitter());
                metrics.delivery(&pool.name, Delivery::Deferred, code(&reason));
                tracing::warn!(%reason, retry_in_secs = delay, "delivery deferred");
                OutcomeRecord::Retry { at: now.saturating_add(delay), reason }
            }
            DeliveryOutcome::Failed { reason } => {
                // Answered without a push-back: it counts towards the rate
                // the pool delivered, as a sent message does.
                pool.shaper().on_success(clock.now());
                let reason = outcome::scrub(&reason, &mail.recipient);
                metrics.delivery(&pool.name, Delivery::Failed, code(&reason));
                if outcome::is_unknown_user(&reason) {
                    tracing::warn!(%reason, "recipient unknown; suspending the address");
                    OutcomeRecord::Undeliverable { reason }
                } else {
                    tracing::warn!(%reason, "delivery failed permanently");
                    OutcomeRecord::Failed { reason }
                }
            }
        };
        (record, refused)
    }
    .instrument(span)
    .await
}

async fn committer(store: Arc<Store>, metrics: Arc<Metrics>, mut rx: mpsc::UnboundedReceiver<(OutboxId, OutcomeRecord)>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(x) => group.push(x),
                Err(_) => break,
            }
        }
        let group = Arc::new(group);
        for attempt in 1..=3 {
            let g = Arc::clone(&group);
            match blocking(&store, move |s| s.record_outcomes(&g, mamoru_core::now())).await {
                Ok(()) => break,
                Err(e) if attempt < 3 => {
                    metrics.store_retry("relay", e.is_busy());
                    tracing::warn!(error = %e, rows = group.len(), "cannot record delivery outcomes; retrying");
                    tokio::time::sleep(STORE_PAUSE).await;
                }
                // The rows stay leased; when the lease runs out they are
                // tried again. At least once: a sent message may go out
                // twice, identically.
                Err(e) => {
                    metrics.store_error("relay", e.is_busy());
                    tracing::error!(error = %e, rows = group.len(), "cannot record delivery outcomes");
                }
            }
        }
    }
}
