//! Bounces: a mail to the VERP return path `bounce+{outbox}-{tag}@DOMAIN`
//! (every bounce, and every auto-reply to our envelope sender, lands there).
//!
//! Ingest parses the report (bytes are its business) into a
//! [`BounceClass`]; this flow checks that the return path is one we signed,
//! records the bounce and applies its effect (see `mamoru_store::bounces`:
//! an unknown user suspends at once, soft bounces add up within a window,
//! a spam block counts against the carrier and never the subscriber).
//!
//! **Invariant:** a return path whose tag does not verify changes nothing:
//! nobody suspends a subscriber by guessing outbox ids.

use mamoru_core::{OutboxId, UnixTime, verp};
use mamoru_store::bounces::{BounceClass, BounceEffect, SoftBouncePolicy, status_code};

use crate::{App, Error};

impl App {
    /// The outbox row a VERP local part (`bounce+12-0a1b2c3d4e`) names, or
    /// `None` when its tag does not verify (forged or mangled). Logged.
    pub fn bounced_row(&self, local_part: &str) -> Option<OutboxId> {
        let row = verp::decode(&self.tokens, local_part);
        if row.is_none() {
            tracing::warn!("bounce with a bad VERP tag dropped (forged or mangled)");
        }
        row
    }

    /// Records the bounce of `outbox` (its row verified by
    /// [`App::bounced_row`]) and applies its effect, in one transaction.
    /// `status` is the peer's Status field; only its code is kept.
    pub fn record_bounce(&self, outbox: OutboxId, class: BounceClass, status: &str, now: UnixTime) -> Result<BounceEffect, Error> {
        let bounces = &self.cfg.bounces;
        let policy = SoftBouncePolicy { threshold: bounces.soft_threshold, window_secs: bounces.soft_window_secs };
        let effect = self.store.record_bounce(outbox, class, status, now, policy)?;
        let (outbox, class, status) = (outbox.get(), class.as_str(), status_code(status));
        let status = status.as_str();
        match &effect {
            BounceEffect::Unknown => tracing::info!(outbox, class, status, "bounce for no current subscriber; ignored"),
            BounceEffect::Duplicate => tracing::info!(outbox, class, "bounce already recorded"),
            BounceEffect::CarrierBlock { domain } => {
                tracing::warn!(outbox, carrier = %domain, status, "carrier refused our mail as spam (not counted against the subscriber)")
            }
            BounceEffect::Scored { subscriber, score } => {
                tracing::info!(outbox, subscriber = subscriber.get(), score, class, status, "soft bounce counted")
            }
            BounceEffect::Suspended { subscriber, reason } => {
                tracing::warn!(outbox, subscriber = subscriber.get(), reason, class, status, "subscriber suspended after a bounce")
            }
        }
        Ok(effect)
    }
}
