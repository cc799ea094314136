//! Inbound classification: is this message a registration (an empty mail to
//! `ans@`) that deserves a 登録受付 reply, or something we must never answer?
//!
//! Sans-I/O: the envelope and the raw message bytes go in, a
//! [`Classification`] comes out. Nothing here logs, stores or sends.
//!
//! Only the envelope and the header section matter. The body and the Subject
//! of an empty mail carry nothing we use (carriers add signatures, HTML
//! wrappers and subjects in any charset), so they are never decoded; a 2 MB
//! message costs one bounded scan for the end of the header section.
//!
//! The drop rules are these: no reply to the null sender, to
//! MAILER-DAEMON, postmaster or no-reply, nor to our own domain (the rule
//! the PC form shares, `mamoru_core::mailbox::no_reply`), to DSNs, to
//! `Auto-Submitted` ≠ `no`, to `Precedence: bulk|list|junk`, to `List-Id` —
//! a reply to any of those is either backscatter or the start of a mail loop.

use mailparse::MailHeader;
use mamoru_core::EmailAddress;
use mamoru_core::mailbox::{self, NoReply};

/// What [`classify`] checks against. Borrowed from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// Our mail domain, e.g. `mamoru.test`. Compared case-insensitively.
    pub domain: &'a str,
    /// The local part that registers, e.g. `ans`. `ans+tag@` registers too.
    pub register_local: &'a str,
    /// Largest header section accepted; see [`Rules::DEFAULT_MAX_HEADER_BYTES`].
    pub max_header_bytes: usize,
}

impl Rules<'_> {
    /// A generous limit: real phone mail has 2–6 KiB of headers, a DSN a
    /// little more, while anything near this is hostile.
    pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
}

/// The SMTP/LMTP envelope of one message for one recipient.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// MAIL FROM without the angle brackets; `""` is the null sender.
    pub sender: &'a str,
    /// One RCPT TO address, without the angle brackets.
    pub recipient: &'a str,
}

/// The verdict for one message and recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    /// An empty mail to the registration address: reply to `reply_to`, the
    /// envelope sender (never a header address, which costs a forger nothing).
    Register { reply_to: EmailAddress },
    /// Acknowledge, log the reason, and do nothing else.
    Drop(DropReason),
}

/// Why a message gets no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// MAIL FROM:<> — bounces and other notifications.
    NullSender,
    /// A MAILER-DAEMON or postmaster sender, or a `multipart/report` (DSN).
    MailerDaemon,
    /// `Auto-Submitted` other than `no`, or another auto-reply marker.
    AutoSubmitted,
    /// `Precedence: bulk`, `list` or `junk`.
    Precedence,
    /// `List-Id` (or `List-Unsubscribe`): mailing-list traffic.
    MailingList,
    /// The sender is on our own domain or a subdomain: a loop.
    OwnDomain,
    /// The envelope sender is not an address we could reply to.
    InvalidSender,
    /// The recipient is not the registration address.
    UnknownRecipient,
    /// The header section is larger than [`Rules::max_header_bytes`].
    HeadersTooLarge,
    /// The MIME structure is beyond [`crate::mime::Limits::DEFAULT`]
    /// (nesting, parts, part headers, boundary length): no phone sends that
    /// for an empty mail.
    MimeTooComplex,
}

