//! Mail to the VERP return path, `bounce+{outbox_id}-{tag}@DOMAIN`: the
//! relay's envelope sender, so every bounce (and every auto-reply to the
//! return path) lands here. The tag is checked first: a forged bounce, one
//! whose tag does not verify, is dropped without being parsed, so nobody can
//! suspend a subscriber by guessing outbox ids.

use mamoru_core::token::TokenKey;
use mamoru_core::{Config, UnixTime, verp};
use mamoru_store::Store;
use mamoru_store::bounces::{BounceClass, BounceEffect, SoftBouncePolicy};

use crate::Outcome;
use crate::dsn::{self, Class};

/// What [`handle`] needs; borrowed from the registrar.
pub struct Context<'a> {
    pub cfg: &'a Config,
    pub store: &'a Store,
    pub tokens: &'a TokenKey,
    pub now: UnixTime,
}

/// Is `recipient` (with or without angle brackets) a `bounce+…@DOMAIN`
/// address? Only the shape is checked here, at RCPT time; the tag is checked
/// on delivery, where a bad one is a logged drop.
pub fn is_bounce_recipient(domain: &str, recipient: &str) -> bool {
    let r = recipient.trim().trim_start_matches('<').trim_end_matches('>');
    let Some((local, dom)) = r.rsplit_once('@') else { return false };
    let prefix = verp::BOUNCE_LOCAL.len() + 1;
    local.len() > prefix
        && local[..prefix].eq_ignore_ascii_case(&format!("{}+", verp::BOUNCE_LOCAL))
        && dom.trim_end_matches('.').eq_ignore_ascii_case(domain.trim_end_matches('.'))
}

/// Verifies, parses and records one bounce.
pub fn handle(ctx: &Context<'_>, recipient: &str, message: &[u8]) -> Outcome {
    let r = recipient.trim().trim_start_matches('<').trim_end_matches('>');
    let local = r.rsplit_once('@').map_or(r, |(l, _)| l);
    let Some(outbox_id) = verp::decode(ctx.tokens, local) else {
        tracing::warn!("bounce with a bad VERP tag dropped (forged or mangled)");
        return Outcome::Dropped("forged-bounce".into());
    };
    // The parser is pure but fed hostile bytes: a panic is a drop, not a retry.
    let report = match std::panic::catch_unwind(|| dsn::parse(message)) {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            tracing::warn!(outbox_id, reason = e.as_str(), "bounce beyond the MIME bounds ({e}); dropped unparsed");
            return Outcome::Dropped(format!("bounce: {}", e.as_str()));
        }
        Err(_) => {
            tracing::error!(outbox_id, "bounce parser panicked; bounce dropped");
            return Outcome::Dropped("bounce-parser-panic".into());
        }
    };
    let class = match report.class {
        Class::NotABounce => {
            tracing::info!(outbox_id, "reply to the return path is not a bounce (auto-reply); dropped");
            return Outcome::Dropped("not-a-bounce".into());
        }
        Class::UnknownUser => BounceClass::UnknownUser,
        Class::MailboxFull => BounceClass::MailboxFull,
        Class::BlockedAsSpam => BounceClass::BlockedAsSpam,
        Class::Temporary => BounceClass::Temporary,
        Class::Other => BounceClass::Other,
    };
    let policy = SoftBouncePolicy { threshold: ctx.cfg.bounces.soft_threshold, window_secs: ctx.cfg.bounces.soft_window_secs };
    match ctx.store.record_bounce(outbox_id, class, &report.status, ctx.now, policy) {
        Ok(effect) => {
            let class = class.as_str();
            // The peer's text, reduced to a status code as the store keeps it.
            let status = mamoru_store::bounces::status_code(&report.status);
            let status = status.as_str();
            match &effect {
                BounceEffect::Unknown => tracing::info!(outbox_id, class, status, "bounce for no current subscriber; ignored"),
                BounceEffect::Duplicate => tracing::info!(outbox_id, class, "bounce already recorded"),
                BounceEffect::CarrierBlock { domain } => {
                    tracing::warn!(outbox_id, carrier = %domain, status, "carrier refused our mail as spam (not counted against the subscriber)")
                }
                BounceEffect::Scored { subscriber, score } => {
                    tracing::info!(outbox_id, subscriber, score, class, status, "soft bounce counted")
                }
                BounceEffect::Suspended { subscriber, reason } => {
                    tracing::warn!(outbox_id, subscriber, reason, class, status, "subscriber suspended after a bounce")
                }
            }
            Outcome::Stored
        }
        Err(e) => {
            tracing::warn!(error = %e, "store unavailable; asking the MTA to retry the bounce");
            Outcome::Transient(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounce_recipients_by_shape() {
        assert!(is_bounce_recipient("mamoru.test", "bounce+1-abc@mamoru.test"));
        assert!(is_bounce_recipient("mamoru.test", "<BOUNCE+1-abc@Mamoru.Test>"));
        assert!(!is_bounce_recipient("mamoru.test", "bounce@mamoru.test"));
        assert!(!is_bounce_recipient("mamoru.test", "bounce+1-abc@other.test"));
        assert!(!is_bounce_recipient("mamoru.test", "ans@mamoru.test"));
        assert!(!is_bounce_recipient("mamoru.test", "bounce+"));
    }
}
