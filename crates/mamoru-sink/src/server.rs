//! The I/O around [`Session`] and [`Policy`]: accept loop, one task per
//! connection, the message log and the stats file.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;

use crate::policy::{Delivery, Policy};
use crate::session::{Offers, Session, Step};

/// Longest command or data line read (RFC 5321 allows 1000 octets; carriers
/// allow a little more).
const MAX_LINE: usize = 8192;
const STATS_EVERY: Duration = Duration::from_millis(200);
/// How long shutdown waits for open sessions before the last stats write.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// How long a client may take for the TLS handshake after STARTTLS.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("TLS certificate or key {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
}

pub struct Sink {
    pub hostname: String,
    pub policy: Mutex<Policy>,
    pub log: Option<Mutex<std::fs::File>>,
    pub stats_path: Option<PathBuf>,
    pub started: Instant,
    /// With a certificate, STARTTLS is offered.
    pub tls: Option<TlsAcceptor>,
    /// AUTH accounts, (user, password); with any, MAIL needs AUTH.
    pub accounts: Vec<(String, String)>,
    /// A STARTTLS whose handshake fails on purpose; offered even without a
    /// certificate.
    pub handshake: Option<HandshakeFault>,
    /// MAIL needs TLS first (530 5.7.0); with [`Sink::handshake`], no
    /// message gets through.
    pub require_tls: bool,
}

/// How the TLS handshake after STARTTLS fails, on demand: a server that
/// announces STARTTLS but cannot finish it (a broken certificate setup, a
/// middlebox that strips TLS), which opportunistic TLS must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFault {
    /// Answer `220` to STARTTLS, then hang up before the handshake.
    Close,
    /// Answer `220` to STARTTLS, then send bytes that are no TLS record
    /// instead of a ServerHello, and hang up.
    Garbage,
    /// Answer `220` to STARTTLS, then read the ClientHello and never
    /// answer, until the client gives up (at most [`STALL_LIMIT`]).
    Stall,
}

/// How long [`HandshakeFault::Stall`] keeps a connection.
pub const STALL_LIMIT: Duration = Duration::from_secs(120);

impl HandshakeFault {
    /// `close`, `garbage` or `stall` (the binary's `--starttls-fault`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "close" => Some(Self::Close),
            "garbage" => Some(Self::Garbage),
            "stall" => Some(Self::Stall),
            _ => None,
        }
    }
}

/// What [`HandshakeFault::Garbage`] sends: a plain SMTP line, which a TLS
/// client reads as a record of an unknown type.
const GARBAGE: &[u8] = b"554 5.0.0 this is not a ServerHello\r\n";

