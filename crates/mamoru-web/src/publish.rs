//! The publish link of a preview mail (`/p/TOKEN`); publishing itself is
//! `mamoru_app::alerts`.
//!
//! GET shows the alert as parents will see it and a button; only the POST
//! publishes, consuming the one-time token in the same transaction that
//! queues every subscriber's mail (mail scanners fetch every link).

use hyper::StatusCode;
use mamoru_app::alerts::{Publisher, content_of};
use mamoru_core::Config;
use mamoru_core::UnixTime;
use mamoru_core::token::{Purpose, TokenError};
use mamoru_store::alerts::{AlertRow, Published};

use crate::Web;
use crate::pages::{self, escape};

fn preview_page(web: &Web, token: &str, row: &AlertRow) -> String {
    let cfg = &web.cfg;
    let content = content_of(&web.app, row);
    let mut out = String::with_capacity(4096);
    pages::head(&mut out, cfg, "配信の確認");
    pages::h1(&mut out, if row.is_test { "テスト配信の確認" } else { "配信の確認" });
    pages::p(&mut out, "まだ配信されていません。内容を確かめて「配信する」を押してください。");
    out.push_str("<h2>件名</h2><p>");
    escape(&mut out, &content.subject);
    out.push_str("</p><h2>本文</h2><pre class=\"alert\">");
    escape(&mut out, &content.body);
    out.push_str("</pre><form method=\"post\" action=\"/p/");
    escape(&mut out, token);
    out.push_str("\"><button type=\"submit\">配信する</button></form>\n");
    pages::foot(&mut out, cfg);
    out
}

fn verify(web: &Web, token: &str, now: UnixTime) -> Result<mamoru_core::token::Claims, (StatusCode, String)> {
    match web.app.verify(token, Purpose::Publish, now) {
        Ok(c) => Ok(c),
        Err(TokenError::Expired) => Err(gone(&web.cfg)),
        Err(_) => Err((StatusCode::BAD_REQUEST, pages::message(&web.cfg, "リンクが正しくありません", &["メールのリンクをそのまま開いてください。"]))),
    }
}

fn gone(cfg: &Config) -> (StatusCode, String) {
    (StatusCode::GONE, pages::message(cfg, "このリンクは使えません", &["配信済みか、期限が切れています。もう一度投稿してください。"]))
}

fn busy(cfg: &Config) -> (StatusCode, String) {
    (StatusCode::SERVICE_UNAVAILABLE, pages::message(cfg, "ただいま混み合っています", &["しばらくしてからもう一度お試しください。"]))
}

/// `GET /p/TOKEN`. Changes nothing.
pub async fn show(web: std::sync::Arc<Web>, token: String) -> (StatusCode, String) {
    let now = mamoru_core::now();
    let claims = match verify(&web, &token, now) {
        Ok(c) => c,
        Err(e) => return e,
    };
    match web.app.run(move |app| app.publish_view(&claims, now)).await {
        Ok(Some(row)) => (StatusCode::OK, preview_page(&web, &token, &row)),
        Ok(None) => gone(&web.cfg),
        Err(e) => {
            tracing::warn!(error = %e, "web: cannot read an alert draft");
            busy(&web.cfg)
        }
    }
}

/// `POST /p/TOKEN`: publishes.
pub async fn post(web: std::sync::Arc<Web>, token: String) -> (StatusCode, String) {
    let now = mamoru_core::now();
    let claims = match verify(&web, &token, now) {
        Ok(c) => c,
        Err(e) => return e,
    };
    match web.app.run(move |app| app.publish(Publisher::Link(&claims), now)).await {
        Ok(Published::Published { recipients, .. }) => {
            let n = format!("{recipients}件のメールを配信キューに入れました。順に届きます。");
            (StatusCode::OK, pages::message(&web.cfg, "配信しました", &[&n]))
        }
        Ok(Published::Unusable) => gone(&web.cfg),
        Err(e) => {
            tracing::warn!(error = %e, "web: cannot publish an alert");
            busy(&web.cfg)
        }
    }
}
