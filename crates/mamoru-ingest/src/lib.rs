//! Inbound mail: from Postfix `pipe(8)` (one message on stdin) or from LMTP,
//! to a classification, to a durable change in the store.
//!
//! Layout:
//! - [`classify`]: pure; envelope + raw bytes in, [`classify::Classification`] out.
//! - [`lmtp`]: RFC 2033. `lmtp::command`, `lmtp::data` and `lmtp::session`
//!   are the sans-I/O command parser, DATA reader and state machine;
//!   `lmtp::server` runs them on a tokio listener and hands each message to a
//!   [`Deliver`] implementation.
//! - [`registrar`]: the [`Deliver`] implementation both entry points use:
//!   classification, then the registration request in the store.
//! - [`dsn`]: pure; a bounce (RFC 3464 DSN or a non-standard report) to a
//!   recipient and a class.
//! - [`bounce`]: mail to the VERP address `bounce+ID-TAG@`: verify the tag,
//!   parse, record the effect in the store.
//!   classification, then the registration request in the store; mail to
//!   the alert address is handed to [`alert_post`].
//! - [`imap`]: watched IMAP mailboxes: [`imap::decide`] is the sans-I/O
//!   part (size, envelope headers, the outcome's folder), [`imap::client`]
//!   the async-imap session around it.
//! - [`alert_post`]: admins' alert posts: sender checks, format, preview.
//! - [`alert_auth`]: SASL / DKIM (pinned keys) / trusted Authentication-Results.
//! - [`auth_results`]: pure RFC 8601 `Authentication-Results` parser.
//! - [`mime`]: bounded MIME parsing; every MIME parse of inbound mail goes
//!   through [`mime::parse`], which refuses deep or huge structures before
//!   the recursive parser sees them.
//!
//! Invariant: a message is acknowledged (exit 0, LMTP 250) only after
//! [`Deliver::deliver`] returned [`Outcome::Stored`] or [`Outcome::Dropped`],
//! i.e. after a durable commit or a deliberate, logged drop.

pub mod bounce;
pub mod alert_auth;
pub mod alert_post;
pub mod auth_results;
pub mod classify;
pub mod dsn;
pub mod imap;
pub mod lmtp;
pub mod mime;
pub mod registrar;

#[cfg(test)]
mod test_rng;

pub use registrar::Registrar;

/// What happened to one message for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed durably (a 登録受付 mail is queued, or similar).
    Stored,
    /// Deliberately not acted upon, and logged: junk, an auto-reply, a rate
    /// limit. Acknowledged so the MTA does not retry or bounce.
    Dropped(String),
    /// Could not be handled now (store locked, disk full, ...): the MTA must
    /// retry. LMTP 451 4.3.0, pipe exit 75.
    Transient(String),
}

/// The one mapping of a use case's failure to an inbound mail's outcome:
/// whatever may go away by itself is retried by the MTA (LMTP 451, pipe
/// exit 75); a failure that will not (a schema from a newer build, sealed
/// data that does not open) is also retried, loudly, because dropping the
/// message would lose it.
pub fn transient(e: &mamoru_app::Error) -> Outcome {
    if e.is_transient() {
        tracing::warn!(error = %e, "store unavailable; asking the MTA to retry");
    } else {
        tracing::error!(error = %e, "store cannot handle mail; asking the MTA to retry");
    }
    Outcome::Transient(e.to_string())
}

/// Where the LMTP server (and the pipe command) hand messages. Implementations
/// are blocking (they touch SQLite); the server calls them on a blocking thread.
pub trait Deliver: Send + Sync + 'static {
    /// At RCPT time: is this one of our addresses? Unknown ones get 550 5.1.1.
    fn accepts_recipient(&self, recipient: &str) -> bool;
    /// After DATA, once per accepted recipient, in RCPT order. `sender` is the
    /// MAIL FROM address without brackets, empty for the null sender.
    fn deliver(&self, sender: &str, recipient: &str, message: &[u8]) -> Outcome;
}
