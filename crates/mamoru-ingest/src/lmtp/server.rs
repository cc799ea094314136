//! The LMTP listener: one task per connection, each a thin loop around a
//! [`Session`]. Blocking [`Deliver`] calls run on tokio's blocking pool; a
//! panic there becomes a 451 for that recipient, never a dropped connection.
//!
//! Limits: every connection holds a slot of the listener's
//! [`ConnectionLimits`] (a total cap and a cap per client address); one over
//! either is answered `421 4.7.0 too many connections` and closed without a
//! task. A connection silent for `idle_timeout` is closed with 421, and so
//! is a transaction that takes longer than `transaction_timeout` in all (a
//! client dripping its DATA a byte at a time).
//!
//! Shutdown: on cancel the listener stops accepting; an idle connection gets
//! `421 4.3.2` at once, a connection in the middle of a transaction finishes
//! it (DATA included) and gets the 421 afterwards. [`run`] returns when every
//! connection is done.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mamoru_core::EmailAddress;
use mamoru_core::conn_limit::{ConnectionLimits, ConnectionPermit, Refused, RefusalLog};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::session::{Event, Limits, Session, Transaction};
use crate::{Deliver, Outcome};

/// Settings for [`run`].
#[derive(Debug, Clone)]
pub struct LmtpConfig {
    /// Named in the greeting and in replies.
    pub hostname: String,
    /// Announced as `SIZE` and enforced on the body.
    pub max_message_bytes: u64,
    /// RCPTs accepted per transaction (more get 452 4.5.3); 100 is usual.
    pub max_recipients: usize,
    /// How long a connection may stay silent (or refuse to read our
    /// replies) before it is closed with 421.
    pub idle_timeout: Duration,
    /// How long one transaction, from MAIL to the replies after DATA, may
    /// take in all.
    pub transaction_timeout: Duration,
    /// The listener's connection caps (total and per client).
    pub connections: Arc<ConnectionLimits>,
}

/// The answer to a connection over a cap, written without waiting (a
/// client that does not read it just misses it).
const TOO_MANY: &[u8] = b"421 4.7.0 too many connections\r\n";

/// Serves LMTP on `listener` until `shutdown` is cancelled and every
/// connection has finished.
pub async fn run(
    listener: TcpListener,
    cfg: LmtpConfig,
    deliver: Arc<dyn Deliver>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let cfg = Arc::new(cfg);
    let mut connections = JoinSet::new();
    let mut refusals = RefusalLog::new(Duration::from_secs(10));
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(joined) = connections.join_next() => log_join(joined),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match cfg.connections.try_acquire(peer.ip(), true) {
                    Ok(permit) => {
                        let span = info_span!("lmtp", %peer);
                        let conn = connection(stream, peer, permit, cfg.clone(), deliver.clone(), shutdown.clone());
                        connections.spawn(conn.instrument(span));
                    }
                    Err(why) => refuse(&stream, peer, why, &cfg.connections, &mut refusals),
                },
                Err(e) => {
                    // Usually EMFILE or a connection reset before accept;
                    // back off a little instead of spinning.
                    warn!(error = %e, "lmtp accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    if !connections.is_empty() {
        info!(connections = connections.len(), "lmtp shutting down, waiting for connections");
    }
    while let Some(joined) = connections.join_next().await {
        log_join(joined);
    }
    Ok(())
}

/// Answers 421 without a task and closes (the stream drops here).
fn refuse(stream: &TcpStream, peer: SocketAddr, why: Refused, limits: &ConnectionLimits, log: &mut RefusalLog) {
    // A fresh socket's send buffer always takes these few bytes.
    let _ = stream.try_write(TOO_MANY);
    let Some(refused) = log.note(std::time::Instant::now()) else { return };
    match why {
        Refused::Total => warn!(%peer, max = limits.max_total(), refused, "lmtp connections refused: listener full"),
        Refused::Client => {
            warn!(%peer, max = limits.max_per_client(), refused, "lmtp connections refused: too many from one client")
        }
    }
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        error!(error = %e, "lmtp connection task failed");
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    _permit: ConnectionPermit,
    cfg: Arc<LmtpConfig>,
    deliver: Arc<dyn Deliver>,
    shutdown: CancellationToken,
) {
    debug!(%peer, "lmtp connection opened");
    // Replies are written in batches already; Nagle would only add delay.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "set_nodelay failed");
    }
    match serve(&mut stream, &cfg, &deliver, &shutdown).await {
        Ok(()) => debug!("lmtp connection closed"),
        Err(e) => info!(error = %e, "lmtp connection ended with an error"),
    }
}

/// Writes everything in `out`, then empties it.
async fn flush(stream: &mut TcpStream, out: &mut Vec<u8>, timeout: Duration) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(timeout, stream.write_all(out)).await {
        Ok(result) => result?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "client does not read replies")),
    }
    out.clear();
    Ok(())
}

