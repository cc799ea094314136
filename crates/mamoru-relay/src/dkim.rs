//! DKIM signatures (RFC 6376, RFC 8463) aligned with the From domain, made
//! with the `mail-auth` crate (ring crypto).
//!
//! Keys are files under `DATA_DIR/keys/`, mode 0600, DER:
//! - `dkim-ed25519.pk8`: created on first start (or by `mamoru init`),
//!   signs with selector `SELECTOR-ed25519`; the DNS record to publish is
//!   written beside it as `dkim-ed25519.txt`.
//! - `dkim-rsa.pk8`: optional, PKCS#8 or PKCS#1, supplied by the operator (ring cannot generate
//!   RSA keys; `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048
//!   -outform DER`), signs rsa-sha256 with selector `SELECTOR`. Most carrier
//!   filters only check RSA, so production setups want both.
//!
//! Signing happens right before delivery: `t=` is the sending time, so a
//! duplicate after a crash carries the same Message-ID and body but may
//! differ in its DKIM-Signature header.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};

pub const ED25519_FILE: &str = "dkim-ed25519.pk8";
pub const ED25519_DNS_FILE: &str = "dkim-ed25519.txt";
pub const RSA_FILE: &str = "dkim-rsa.pk8";

/// Headers signed when present: what a phone shows, and what a replay or an
/// unsubscribe forgery would change.
const SIGNED_HEADERS: [&str; 12] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Auto-Submitted",
];

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("DKIM key {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("DKIM key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
}

pub struct Dkim {
    ed25519: DkimSigner<Ed25519Key, Done>,
    rsa: Option<DkimSigner<RsaKey<Sha256>, Done>>,
    /// The TXT record for the ed25519 key: (name, value).
    ed25519_record: (String, String),
}

impl Dkim {
    /// Loads the keys from `keys_dir`, creating the ed25519 key (and its DNS
    /// record file) when missing.
    pub fn load_or_create(keys_dir: &Path, domain: &str, selector: &str) -> Result<Self, DkimError> {
        let ed_path = keys_dir.join(ED25519_FILE);
        let bad = |path: &Path, e: mail_auth::Error| DkimError::Key { path: path.to_path_buf(), reason: e.to_string() };
        let der = match fs::read(&ed_path) {
            Ok(der) => der,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let der = Ed25519Key::generate_pkcs8().map_err(|e| bad(&ed_path, e))?;
                write_private(&ed_path, &der)?;
                der
            }
            Err(source) => return Err(DkimError::Io { path: ed_path, source }),
        };
        let ed_key = Ed25519Key::from_pkcs8_der(&der).map_err(|e| bad(&ed_path, e))?;
        let ed_selector = format!("{selector}-ed25519");
        let p = base64::engine::general_purpose::STANDARD.encode(ed_key.public_key());
        let ed25519_record = (format!("{ed_selector}._domainkey.{domain}"), format!("v=DKIM1; k=ed25519; p={p}"));
        let txt_path = keys_dir.join(ED25519_DNS_FILE);
        let txt = format!("{} IN TXT \"{}\"\n", ed25519_record.0, ed25519_record.1);
        if fs::read_to_string(&txt_path).ok().as_deref() != Some(txt.as_str()) {
            fs::write(&txt_path, txt).map_err(|source| DkimError::Io { path: txt_path.clone(), source })?;
        }
        let ed25519 = configure(DkimSigner::from_key(ed_key).domain(domain).selector(ed_selector).headers(SIGNED_HEADERS));
        let rsa_path = keys_dir.join(RSA_FILE);
        let rsa = match fs::read(&rsa_path) {
            Ok(der) => {
                // The non-deprecated `from_key_der` only wraps this in a
                // rustls-pki-types enum, a dependency not worth adding for it.
                // `openssl genpkey -outform DER` writes PKCS#1 with some
                // OpenSSL versions and PKCS#8 with others: take either.
                #[allow(deprecated)]
                let key = RsaKey::<Sha256>::from_pkcs8_der(&der)
                    .or_else(|_| RsaKey::<Sha256>::from_der(&der))
                    .map_err(|e| bad(&rsa_path, e))?;
                Some(configure(DkimSigner::from_key(key).domain(domain).selector(selector).headers(SIGNED_HEADERS)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(DkimError::Io { path: rsa_path, source }),
        };
        Ok(Self { ed25519, rsa, ed25519_record })
    }

    /// Whether an RSA key is configured (besides ed25519).
    pub fn has_rsa(&self) -> bool {
        self.rsa.is_some()
    }

    /// The ed25519 key's DNS record: (name, TXT value).
    pub fn ed25519_record(&self) -> &(String, String) {
        &self.ed25519_record
    }

    /// The message with DKIM-Signature headers prepended (RSA first, then
    /// ed25519), or the error of the signer that failed.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let mut headers = String::new();
        if let Some(rsa) = &self.rsa {
            headers.push_str(&rsa.sign(message).map_err(|e| e.to_string())?.to_header());
        }
        headers.push_str(&self.ed25519.sign(message).map_err(|e| e.to_string())?.to_header());
        let mut out = Vec::with_capacity(headers.len() + message.len());
        out.extend_from_slice(headers.as_bytes());
        out.extend_from_slice(message);
        Ok(out)
    }
}

fn configure<T: mail_auth::common::crypto::SigningKey>(s: DkimSigner<T, Done>) -> DkimSigner<T, Done> {
    // Relaxed survives the header folding and whitespace changes that
    // carrier gateways make.
    s.header_canonicalization(Canonicalization::Relaxed).body_canonicalization(Canonicalization::Relaxed)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DkimError> {
    let io = |source| DkimError::Io { path: path.to_path_buf(), source };
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)
}
