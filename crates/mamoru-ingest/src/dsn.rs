//! Bounce parsing: a returned message in, the failed recipient and a class
//! out. Sans-I/O: nothing here logs, stores or sends.
//!
//! Two shapes reach the VERP address:
//! - RFC 3464 delivery status notifications (`multipart/report;
//!   report-type=delivery-status`, Postfix, Exim with DSN, Gmail, Outlook):
//!   the `message/delivery-status` part names each recipient with its
//!   `Action`, `Status` and `Diagnostic-Code`;
//! - non-standard reports (Exim's plain "Mail delivery failed", qmail's
//!   "failure notice", the carriers' own Japanese notices): only text, from
//!   which the enhanced status code (`5.1.1`), the SMTP reply code (`550`)
//!   and well-known phrases ("User unknown", "quota", "spam") are read.
//!
//! Auto-replies (vacation notices, 自動応答) reach the VERP address too, as
//! any reply to the return path does; they are [`Class::NotABounce`].
//!
//! The class decides what happens to the subscriber (see
//! `mamoru_store::bounces`), so the rules lean towards "not the
//! subscriber's fault": a status that says *we* were refused (`x.7.x`,
//! "spam", "blocked") is [`Class::BlockedAsSpam`] even when the reply code is
//! 550, because suspending a parent for a carrier's view of our reputation
//! would be wrong.

use mailparse::{MailHeaderMap, ParsedMail};

use crate::mime;

/// What a returned message says about the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The address does not exist (5.1.1, "550 Unknown user").
    UnknownUser,
    /// The mailbox is full (5.2.2, "quota").
    MailboxFull,
    /// The receiving side refused *us* (policy, spam, reputation).
    BlockedAsSpam,
    /// A delay warning or a 4xx: may still succeed.
    Temporary,
    /// A failure we cannot place.
    Other,
    /// Not a delivery failure: an auto-reply, a success DSN, a human.
    NotABounce,
}

impl Class {
    /// The same kebab-case names the store and the fixture manifest use.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::UnknownUser => "unknown-user",
            Class::MailboxFull => "mailbox-full",
            Class::BlockedAsSpam => "blocked-as-spam",
            Class::Temporary => "temporary",
            Class::Other => "other",
            Class::NotABounce => "not-a-bounce",
        }
    }
}

/// The parsed report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub class: Class,
    /// The failed recipient as the report names it (lowercased), if it does.
    pub recipient: Option<String>,
    /// The enhanced status code (`5.1.1`) if one was found, else the SMTP
    /// reply code (`550`), else empty.
    pub status: String,
}

impl Report {
    fn not_a_bounce() -> Self {
        Report { class: Class::NotABounce, recipient: None, status: String::new() }
    }
}

/// Largest text looked at; reports are small, and the returned original
/// message after them is of no interest.
const MAX_TEXT: usize = 64 * 1024;

/// Parses a returned message. Never panics, whatever `raw` holds; a
/// message beyond the bounds of [`mime::Limits::DEFAULT`] is not parsed at
/// all (`Err`).
pub fn parse(raw: &[u8]) -> Result<Report, mime::TooComplex> {
    let mail = match mime::parse(raw, &mime::Limits::DEFAULT) {
        Ok(mail) => mail,
        Err(mime::ParseError::TooComplex(e)) => return Err(e),
        Err(mime::ParseError::Unparsable(_)) => {
            // Unparsable headers: read what text there is.
            let text = String::from_utf8_lossy(&raw[..raw.len().min(MAX_TEXT)]).into_owned();
            return Ok(from_text(&text, "", true));
        }
    };
    Ok(report_of(&mail))
}

fn report_of(mail: &ParsedMail<'_>) -> Report {
    let mut dsn_parts = Vec::new();
    collect_dsn_parts(mail, &mut dsn_parts, 0);
    if let Some(report) = dsn_parts.iter().find_map(|body| from_delivery_status(body)) {
        return report;
    }
    let subject = mail.headers.get_first_value("Subject").unwrap_or_default();
    let from = mail.headers.get_first_value("From").unwrap_or_default().to_ascii_lowercase();
    if is_auto_reply(mail, &subject) {
        return Report::not_a_bounce();
    }
    let from_daemon = ["mailer-daemon", "postmaster", "mail delivery", "mail-daemon"].iter().any(|d| from.contains(d));
    let looks_like = from_daemon || bounce_subject(&subject);
    let mut text = String::new();
    collect_text(mail, &mut text, 0);
    from_text(&text, &subject, looks_like)
}

