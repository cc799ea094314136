//! Who really sent an alert post. A post counts only if its
//! From is an admin's address, the envelope sender is the same address, and
//! the message is authenticated:
//!
//! - **SASL**: the front MTA passes the login of an authenticated submission
//!   (`--sasl-username`); it must be the admin's login ID or address.
//! - **DKIM**: a signature that verifies against a key pinned in the
//!   configuration (never DNS), with `d=` aligned with the From domain and
//!   no `l=` (a length limit lets anyone append text under a valid
//!   signature). Or an `Authentication-Results` header with our own
//!   authserv-id saying `dkim=pass` for an aligned domain — only when it sits
//!   above the first `Received:` header, i.e. it was added by our own MTA
//!   after receipt, not by the sender.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use mail_auth::common::parse::TxtRecordParser as _;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt};
use mamoru_core::config::AlertAuth;
use mamoru_core::{Config, EmailAddress};

/// How a post was authenticated; `None` from [`authenticate`] means it was not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticated {
    Sasl,
    DkimVerified,
    AuthenticationResults,
}

impl Authenticated {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sasl => "sasl",
            Self::DkimVerified => "dkim",
            Self::AuthenticationResults => "authentication-results",
        }
    }
}

/// Is `d` aligned with the From domain (relaxed: equal or a parent)?
fn aligned(d: &str, from_domain: &str) -> bool {
    let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
    let f = from_domain.to_ascii_lowercase();
    !d.is_empty() && d.contains('.') && (f == d || f.ends_with(&format!(".{d}")))
}

/// Checks the post's authentication. `login` and `admin_email` are the
/// matched admin's; `header_section` is the raw header of the message.
pub fn authenticate(
    cfg: &Config,
    login: &str,
    admin_email: &EmailAddress,
    from: &EmailAddress,
    sasl_username: Option<&str>,
    raw: &[u8],
) -> Option<Authenticated> {
    let policy = cfg.alert_auth().unwrap_or(AlertAuth::SaslOrDkim);
    let sasl_ok = matches!(policy, AlertAuth::SaslOrDkim | AlertAuth::Sasl)
        && sasl_username.map(str::trim).is_some_and(|u| {
            !u.is_empty() && (u == login || EmailAddress::parse(u).is_ok_and(|a| a.canonical() == admin_email.canonical()))
        });
    if sasl_ok {
        return Some(Authenticated::Sasl);
    }
    if !matches!(policy, AlertAuth::SaslOrDkim | AlertAuth::Dkim) {
        return None;
    }
    if trusted_results_pass(&cfg.alerts.authserv_id, from.domain(), raw) {
        return Some(Authenticated::AuthenticationResults);
    }
    if !cfg.alerts.dkim_keys.is_empty() && dkim_verifies(&cfg.alerts.dkim_keys, from.domain(), raw) {
        return Some(Authenticated::DkimVerified);
    }
    None
}

/// The unfolded header fields of the header section, in order.
fn header_fields(raw: &[u8]) -> Vec<(String, String)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").or_else(|| raw.windows(2).position(|w| w == b"\n\n")).unwrap_or(raw.len());
    let text = String::from_utf8_lossy(&raw[..end]);
    let mut out: Vec<(String, String)> = vec![];
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    out
}

/// `Authentication-Results` from our authserv-id, above the first
/// `Received:`, with `dkim=pass` for a domain aligned with From.
pub fn trusted_results_pass(authserv_id: &str, from_domain: &str, raw: &[u8]) -> bool {
    if authserv_id.is_empty() {
        return false;
    }
    for (name, value) in header_fields(raw) {
        if name == "received" {
            return false;
        }
        if name != "authentication-results" {
            continue;
        }
        let mut parts = value.split(';');
        let id = parts.next().and_then(|p| p.split_whitespace().next()).unwrap_or("");
        if !id.eq_ignore_ascii_case(authserv_id) {
            continue;
        }
        for res in parts {
            let mut words = res.split_whitespace();
            if !words.next().is_some_and(|m| m.eq_ignore_ascii_case("dkim=pass")) {
                continue;
            }
            for w in words {
                let d = w.strip_prefix("header.d=").or_else(|| w.strip_prefix("header.i=").map(|i| i.rsplit('@').next().unwrap_or(i)));
                if d.is_some_and(|d| aligned(d, from_domain)) {
                    return true;
                }
            }
        }
    }
    false
}

/// A TXT cache that holds only the pinned keys.
struct Pinned(HashMap<String, Txt>);

impl ResolverCache<String, Txt> for Pinned {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(name).cloned()
    }

    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: String, _: Txt, _: std::time::Instant) {}
}

/// Verifies the DKIM signatures against the pinned keys.
pub fn dkim_verifies(keys: &std::collections::BTreeMap<String, String>, from_domain: &str, raw: &[u8]) -> bool {
    let mut pinned = HashMap::new();
    for (name, record) in keys {
        if let Ok(k) = DomainKey::parse(record.as_bytes()) {
            // mail-auth looks names up fully qualified.
            let fqdn = format!("{}.", name.trim_end_matches('.').to_ascii_lowercase());
            pinned.insert(fqdn, Txt::DomainKey(Arc::new(k)));
        }
    }
    let Some(msg) = AuthenticatedMessage::parse(raw) else { return false };
    // Only signatures whose key is pinned are checked, so the resolver
    // (which has no name servers at all) is never asked anything.
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return false };
    rt.block_on(async {
        let resolver_cfg = ResolverConfig::from_parts(None, vec![], NameServerConfigGroup::with_capacity(0));
        let Ok(auth) = MessageAuthenticator::new(resolver_cfg, ResolverOpts::default()) else { return false };
        let cache = Pinned(pinned);
        let results = auth.verify_dkim(Parameters::new(&msg).with_txt_cache(&cache)).await;
        results.iter().any(|r| {
            *r.result() == DkimResult::Pass && r.signature().is_some_and(|s| s.l == 0 && aligned(&s.d, from_domain))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_relaxed_but_not_loose() {
        assert!(aligned("city.test", "city.test"));
        assert!(aligned("city.test", "mail.city.test"));
        assert!(!aligned("evil.test", "city.test"));
        assert!(!aligned("ty.test", "city.test"));
        assert!(!aligned("test", "city.test"));
    }

    #[test]
    fn only_our_results_above_received_count() {
        let ours = b"Authentication-Results: mx.mamoru.test; dkim=pass header.d=city.test\r\nReceived: from x\r\nFrom: a@city.test\r\n\r\nbody";
        assert!(trusted_results_pass("mx.mamoru.test", "city.test", ours));
        assert!(!trusted_results_pass("", "city.test", ours), "no authserv-id configured: nothing is trusted");
        assert!(!trusted_results_pass("mx.mamoru.test", "other.test", ours), "not aligned");
        let forged = b"Received: from x\r\nAuthentication-Results: mx.mamoru.test; dkim=pass header.d=city.test\r\n\r\nbody";
        assert!(!trusted_results_pass("mx.mamoru.test", "city.test", forged), "below Received: added by the sender");
        let other = b"Authentication-Results: mx.elsewhere; dkim=pass header.d=city.test\r\n\r\n";
        assert!(!trusted_results_pass("mx.mamoru.test", "city.test", other));
        let fail = b"Authentication-Results: mx.mamoru.test;\r\n  dkim=fail header.d=city.test\r\n\r\n";
        assert!(!trusted_results_pass("mx.mamoru.test", "city.test", fail));
    }
}