/// The thin loop: ask the session what to do, do it.
async fn serve(
    stream: &mut TcpStream,
    cfg: &LmtpConfig,
    deliver: &Arc<dyn Deliver>,
    shutdown: &CancellationToken,
) -> io::Result<()> {
    let limits = Limits { max_message_bytes: cfg.max_message_bytes, max_recipients: cfg.max_recipients };
    let mut session = Session::new(cfg.hostname.clone(), limits);
    // Replies wait here until the session needs input: with PIPELINING a
    // whole batch of commands is answered in one write.
    let mut out = session.greeting().into_bytes();
    let mut buf = vec![0u8; 16 * 1024];
    // When the transaction in progress must be over.
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        match session.next_event() {
            Event::Reply(reply) => out.extend_from_slice(reply.as_bytes()),
            Event::CheckRecipient(rcpt) => {
                let d = Arc::clone(deliver);
                let masked = mask(&rcpt);
                let reply = match tokio::task::spawn_blocking(move || d.accepts_recipient(&rcpt)).await {
                    Ok(accepted) => {
                        if !accepted {
                            info!(rcpt = %masked, "lmtp recipient unknown");
                        }
                        session.recipient_checked(accepted)
                    }
                    Err(e) => {
                        error!(rcpt = %masked, error = %e, "lmtp recipient check failed");
                        session.recipient_check_failed()
                    }
                };
                out.extend_from_slice(reply.as_bytes());
            }
            Event::Deliver(txn) => {
                let outcomes = deliver_all(deliver, txn).await;
                out.extend_from_slice(session.delivered(&outcomes).as_bytes());
            }
            Event::Close(reply) => {
                out.extend_from_slice(reply.as_bytes());
                flush(stream, &mut out, cfg.idle_timeout).await?;
                // The peer may already be gone; nothing left to tell it.
                let _ = stream.shutdown().await;
                return Ok(());
            }
            Event::NeedInput => {
                flush(stream, &mut out, cfg.idle_timeout).await?;
                deadline = match (session.in_transaction(), deadline) {
                    (false, _) => None,
                    (true, Some(d)) => Some(d),
                    (true, None) => Some(tokio::time::Instant::now() + cfg.transaction_timeout),
                };
                let now = tokio::time::Instant::now();
                let wait = deadline.map_or(cfg.idle_timeout, |d| cfg.idle_timeout.min(d.saturating_duration_since(now)));
                if wait.is_zero() {
                    return transaction_timed_out(stream, cfg).await;
                }
                let read = if shutdown.is_cancelled() {
                    if let Some(reply) = session.shutdown() {
                        out.extend_from_slice(reply.as_bytes());
                        continue;
                    }
                    // A transaction is in flight: let it finish.
                    tokio::time::timeout(wait, stream.read(&mut buf)).await
                } else {
                    tokio::select! {
                        () = shutdown.cancelled() => continue,
                        read = tokio::time::timeout(wait, stream.read(&mut buf)) => read,
                    }
                };
                match read {
                    Err(_elapsed) if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) => {
                        return transaction_timed_out(stream, cfg).await;
                    }
                    Err(_elapsed) => {
                        info!(in_transaction = session.in_transaction(), "lmtp idle timeout");
                        out.extend_from_slice(session.timeout_reply().as_bytes());
                        flush(stream, &mut out, cfg.idle_timeout).await?;
                        return Ok(());
                    }
                    Ok(Ok(0)) => {
                        if session.in_transaction() {
                            info!("lmtp client closed the connection in the middle of a transaction");
                        }
                        return Ok(());
                    }
                    Ok(Ok(n)) => session.push_input(&buf[..n]),
                    Ok(Err(e)) => return Err(e),
                }
            }
        }
    }
}

/// The transaction ran out of time: 421 and close. Nothing of it was
/// delivered (delivery starts only after the whole message is in).
async fn transaction_timed_out(stream: &mut TcpStream, cfg: &LmtpConfig) -> io::Result<()> {
    info!(budget_secs = cfg.transaction_timeout.as_secs(), "lmtp transaction took too long");
    let mut out = format!("421 4.4.2 {} transaction took too long, closing connection\r\n", cfg.hostname).into_bytes();
    flush(stream, &mut out, cfg.idle_timeout).await?;
    let _ = stream.shutdown().await;
    Ok(())
}

/// Hands the message to the deliverer once per recipient, in order. Each
/// call gets its own blocking task so a panic costs only that recipient.
async fn deliver_all(deliver: &Arc<dyn Deliver>, txn: Transaction) -> Vec<Outcome> {
    let sender: Arc<str> = txn.sender.into();
    let message: Arc<[u8]> = txn.message.into();
    let mut outcomes = Vec::with_capacity(txn.recipients.len());
    for rcpt in txn.recipients {
        let masked = mask(&rcpt);
        let (d, s, m) = (Arc::clone(deliver), Arc::clone(&sender), Arc::clone(&message));
        let outcome = match tokio::task::spawn_blocking(move || d.deliver(&s, &rcpt, &m)).await {
            Ok(outcome) => outcome,
            Err(e) => {
                error!(rcpt = %masked, error = %e, "lmtp delivery failed");
                Outcome::Transient("delivery task failed".to_owned())
            }
        };
        let kind = match &outcome {
            Outcome::Stored => "stored",
            Outcome::Dropped(_) => "dropped",
            Outcome::Transient(_) => "transient",
        };
        info!(rcpt = %masked, bytes = message.len(), outcome = kind, "lmtp delivery");
        outcomes.push(outcome);
    }
    outcomes
}

/// An address fit for a log line.
fn mask(addr: &str) -> String {
    match EmailAddress::parse(addr) {
        Ok(a) => a.masked(),
        Err(_) if addr.is_empty() => "<>".to_owned(),
        Err(_) => "<unparsable>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_addresses() {
        assert_eq!(mask("parent@docomo.ne.jp"), "p***@docomo.ne.jp");
        assert_eq!(mask(""), "<>");
        assert_eq!(mask("not an address"), "<unparsable>");
    }
}
