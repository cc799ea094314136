//! E-mail addresses as typed values.
//!
//! docomo and au issued local parts that break RFC 5322 (`taro..yamada@`,
//! `hanako.@`), and many parents still use them. Strict parsers (lettre's
//! `Address`) reject them, so mamoru accepts any dot placement while still
//! refusing everything that could smuggle syntax into a header or an SMTP
//! command: controls, spaces, angle brackets, quotes, commas and the like.

use std::fmt;

/// A syntactically safe mailbox address. The domain is lower-cased; the local
/// part is kept as given, because that is how the carrier delivers it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress {
    addr: String,
    at: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address is longer than 254 octets")]
    TooLong,
    #[error("address has no '@'")]
    NoAt,
    #[error("local part is empty or longer than 64 octets")]
    BadLocalLength,
    #[error("local part contains a character that is not allowed")]
    BadLocalChar,
    #[error("domain is not a valid host name")]
    BadDomain,
}

impl EmailAddress {
    /// Parses an address, optionally wrapped in `<>` as in an SMTP envelope.
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let s = input.trim();
        let s = s.strip_prefix('<').and_then(|s| s.strip_suffix('>')).unwrap_or(s);
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if s.len() > 254 {
            return Err(AddressError::TooLong);
        }
        let at = s.rfind('@').ok_or(AddressError::NoAt)?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        if local.is_empty() || local.len() > 64 {
            return Err(AddressError::BadLocalLength);
        }
        if !local.bytes().all(is_local_byte) {
            return Err(AddressError::BadLocalChar);
        }
        if !is_domain(domain) {
            return Err(AddressError::BadDomain);
        }
        Ok(Self { addr: format!("{local}@{}", domain.to_ascii_lowercase()), at })
    }

    pub fn as_str(&self) -> &str {
        &self.addr
    }

    pub fn local_part(&self) -> &str {
        &self.addr[..self.at]
    }

    pub fn domain(&self) -> &str {
        &self.addr[self.at + 1..]
    }

    /// The form used for lookups and rate limits: the whole address
    /// lower-cased, so `Taro@` and `taro@` are one subscriber.
    pub fn canonical(&self) -> String {
        self.addr.to_ascii_lowercase()
    }

    /// The address with most of the local part hidden, for logs:
    /// `p***@docomo.ne.jp`.
    pub fn masked(&self) -> String {
        let first = self.local_part().chars().next().unwrap_or('*');
        format!("{first}***@{}", self.domain())
    }
}

/// Shortest local part [`scrub`] also hides when it stands alone. Carriers
/// issue local parts of three characters or more; a shorter one alone says
/// too little to identify anyone, while hiding every `a` or `ok` token would
/// make replies unreadable. (The full address is always hidden.)
pub const SCRUB_MIN_LOCAL: usize = 3;

/// Hides every form of `addr` in `text` that came from a peer (an SMTP
/// reply, a bounce), before the text is stored or logged:
///
/// - the full address, case-insensitively, anywhere (also inside a longer
///   token such as `rcpt=<…>`), becomes [`EmailAddress::masked`];
/// - the local part alone, case-insensitively, when it is a whole token —
///   not preceded or followed by an ASCII letter, digit, `_`, `-` or `+`
///   (so `taro` is found in `user taro unknown`, `<taro>`, `'taro'`,
///   `"taro"@…`, `taro%40docomo.ne.jp` and `ユーザtaroは`, but not in
///   `taro_yamada`) — becomes its first character and `***`; local parts
///   shorter than [`SCRUB_MIN_LOCAL`] only as part of the full address;
/// - the local part percent-encoded (`ta%2Bro`), the same way.
///
/// The local part is ASCII (see [`EmailAddress::parse`]), so matching works
/// on an ASCII-lower-cased copy whose byte offsets are those of `text`.
pub fn scrub(text: &str, addr: &EmailAddress) -> String {
    let full = replace_ci(text, &addr.as_str().to_ascii_lowercase(), &addr.masked(), |_, _| true);
    let local = addr.local_part();
    if local.len() < SCRUB_MIN_LOCAL {
        return full;
    }
    let first = local.chars().next().unwrap_or('*');
    let hidden = format!("{first}***");
    let whole = |before: Option<u8>, after: Option<u8>| !before.is_some_and(is_word_byte) && !after.is_some_and(is_word_byte);
    let plain = replace_ci(&full, &local.to_ascii_lowercase(), &hidden, whole);
    // The percent-encoded form (`a%2Bb` for `a+b`), as it appears in URLs
    // and some DSN fields; a local part of only unreserved characters has
    // the same form and was handled above.
    let encoded = percent_encoded(local);
    if encoded.len() == local.len() {
        return plain;
    }
    replace_ci(&plain, &encoded, &hidden, whole)
}