/// The bodies of `message/delivery-status` parts, depth-first.
fn collect_dsn_parts(part: &ParsedMail<'_>, out: &mut Vec<String>, depth: usize) {
    if depth > 8 {
        return;
    }
    let ct = part.ctype.mimetype.to_ascii_lowercase();
    if ct == "message/delivery-status" || ct == "message/global-delivery-status" {
        if let Ok(body) = part.get_body_raw() {
            out.push(String::from_utf8_lossy(&body[..body.len().min(MAX_TEXT)]).into_owned());
        }
        return;
    }
    // A returned original message (message/rfc822) may itself be a report;
    // only the outer report is ours.
    if ct == "message/rfc822" || ct == "text/rfc822-headers" {
        return;
    }
    for sub in &part.subparts {
        collect_dsn_parts(sub, out, depth + 1);
    }
}

/// The human-readable text parts (not returned originals), decoded.
fn collect_text(part: &ParsedMail<'_>, out: &mut String, depth: usize) {
    if depth > 8 || out.len() > MAX_TEXT {
        return;
    }
    let ct = part.ctype.mimetype.to_ascii_lowercase();
    if ct == "message/rfc822" || ct == "text/rfc822-headers" {
        return;
    }
    if part.subparts.is_empty() {
        if ct.starts_with("text/") || ct.is_empty() {
            if let Ok(body) = part.get_body() {
                let body = if ct == "text/html" { strip_tags(&body) } else { body };
                out.push_str(&body[..floor_char_boundary(&body, MAX_TEXT)]);
                out.push('\n');
            }
        }
        return;
    }
    for sub in &part.subparts {
        collect_text(sub, out, depth + 1);
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").replace("&nbsp;", " ")
}

/// One recipient block of a `message/delivery-status` body.
#[derive(Default)]
struct RecipientFields {
    recipient: Option<String>,
    action: String,
    status: String,
    diagnostic: String,
}

/// Reads the per-recipient groups of a delivery-status body and reports on
/// the first failed recipient (or the first delayed one when none failed).
/// `None` when the body holds no recipient group at all.
fn from_delivery_status(body: &str) -> Option<Report> {
    let mut groups: Vec<RecipientFields> = Vec::new();
    let mut current = RecipientFields::default();
    let mut last_field = String::new();
    let mut has_fields = false;
    let flush = |current: &mut RecipientFields, groups: &mut Vec<RecipientFields>, has_fields: &mut bool| {
        if *has_fields && (current.recipient.is_some() || !current.action.is_empty() || !current.status.is_empty()) {
            groups.push(std::mem::take(current));
        } else {
            *current = RecipientFields::default();
        }
        *has_fields = false;
    };
    for line in body.lines() {
        if line.trim().is_empty() {
            flush(&mut current, &mut groups, &mut has_fields);
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // A folded continuation, usually of Diagnostic-Code.
            if last_field == "diagnostic-code" {
                current.diagnostic.push(' ');
                current.diagnostic.push_str(line.trim());
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else { continue };
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        has_fields = true;
        match name.as_str() {
            "final-recipient" | "original-recipient" => {
                // `rfc822; user@example.jp`; Final-Recipient wins over Original.
                let addr = value.split_once(';').map_or(value, |(_, a)| a).trim().trim_matches(['<', '>']).to_ascii_lowercase();
                if name == "final-recipient" || current.recipient.is_none() {
                    current.recipient = Some(addr).filter(|a| a.contains('@'));
                }
            }
            "action" => current.action = value.to_ascii_lowercase(),
            "status" => current.status = value.split_whitespace().next().unwrap_or("").to_string(),
            "diagnostic-code" => {
                current.diagnostic = value.split_once(';').map_or(value, |(_, d)| d).trim().to_string();
            }
            _ => {}
        }
        last_field = name;
    }
    flush(&mut current, &mut groups, &mut has_fields);
    let pick = groups
        .iter()
        .position(|g| g.action == "failed")
        .or_else(|| groups.iter().position(|g| g.action == "delayed"))
        .or_else(|| groups.iter().position(|g| g.action.is_empty() && g.status.starts_with(['4', '5'])))
        .map(|i| &groups[i]);
    let Some(g) = pick else {
        // Only delivered/relayed/expanded recipients: a success notice.
        return groups.iter().any(|g| g.recipient.is_some()).then(Report::not_a_bounce);
    };
    let mut class = classify(Some(&g.status), reply_code(&g.diagnostic), &g.diagnostic);
    // A delay warning is never final, whatever its status says.
    if g.action == "delayed" && matches!(class, Class::UnknownUser | Class::Other) {
        class = Class::Temporary;
    }
    let status = if g.status.is_empty() { reply_code(&g.diagnostic).map(|c| c.to_string()).unwrap_or_default() } else { g.status.clone() };
    Some(Report { class, recipient: g.recipient.clone(), status })
}

/// A non-standard report: only if it looks like a bounce at all.
fn from_text(text: &str, subject: &str, looks_like_bounce: bool) -> Report {
    let status = enhanced_status(text);
    let code = reply_code(text);
    let lower = text.to_lowercase();
    let failure_phrase = FAILURE.iter().any(|w| lower.contains(w));
    if !(looks_like_bounce || (failure_phrase && (status.is_some() || code.is_some()))) {
        return Report::not_a_bounce();
    }
    let class = classify(status.as_deref(), code, &format!("{subject}\n{text}"));
    let recipient = failed_recipient(text);
    let status = status.or_else(|| code.map(|c| c.to_string())).unwrap_or_default();
    Report { class, recipient, status }
}

/// Phrases of an address that does not exist.
const UNKNOWN: &[&str] = &[
    "user unknown",
    "unknown user",
    "no such user",
    "unknown recipient",
    "no such recipient",
    "invalid recipient",
    "recipient address rejected",
    "does not exist",
    "doesn't exist",
    "no mailbox here",
    "mailbox not found",
    "mailbox unavailable",
    "account is disabled",
    "account that you tried to reach is disabled",
    "user not found",
    "not our customer",
    "宛先不明",
    "存在しません",
    "見つかりません",
];

/// Phrases of a full mailbox.
const QUOTA: &[&str] = &["quota", "mailbox full", "mailbox is full", "insufficient storage", "out of storage", "容量"];

/// Phrases of the receiving side refusing us.
const SPAM: &[&str] = &[
    "spam",
    "blocked",
    "blacklist",
    "black list",
    "blocklist",
    "block list",
    "reputation",
    "spamhaus",
    "unsolicited",
    "迷惑メール",
];

/// Phrases that make a text a failure report even without a daemon sender.
const FAILURE: &[&str] = &[
    "could not be delivered",
    "undeliverable",
    "delivery has failed",
    "delivery failed",
    "permanent error",
    "returned mail",
    "undelivered",
    "配信できません",
    "送信できません",
    "届けられません",
];

/// The class from a status code, a reply code and the diagnostic text.
fn classify(status: Option<&str>, code: Option<u16>, text: &str) -> Class {
    let lower = text.to_lowercase();
    let unknown = UNKNOWN.iter().any(|w| lower.contains(w));
    let quota = QUOTA.iter().any(|w| lower.contains(w));
    let spam = SPAM.iter().any(|w| lower.contains(w));
    let status = status.unwrap_or("");
    let (class_digit, subject_detail) = match status.split_once('.') {
        Some((c, rest)) => (c, rest),
        None => ("", ""),
    };
    let temporary = class_digit == "4" || (class_digit.is_empty() && code.is_some_and(|c| (400..500).contains(&c)));
    if temporary {
        return if status == "4.2.2" || quota {
            Class::MailboxFull
        } else if subject_detail.starts_with('7') || spam {
            Class::BlockedAsSpam
        } else {
            Class::Temporary
        };
    }
    match subject_detail {
        // 5.1.x: bad destination mailbox or system; 5.2.1: disabled.
        d if d.starts_with("1.") => return Class::UnknownUser,
        "2.2" => return Class::MailboxFull,
        "2.1" => return if quota { Class::MailboxFull } else { Class::UnknownUser },
        d if d.starts_with("7.") => return if unknown && !spam { Class::UnknownUser } else { Class::BlockedAsSpam },
        _ => {}
    }
    if unknown {
        Class::UnknownUser
    } else if quota || (status.is_empty() && code == Some(552)) {
        Class::MailboxFull
    } else if spam {
        Class::BlockedAsSpam
    } else {
        Class::Other
    }
}

/// The first enhanced status code (`5.1.1`, `4.2.2`) in `text`.
fn enhanced_status(text: &str) -> Option<String> {
    let b = text.as_bytes();
    for i in 0..b.len() {
        if !matches!(b[i], b'2' | b'4' | b'5') || b.get(i + 1) != Some(&b'.') {
            continue;
        }
        if i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.') {
            continue;
        }
        let rest = &text[i + 2..];
        let d1 = rest.bytes().take_while(u8::is_ascii_digit).count();
        if d1 == 0 || d1 > 3 || rest.as_bytes().get(d1) != Some(&b'.') {
            continue;
        }
        let rest2 = &rest[d1 + 1..];
        let d2 = rest2.bytes().take_while(u8::is_ascii_digit).count();
        if d2 == 0 || d2 > 3 {
            continue;
        }
        // Not part of a longer dotted number (an IP address, a version).
        if matches!(rest2.as_bytes().get(d2), Some(b'.') | Some(b'0'..=b'9')) {
            continue;
        }
        if b[i] == b'2' {
            continue;
        }
        return Some(text[i..i + 2 + d1 + 1 + d2].to_string());
    }
    None
}

/// The first SMTP reply code (`550`, `452`) that stands on its own in `text`:
/// three digits starting with 4 or 5, followed by a space, a dash or the end.
fn reply_code(text: &str) -> Option<u16> {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(2)).find_map(|i| {
        let digits = &b[i..i + 3];
        let ok = matches!(digits[0], b'4' | b'5')
            && digits[1..].iter().all(u8::is_ascii_digit)
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.' || b[i - 1] == b'-' || b[i - 1] == b'+'))
            && matches!(b.get(i + 3), None | Some(b' ' | b'-' | b'\r' | b'\n'));
        ok.then(|| (digits[0] - b'0') as u16 * 100 + (digits[1] - b'0') as u16 * 10 + (digits[2] - b'0') as u16)
    })
}

/// The first address in the text that is not a daemon's: reports name the
/// failed recipient before anything else.
fn failed_recipient(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '(' | ')' | ',' | ';' | '[' | ']' | '\''))
        .map(|w| w.trim_end_matches(['.', ':']))
        .filter(|w| {
            let Some(at) = w.rfind('@') else { return false };
            at > 0 && w[at + 1..].contains('.') && w.is_ascii()
        })
        .map(str::to_ascii_lowercase)
        .find(|w| !(w.starts_with("mailer-daemon@") || w.starts_with("postmaster@") || w.starts_with("bounce+")))
}

