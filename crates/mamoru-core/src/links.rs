//! The token links mamoru hands out ([`Route`]: built and parsed here and
//! nowhere else), and the long-lived personal links at the foot of every
//! alert: manage (change districts or delete) and one-click unsubscribe
//! (RFC 8058).
//!
//! They are tokens like any other, but their nonce is the subscriber's
//! `link_nonce` (stored with the subscriber) rather than a one-time nonce:
//! one value serves every alert, and rotating it (on deletion or
//! re-registration) revokes every link sent so far.

use crate::{AlertId, SubscriberId, UnixTime};
use crate::config::Config;
use crate::token::{Claims, Nonce, Purpose, TokenKey};

/// A page reached by a signed token: `/r/` registration, `/m/` manage,
/// `/u/` one-click unsubscribe, `/p/` publish an alert, `/t/` 届きました
/// (a reception test arrived), `/w/` waiting for a reception test, `/k/`
/// 確認しました (an alert was read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Register(&'a str),
    Manage(&'a str),
    Unsubscribe(&'a str),
    Publish(&'a str),
    Arrived(&'a str),
    Waiting(&'a str),
    Confirm(&'a str),
}

impl<'a> Route<'a> {
    /// The route of a token for `purpose`.
    pub fn of(purpose: Purpose, token: &'a str) -> Self {
        match purpose {
            Purpose::Register => Route::Register(token),
            Purpose::Manage => Route::Manage(token),
            Purpose::Unsubscribe => Route::Unsubscribe(token),
            Purpose::Publish => Route::Publish(token),
            Purpose::Arrived => Route::Arrived(token),
            Purpose::Waiting => Route::Waiting(token),
            Purpose::Confirm => Route::Confirm(token),
        }
    }

    /// Which tokens the route takes: a token of another purpose never
    /// verifies on it.
    pub fn purpose(&self) -> Purpose {
        match self {
            Route::Register(_) => Purpose::Register,
            Route::Manage(_) => Purpose::Manage,
            Route::Unsubscribe(_) => Purpose::Unsubscribe,
            Route::Publish(_) => Purpose::Publish,
            Route::Arrived(_) => Purpose::Arrived,
            Route::Waiting(_) => Purpose::Waiting,
            Route::Confirm(_) => Purpose::Confirm,
        }
    }

    pub fn token(&self) -> &'a str {
        match *self {
            Route::Register(t)
            | Route::Manage(t)
            | Route::Unsubscribe(t)
            | Route::Publish(t)
            | Route::Arrived(t)
            | Route::Waiting(t)
            | Route::Confirm(t) => t,
        }
    }

    fn prefix(&self) -> &'static str {
        match self {
            Route::Register(_) => "/r/",
            Route::Manage(_) => "/m/",
            Route::Unsubscribe(_) => "/u/",
            Route::Publish(_) => "/p/",
            Route::Arrived(_) => "/t/",
            Route::Waiting(_) => "/w/",
            Route::Confirm(_) => "/k/",
        }
    }

    /// The path, `/r/TOKEN`: a form's action.
    pub fn path(&self) -> String {
        format!("{}{}", self.prefix(), self.token())
    }

    /// The full link for a mail.
    pub fn url(&self, cfg: &Config) -> String {
        format!("{}{}", cfg.base_url(), self.path())
    }

    /// The route of a request path, if it is one (the token is not checked).
    pub fn parse(path: &'a str) -> Option<Self> {
        let (prefix, token) = path.split_at_checked(3)?;
        let route = match prefix {
            "/r/" => Route::Register(token),
            "/m/" => Route::Manage(token),
            "/u/" => Route::Unsubscribe(token),
            "/p/" => Route::Publish(token),
            "/t/" => Route::Arrived(token),
            "/w/" => Route::Waiting(token),
            "/k/" => Route::Confirm(token),
            _ => return None,
        };
        Some(route)
    }
}

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

pub fn subscriber_links(cfg: &Config, key: &TokenKey, subscriber: SubscriberId, link_nonce: Nonce, now: UnixTime) -> SubscriberLinks {
    let expires_at = now + LINK_TTL_SECS;
    let sign = |purpose| key.sign(&Claims { purpose, subject: subscriber.subject(), nonce: link_nonce, expires_at });
    SubscriberLinks {
        manage: Route::Manage(&sign(Purpose::Manage)).url(cfg),
        unsubscribe: Route::Unsubscribe(&sign(Purpose::Unsubscribe)).url(cfg),
    }
}

/// The nonce of one alert copy's 確認しました link: a keyed hash of the
/// alert, the subscriber and their footer-link nonce, so a copy sent twice
/// carries the same link (and counts once) while the link itself names
/// nobody to whoever lacks the token key.
pub fn copy_nonce(key: &TokenKey, alert: AlertId, subscriber: SubscriberId, link_nonce: &Nonce) -> Nonce {
    let mut data = Vec::with_capacity(40);
    data.extend_from_slice(b"confirm-copy\0");
    data.extend_from_slice(&alert.get().to_be_bytes());
    data.extend_from_slice(&subscriber.get().to_be_bytes());
    data.extend_from_slice(link_nonce);
    let tag = key.mac(&data);
    let mut nonce = [0u8; 8];
    nonce.copy_from_slice(&tag.as_ref()[..8]);
    nonce
}

/// `{public_url}/k/{token}`: an alert copy's 確認しました link. The token's
/// subject is the counting key, its nonce the copy's.
pub fn confirm_url(cfg: &Config, key: &TokenKey, counting: crate::alert::ConfirmKey, nonce: Nonce, expires_at: UnixTime) -> String {
    let token = key.sign(&Claims { purpose: Purpose::Confirm, subject: counting.subject(), nonce, expires_at });
    Route::Confirm(&token).url(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_what_they_build() {
        for purpose in [
            Purpose::Register,
            Purpose::Manage,
            Purpose::Unsubscribe,
            Purpose::Publish,
            Purpose::Arrived,
            Purpose::Waiting,
            Purpose::Confirm,
        ] {
            let r = Route::of(purpose, "TOKEN");
            assert_eq!(Route::parse(&r.path()), Some(r));
            assert_eq!(r.purpose(), purpose);
        }
        assert_eq!(Route::parse("/m/"), Some(Route::Manage("")));
        for other in ["/", "/r", "/x/T", "/alerts", "", "/ü/x"] {
            assert_eq!(Route::parse(other), None, "{other}");
        }
        assert_eq!(Route::Publish("a b").url(&Config::default()), "http://127.0.0.1:8080/p/a b");
    }

    #[test]
    fn a_copy_nonce_is_stable_per_copy_and_differs_between_copies() {
        let key = TokenKey::new(&[3; 32]);
        let a = copy_nonce(&key, AlertId::new(5), SubscriberId::new(7), &[1; 8]);
        assert_eq!(a, copy_nonce(&key, AlertId::new(5), SubscriberId::new(7), &[1; 8]));
        assert_ne!(a, copy_nonce(&key, AlertId::new(5), SubscriberId::new(8), &[1; 8]));
        assert_ne!(a, copy_nonce(&key, AlertId::new(6), SubscriberId::new(7), &[1; 8]));
        assert_ne!(a, copy_nonce(&key, AlertId::new(5), SubscriberId::new(7), &[2; 8]));
        assert_ne!(a, copy_nonce(&TokenKey::new(&[4; 32]), AlertId::new(5), SubscriberId::new(7), &[1; 8]));
        let k = crate::alert::ConfirmKey { alert: AlertId::new(123_456), district: 10, carrier: 3 };
        assert_eq!(crate::alert::ConfirmKey::from_subject(k.subject()), k);
        let url = confirm_url(&Config::default(), &key, k, a, 1_800_000_000);
        let t = url.strip_prefix("http://127.0.0.1:8080/k/").unwrap();
        let c = key.verify(t, Purpose::Confirm, 1_700_000_000).unwrap();
        assert_eq!((crate::alert::ConfirmKey::from_subject(c.subject), c.nonce), (k, a));
    }

    #[test]
    fn links_verify_for_their_purpose_only() {
        let cfg = Config::default();
        let key = TokenKey::new(&[3; 32]);
        let l = subscriber_links(&cfg, &key, SubscriberId::new(7), [9; 8], 1_800_000_000);
        let m = l.manage.strip_prefix("http://127.0.0.1:8080/m/").unwrap();
        let u = l.unsubscribe.strip_prefix("http://127.0.0.1:8080/u/").unwrap();
        let c = key.verify(m, Purpose::Manage, 1_800_000_000).unwrap();
        assert_eq!((c.subject, c.nonce), (7, [9; 8]));
        assert!(key.verify(u, Purpose::Unsubscribe, 1_800_000_000).is_ok());
        assert!(key.verify(u, Purpose::Manage, 1_800_000_000).is_err());
        assert!(key.verify(m, Purpose::Register, 1_800_000_000).is_err());
    }
}
