//! Signed one-time tokens for links in mails.
//!
//! A token is `base64url(payload || tag)`, where payload is
//! `version(1) purpose(1) subject(8) nonce(8) expires(4)` and tag is the first
//! 16 bytes of HMAC-SHA256 over the payload: 38 bytes, 51 characters, short
//! enough for a phone screen. The MAC makes a token unforgeable; the nonce,
//! recorded in the store when the token is issued and consumed in the same
//! transaction as the change it authorises, makes it single use; the purpose
//! byte keeps a registration link from deleting anything.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

use crate::UnixTime;

const VERSION: u8 = 1;
const PAYLOAD_LEN: usize = 22;
const TAG_LEN: usize = 16;
const TOKEN_LEN: usize = PAYLOAD_LEN + TAG_LEN;

/// What a token allows. The discriminants are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Purpose {
    /// Pick districts and confirm a new registration.
    Register = 1,
    /// Change districts or delete a registration (the manage link).
    Manage = 2,
    /// Stop all mail at once (the one-click unsubscribe link, RFC 8058).
    Unsubscribe = 3,
    /// Publish a previewed alert (the link in an admin's preview mail).
    Publish = 4,
    /// 届きました: the link in a reception-test mail (subject: the test).
    Arrived = 5,
    /// The page where a parent waits for a reception test (subject: the
    /// test); it shows the state and never confirms.
    Waiting = 6,
    /// 確認しました: the link in an alert copy that asks for confirmation
    /// (subject: the counting key, nonce: the copy's).
    Confirm = 7,
}

impl Purpose {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Register),
            2 => Some(Self::Manage),
            3 => Some(Self::Unsubscribe),
            4 => Some(Self::Publish),
            5 => Some(Self::Arrived),
            6 => Some(Self::Waiting),
            7 => Some(Self::Confirm),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Manage => "manage",
            Self::Unsubscribe => "unsubscribe",
            Self::Publish => "publish",
            Self::Arrived => "arrived",
            Self::Waiting => "waiting",
            Self::Confirm => "confirm",
        }
    }
}

/// The random part of a token, recorded by the store to make it single use.
pub type Nonce = [u8; 8];

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub purpose: Purpose,
    pub subject: u64,
    pub nonce: Nonce,
    pub expires_at: UnixTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token is for another purpose")]
    WrongPurpose,
    #[error("token has expired")]
    Expired,
}

/// Signs and verifies tokens with one HMAC key.
pub struct TokenKey {
    key: hmac::Key,
}

