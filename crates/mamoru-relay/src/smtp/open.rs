//! Opening a session: connection (with `TCP_NODELAY`), greeting, EHLO,
//! STARTTLS as a [`TlsPolicy`] says, AUTH; one limit for all of it, and a
//! refused session ("too many sessions") told from other failures.

use std::time::Duration;

use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, CertificateStore, TlsParameters};
use lettre::transport::smtp::extension::ClientId;

use super::transaction::reply_text;
use crate::outcome::Reply;

/// Limit for opening a session: connecting, greeting, EHLO, STARTTLS, AUTH.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit for STARTTLS: its reply, the TLS handshake and the EHLO after it
/// (within [`CONNECT_TIMEOUT`]). A handshake on a working link takes well
/// under a second; past this the server is taken as unable to do TLS.
const STARTTLS_TIMEOUT: Duration = Duration::from_secs(10);

/// STARTTLS for one connection.
#[derive(Clone)]
pub enum TlsPolicy {
    None,
    /// When offered; the certificate is not checked; a failed handshake
    /// falls back to a plain session.
    Opportunistic(TlsParameters),
    /// Must succeed, certificate verified.
    Required(TlsParameters),
}

/// TLS that accepts any certificate: opportunistic TLS guards against
/// passive listeners only, and MX hosts rarely have certificates that
/// verify (RFC 7435).
pub(super) fn unverified(host: &str) -> Result<TlsParameters, String> {
    TlsParameters::builder(host.to_string())
        .certificate_store(CertificateStore::None)
        .dangerous_accept_invalid_certs(true)
        .dangerous_accept_invalid_hostnames(true)
        .build_rustls()
        .map_err(|e| format!("TLS setup for {host}: {e}"))
}
/// Opens a session to `addr`:`port` (`name`: the host's name, for messages
/// and TLS), with STARTTLS as `tls` says and AUTH when `auth` has
/// credentials (and whether the host is on loopback). Returns the session
/// and, when it is the plain-text one opened after a failed STARTTLS
/// (opportunistic), why STARTTLS failed. Errors say nothing about the
/// message (even a 554 greeting is about this client).
pub(super) async fn open(
    name: &str,
    addr: &str,
    port: u16,
    hello: &ClientId,
    tls: &TlsPolicy,
    auth: Option<(&Credentials, bool)>,
) -> Result<(AsyncSmtpConnection, Option<String>), Opened> {
    match session(name, addr, port, hello, tls, auth, CONNECT_TIMEOUT).await {
        Ok(conn) => Ok((conn, None)),
        Err(Opened::TlsFailed(reason)) if matches!(tls, TlsPolicy::Opportunistic(_)) => {
            // Opportunistic: a failed handshake costs the encryption, not the mail.
            tracing::info!(host = %name, %reason, "STARTTLS failed; retrying without TLS");
            session(name, addr, port, hello, &TlsPolicy::None, auth, CONNECT_TIMEOUT).await.map(|conn| (conn, Some(reason)))
        }
        Err(e) => Err(e),
    }
}
pub(super) enum Opened {
    /// The STARTTLS handshake failed (the session is gone).
    TlsFailed(String),
    /// The server refused one more session: the connection refused or
    /// reset, or a 4xx to the greeting, EHLO, a required STARTTLS or AUTH.
    Refused(String),
    Other(String),
}

/// Is this error, while a session opens, a refusal of one more session? A
/// 4xx reply, or the peer refusing or dropping the connection.
fn refuses_session(e: &SmtpError) -> bool {
    match e.status() {
        Some(_) => Reply::parse(&reply_text(e)).is_some_and(|r| r.is_session_refusal()),
        None => !e.is_timeout() && !e.is_tls() && (e.is_response() || is_reset(e)),
    }
}

/// A connection reset or refused somewhere in the error's chain.
fn is_reset(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return is_reset_kind(io.kind());
        }
        cur = err.source();
    }
    false
}

fn is_reset_kind(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(kind, ConnectionRefused | ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe)
}

