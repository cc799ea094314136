//! Addresses at rest: encrypted with an AEAD and found through a blind index.
//!
//! The store never holds an address in clear. Each address is sealed with
//! ChaCha20-Poly1305 under a random nonce (so equal addresses give different
//! ciphertexts), and indexed by HMAC-SHA256 of its canonical form under a
//! separate key, so lookups and rate limits work without decrypting anything.
//! Both keys live in files in the data dir, never in the database.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::address::EmailAddress;

/// Blind index of an address: equal for equal canonical addresses.
pub type BlindIndex = [u8; 32];

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the system random source failed")]
    Random,
    #[error("ciphertext does not open with this key (wrong key or corrupted data)")]
    Open,
    #[error("decrypted address is not valid")]
    Address,
}

pub struct Sealer {
    aead: LessSafeKey,
    index: hmac::Key,
    rng: SystemRandom,
}

const NONCE_LEN: usize = 12;

impl Sealer {
    pub fn new(aead_key: &[u8; 32], index_key: &[u8; 32]) -> Self {
        let unbound = UnboundKey::new(&aead::CHACHA20_POLY1305, aead_key).expect("32-byte ChaCha20 key");
        Self { aead: LessSafeKey::new(unbound), index: hmac::Key::new(hmac::HMAC_SHA256, index_key), rng: SystemRandom::new() }
    }

    pub fn index(&self, addr: &EmailAddress) -> BlindIndex {
        let tag = hmac::sign(&self.index, addr.canonical().as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// A keyed hash of other identifying data (a client's IP address for
    /// login rate limits), so a counter row never holds it in clear.
    /// `context` separates uses; it cannot collide with [`Sealer::index`],
    /// whose input (a canonical address) holds no NUL.
    pub fn keyed_index(&self, context: &str, data: &[u8]) -> BlindIndex {
        let mut ctx = hmac::Context::with_key(&self.index);
        ctx.update(context.as_bytes());
        ctx.update(&[0]);
        ctx.update(data);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Encrypts arbitrary bytes (an address, or a rendered message that
    /// contains one): `nonce || ciphertext || tag`. `context` is bound as
    /// associated data so a sealed value cannot be moved to another column.
    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + aead::MAX_TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let (head, body) = out.split_at_mut(NONCE_LEN);
        let tag = self
            .aead
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context), body)
            .map_err(|_| SealError::Random)?;
        let _ = head;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN + aead::MAX_TAG_LEN {
            return Err(SealError::Open);
        }
        let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().map_err(|_| SealError::Open)?;
        let mut buf = sealed[NONCE_LEN..].to_vec();
        let plain = self
            .aead
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(context), &mut buf)
            .map_err(|_| SealError::Open)?;
        let n = plain.len();
        buf.truncate(n);
        Ok(buf)
    }

    pub fn seal_address(&self, addr: &EmailAddress) -> Result<Vec<u8>, SealError> {
        self.seal(b"address", addr.as_str().as_bytes())
    }

    pub fn open_address(&self, sealed: &[u8]) -> Result<EmailAddress, SealError> {
        let plain = self.open(b"address", sealed)?;
        let s = String::from_utf8(plain).map_err(|_| SealError::Address)?;
        EmailAddress::parse(&s).map_err(|_| SealError::Address)
    }

    /// Fills `buf` from the system random source.
    pub fn random(&self, buf: &mut [u8]) -> Result<(), SealError> {
        self.rng.fill(buf).map_err(|_| SealError::Random)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_hides_and_indexes() {
        let s = Sealer::new(&[1; 32], &[2; 32]);
        let a = EmailAddress::parse("taro..y@docomo.ne.jp").unwrap();
        let c1 = s.seal_address(&a).unwrap();
        let c2 = s.seal_address(&a).unwrap();
        assert_ne!(c1, c2, "random nonce");
        assert!(!c1.windows(6).any(|w| w == b"docomo"));
        assert_eq!(s.open_address(&c1).unwrap(), a);
        assert_eq!(s.index(&a), s.index(&EmailAddress::parse("TARO..Y@DOCOMO.NE.JP").unwrap()));
        assert!(s.open(b"message", &c1).is_err(), "context is bound");
        let mut bad = c1.clone();
        bad[15] ^= 1;
        assert!(s.open_address(&bad).is_err());
        assert!(Sealer::new(&[3; 32], &[2; 32]).open_address(&c1).is_err());
    }
}
