//! Routing and the handlers. Each handler turns a request into a response and
//! never fails: bad input gets a page that says what to do, store trouble a
//! 503 page, and nothing reaches the client as a 500 with details.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use mamoru_core::links::Route;
use mamoru_core::token::{Claims, Purpose, TokenError};
use mamoru_core::{EmailAddress, UnixTime};
use mamoru_store::{Channel, Completion, Preferences};

mod confirm;
mod districts;
mod manage;
mod reception;

use crate::Web;
use crate::form::{self, DistrictsError};
use crate::pages::{self, StaticPages};

/// Largest form body accepted.
pub const MAX_BODY: usize = 16 * 1024;
/// How long a client may take to send a form body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

type Resp = Response<Full<Bytes>>;

const CSP: &str =
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

pub(crate) struct App {
    web: Arc<Web>,
    pages: StaticPages,
}

impl App {
    pub(crate) fn new(web: Arc<Web>) -> Self {
        let pages = StaticPages::new(&web.app.cfg);
        Self { web, pages }
    }

    pub(crate) async fn handle(&self, req: Request<Incoming>, peer: std::net::SocketAddr) -> Resp {
        let (parts, body) = req.into_parts();
        let read = matches!(parts.method, Method::GET | Method::HEAD);
        let path = parts.uri.path();
        if path == "/admin" || path.starts_with("/admin/") {
            let body = if read {
                Bytes::new()
            } else {
                match self.read_body(&parts.headers, body).await {
                    Ok(b) => b,
                    Err(resp) => return no_store(resp),
                }
            };
            let a = crate::admin::handle(self.web.clone(), &parts.method, path, &parts.headers, body, peer).await;
            let mut resp = no_store(respond(a.status, HTML, Bytes::from(a.body)));
            let h = resp.headers_mut();
            for (name, value) in a.headers {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    h.append(name, v);
                }
            }
            return resp;
        }
        if read && path.starts_with("/alerts") {
            if let Some((status, ctype, body)) = crate::archive::handle(self.web.clone(), path, parts.uri.query()).await {
                // Public and the same for everyone: a minute of caching is harmless.
                return cacheable(respond(status, ctype, Bytes::from(body)), "public, max-age=60");
            }
        }
        match path {
            "/" if read => cacheable(respond(StatusCode::OK, HTML, self.pages.index.clone()), "public, max-age=300"),
            "/style.css" if read => cacheable(respond(StatusCode::OK, CSS, self.pages.style.clone()), "public, max-age=86400"),
            "/" | "/style.css" => self.not_allowed("GET, HEAD"),
            "/register" if parts.method == Method::POST => no_store(self.register(&parts.headers, body, peer).await),
            "/register" => self.not_allowed("POST"),
            "/test" if parts.method == Method::POST => no_store(self.test_post(&parts.headers, body, peer).await),
            "/test" => self.not_allowed("POST"),
            _ if path == "/help" || path.starts_with("/help/") => match path.strip_prefix("/help/") {
                Some(slug) if read => cacheable(self.help(slug), "public, max-age=300"),
                None if read => cacheable(self.help(""), "public, max-age=300"),
                _ => self.not_allowed("GET, HEAD"),
            },
            _ if path == "/d" || path.starts_with("/d/") => match path.strip_prefix("/d/") {
                Some(rest) if read => cacheable(self.districts(rest), "public, max-age=300"),
                _ if read => self.districts("missing"),
                _ => self.not_allowed("GET, HEAD"),
            },
            _ => match Route::parse(path) {
                Some(route) => no_store(self.token_page(route, &parts.method, &parts.headers, body).await),
                None => self.page(StatusCode::NOT_FOUND, &self.pages.not_found),
            },
        }
    }

    /// The pages a signed link opens: GET and HEAD show and change
    /// nothing (mail scanners fetch every link); POST acts.
    async fn token_page(&self, route: Route<'_>, method: &Method, headers: &HeaderMap, body: Incoming) -> Resp {
        let read = matches!(*method, Method::GET | Method::HEAD);
        let token = route.token();
        match route {
            Route::Register(_) if read => self.show(token).await,
            Route::Register(_) if *method == Method::POST => self.complete(token, headers, body).await,
            Route::Manage(_) | Route::Unsubscribe(_) if read => self.self_service_show(token, route.purpose()).await,
            Route::Manage(_) if *method == Method::POST => self.manage_post(token, headers, body).await,
            Route::Unsubscribe(_) if *method == Method::POST => self.unsubscribe_post(token, headers, body).await,
            Route::Publish(_) if read => self.answer(crate::publish::show(self.web.clone(), token.to_string()).await),
            Route::Publish(_) if *method == Method::POST => {
                let body = match self.read_body(headers, body).await {
                    Ok(body) => body,
                    Err(resp) => return resp,
                };
                let confirmed = form::value(&body, "stale").is_some();
                self.answer(crate::publish::post(self.web.clone(), token.to_string(), confirmed).await)
            }
            Route::Waiting(_) if read => self.waiting_show(token).await,
            Route::Arrived(_) if read => self.arrived_show(token).await,
            Route::Arrived(_) if *method == Method::POST => self.arrived_post(token, headers, body).await,
            Route::Confirm(_) if read => self.confirm_show(token).await,
            Route::Confirm(_) if *method == Method::POST => self.confirm_post(token, headers, body).await,
            _ => self.not_allowed("GET, HEAD, POST"),
        }
    }

    fn page(&self, status: StatusCode, body: &Bytes) -> Resp {
        respond(status, HTML, body.clone())
    }

    fn answer(&self, (status, body): (StatusCode, String)) -> Resp {
        self.html(status, body)
    }

    fn html(&self, status: StatusCode, body: String) -> Resp {
        respond(status, HTML, Bytes::from(body))
    }

    fn not_allowed(&self, allow: &'static str) -> Resp {
        let mut resp = self.page(StatusCode::METHOD_NOT_ALLOWED, &self.pages.method_not_allowed);
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        resp
    }

    fn busy(&self) -> Resp {
        let mut resp = self.page(StatusCode::SERVICE_UNAVAILABLE, &self.pages.busy);
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        resp
    }

    fn link_gone(&self) -> Resp {
        self.page(StatusCode::GONE, &self.pages.link_gone)
    }

    /// Verifies a link's signature, purpose and expiry; the error is the
    /// page to answer with (an expired registration link and an expired
    /// manage link say different things).
    fn verify(&self, token: &str, purpose: Purpose, now: UnixTime) -> Result<Claims, Box<Resp>> {
        match self.web.app.verify(token, purpose, now) {
            Ok(claims) => Ok(claims),
            Err(TokenError::Expired) if purpose == Purpose::Register => Err(Box::new(self.link_gone())),
            Err(TokenError::Expired) => Err(Box::new(self.page(StatusCode::GONE, &self.pages.manage_gone))),
            Err(TokenError::Malformed | TokenError::BadSignature | TokenError::WrongPurpose) => {
                Err(Box::new(self.page(StatusCode::BAD_REQUEST, &self.pages.link_invalid)))
            }
        }
    }

    /// Reads a form body of at most [`MAX_BODY`] bytes; the error is the
    /// page to answer with.
    async fn read_body(&self, headers: &HeaderMap, body: Incoming) -> Result<Bytes, Resp> {
        let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(self.too_large());
        }
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(self.too_large()),
            Ok(Err(_)) => Err(self.page(StatusCode::BAD_REQUEST, &self.pages.bad_request)),
            Err(_) => Err(closing(self.page(StatusCode::REQUEST_TIMEOUT, &self.pages.bad_request))),
        }
    }

    fn too_large(&self) -> Resp {
        // The rest of the body is not read, so the connection cannot be reused.
        closing(self.page(StatusCode::PAYLOAD_TOO_LARGE, &self.pages.too_large))
    }

    /// Runs a use case on a blocking thread; a failure is the busy page,
    /// logged once with what was being done.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        doing: &'static str,
        f: impl FnOnce(&mamoru_app::App) -> Result<T, mamoru_app::Error> + Send + 'static,
    ) -> Result<T, Resp> {
        crate::blocking(&self.web, doing, move |w| f(&w.app)).await.map_err(|crate::Busy| self.busy())
    }

    /// `POST /register`: the PC form. Queues a 登録受付 mail exactly as an
    /// empty mail to `ans@` does, and answers the same page whatever happened:
    /// for a new or a known address, one a limit refuses, and one that never
    /// gets a reply (`mamoru_core::mailbox::no_reply`: daemons, role
    /// mailboxes, our own domain). It spends the form's own global budget and
    /// the client's (keyed by its address as the admin login counts it).
    async fn register(&self, headers: &HeaderMap, body: Incoming, peer: std::net::SocketAddr) -> Resp {
        let body = match self.read_body(headers, body).await {
            Ok(body) => body,
            Err(resp) => return resp,
        };
        let raw = form::value(&body, "address").unwrap_or_default();
        let Ok(addr) = EmailAddress::parse(&raw) else {
            let shown: String = raw.trim().chars().take(254).collect();
            let text = "メールアドレスの形式が正しくありません。確かめてもう一度入力してください。";
            return self.html(StatusCode::BAD_REQUEST, pages::index(&self.web.app.cfg, Some(text), &shown));
        };
        let client = crate::admin::client_key(&self.web, headers, peer, "register-web-client");
        let now = mamoru_core::now();
        // Every outcome (queued, refused by a limit, an address that never
        // gets a reply) answers the same page: the form tells nobody
        // whether an address is registered.
        match self.run("record a registration request", move |app| app.request_link(&addr, Channel::Web { client }, None, now)).await {
            Ok(_) => self.page(StatusCode::OK, &self.pages.register_sent),
            Err(resp) => resp,
        }
    }

    /// `GET /r/{token}`: the district form. Changes nothing.
    async fn show(&self, token: &str) -> Resp {
        let now = mamoru_core::now();
        let claims = match self.verify(token, Purpose::Register, now) {
            Ok(claims) => claims,
            Err(resp) => return *resp,
        };
        match self.run("read a registration", move |app| app.registration_view(&claims, now)).await {
            Ok(Some(view)) => self.html(StatusCode::OK, pages::choose(&self.web.app.cfg, token, &view.districts, &view.prefs, None)),
            Ok(None) => self.link_gone(),
            Err(resp) => resp,
        }
    }

    /// `POST /r/{token}`: saves the districts, kinds and quiet hours,
    /// consumes the token and queues
    /// the 登録完了 mail, in one store transaction.
    async fn complete(&self, token: &str, headers: &HeaderMap, body: Incoming) -> Resp {
        let now = mamoru_core::now();
        let claims = match self.verify(token, Purpose::Register, now) {
            Ok(claims) => claims,
            Err(resp) => return *resp,
        };
        let body = match self.read_body(headers, body).await {
            Ok(body) => body,
            Err(resp) => return resp,
        };
        let cfg = &self.web.app.cfg;
        // Shown again as posted when something was refused.
        let posted = form::districts(&body, cfg).unwrap_or_default();
        let refuse = |prefs: &Preferences, text: &str| self.html(StatusCode::BAD_REQUEST, pages::choose(cfg, token, &posted, prefs, Some(text)));
        let prefs = match form::preferences(&body, cfg) {
            Ok(prefs) => prefs,
            Err(e) => return refuse(&form::preferences_as_posted(&body, cfg), e.message()),
        };
        let ids = match form::districts(&body, cfg) {
            Ok(ids) if !ids.is_empty() => ids,
            Ok(_) => return refuse(&prefs, "地区を1つ以上選んでください。"),
            Err(DistrictsError::Unknown) => return refuse(&prefs, "選ばれた地区が正しくありません。もう一度選んでください。"),
        };
        let (chosen, saved) = (ids.clone(), prefs.clone());
        match self.run("complete a registration", move |app| app.complete_registration(&claims, &chosen, &saved, now)).await {
            Ok(Completion::Completed { .. }) => self.html(StatusCode::OK, pages::completed(cfg, &self.web.app.districts(&ids), &prefs)),
            Ok(Completion::TokenUnusable) => self.link_gone(),
            Err(resp) => resp,
        }
    }
}

/// A response with the security headers every answer carries.
fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Resp {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

fn cacheable(mut resp: Resp, policy: &'static str) -> Resp {
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(policy));
    resp
}

/// Token pages and form answers must not be kept by any cache.
fn no_store(resp: Resp) -> Resp {
    cacheable(resp, "no-store")
}

fn closing(mut resp: Resp) -> Resp {
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}
