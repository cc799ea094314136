//! SMTP delivery for the `smtp://HOST:PORT` transport (a smarthost) and the
//! `mx` transport (each recipient domain's MX hosts): one recipient per
//! transaction, one connection reused across a drain.
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
//!   serves the next message.
//!
//! How replies become outcomes ("too many sessions", "too fast", a refusal
//! of the session rather than the message, a message's own failure) is
//! told in docs/ARCHITECTURE.md (`mamoru-relay`, "Outcomes");
//! [`session_refusal`] and [`Reply::is_pace_push_back`] are its code here.
//!
//! Opening a session ([`open`]): TCP with `TCP_NODELAY`, greeting, EHLO, then
//! STARTTLS (lettre over rustls/ring) as [`TlsPolicy`] says, then AUTH
//! (PLAIN or LOGIN) when credentials are configured, only over TLS unless
//! the smarthost is on loopback (the configuration refuses the other cases
//! too). With the smarthost's `smtp_tls = "required"`, STARTTLS must succeed
//! and the certificate verify against the system's roots or the configured
//! CA file; "opportunistic" (and always for MX hosts) uses STARTTLS when
//! offered without verifying, and reconnects in plain text if the handshake
//! fails (an error, or no handshake within 10 s), as Postfix's `may` level
//! does. A failed STARTTLS (required) or
//! AUTH defers the message and pauses the pool: nothing is lost or failed.
//!
//! Opening has one limit (30 s) for all of it; when it runs out, the reason
//! names the step that was waiting (connection, greeting, EHLO, STARTTLS,
//! AUTH), since a server that greets and then stalls is another fault than
//! one that never answers.
//!
//! With `mx`, a worker's connection belongs to one destination domain: a
//! message for another domain closes it and opens one to that domain's MX
//! host ([`crate::mx`] picks and orders the hosts). DNS saying the domain
//! takes no mail (null MX, NXDOMAIN) fails the message; a DNS failure or no
//! reachable MX host defers only that message (a dead domain must not pause
//! a pool of many domains); a 4xx from a connected host is read as with a
//! smarthost, and every MX host refusing one more session is a refused
//! session.
//!
//! lettre's `message()` dot-stuffs the content and then writes `CRLF.CRLF`
//! itself. Queued content already ends with CRLF, so that CRLF is taken off
//! first ([`data_payload`]); otherwise every message would gain an empty line.
//!
//! lettre's `tracing` feature must stay off: at debug level it logs every
//! command and the message content, which hold addresses in clear (and AUTH
//! lines, which hold the password).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lettre::Address;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, CertificateStore, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use mamoru_core::EmailAddress;
use mamoru_core::config::SmtpTls;
use mamoru_store::QueuedMail;

use crate::DeliveryOutcome;
use crate::outcome::Reply;
use crate::mx::{self, DnsResolver, NoRoute};

/// Limit for opening a session: connecting, greeting, EHLO, STARTTLS, AUTH.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit for STARTTLS: its reply, the TLS handshake and the EHLO after it
/// (within [`CONNECT_TIMEOUT`]). A handshake on a working link takes well
/// under a second; past this the server is taken as unable to do TLS.
const STARTTLS_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit for each command's reply (RFC 5321 §4.5.3.2 suggests minutes; a
/// smarthost on the same network answers in milliseconds).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Limit for the reply to the final dot, when the server does its work.
const DATA_DONE_TIMEOUT: Duration = Duration::from_secs(300);
/// Transactions per connection at most (carriers block senders that put more
/// than 100 RCPT in one session), whatever the pool's `messages_per_connection` says.
const MAX_PER_CONNECTION: usize = 100;

/// How smarthost sessions are secured and authenticated (`[relay]
/// smtp_tls`, `smtp_tls_ca_file`, `smtp_username`, `smtp_password_file`);
/// loaded once at start and shared by every worker.
#[derive(Clone)]
pub struct SmtpSecurity {
    pub tls: SmtpTls,
    /// Roots for `Required` instead of the system's.
    pub ca: Option<Certificate>,
    pub credentials: Option<Credentials>,
}