/// A connection's stream, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Sink {
    /// A sink without files; tests read [`Sink::stats`] directly.
    pub fn new(hostname: &str, cfg: crate::policy::PolicyConfig) -> Self {
        Self {
            hostname: hostname.to_string(),
            policy: Mutex::new(Policy::new(cfg)),
            log: None,
            stats_path: None,
            started: Instant::now(),
            tls: None,
            accounts: Vec::new(),
            handshake: None,
            require_tls: false,
        }
    }

    /// Offers STARTTLS, and fails every handshake as `fault` says.
    pub fn with_handshake_fault(mut self, fault: HandshakeFault) -> Self {
        self.handshake = Some(fault);
        self
    }

    /// Refuses MAIL without TLS (`530 5.7.0 Must issue a STARTTLS command
    /// first`); with a handshake fault, as a server that demands the TLS it
    /// cannot set up.
    pub fn with_required_tls(mut self) -> Self {
        self.require_tls = true;
        self
    }

    /// Offers STARTTLS with this PEM certificate chain and key.
    pub fn with_starttls(mut self, cert: &Path, key: &Path) -> Result<Self, SinkError> {
        self.tls = Some(TlsAcceptor::from(tls_config(cert, key)?));
        Ok(self)
    }

    /// Requires AUTH (PLAIN or LOGIN) as this user before MAIL.
    pub fn with_account(mut self, user: &str, password: &str) -> Self {
        self.accounts.push((user.to_string(), password.to_string()));
        self
    }

    /// How each message received so far came (TLS, authenticated user).
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.policy().deliveries().to_vec()
    }

    /// A copy of the statistics so far.
    pub fn stats(&self) -> crate::policy::Stats {
        self.policy().stats().clone()
    }

    /// Message-IDs received (accepted or reset after the dot), with counts.
    pub fn message_ids(&self) -> std::collections::HashMap<String, u32> {
        self.policy().seen().clone()
    }

    fn policy(&self) -> std::sync::MutexGuard<'_, Policy> {
        self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Writes the stats file atomically (temporary file, then rename).
    pub fn write_stats(&self) -> Result<(), SinkError> {
        let Some(path) = &self.stats_path else { return Ok(()) };
        let json = serde_json::to_vec_pretty(self.policy().stats()).unwrap_or_default();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|source| SinkError::Write { path: path.clone(), source })
    }

    fn flush_log(&self, lines: Vec<String>) {
        if lines.is_empty() {
            return;
        }
        if let Some(log) = &self.log {
            let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
            let mut buf = String::new();
            for l in lines {
                buf.push_str(&l);
                buf.push('\n');
            }
            // A lost log line shows up as a missing message in the test,
            // which is the failure it should be.
            let _ = f.write_all(buf.as_bytes());
        }
    }
}

/// Serves until `shutdown`, writing stats every 200 ms. Then it stops
/// accepting, waits for the open sessions to end (at most [`DRAIN_LIMIT`];
/// a message counts when its reply is decided, so a client that saw 250 is
/// counted already, but a session may still be reading a message), and
/// writes the stats a last time, with `stopped` set if none was left open:
/// a reader that waits for the process to exit, or for `stopped`, reads
/// final counts.
pub async fn run(listener: TcpListener, sink: Arc<Sink>, shutdown: CancellationToken) -> Result<(), SinkError> {
    let mut tick = tokio::time::interval(STATS_EVERY);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let _ = stream.set_nodelay(true);
                    // Counted here, not in the task: a session accepted just
                    // before shutdown is waited for too.
                    sink.policy().session_opened();
                    tokio::spawn(connection(stream, Arc::clone(&sink)));
                }
            }
            _ = tick.tick() => sink.write_stats()?,
            _ = shutdown.cancelled() => break,
        }
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
    while sink.policy().stats().sessions_open > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sink.policy().stop();
    sink.write_stats()
}

