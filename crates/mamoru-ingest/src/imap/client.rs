//! The IMAP session around [`super::decide`]: async-imap over tokio-rustls.
//!
//! One connection per watched mailbox. It logs in, makes sure the three
//! folders exist, selects the mailbox, compares its UIDVALIDITY with the
//! stored one (a change starts again from UID 0), and handles every message
//! there: `UID FETCH (UID RFC822.SIZE)` first, the body (`BODY.PEEK[]`, so
//! nothing is marked seen) only if the size fits, then
//! [`super::decide::process`] on a blocking thread, and only once that
//! returned — the store committed — `UID MOVE` (or `COPY`, `\Deleted`,
//! `UID EXPUNGE`) to the folder of its disposition. A transient disposition
//! leaves the message and ends the session; the watcher reconnects after a
//! back-off. So does a failed move (the server over quota, the connection
//! lost), but the watcher remembers the message's disposition ([`Unmoved`]):
//! the next session moves it without handling it again. Between scans it waits in IDLE, renewed every `idle_secs`, with
//! a full scan every `scan_secs`.
//!
//! Errors are [`ImapError`]: fixed phrases and the server's response code
//! (`[AUTHENTICATIONFAILED]`), never the server's text or the login, which
//! may hold an address.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_imap::extensions::idle::IdleResponse;
use async_imap::types::UnsolicitedResponse;
use async_imap::{Client, Session};
use futures_util::TryStreamExt as _;
use mamoru_core::config::{ImapMailbox, ImapTls};
use mamoru_store::Store;
use mamoru_store::imap::{Moved, WatchState};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

use super::decide::{self, Disposition, Step};
use crate::Deliver;

type Stream = TlsStream<TcpStream>;

/// Every command (and the connection, TLS and login) must complete within this.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Back-off after a failed session: doubling from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Why a session ended. Never holds server text or the login.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("cannot read the password file ({0})")]
    Password(std::io::ErrorKind),
    #[error("cannot read ca_file: {0}")]
    CaFile(String),
    #[error("cannot connect to the IMAP server ({0})")]
    Connect(std::io::ErrorKind),
    #[error("TLS with the IMAP server failed: {0}")]
    Tls(String),
    #[error("the IMAP server refused STARTTLS{0}")]
    Starttls(String),
    #[error("login refused{0}")]
    Login(String),
    #[error("the mailbox cannot be selected{0}")]
    Select(String),
    #[error("a folder cannot be created{0}")]
    Create(String),
    #[error("a message cannot be moved{0}")]
    Move(String),
    #[error("the IMAP server refused a command{0}")]
    Refused(String),
    #[error("connection to the IMAP server lost")]
    Lost,
    #[error("the IMAP server did not answer within {0} s")]
    Timeout(u64),
    #[error("the IMAP server's response could not be read")]
    Protocol,
    #[error("store: {0}")]
    Store(#[from] mamoru_store::StoreError),
    #[error("a message cannot be handled now ({0}); left in the mailbox")]
    Transient(String),
}

impl ImapError {
    /// A failure of a command, in the words of `what` for a NO or BAD.
    fn command(what: fn(String) -> ImapError, e: async_imap::error::Error) -> ImapError {
        use async_imap::error::Error as E;
        match e {
            E::No(text) | E::Bad(text) => what(response_code(&text)),
            E::Io(_) | E::ConnectionLost => ImapError::Lost,
            _ => ImapError::Protocol,
        }
    }
}

/// ` [CODE]`, the response code of a NO or BAD, else empty; the rest of
/// the text is dropped. async-imap words a refusal as `code: {code:?},
/// info: {text:?}`: a code imap-proto knows is in the first part
/// (`Some(TryCreate)`), any other (RFC 5530's `[AUTHENTICATIONFAILED]`,
/// `[NONEXISTENT]`, `[OVERQUOTA]`) starts the text.
fn response_code(text: &str) -> String {
    if let Some(rest) = text.strip_prefix("code: Some(") {
        let name: String = rest.chars().take_while(char::is_ascii_alphanumeric).take(40).collect();
        if !name.is_empty() {
            return format!(" [{}]", name.to_ascii_uppercase());
        }
    }
    let info = text.split_once("info: Some(\"").map_or(text, |(_, info)| info);
    bracketed_code(info)
}

/// ` [CODE]` when `text` starts with a bracketed code of letters, digits
/// and `-`.
fn bracketed_code(text: &str) -> String {
    let t = text.trim_start();
    let Some(rest) = t.strip_prefix('[') else { return String::new() };
    let code: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').take(40).collect();
    if code.is_empty() || !rest[code.len()..].starts_with([']', ' ']) {
        return String::new();
    }
    format!(" [{code}]")
}

