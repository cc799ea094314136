//! Store operations of the carrier-aware relay.
//!
//! - Claims are per carrier pool, that is per set of recipient domains, so a
//!   throttled pool's backlog never stands in the way of another pool's rows.
//! - Outcomes are committed in groups: one transaction (one fsync) for all
//!   the replies that arrived while the previous group was being written.
//!   A crash between a 250 and its commit brings the row back after its
//!   lease, which is the at-least-once contract (same Message-ID).
//! - A recipient the carrier refuses as unknown is suspended in the same
//!   transaction, and its other queued mail is failed with it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use mamoru_core::UnixTime;
use mamoru_core::mail::{MailKind, OutgoingMail};
use mamoru_core::token::Nonce;
use crate::db::{Conn, OptionalExt, Row, ToValue, Value, indexed_by, skip_locked};
use crate::params;

use crate::states::OutboxState;
use crate::{AlertId, AlertRef, OutboxId, QueuedMail, Result, Store, StoreError, SubscriberId};

/// Which recipient domains a claim takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainFilter {
    /// Exactly these domains (lower case).
    Only(Vec<String>),
    /// Every domain but these (the default pool).
    Except(Vec<String>),
}

/// The decision about one claimed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeRecord {
    Sent,
    Retry { at: UnixTime, reason: String },
    Failed { reason: String },
    /// Failed because the recipient does not exist: the subscriber is
    /// suspended as undeliverable and its other queued mail failed.
    Undeliverable { reason: String },
}

/// The live state of one carrier pool, as the relay last wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolState {
    pub name: String,
    pub rate_configured: f64,
    pub rate_now: f64,
    /// Unix time in milliseconds; 0 or in the past when not paused.
    pub paused_until_ms: i64,
    pub connections: i64,
    pub max_connections: i64,
    /// 421s, refused and reset connections seen since the relay started.
    pub throttles: i64,
    /// Messages accepted since the relay started.
    pub sent: i64,
    pub updated_at: UnixTime,
}

/// Which of the two push-back signals came ([`PushBack::signal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushBackSignal {
    /// "Too many sessions": a session refused as it opened.
    Sessions,
    /// "Too fast": a pace push-back on a session that carried mail.
    Pace,
}

impl PushBackSignal {
    pub fn as_str(self) -> &'static str {
        match self {
            PushBackSignal::Sessions => "sessions",
            PushBackSignal::Pace => "pace",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "sessions" => Some(PushBackSignal::Sessions),
            "pace" => Some(PushBackSignal::Pace),
            _ => None,
        }
    }
}

/// The last push-back a pool met: when, which signal, and the carrier's
/// reply code and enhanced status code (0 and empty when the push-back had
/// no reply, e.g. a reset connection). Never the reply's text: it may echo
/// an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushBack {
    pub at: UnixTime,
    pub signal: PushBackSignal,
    pub code: u16,
    /// `4.7.0`, or empty.
    pub enhanced: String,
}

/// A level at which a carrier pushed back: a session count or a pace, how
/// many push-backs came near it, and when the last one came.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearnedMark {
    pub level: f64,
    pub hits: u32,
    pub at: UnixTime,
}

/// What the relay learned about one pool's carrier, kept across restarts
/// (`relay_learned`).
#[derive(Debug, Clone, PartialEq)]
pub struct LearnedLimits {
    pub pool: String,
    /// The learned connection cap, and the pool's `max_connections` then.
    pub connections: u32,
    pub connections_ceiling: u32,
    /// The learned pace (messages per second; 0 = no limit), and the pool's
    /// `rate_per_second` then.
    pub pace: f64,
    pub pace_ceiling: f64,
    /// Where sessions were refused (the session count).
    pub sessions_mark: Option<LearnedMark>,
    /// Where the pace was pushed back.
    pub pace_mark: Option<LearnedMark>,
    pub last_push_back: Option<PushBack>,
    pub updated_at: UnixTime,
}

/// Upper bounds of the age buckets of [`Store::outbox_shape`], in minutes,
/// as Postfix's qshape has them; a last bucket holds everything older.
pub const AGE_BUCKETS_MIN: [i64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// Outbox rows of one domain and state, counted per age bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeRow {
    pub domain: String,
    pub state: OutboxState,
    /// `AGE_BUCKETS_MIN.len() + 1` counts, youngest first.
    pub buckets: Vec<i64>,
}

/// Outbox rows still to deliver (`queued` or `sending`) of one domain and
/// state, counted per age bucket, with the oldest row's queue time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRow {
    pub domain: String,
    pub state: String,
    /// `AGE_BUCKETS_MIN.len() + 1` counts, youngest first.
    pub buckets: Vec<i64>,
    /// `created_at` of the oldest of these rows.
    pub oldest: UnixTime,
}