/// One session, counted open until it ends, however it ends.
async fn connection(mut stream: TcpStream, sink: Arc<Sink>) {
    let refusal = sink.policy().greet(sink.now());
    match refusal {
        Some(reply) => {
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        None => {
            serve(stream, &sink).await;
            sink.policy().ungreet();
        }
    }
    sink.policy().session_ended();
}

async fn serve(stream: TcpStream, sink: &Arc<Sink>) {
    let mut io: BufReader<Box<dyn Io>> = BufReader::new(Box::new(stream));
    let offers = Offers {
        starttls: sink.tls.is_some() || sink.handshake.is_some(),
        accounts: sink.accounts.clone(),
        require_tls: sink.require_tls,
    };
    let mut session = Session::with_offers(&sink.hostname, offers);
    let mut out = session.greeting().into_bytes();
    let mut line = Vec::with_capacity(256);
    'conn: loop {
        if !out.is_empty() {
            if io.write_all(&out).await.is_err() || io.flush().await.is_err() {
                break;
            }
            out.clear();
        }
        line.clear();
        match (&mut io).take(MAX_LINE as u64).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let (step, log) = {
            let mut p = sink.policy();
            let step = session.line(&line, &mut p, sink.now());
            (step, p.drain_log())
        };
        sink.flush_log(log);
        match step {
            Step::Reply(s) => out.extend_from_slice(s.as_bytes()),
            Step::Nothing => {}
            Step::Close(s) => {
                // The session is over once the last reply is decided (221
                // to a QUIT, a 421): it stops counting now, before the
                // client can read the reply and open its next connection.
                // Counted after the write, a task of this server not run
                // for a moment on a busy machine showed one session too
                // many that the client had already ended.
                closed(sink, &mut session);
                let _ = io.write_all(s.as_bytes()).await;
                break 'conn;
            }
            Step::Drop => break 'conn,
            Step::StartTls(s) => {
                if io.write_all(s.as_bytes()).await.is_err() || io.flush().await.is_err() {
                    break;
                }
                // Commands pipelined behind STARTTLS would cross into the
                // TLS session unprotected (CVE-2011-0411): hang up instead.
                if !io.buffer().is_empty() {
                    break;
                }
                if let Some(fault) = sink.handshake {
                    match fault {
                        HandshakeFault::Close => {}
                        HandshakeFault::Garbage => {
                            let _ = io.write_all(GARBAGE).await;
                            let _ = io.flush().await;
                        }
                        HandshakeFault::Stall => {
                            let mut sink_hole = Vec::new();
                            let _ = tokio::time::timeout(STALL_LIMIT, io.read_to_end(&mut sink_hole)).await;
                        }
                    }
                    sink.policy().tls_failed();
                    break 'conn;
                }
                let Some(acceptor) = sink.tls.clone() else { break 'conn };
                let plain = io.into_inner();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(plain)).await {
                    Ok(Ok(tls)) => io = BufReader::new(Box::new(tls)),
                    _ => {
                        sink.policy().tls_failed();
                        return closed(sink, &mut session);
                    }
                }
                session.tls_started();
            }
        }
    }
    let _ = io.shutdown().await;
    closed(sink, &mut session);
}

fn closed(sink: &Sink, session: &mut Session) {
    if let Some(domain) = session.unbind() {
        sink.policy().closed(&domain);
    }
}

