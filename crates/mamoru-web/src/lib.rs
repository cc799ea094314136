//! The public web pages: the top page with the PC registration form, and the
//! page behind the signed link of a 登録受付 mail where parents pick their
//! districts. hyper 1.x over HTTP/1.1, no template engine, no JavaScript.
//!
//! Layout:
//! - [`run`]: accepts connections until the shutdown token fires, then lets
//!   requests in flight finish.
//! - `routes`: one small handler per route; the store is called on the
//!   blocking pool (rusqlite is blocking).
//! - [`pages`]: the public pages as maud templates, the document every page
//!   ends in, and the stylesheet.
//! - [`text`]: the one character rule of every page and feed.
//! - [`publish`]: the publish link of an alert preview (`/p/TOKEN`) and the
//!   fan-out shared with the CLI.
//! - [`admin`]: the admin panel under `/admin`: routing, `session` (login,
//!   sessions, CSRF, login rate limit), `handlers`, `pages` (its templates).
//! - [`archive`]: the public archive of published alerts, page and Atom.
//! - [`form`]: a tiny `application/x-www-form-urlencoded` decoder.
//!
//! Invariants:
//! - GET and HEAD never change state: mail scanners fetch every link. Only a
//!   POST consumes a token, in the store transaction that saves the choice.
//! - The PC form answers byte-identical pages whether the address was new,
//!   known or rate limited.
//! - No token and no clear address is ever logged; store errors become a 503
//!   page without details.
//! - No page or feed text is written without escaping: HTML only through
//!   maud templates, the feed only through quick-xml's writer, and both
//!   under the character rule of [`text`]. No page holds raw markup.
//! - Every store call runs on the blocking pool through [`blocking`], which
//!   turns a store error or a failed task into the busy page (503).
//! - Every response carries the security headers (CSP without scripts,
//!   `Referrer-Policy: no-referrer`, `nosniff`, `X-Frame-Options: DENY`).

pub mod admin;
pub mod archive;
pub mod form;
pub mod pages;
pub mod publish;
mod routes;
pub mod text;

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use mamoru_app::App;
use mamoru_core::conn_limit::{ConnectionLimits, RefusalLog};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What the web pages need; built by the binary with [`Web::new`].
pub struct Web {
    /// The use cases the pages call; they wake the relay when they queue
    /// mail.
    pub app: Arc<App>,
    /// Admin password checks in flight (`[web] max_password_checks`): each
    /// argon2id run holds 19 MiB, so they are bounded and one beyond the
    /// bound is refused at once, never queued.
    pub password_checks: Arc<Semaphore>,
}

impl Web {
    pub fn new(app: Arc<App>) -> Self {
        let password_checks = Arc::new(Semaphore::new(app.cfg.web.max_password_checks));
        Self { app, password_checks }
    }
}

/// A store call failed or its blocking task died; it has been logged, and
/// the answer is the busy page (503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Busy;

/// Runs a use case or a store read on the blocking pool, through the
/// use-case layer's one boundary ([`App::run`]). A failure is logged once,
/// with `what` was being done, and becomes [`Busy`].
pub(crate) async fn blocking<T: Send + 'static, E: Into<mamoru_app::Error>>(
    web: &Arc<Web>,
    what: &'static str,
    f: impl FnOnce(&Web) -> Result<T, E> + Send + 'static,
) -> Result<T, Busy> {
    let w = web.clone();
    web.app.run(move |_| f(&w).map_err(Into::into)).await.map_err(|e| {
        tracing::warn!(what, error = %e, "web: cannot do it now");
        Busy
    })
}

/// Serves HTTP/1.1 on `listener` until `shutdown` is cancelled; then stops
/// accepting, lets requests in flight finish, closes idle connections and
/// returns.
pub async fn run(listener: TcpListener, web: Arc<Web>, shutdown: CancellationToken) -> io::Result<()> {
    serve(listener, web, None, shutdown).await
}

/// Like [`run`], over TLS (rustls) with the configuration of [`tls_config`].
pub async fn run_tls(listener: TcpListener, web: Arc<Web>, tls: Arc<ServerConfig>, shutdown: CancellationToken) -> io::Result<()> {
    serve(listener, web, Some(TlsAcceptor::from(tls)), shutdown).await
}

/// How long a client may take for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The rustls server configuration from PEM files (`[web] tls_cert`, the
/// certificate chain; `[web] tls_key`, its private key).
pub fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> io::Result<Arc<ServerConfig>> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, p: &std::path::Path, e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidData, format!("{what} {}: {e}", p.display()));
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("certificate", cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate", cert, &e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("private key", key, &e))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS versions for", cert, &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| bad("certificate and key", cert, &e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Connection limits: every connection holds a slot of the listener's
/// [`ConnectionLimits`] (`[web] max_connections`, and
/// `max_connections_per_client` per IP address or IPv6 /64); one over either
/// is closed at once, before any task or buffer is spent on it. Behind a TLS
/// proxy (`[web] behind_tls_proxy`) every client arrives from the proxy's
/// loopback address, so loopback peers count only towards the total there;
/// the proxy limits its own clients. hyper's header-read timeout (`[web]
/// header_timeout_secs`) runs whenever a request head is awaited, so it
/// closes slow headers and idle keep-alive connections alike; a form body
/// has its own time limit in the router, the TLS handshake its own here.
async fn serve(listener: TcpListener, web: Arc<Web>, tls: Option<TlsAcceptor>, shutdown: CancellationToken) -> io::Result<()> {
    let limits = ConnectionLimits::new(web.app.cfg.web.max_connections, web.app.cfg.web.max_connections_per_client);
    let proxied = web.app.cfg.web.behind_tls_proxy;
    let mut refusals = RefusalLog::new(Duration::from_secs(10));
    let header_timeout = Duration::from_secs(web.app.cfg.web.header_timeout_secs);
    let metrics = web.app.metrics().clone();
    let app = Arc::new(routes::App::new(web));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    // Out of file descriptors and the like: give the
                    // connections in flight a moment to finish instead of
                    // spinning on accept.
                    if !matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
        };
        let permit = match limits.try_acquire(peer.ip(), !(proxied && peer.ip().is_loopback())) {
            Ok(p) => p,
            Err(why) => {
                drop(stream);
                if let Some(refused) = refusals.note(std::time::Instant::now()) {
                    tracing::warn!(%peer, ?why, refused, max = limits.max_total(), max_per_client = limits.max_per_client(), "http connections refused");
                }
                continue;
            }
        };
        // Small responses: send them at once instead of waiting for an ACK.
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let metrics = metrics.clone();
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let app = app.clone();
            let metrics = metrics.clone();
            async move {
                // Only the class of the path is kept: the rest may hold a token.
                let route = mamoru_app::metrics::RouteClass::of(req.uri().path());
                let started = std::time::Instant::now();
                let resp = app.handle(req, peer).await;
                metrics.http(route, resp.status().as_u16(), started.elapsed().as_secs_f64());
                Ok::<_, Infallible>(resp)
            }
        });
        let Some(acceptor) = tls.clone() else {
            let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "http connection ended with an error");
                }
            });
            continue;
        };
        // The handshake runs in the connection's task, so a slow client
        // cannot hold up the accept loop.
        let watcher = graceful.watcher();
        let builder = builder.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!(error = %e, "tls handshake failed"),
                Err(_) => return tracing::debug!("tls handshake timed out"),
            };
            if let Err(e) = watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await {
                tracing::debug!(error = %e, "https connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    tracing::debug!("http server stopped");
    Ok(())
}
