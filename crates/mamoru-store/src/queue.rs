//! The copies of published alerts that no relay has claimed yet
//! (`alert_queue`; its migration says why they wait apart from the outbox).
//!
//! A copy leaves the queue in one of two ways, each in one transaction
//! that deletes it here and writes its outbox row:
//! - a claim ([`claim`]) makes it an outbox row leased to the claiming
//!   relay, as a claim of a queued outbox row would have left it;
//! - whatever ends it undelivered ([`settle`]: its expiry, a retraction,
//!   its subscriber's suspension) makes it an outbox row in that final
//!   state, so statistics and follow-ups read one history.
//!
//! Deleting the registration deletes its waiting copies outright
//! ([`forget_subscriber`]): nothing of a deleted address stays.

use mamoru_core::UnixTime;
use mamoru_core::mail::MailKind;

use crate::alerts::ALERT_PRIORITY;
use crate::db::{Conn, Dialect, OptionalExt, Value};
use crate::params;
use crate::relay::{ClaimedRow, DomainFilter, claimed_row};
use crate::states::OutboxState;
use crate::{Result, SubscriberId};

/// The outbox columns a waiting copy fills.
const OUTBOX_COLUMNS: &str = "kind, priority, subscriber_id, domain, sender, recipient_sealed, message_id, content_sealed,
     next_attempt_at, created_at, expires_at, alert_id, confirm_district, state, attempts, lease_until, done_at, last_error";

/// What [`OUTBOX_COLUMNS`] get from the queue row `q`. Like a copy the
/// publish used to write to the outbox, the row has no address, content,
/// sender nor Message-ID (the claim attaches them, `relay::attach_alerts`).
/// The placeholders: ?1 an empty blob, ?2 state, ?3 attempts, ?4 lease end,
/// ?5 done at, ?6 last error; a condition on the queue starts at ?7.
fn outbox_values(q: &str) -> String {
    format!(
        "'{}', {ALERT_PRIORITY}, {q}.subscriber_id, {q}.domain, '', ?1, '', ?1,
         {q}.due_at, {q}.created_at, {q}.expires_at, {q}.alert_id, {q}.confirm_district, ?2, ?3, ?4, ?5, ?6",
        MailKind::Alert.as_str()
    )
}

const CLAIMED_COLUMNS: &str = "id, kind, sender, recipient_sealed, message_id, content_sealed, attempts, alert_id, subscriber_id";

/// Which waiting copies a move takes.
#[derive(Clone, Copy)]
enum Which<'a> {
    /// Those the condition selects (unqualified columns, placeholders from
    /// ?7). It must select the same rows when evaluated twice in one
    /// transaction (SQLite inserts, then deletes).
    Where(&'a str),
    /// Up to ?10 copies of alert ?7 to domain ?8 that are due at ?9, in
    /// subscriber order; on PostgreSQL, of those no other claim holds.
    Due,
}

/// The copies [`Which::Due`] takes: one range of the key.
const DUE: &str = "FROM alert_queue WHERE alert_id = ?7 AND domain = ?8 AND due_at <= ?9 AND expires_at > ?9
     ORDER BY subscriber_id LIMIT ?10";

/// Moves the waiting copies `which` names into the outbox as `state`, bound
/// with `args` from ?7, and returns them as a claim does when `returning`
/// (else none), with how many moved.
fn move_rows(
    tx: &Conn<'_>,
    which: Which<'_>,
    args: &[Value],
    state: OutboxState,
    (attempts, lease_until, done_at, reason): (i64, UnixTime, UnixTime, &str),
    returning: bool,
) -> Result<(usize, Vec<ClaimedRow>)> {
    let mut all = params![Vec::<u8>::new(), state, attempts, lease_until, done_at, reason].to_vec();
    all.extend_from_slice(args);
    let ret = if returning { format!(" RETURNING {CLAIMED_COLUMNS}") } else { String::new() };
    let sqlite_cond = match which {
        Which::Where(cond) => cond.to_string(),
        // SQLite looks each listed subscriber up by the key.
        Which::Due => format!("alert_id = ?7 AND domain = ?8 AND subscriber_id IN (SELECT subscriber_id {DUE})"),
    };
    let rows = match tx.dialect() {
        // One statement: the rows deleted are the rows inserted.
        Dialect::Postgres => {
            let moved = match which {
                Which::Where(cond) => format!("moved AS (DELETE FROM alert_queue WHERE {cond} RETURNING *)"),
                // The copies picked once (`MATERIALIZED`), then deleted by
                // the key: PostgreSQL may run a `LIMIT … SKIP LOCKED`
                // subquery of an `IN` again for each row it checks, each
                // time past the rows it already deleted, and so took a
                // whole range for a limit of 100.
                Which::Due => format!(
                    "picked AS MATERIALIZED (SELECT alert_id, domain, subscriber_id {DUE} FOR UPDATE SKIP LOCKED),
                     moved AS (DELETE FROM alert_queue q USING picked p
                               WHERE q.alert_id = p.alert_id AND q.domain = p.domain AND q.subscriber_id = p.subscriber_id
                               RETURNING q.*)"
                ),
            };
            format!("WITH {moved} INSERT INTO outbox ({OUTBOX_COLUMNS}) SELECT {} FROM moved{ret}", outbox_values("moved"))
        }
        // One writer at a time: nothing changes the queue between the two.
        Dialect::Sqlite => format!(
            "INSERT INTO outbox ({OUTBOX_COLUMNS}) SELECT {} FROM alert_queue WHERE {sqlite_cond}{ret}",
            outbox_values("alert_queue")
        ),
    };
    let (n, claimed) = if returning {
        let claimed = tx.query_map(&rows, &all, claimed_row)?;
        (claimed.len(), claimed)
    } else {
        (tx.execute(&rows, &all)?, Vec::new())
    };
    if tx.dialect() == Dialect::Sqlite {
        tx.execute(&format!("DELETE FROM alert_queue WHERE {sqlite_cond}"), &all)?;
    }
    Ok((n, claimed))
}

