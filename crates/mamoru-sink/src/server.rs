//! The I/O around [`Session`] and [`Policy`]: accept loop, one task per
//! connection, the message log and the stats file.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::policy::Policy;
use crate::session::{Session, Step};

/// Longest command or data line read (RFC 5321 allows 1000 octets; carriers
/// allow a little more).
const MAX_LINE: usize = 8192;
const STATS_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

pub struct Sink {
    pub hostname: String,
    pub policy: Mutex<Policy>,
    pub log: Option<Mutex<std::fs::File>>,
    pub stats_path: Option<PathBuf>,
    pub started: Instant,
}

impl Sink {
    /// A sink without files; tests read [`Sink::stats`] directly.
    pub fn new(hostname: &str, cfg: crate::policy::PolicyConfig) -> Self {
        Self {
            hostname: hostname.to_string(),
            policy: Mutex::new(Policy::new(cfg)),
            log: None,
            stats_path: None,
            started: Instant::now(),
        }
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

/// Serves until `shutdown`, writing stats every 200 ms and at the end.
pub async fn run(listener: TcpListener, sink: Arc<Sink>, shutdown: CancellationToken) -> Result<(), SinkError> {
    let mut tick = tokio::time::interval(STATS_EVERY);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(stream, Arc::clone(&sink)));
                }
            }
            _ = tick.tick() => sink.write_stats()?,
            _ = shutdown.cancelled() => break,
        }
    }
    sink.write_stats()
}

async fn connection(stream: TcpStream, sink: Arc<Sink>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut session = Session::new(&sink.hostname);
    sink.policy().session_opened();
    let mut out = session.greeting().into_bytes();
    let mut line = Vec::with_capacity(256);
    'conn: loop {
        if !out.is_empty() {
            if w.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        line.clear();
        match (&mut r).take(MAX_LINE as u64).read_until(b'\n', &mut line).await {
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
                let _ = w.write_all(s.as_bytes()).await;
                break 'conn;
            }
            Step::Drop => break 'conn,
        }
    }
    let _ = w.shutdown().await;
    if let Some(domain) = session.bound() {
        let domain = domain.to_string();
        sink.policy().closed(&domain);
    }
}