impl SmtpSecurity {
    /// Plain SMTP, no AUTH.
    pub fn plain() -> Self {
        Self { tls: SmtpTls::None, ca: None, credentials: None }
    }

    /// The policy for a connection to `host` (the name certificates are
    /// checked against).
    fn policy(&self, host: &str) -> Result<TlsPolicy, String> {
        Ok(match self.tls {
            SmtpTls::None => TlsPolicy::None,
            SmtpTls::Opportunistic => TlsPolicy::Opportunistic(unverified(host)?),
            SmtpTls::Required => {
                let mut b = TlsParameters::builder(host.to_string());
                if let Some(ca) = &self.ca {
                    b = b.certificate_store(CertificateStore::None).add_root_certificate(ca.clone());
                }
                TlsPolicy::Required(b.build_rustls().map_err(|e| format!("TLS setup for {host}: {e}"))?)
            }
        })
    }
}

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
fn unverified(host: &str) -> Result<TlsParameters, String> {
    TlsParameters::builder(host.to_string())
        .certificate_store(CertificateStore::None)
        .dangerous_accept_invalid_certs(true)
        .dangerous_accept_invalid_hostnames(true)
        .build_rustls()
        .map_err(|e| format!("TLS setup for {host}: {e}"))
}

/// Where a hop's sessions go.
enum Route {
    Smarthost { host: String, port: u16, tls: TlsPolicy, credentials: Option<Credentials>, loopback: bool },
    Mx { resolver: Arc<DnsResolver>, port: u16 },
}

pub struct SmtpHop {
    route: Route,
    hello: ClientId,
    /// The open session.
    conn: Option<Open>,
    /// Messages accepted on `conn`.
    used: usize,
    /// Close the connection after this many messages.
    per_connection: usize,
}

/// An open session.
struct Open {
    /// The destination domain it serves (`mx`; empty for a smarthost, which
    /// takes every domain).
    domain: String,
    conn: AsyncSmtpConnection,
    /// Why STARTTLS failed, when this is the plain-text session opened
    /// after that (opportunistic TLS).
    fell_back: Option<String>,
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
    /// The session is gone or out of step: network error, timeout, a
    /// garbled reply.
    Broken { stage: Stage, reason: String },
    /// A 421: the server closes the session.
    Closed { stage: Stage, reason: String },
    /// We refuse to send this message to this server; nothing was sent.
    Unsendable(String),
}

/// Why no session could be opened; decides what becomes of the message.
enum OpenError {
    /// Slow the pool down and try later (failed TLS or AUTH, a timeout).
    Throttle(String),
    /// The server refused one more session (a 4xx while it opened, a
    /// refused or reset connection).
    Refused(String),
    /// Try this message later (DNS trouble, no MX host reachable).
    Retry(String),
    /// The destination takes no mail (null MX, NXDOMAIN).
    Fail(String),
}

impl SmtpHop {
    /// A plain smarthost session, no AUTH. `hostname` is the EHLO name (the
    /// mail domain).
    pub fn new(host: &str, port: u16, hostname: &str) -> Self {
        // Without AUTH, whether the host is on loopback is never consulted.
        Self::smarthost(host, port, false, hostname, &SmtpSecurity::plain()).unwrap_or_else(|_| unreachable!("no TLS to set up"))
    }

    /// A smarthost with STARTTLS and AUTH as `security` says. `loopback`:
    /// the host is on this machine (`Transport::is_loopback`, decided with
    /// the configuration), where AUTH without TLS exposes the password to no
    /// one.
    pub fn smarthost(host: &str, port: u16, loopback: bool, hostname: &str, security: &SmtpSecurity) -> Result<Self, String> {
        let route = Route::Smarthost {
            host: host.to_string(),
            port,
            tls: security.policy(host)?,
            credentials: security.credentials.clone(),
            loopback,
        };
        Ok(Self::with_route(route, hostname))
    }