/// Opens one session within `limit` (the whole of it: connection, greeting,
/// EHLO, STARTTLS, AUTH); a timeout says at which step it ran out.
async fn session(
    name: &str,
    addr: &str,
    port: u16,
    hello: &ClientId,
    tls: &TlsPolicy,
    auth: Option<(&Credentials, bool)>,
    limit: Duration,
) -> Result<AsyncSmtpConnection, Opened> {
    let where_ = format!("connecting to {name}:{port}");
    let deadline = tokio::time::Instant::now() + limit;
    let late = |what: &str| Opened::Other(format!("{where_}: {what} within {}s", limit.as_secs()));
    // lettre writes a command, or the end of DATA, in more than one
    // segment; with Nagle's algorithm on, each reply then waits for the
    // peer's delayed ACK (~40 ms on Linux), capping a connection at ~20
    // messages/s. So the relay opens the socket itself, with TCP_NODELAY.
    let stream = tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect((addr, port)))
        .await
        .map_err(|_| late("no connection"))?
        .map_err(|e| {
            let reason = format!("{where_}: {e}");
            if is_reset_kind(e.kind()) { Opened::Refused(reason) } else { Opened::Other(reason) }
        })?;
    stream.set_nodelay(true).map_err(|e| Opened::Other(format!("{where_}: {e}")))?;
    // lettre reads the greeting and sends EHLO in one call; waiting here for
    // the greeting's first byte (left in the socket for lettre) tells the
    // two apart when one of them times out. An error or an end of stream
    // is left for lettre to report.
    let _ = tokio::time::timeout_at(deadline, stream.peek(&mut [0u8; 1])).await.map_err(|_| late("no greeting"))?;
    let mut conn = tokio::time::timeout_at(deadline, AsyncSmtpConnection::connect_with_transport(Box::new(stream), hello))
        .await
        .map_err(|_| late("no reply to EHLO"))?
        .map_err(|e| {
            let reason = format!("{where_}: {}", reply_text(&e));
            if refuses_session(&e) { Opened::Refused(reason) } else { Opened::Other(reason) }
        })?;
    match tls {
        TlsPolicy::None => {}
        TlsPolicy::Opportunistic(_) if !conn.can_starttls() => {}
        TlsPolicy::Required(_) if !conn.can_starttls() => {
            return Err(Opened::Other(format!("{where_}: STARTTLS is required but the server does not offer it")));
        }
        TlsPolicy::Opportunistic(params) | TlsPolicy::Required(params) => {
            // A handshake that never finishes is a failed one: without
            // its own limit it would use up the session's and end as a
            // plain timeout, which opportunistic TLS does not fall back
            // from (the mail would wait as long as the server stalls).
            let handshake_deadline = tokio::time::Instant::now() + STARTTLS_TIMEOUT;
            match tokio::time::timeout_at(handshake_deadline.min(deadline), conn.starttls(params.clone(), hello)).await {
                Ok(Ok(())) => {}
                // A required STARTTLS answered 4xx: the server takes no
                // more sessions now (opportunistic TLS goes on in plain text).
                Ok(Err(e)) if matches!(tls, TlsPolicy::Required(_)) && e.status().is_some() && refuses_session(&e) => {
                    return Err(Opened::Refused(format!("{where_}: STARTTLS failed: {}", reply_text(&e))));
                }
                Ok(Err(e)) => return Err(Opened::TlsFailed(format!("{where_}: STARTTLS failed: {}", reply_text(&e)))),
                Err(_) if deadline < handshake_deadline => return Err(late("no end to STARTTLS")),
                Err(_) => {
                    return Err(Opened::TlsFailed(format!(
                        "{where_}: STARTTLS failed: no TLS handshake within {}s",
                        STARTTLS_TIMEOUT.as_secs()
                    )));
                }
            }
        }
    }
    if let Some((credentials, loopback)) = auth {
        // The configuration already refuses this; a password never
        // crosses the network in clear, whatever the server offers.
        if !conn.is_encrypted() && !loopback {
            return Err(Opened::Other(format!("{where_}: refusing AUTH without TLS")));
        }
        tokio::time::timeout_at(deadline, conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials))
            .await
            .map_err(|_| late("no end to AUTH"))?
            .map_err(|e| {
                let reason = format!("{where_}: AUTH failed: {}", reply_text(&e));
                if e.status().is_some() && refuses_session(&e) { Opened::Refused(reason) } else { Opened::Other(reason) }
            })?;
    }
    tracing::debug!(host = %name, tls = conn.is_encrypted(), auth = auth.is_some(), "SMTP session open");
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on loopback that writes `script` (as it is, at once) and
    /// then reads without answering until the client hangs up.
    async fn mute_server(script: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(script.as_bytes()).await;
                    let mut buf = [0u8; 512];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        port
    }

    async fn opening_error(script: &'static str, auth: Option<(&Credentials, bool)>) -> String {
        let port = mute_server(script).await;
        let hello = ClientId::Domain("client.test".into());
        match session("127.0.0.1", "127.0.0.1", port, &hello, &TlsPolicy::None, auth, Duration::from_secs(1)).await {
            Ok(_) => panic!("a session opened"),
            Err(Opened::TlsFailed(r) | Opened::Refused(r) | Opened::Other(r)) => r,
        }
    }

    #[tokio::test]
    async fn an_opening_timeout_names_its_step() {
        assert!(opening_error("", None).await.ends_with(": no greeting within 1s"));
        // Greeted, then silence: the EHLO went unanswered.
        assert!(opening_error("220 mute.test ESMTP\r\n", None).await.ends_with(": no reply to EHLO within 1s"));
        let creds = Credentials::new("u".into(), "p".into());
        let r = opening_error("220 mute.test ESMTP\r\n250-mute.test\r\n250 AUTH PLAIN\r\n", Some((&creds, true))).await;
        assert!(r.ends_with(": no end to AUTH within 1s"), "{r}");
    }

    async fn opening(port: u16) -> Result<(), Opened> {
        let hello = ClientId::Domain("client.test".into());
        session("127.0.0.1", "127.0.0.1", port, &hello, &TlsPolicy::None, None, Duration::from_secs(2)).await.map(|_| ())
    }

    #[tokio::test]
    async fn a_refused_session_is_told_from_other_opening_failures() {
        // One session too many: a 4xx greeting, a refused connection, a
        // server hanging up right after accepting.
        let r = opening(mute_server("421 4.7.0 Too many connections\r\n").await).await;
        assert!(matches!(r, Err(Opened::Refused(ref m)) if m.contains("421 4.7.0")));
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        assert!(matches!(opening(closed).await, Err(Opened::Refused(_))));
        let hangs_up = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().expect("addr").port();
            tokio::spawn(async move {
                while let Ok((s, _)) = listener.accept().await {
                    drop(s);
                }
            });
            port
        };
        assert!(matches!(opening(hangs_up).await, Err(Opened::Refused(_))));
        // A 5xx greeting is no "too many": it is about this client.
        assert!(matches!(opening(mute_server("554 5.7.1 Go away\r\n").await).await, Err(Opened::Other(_))));
        // Silence is a timeout, not a refusal.
        assert!(matches!(opening(mute_server("").await).await, Err(Opened::Other(_))));
    }
}