/// Ends the waiting copies `cond` selects (see [`Which::Where`]) as outbox rows
/// in the final `state` with `reason`. Returns how many.
pub(crate) fn settle(tx: &Conn<'_>, cond: &str, args: &[Value], state: OutboxState, reason: &str, now: UnixTime) -> Result<usize> {
    Ok(move_rows(tx, Which::Where(cond), args, state, (0, 0, now, reason), false)?.0)
}

/// The keys of the waiting copies `subscriber` may have: (alert, its
/// domain) per alert with waiting copies, one probe of the key each; none
/// when the subscriber row is gone (and so are its copies).
fn keys_of(tx: &Conn<'_>, subscriber: SubscriberId) -> Result<Vec<(i64, String)>> {
    let domain: Option<String> =
        tx.query_row("SELECT domain FROM subscribers WHERE id = ?1", params![subscriber], |r| r.get(0)).optional()?;
    let Some(domain) = domain else { return Ok(Vec::new()) };
    Ok(alerts(tx)?.into_iter().map(|alert| (alert, domain.clone())).collect())
}

/// Ends the waiting copies of `subscriber` as outbox rows in `state` with
/// `reason`.
pub(crate) fn settle_subscriber(tx: &Conn<'_>, subscriber: SubscriberId, state: OutboxState, reason: &str, now: UnixTime) -> Result<usize> {
    let mut n = 0;
    for (alert, domain) in keys_of(tx, subscriber)? {
        n += settle(tx, OF_SUBSCRIBER, params![alert, domain, subscriber], state, reason, now)?;
    }
    Ok(n)
}

/// Deletes the waiting copies of `subscriber`; before its row goes.
pub(crate) fn forget_subscriber(tx: &Conn<'_>, subscriber: SubscriberId) -> Result<()> {
    for (alert, domain) in keys_of(tx, subscriber)? {
        tx.execute(
            "DELETE FROM alert_queue WHERE alert_id = ?1 AND domain = ?2 AND subscriber_id = ?3",
            params![alert, domain, subscriber],
        )?;
    }
    Ok(())
}

const OF_SUBSCRIBER: &str = "alert_id = ?7 AND domain = ?8 AND subscriber_id = ?9";

/// Claims up to `limit` due copies of the domains `filter` names, leased
/// until `lease_until`: the oldest alert's first, and of each alert domain
/// by domain (a [`DomainFilter::Only`] pool in its order, the other pool in
/// the domains' order), each domain in subscriber order. Copies past their
/// expiry are left to the expiry.
pub(crate) fn claim(tx: &Conn<'_>, now: UnixTime, lease_until: UnixTime, limit: usize, filter: &DomainFilter) -> Result<Vec<ClaimedRow>> {
    let mut out = Vec::new();
    for alert in alerts(tx)? {
        let domains = match filter {
            DomainFilter::Only(domains) => domains.clone(),
            DomainFilter::Except(excluded) => {
                let mut all = domains(tx, alert)?;
                all.retain(|d| !excluded.contains(d));
                all
            }
        };
        for domain in domains {
            let room = limit.saturating_sub(out.len());
            if room == 0 {
                return Ok(out);
            }
            out.extend(take(tx, alert, &domain, now, lease_until, room)?);
        }
    }
    Ok(out)
}

/// Claims up to `room` due copies of `alert` to `domain`, in subscriber
/// order. On PostgreSQL the copies another claim holds are skipped.
fn take(tx: &Conn<'_>, alert: i64, domain: &str, now: UnixTime, lease_until: UnixTime, room: usize) -> Result<Vec<ClaimedRow>> {
    let args = params![alert, domain, now, room as i64];
    let (_, mut rows) = move_rows(tx, Which::Due, args, OutboxState::Sending, (1, lease_until, 0, ""), true)?;
    rows.sort_by_key(|r| r.8);
    Ok(rows)
}

/// Every alert with waiting copies, oldest first: a walk of the key that
/// jumps from alert to alert (a descent per alert, however many copies).
pub(crate) fn alerts(tx: &Conn<'_>) -> Result<Vec<i64>> {
    tx.query_map(
        "WITH RECURSIVE a (id) AS (
             SELECT (SELECT alert_id FROM alert_queue ORDER BY alert_id LIMIT 1)
             UNION ALL
             SELECT (SELECT q.alert_id FROM alert_queue q WHERE q.alert_id > a.id ORDER BY q.alert_id LIMIT 1) FROM a WHERE a.id IS NOT NULL
         )
         SELECT id FROM a WHERE id IS NOT NULL",
        &[],
        |r| r.get(0),
    )
}

/// The domains `alert` has waiting copies to, in order; a walk like [`alerts`].
fn domains(tx: &Conn<'_>, alert: i64) -> Result<Vec<String>> {
    tx.query_map(
        "WITH RECURSIVE d (domain) AS (
             SELECT (SELECT domain FROM alert_queue WHERE alert_id = ?1 ORDER BY domain LIMIT 1)
             UNION ALL
             SELECT (SELECT q.domain FROM alert_queue q WHERE q.alert_id = ?1 AND q.domain > d.domain ORDER BY q.domain LIMIT 1)
             FROM d WHERE d.domain IS NOT NULL
         )
         SELECT domain FROM d WHERE domain IS NOT NULL",
        params![alert],
        |r| r.get(0),
    )
}