impl TokenKey {
    pub fn new(secret: &[u8; 32]) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, secret) }
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let expires = u32::try_from(claims.expires_at.max(0)).unwrap_or(u32::MAX);
        let mut buf = [0u8; TOKEN_LEN];
        buf[0] = VERSION;
        buf[1] = claims.purpose as u8;
        buf[2..10].copy_from_slice(&claims.subject.to_be_bytes());
        buf[10..18].copy_from_slice(&claims.nonce);
        buf[18..22].copy_from_slice(&expires.to_be_bytes());
        let tag = hmac::sign(&self.key, &buf[..PAYLOAD_LEN]);
        buf[PAYLOAD_LEN..].copy_from_slice(&tag.as_ref()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Verifies the signature first (in constant time), then purpose and expiry.
    /// HMAC-SHA256 of `data` under this key, for other signed values (VERP
    /// addresses). Callers prefix `data` with a label of their own; a token
    /// payload starts with a version byte of 1, so the two cannot collide.
    pub(crate) fn mac(&self, data: &[u8]) -> hmac::Tag {
        hmac::sign(&self.key, data)
    }

    pub fn verify(&self, token: &str, purpose: Purpose, now: UnixTime) -> Result<Claims, TokenError> {
        if token.len() != 51 {
            return Err(TokenError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| TokenError::Malformed)?;
        let raw: [u8; TOKEN_LEN] = raw.try_into().map_err(|_| TokenError::Malformed)?;
        let tag = hmac::sign(&self.key, &raw[..PAYLOAD_LEN]);
        if !constant_time_eq(&tag.as_ref()[..TAG_LEN], &raw[PAYLOAD_LEN..]) {
            return Err(TokenError::BadSignature);
        }
        if raw[0] != VERSION {
            return Err(TokenError::Malformed);
        }
        let got = Purpose::from_byte(raw[1]).ok_or(TokenError::Malformed)?;
        if got != purpose {
            return Err(TokenError::WrongPurpose);
        }
        let subject = u64::from_be_bytes(raw[2..10].try_into().map_err(|_| TokenError::Malformed)?);
        let nonce: Nonce = raw[10..18].try_into().map_err(|_| TokenError::Malformed)?;
        let expires_at = u32::from_be_bytes(raw[18..22].try_into().map_err(|_| TokenError::Malformed)?) as i64;
        if now >= expires_at {
            return Err(TokenError::Expired);
        }
        Ok(Claims { purpose: got, subject, nonce, expires_at })
    }
}

/// Compares two tags without an early exit. ring 0.17 deprecates its own
/// helper for this and a crate for twelve lines is not worth its weight; the
/// fold over XORs touches every byte whatever the inputs.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::new(&[7u8; 32])
    }

    fn claims() -> Claims {
        Claims { purpose: Purpose::Register, subject: 42, nonce: [1, 2, 3, 4, 5, 6, 7, 8], expires_at: 1_800_000_000 }
    }

    #[test]
    fn round_trip_and_length() {
        let t = key().sign(&claims());
        assert_eq!(t.len(), 51);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(key().verify(&t, Purpose::Register, 1_700_000_000), Ok(claims()));
    }

    #[test]
    fn tampering_any_byte_is_rejected() {
        let t = key().sign(&claims());
        let raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for i in 0..raw.len() {
            for flip in [0x01u8, 0x80] {
                let mut bad = raw.clone();
                bad[i] ^= flip;
                let bad = URL_SAFE_NO_PAD.encode(bad);
                assert!(key().verify(&bad, Purpose::Register, 0).is_err(), "byte {i} flip {flip:#x} accepted");
            }
        }
        // Tampering with the text itself: change each character.
        for i in 0..t.len() {
            let mut s: Vec<u8> = t.clone().into_bytes();
            s[i] = if s[i] == b'A' { b'B' } else { b'A' };
            let s = String::from_utf8(s).unwrap();
            assert!(key().verify(&s, Purpose::Register, 0).is_err(), "char {i} accepted");
        }
        assert_eq!(key().verify("", Purpose::Register, 0), Err(TokenError::Malformed));
        assert_eq!(key().verify(&t[..50], Purpose::Register, 0), Err(TokenError::Malformed));
        assert_eq!(key().verify(&format!("{t}A"), Purpose::Register, 0), Err(TokenError::Malformed));
    }

    #[test]
    fn another_key_is_rejected() {
        let t = key().sign(&claims());
        assert_eq!(TokenKey::new(&[8u8; 32]).verify(&t, Purpose::Register, 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn expiry_is_exclusive() {
        let t = key().sign(&claims());
        assert_eq!(key().verify(&t, Purpose::Register, 1_800_000_000), Err(TokenError::Expired));
        assert!(key().verify(&t, Purpose::Register, 1_799_999_999).is_ok());
    }

    #[test]
    fn wrong_purpose_is_rejected() {
        let t = key().sign(&claims());
        assert_eq!(key().verify(&t, Purpose::Manage, 0), Err(TokenError::WrongPurpose));

        // Forge a token with an unknown purpose byte but a valid MAC.
        let mut raw = URL_SAFE_NO_PAD.decode(key().sign(&claims())).unwrap();
        raw[1] = 9;
        let tag = hmac::sign(&key().key, &raw[..PAYLOAD_LEN]);
        raw[PAYLOAD_LEN..].copy_from_slice(&tag.as_ref()[..TAG_LEN]);
        assert_eq!(key().verify(&URL_SAFE_NO_PAD.encode(raw), Purpose::Register, 0), Err(TokenError::Malformed));
    }
}
