//! Alert posts by mail to `alert@DOMAIN`.
//!
//! The order of checks matters: who sent it (an active admin, authenticated)
//! comes before anything is parsed or answered, so a forger gets no reply at
//! all; only an authenticated admin's malformed post gets an explanation,
//! and every reply goes to the admin's *registered* address, never to the
//! From of the post. A redelivered post (same Message-ID, or the same bytes
//! when there is none) records nothing the second time.

use mailparse::{DispositionType, MailHeader, MailHeaderMap as _, ParsedMail};
use mamoru_core::alert::{self, AlertDraft, CarrierCounts, FormatError, PreviewInfo};
use mamoru_core::token::{Claims, Purpose, TokenKey};
use mamoru_core::{Config, EmailAddress, UnixTime, mail};
use mamoru_store::Store;
use mamoru_store::admins::Admin;
use mamoru_store::alerts::{Drafted, NewAlert};
use ring::digest;

use crate::Outcome;
use crate::{alert_auth, classify, mime};

/// Is `recipient` the alert address (`alert@DOMAIN`, case-insensitive,
/// no `+tag`: the privileged address has exactly one spelling)?
pub fn is_alert_recipient(cfg: &Config, recipient: &str) -> bool {
    recipient.trim().trim_matches(['<', '>']).eq_ignore_ascii_case(&cfg.alert_address())
}

/// The text of a post, taken out of its MIME structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostText {
    pub subject: String,
    pub text: String,
    /// Parts that are neither the text nor its HTML alternative.
    pub attachments: usize,
}

/// text/plain preferred; an HTML-only post is converted to text;
/// attachments are counted and dropped. mailparse decodes the transfer
/// encoding and the charset (ISO-2022-JP, Shift_JIS, UTF-8).
pub fn extract(parsed: &ParsedMail<'_>) -> PostText {
    let subject = parsed.headers.get_first_value("Subject").unwrap_or_default();
    let mut plain: Option<String> = None;
    let mut html: Option<String> = None;
    let mut attachments = 0;
    walk(parsed, &mut plain, &mut html, &mut attachments);
    let text = plain.or_else(|| html.map(|h| html_to_text(&h))).unwrap_or_default();
    PostText { subject, text, attachments }
}

fn walk(part: &ParsedMail<'_>, plain: &mut Option<String>, html: &mut Option<String>, attachments: &mut usize) {
    if !part.subparts.is_empty() {
        for p in &part.subparts {
            walk(p, plain, html, attachments);
        }
        return;
    }
    let attached = part.get_content_disposition().disposition == DispositionType::Attachment;
    let mime = part.ctype.mimetype.to_ascii_lowercase();
    match mime.as_str() {
        "text/plain" if !attached && plain.is_none() => *plain = part.get_body().ok(),
        "text/html" if !attached && html.is_none() => *html = part.get_body().ok(),
        _ => *attachments += 1,
    }
}

/// Just enough HTML to text for phone mailers' HTML-only mail: line breaks
/// for `<br>`, `</p>` and `</div>`, tags dropped, common entities decoded.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        out.push_str(&rest[..lt]);
        let Some(gt) = rest[lt..].find('>') else { break };
        let tag = rest[lt + 1..lt + gt].trim().to_ascii_lowercase();
        let name = tag.trim_start_matches('/').split(|c: char| c.is_whitespace() || c == '/').next().unwrap_or("");
        if matches!(name, "br" | "p" | "div" | "tr" | "li") && (name == "br" || tag.starts_with('/')) {
            out.push('\n');
        }
        if !tag.starts_with('/') && matches!(name, "style" | "script" | "head") {
            // Skip the element's content too.
            let close = format!("</{name}");
            let after = &rest[lt + gt + 1..];
            rest = after.to_ascii_lowercase().find(&close).map_or("", |i| &after[i..]);
            continue;
        }
        rest = &rest[lt + gt + 1..];
    }
    out.push_str(rest);
    let out = out.replace(['\r'], "");
    let decoded = out.replace("&nbsp;", " ").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&");
    decoded.lines().map(str::trim_end).collect::<Vec<_>>().join("\n")
}