/// `local` with every byte but letters, digits, `.`, `-` and `_` as `%xx`
/// (lower-case hex: matching is case-insensitive).
fn percent_encoded(local: &str) -> String {
    let mut out = String::with_capacity(local.len() * 3);
    for b in local.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') {
            out.push(b.to_ascii_lowercase() as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// Replaces the non-overlapping occurrences of the lower-case ASCII
/// `needle` in `text` (compared case-insensitively) for which `whole`, given
/// the bytes just before and after, holds.
fn replace_ci(text: &str, needle: &str, with: &str, whole: impl Fn(Option<u8>, Option<u8>) -> bool) -> String {
    if needle.is_empty() {
        return text.to_string();
    }
    let hay = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    let mut from = 0;
    while let Some(found) = hay[from..].find(needle) {
        let at = from + found;
        let end = at + needle.len();
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(end).copied();
        if whole(before, after) {
            out.push_str(&text[rest..at]);
            out.push_str(with);
            rest = end;
            from = end;
        } else {
            // The needle is ASCII and starts on a character boundary, so the
            // next one does too.
            from = at + 1;
            while !hay.is_char_boundary(from) {
                from += 1;
            }
        }
    }
    out.push_str(&text[rest..]);
    out
}

/// Bytes that continue a token of an address-like word.
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+')
}

/// Printable ASCII allowed in an unquoted local part, dots anywhere.
fn is_local_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b)
}

fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// Debug output is masked so an address never reaches a log by accident.
impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_carrier_quirks() {
        for a in ["taro..yamada@docomo.ne.jp", "hanako.@ezweb.ne.jp", ".x@au.com", "a-b_c+d@I.SoftBank.jp"] {
            let e = EmailAddress::parse(a).unwrap_or_else(|e| panic!("{a}: {e}"));
            assert_eq!(e.domain(), e.domain().to_ascii_lowercase());
        }
        assert_eq!(EmailAddress::parse("<x@Y.jp>").unwrap().as_str(), "x@y.jp");
    }

    #[test]
    fn rejects_header_and_command_injection() {
        for a in [
            "", "@x.jp", "x@", "a b@x.jp", "a\r\n@x.jp", "x@y.jp\r\nBcc: z@w.jp", "a<b@x.jp", "\"q\"@x.jp",
            "a,b@x.jp", "a@x..jp", "a@-x.jp", "a\0@x.jp", "a@x.jp>", "a@x_y.jp",
        ] {
            assert!(EmailAddress::parse(a).is_err(), "{a:?} should be rejected");
        }
        assert_eq!(EmailAddress::parse(&format!("{}@x.jp", "a".repeat(65))), Err(AddressError::BadLocalLength));
    }

    #[test]
    fn scrub_hides_every_form_of_the_address() {
        let a = EmailAddress::parse("gone.privacy@docomo.ne.jp").unwrap();
        for (peer, want) in [
            ("550 5.1.1 User unknown: gone.privacy", "550 5.1.1 User unknown: g***"),
            ("452 Mailbox of FULL.PRIVACY is over quota", "452 Mailbox of FULL.PRIVACY is over quota"),
            ("452 Mailbox of GONE.PRIVACY is over quota", "452 Mailbox of g*** is over quota"),
            (
                "550 <Gone.Privacy@DOCOMO.ne.jp>: Recipient address rejected",
                "550 <g***@docomo.ne.jp>: Recipient address rejected",
            ),
            ("550 rcpt=gone.privacy%40docomo.ne.jp", "550 rcpt=g***%40docomo.ne.jp"),
            ("550 user 'gone.privacy' and \"gone.privacy\"", "550 user 'g***' and \"g***\""),
            ("550 宛先gone.privacyは存在しません", "550 宛先g***は存在しません"),
            ("550 gone.privacy_x and xgone.privacy stay", "550 gone.privacy_x and xgone.privacy stay"),
            ("550 gone.privacy.", "550 g***."),
            ("", ""),
        ] {
            assert_eq!(scrub(peer, &a), want, "{peer}");
        }
        let full = EmailAddress::parse("full.privacy@au.com").unwrap();
        assert_eq!(scrub("452 Mailbox of FULL.PRIVACY is over quota", &full), "452 Mailbox of f*** is over quota");
    }

    #[test]
    fn scrub_hides_the_percent_encoded_local_part() {
        let a = EmailAddress::parse("Ta+ro@docomo.ne.jp").unwrap();
        assert_eq!(scrub("550 rcpt=ta%2Bro%40docomo.ne.jp; TA%2bRO", &a), "550 rcpt=T***%40docomo.ne.jp; T***");
        assert_eq!(scrub("550 <ta+ro@docomo.ne.jp> ta+ro", &a), "550 <T***@docomo.ne.jp> T***");
    }

    #[test]
    fn scrub_spares_short_local_parts_alone() {
        let a = EmailAddress::parse("a@x.jp").unwrap();
        assert_eq!(scrub("550 a mailbox <A@X.JP> is a goner", &a), "550 a mailbox <a***@x.jp> is a goner");
        let b = EmailAddress::parse("ken@x.jp").unwrap();
        assert_eq!(scrub("550 KEN unknown; token ken", &b), "550 k*** unknown; token k***");
        assert_eq!(scrub("550 kenji", &b), "550 kenji");
    }

    #[test]
    fn masks_for_logs() {
        let a = EmailAddress::parse("parent@docomo.ne.jp").unwrap();
        assert_eq!(a.masked(), "p***@docomo.ne.jp");
        assert!(!format!("{a:?}").contains("parent"));
    }
}
