//! Domain types of mamoru, with no I/O: configuration, e-mail addresses as the
//! carriers issued them, signed one-time tokens, address sealing (encryption at
//! rest plus a blind index), and the rendering of the mails the service sends.
//!
//! Layout:
//! - [`config`]: the TOML configuration, validated into typed values.
//! - [`carriers`]: carrier pools, their domains and limits (pure).
//! - [`ids`]: typed row ids (subscriber, alert, admin, outbox).
//! - [`rate`]: a token bucket that takes the time as a parameter.
//! - [`address`]: [`EmailAddress`], lenient enough for old docomo/au local parts,
//!   and [`address::scrub`], which hides an address in text from a peer.
//! - [`mailbox`]: the mailbox an address reaches (the key of per-address
//!   limits) and the addresses that never get a reply.
//! - [`token`]: HMAC-SHA256 tokens bound to a purpose, a subject and a nonce.
//! - [`seal`]: AEAD encryption and blind index of addresses.
//! - [`help`]: per carrier, the steps to allow our domain (受信許可).
//! - [`links`]: the personal manage/unsubscribe links of alert footers.
//! - [`verp`]: signed VERP return paths naming the outbox row.
//! - [`mail`]: the Japanese mails (登録受付, 登録完了) as RFC 5322 bytes.
//! - [`alert`]: the alert post format (`地区:` line) and the alert mail.
//! - [`jst`]: Japan time (UTC+9) civil dates, both ways.
//! - [`password`]: argon2id hashing of admin passwords.
//! - [`keys`]: the key material and its on-disk format (bytes only; the store
//!   crate reads and writes the files).

pub mod address;
pub mod carriers;
pub mod alert;
pub mod config;
pub mod conn_limit;
pub mod ids;
pub mod help;
pub mod jst;
pub mod keys;
pub mod links;
pub mod mailbox;
pub mod mail;
pub mod rate;
pub mod password;
pub mod seal;
pub mod token;
pub mod verp;

pub use address::EmailAddress;
pub use config::Config;
pub use ids::{AdminId, AlertId, OutboxId, SubscriberId, TestId};

/// Seconds since the Unix epoch. Time is a parameter everywhere so tests
/// control the clock.
pub type UnixTime = i64;

/// The current wall-clock time, for callers at the edges.
pub fn now() -> UnixTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
