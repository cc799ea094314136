//! Alert posts by mail to `alert@DOMAIN`.
//!
//! The order of checks matters: who sent it (an active admin, authenticated)
//! comes before anything is parsed or answered, so a forger gets no reply at
//! all; only an authenticated admin's malformed post gets an explanation,
//! and every reply goes to the admin's *registered* address, never to the
//! From of the post. A redelivered post (same Message-ID, or the same bytes
//! when there is none) records nothing the second time.

use mailparse::{DispositionType, MailHeader, MailHeaderMap as _, ParsedMail};
use mamoru_app::App;
use mamoru_app::alerts::{DraftOutcome, Source};
use mamoru_core::alert::{self, FormatError};
use mamoru_core::{AlertId, Config, EmailAddress, UnixTime};
use mamoru_store::admins::Admin;
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
/// for `<br>` and the ends of `p`, `div`, `tr` and `li`, tags and comments
/// dropped (a `>` inside a quoted attribute value or a comment does not end
/// them), the content of `style`, `script` and `head` dropped, character
/// references decoded (the common named ones, decimal and hexadecimal).
///
/// A small state machine rather than an HTML5 parser crate: the only
/// candidates (html2text and friends, built on html5ever) bring a large
/// dependency tree for what is a text extraction of a short post. One pass
/// over the input, so time and memory are linear whatever the markup.
pub fn html_to_text(html: &str) -> String {
    // ASCII lower-casing keeps every byte offset, so `lower` and `html` are
    // indexed alike; all the markup bytes looked at are ASCII, so every
    // index below is a character boundary.
    let lower = html.to_ascii_lowercase();
    let b = html.as_bytes();
    let mut out = String::with_capacity(html.len());
    let (mut i, mut text_start) = (0, 0);
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        push_decoded(&mut out, &html[text_start..i]);
        if lower[i..].starts_with("<!--") {
            i = lower[i + 4..].find("-->").map_or(b.len(), |p| i + 4 + p + 3);
            text_start = i;
            continue;
        }
        if !b.get(i + 1).is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, b'/' | b'!' | b'?')) {
            // `a < b`: a plain less-than sign.
            out.push('<');
            i += 1;
            text_start = i;
            continue;
        }
        let Some(end) = tag_end(b, i + 1) else {
            // An unterminated tag: the rest is inside it.
            text_start = b.len();
            break;
        };
        let tag = &lower[i + 1..end];
        let closing = tag.starts_with('/');
        let name = tag.trim_start_matches('/').split(|c: char| c.is_ascii_whitespace() || c == '/').next().unwrap_or("");
        if matches!(name, "br" | "p" | "div" | "tr" | "li") && (name == "br" || closing) {
            out.push('\n');
        }
        i = end + 1;
        if !closing && matches!(name, "style" | "script" | "head") {
            // Skip the element's content too.
            i = lower[i..].find(&format!("</{name}")).map_or(b.len(), |p| i + p);
        }
        text_start = i;
    }
    push_decoded(&mut out, &html[text_start.min(b.len())..]);
    let out = out.replace('\r', "");
    out.lines().map(str::trim_end).collect::<Vec<_>>().join("\n")
}

/// The index of the `>` that ends the tag whose name starts at `from`: not
/// one inside a quoted attribute value (`title="a>b"`).
fn tag_end(b: &[u8], from: usize) -> Option<usize> {
    let mut after_eq = false;
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'>' => return Some(i),
            b'=' => after_eq = true,
            q @ (b'"' | b'\'') if after_eq => {
                i += 1 + b[i + 1..].iter().position(|&c| c == q)?;
                after_eq = false;
            }
            c if c.is_ascii_whitespace() => {}
            _ => after_eq = false,
        }
        i += 1;
    }
    None
}

