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
    fn masks_for_logs() {
        let a = EmailAddress::parse("parent@docomo.ne.jp").unwrap();
        assert_eq!(a.masked(), "p***@docomo.ne.jp");
        assert!(!format!("{a:?}").contains("parent"));
    }
}
