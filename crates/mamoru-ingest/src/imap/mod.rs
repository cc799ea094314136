//! Watched IMAP mailboxes: mail that a provider's MTA delivered, handled as
//! if it came by LMTP, and moved out of the mailbox only after the store
//! committed what it caused.
//!
//! - [`decide`]: sans-I/O. A message's size and bytes in, a
//!   [`decide::Disposition`] (processed, dropped, quarantined, transient)
//!   out, through the same [`crate::Deliver`] as LMTP.

pub mod decide;