/// The rustls server configuration from PEM files (ring, TLS 1.2 and 1.3).
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, SinkError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |p: &Path, e: &dyn std::fmt::Display| SinkError::Tls { path: p.to_path_buf(), reason: e.to_string() };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, &e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert, &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| bad(cert, &e))?;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink with `fault`, and a client that said EHLO and STARTTLS to it
    /// and got the 220: (sink, its stop token, the client, the EHLO reply).
    async fn after_starttls(fault: HandshakeFault) -> (Arc<Sink>, CancellationToken, BufReader<TcpStream>, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sink = Arc::new(Sink::new("sink.test", Default::default()).with_handshake_fault(fault));
        let stop = CancellationToken::new();
        tokio::spawn(run(listener, Arc::clone(&sink), stop.clone()));
        let mut c = BufReader::new(TcpStream::connect(addr).await.expect("connect"));
        let mut greeting = String::new();
        c.read_line(&mut greeting).await.expect("greeting");
        c.write_all(b"EHLO client.test\r\n").await.expect("ehlo");
        let mut ehlo = String::new();
        loop {
            let mut l = String::new();
            c.read_line(&mut l).await.expect("ehlo reply");
            ehlo.push_str(&l);
            if !l.starts_with("250-") {
                break;
            }
        }
        c.write_all(b"STARTTLS\r\n").await.expect("starttls");
        let mut ready = String::new();
        c.read_line(&mut ready).await.expect("220");
        assert!(ready.starts_with("220 "), "{ready}");
        (sink, stop, c, ehlo)
    }

    async fn tls_failures(sink: &Sink) -> u64 {
        for _ in 0..100 {
            if sink.stats().tls_failures > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sink.stats().tls_failures
    }

    /// What the sink sends after its 220, until it hangs up.
    async fn rest(c: &mut BufReader<TcpStream>) -> Vec<u8> {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await.expect("the sink hangs up").expect("read");
        rest
    }

    #[tokio::test]
    async fn starttls_offered_then_the_handshake_fails_on_demand() {
        let (sink, stop, mut c, ehlo) = after_starttls(HandshakeFault::Close).await;
        assert!(ehlo.contains("STARTTLS"), "offered without a certificate: {ehlo}");
        assert_eq!(rest(&mut c).await, b"");
        assert_eq!(tls_failures(&sink).await, 1);
        stop.cancel();

        let (sink, stop, mut c, _) = after_starttls(HandshakeFault::Garbage).await;
        // No TLS record starts with a digit (content types are 20-24).
        assert_eq!(rest(&mut c).await, GARBAGE);
        assert!(!(20..=24).contains(&GARBAGE[0]));
        assert_eq!(tls_failures(&sink).await, 1);
        stop.cancel();
    }

    async fn say(c: &mut BufReader<TcpStream>, line: &[u8]) -> String {
        c.write_all(line).await.expect("write");
        let mut reply = String::new();
        loop {
            let mut l = String::new();
            c.read_line(&mut l).await.expect("reply");
            reply.push_str(&l);
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return reply;
            }
        }
    }

    #[tokio::test]
    async fn the_last_stats_write_waits_for_open_sessions_and_says_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stats.json");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut sink = Sink::new("sink.test", Default::default());
        sink.stats_path = Some(path.clone());
        let sink = Arc::new(sink);
        let stop = CancellationToken::new();
        let server = tokio::spawn(run(listener, Arc::clone(&sink), stop.clone()));
        let mut c = BufReader::new(TcpStream::connect(addr).await.expect("connect"));
        let mut greeting = String::new();
        c.read_line(&mut greeting).await.expect("greeting");
        say(&mut c, b"EHLO client.test\r\n").await;
        assert!(say(&mut c, b"MAIL FROM:<a@relay.test>\r\n").await.starts_with("250"));
        assert!(say(&mut c, b"RCPT TO:<b@example.com>\r\n").await.starts_with("250"));
        assert!(say(&mut c, b"DATA\r\n").await.starts_with("354"));
        let accepted = say(&mut c, b"Message-ID: <1@relay.test>\r\n\r\nhi\r\n.\r\n").await;
        assert!(accepted.starts_with("250"), "{accepted}");

        // Shutdown while the session is open: no final write yet.
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!server.is_finished(), "stopped with a session open");
        // A message in the session is still counted.
        assert!(say(&mut c, b"MAIL FROM:<a@relay.test>\r\n").await.starts_with("250"));
        assert!(say(&mut c, b"RCPT TO:<c@example.com>\r\n").await.starts_with("250"));
        assert!(say(&mut c, b"DATA\r\n").await.starts_with("354"));
        assert!(say(&mut c, b"Message-ID: <2@relay.test>\r\n\r\nhi\r\n.\r\n").await.starts_with("250"));
        say(&mut c, b"QUIT\r\n").await;
        drop(c);
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("ends once the session closed").expect("join").expect("run");
        let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("stats file")).expect("json");
        assert_eq!(stats["accepted"], 2, "{stats}");
        assert_eq!(stats["sessions_open"], 0, "{stats}");
        assert_eq!(stats["stopped"], true, "{stats}");
    }

    #[tokio::test]
    async fn a_stalled_handshake_waits_for_the_client_to_give_up() {
        let (sink, stop, mut c, _) = after_starttls(HandshakeFault::Stall).await;
        c.write_all(b"\x16\x03\x01 a ClientHello would be here").await.expect("write");
        let mut buf = [0u8; 64];
        let quiet = tokio::time::timeout(Duration::from_millis(300), c.read(&mut buf)).await;
        assert!(quiet.is_err(), "the sink answered or hung up: {quiet:?}");
        assert_eq!(sink.stats().tls_failures, 0);
        drop(c);
        assert_eq!(tls_failures(&sink).await, 1);
        stop.cancel();
    }
}
