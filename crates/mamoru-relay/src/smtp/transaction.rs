//! One message's transaction on an open session (MAIL, RCPT, DATA, the
//! final dot) with a limit per step, and what a failure was: a reply (the
//! session goes on after RSET), a 421 (the server closes), a broken session,
//! or a refusal of the session rather than the message.

use std::future::Future;
use std::time::Duration;

use lettre::Address;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{Extension, MailBodyParameter, MailParameter};

/// Limit for each command's reply (RFC 5321 §4.5.3.2 suggests minutes; a
/// smarthost on the same network answers in milliseconds).
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Limit for the reply to the final dot, when the server does its work.
const DATA_DONE_TIMEOUT: Duration = Duration::from_secs(300);

/// Where in the transaction a failure happened, for the stored reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    Mail,
    Rcpt,
    Data,
    Dot,
}

impl Stage {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::Dot => "end of data",
        }
    }
}

pub(super) enum Failure {
    /// A negative reply; client and server still agree on the session state,
    /// so RSET makes the connection usable again.
    Reply { stage: Stage, error: SmtpError },
    /// The session is gone or out of step: network error, timeout, a
    /// garbled reply.
    Broken { stage: Stage, reason: String },
    /// A 421: the server closes the session.
    Closed { stage: Stage, reason: String },
    /// We refuse to send this message to this server; nothing was sent.
    Unsendable(String),
}
/// Is a negative reply to `stage` a refusal of the session (how the client
/// connected) rather than of the message or the recipient? Then it says
/// why, and the message waits instead of failing: the operator can fix
/// the session (TLS, AUTH), and the alert must not be lost meanwhile.
///
/// - 530 at any stage: RFC 3207 (`530 5.7.0 Must issue a STARTTLS command
///   first`) and RFC 4954 (`530 5.7.0 Authentication required`) give it to
///   every transaction command when the server's policy wants TLS or AUTH.
/// - on a session that fell back to plain text after a failed STARTTLS
///   (`fell_back`), any 5.7.x or a reply that names TLS at
///   MAIL FROM: the server most likely wants the TLS it could not set up.
///
/// Everything else stays as the reply says (a 550 5.1.1 at RCPT fails the
/// message and suspends the address).
pub(super) fn session_refusal(stage: Stage, reply: &str, fell_back: bool) -> Option<&'static str> {
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or("");
    if !code.starts_with('5') {
        return None;
    }
    let enhanced = words.next().filter(|w| w.starts_with("5.") && w.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
    let names_tls = reply.to_ascii_lowercase().contains("tls");
    let tls_refusal = code == "530" || (stage == Stage::Mail && (enhanced.is_some_and(|e| e.starts_with("5.7.")) || names_tls));
    match fell_back {
        true if tls_refusal => Some("server requires TLS, and the STARTTLS handshake failed"),
        _ if code == "530" && names_tls => Some("server requires TLS for this session"),
        _ if code == "530" => Some("server requires TLS or AUTH for this session"),
        _ => None,
    }
}
pub(super) async fn transaction(
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

pub(super) async fn step<T>(limit: Duration, stage: Stage, fut: impl Future<Output = Result<T, SmtpError>>) -> Result<T, Failure> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(error)) => match error.status() {
            Some(code) if code.to_string() == "421" => Err(Failure::Closed { stage, reason: reply_text(&error) }),
            Some(_) => Err(Failure::Reply { stage, error }),
            None => Err(Failure::Broken { stage, reason: reply_text(&error) }),
        },
        Err(_) => Err(Failure::Broken { stage, reason: format!("no reply within {}s", limit.as_secs()) }),
    }
}

pub(super) async fn quit(mut conn: AsyncSmtpConnection) {
    let _ = tokio::time::timeout(COMMAND_TIMEOUT, conn.quit()).await;
}

/// `550 5.1.1 text` for a reply, lettre's description otherwise.
pub(super) fn reply_text(e: &SmtpError) -> String {
    match (e.status(), std::error::Error::source(e)) {
        (Some(code), Some(text)) => format!("{code} {text}"),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_refusals_defer_recipient_refusals_fail() {
        use Stage::*;
        let tls = Some("server requires TLS, and the STARTTLS handshake failed");
        // After a failed handshake, the server wanting TLS at MAIL FROM.
        assert_eq!(session_refusal(Mail, "530 5.7.0 Must issue a STARTTLS command first", true), tls);
        assert_eq!(session_refusal(Mail, "554 5.7.10 Encryption needed", true), tls);
        assert_eq!(session_refusal(Mail, "550 5.7.1 Sender rejected", true), tls);
        assert_eq!(session_refusal(Mail, "554 TLS required", true), tls);
        assert_eq!(session_refusal(Rcpt, "530 5.7.0 Must issue a STARTTLS command first", true), tls);
        // A 530 without a fallback: still the session, never the message.
        assert_eq!(
            session_refusal(Mail, "530 5.7.0 Must issue a STARTTLS command first", false),
            Some("server requires TLS for this session")
        );
        assert_eq!(session_refusal(Mail, "530 5.7.0 Authentication required", false), Some("server requires TLS or AUTH for this session"));
        assert_eq!(session_refusal(Rcpt, "530 5.7.0 Authentication required", false), Some("server requires TLS or AUTH for this session"));
        // The recipient or the message: as the reply says.
        for fell_back in [false, true] {
            assert_eq!(session_refusal(Rcpt, "550 5.1.1 <t***@docomo.ne.jp>: User unknown", fell_back), None);
            assert_eq!(session_refusal(Rcpt, "550 5.7.1 Relay access denied", fell_back), None);
            assert_eq!(session_refusal(Dot, "552 5.3.4 Message too big for system", fell_back), None);
            assert_eq!(session_refusal(Dot, "554 5.7.1 rejected as spam", fell_back), None);
            assert_eq!(session_refusal(Mail, "451 4.7.0 try later", fell_back), None);
        }
        assert_eq!(session_refusal(Mail, "550 5.7.1 Sender rejected", false), None);
    }
}