    /// Direct delivery to each recipient domain's MX hosts on `port`.
    pub fn mx(resolver: Arc<DnsResolver>, port: u16, hostname: &str) -> Self {
        Self::with_route(Route::Mx { resolver, port }, hostname)
    }

    fn with_route(route: Route, hostname: &str) -> Self {
        Self { route, hello: ClientId::Domain(hostname.to_string()), conn: None, used: 0, per_connection: MAX_PER_CONNECTION }
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
        let domain = match self.route {
            Route::Smarthost { .. } => String::new(),
            Route::Mx { .. } => mail.recipient.domain().to_ascii_lowercase(),
        };
        // A session to another domain's MX host cannot take this message.
        if self.conn.as_ref().is_some_and(|o| o.domain != domain) {
            self.close().await;
        }
        loop {
            let (Open { mut conn, fell_back, .. }, reused) = match self.conn.take() {
                Some(open) => (open, true),
                None => match self.connect(&domain).await {
                    Ok((conn, fell_back)) => {
                        self.used = 0;
                        (Open { domain: domain.clone(), conn, fell_back }, false)
                    }
                    Err(OpenError::Throttle(reason)) => return DeliveryOutcome::Throttled { reason },
                    Err(OpenError::Refused(reason)) => return DeliveryOutcome::SessionRefused { reason },
                    Err(OpenError::Retry(reason)) => return DeliveryOutcome::Retry { reason },
                    Err(OpenError::Fail(reason)) => return DeliveryOutcome::Failed { reason },
                },
            };
            match transaction(&mut conn, from.clone(), to.clone(), content).await {
                Ok(()) => {
                    self.used += 1;
                    if self.used >= self.per_connection {
                        quit(conn).await;
                    } else {
                        self.conn = Some(Open { domain, conn, fell_back });
                    }
                    return DeliveryOutcome::Sent;
                }
                // A kept connection may have been closed by the server while
                // idle; nothing of this message was sent, so open a fresh one
                // instead of deferring the message.
                Err(Failure::Broken { stage: Stage::Mail, .. } | Failure::Closed { stage: Stage::Mail, .. }) if reused => continue,
                // Refused before this session carried anything: one session
                // too many, not a message too many.
                Err(Failure::Closed { stage, reason } | Failure::Broken { stage: stage @ Stage::Mail, reason }) if !reused => {
                    return DeliveryOutcome::SessionRefused { reason: format!("{reason} (after {})", stage.as_str()) };
                }
                Err(Failure::Unsendable(reason)) => {
                    self.conn = Some(Open { domain, conn, fell_back });
                    return DeliveryOutcome::Failed { reason };
                }
                Err(Failure::Broken { stage, reason } | Failure::Closed { stage, reason }) => {
                    // Dropping the connection closes the socket; a QUIT would
                    // only wait on a peer that is already gone.
                    return DeliveryOutcome::Throttled { reason: format!("{reason} (after {})", stage.as_str()) };
                }
                Err(Failure::Reply { stage, error }) => {
                    let reply = reply_text(&error);
                    if let Some(why) = session_refusal(stage, &reply, fell_back.is_some()) {
                        // The server refuses this session, not this message:
                        // the message waits, and the next one gets a new
                        // session (which may manage TLS this time).
                        quit(conn).await;
                        let mut reason = format!("{why}: {reply} (after {})", stage.as_str());
                        if let Some(handshake) = &fell_back {
                            reason = format!("{reason}; {handshake}");
                        }
                        return match self.route {
                            Route::Smarthost { .. } => DeliveryOutcome::Throttled { reason },
                            // One domain's MX host must not pause a pool of many domains.
                            Route::Mx { .. } => DeliveryOutcome::Retry { reason },
                        };
                    }
                    let reason = format!("{reply} (after {})", stage.as_str());
                    if step(COMMAND_TIMEOUT, Stage::Mail, conn.command(Rset)).await.is_ok() {
                        self.conn = Some(Open { domain, conn, fell_back });
                    }
                    // Carriers answer 4xx when a sender goes too fast; the
                    // codes tell that from a recipient's trouble.
                    return if error.is_permanent() {
                        DeliveryOutcome::Failed { reason }
                    } else if Reply::parse(&reply).is_none_or(|r| r.is_pace_push_back()) {
                        DeliveryOutcome::Throttled { reason }
                    } else {
                        DeliveryOutcome::Retry { reason }
                    };
                }
            }
        }
    }

