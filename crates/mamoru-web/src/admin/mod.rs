//! The admin panel, `/admin` (Japanese, no JavaScript): login by ID and
//! password, dashboard (subscribers per district and carrier), compose →
//! preview → publish, alert history with delivery progress per carrier,
//! admin accounts and the audit log.
//!
//! Security:
//! - The session cookie is `__Host-mamoru_admin`: `Secure`, `HttpOnly`,
//!   `SameSite=Strict`, `Path=/`. It holds 32 random bytes; the store keeps
//!   only their SHA-256. Sessions end after `[web] admin_idle_secs` idle.
//! - Every POST but the login carries the session's CSRF token.
//! - Login attempts are counted per login ID (unknown IDs too) and per
//!   client address (an IPv6 client by its /64; behind a TLS proxy, the
//!   address the proxy appended to `X-Forwarded-For`), and lock either for a
//!   window. An attempt takes its slot in one atomic store step *before*
//!   the password is checked, so concurrent guesses cannot outrun the
//!   limit; a success clears the ID's count and gives the client's slot
//!   back. An unknown ID costs an argon2 verification like a wrong
//!   password, so timing tells nothing. Counters hold a keyed hash of the
//!   client address, never the address.
//! - At most `[web] max_password_checks` argon2id runs (19 MiB each) at
//!   once: login, password change and admin add; one more is answered 503
//!   at once (and counts no attempt), never queued.
//! - Only an admin not limited to some districts adds or disables admins,
//!   and never disables itself.
//! - Non-loopback clients are refused unless the listener speaks HTTPS
//!   (`[web] tls_cert`) or `[web] behind_tls_proxy`.
//! - Every action is in the audit log; GET only shows.
//!
//! Layout: this file routes; `session` has the login, the sessions and the
//! CSRF check; `handlers` the pages' logic; `pages` their templates.

mod handlers;
mod pages;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::{Method, StatusCode};
use mamoru_core::{AlertId, Config};
use mamoru_store::admins::Admin;

use crate::{Web, form};
pub(crate) use session::client_key;

/// The logged-in admin and the session's CSRF token.
type Me<'a> = (&'a Admin, &'a str);

/// What a handler answers; the router adds the common headers.
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
    pub headers: Vec<(HeaderName, String)>,
}

fn page(status: StatusCode, body: String) -> Answer {
    Answer { status, body, headers: vec![(header::STRICT_TRANSPORT_SECURITY, "max-age=31536000".into())] }
}

fn redirect(to: &str) -> Answer {
    let mut a = page(StatusCode::SEE_OTHER, String::new());
    a.headers.push((header::LOCATION, to.into()));
    a
}

fn message(cfg: &Config, status: StatusCode, title: &str, line: &str) -> Answer {
    page(status, pages::message(cfg, title, line))
}

fn busy(cfg: &Config) -> Answer {
    page(StatusCode::SERVICE_UNAVAILABLE, crate::pages::busy(cfg))
}

/// A slot for one argon2id run (`[web] max_password_checks`), or `None`
/// when all are taken: the caller answers [`checks_busy`] at once instead of
/// queueing 19 MiB per waiting request.
fn password_check(web: &Web) -> Option<tokio::sync::OwnedSemaphorePermit> {
    web.password_checks.clone().try_acquire_owned().ok()
}

/// Every password check slot is taken: try again in a moment. No login
/// attempt was counted.
fn checks_busy(cfg: &Config) -> Answer {
    let mut a = busy(cfg);
    a.headers.push((header::RETRY_AFTER, "5".into()));
    a
}

fn random(web: &Web, n: usize) -> Option<Vec<u8>> {
    let mut b = vec![0u8; n];
    web.app.store.sealer().random(&mut b).ok()?;
    Some(b)
}

/// [`crate::blocking`], answering the panel's busy page.
async fn blocking<T: Send + 'static, E: Into<mamoru_app::Error>>(
    web: &Arc<Web>,
    what: &'static str,
    f: impl FnOnce(&Web) -> Result<T, E> + Send + 'static,
) -> Result<T, Answer> {
    crate::blocking(web, what, f).await.map_err(|crate::Busy| busy(&web.app.cfg))
}

/// Entry point from the router for every `/admin` path.
pub async fn handle(web: Arc<Web>, method: &Method, path: &str, headers: &HeaderMap, body: Bytes, peer: SocketAddr) -> Answer {
    let cfg = web.app.cfg.clone();
    if !peer.ip().is_loopback() && !cfg.web.behind_tls_proxy && !cfg.web_tls() {
        return message(&cfg, StatusCode::FORBIDDEN, "管理画面は使えません", "暗号化された接続（HTTPS）からのみ使えます。");
    }
    let now = mamoru_core::now();
    let post = method == Method::POST;
    if path == "/admin/login" {
        return if post {
            let client = client_key(&web, headers, peer, session::LOGIN_CLIENT);
            session::login(&web, &body, client).await
        } else {
            page(StatusCode::OK, pages::login(&cfg, None))
        };
    }
    let Some(sid) = session::session_id(headers) else { return redirect("/admin/login") };
    let idle = cfg.web.admin_idle_secs;
    let session = match blocking(&web, "read an admin session", move |w| w.app.store.session(&sid, now, idle)).await {
        Ok(s) => s,
        Err(a) => return a,
    };
    let Some((admin, csrf)) = session else { return redirect("/admin/login") };
    if post && !session::csrf_matches(&form::value(&body, "csrf").unwrap_or_default(), &csrf) {
        return message(&cfg, StatusCode::FORBIDDEN, "操作を受け付けられません", "画面を開き直してからもう一度お試しください。");
    }
    let me = (&admin, csrf.as_str());
    match (post, path) {
        (false, "/admin") => handlers::dashboard(&web, me).await,
        (false, "/admin/compose") => handlers::compose_form(&web, me),
        (true, "/admin/compose") => handlers::compose(&web, me, &body, now).await,
        (false, "/admin/alerts") => handlers::history(&web, me).await,
        (false, "/admin/admins") => handlers::admins(&web, me, None, StatusCode::OK).await,
        (true, "/admin/admins/add") => handlers::add_admin(&web, me, &body, now).await,
        (true, "/admin/admins/disable") => handlers::set_admin_active(&web, me, &body, now, false).await,
        (true, "/admin/admins/enable") => handlers::set_admin_active(&web, me, &body, now, true).await,
        (false, "/admin/password") => handlers::password_form(&web, me),
        (true, "/admin/password") => {
            let client = client_key(&web, headers, peer, session::LOGIN_CLIENT);
            handlers::change_password(&web, me, &body, sid, client, now).await
        }
        (false, "/admin/audit") => handlers::audit(&web, me).await,
        (true, "/admin/logout") => session::logout(&web, sid, &admin.login, now).await,
        _ => {
            let rest = path.strip_prefix("/admin/alerts/").unwrap_or("");
            let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
            match (id.parse::<AlertId>().ok(), post, action) {
                (Some(id), false, "") => handlers::show_alert(&web, me, id).await,
                (Some(id), true, "publish") => handlers::publish_alert(&web, me, id, &body, now).await,
                (Some(id), true, "followup") => handlers::followup(&web, me, id, &body, now).await,
                _ => message(&cfg, StatusCode::NOT_FOUND, "ページが見つかりません", "メニューから選んでください。"),
            }
        }
    }
}