impl DropReason {
    /// A stable kebab-case name for logs, metrics and the fixture manifest.
    pub fn as_str(&self) -> &'static str {
        match self {
            DropReason::NullSender => "null-sender",
            DropReason::MailerDaemon => "mailer-daemon",
            DropReason::AutoSubmitted => "auto-submitted",
            DropReason::Precedence => "precedence",
            DropReason::MailingList => "mailing-list",
            DropReason::OwnDomain => "own-domain",
            DropReason::InvalidSender => "invalid-sender",
            DropReason::UnknownRecipient => "unknown-recipient",
            DropReason::HeadersTooLarge => "headers-too-large",
            DropReason::MimeTooComplex => "mime-too-complex",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies one message for one recipient. Never panics, whatever `raw`
/// holds.
///
/// Envelope rules come first (they are cheap and need no parsing), then the
/// header rules. When several rules match, the first in this order wins:
/// unknown recipient, null sender, MAILER-DAEMON, invalid sender, own domain,
/// headers too large, MIME structure too complex, `Auto-Submitted` (and other auto-reply markers),
/// `Precedence`, `List-Id`, DSN content type.
pub fn classify(rules: &Rules, env: &Envelope, raw: &[u8]) -> Classification {
    match classify_inner(rules, env, raw) {
        Ok(reply_to) => Classification::Register { reply_to },
        Err(reason) => Classification::Drop(reason),
    }
}

fn classify_inner(rules: &Rules, env: &Envelope, raw: &[u8]) -> Result<EmailAddress, DropReason> {
    if !is_register_recipient(rules, env.recipient) {
        return Err(DropReason::UnknownRecipient);
    }

    let sender = strip_brackets(env.sender);
    if sender.is_empty() {
        return Err(DropReason::NullSender);
    }
    // Checked on the raw string, before parsing, because MTAs also use a bare
    // `MAILER-DAEMON` without a domain, which would otherwise be "invalid".
    let sender_local = sender.rfind('@').map_or(sender, |at| &sender[..at]);
    if mailbox::is_daemon_local(sender_local) {
        return Err(DropReason::MailerDaemon);
    }
    let reply_to = EmailAddress::parse(sender).map_err(|_| DropReason::InvalidSender)?;
    // The same rule the PC form applies (`mamoru_core::mailbox`).
    match mailbox::no_reply(&reply_to, rules.domain) {
        Some(NoReply::Daemon) => return Err(DropReason::MailerDaemon),
        Some(NoReply::OwnDomain) => return Err(DropReason::OwnDomain),
        None => {}
    }

    let header_section = header_section(raw, rules.max_header_bytes).ok_or(DropReason::HeadersTooLarge)?;
    // The body is never parsed here, but a structure no parser could take is
    // junk, not a parent: one linear, non-recursive scan decides.
    let limits = crate::mime::Limits { max_header_bytes: rules.max_header_bytes, ..crate::mime::Limits::DEFAULT };
    crate::mime::prescan(raw, &limits).map_err(|_| DropReason::MimeTooComplex)?;
    // Choice: when the header section cannot be parsed at all (mailparse
    // refuses a first line that starts with white space, or a line that
    // starts with a bare CR), we register from the envelope alone. A
    // registration needs nothing from the headers or the body, and a phone
    // whose mail is slightly broken still belongs to a parent. The header
    // rules exist to stop auto-replies and bulk mail; real auto-responders
    // and list servers emit well-formed headers, and whatever slips through
    // still meets the per-address cooldown and the daily and global caps,
    // so it cannot turn us into a mail cannon.
    if let Ok((headers, _)) = mailparse::parse_headers(header_section) {
        if let Some(reason) = header_drop_reason(&headers) {
            return Err(reason);
        }
    }
    Ok(reply_to)
}

/// `register_local@domain`, or `register_local+tag@domain`, case-insensitive.
pub fn is_register_recipient(rules: &Rules, recipient: &str) -> bool {
    let recipient = strip_brackets(recipient);
    let Some(at) = recipient.rfind('@') else {
        return false;
    };
    let (local, domain) = (&recipient.as_bytes()[..at], &recipient[at + 1..]);
    let want = rules.register_local.as_bytes();
    let local_ok = match local.get(..want.len()) {
        Some(head) if head.eq_ignore_ascii_case(want) => {
            local.len() == want.len() || local.get(want.len()) == Some(&b'+')
        }
        _ => false,
    };
    local_ok && !want.is_empty() && same_domain(domain, rules.domain)
}

fn strip_brackets(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('<').and_then(|s| s.strip_suffix('>')).unwrap_or(s)
}

/// Domains compare case-insensitively and without a trailing root dot.
fn same_domain(a: &str, b: &str) -> bool {
    a.trim_end_matches('.').eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// The header section of `raw`, without the blank line that ends it, or
/// `None` when it is longer than `max` bytes. A message without a blank line
/// is all header (RFC 5322 allows a message without a body).
///
/// The scan looks at no more than `max + 2` bytes, so the size of the body
/// never matters. A blank line is `LF` or `CR LF` at the start of a line,
/// exactly where `mailparse::parse_headers` stops.
pub(crate) fn header_section(raw: &[u8], max: usize) -> Option<&[u8]> {
    let window = &raw[..raw.len().min(max.saturating_add(2))];
    let mut line_start = 0;
    while line_start <= max && line_start < window.len() {
        let rest = &window[line_start..];
        if rest.starts_with(b"\n") || rest.starts_with(b"\r\n") {
            return Some(&raw[..line_start]);
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(nl) => line_start += nl + 1,
            None => break,
        }
    }
    (raw.len() <= max).then_some(raw)
}

/// The header rules, in priority order. Values are read raw: none of these
/// headers needs charset decoding, and skipping it keeps odd Subjects from
/// costing anything.
fn header_drop_reason(headers: &[MailHeader]) -> Option<DropReason> {
    let (mut auto, mut precedence, mut list, mut report) = (false, false, false, false);
    for h in headers {
        let key = h.get_key_raw().trim_ascii();
        let value = String::from_utf8_lossy(h.get_value_raw());
        let token = first_token(&value);
        let is = |name: &str| key.eq_ignore_ascii_case(name.as_bytes());
        if is("Auto-Submitted") || is("X-Autoreply") || is("X-Autorespond") || is("X-Autoresponder") {
            // Present with any value but `no` (an empty value included) means
            // machine-generated; RFC 3834 says never to auto-reply to it.
            auto |= token != "no";
        } else if is("X-Auto-Response-Suppress") {
            // Exchange/Outlook: the sender asks for no automatic replies.
            auto |= value.split(',').any(|v| {
                let v = v.trim();
                ["all", "oof", "autoreply"].iter().any(|w| v.eq_ignore_ascii_case(w))
            });
        } else if is("Precedence") {
            match token.as_str() {
                "bulk" | "list" | "junk" => precedence = true,
                // Old vacation programs mark their replies this way.
                "auto_reply" => auto = true,
                _ => {}
            }
        } else if is("List-Id") || is("List-Unsubscribe") {
            list = true;
        } else if is("Content-Type") {
            report |= token == "multipart/report";
        }
    }
    [
        (auto, DropReason::AutoSubmitted),
        (precedence, DropReason::Precedence),
        (list, DropReason::MailingList),
        (report, DropReason::MailerDaemon),
    ]
    .into_iter()
    .find_map(|(hit, reason)| hit.then_some(reason))
}

/// The lower-cased value before any `;` parameters or comment, e.g.
/// `auto-replied` from `Auto-Replied; owner-email="x@y"`.
fn first_token(value: &str) -> String {
    let end = value.find([';', '(']).unwrap_or(value.len());
    value[..end].trim().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules<'static> =
        Rules { domain: "mamoru.test", register_local: "ans", max_header_bytes: Rules::DEFAULT_MAX_HEADER_BYTES };
    const PLAIN: &[u8] = b"From: taro@docomo.ne.jp\r\nTo: ans@mamoru.test\r\nSubject: \r\n\r\n";

    fn check(sender: &str, recipient: &str, raw: &[u8], want: Result<&str, DropReason>) {
        let got = classify(&RULES, &Envelope { sender, recipient }, raw);
        match (want, &got) {
            (Ok(addr), Classification::Register { reply_to }) => assert_eq!(reply_to.as_str(), addr),
            (Err(reason), Classification::Drop(r)) => assert_eq!(*r, reason, "{sender} -> {recipient}"),
            _ => panic!("{sender} -> {recipient}: want {want:?}, got {got:?}"),
        }
    }

    fn with_header(header: &str) -> Vec<u8> {
        format!("From: x@au.com\r\n{header}\r\nTo: ans@mamoru.test\r\n\r\nbody\r\n").into_bytes()
    }

    #[test]
    fn registers_an_empty_mail_to_ans() {
        check("taro@docomo.ne.jp", "ans@mamoru.test", PLAIN, Ok("taro@docomo.ne.jp"));
        check("<taro@Docomo.NE.jp>", "<ans@mamoru.test>", PLAIN, Ok("taro@docomo.ne.jp"));
        check("taro@docomo.ne.jp", "ans@mamoru.test", b"", Ok("taro@docomo.ne.jp"));
    }

    #[test]
    fn accepts_carrier_dots_in_the_sender() {
        check("taro..yamada.@docomo.ne.jp", "ans@mamoru.test", PLAIN, Ok("taro..yamada.@docomo.ne.jp"));
        check(".hanako@ezweb.ne.jp", "ans@mamoru.test", PLAIN, Ok(".hanako@ezweb.ne.jp"));
    }

    #[test]
    fn recipient_is_case_insensitive_and_takes_a_tag() {
        for r in ["ANS@MAMORU.TEST", "Ans@Mamoru.Test", "ans+chuo@mamoru.test", "ANS+1@mamoru.test.", "ans+@mamoru.test"] {
            check("a@au.com", r, PLAIN, Ok("a@au.com"));
        }
    }

    #[test]
    fn other_recipients_are_unknown() {
        for r in [
            "info@mamoru.test", "ansx@mamoru.test", "an@mamoru.test", "ans@other.test", "ans@sub.mamoru.test",
            "ans", "", "ans-chuo@mamoru.test", "xans@mamoru.test", "アンス@mamoru.test",
        ] {
            check("a@au.com", r, PLAIN, Err(DropReason::UnknownRecipient));
        }
    }

    #[test]
    fn null_sender_is_dropped() {
        check("", "ans@mamoru.test", PLAIN, Err(DropReason::NullSender));
        check("<>", "ans@mamoru.test", PLAIN, Err(DropReason::NullSender));
        check("  ", "ans@mamoru.test", PLAIN, Err(DropReason::NullSender));
    }

    #[test]
    fn daemons_are_dropped() {
        for s in [
            "MAILER-DAEMON@mx.example.jp", "mailer-daemon@docomo.ne.jp", "Mailer_Daemon@x.jp", "MAILER-DAEMON",
            "postmaster@ezweb.ne.jp", "PostMaster@x.jp", "double-bounce@x.jp",
        ] {
            check(s, "ans@mamoru.test", PLAIN, Err(DropReason::MailerDaemon));
        }
        check("mailer@x.jp", "ans@mamoru.test", PLAIN, Ok("mailer@x.jp"));
    }

    #[test]
    fn the_shared_no_reply_table() {
        for (sender, want) in mailbox::NO_REPLY_EXAMPLES {
            let want = match want {
                Some(NoReply::Daemon) => Err(DropReason::MailerDaemon),
                Some(NoReply::OwnDomain) => Err(DropReason::OwnDomain),
                None => Ok(*sender),
            };
            check(sender, "ans@mamoru.test", PLAIN, want);
        }
    }

    #[test]
    fn own_domain_is_a_loop() {
        for s in ["ans@mamoru.test", "bounce+x@MAMORU.TEST", "a@mx.mamoru.test"] {
            check(s, "ans@mamoru.test", PLAIN, Err(DropReason::OwnDomain));
        }
        check("a@notmamoru.test", "ans@mamoru.test", PLAIN, Ok("a@notmamoru.test"));
    }

    #[test]
    fn unusable_senders_are_invalid() {
        for s in ["taro", "a b@x.jp", "x@y.jp\r\nBcc: z@w.jp", "\"q\"@x.jp", "a@x..jp", "a\0@x.jp", "@x.jp"] {
            check(s, "ans@mamoru.test", PLAIN, Err(DropReason::InvalidSender));
        }
    }

    #[test]
    fn auto_submitted_other_than_no() {
        for h in [
            "Auto-Submitted: auto-replied",
            "auto-submitted: Auto-Generated",
            "Auto-Submitted: auto-replied; owner-email=\"x@au.com\"",
            "Auto-Submitted:",
            "Auto-Submitted: yes (vacation)",
            "X-Autoreply: yes",
            "X-Autorespond: Out of office",
            "X-Auto-Response-Suppress: All",
            "X-Auto-Response-Suppress: DR, OOF",
            "Precedence: auto_reply",
        ] {
            check("x@au.com", "ans@mamoru.test", &with_header(h), Err(DropReason::AutoSubmitted));
        }
        check("x@au.com", "ans@mamoru.test", &with_header("Auto-Submitted: No"), Ok("x@au.com"));
        check("x@au.com", "ans@mamoru.test", &with_header("X-Auto-Response-Suppress: DR, RN"), Ok("x@au.com"));
    }

    #[test]
    fn precedence_bulk_list_junk() {
        for h in ["Precedence: bulk", "precedence: LIST", "Precedence:  junk  "] {
            check("x@au.com", "ans@mamoru.test", &with_header(h), Err(DropReason::Precedence));
        }
        check("x@au.com", "ans@mamoru.test", &with_header("Precedence: first-class"), Ok("x@au.com"));
    }

    #[test]
    fn list_headers() {
        for h in ["List-Id: PTA news <pta.example.jp>", "list-id: <x>", "List-Unsubscribe: <mailto:u@x.jp>"] {
            check("x@au.com", "ans@mamoru.test", &with_header(h), Err(DropReason::MailingList));
        }
    }

    #[test]
    fn dsn_content_type() {
        let h = "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"x\"";
        check("x@au.com", "ans@mamoru.test", &with_header(h), Err(DropReason::MailerDaemon));
        check("x@au.com", "ans@mamoru.test", &with_header("Content-Type: multipart/mixed; boundary=x"), Ok("x@au.com"));
    }

    #[test]
    fn auto_submitted_wins_over_precedence_and_list() {
        let raw = b"Precedence: bulk\nList-Id: <l>\nAuto-Submitted: auto-generated\n\n";
        check("x@au.com", "ans@mamoru.test", raw, Err(DropReason::AutoSubmitted));
    }

    #[test]
    fn body_is_never_read() {
        // Header-looking lines after the blank line are body, not headers.
        let raw = b"From: x@au.com\n\nAuto-Submitted: auto-replied\nPrecedence: bulk\n";
        check("x@au.com", "ans@mamoru.test", raw, Ok("x@au.com"));
    }

    #[test]
    fn header_size_limit() {
        let rules = Rules { max_header_bytes: 100, ..RULES };
        let env = Envelope { sender: "x@au.com", recipient: "ans@mamoru.test" };
        let big = format!("X-Pad: {}\r\n\r\n", "a".repeat(200));
        assert_eq!(classify(&rules, &env, big.as_bytes()), Classification::Drop(DropReason::HeadersTooLarge));
        // No blank line: the whole message is header.
        let no_body = "X-Pad: a\r\n".repeat(20);
        assert_eq!(classify(&rules, &env, no_body.as_bytes()), Classification::Drop(DropReason::HeadersTooLarge));
        // Exactly at the limit, with a huge body: fine.
        let mut at_limit = format!("X-Pad: {}\r\n", "a".repeat(91)).into_bytes();
        assert_eq!(at_limit.len(), 100);
        at_limit.extend_from_slice(b"\r\n");
        at_limit.extend(std::iter::repeat_n(b'x', 3_000_000));
        assert!(matches!(classify(&rules, &env, &at_limit), Classification::Register { .. }));
        at_limit.insert(0, b'Y');
        assert_eq!(classify(&rules, &env, &at_limit), Classification::Drop(DropReason::HeadersTooLarge));
    }

    #[test]
    fn header_section_boundaries() {
        assert_eq!(header_section(b"A: b\n\nbody", 64), Some(&b"A: b\n"[..]));
        assert_eq!(header_section(b"A: b\r\n\r\nbody", 64), Some(&b"A: b\r\n"[..]));
        assert_eq!(header_section(b"\r\nbody", 64), Some(&b""[..]));
        assert_eq!(header_section(b"A: b\r\n \r\nC: d", 64), Some(&b"A: b\r\n \r\nC: d"[..]));
        assert_eq!(header_section(b"", 0), Some(&b""[..]));
        assert_eq!(header_section(b"A", 0), None);
    }

    #[test]
    fn unparseable_headers_fall_back_to_the_envelope() {
        // mailparse rejects a leading continuation line and a line that starts
        // with a bare CR; the envelope alone decides then.
        assert!(mailparse::parse_headers(b" folded: x\n\n").is_err());
        check("x@au.com", "ans@mamoru.test", b" folded: x\nAuto-Submitted: yes\n\n", Ok("x@au.com"));
        assert!(mailparse::parse_headers(b"A: b\n\rC: d\n\n").is_err());
        check("x@au.com", "ans@mamoru.test", b"A: b\n\rC: d\n\n", Ok("x@au.com"));
    }

    #[test]
    fn odd_subjects_and_garbage_are_harmless() {
        let mut raw = b"Subject: =?ISO-2022-JP?B?GyRCJUYlOSVIGyhC?=\r\nSubject: =?Shift_JIS?B?g2WDWINn?=\r\n".to_vec();
        raw.extend_from_slice(b"Subject: \x83\x65\x83\x58\x83\x67\r\nSubject: =?utf-8?Q?broken=E3=8\r\n");
        raw.extend_from_slice(b"\x00\xff\xfe: \x1b$B\r\nno colon here\r\n\r\n\x00\x01\x02");
        check("x@au.com", "ans@mamoru.test", &raw, Ok("x@au.com"));
    }

    /// A small deterministic fuzz: mutated messages and random bytes never
    /// panic (every parser is fuzzed; this is the cheap
    /// always-on part).
    #[test]
    fn never_panics_on_junk() {
        let base = b"Received: from x\r\n\tby y\r\nAuto-Submitted: no\r\nContent-Type: multipart/report; b=\"\r\n\r\n--x\r\n";
        let mut next = crate::test_rng::xorshift(0x9e37_79b9_7f4a_7c15);
        let interesting = [b'\r', b'\n', b':', b' ', b'\t', 0, 0xff, b';', b'@', b'<'];
        for i in 0..3000 {
            let mut raw = base.to_vec();
            for _ in 0..(next() % 8) {
                let pos = (next() as usize) % (raw.len() + 1);
                let byte = if i % 2 == 0 { interesting[(next() as usize) % interesting.len()] } else { next() as u8 };
                raw.insert(pos, byte);
            }
            let rules = Rules { max_header_bytes: (next() % 200) as usize, ..RULES };
            let _ = classify(&rules, &Envelope { sender: "x@au.com", recipient: "ans@mamoru.test" }, &raw);
        }
    }

    #[test]
    fn nested_mime_is_junk() {
        let env = Envelope { sender: "x@au.com", recipient: "ans@mamoru.test" };
        let deep = crate::mime::nested_message(3_000, 0);
        assert_eq!(classify(&RULES, &env, &deep), Classification::Drop(DropReason::MimeTooComplex));
        let wide = crate::mime::nested_message(1, 1_000);
        assert_eq!(classify(&RULES, &env, &wide), Classification::Drop(DropReason::MimeTooComplex));
        assert!(matches!(classify(&RULES, &env, &crate::mime::nested_message(3, 3)), Classification::Register { .. }));
    }

    #[test]
    fn reason_names_are_kebab_case() {
        assert_eq!(DropReason::AutoSubmitted.as_str(), "auto-submitted");
        assert_eq!(DropReason::HeadersTooLarge.to_string(), "headers-too-large");
    }
}
