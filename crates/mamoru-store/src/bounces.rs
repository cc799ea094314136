//! Bounces, once ingest has decoded the VERP address to an outbox row and
//! parsed the report to a class: what they do to the subscriber.
//!
//! - unknown user: suspended at once (carriers block senders that keep
//!   mailing dead addresses);
//! - mailbox full, temporary, other: soft bounces; the score is their number
//!   within a sliding window (a full mailbox now and then over the years is
//!   not a dead address); at the threshold, suspended;
//! - blocked as spam: the carrier refused *us*, not the subscriber: logged
//!   per carrier domain, never counted against the subscriber.
//!
//! Suspending also cancels the subscriber's queued mail. Each outbox row
//! counts once, however often the MTA delivers its bounce.

use mamoru_core::UnixTime;
use crate::db::{Conn, OptionalExt};
use crate::params;

use crate::states::{OutboxState, SubscriberStatus};
use crate::{OutboxId, Result, Store, SubscriberId, audit};

/// How soft bounces add up to a suspension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftBouncePolicy {
    /// This many soft bounces within `window_secs` suspend.
    pub threshold: i64,
    pub window_secs: i64,
}

/// A bounce's class, as the parser in ingest reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceClass {
    UnknownUser,
    MailboxFull,
    BlockedAsSpam,
    Temporary,
    Other,
}

impl BounceClass {
    pub fn as_str(self) -> &'static str {
        match self {
            BounceClass::UnknownUser => "unknown-user",
            BounceClass::MailboxFull => "mailbox-full",
            BounceClass::BlockedAsSpam => "blocked-as-spam",
            BounceClass::Temporary => "temporary",
            BounceClass::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::UnknownUser, Self::MailboxFull, Self::BlockedAsSpam, Self::Temporary, Self::Other]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// What recording a bounce did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BounceEffect {
    /// No such outbox row, or it belongs to no (remaining) subscriber.
    Unknown,
    /// This outbox row's bounce was recorded before (an MTA retry).
    Duplicate,
    /// Counted per carrier only ("blocked as spam").
    CarrierBlock { domain: String },
    /// Added to the subscriber's score, still below the threshold.
    Scored { subscriber: SubscriberId, score: i64 },
    /// The subscriber is now suspended (or already was).
    Suspended { subscriber: SubscriberId, reason: &'static str },
}

/// Per carrier domain, how many bounces of each class since a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BounceStat {
    pub domain: String,
    pub class: String,
    pub count: i64,
}

/// What of a bounce's status is kept and logged: only a status code's
/// digits and dots, at most 12 — short, and never an address, whatever the
/// peer wrote in its `Status:` field.
pub fn status_code(status: &str) -> String {
    status.chars().filter(|c| c.is_ascii_digit() || *c == '.').take(12).collect()
}

impl Store {
    /// Records the bounce of outbox row `outbox_id` and applies its effect
    /// (see the module comment), in one transaction.
    pub fn record_bounce(
        &self,
        outbox_id: OutboxId,
        class: BounceClass,
        status: &str,
        now: UnixTime,
        policy: SoftBouncePolicy,
    ) -> Result<BounceEffect> {
        self.serially(|| {
            let tx = self.begin()?;
            let row: Option<(SubscriberId, String)> = tx
                .query_row("SELECT subscriber_id, domain FROM outbox WHERE id = ?1", params![outbox_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((subscriber, domain)) = row else { return Ok(BounceEffect::Unknown) };
            let status = status_code(status);
            let inserted = tx.execute(
                "INSERT INTO bounces (outbox_id, at, subscriber_id, domain, class, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (outbox_id) DO NOTHING",
                params![outbox_id, now, subscriber, domain, class.as_str(), status],
            )?;
            if inserted == 0 {
                return Ok(BounceEffect::Duplicate);
            }
            let effect = if class == BounceClass::BlockedAsSpam {
                BounceEffect::CarrierBlock { domain }
            } else {
                let current: Option<(SubscriberStatus, i64)> = tx
                    .query_row("SELECT status, bounce_score FROM subscribers WHERE id = ?1", params![subscriber], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                match current {
                    None => BounceEffect::Unknown,
                    Some((SubscriberStatus::Suspended, _)) => BounceEffect::Suspended { subscriber, reason: "already" },
                    Some((_, old_score)) => {
                        let score = if class == BounceClass::UnknownUser {
                            old_score
                        } else {
                            tx.query_row(
                                "SELECT COUNT(*) FROM bounces WHERE subscriber_id = ?1 AND at > ?2
                                 AND class IN ('mailbox-full', 'temporary', 'other')",
                                params![subscriber, now - policy.window_secs],
                                |r| r.get(0),
                            )?
                        };
                        let reason = if class == BounceClass::UnknownUser {
                            Some("unknown-user")
                        } else if score >= policy.threshold {
                            Some("soft-bounces")
                        } else {
                            None
                        };
                        tx.execute("UPDATE subscribers SET bounce_score = ?1 WHERE id = ?2", params![score, subscriber])?;
                        match reason {
                            Some(reason) => {
                                suspend(&tx, subscriber, reason, now)?;
                                BounceEffect::Suspended { subscriber, reason }
                            }
                            None => BounceEffect::Scored { subscriber, score },
                        }
                    }
                }
            };
            audit(&tx, now, "bounce", class.as_str(), &format!("outbox={outbox_id} subscriber={subscriber} status={status}"))?;
            tx.commit()?;
            Ok(effect)
        })
    }

    /// Bounces per carrier domain and class since `since`, for the dashboard
    /// and logs.
    pub fn bounce_stats(&self, since: UnixTime) -> Result<Vec<BounceStat>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT domain, class, COUNT(*) FROM bounces WHERE at >= ?1 GROUP BY domain, class ORDER BY domain, class",
        )?;
        let rows = stmt.query_map(params![since], |r| Ok(BounceStat { domain: r.get(0)?, class: r.get(1)?, count: r.get(2)? }))?;
        rows.collect::<Result<_>>()
    }

    /// Suspended subscribers per reason, for the admin dashboard.
    pub fn suspended_counts(&self) -> Result<Vec<(String, i64)>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT suspended_reason, COUNT(*) FROM subscribers WHERE status = 'suspended' GROUP BY suspended_reason ORDER BY 1",
        )?;
        let rows = stmt.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_>>()
    }
}

/// Why a suspended subscriber's queued mail failed.
const SUSPENDED_REASON: &str = "subscriber suspended";

/// Suspends `subscriber` and cancels its queued mail: a suspended address
/// gets nothing more. The one suspension path, for bounces and for the
/// relay's synchronous 5.1.1 refusals alike.
pub(crate) fn suspend(tx: &Conn<'_>, subscriber: SubscriberId, reason: &str, now: UnixTime) -> Result<()> {
    tx.execute(
        "UPDATE subscribers SET status = 'suspended', suspended_reason = ?1, suspended_at = ?2, updated_at = ?2 WHERE id = ?3",
        params![reason, now, subscriber],
    )?;
    for rows in crate::manage::OUTBOX_OF_SUBSCRIBER {
        tx.execute(
            &format!("UPDATE outbox SET state = 'failed', done_at = ?2, last_error = ?3, lease_until = 0 WHERE {rows} AND state = 'queued'"),
            params![subscriber, now, SUSPENDED_REASON],
        )?;
    }
    crate::queue::settle_subscriber(tx, subscriber, OutboxState::Failed, SUSPENDED_REASON, now)?;
    Ok(())
}