/// Appends `text` with its character references decoded; one that is not
/// understood stays as written.
fn push_decoded(out: &mut String, text: &str) {
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        // The longest reference decoded is `&#x10FFFF;` or `&#1114111;`.
        let decoded = rest.bytes().take(12).position(|c| c == b';').and_then(|semi| Some((reference(&rest[1..semi])?, semi)));
        match decoded {
            Some((c, semi)) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
}

/// The character a reference (without `&` and `;`) stands for. A numeric
/// one that is no character (0, a surrogate, past U+10FFFF) is U+FFFD, as
/// HTML decodes it.
fn reference(name: &str) -> Option<char> {
    let c = match name {
        "nbsp" => ' ',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "amp" => '&',
        _ => {
            let num = name.strip_prefix('#')?;
            let n = match num.strip_prefix(['x', 'X']) {
                Some(hex) if !hex.is_empty() && hex.bytes().all(|c| c.is_ascii_hexdigit()) => u32::from_str_radix(hex, 16).ok()?,
                None if !num.is_empty() && num.bytes().all(|c| c.is_ascii_digit()) => num.parse().ok()?,
                _ => return None,
            };
            char::from_u32(n).filter(|&c| c != '\0').unwrap_or('\u{FFFD}')
        }
    };
    Some(c)
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

/// Header fields a post may have. Real mail has a few dozen (a long
/// `Received:` chain included); DKIM verification compares every signed
/// name with every field, so the count is bounded before it runs.
pub const MAX_HEADER_FIELDS: usize = 500;

/// The single From address of a post.
fn from_address(headers: &[MailHeader<'_>]) -> Option<EmailAddress> {
    let from = headers.get_all_values("From");
    let [one] = from.as_slice() else { return None };
    let list = mailparse::addrparse(one).ok()?;
    let [mailparse::MailAddr::Single(info)] = list.as_slice() else { return None };
    EmailAddress::parse(&info.addr).ok()
}

pub struct AlertPoster<'a> {
    pub app: &'a App,
    pub clock: fn() -> UnixTime,
}

impl AlertPoster<'_> {
    fn refuse(&self, reason: &str, detail: String) -> Outcome {
        let now = (self.clock)();
        tracing::warn!(reason, detail = %detail, "alert post refused");
        if let Err(e) = self.app.store.audit(now, "ingest", "alert-post-refused", &format!("reason={reason} {detail}")) {
            return crate::transient(&e.into());
        }
        Outcome::Dropped(format!("alert: {reason}"))
    }

    /// Answers an authenticated admin's post that cannot become a draft,
    /// once (the replay key is recorded with the rejection).
    fn reject(&self, admin: &Admin, key: &str, subject: &str, e: FormatError) -> Outcome {
        match self.app.reject(admin, key, subject, &e, (self.clock)()) {
            Ok(true) => Outcome::Stored,
            Ok(false) => Outcome::Dropped("alert: duplicate".into()),
            Err(e) => crate::transient(&e),
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
        if headers.len() > MAX_HEADER_FIELDS {
            return self.refuse("too-many-headers", format!("fields={}", headers.len()));
        }
        let Some(from) = from_address(&headers) else { return self.refuse("no-single-from", String::new()) };
        let masked = from.masked();
        if let Some(name) = duplicated_header(&headers) {
            return self.refuse("duplicate-header", format!("header={name} from={masked}"));
        }
        let envelope = EmailAddress::parse(sender.trim_matches(['<', '>']));
        if envelope.as_ref().map(|e| e.canonical()) != Ok(from.canonical()) {
            return self.refuse("envelope-from-mismatch", format!("from={masked}"));
        }
        let admin = match self.app.store.find_admin_by_email(&from) {
            Ok(Some(a)) if a.active => a,
            Ok(Some(_)) => return self.refuse("admin-disabled", format!("from={masked}")),
            Ok(None) => return self.refuse("not-an-admin", format!("from={masked}")),
            Err(e) => return crate::transient(&e.into()),
        };
        let Some(auth) = alert_auth::authenticate(&self.app.cfg, &admin.login, &admin.email, &from, sasl_username, raw) else {
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
        let source = Source::Mail { key: &key, attachments: post.attachments };
        // A post whose first line names a report (`続報: 12`), or a reply to
        // the preview of one, is a follow-up of it; anything else is a first
        // report.
        let replied = ["In-Reply-To", "References"].map(|h| headers.get_all_values(h).join(" ")).join(" ");
        let followup = match alert::parse_followup(&post.text) {
            Some(f) => Some(f.map(|f| (f.of, f.kind, f.text))),
            None => alert::replied_preview(&replied, &self.app.cfg.domain)
                .map(|of| alert::reply_followup(&post.text).map(|(kind, text)| (of, kind, text))),
        };
        let drafted = match followup {
            Some(Ok((of, kind, text))) => self.app.draft_followup(&admin, AlertId::new(of), kind, &text, source, (self.clock)()),
            Some(Err(e)) => return self.reject(&admin, &key, &post.subject, e),
            None => match alert::parse_post(&self.app.cfg, &post.subject, &post.text, (self.clock)()) {
                Ok(draft) => self.app.draft(&admin, &draft, source, false, (self.clock)()),
                Err(e) => return self.reject(&admin, &key, &post.subject, e),
            },
        };
        match drafted {
            Ok(DraftOutcome::Created { .. }) => {
                tracing::info!(admin = %admin.login, auth = auth.how.as_str(), "alert post accepted");
                Outcome::Stored
            }
            Ok(DraftOutcome::Duplicate) => Outcome::Dropped("alert: duplicate".into()),
            Ok(DraftOutcome::Refused(e)) => self.reject(&admin, &key, &post.subject, e),
            Err(e) => crate::transient(&e),
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

    #[test]
    fn comments_and_quoted_attributes_hide_their_text() {
        assert_eq!(html_to_text("a<!-- x > hidden -->b"), "ab");
        assert_eq!(html_to_text("a<!-- unterminated > hidden"), "a");
        assert_eq!(html_to_text("<a title=\"x>hidden\" href='y>z'>link</a>"), "link");
        assert_eq!(html_to_text("<a title = \"x>y\">t</a> <b>u</b>"), "t u");
        assert_eq!(html_to_text("<p class=x>y</p>"), "y");
        assert_eq!(html_to_text("before<a title=\"never closed>after"), "before");
        assert_eq!(html_to_text("<STYLE>p>a{}</STYLE>x<Script>if(a<b){}</SCRIPT>y"), "xy");
    }

    #[test]
    fn character_references_are_decoded() {
        assert_eq!(html_to_text("&#12354;&#x3042;&#X3042;&lt;&gt;&amp;&quot;&apos;&#39;&nbsp;."), "あああ<>&\"'' .");
        // Decoded once: `&amp;lt;` is the text `&lt;`.
        assert_eq!(html_to_text("&amp;lt;"), "&lt;");
        assert_eq!(html_to_text("&#0;&#xD800;&#x110000;"), "\u{FFFD}\u{FFFD}\u{FFFD}");
        assert_eq!(html_to_text("&unknown; & &#; &#x; &#12a; &"), "&unknown; & &#; &#x; &#12a; &");
        assert_eq!(html_to_text("a < b > c"), "a < b > c");
    }

    #[test]
    fn html_to_text_is_linear() {
        let mut next = crate::test_rng::xorshift(0x1234_5678_9abc_def1);
        let pieces = ["<", ">", "<!--", "-->", "\"", "'", "=", "&", ";", "#x", "<style>", "</style", "<p", "あ", " ", "a"];
        for _ in 0..5000 {
            let s: String = (0..(next() % 40)).map(|_| pieces[(next() as usize) % pieces.len()]).collect();
            let _ = html_to_text(&s);
        }
        for evil in ["<style>".repeat(100_000), "<style></style>".repeat(20_000), "<!--".repeat(100_000), "<a title=\"".repeat(100_000), "&#".repeat(200_000)] {
            let t = std::time::Instant::now();
            let _ = html_to_text(&evil);
            assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
        }
    }
}
