//! LMTP (RFC 2033), as Postfix's `lmtp(8)` client speaks it.
//!
//! - [`proto`]: sans-I/O; command parser, DATA reader, session state machine.
//! - [`server`]: the tokio listener that runs sessions and calls
//!   [`crate::Deliver`].

pub mod proto;
pub mod server;

pub use server::{LmtpConfig, run};
