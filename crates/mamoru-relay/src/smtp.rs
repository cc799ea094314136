//! The `smtp://HOST:PORT` transport: plain SMTP to a smarthost, one
//! recipient per transaction, one connection reused across a drain.
//!
//! This drives lettre's connection-level API ([`AsyncSmtpConnection`] and its
//! `command()`) rather than `AsyncSmtpTransport::send_raw`, for two reasons:
//!
//! - docomo and au local parts such as `taro..yamada.@docomo.ne.jp` fail
//!   lettre's `Address` parser (lettre 0.11 checks local parts with
//!   `email_address::EmailAddress::is_valid_local_part`, whose dot-atom rule
//!   refuses empty atoms: no leading, trailing or doubled dot). They are built
//!   with `Address::new_dangerous` (lettre ≥ 0.11.20) instead, which skips the
//!   check. That is sound here because every address has already passed
//!   [`EmailAddress::parse`], which refuses whatever could break out of
//!   `<...>` in a command line (controls, spaces, angle brackets, quotes) and
//!   allows only ASCII host names as domains.
//! - `send()`/`send_raw` abort the connection on any negative reply; here a
//!   4xx/5xx to MAIL, RCPT or DATA is answered with RSET and the connection
//!   serves the next message (design §6).
//!
//! lettre's `message()` dot-stuffs the content and then writes `CRLF.CRLF`
//! itself. Queued content already ends with CRLF, so that CRLF is taken off
//! first ([`data_payload`]); otherwise every message would gain an empty line.
//!
//! lettre's `tracing` feature must stay off: at debug level it logs every
//! command and the message content, which hold addresses in clear.

use std::future::Future;
use std::time::Duration;

use lettre::Address;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use mamoru_core::EmailAddress;
use mamoru_store::QueuedMail;

use crate::DeliveryOutcome;

/// Limit for connecting and reading the greeting and EHLO reply.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit for each command's reply (RFC 5321 §4.5.3.2 suggests minutes; a
/// smarthost on the same network answers in milliseconds).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Limit for the reply to the final dot, when the server does its work.
const DATA_DONE_TIMEOUT: Duration = Duration::from_secs(300);
/// Transactions per connection at most (design §7: never more than 100 RCPT
/// per session), whatever the pool's `messages_per_connection` says.
const MAX_PER_CONNECTION: usize = 100;

pub struct SmtpHop {
    host: String,
    port: u16,
    hello: ClientId,
    conn: Option<AsyncSmtpConnection>,
    /// Messages accepted on `conn`.
    used: usize,
    /// Close the connection after this many messages.
    per_connection: usize,
}

/// Where in the transaction a failure happened, for the stored reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Mail,
    Rcpt,
    Data,
    Dot,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::Dot => "end of data",
        }
    }
}

enum Failure {
    /// A negative reply; client and server still agree on the session state,
    /// so RSET makes the connection usable again.
    Reply { stage: Stage, error: SmtpError },
    /// The session is gone or out of step: network error, timeout, a 421
    /// (the server is closing), a garbled reply.
    Broken { stage: Stage, reason: String },
    /// We refuse to send this message to this server; nothing was sent.
    Unsendable(String),
}

impl SmtpHop {
    /// `hostname` is the EHLO name (the mail domain).
    pub fn new(host: &str, port: u16, hostname: &str) -> Self {
        Self {
            host: host.to_string(),
            port,
            hello: ClientId::Domain(hostname.to_string()),
            conn: None,
            used: 0,
            per_connection: MAX_PER_CONNECTION,
        }
    }

    /// Closes and reopens the connection after `n` messages (at most 100).
    pub fn with_messages_per_connection(mut self, n: usize) -> Self {
        self.per_connection = n.clamp(1, MAX_PER_CONNECTION);
        self
    }

    /// Is a session open?
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    pub async fn deliver(&mut self, mail: &QueuedMail) -> DeliveryOutcome {
        let from = match envelope_sender(&mail.sender) {
            Ok(from) => from,
            Err(reason) => return DeliveryOutcome::Failed { reason },
        };
        let to = lettre_address(&mail.recipient);
        let content = data_payload(&mail.content);
        loop {
            let (mut conn, reused) = match self.conn.take() {
                Some(conn) => (conn, true),
                None => match self.connect().await {
                    Ok(conn) => {
                        self.used = 0;
                        (conn, false)
                    }
                    Err(reason) => return DeliveryOutcome::Throttled { reason },
                },
            };
            match transaction(&mut conn, from.clone(), to.clone(), content).await {
                Ok(()) => {
                    self.used += 1;
                    if self.used >= self.per_connection {
                        quit(conn).await;
                    } else {
                        self.conn = Some(conn);
                    }
                    return DeliveryOutcome::Sent;
                }
                // A kept connection may have been closed by the server while
                // idle; nothing of this message was sent, so open a fresh one
                // instead of deferring the message.
                Err(Failure::Broken { stage: Stage::Mail, .. }) if reused => continue,
                Err(Failure::Unsendable(reason)) => {
                    self.conn = Some(conn);
                    return DeliveryOutcome::Failed { reason };
                }
                Err(Failure::Broken { stage, reason }) => {
                    // Dropping the connection closes the socket; a QUIT would
                    // only wait on a peer that is already gone.
                    return DeliveryOutcome::Throttled { reason: format!("{reason} (after {})", stage.as_str()) };
                }
                Err(Failure::Reply { stage, error }) => {
                    let reason = format!("{} (after {})", reply_text(&error), stage.as_str());
                    if step(COMMAND_TIMEOUT, Stage::Mail, conn.command(Rset)).await.is_ok() {
                        self.conn = Some(conn);
                    }
                    // Carriers answer 4xx when a sender goes too fast, so
                    // every transient reply slows the pool down.
                    return if error.is_permanent() {
                        DeliveryOutcome::Failed { reason }
                    } else {
                        DeliveryOutcome::Throttled { reason }
                    };
                }
            }
        }
    }

