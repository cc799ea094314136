//! The LMTP listener: one task per connection, each a thin loop around a
//! [`Session`]. Blocking [`Deliver`] calls run on tokio's blocking pool; a
//! panic there becomes a 451 for that recipient, never a dropped connection.
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::proto::{Event, Limits, Session, Transaction};
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
}

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
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(joined) = connections.join_next() => log_join(joined),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let span = info_span!("lmtp", %peer);
                    let conn = connection(stream, peer, cfg.clone(), deliver.clone(), shutdown.clone());
                    connections.spawn(conn.instrument(span));
                }
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

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        error!(error = %e, "lmtp connection task failed");
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
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
                let read = if shutdown.is_cancelled() {
                    if let Some(reply) = session.shutdown() {
                        out.extend_from_slice(reply.as_bytes());
                        continue;
                    }
                    // A transaction is in flight: let it finish.
                    tokio::time::timeout(cfg.idle_timeout, stream.read(&mut buf)).await
                } else {
                    tokio::select! {
                        () = shutdown.cancelled() => continue,
                        read = tokio::time::timeout(cfg.idle_timeout, stream.read(&mut buf)) => read,
                    }
                };
                match read {
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
