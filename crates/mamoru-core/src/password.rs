//! Admin passwords: argon2id with the OWASP parameters (19 MiB, t=2, p=1),
//! stored as PHC strings so the parameters travel with each hash and can be
//! raised later without invalidating old hashes.
//!
//! Pure: the caller supplies the salt (the store's random source), so this
//! module does no I/O.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Shortest password accepted for a new admin.
pub const MIN_LEN: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("the password must have at least {MIN_LEN} characters")]
    TooShort,
    #[error("the password must be one line")]
    Control,
    #[error("password hashing failed: {0}")]
    Hash(String),
}

fn argon2() -> Result<Argon2<'static>, PasswordError> {
    // OWASP Password Storage Cheat Sheet: m=19456 KiB, t=2, p=1.
    let params = Params::new(19 * 1024, 2, 1, None).map_err(|e| PasswordError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Checks a new password's shape (not its strength beyond the length).
pub fn check_new(password: &str) -> Result<(), PasswordError> {
    if password.chars().any(char::is_control) {
        return Err(PasswordError::Control);
    }
    if password.chars().count() < MIN_LEN {
        return Err(PasswordError::TooShort);
    }
    Ok(())
}

/// Hashes `password` with a caller-supplied 16-byte random salt.
pub fn hash(password: &str, salt: &[u8; 16]) -> Result<String, PasswordError> {
    check_new(password)?;
    let salt = SaltString::encode_b64(salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    let h = argon2()?.hash_password(password.as_bytes(), &salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    Ok(h.to_string())
}

/// Verifies in constant time (argon2's own comparison). A malformed stored
/// hash verifies nothing.
pub fn verify(password: &str, stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else { return false };
    let Ok(a) = argon2() else { return false };
    a.verify_password(password.as_bytes(), &parsed).is_ok()
}

/// A hash of a random password, to verify against when the login is unknown
/// so that an unknown login takes as long as a wrong password.
pub fn dummy_hash() -> &'static str {
    "$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$Vj2wDVTu9Ck6sV7XGt+rIDYqIZ0cpPaxsKh8Wm1o2qM"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_owasp_and_verify() {
        let h = hash("correct horse battery", &[7; 16]).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify("correct horse battery", &h));
        assert!(!verify("correct horse batterY", &h));
        assert!(!verify("anything", "not a hash"));
        assert!(!verify("anything", dummy_hash()));
        // The dummy must parse, or an unknown login would answer faster
        // than a wrong password.
        assert!(PasswordHash::new(dummy_hash()).is_ok());
    }

    #[test]
    fn new_passwords_are_checked() {
        assert_eq!(hash("short", &[0; 16]), Err(PasswordError::TooShort));
        assert_eq!(hash("long enough\npassword", &[0; 16]), Err(PasswordError::Control));
    }
}