fn bounce_subject(subject: &str) -> bool {
    let s = subject.to_lowercase();
    [
        "undeliver",
        "delivery status notification",
        "delivery failure",
        "delivery failed",
        "mail delivery failed",
        "returned mail",
        "failure notice",
        "mail system error",
        "non-delivery",
        "nondeliverable",
        "could not be delivered",
        "配信エラー",
        "配信不能",
        "送信エラー",
        "エラーメール",
    ]
    .iter()
    .any(|w| s.contains(w))
}

/// Vacation notices and other automatic answers, which are not failures.
fn is_auto_reply(mail: &ParsedMail<'_>, subject: &str) -> bool {
    let h = &mail.headers;
    let auto = h.get_first_value("Auto-Submitted").map(|v| v.to_ascii_lowercase());
    if auto.as_deref().is_some_and(|v| v.starts_with("auto-replied")) && !bounce_subject(subject) {
        return true;
    }
    if h.get_first_value("X-Autoreply").is_some() || h.get_first_value("X-Autorespond").is_some() {
        return true;
    }
    if h.get_first_value("Precedence").is_some_and(|v| v.eq_ignore_ascii_case("auto_reply")) {
        return true;
    }
    let s = subject.to_lowercase();
    ["out of office", "automatic reply", "auto:", "autoreply", "vacation", "自動応答", "自動返信", "不在"].iter().any(|w| s.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_reply_codes_are_found_on_their_own() {
        assert_eq!(enhanced_status("said: 550 5.1.1 <a@b.jp>: User unknown").as_deref(), Some("5.1.1"));
        assert_eq!(enhanced_status("host 192.168.5.1.2 x"), None);
        assert_eq!(enhanced_status("version 5.10.20.1"), None);
        assert_eq!(enhanced_status("Status: 4.2.2"), Some("4.2.2".into()));
        assert_eq!(reply_code("said: 550 Unknown user"), Some(550));
        assert_eq!(reply_code("550-5.1.1 The email"), Some(550));
        assert_eq!(reply_code("port 25500 and 1550 x"), None);
        assert_eq!(reply_code("no code"), None);
    }

    #[test]
    fn garbage_never_panics() {
        for raw in [&b""[..], b"\xff\xfe\x00", b"Content-Type: multipart/report; boundary=\"x\"\r\n\r\n--x\r\n", b"5.", b"550"] {
            assert!(parse(raw).is_ok());
        }
        let mut big = b"Subject: Undelivered Mail\r\n\r\n".to_vec();
        big.extend(std::iter::repeat_n(b"5.1.1 \xe5\xae", 100_000).flatten());
        assert!(parse(&big).is_ok());
    }

    #[test]
    fn a_deeply_nested_report_is_not_parsed() {
        assert_eq!(parse(&mime::nested_message(3_000, 0)), Err(mime::TooComplex::Depth(8)));
        assert!(parse(&mime::nested_message(3, 2)).is_ok());
    }
}
