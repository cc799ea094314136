//! The result of one delivery attempt, and how its reason is made fit to keep.

use mamoru_core::EmailAddress;

/// What became of one attempt to hand a queued message to the next hop. An
/// attempt never returns an error: every failure is a decision about the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The next hop accepted the message (a 250 after the final dot, or the
    /// file is durably in place).
    Sent,
    /// Try again later: a 4xx reply, a refused or broken connection, a
    /// timeout, a full disk.
    Retry { reason: String },
    /// Try again later, and slow down: the carrier pushed back on the pace
    /// (a 421 or a pace 4xx on a session that already carried a message,
    /// see [`Reply::is_pace_push_back`], a broken session, a timeout). The
    /// pool pauses and lowers its learned pace.
    Throttled { reason: String },
    /// Try again later: the carrier refused a session as it opened (a 4xx at
    /// the greeting, EHLO, STARTTLS or AUTH, a refused or reset connection
    /// before MAIL, a 421 on a fresh session): "too many sessions". The pool
    /// lowers its learned connection cap and its other sessions go on.
    SessionRefused { reason: String },
    /// The next hop refused this message for good (a 5xx reply).
    Failed { reason: String },
}

/// An SMTP reply as the relay classifies it: by its code and its RFC 3463
/// enhanced status code, never by words of its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The enhanced status code, when the text starts with one whose class
    /// agrees with the code's first digit.
    pub enhanced: Option<Enhanced>,
    /// The rest of the first line.
    pub text: String,
}

/// `class.subject.detail` (RFC 3463).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enhanced {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl std::fmt::Display for Enhanced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl Enhanced {
    /// `4.7.1`; each part bounded by RFC 3463 (class one digit, subject and
    /// detail at most three).
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('.');
        let (class, subject, detail) = (it.next()?, it.next()?, it.next()?);
        let digits = |p: &str, max: usize| !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit());
        if it.next().is_some() || !digits(class, 1) || !digits(subject, 3) || !digits(detail, 3) {
            return None;
        }
        Some(Self { class: class.parse().ok()?, subject: subject.parse().ok()?, detail: detail.parse().ok()? })
    }
}

impl Reply {
    /// Parses the first line of a reply as `CODE[ -][ENHANCED ]TEXT`, as
    /// sent or as [`crate::smtp`] renders a lettre error; `None` without a
    /// three-digit code of class 2 to 5.
    pub fn parse(reply: &str) -> Option<Self> {
        let line = reply.lines().next().unwrap_or("");
        let code_part = line.get(..3)?;
        if !code_part.bytes().all(|b| b.is_ascii_digit()) || !(b'2'..=b'5').contains(&code_part.as_bytes()[0]) {
            return None;
        }
        let code: u16 = code_part.parse().ok()?;
        let rest = match line.as_bytes().get(3) {
            None => "",
            Some(b' ' | b'-') => &line[4..],
            Some(_) => return None,
        };
        let rest = rest.trim_start();
        let (first, after) = rest.split_once(' ').unwrap_or((rest, ""));
        let enhanced = Enhanced::parse(first).filter(|e| u16::from(e.class) == code / 100);
        let text = if enhanced.is_some() { after.trim_start() } else { rest };
        Some(Self { code, enhanced, text: text.to_string() })
    }

    /// The reply a stored reason quotes: at its start, or after a `": "`
    /// (as in `connecting to HOST:PORT: 421 4.7.0 …`).
    pub fn find(reason: &str) -> Option<Self> {
        std::iter::once(reason).chain(reason.match_indices(": ").map(|(i, _)| &reason[i + 2..])).find_map(Self::parse)
    }

    /// A transient (4xx) reply.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// Does this transient reply, on a session that already carried
    /// messages, say "too fast"? A 421 (the server closes the session), a
    /// 450/451/452 with a 4.7.x (policy) code, 452 4.5.3 (too many
    /// recipients), and any 4xx without an enhanced code (nothing tells it
    /// from a throttle, so it is taken as one). A 4xx with another enhanced
    /// code (4.2.2 mailbox full, 4.3.0 system trouble, …) is about the
    /// message or the recipient: only that message waits.
    pub fn is_pace_push_back(&self) -> bool {
        if !self.is_transient() {
            return false;
        }
        match (self.code, self.enhanced) {
            (421, _) | (_, None) => true,
            (450..=452, Some(e)) if e.subject == 7 => true,
            (452, Some(Enhanced { subject: 5, detail: 3, .. })) => true,
            _ => false,
        }
    }

    /// Is this reply, given while a session opens (greeting, EHLO,
    /// STARTTLS, AUTH), a refusal of one more session? Any 4xx there is.
    pub fn is_session_refusal(&self) -> bool {
        self.is_transient()
    }
}

/// Does a permanent failure say the recipient does not exist (RFC 3463
/// 5.1.1, or the carriers' "550 Unknown user")? Such an address is suspended
/// at once: carriers block senders that keep mailing dead addresses.
pub fn is_unknown_user(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("5.1.1") || r.contains("unknown user") || r.contains("user unknown") || r.contains("no such user")
}

/// Longest reason kept in the outbox row and the log.
const MAX_REASON: usize = 300;