/// A row as a claim's `RETURNING` gives it: id, kind, sender, sealed
/// recipient, Message-ID, sealed content, attempts, alert id, subscriber id.
pub(crate) type ClaimedRow = (OutboxId, MailKind, String, Vec<u8>, String, Vec<u8>, i64, i64, i64);

pub(crate) fn claimed_row(r: &Row) -> Result<ClaimedRow> {
    let kind: String = r.get(1)?;
    // A kind this build does not know is an error, never a guess.
    let kind = MailKind::parse(&kind).ok_or_else(|| StoreError::Column(format!("unknown mail kind {kind:?}")))?;
    Ok((r.get(0)?, kind, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
}

/// Why a claimed alert row was failed instead of returned.
const SUBSCRIBER_GONE: &str = "the subscriber is gone";

impl Store {
    /// Queues many rendered mails in one transaction, for no subscriber
    /// (tests and benchmarks fill the outbox with it). Returns the row ids.
    pub fn queue_many(&self, mails: &[OutgoingMail], priority: i64, now: UnixTime, expires_at: UnixTime) -> Result<Vec<OutboxId>> {
        let tx = self.begin()?;
        let mut ids = Vec::with_capacity(mails.len());
        for m in mails {
            ids.push(self.insert_outbox(&tx, m, None, priority, now, expires_at)?);
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Claims up to `limit` due rows whose recipient domain passes `filter`,
    /// leased for `lease_secs`: first rows whose lease ran out (a relay died
    /// holding them), then queued rows domain by domain, each domain in
    /// priority order. [`DomainFilter::Only`] takes its domains in the order
    /// given; [`DomainFilter::Except`] in the order of each domain's first
    /// row (priority, then age). Expired rows are left to
    /// [`Store::expire_due`] and never returned.
    pub fn claim_due_in(&self, now: UnixTime, lease_secs: i64, limit: usize, filter: &DomainFilter) -> Result<Vec<QueuedMail>> {
        let claimed = self.serially(|| self.claim_rows(now, lease_secs, limit, filter))?;
        self.open_claimed(claimed)
    }

    fn claim_rows(
        &self,
        now: UnixTime,
        lease_secs: i64,
        limit: usize,
        filter: &DomainFilter,
    ) -> Result<Vec<(ClaimedRow, Option<AlertRef>)>> {
        let tx = self.begin_rows()?;
        let mut ids = lapsed_rows(&tx, now, limit, filter)?;
        match filter {
            DomainFilter::Only(domains) => queued_rows(&tx, now, limit, domains, &mut ids)?,
            DomainFilter::Except(excluded) => {
                if ids.len() < limit {
                    let mut heads = queued_heads(&tx)?;
                    heads.retain(|(domain, _, _)| !excluded.contains(domain));
                    heads.sort_by_key(|&(_, priority, id)| (std::cmp::Reverse(priority), id));
                    let domains: Vec<String> = heads.into_iter().map(|(domain, _, _)| domain).collect();
                    queued_rows(&tx, now, limit, &domains, &mut ids)?;
                }
            }
        }
        let mut claimed: Vec<ClaimedRow> = Vec::with_capacity(ids.len());
        // A statement per chunk of rows, not per row: on PostgreSQL each
        // statement is a round trip.
        for chunk in ids.chunks(BATCH) {
            let sql = format!(
                "UPDATE outbox SET state = 'sending', lease_until = ?1, attempts = attempts + 1 WHERE id IN ({})
                 RETURNING id, kind, sender, recipient_sealed, message_id, content_sealed, attempts, alert_id, subscriber_id",
                id_marks(2, chunk.len())
            );
            let mut args = vec![Value::Int(now + lease_secs)];
            args.extend(chunk.iter().map(|id| Value::Int(id.get())));
            let mut rows = tx.query_map(&sql, &args, claimed_row)?;
            // In the order the rows were chosen (priority, then age).
            let order: std::collections::HashMap<OutboxId, usize> = chunk.iter().enumerate().map(|(i, id)| (*id, i)).collect();
            rows.sort_by_key(|r| order.get(&r.0).copied().unwrap_or(usize::MAX));
            claimed.extend(rows);
        }
        // Then the copies of published alerts that wait in their own table
        // (the few rows above are retries, replies and previews: a reply to
        // a registration is awaited by someone holding the phone).
        let room = limit.saturating_sub(claimed.len());
        if room > 0 {
            claimed.extend(crate::queue::claim(&tx, now, now + lease_secs, room, filter)?);
        }
        let claimed = attach_alerts(&tx, claimed, now)?;
        tx.commit()?;
        Ok(claimed)
    }

    /// Opens claimed rows for delivery, after the claim committed (AEAD
    /// work stays outside the write lock). An alert row has no content.
    pub(crate) fn open_claimed(&self, rows: Vec<(ClaimedRow, Option<AlertRef>)>) -> Result<Vec<QueuedMail>> {
        let sealer = self.sealer();
        rows.into_iter()
            .map(|((id, kind, sender, rcpt, message_id, content, attempts, _, _), alert)| {
                let content = if alert.is_some() { Vec::new() } else { sealer.open(b"content", &content)? };
                Ok(QueuedMail { id, kind, sender, recipient: sealer.open_address(&rcpt)?, message_id, content, attempts, alert })
            })
            .collect()
    }

    /// Extends the lease of rows a live relay still holds (waiting in its
    /// memory queue behind a paused pool, or in flight) to `until`, so they
    /// are not claimed a second time while it is alive. Only rows still
    /// leased count; returns how many were extended.
    pub fn renew_leases(&self, ids: &[OutboxId], until: UnixTime) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.serially(|| self.renew_leases_once(ids, until))
    }

    fn renew_leases_once(&self, ids: &[OutboxId], until: UnixTime) -> Result<usize> {
        let tx = self.begin_rows()?;
        let mut n = 0;
        for chunk in ids.chunks(BATCH) {
            // A row locked now is being finished by the relay's committer
            // (or claimed again by another node, its lease already over):
            // it needs no renewal, and waiting for it while holding the rows
            // renewed so far could deadlock with that outcome group.
            let sql = format!(
                "UPDATE outbox SET lease_until = ?1
                 WHERE id IN (SELECT id FROM outbox WHERE state = 'sending' AND lease_until < ?1 AND id IN ({}){})",
                id_marks(2, chunk.len()),
                skip_locked(&tx)
            );
            let mut args = vec![Value::Int(until)];
            args.extend(chunk.iter().map(|id| Value::Int(id.get())));
            n += tx.execute(&sql, &args)?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// Marks queued rows past their expiry (and leased rows whose lease and
    /// expiry both ran out) as expired, waiting copies of alerts included: a
    /// stale alert does harm. Returns how many.
    pub fn expire_due(&self, now: UnixTime) -> Result<usize> {
        self.serially(|| {
            let tx = self.begin_rows()?;
            let n = expire(&tx, now)?;
            tx.commit()?;
            Ok(n)
        })
    }

    /// Commits a group of outcomes in one transaction, tried again if
    /// PostgreSQL aborts it (a deadlock with a lease renewal of the same
    /// rows, or a serialization failure).
    pub fn record_outcomes(&self, outcomes: &[(OutboxId, OutcomeRecord)], now: UnixTime) -> Result<()> {
        self.serially(|| self.record_outcomes_once(outcomes, now))
    }

    fn record_outcomes_once(&self, outcomes: &[(OutboxId, OutcomeRecord)], now: UnixTime) -> Result<()> {
        // Suspending an undeliverable subscriber reads and changes rows
        // beyond the group's own: that needs the serializable transaction.
        let suspends = outcomes.iter().any(|(_, o)| matches!(o, OutcomeRecord::Undeliverable { .. }));
        let tx = if suspends { self.begin()? } else { self.begin_rows()? };
        // Most outcomes are acceptances: finished a chunk per statement.
        let sent: Vec<OutboxId> = outcomes.iter().filter(|(_, o)| *o == OutcomeRecord::Sent).map(|(id, _)| *id).collect();
        for chunk in sent.chunks(BATCH) {
            let sql = format!(
                "UPDATE outbox SET state = ?1, done_at = ?2, last_error = '', lease_until = 0
                 WHERE state IN ('sending', 'queued') AND id IN ({})",
                id_marks(3, chunk.len())
            );
            let mut args = vec![OutboxState::Sent.to_value(), Value::Int(now)];
            args.extend(chunk.iter().map(|id| Value::Int(id.get())));
            tx.execute(&sql, &args)?;
        }
        for (id, outcome) in outcomes {
            match outcome {
                OutcomeRecord::Sent => {}
                OutcomeRecord::Failed { reason } => finish(&tx, *id, OutboxState::Failed, now, reason)?,
                OutcomeRecord::Retry { at, reason } => {
                    tx.prepare_cached(
                        "UPDATE outbox SET state = 'queued', next_attempt_at = ?1, last_error = ?2, lease_until = 0
                         WHERE id = ?3 AND state = 'sending'",
                    )?
                    .execute(params![at, reason, id])?;
                }
                OutcomeRecord::Undeliverable { reason } => {
                    finish(&tx, *id, OutboxState::Failed, now, reason)?;
                    let subscriber: Option<i64> = tx
                        .query_row("SELECT subscriber_id FROM outbox WHERE id = ?1", params![id], |r| r.get(0))
                        .optional()?;
                    // 0: a mail to an admin or an outside address, not a subscriber's.
                    if let Some(subscriber) = subscriber.filter(|&s| s > 0) {
                        suspend_undeliverable(&tx, SubscriberId::new(subscriber), now)?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Suspends a subscriber whose address the carrier refused as unknown,
    /// and fails its other queued mail, so nothing more goes to a dead
    /// address. Idempotent: the first refusal's time is kept.
    pub fn mark_undeliverable(&self, subscriber: SubscriberId, now: UnixTime) -> Result<()> {
        self.serially(|| {
            let tx = self.begin()?;
            suspend_undeliverable(&tx, subscriber, now)?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Replaces the stored live state of the given pools.
    pub fn save_pool_states(&self, states: &[PoolState]) -> Result<()> {
        self.serially(|| {
            let tx = self.begin()?;
            for p in states {
                tx.prepare_cached(
                    "INSERT INTO relay_pools (name, rate_configured, rate_now, paused_until_ms, connections, max_connections,
                                              throttles, sent, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (name) DO UPDATE SET rate_configured = excluded.rate_configured, rate_now = excluded.rate_now,
                         paused_until_ms = excluded.paused_until_ms, connections = excluded.connections,
                         max_connections = excluded.max_connections, throttles = excluded.throttles,
                         sent = excluded.sent, updated_at = excluded.updated_at",
                )?
                .execute(params![
                    p.name,
                    p.rate_configured,
                    p.rate_now,
                    p.paused_until_ms,
                    p.connections,
                    p.max_connections,
                    p.throttles,
                    p.sent,
                    p.updated_at
                ])?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// The live pool states, by name.
    pub fn pool_states(&self) -> Result<Vec<PoolState>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT name, rate_configured, rate_now, paused_until_ms, connections, max_connections, throttles, sent, updated_at
             FROM relay_pools ORDER BY name",
        )?;
        let rows = stmt.query_map(params![], |r| {
            Ok(PoolState {
                name: r.get(0)?,
                rate_configured: r.get(1)?,
                rate_now: r.get(2)?,
                paused_until_ms: r.get(3)?,
                connections: r.get(4)?,
                max_connections: r.get(5)?,
                throttles: r.get(6)?,
                sent: r.get(7)?,
                updated_at: r.get(8)?,
            })
        })?;
        rows.collect::<Result<_>>()
    }

    /// Replaces the stored learned limits of the given pools, in one
    /// transaction.
    pub fn save_learned_limits(&self, limits: &[LearnedLimits]) -> Result<()> {
        self.serially(|| {
            let tx = self.begin()?;
            for l in limits {
                let mark = |m: Option<LearnedMark>| m.map_or((0.0, 0, 0), |m| (m.level, i64::from(m.hits), m.at));
                let (s_level, s_hits, s_at) = mark(l.sessions_mark);
                let (p_level, p_hits, p_at) = mark(l.pace_mark);
                let (pb_at, pb_signal, pb_code, pb_enhanced) = match &l.last_push_back {
                    Some(p) => (p.at, p.signal.as_str(), i64::from(p.code), p.enhanced.as_str()),
                    None => (0, "", 0, ""),
                };
                tx.prepare_cached(
                    "INSERT INTO relay_learned (pool, connections, connections_ceiling, pace, pace_ceiling,
                         sessions_mark_level, sessions_mark_hits, sessions_mark_at, pace_mark_level, pace_mark_hits, pace_mark_at,
                         push_back_at, push_back_signal, push_back_code, push_back_enhanced, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
                     ON CONFLICT (pool) DO UPDATE SET connections = excluded.connections,
                         connections_ceiling = excluded.connections_ceiling, pace = excluded.pace,
                         pace_ceiling = excluded.pace_ceiling, sessions_mark_level = excluded.sessions_mark_level,
                         sessions_mark_hits = excluded.sessions_mark_hits, sessions_mark_at = excluded.sessions_mark_at,
                         pace_mark_level = excluded.pace_mark_level, pace_mark_hits = excluded.pace_mark_hits,
                         pace_mark_at = excluded.pace_mark_at, push_back_at = excluded.push_back_at,
                         push_back_signal = excluded.push_back_signal, push_back_code = excluded.push_back_code,
                         push_back_enhanced = excluded.push_back_enhanced, updated_at = excluded.updated_at",
                )?
                .execute(params![
                    l.pool,
                    i64::from(l.connections),
                    i64::from(l.connections_ceiling),
                    l.pace,
                    l.pace_ceiling,
                    s_level as i64,
                    s_hits,
                    s_at,
                    p_level,
                    p_hits,
                    p_at,
                    pb_at,
                    pb_signal,
                    pb_code,
                    pb_enhanced,
                    l.updated_at
                ])?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// The stored learned limits of every pool, by name: what the relay
    /// starts from, and what `mamoru queue` and the admin panel show.
    pub fn learned_limits(&self) -> Result<Vec<LearnedLimits>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT pool, connections, connections_ceiling, pace, pace_ceiling,
                    sessions_mark_level, sessions_mark_hits, sessions_mark_at, pace_mark_level, pace_mark_hits, pace_mark_at,
                    push_back_at, push_back_signal, push_back_code, push_back_enhanced, updated_at
             FROM relay_learned ORDER BY pool",
        )?;
        let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
        let mark = |level: f64, hits: i64, at: i64| (level > 0.0).then_some(LearnedMark { level, hits: count(hits), at });
        let rows = stmt.query_map(params![], |r| {
            let signal: String = r.get(12)?;
            let last_push_back = PushBackSignal::parse(&signal).map(|signal| -> Result<PushBack> {
                Ok(PushBack {
                    at: r.get(11)?,
                    signal,
                    code: u16::try_from(r.get::<i64>(13)?).unwrap_or(0),
                    enhanced: r.get(14)?,
                })
            });
            Ok(LearnedLimits {
                pool: r.get(0)?,
                connections: count(r.get(1)?),
                connections_ceiling: count(r.get(2)?),
                pace: r.get(3)?,
                pace_ceiling: r.get(4)?,
                sessions_mark: mark(r.get::<i64>(5)? as f64, r.get(6)?, r.get(7)?),
                pace_mark: mark(r.get(8)?, r.get(9)?, r.get(10)?),
                last_push_back: last_push_back.transpose()?,
                updated_at: r.get(15)?,
            })
        })?;
        rows.collect::<Result<_>>()
    }

    /// Takes or keeps the carrier pools `pools` for the relay `node` until
    /// `until`, in one transaction, and returns the ones it holds after it.
    /// A pool is taken when no relay holds it or its holder's hold ended at
    /// or before `now`; a pool another relay holds stays that relay's. Only
    /// the holder claims a pool's rows, so a carrier's sessions and pace
    /// are spent by one relay at a time however many share the database.
    pub fn hold_pools(&self, node: &str, pools: &[String], now: UnixTime, until: UnixTime) -> Result<Vec<String>> {
        // Two relays taking the same lapsed pool at once: PostgreSQL aborts
        // one of the two transactions, which then sees the other's hold.
        self.serially(|| {
            let tx = self.begin()?;
            {
                let mut take = tx.prepare_cached(
                    "INSERT INTO relay_holders (pool, node, held_until) VALUES (?1, ?2, ?3)
                     ON CONFLICT (pool) DO UPDATE SET node = excluded.node, held_until = excluded.held_until
                     WHERE relay_holders.node = excluded.node OR relay_holders.held_until <= ?4",
                )?;
                for pool in pools {
                    take.execute(params![pool, node, until, now])?;
                }
            }
            let held = {
                let mut stmt = tx.prepare_cached("SELECT pool FROM relay_holders WHERE node = ?1 ORDER BY pool")?;
                stmt.query_map(params![node], |r| r.get(0))?.collect::<Result<Vec<String>>>()?
            };
            tx.commit()?;
            Ok(held.into_iter().filter(|p| pools.contains(p)).collect())
        })
    }

    /// Gives up every pool `node` holds, so another relay takes them over at
    /// once instead of after the hold lapses.
    pub fn let_go_pools(&self, node: &str) -> Result<usize> {
        self.conn()?.execute("DELETE FROM relay_holders WHERE node = ?1", params![node])
    }

    /// Who holds which pool, until when: (pool, node, held until), by pool.
    pub fn pool_holders(&self) -> Result<Vec<(String, String, UnixTime)>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT pool, node, held_until FROM relay_holders ORDER BY pool")?;
        stmt.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect()
    }

    /// Like [`Store::outbox_shape`] for the rows still to deliver only
    /// (`queued`, `sending`): bounded by the queue, not by the history. The
    /// relay's snapshot reads it once a second, so each state is one pass
    /// over an index that holds that state's rows alone: the queued rows
    /// from `outbox_pool_due` (which ends with `created_at`, so the rows
    /// themselves are not read), grouped by domain in the index's order
    /// without a sort; the leased rows (at most what the relays claimed)
    /// from `outbox_sending`; the copies waiting in `alert_queue`, counted
    /// as queued, from that table. Per state and domain, the rows younger than
    /// each bucket's bound are counted, and a bucket is the difference of
    /// two such counts.
    pub fn pending_shape(&self, now: UnixTime) -> Result<Vec<PendingRow>> {
        let conn = self.conn()?;
        let younger: String = AGE_BUCKETS_MIN
            .iter()
            .map(|m| format!(", CAST(SUM(CASE WHEN created_at > ?1 - {} THEN 1 ELSE 0 END) AS BIGINT)", m * 60))
            .collect();
        let mut out: Vec<PendingRow> = Vec::new();
        // The copies waiting in `alert_queue` count as queued: read in the
        // order of its key, grouped per domain.
        let sources = [
            ("queued", format!("outbox {} WHERE state = 'queued'", indexed_by(&conn, "outbox_pool_due"))),
            ("sending", format!("outbox {} WHERE state = 'sending'", indexed_by(&conn, "outbox_sending"))),
            ("queued", "alert_queue".to_string()),
        ];
        for (state, source) in sources {
            let sql = format!("SELECT domain, COUNT(*), MIN(created_at){younger} FROM {source} GROUP BY domain");
            for r in conn.query_map(&sql, params![now], |r| Ok(Row::clone(r)))? {
                let r = &r;
                let total: i64 = r.get(1)?;
                let mut buckets = Vec::with_capacity(AGE_BUCKETS_MIN.len() + 1);
                let mut below = 0;
                for i in 0..AGE_BUCKETS_MIN.len() {
                    let younger: i64 = r.get(3 + i)?;
                    buckets.push(younger - below);
                    below = younger;
                }
                buckets.push(total - below);
                out.push(PendingRow { domain: r.get(0)?, state: state.to_owned(), buckets, oldest: r.get(2)? });
            }
        }
        out.sort_by(|a, b| (&a.domain, &a.state).cmp(&(&b.domain, &b.state)));
        // A domain with queued rows in both tables: one row.
        out.dedup_by(|b, a| {
            let same = a.domain == b.domain && a.state == b.state;
            if same {
                a.buckets.iter_mut().zip(&b.buckets).for_each(|(x, y)| *x += y);
                a.oldest = a.oldest.min(b.oldest);
            }
            same
        });
        Ok(out)
    }

    /// Of the published alerts `ids`, those with no copy left to deliver
    /// (every row sent, failed or expired), with their publication time.
    pub fn alerts_finished(&self, ids: &[AlertId]) -> Result<Vec<(AlertId, UnixTime)>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT published_at FROM alerts WHERE id = ?1 AND state = 'published'
             AND NOT EXISTS (SELECT 1 FROM outbox WHERE {} AND state IN ('queued', 'sending'))
             AND NOT EXISTS (SELECT 1 FROM alert_queue WHERE alert_id = ?1)",
            crate::alerts::ALERT_ROWS
        ))?;
        let mut out = Vec::new();
        for &id in ids {
            if let Some(at) = stmt.query_row(params![id], |r| r.get::<i64>(0)).optional()? {
                out.push((id, at));
            }
        }
        Ok(out)
    }

    /// Outbox rows per domain × state × age (since queued), like qshape.
    pub fn outbox_shape(&self, now: UnixTime) -> Result<Vec<ShapeRow>> {
        let conn = self.conn()?;
        let mut bucket_sql = String::from("CASE");
        for (i, m) in AGE_BUCKETS_MIN.iter().enumerate() {
            bucket_sql.push_str(&format!(" WHEN ?1 - created_at < {} THEN {i}", m * 60));
        }
        bucket_sql.push_str(&format!(" ELSE {} END", AGE_BUCKETS_MIN.len()));
        let sql = format!(
            "SELECT domain, state, {bucket_sql} AS bucket, COUNT(*)
             FROM (SELECT domain, state, created_at FROM outbox
                   UNION ALL SELECT domain, 'queued', created_at FROM alert_queue) AS o
             GROUP BY domain, state, bucket ORDER BY domain, state"
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params![now], |r| Ok((r.get::<String>(0)?, r.get::<OutboxState>(1)?, r.get::<i64>(2)?, r.get::<i64>(3)?)))?;
        let mut out: Vec<ShapeRow> = Vec::new();
        for row in rows {
            let (domain, state, bucket, n) = row?;
            let same = out.last().is_some_and(|l| l.domain == domain && l.state == state);
            if !same {
                out.push(ShapeRow { domain, state, buckets: vec![0; AGE_BUCKETS_MIN.len() + 1] });
            }
            if let (Some(last), Ok(b)) = (out.last_mut(), usize::try_from(bucket)) {
                if let Some(slot) = last.buckets.get_mut(b) {
                    *slot += n;
                }
            }
        }
        Ok(out)
    }
}

/// Inside a claim's transaction: a row of a published alert has no content,
/// address, sender or Message-ID (see `Store::publish_alert`); it gets the
/// subscriber's sealed address and footer-link nonce and the alert's sender
/// and Message-ID domain, for the relay to render it. If the subscriber
/// vanished meanwhile (deletion removes queued rows, so only a row leased at
/// that moment can see this), the row is failed here and not returned.
pub(crate) fn attach_alerts(
    tx: &Conn<'_>,
    rows: Vec<ClaimedRow>,
    now: UnixTime,
) -> Result<Vec<(ClaimedRow, Option<AlertRef>)>> {
    let mut out = Vec::with_capacity(rows.len());
    // Per alert: the sender and Message-ID domain of its copies.
    let mut identities: HashMap<i64, Option<(String, String)>> = HashMap::new();
    // The subscribers' nonces and sealed addresses, a statement per chunk
    // (on PostgreSQL a statement per copy was a round trip per copy, and
    // half the time of a drain of an alert's copies).
    let wanted: Vec<i64> = rows.iter().filter(|r| r.7 != 0 && r.5.is_empty()).map(|r| r.8).collect();
    let mut subscribers: HashMap<i64, (Vec<u8>, Vec<u8>)> = HashMap::with_capacity(wanted.len());
    for chunk in wanted.chunks(BATCH) {
        let sql = format!("SELECT id, link_nonce, addr_sealed FROM subscribers WHERE id IN ({})", id_marks(1, chunk.len()));
        let args: Vec<Value> = chunk.iter().map(|id| Value::Int(*id)).collect();
        for (id, nonce, addr) in tx.query_map(&sql, &args, |r| Ok((r.get::<i64>(0)?, r.get(1)?, r.get(2)?)))? {
            subscribers.insert(id, (nonce, addr));
        }
    }
    for row in rows {
        let (id, alert_id, subscriber_id) = (row.0, row.7, row.8);
        // Alert rows queued with their full content (before the splice) are
        // sent as they are; 0 is "not an alert's copy".
        if alert_id == 0 || !row.5.is_empty() {
            out.push((row, None));
            continue;
        }
        let (alert_id, subscriber_id) = (AlertId::new(alert_id), SubscriberId::new(subscriber_id));
        match subscribers.get(&subscriber_id.get()).and_then(|(n, addr)| Some((Nonce::try_from(n.as_slice()).ok()?, addr.clone()))) {
            Some((link_nonce, addr)) => {
                let mut row = row;
                // Copies are queued without address, sender and Message-ID
                // (see `Store::publish_alert`); one queued with them by an
                // older version keeps its own.
                if row.3.is_empty() {
                    row.3 = addr;
                }
                if row.4.is_empty() {
                    let identity = match identities.entry(alert_id.get()) {
                        Entry::Occupied(e) => e.into_mut(),
                        Entry::Vacant(e) => e.insert(
                            tx.prepare_cached("SELECT sender, mail_domain FROM alerts WHERE id = ?1")?
                                .query_row(params![alert_id], |r| Ok((r.get(0)?, r.get(1)?)))
                                .optional()?,
                        ),
                    };
                    // An alert gone from under its copies (a hand-edited
                    // database) leaves them as they are: the relay fails
                    // each as it finds no alert to render, and other mail
                    // flows on.
                    if let Some((sender, domain)) = identity {
                        row.2 = sender.clone();
                        row.4 = format!("alert.{alert_id}.{subscriber_id}@{domain}");
                    }
                }
                out.push((row, Some(AlertRef { alert_id, subscriber_id, link_nonce })))
            }
            None => finish(tx, id, OutboxState::Failed, now, SUBSCRIBER_GONE)?,
        }
    }
    Ok(out)
}

/// Why a row or a waiting copy expired.
pub(crate) const EXPIRED_REASON: &str = "expired before delivery";

/// Inside a transaction: see [`Store::expire_due`].
pub(crate) fn expire(tx: &Conn<'_>, now: UnixTime) -> Result<usize> {
    let rows = tx.execute(
        "UPDATE outbox SET state = 'expired', done_at = ?1, last_error = ?2, lease_until = 0
         WHERE state IN ('queued', 'sending') AND expires_at <= ?1 AND (state = 'queued' OR lease_until <= ?1)",
        params![now, EXPIRED_REASON],
    )?;
    let copies = crate::queue::settle(tx, "expires_at <= ?7", params![now], OutboxState::Expired, EXPIRED_REASON, now)?;
    Ok(rows + copies)
}

/// The first step of a claim: rows of a relay that died, those of the
/// pool `filter` names whose lease ran out, from the index of leased rows.
/// No more than the claim takes: on PostgreSQL every row this returns stays
/// locked until the commit, and a dead node may have left tens of thousands.
fn lapsed_rows(tx: &Conn<'_>, now: UnixTime, limit: usize, filter: &DomainFilter) -> Result<Vec<OutboxId>> {
    let (domains, not) = match filter {
        DomainFilter::Only(d) => (d, ""),
        DomainFilter::Except(d) => (d, "NOT "),
    };
    // An empty exception list is every domain, an empty list of domains
    // none (`IN ()` is SQLite's only).
    let pool = match (domains.is_empty(), filter) {
        (true, DomainFilter::Only(_)) => "AND 1 = 0".to_string(),
        (true, DomainFilter::Except(_)) => String::new(),
        (false, _) => format!("AND domain {not}IN ({})", id_marks(2, domains.len())),
    };
    let sql = format!(
        "SELECT id FROM outbox {}
         WHERE state = 'sending' AND lease_until <= ?1 AND expires_at > ?1 {pool}
         ORDER BY id LIMIT ?{}{}",
        indexed_by(tx, "outbox_sending"),
        domains.len() + 2,
        skip_locked(tx)
    );
    let mut args = vec![Value::Int(now)];
    args.extend(domains.iter().map(|d| Value::Text(d.clone())));
    args.push(Value::Int(limit as i64));
    tx.query_map(&sql, &args, |r| r.get::<OutboxId>(0))
}

/// The second step of a claim: queued rows that are due, domain by domain
/// in the order given and each domain in priority order, until the claim
/// holds `limit` rows. One range of `outbox_pool_due` per domain.
fn queued_rows(tx: &Conn<'_>, now: UnixTime, limit: usize, domains: &[String], ids: &mut Vec<OutboxId>) -> Result<()> {
    let mut q = tx.prepare_cached(&format!(
        "SELECT id FROM outbox {}
         WHERE state = 'queued' AND domain = ?1 AND next_attempt_at <= ?2 AND expires_at > ?2
         ORDER BY priority DESC, id LIMIT ?3{}",
        indexed_by(tx, "outbox_pool_due"),
        skip_locked(tx)
    ))?;
    for d in domains {
        let room = limit.saturating_sub(ids.len());
        if room == 0 {
            break;
        }
        let rows = q.query_map(params![d, now, room as i64], |r| r.get::<OutboxId>(0))?;
        for id in rows {
            ids.push(id?);
        }
    }
    Ok(())
}

/// Every domain with queued rows, with the first of them in claim order
/// (priority, id): the pool of the domains no carrier names takes its
/// domains in the order of these rows, so it starts where the most urgent
/// and then the oldest mail waits, and a domain waits behind another for
/// one claim at most.
///
/// A walk of `outbox_pool_due` that jumps from one domain to the next (a
/// descent per domain, however many rows each holds): neither engine skips
/// through an index by itself. Queued rows that are not due yet count
/// here; the claim passes over them as a carrier pool's does.
fn queued_heads(tx: &Conn<'_>) -> Result<Vec<(String, i64, OutboxId)>> {
    tx.query_map(&queued_heads_sql(tx), &[], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
}

fn queued_heads_sql(tx: &Conn<'_>) -> String {
    let index = indexed_by(tx, "outbox_pool_due");
    format!(
        "WITH RECURSIVE heads (id) AS (
             SELECT (SELECT id FROM outbox {index} WHERE state = 'queued' ORDER BY domain, priority DESC, id LIMIT 1)
             UNION ALL
             SELECT (SELECT n.id FROM outbox n {index}
                     WHERE n.state = 'queued' AND n.domain > (SELECT o.domain FROM outbox o WHERE o.id = h.id)
                     ORDER BY n.domain, n.priority DESC, n.id LIMIT 1)
             FROM heads h WHERE h.id IS NOT NULL
         )
         SELECT o.domain, o.priority, o.id FROM heads h JOIN outbox o ON o.id = h.id"
    )
}

/// Rows per statement where many rows get the same change.
const BATCH: usize = 256;

/// `?first, ?first+1, …`: `n` numbered placeholders for an `IN` list.
fn id_marks(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
}

fn finish(tx: &Conn<'_>, id: OutboxId, state: OutboxState, now: UnixTime, reason: &str) -> Result<()> {
    // Only a row still leased is finished: if its lease ran out and another
    // relay finished it meanwhile, the first answer stands.
    tx.prepare_cached(
        "UPDATE outbox SET state = ?1, done_at = ?2, last_error = ?3, lease_until = 0 WHERE id = ?4 AND state IN ('sending', 'queued')",
    )?
    .execute(params![state, now, reason, id])?;
    Ok(())
}

fn suspend_undeliverable(tx: &Conn<'_>, subscriber: SubscriberId, now: UnixTime) -> Result<()> {
    // A refusal during our own SMTP transaction is an unknown-user bounce
    // that arrived early: same reason, same effects.
    crate::bounces::suspend(tx, subscriber, "unknown-user", now)?;
    tx.execute(
        "UPDATE subscribers SET undeliverable_at = CASE WHEN undeliverable_at = 0 THEN ?1 ELSE undeliverable_at END
         WHERE id = ?2",
        params![now, subscriber],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests;
