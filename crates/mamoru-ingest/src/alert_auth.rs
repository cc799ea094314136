//! Who really sent an alert post. A post counts only if its
//! From is an admin's address, the envelope sender is the same address, and
//! the message is authenticated:
//!
//! - **SASL**: the front MTA passes the login of an authenticated submission
//!   (`--sasl-username`); it must be the admin's login ID or address.
//! - **DKIM**: a signature that verifies against a key pinned in the
//!   configuration (never DNS), with `d=` aligned with the From domain and
//!   no `l=` (a length limit lets anyone append text under a valid
//!   signature), and `h=` covering From and Subject. Or an
//!   `Authentication-Results` header (RFC 8601, parsed by
//!   [`crate::auth_results`]) with our own authserv-id saying `dkim=pass`
//!   for an aligned domain — only when it sits above the first `Received:`
//!   header, i.e. it was added by our own MTA after receipt, not by the
//!   sender.

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

/// An authenticated post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authentication {
    pub how: Authenticated,
    /// For a DKIM-verified post, the `b=` of the signature that verified:
    /// a replay of the same signed post carries the same value whatever
    /// unsigned headers were added.
    pub signature: Option<Vec<u8>>,
}

/// Checks the post's authentication. `login` and `admin_email` are the
/// matched admin's; `raw` is the whole message.
pub fn authenticate(
    cfg: &Config,
    login: &str,
    admin_email: &EmailAddress,
    from: &EmailAddress,
    sasl_username: Option<&str>,
    raw: &[u8],
) -> Option<Authentication> {
    let policy = cfg.alerts.require;
    let sasl_ok = matches!(policy, AlertAuth::SaslOrDkim | AlertAuth::Sasl)
        && sasl_username.map(str::trim).is_some_and(|u| {
            !u.is_empty() && (u == login || EmailAddress::parse(u).is_ok_and(|a| a.canonical() == admin_email.canonical()))
        });
    if sasl_ok {
        return Some(Authentication { how: Authenticated::Sasl, signature: None });
    }
    if !matches!(policy, AlertAuth::SaslOrDkim | AlertAuth::Dkim) {
        return None;
    }
    if !cfg.alerts.dkim_keys.is_empty() {
        if let Some(b) = dkim_verifies(&cfg.alerts.dkim_keys, from.domain(), raw) {
            return Some(Authentication { how: Authenticated::DkimVerified, signature: Some(b) });
        }
    }
    if trusted_results_pass(&cfg.alerts.authserv_id, from.domain(), raw) {
        return Some(Authentication { how: Authenticated::AuthenticationResults, signature: None });
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
/// `Received:`, with `dkim=pass` for a domain aligned with From (`header.d`,
/// or the domain of `header.i`). Each header is parsed by
/// [`crate::auth_results::parse`], so text inside comments and quoted
/// reasons is never a result. Several headers of ours are normal (one per
/// milter: OpenDKIM, OpenDMARC); one of ours that does not parse, or any
/// header above `Received:` that does not parse at all, makes the whole
/// set untrusted: a result that cannot be read unambiguously is not a pass.
pub fn trusted_results_pass(authserv_id: &str, from_domain: &str, raw: &[u8]) -> bool {
    if authserv_id.is_empty() {
        return false;
    }
    let mut pass = false;
    for (name, value) in header_fields(raw) {
        if name == "received" {
            break;
        }
        if name != "authentication-results" {
            continue;
        }
        let Ok(results) = crate::auth_results::parse(&value) else { return false };
        if !results.authserv_id.eq_ignore_ascii_case(authserv_id) {
            continue;
        }
        pass |= results.results.iter().any(|r| {
            r.method == "dkim"
                && r.result == "pass"
                && (r.prop("header.d").is_some_and(|d| aligned(d, from_domain))
                    || r.prop("header.i").is_some_and(|i| aligned(i.rsplit('@').next().unwrap_or(i), from_domain)))
        });
    }
    pass
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

/// Header fields a DKIM signature must cover (`h=`) to authenticate a
/// post: From (RFC 6376 requires it) and Subject (it becomes the title).
/// The post has exactly one of each (see `alert_post`), so the covered
/// instance is the one that is read.
pub const MUST_SIGN: [&str; 2] = ["from", "subject"];

/// Most `DKIM-Signature` fields, and most bytes in one, that are verified.
pub const MAX_SIGNATURES: usize = 8;
pub const MAX_SIGNATURE_BYTES: usize = 4096;

/// Verifies the DKIM signatures against the pinned keys. Returns the `b=`
/// value of the first signature that passes, has no `l=`, is aligned with
/// From and covers [`MUST_SIGN`]: signed content, so it is the post's
/// replay key.
pub fn dkim_verifies(keys: &std::collections::BTreeMap<String, String>, from_domain: &str, raw: &[u8]) -> Option<Vec<u8>> {
    // mail-auth compares each `h=` name with each header field and with the
    // names seen before it: a real signature is well under a kilobyte with
    // a handful of them; a huge one is not verified at all.
    let signatures: Vec<usize> = header_fields(raw).iter().filter(|(n, _)| n == "dkim-signature").map(|(_, v)| v.len()).collect();
    if signatures.len() > MAX_SIGNATURES || signatures.iter().any(|&len| len > MAX_SIGNATURE_BYTES) {
        return None;
    }
    let mut pinned = HashMap::new();
    for (name, record) in keys {
        if let Ok(k) = DomainKey::parse(record.as_bytes()) {
            // mail-auth looks names up fully qualified.
            let fqdn = format!("{}.", name.trim_end_matches('.').to_ascii_lowercase());
            pinned.insert(fqdn, Txt::DomainKey(Arc::new(k)));
        }
    }
    let msg = AuthenticatedMessage::parse(raw)?;
    // Only signatures whose key is pinned are checked, so the resolver
    // (which has no name servers at all) is never asked anything.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    rt.block_on(async {
        let resolver_cfg = ResolverConfig::from_parts(None, vec![], NameServerConfigGroup::with_capacity(0));
        let auth = MessageAuthenticator::new(resolver_cfg, ResolverOpts::default()).ok()?;
        let cache = Pinned(pinned);
        let results = auth.verify_dkim(Parameters::new(&msg).with_txt_cache(&cache)).await;
        results.iter().filter(|r| *r.result() == DkimResult::Pass).filter_map(|r| r.signature()).find_map(|s| {
            let covers = MUST_SIGN.iter().all(|m| s.h.iter().any(|h| h.trim().eq_ignore_ascii_case(m)));
            (s.l == 0 && covers && aligned(&s.d, from_domain)).then(|| s.b.clone())
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

    #[test]
    fn results_are_read_as_rfc_8601_not_as_text() {
        let pass = |h: &str| trusted_results_pass("mx.mamoru.test", "city.test", format!("{h}\r\nReceived: from x\r\n\r\n").as_bytes());
        // Quoted reasons and comments are not results.
        assert!(!pass("Authentication-Results: mx.mamoru.test; dkim=fail reason=\"sig; dkim=pass header.d=city.test\" header.d=city.test"));
        assert!(!pass("Authentication-Results: mx.mamoru.test; dkim=fail (dkim=pass header.d=city.test) header.d=city.test"));
        assert!(!pass("Authentication-Results: mx.mamoru.test (dkim=pass header.d=city.test); none"));
        // OpenDKIM's comment holds a `;`.
        assert!(pass(
            "Authentication-Results: mx.mamoru.test; dkim=pass (2048-bit key; unprotected) header.d=city.test header.i=@city.test header.b=abcd"
        ));
        assert!(pass("Authentication-Results: mx.mamoru.test;\r\n\tdkim=pass (1024-bit key; secure)\r\n\theader.i=@city.test"));
        // One header per milter is fine; one that does not parse spoils them all.
        assert!(pass("Authentication-Results: mx.mamoru.test; dmarc=pass header.from=city.test\r\nAuthentication-Results: mx.mamoru.test; dkim=pass header.d=city.test"));
        assert!(!pass("Authentication-Results: mx.mamoru.test; dkim=pass (broken\r\nAuthentication-Results: mx.mamoru.test; dkim=pass header.d=city.test"));
        // Another method's pass, or a pass without a domain, is not DKIM's.
        assert!(!pass("Authentication-Results: mx.mamoru.test; spf=pass smtp.mailfrom=staff@city.test"));
        assert!(!pass("Authentication-Results: mx.mamoru.test; dkim=pass"));
    }
}
