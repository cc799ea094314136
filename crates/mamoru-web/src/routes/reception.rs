//! `POST /test` (the top page's 受信テスト), the manage page's
//! `action=test`, `/w/{token}` (the waiting page), `/t/{token}`
//! (届きました: GET shows the button, POST confirms) and the help pages
//! `/help/` and `/help/{slug}`.

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, StatusCode};
use mamoru_app::reception::{Asker, TestOutcome};
use mamoru_core::help::Carrier;
use mamoru_core::token::{Claims, Purpose};
use mamoru_core::{EmailAddress, UnixTime};
use mamoru_store::Limited;

use super::{App, Resp};
use crate::form;
use crate::pages::{self, reception};

impl App {
    /// `POST /test`: a test mail to the typed address, under the reception
    /// limits (the client's own hourly budget among them).
    pub(super) async fn test_post(&self, headers: &HeaderMap, body: Incoming, peer: std::net::SocketAddr) -> Resp {
        let body = match self.read_body(headers, body).await {
            Ok(body) => body,
            Err(resp) => return resp,
        };
        let raw = form::value(&body, "address").unwrap_or_default();
        let Ok(addr) = EmailAddress::parse(&raw) else {
            let text = "メールアドレスの形式が正しくありません。確かめてもう一度入力してください。";
            return self.html(StatusCode::BAD_REQUEST, reception::test_refused(&self.web.app.cfg, text));
        };
        let client = crate::admin::client_key(&self.web, headers, peer, "reception-web-client");
        let now = mamoru_core::now();
        let outcome = self.run("queue a reception test", move |app| app.request_test(Asker::Visitor { addr: &addr, client }, now)).await;
        self.test_answer(outcome)
    }

    /// The manage page's `action=test`: a test mail to the registered address.
    pub(super) async fn test_for_subscriber(&self, claims: Claims, now: UnixTime) -> Resp {
        let outcome = self.run("queue a reception test", move |app| app.request_test(Asker::Subscriber { manage: &claims }, now)).await;
        self.test_answer(outcome)
    }

    fn test_answer(&self, outcome: Result<TestOutcome, Resp>) -> Resp {
        let cfg = &self.web.app.cfg;
        match outcome {
            // 303: the browser GETs the waiting page, whose reloads repeat nothing.
            Ok(TestOutcome::Queued { waiting }) => {
                let mut resp = self.html(StatusCode::SEE_OTHER, reception::waiting(cfg, &waiting, mamoru_app::reception::TestStatus::Waiting));
                if let Ok(v) = HeaderValue::from_str(&format!("/w/{waiting}")) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                resp
            }
            Ok(TestOutcome::Limited(Limited::Cooldown)) => {
                let text = "テストメールを送ったばかりです。数分待ってからもう一度お試しください。";
                self.html(StatusCode::TOO_MANY_REQUESTS, reception::test_refused(cfg, text))
            }
            Ok(TestOutcome::Limited(_)) => {
                let text = "ただいまテストメールを送れません。しばらくしてからもう一度お試しください。";
                self.html(StatusCode::TOO_MANY_REQUESTS, reception::test_refused(cfg, text))
            }
            Ok(TestOutcome::NoReply(_)) => {
                let text = "このアドレスにはテストメールを送れません。";
                self.html(StatusCode::BAD_REQUEST, reception::test_refused(cfg, text))
            }
            Ok(TestOutcome::LinkUnusable) => self.page(StatusCode::GONE, &self.pages.manage_gone),
            Err(resp) => resp,
        }
    }

    /// A test token's claims, or the page saying the test is over.
    fn test_claims(&self, token: &str, purpose: Purpose, now: UnixTime) -> Result<Claims, Box<Resp>> {
        self.web.app.verify(token, purpose, now).map_err(|_| Box::new(self.gone()))
    }

    fn gone(&self) -> Resp {
        self.html(StatusCode::GONE, reception::test_gone(&self.web.app.cfg))
    }

    /// `GET /w/{token}`: the waiting page. Changes nothing.
    pub(super) async fn waiting_show(&self, token: &str) -> Resp {
        let now = mamoru_core::now();
        let claims = match self.test_claims(token, Purpose::Waiting, now) {
            Ok(c) => c,
            Err(resp) => return *resp,
        };
        match self.run("read a reception test", move |app| app.test_status(&claims, now)).await {
            Ok(Some(status)) => self.html(StatusCode::OK, reception::waiting(&self.web.app.cfg, token, status)),
            Ok(None) => self.gone(),
            Err(resp) => resp,
        }
    }

    /// `GET /t/{token}`: the 届きました button. Changes nothing.
    pub(super) async fn arrived_show(&self, token: &str) -> Resp {
        let now = mamoru_core::now();
        let claims = match self.test_claims(token, Purpose::Arrived, now) {
            Ok(c) => c,
            Err(resp) => return *resp,
        };
        match self.run("read a reception test", move |app| app.test_view(&claims, now)).await {
            Ok(Some(v)) => self.html(StatusCode::OK, reception::arrived_confirm(&self.web.app.cfg, token, v.arrived_at > 0)),
            Ok(None) => self.gone(),
            Err(resp) => resp,
        }
    }

    /// `POST /t/{token}`: the test arrived.
    pub(super) async fn arrived_post(&self, token: &str, headers: &HeaderMap, body: Incoming) -> Resp {
        let now = mamoru_core::now();
        let claims = match self.test_claims(token, Purpose::Arrived, now) {
            Ok(c) => c,
            Err(resp) => return *resp,
        };
        if let Err(resp) = self.read_body(headers, body).await {
            return resp;
        }
        match self.run("confirm a reception test", move |app| app.mark_test_arrived(&claims, now)).await {
            Ok(Some(_)) => self.html(StatusCode::OK, reception::arrived_done(&self.web.app.cfg)),
            Ok(None) => self.gone(),
            Err(resp) => resp,
        }
    }

    /// `/help/` and `/help/{slug}`.
    pub(super) fn help(&self, slug: &str) -> Resp {
        let cfg = &self.web.app.cfg;
        if slug.is_empty() {
            return self.html(StatusCode::OK, reception::help_index(cfg));
        }
        match Carrier::from_slug(slug) {
            Some(c) => self.html(StatusCode::OK, reception::help(cfg, c)),
            None => self.html(StatusCode::NOT_FOUND, pages::message(cfg, "ページが見つかりません", &["受信設定のご案内は /help/ にあります。"])),
        }
    }
}
