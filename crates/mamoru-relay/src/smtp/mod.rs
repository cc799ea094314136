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
//! Opening a session ([`open()`]): TCP with `TCP_NODELAY`, greeting, EHLO, then
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
//!
//! Layout: this file holds the hop ([`SmtpHop`]: which session a message
//! goes on, and what its outcome is); [`mod@open`] opens a session (connection,
//! greeting, EHLO, STARTTLS, AUTH) and tells a refused session from other
//! failures; [`mod@transaction`] runs one message's MAIL, RCPT, DATA and
//! classifies what went wrong.

mod open;
mod transaction;

use std::sync::Arc;

use lettre::Address;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, CertificateStore, TlsParameters};
use lettre::transport::smtp::commands::Rset;
use lettre::transport::smtp::extension::ClientId;
use mamoru_core::EmailAddress;
use mamoru_core::config::SmtpTls;
use mamoru_store::QueuedMail;

use crate::DeliveryOutcome;
use crate::outcome::Reply;
use crate::mx::{self, DnsResolver, NoRoute};

use open::{Opened, open, unverified};
pub use open::TlsPolicy;
use transaction::{COMMAND_TIMEOUT, Failure, Stage, quit, reply_text, session_refusal, step, transaction};

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
    use lettre::transport::smtp::commands::Rcpt;

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
