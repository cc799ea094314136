//! Key material. Three independent 32-byte secrets, one file each under
//! `DATA_DIR/keys/`, so one can be rotated without touching the others:
//! `token.key` (HMAC for links), `address.key` (AEAD for addresses and queued
//! mail) and `index.key` (HMAC blind index). This module only names them;
//! `mamoru-store` reads and creates the files.

use crate::seal::Sealer;
use crate::token::TokenKey;

pub const KEY_FILES: [&str; 3] = ["token.key", "address.key", "index.key"];

pub struct Keys {
    pub token: [u8; 32],
    pub address: [u8; 32],
    pub index: [u8; 32],
}

impl Keys {
    pub fn token_key(&self) -> TokenKey {
        TokenKey::new(&self.token)
    }

    pub fn sealer(&self) -> Sealer {
        Sealer::new(&self.address, &self.index)
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}