/// Runs `f` within [`COMMAND_TIMEOUT`].
async fn within<T>(f: impl Future<Output = T>) -> Result<T, ImapError> {
    tokio::time::timeout(COMMAND_TIMEOUT, f).await.map_err(|_| ImapError::Timeout(COMMAND_TIMEOUT.as_secs()))
}

/// The TLS client configuration of one mailbox: `ca_file`, or the system's
/// roots; always verified.
pub fn tls_config(m: &ImapMailbox) -> Result<Arc<rustls::ClientConfig>, ImapError> {
    let mut roots = rustls::RootCertStore::empty();
    if m.ca_file.is_empty() {
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
    } else {
        use rustls_pki_types::pem::PemObject as _;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(&m.ca_file).map_err(|e| ImapError::CaFile(e.to_string()))?;
        for cert in certs {
            roots.add(cert.map_err(|e| ImapError::CaFile(e.to_string()))?).map_err(|e| ImapError::CaFile(e.to_string()))?;
        }
    }
    if roots.is_empty() {
        return Err(ImapError::CaFile("no CA certificate to verify the server with".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ImapError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// What the session does once the mailbox is empty of what was there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Log out and return (`mamoru ingest --imap-once`).
    Once,
    /// Wait in IDLE for more, until shutdown (`mamoru serve`).
    Watch,
}

/// One watched mailbox.
pub struct Watcher<D: Deliver> {
    pub mailbox: ImapMailbox,
    pub deliver: Arc<D>,
    pub store: Arc<Store>,
    pub max_message_bytes: u64,
    pub max_header_bytes: usize,
    pub tls: Arc<rustls::ClientConfig>,
    /// Messages handled whose move failed; `Default::default()`.
    pub unmoved: Mutex<Unmoved>,
}

/// Messages whose handling is committed but whose move failed, by UID,
/// under the one UIDVALIDITY they were handled in. The next session moves
/// them to the folder decided then instead of handling them again: a
/// registration retried after its cooldown would be answered a second time,
/// and a server over quota can refuse the move for longer than that. Kept
/// in memory only: after a restart the message is handled again, which the
/// registration cooldown, bounce and alert source keys make harmless within
/// the cooldown.
#[derive(Debug, Default)]
pub struct Unmoved {
    uid_validity: u32,
    by_uid: HashMap<u32, Disposition>,
}

impl Unmoved {
    /// The mailbox was selected with `uid_validity`: what was remembered
    /// under another one names other messages.
    fn selected(&mut self, uid_validity: u32) {
        if self.uid_validity != uid_validity {
            self.by_uid.clear();
            self.uid_validity = uid_validity;
        }
    }

    /// Keeps only the UIDs a full scan found (one moved by a command whose
    /// answer was lost is gone).
    fn retain(&mut self, found: &[(u32, Option<u32>)]) {
        self.by_uid.retain(|uid, _| found.iter().any(|(u, _)| u == uid));
    }
}

/// What a session reports back to the watcher loop.
struct Progress {
    /// A scan ran to its end or a message was moved: the next failure
    /// starts the back-off anew. A session that logs in and fails on the
    /// same message each time (a move refused over quota) keeps doubling it.
    settled: bool,
}

impl<D: Deliver> Watcher<D> {
    fn label(&self) -> &str {
        self.mailbox.label()
    }

    fn unmoved(&self) -> MutexGuard<'_, Unmoved> {
        self.unmoved.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Store) -> T + Send + 'static) -> Result<T, ImapError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store)).await.map_err(|_| ImapError::Transient("store task failed".into()))
    }

    async fn set_state(&self, state: WatchState, detail: String, retry_at: i64) {
        let name = self.label().to_string();
        match self.blocking(move |s| s.imap_set_state(&name, state, &detail, retry_at, mamoru_core::now())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(mailbox = self.label(), error = %e, "cannot record the IMAP watcher's state"),
            Err(e) => tracing::warn!(mailbox = self.label(), error = %e, "cannot record the IMAP watcher's state"),
        }
    }

    /// `mamoru serve`: watches until `shutdown`, reconnecting after each
    /// failure with a doubling back-off (1 s to 5 min; reset once a session
    /// finished a scan or moved a message). Never returns an error: every failure is a
    /// log line, a state in `mamoru queue` and a retry.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_FIRST;
        loop {
            self.set_state(WatchState::Connecting, String::new(), 0).await;
            let mut progress = Progress { settled: false };
            let result = self.session(Mode::Watch, &shutdown, &mut progress).await;
            if progress.settled {
                backoff = BACKOFF_FIRST;
            }
            match result {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(mailbox = self.label(), error = %e, retry_in_secs = backoff.as_secs(), "IMAP mailbox: {e}; retrying");
                    self.set_state(WatchState::Retrying, e.to_string(), mamoru_core::now() + backoff.as_secs() as i64).await;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// `mamoru ingest --imap-once`: one session that handles what is in the
    /// mailbox and logs out.
    pub async fn once(&self, shutdown: &CancellationToken) -> Result<(), ImapError> {
        let mut progress = Progress { settled: false };
        let r = self.session(Mode::Once, shutdown, &mut progress).await;
        match &r {
            Ok(()) => self.set_state(WatchState::Idle, String::new(), 0).await,
            Err(e) => self.set_state(WatchState::Retrying, e.to_string(), 0).await,
        }
        r
    }

    async fn connect(&self) -> Result<Session<Stream>, ImapError> {
        let m = &self.mailbox;
        let password = std::fs::read_to_string(&m.password_file).map_err(|e| ImapError::Password(e.kind()))?;
        let password = password.trim_end_matches(['\r', '\n']);
        let tcp = within(TcpStream::connect((m.server.as_str(), m.port))).await?.map_err(|e| ImapError::Connect(e.kind()))?;
        let name = rustls_pki_types::ServerName::try_from(m.server.clone()).map_err(|e| ImapError::Tls(e.to_string()))?;
        let connector = TlsConnector::from(self.tls.clone());
        let tls = match m.tls {
            ImapTls::Implicit => within(connector.connect(name, tcp)).await?.map_err(|e| ImapError::Tls(tls_reason(&e)))?,
            ImapTls::Starttls => {
                let mut plain = Client::new(tcp);
                within(plain.read_response()).await?.map_err(|_| ImapError::Lost)?.ok_or(ImapError::Lost)?;
                within(plain.run_command_and_check_ok("STARTTLS", None)).await?.map_err(|e| ImapError::command(ImapError::Starttls, e))?;
                within(connector.connect(name, plain.into_inner())).await?.map_err(|e| ImapError::Tls(tls_reason(&e)))?
            }
        };
        let mut client = Client::new(tls);
        if m.tls == ImapTls::Implicit {
            within(client.read_response()).await?.map_err(|_| ImapError::Lost)?.ok_or(ImapError::Lost)?;
        }
        within(client.login(&m.user, password)).await?.map_err(|(e, _)| ImapError::command(ImapError::Login, e))
    }

    /// Creates a folder unless LIST shows it.
    async fn ensure_folder(&self, s: &mut Session<Stream>, folder: &str) -> Result<(), ImapError> {
        let names: Vec<_> = within(async { s.list(Some(""), Some(folder)).await?.try_collect::<Vec<_>>().await })
            .await?
            .map_err(|e| ImapError::command(ImapError::Refused, e))?;
        if names.iter().any(|n| n.name() == folder) {
            return Ok(());
        }
        within(s.create(folder)).await?.map_err(|e| ImapError::command(ImapError::Create, e))?;
        tracing::info!(mailbox = self.label(), folder, "created IMAP folder");
        Ok(())
    }

    async fn session(&self, mode: Mode, shutdown: &CancellationToken, progress: &mut Progress) -> Result<(), ImapError> {
        let m = &self.mailbox;
        let mut s = self.connect().await?;
        let caps = within(s.capabilities()).await?.map_err(|e| ImapError::command(ImapError::Refused, e))?;
        let caps = Caps { mv: caps.has_str("MOVE"), uidplus: caps.has_str("UIDPLUS"), idle: caps.has_str("IDLE") };
        for folder in [&m.processed_folder, &m.dropped_folder, &m.quarantine_folder] {
            self.ensure_folder(&mut s, folder).await?;
        }
        let selected = within(s.select(&m.mailbox)).await?.map_err(|e| ImapError::command(ImapError::Select, e))?;
        let validity = selected.uid_validity.unwrap_or(0);
        let name = self.label().to_string();
        let (mut last, changed) = self.blocking(move |st| st.imap_selected(&name, validity, mamoru_core::now())).await??;
        if changed {
            tracing::warn!(mailbox = self.label(), "UIDVALIDITY changed (mailbox recreated?): scanning it again from the start");
        }
        self.unmoved().selected(validity);
        tracing::info!(mailbox = self.label(), mv = caps.mv, idle = caps.idle, "IMAP mailbox selected");

        // What the server announced outside a command's own answer: an
        // EXISTS that came between a scan's FETCH and the start of IDLE
        // would otherwise wait for the next full scan.
        let announced = s.unsolicited_responses.clone();
        let mut next_full = Instant::now();
        loop {
            let full = Instant::now() >= next_full;
            let mut from = if full { 1 } else { last + 1 };
            loop {
                while announced.try_recv().is_ok() {}
                let (new_last, handled) = self.scan(&mut s, caps, from, last, shutdown, progress).await?;
                last = new_last;
                if handled == 0 || shutdown.is_cancelled() {
                    break;
                }
                from = last + 1;
            }
            progress.settled = true;
            if full {
                next_full = Instant::now() + Duration::from_secs(m.scan_secs);
            }
            if mode == Mode::Once || shutdown.is_cancelled() {
                let _ = within(s.logout()).await;
                return Ok(());
            }
            self.set_state(WatchState::Idle, String::new(), 0).await;
            let wait = next_full.saturating_duration_since(Instant::now()).min(Duration::from_secs(m.idle_secs));
            if !caps.idle {
                // No IDLE: poll at the scan interval (NOOP keeps the session).
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(wait) => {}
                }
                within(s.noop()).await?.map_err(|e| ImapError::command(ImapError::Refused, e))?;
                continue;
            }
            let mut idle = s.idle();
            within(idle.init()).await?.map_err(|e| ImapError::command(ImapError::Refused, e))?;
            // (What is left in the channel is drained before the next scan.)
            let arrived = std::iter::from_fn(|| announced.try_recv().ok())
                .any(|r| matches!(r, UnsolicitedResponse::Exists(_) | UnsolicitedResponse::Recent(_)));
            if !arrived {
                // The library's own timeout is reset by every keep-alive
                // ("* OK Still here"), so the renewal is timed here.
                let (fut, stop) = idle.wait_with_timeout(wait + Duration::from_secs(60));
                let mut stop = Some(stop);
                tokio::pin!(fut);
                let r = tokio::select! {
                    r = &mut fut => r,
                    () = shutdown.cancelled() => { drop(stop.take()); fut.await }
                    () = tokio::time::sleep(wait) => { drop(stop.take()); fut.await }
                };
                match r.map_err(|e| ImapError::command(ImapError::Refused, e))? {
                    IdleResponse::NewData(_) => tracing::debug!(mailbox = self.label(), "IDLE: new data"),
                    IdleResponse::Timeout | IdleResponse::ManualInterrupt => {}
                }
            }
            s = within(idle.done()).await?.map_err(|e| ImapError::command(ImapError::Refused, e))?;
            self.set_state(WatchState::Scanning, String::new(), 0).await;
        }
    }

    /// Handles every message with a UID from `from` on; returns the highest
    /// UID disposed of and how many messages were found. A transient
    /// disposition ends the scan with an error (the message stays).
    async fn scan(
        &self,
        s: &mut Session<Stream>,
        caps: Caps,
        from: u32,
        mut last: u32,
        shutdown: &CancellationToken,
        progress: &mut Progress,
    ) -> Result<(u32, usize), ImapError> {
        let fetches = within(async { s.uid_fetch(format!("{from}:*"), "(UID RFC822.SIZE)").await?.try_collect::<Vec<_>>().await })
            .await?
            .map_err(|e| ImapError::command(ImapError::Refused, e))?;
        // `N:*` names the last message even when its UID is below N.
        let mut found: Vec<(u32, Option<u32>)> = fetches.iter().filter_map(|f| Some((f.uid?, f.size))).filter(|(u, _)| *u >= from).collect();
        found.sort_unstable();
        found.dedup_by_key(|(u, _)| *u);
        if from == 1 {
            self.unmoved().retain(&found);
        }
        let n = found.len();
        for (uid, size) in found {
            if shutdown.is_cancelled() {
                break;
            }
            let known = self.unmoved().by_uid.get(&uid).cloned();
            if known.is_some() {
                tracing::info!(mailbox = self.label(), uid, "IMAP message handled before its move failed; moving it now");
            }
            let disposition = match known {
                Some(d) => d,
                None => match decide::before_fetch(size, self.max_message_bytes) {
                    Step::Drop(d) => {
                        tracing::info!(mailbox = self.label(), uid, size, "message over max_message_bytes; dropped without fetching it");
                        d
                    }
                    Step::Fetch => {
                        let fetched = within(async { s.uid_fetch(uid.to_string(), "(UID BODY.PEEK[])").await?.try_collect::<Vec<_>>().await })
                            .await?
                            .map_err(|e| ImapError::command(ImapError::Refused, e))?;
                        let Some(body) = fetched.iter().find(|f| f.uid == Some(uid)).and_then(|f| f.body()).map(<[u8]>::to_vec) else {
                            // Expunged meanwhile by someone else.
                            continue;
                        };
                        let (deliver, which, max, hdr) =
                            (self.deliver.clone(), self.mailbox.envelope_header, self.max_message_bytes, self.max_header_bytes);
                        tokio::task::spawn_blocking(move || decide::process(&*deliver, which, max, hdr, size, &body))
                            .await
                            .unwrap_or_else(|_| Disposition::Transient("delivery task failed".into()))
                    }
                },
            };
            let (folder, moved) = match &disposition {
                Disposition::Processed => (&self.mailbox.processed_folder, Moved::Processed),
                Disposition::Dropped(why) => {
                    tracing::info!(mailbox = self.label(), uid, reason = why.as_str(), "IMAP message dropped");
                    (&self.mailbox.dropped_folder, Moved::Dropped)
                }
                Disposition::Quarantined => (&self.mailbox.quarantine_folder, Moved::Quarantined),
                Disposition::Transient(why) => return Err(ImapError::Transient(why.clone())),
            };
            if let Err(e) = move_message(s, caps, uid, folder).await {
                self.unmoved().by_uid.insert(uid, disposition.clone());
                return Err(e);
            }
            self.unmoved().by_uid.remove(&uid);
            progress.settled = true;
            let name = self.label().to_string();
            self.blocking(move |st| st.imap_moved(&name, uid, moved, mamoru_core::now())).await??;
            tracing::debug!(mailbox = self.label(), uid, folder = folder.as_str(), "IMAP message moved");
            last = last.max(uid);
        }
        Ok((last, n))
    }
}

#[derive(Debug, Clone, Copy)]
struct Caps {
    mv: bool,
    uidplus: bool,
    idle: bool,
}

/// `UID MOVE`, or where the server lacks MOVE (RFC 6851): `UID COPY`,
/// `\Deleted`, and `UID EXPUNGE` (UIDPLUS) or, lacking that too, `EXPUNGE`.
async fn move_message(s: &mut Session<Stream>, caps: Caps, uid: u32, folder: &str) -> Result<(), ImapError> {
    let set = uid.to_string();
    let e = |e| ImapError::command(ImapError::Move, e);
    if caps.mv {
        return within(s.uid_mv(&set, folder)).await?.map_err(e);
    }
    within(s.uid_copy(&set, folder)).await?.map_err(e)?;
    within(async { s.uid_store(&set, "+FLAGS.SILENT (\\Deleted)").await?.try_collect::<Vec<_>>().await }).await?.map_err(e)?;
    if caps.uidplus {
        within(async { s.uid_expunge(&set).await?.try_collect::<Vec<_>>().await }).await?.map_err(e)?;
    } else {
        within(async { s.expunge().await?.try_collect::<Vec<_>>().await }).await?.map_err(e)?;
    }
    Ok(())
}

/// A TLS failure's reason: rustls says what (an unknown issuer, a name
/// mismatch), an I/O error only its kind.
fn tls_reason(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(r) => r.to_string(),
        None => format!("{:?}", e.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_response_code_of_a_refusal_is_kept() {
        assert_eq!(response_code("[AUTHENTICATIONFAILED] Authentication failed."), " [AUTHENTICATIONFAILED]");
        assert_eq!(response_code("[NONEXISTENT] Mailbox doesn't exist: ans@example.jp"), " [NONEXISTENT]");
        assert_eq!(response_code("[OVERQUOTA] Quota exceeded (mailbox for user ans@example.jp is full)"), " [OVERQUOTA]");
        assert_eq!(response_code("Mailbox ans@example.jp doesn't exist"), "");
        assert_eq!(response_code("[ans@example.jp] x"), "");
        assert_eq!(response_code(""), "");
        // As async-imap words them.
        let no = |s: &str| async_imap::error::Error::No(s.into());
        let e = ImapError::command(ImapError::Login, no("code: None, info: Some(\"[AUTHENTICATIONFAILED] user ans@example.jp\")"));
        assert_eq!(e.to_string(), "login refused [AUTHENTICATIONFAILED]");
        let e = ImapError::command(ImapError::Move, no("code: Some(TryCreate), info: Some(\"no folder for ans@example.jp\")"));
        assert_eq!(e.to_string(), "a message cannot be moved [TRYCREATE]");
        let e = ImapError::command(ImapError::Select, no("code: None, info: Some(\"Mailbox of ans@example.jp doesn't exist\")"));
        assert_eq!(e.to_string(), "the mailbox cannot be selected");
    }
}
