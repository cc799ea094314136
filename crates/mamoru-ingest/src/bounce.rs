//! Mail to the VERP return path, `bounce+{outbox_id}-{tag}@DOMAIN`: the
//! relay's envelope sender, so every bounce (and every auto-reply to the
//! return path) lands here. The tag is checked first: a forged bounce, one
//! whose tag does not verify, is dropped without being parsed, so nobody can
//! suspend a subscriber by guessing outbox ids.

use mamoru_app::App;
use mamoru_core::{UnixTime, verp};
use mamoru_store::bounces::BounceClass;

use crate::Outcome;
use crate::dsn::{self, Class};

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

/// Verifies the return path, parses the report and records one bounce
/// (the flow is `mamoru_app::bounces`; this side reads the bytes).
pub fn handle(app: &App, recipient: &str, message: &[u8], now: UnixTime) -> Outcome {
    let r = recipient.trim().trim_start_matches('<').trim_end_matches('>');
    let local = r.rsplit_once('@').map_or(r, |(l, _)| l);
    let Some(outbox_id) = app.bounced_row(local) else {
        return Outcome::Dropped("forged-bounce".into());
    };
    let outbox = outbox_id.get();
    // The parser is pure but fed hostile bytes: a panic is a drop, not a retry.
    let report = match std::panic::catch_unwind(|| dsn::parse(message)) {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            tracing::warn!(outbox, reason = e.as_str(), "bounce beyond the MIME bounds ({e}); dropped unparsed");
            return Outcome::Dropped(format!("bounce: {}", e.as_str()));
        }
        Err(_) => {
            tracing::error!(outbox, "bounce parser panicked; bounce dropped");
            return Outcome::Dropped("bounce-parser-panic".into());
        }
    };
    let class = match report.class {
        Class::NotABounce => {
            tracing::info!(outbox, "reply to the return path is not a bounce (auto-reply); dropped");
            return Outcome::Dropped("not-a-bounce".into());
        }
        Class::UnknownUser => BounceClass::UnknownUser,
        Class::MailboxFull => BounceClass::MailboxFull,
        Class::BlockedAsSpam => BounceClass::BlockedAsSpam,
        Class::Temporary => BounceClass::Temporary,
        Class::Other => BounceClass::Other,
    };
    match app.record_bounce(outbox_id, class, &report.status, now) {
        Ok(_) => Outcome::Stored,
        Err(e) => crate::transient(&e),
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