    /// Ends the session politely, if there is one (the relay is idle).
    pub async fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            quit(conn).await;
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, String> {
        let server = (self.host.as_str(), self.port);
        let hello = &self.hello;
        let connect = async move {
            let stream = tokio::net::TcpStream::connect(server).await.map_err(|e| e.to_string())?;
            // lettre writes the data and the final dot in separate writes;
            // with Nagle on, the dot waits for the server's delayed ACK
            // (40 ms on Linux), which capped a connection at ~25 msg/s.
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            AsyncSmtpConnection::connect_with_transport(Box::new(stream), hello).await.map_err(|e| reply_text(&e))
        };
        // Errors here say nothing about the message (even a 554 greeting is
        // about this client), so they all defer it.
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(format!("connecting to {}:{}: {e}", self.host, self.port)),
            Err(_) => Err(format!(
                "connecting to {}:{}: no greeting within {}s",
                self.host,
                self.port,
                CONNECT_TIMEOUT.as_secs()
            )),
        }
    }
}

async fn transaction(
    conn: &mut AsyncSmtpConnection,
    from: Option<Address>,
    to: Address,
    content: &[u8],
) -> Result<(), Failure> {
    let mut params = Vec::new();
    if !content.is_ascii() {
        if !conn.server_info().supports_feature(Extension::EightBitMime) {
            return Err(Failure::Unsendable(
                "message has 8-bit content but the server does not announce 8BITMIME".into(),
            ));
        }
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    step(COMMAND_TIMEOUT, Stage::Mail, conn.command(Mail::new(from, params))).await?;
    step(COMMAND_TIMEOUT, Stage::Rcpt, conn.command(Rcpt::new(to, Vec::new()))).await?;
    step(COMMAND_TIMEOUT, Stage::Data, conn.command(Data)).await?;
    step(DATA_DONE_TIMEOUT, Stage::Dot, conn.message(content)).await?;
    Ok(())
}

async fn step<T>(limit: Duration, stage: Stage, fut: impl Future<Output = Result<T, SmtpError>>) -> Result<T, Failure> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(error)) => match error.status() {
            Some(code) if code.to_string() == "421" => Err(Failure::Broken { stage, reason: reply_text(&error) }),
            Some(_) => Err(Failure::Reply { stage, error }),
            None => Err(Failure::Broken { stage, reason: reply_text(&error) }),
        },
        Err(_) => Err(Failure::Broken { stage, reason: format!("no reply within {}s", limit.as_secs()) }),
    }
}

async fn quit(mut conn: AsyncSmtpConnection) {
    let _ = tokio::time::timeout(COMMAND_TIMEOUT, conn.quit()).await;
}

/// `550 5.1.1 text` for a reply, lettre's description otherwise.
fn reply_text(e: &SmtpError) -> String {
    match (e.status(), std::error::Error::source(e)) {
        (Some(code), Some(text)) => format!("{code} {text}"),
        _ => e.to_string(),
    }
}

/// The address as lettre needs it, without lettre's RFC 5322 check (see the
/// module comment for why that is safe).
pub fn lettre_address(addr: &EmailAddress) -> Address {
    Address::new_dangerous(addr.local_part(), addr.domain())
}

/// The envelope sender; an empty one is the null reverse path `<>`.
fn envelope_sender(sender: &str) -> Result<Option<Address>, String> {
    if sender.is_empty() {
        return Ok(None);
    }
    EmailAddress::parse(sender).map(|a| Some(lettre_address(&a))).map_err(|e| format!("unusable envelope sender: {e}"))
}

/// The content as handed to lettre's `message()`, which appends `CRLF.CRLF`
/// itself: the content's own final CRLF ends the last line, so it is left off.
pub fn data_payload(content: &[u8]) -> &[u8] {
    content.strip_suffix(b"\r\n").unwrap_or(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carrier_addresses_pass_through_unchanged() {
        for s in ["taro..yamada.@docomo.ne.jp", ".x@ezweb.ne.jp", "plain@au.com"] {
            let a = EmailAddress::parse(s).expect("mamoru accepts carrier addresses");
            assert_eq!(lettre_address(&a).to_string(), s);
            assert_eq!(Rcpt::new(lettre_address(&a), vec![]).to_string(), format!("RCPT TO:<{s}>\r\n"));
        }
        // The reason for `new_dangerous`: lettre's own parser refuses them.
        assert!("taro..yamada.@docomo.ne.jp".parse::<Address>().is_err());
    }

    #[test]
    fn final_crlf_is_left_to_lettre() {
        assert_eq!(data_payload(b"a\r\n\r\nb\r\n"), b"a\r\n\r\nb");
        assert_eq!(data_payload(b"a\r\n\r\n"), b"a\r\n");
        assert_eq!(data_payload(b"a"), b"a");
    }

    #[test]
    fn null_and_bad_senders() {
        assert_eq!(envelope_sender("").ok(), Some(None));
        assert!(envelope_sender("ans@mamoru.example").is_ok_and(|a| a.is_some()));
        assert!(envelope_sender("a b@x\r\nRCPT TO:<y@z>").is_err());
    }
}