    /// Ends the session politely, if there is one (the relay is idle).
    pub async fn close(&mut self) {
        if let Some(open) = self.conn.take() {
            quit(open.conn).await;
        }
    }

    /// A new session, and why STARTTLS failed if it fell back to plain text.
    async fn connect(&self, domain: &str) -> Result<(AsyncSmtpConnection, Option<String>), OpenError> {
        match &self.route {
            Route::Smarthost { host, port, tls, credentials, loopback } => {
                let auth = credentials.as_ref().map(|c| (c, *loopback));
                open(host, host, *port, &self.hello, tls, auth).await.map_err(|e| match e {
                    Opened::Refused(r) => OpenError::Refused(r),
                    Opened::TlsFailed(r) | Opened::Other(r) => OpenError::Throttle(r),
                })
            }
            Route::Mx { resolver, port } => {
                // A random rotation of equal-preference MX hosts per
                // connection spreads the pool's sessions over them.
                let spin = ((crate::backoff::random_jitter() + 1.0) * 1e6) as usize;
                let destinations = match mx::destinations(resolver.as_ref(), domain, spin).await {
                    Ok(d) => d,
                    Err(NoRoute::Permanent(reason)) => return Err(OpenError::Fail(reason)),
                    Err(NoRoute::Temporary(reason)) => return Err(OpenError::Retry(reason)),
                };
                let mut reasons = Vec::new();
                let mut all_refused = true;
                for d in &destinations {
                    let tls = TlsPolicy::Opportunistic(unverified(&d.host).map_err(OpenError::Retry)?);
                    match open(&d.host, &d.ip.to_string(), *port, &self.hello, &tls, None).await {
                        Ok(open) => return Ok(open),
                        Err(e) => {
                            let reason = match e {
                                Opened::Refused(r) => r,
                                Opened::TlsFailed(r) | Opened::Other(r) => {
                                    all_refused = false;
                                    r
                                }
                            };
                            tracing::debug!(mx = %d.host, %reason, "MX host unreachable; trying the next");
                            reasons.push(reason);
                        }
                    }
                }
                let reason = format!("no MX host of {domain} reachable: {}", reasons.join("; "));
                // Every host refused one more session: the pool has too many.
                Err(if all_refused && !destinations.is_empty() { OpenError::Refused(reason) } else { OpenError::Retry(reason) })
            }
        }
    }
}

/// Opens a session to `addr`:`port` (`name`: the host's name, for messages
/// and TLS), with STARTTLS as `tls` says and AUTH when `auth` has
/// credentials (and whether the host is on loopback). Returns the session
/// and, when it is the plain-text one opened after a failed STARTTLS
/// (opportunistic), why STARTTLS failed. Errors say nothing about the
/// message (even a 554 greeting is about this client).
async fn open(
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
fn session_refusal(stage: Stage, reply: &str, fell_back: bool) -> Option<&'static str> {
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

enum Opened {
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
            Some(code) if code.to_string() == "421" => Err(Failure::Closed { stage, reason: reply_text(&error) }),
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

    #[test]
    fn null_and_bad_senders() {
        assert_eq!(envelope_sender("").ok(), Some(None));
        assert!(envelope_sender("ans@mamoru.example").is_ok_and(|a| a.is_some()));
        assert!(envelope_sender("a b@x\r\nRCPT TO:<y@z>").is_err());
    }
}
