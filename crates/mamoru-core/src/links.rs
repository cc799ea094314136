//! The long-lived personal links at the foot of every alert: manage (change
//! districts or delete) and one-click unsubscribe (RFC 8058).
//!
//! They are tokens like any other, but their nonce is the subscriber's
//! `link_nonce` (stored with the subscriber) rather than a one-time nonce:
//! one value serves every alert, and rotating it (on deletion or
//! re-registration) revokes every link sent so far.

use crate::UnixTime;
use crate::config::Config;
use crate::token::{Claims, Nonce, Purpose, TokenKey};

/// Lifetime of footer links: long enough for an alert kept in a mailbox.
pub const LINK_TTL_SECS: i64 = 400 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberLinks {
    /// `{public_url}/m/{token}`: a page to change districts or delete (POST to act).
    pub manage: String,
    /// `{public_url}/u/{token}`: GET shows a confirm page; POST with
    /// `List-Unsubscribe=One-Click` stops delivery at once.
    pub unsubscribe: String,
}

pub fn subscriber_links(cfg: &Config, key: &TokenKey, subscriber: u64, link_nonce: Nonce, now: UnixTime) -> SubscriberLinks {
    let expires_at = now + LINK_TTL_SECS;
    let sign = |purpose| key.sign(&Claims { purpose, subject: subscriber, nonce: link_nonce, expires_at });
    SubscriberLinks {
        manage: format!("{}/m/{}", cfg.base_url(), sign(Purpose::Manage)),
        unsubscribe: format!("{}/u/{}", cfg.base_url(), sign(Purpose::Unsubscribe)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_verify_for_their_purpose_only() {
        let cfg = Config::default();
        let key = TokenKey::new(&[3; 32]);
        let l = subscriber_links(&cfg, &key, 7, [9; 8], 1_800_000_000);
        let m = l.manage.strip_prefix("http://127.0.0.1:8080/m/").unwrap();
        let u = l.unsubscribe.strip_prefix("http://127.0.0.1:8080/u/").unwrap();
        let c = key.verify(m, Purpose::Manage, 1_800_000_000).unwrap();
        assert_eq!((c.subject, c.nonce), (7, [9; 8]));
        assert!(key.verify(u, Purpose::Unsubscribe, 1_800_000_000).is_ok());
        assert!(key.verify(u, Purpose::Manage, 1_800_000_000).is_err());
        assert!(key.verify(m, Purpose::Register, 1_800_000_000).is_err());
    }
}
