//! LMTP (RFC 2033), as Postfix's `lmtp(8)` client speaks it.
//!
//! Sans-I/O, each piece usable and tested on its own:
//! - [`command`]: command lines; bounded line splitting and the parser,
//!   bytes in, a typed [`command::Command`] out.
//! - [`data`]: the DATA body; dot-unstuffing, the terminator, the size
//!   limit, and the message handed on for delivery.
//! - [`session`]: the conversation's state machine and its replies.
//!
//! And the I/O around them:
//! - [`server`]: the tokio listener that runs sessions and calls
//!   [`crate::Deliver`].

pub mod command;
pub mod data;
pub mod server;
pub mod session;

pub use server::{LmtpConfig, run};
pub use session::{Event, Limits, Session, Transaction};
