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
    /// Try again later, and slow down: the carrier pushed back (a 4xx reply,
    /// a 421, a refused or reset connection, a timeout). The pool pauses.
    Throttled { reason: String },
    /// The next hop refused this message for good (a 5xx reply).
    Failed { reason: String },
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
