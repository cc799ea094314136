//! Watched IMAP mailboxes: mail that a provider's MTA delivered, handled as
//! if it came by LMTP, and moved out of the mailbox only after the store
//! committed what it caused.
//!
//! - [`decide`]: sans-I/O. A message's size and bytes in, a
//!   [`decide::Disposition`] (processed, dropped, quarantined, transient)
//!   out, through the same [`crate::Deliver`] as LMTP.
//! - [`client`]: the async-imap session (tokio-rustls): fetch, decide,
//!   move, IDLE, reconnect with back-off.

pub mod client;
pub mod decide;