/// Makes a reason safe to log and store: servers often echo the recipient
/// (`550 5.1.1 <taro@docomo.ne.jp>: User unknown`, or the local part alone,
/// `452 Mailbox of TARO is over quota`), and the address must not reach the
/// logs or sit in the database in clear, so every form of it is masked
/// ([`mamoru_core::address::scrub`]). Control characters become spaces
/// first (so a reply folded over lines still matches), and the text is
/// bounded after masking (so a cut never leaves part of the address).
pub fn scrub(reason: &str, recipient: &EmailAddress) -> String {
    let flat: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut clean = mamoru_core::address::scrub(&flat, recipient);
    if clean.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !clean.is_char_boundary(end) {
            end -= 1;
        }
        clean.truncate(end);
        clean.push('…');
    }
    clean.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> EmailAddress {
        EmailAddress::parse(s).expect("test address")
    }

    #[test]
    fn masks_an_echoed_recipient_in_any_case() {
        let a = addr("taro..yamada.@docomo.ne.jp");
        let r = scrub("550 5.1.1 <TARO..YAMADA.@DOCOMO.NE.JP>: unknown; taro..yamada.@docomo.ne.jp again", &a);
        assert_eq!(r, "550 5.1.1 <t***@docomo.ne.jp>: unknown; t***@docomo.ne.jp again");
    }

    #[test]
    fn masks_the_local_part_alone() {
        let a = addr("gone.privacy@docomo.ne.jp");
        assert_eq!(scrub("550 5.1.1 User unknown: GONE.PRIVACY", &a), "550 5.1.1 User unknown: g***");
        assert_eq!(scrub("550-user\r\n550 gone.privacy\r\n", &a), "550-user  550 g***");
    }

    #[test]
    fn replies_parse_by_code_and_enhanced_code() {
        let r = Reply::parse("451 4.7.1 Please slow down").expect("reply");
        assert_eq!((r.code, r.enhanced, r.text.as_str()), (451, Some(Enhanced { class: 4, subject: 7, detail: 1 }), "Please slow down"));
        let r = Reply::parse("421-4.7.0 Too many\r\n421 closing").expect("multi-line");
        assert_eq!((r.code, r.enhanced.map(|e| e.subject)), (421, Some(7)));
        // A class that disagrees with the code is no enhanced code.
        let r = Reply::parse("451 5.7.1 odd").expect("reply");
        assert_eq!((r.enhanced, r.text.as_str()), (None, "5.7.1 odd"));
        assert_eq!(Reply::parse("421").map(|r| (r.code, r.enhanced)), Some((421, None)));
        for bad in ["", "42", "abc x", "621 x", "4211 x", "451x 4.7.1", "é51 x"] {
            assert_eq!(Reply::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Enhanced::parse("4.7.1234"), None);
        assert_eq!(Enhanced::parse("4..1"), None);
        assert_eq!(Enhanced::parse("44.7.1"), None);
        // Stored reasons quote the reply after what was being done.
        let r = Reply::find("connecting to 127.0.0.1:2525: 421 4.7.0 Too many connections").expect("quoted");
        assert_eq!((r.code, r.enhanced.map(|e| e.to_string())), (421, Some("4.7.0".into())));
        assert_eq!(Reply::find("451 4.7.1 slow down (after RCPT TO)").map(|r| r.code), Some(451));
        assert_eq!(Reply::find("connecting to h:25: Connection refused (os error 111)"), None);
    }

    #[test]
    fn pace_push_backs_are_told_by_codes_not_words() {
        let pace = |s: &str| Reply::parse(s).expect("reply").is_pace_push_back();
        for s in ["421 4.7.0 Try later", "421 closing", "451 4.7.1 slow down", "450 4.7.1 rate", "452 4.5.3 Too many recipients", "451 try later"] {
            assert!(pace(s), "{s}");
        }
        // Words alone decide nothing: a mailbox full that says "slow down"
        // is about the mailbox.
        for s in ["452 4.2.2 Mailbox full, slow down", "451 4.3.0 Temporary failure, too many connections", "550 5.7.1 rate limited", "250 ok"] {
            assert!(!pace(s), "{s}");
        }
        assert!(Reply::parse("421 4.7.0 Too many connections").expect("reply").is_session_refusal());
        assert!(Reply::parse("454 4.7.0 TLS not available").expect("reply").is_session_refusal());
        assert!(!Reply::parse("554 5.7.1 go away").expect("reply").is_session_refusal());
    }

    #[test]
    fn unknown_users() {
        assert!(is_unknown_user("550 5.1.1 <t***@docomo.ne.jp>: Recipient address rejected"));
        assert!(is_unknown_user("550 Unknown user"));
        assert!(is_unknown_user("550 User unknown in local recipient table"));
        assert!(!is_unknown_user("552 5.2.2 mailbox full"));
        assert!(!is_unknown_user("554 5.7.1 rejected"));
    }

    #[test]
    fn drops_controls_and_bounds_length() {
        let a = addr("x@au.com");
        assert_eq!(scrub("451 4.3.0 a\r\nb\0c", &a), "451 4.3.0 a  b c");
        let long = "あ".repeat(400);
        let r = scrub(&long, &a);
        assert!(r.len() <= MAX_REASON + '…'.len_utf8() && r.ends_with('…'), "{}", r.len());
    }
}