/// The replay key of a post: the signature of a DKIM-verified post (signed
/// content: unsigned headers added to a replay change nothing), else its
/// Message-ID, else a digest of the bytes.
fn source_key(headers: &[MailHeader<'_>], raw: &[u8], signature: Option<&[u8]>) -> String {
    let hex = |d: digest::Digest| d.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>();
    if let Some(b) = signature {
        return format!("dkim:{}", hex(digest::digest(&digest::SHA256, b)));
    }
    match headers.get_first_value("Message-ID").map(|v| v.trim().to_string()) {
        Some(id) if !id.is_empty() => format!("mid:{}", id.chars().take(250).collect::<String>()),
        _ => format!("sha256:{}", hex(digest::digest(&digest::SHA256, raw))),
    }
}

/// Header fields a post may carry at most once (RFC 5322 allows one of
/// each). A second instance is how a captured signed post is re-titled or
/// replayed (DKIM covers only the bottom-most instance, readers take the
/// top one), so a post with one is refused before anything else is read.
pub const SINGLE_HEADERS: [&str; 5] = ["from", "subject", "date", "message-id", "to"];

/// The first of [`SINGLE_HEADERS`] that appears more than once. Names are
/// compared as DKIM canonicalisation does: case-insensitive, white space
/// before the colon ignored.
pub fn duplicated_header(headers: &[MailHeader<'_>]) -> Option<&'static str> {
    SINGLE_HEADERS.into_iter().find(|name| {
        headers.iter().filter(|h| h.get_key_raw().trim_ascii().eq_ignore_ascii_case(name.as_bytes())).take(2).count() > 1
    })
}

/// The single From address of a post.
fn from_address(headers: &[MailHeader<'_>]) -> Option<EmailAddress> {
    let from = headers.get_all_values("From");
    let [one] = from.as_slice() else { return None };
    let list = mailparse::addrparse(one).ok()?;
    let [mailparse::MailAddr::Single(info)] = list.as_slice() else { return None };
    EmailAddress::parse(&info.addr).ok()
}

pub fn random12(store: &Store) -> Result<[u8; 12], mamoru_core::seal::SealError> {
    let mut random = [0u8; 12];
    store.sealer().random(&mut random)?;
    Ok(random)
}

/// Records a draft and queues its preview (with the one-time publish link)
/// to the admin's registered address. Shared by mailed posts and
/// `mamoru alert post`.
#[allow(clippy::too_many_arguments)]
pub fn queue_preview(
    cfg: &Config,
    store: &Store,
    tokens: &TokenKey,
    admin: &Admin,
    draft: &AlertDraft,
    source: &str,
    source_key: &str,
    dropped_attachments: usize,
    is_test: bool,
    now: UnixTime,
    random: &[u8; 12],
) -> mamoru_store::Result<Drafted> {
    let expires_at = now + cfg.alerts.publish_ttl_secs;
    let content = alert::content(cfg, draft, is_test);
    let new = NewAlert {
        admin: admin.id,
        source,
        source_key,
        kind: &draft.kind,
        title: &draft.title,
        text: &draft.text,
        districts: &draft.districts,
        is_test,
    };
    store.draft_alert(&new, now, expires_at, |alert_id, nonce, domains| {
        let claims = Claims { purpose: Purpose::Publish, subject: alert_id as u64, nonce, expires_at };
        let url = format!("{}/p/{}", cfg.base_url(), tokens.sign(&claims));
        let counts = CarrierCounts::from_domains(domains);
        let info = PreviewInfo { counts: &counts, publish_url: &url, dropped_attachments, is_test };
        alert::preview(cfg, &content, &admin.email, &info, now, mail::message_id(random, cfg))
    })
}

pub struct AlertPoster<'a> {
    pub cfg: &'a Config,
    pub store: &'a Store,
    pub tokens: &'a TokenKey,
    pub clock: fn() -> UnixTime,
}

impl AlertPoster<'_> {
    fn refuse(&self, reason: &str, detail: String) -> Outcome {
        let now = (self.clock)();
        tracing::warn!(reason, detail = %detail, "alert post refused");
        if let Err(e) = self.store.audit(now, "ingest", "alert-post-refused", &format!("reason={reason} {detail}")) {
            tracing::warn!(error = %e, "store unavailable; asking the MTA to retry");
            return Outcome::Transient(e.to_string());
        }
        Outcome::Dropped(format!("alert: {reason}"))
    }

    fn message_id(&self) -> Result<String, Outcome> {
        let mut random = [0u8; 12];
        self.store.sealer().random(&mut random).map_err(|e| Outcome::Transient(e.to_string()))?;
        Ok(mail::message_id(&random, self.cfg))
    }

    /// Answers an authenticated admin's post that cannot become a draft,
    /// once (the replay key is recorded with the rejection).
    fn reject(&self, admin: &Admin, key: &str, subject: &str, e: FormatError) -> Outcome {
        let now = (self.clock)();
        let cfg = self.cfg;
        let mid = match self.message_id() {
            Ok(m) => m,
            Err(o) => return o,
        };
        let reply = alert::rejected(cfg, std::slice::from_ref(&e), subject, &admin.email, now, mid);
        let reason = format!("{e:?}").split(['(', ' ']).next().unwrap_or("format").to_string();
        let title: String = subject.chars().take(alert::MAX_TITLE_CHARS).collect();
        match self.store.reject_post(admin.id, key, &title, &reason, &reply, now, now + cfg.relay.max_age_secs) {
            Ok(true) => {
                tracing::info!(admin = %admin.login, reason, "malformed alert post answered");
                Outcome::Stored
            }
            Ok(false) => Outcome::Dropped("alert: duplicate".into()),
            Err(e) => Outcome::Transient(e.to_string()),
        }
    }

    /// Handles one message to the alert address.
    ///
    /// Only the header section is read until the sender is known to be an
    /// authenticated admin; the MIME structure is parsed (within
    /// [`mime::Limits::DEFAULT`]) only then, and a post beyond those bounds is
    /// answered as unreadable.
    pub fn deliver(&self, sender: &str, sasl_username: Option<&str>, raw: &[u8]) -> Outcome {
        let limits = mime::Limits::DEFAULT;
        let Some(section) = classify::header_section(raw, limits.max_header_bytes) else {
            return self.refuse("headers-too-large", String::new());
        };
        let Ok((headers, _)) = mailparse::parse_headers(section) else { return self.refuse("unparsable", String::new()) };
        let Some(from) = from_address(&headers) else { return self.refuse("no-single-from", String::new()) };
        let masked = from.masked();
        if let Some(name) = duplicated_header(&headers) {
            return self.refuse("duplicate-header", format!("header={name} from={masked}"));
        }
        let envelope = EmailAddress::parse(sender.trim_matches(['<', '>']));
        if envelope.as_ref().map(|e| e.canonical()) != Ok(from.canonical()) {
            return self.refuse("envelope-from-mismatch", format!("from={masked}"));
        }
        let admin = match self.store.find_admin_by_email(&from) {
            Ok(Some(a)) if a.active => a,
            Ok(Some(_)) => return self.refuse("admin-disabled", format!("from={masked}")),
            Ok(None) => return self.refuse("not-an-admin", format!("from={masked}")),
            Err(e) => return Outcome::Transient(e.to_string()),
        };
        let Some(auth) = alert_auth::authenticate(self.cfg, &admin.login, &admin.email, &from, sasl_username, raw) else {
            return self.refuse("not-authenticated", format!("admin={}", admin.login));
        };
        let key = source_key(&headers, raw, auth.signature.as_deref());
        let parsed = match mime::parse(raw, &limits) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(admin = %admin.login, error = %e, "alert post not parsed");
                let subject = headers.get_first_value("Subject").unwrap_or_default();
                return self.reject(&admin, &key, &subject, FormatError::Unreadable);
            }
        };
        let post = extract(&parsed);
        let now = (self.clock)();
        let cfg = self.cfg;
        let draft = alert::parse_post(cfg, &post.subject, &post.text).and_then(|d| {
            let forbidden = admin.forbidden(&d.districts);
            if forbidden.is_empty() { Ok(d) } else { Err(FormatError::DistrictsNotAllowed(forbidden)) }
        });
        let draft = match draft {
            Ok(d) => d,
            Err(e) => return self.reject(&admin, &key, &post.subject, e),
        };
        let Ok(random) = random12(self.store) else { return Outcome::Transient("random source failed".into()) };
        let result = queue_preview(cfg, self.store, self.tokens, &admin, &draft, "mail", &key, post.attachments, false, now, &random);
        match result {
            Ok(Drafted::Created { alert, .. }) => {
                tracing::info!(alert, admin = %admin.login, auth = auth.how.as_str(), "alert post accepted; preview queued");
                Outcome::Stored
            }
            Ok(Drafted::Duplicate) => {
                tracing::info!(admin = %admin.login, "alert post redelivered; ignored");
                Outcome::Dropped("alert: duplicate".into())
            }
            Err(e) => {
                tracing::warn!(error = %e, "store unavailable; asking the MTA to retry");
                Outcome::Transient(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_only_posts_become_text() {
        let t = html_to_text("<html><head><style>p{}</style></head><body><div>地区: 中央</div><p>本文&amp;続き<br>次の行</p></body></html>");
        assert_eq!(t.trim(), "地区: 中央\n本文&続き\n次の行");
    }
}
