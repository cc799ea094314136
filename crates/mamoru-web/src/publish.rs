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
use mamoru_core::links::Route;
use mamoru_core::token::{Purpose, TokenError};
use mamoru_store::alerts::{AlertRow, Published};

use maud::html;

use crate::{Web, pages};

fn preview_page(web: &Web, token: &str, row: &AlertRow) -> String {
    let cfg = &web.app.cfg;
    let content = content_of(&web.app, row);
    pages::document(cfg, "配信の確認", html! {
        h1 { @if row.is_test { "テスト配信の確認" } @else { "配信の確認" } }
        p { "まだ配信されていません。内容を確かめて「配信する」を押してください。" }
        h2 { "件名" }
        p { (content.subject) }
        h2 { "本文" }
        pre class="alert" { (content.body) }
        form method="post" action=(Route::Publish(token).path()) {
            (stale_check(web, row))
            button type="submit" { "配信する" }
        }
    })
}

/// The confirmation an old incident needs: a checkbox the POST must carry.
pub fn stale_check(web: &Web, row: &AlertRow) -> maud::Markup {
    let stale = web.app.is_stale(row, mamoru_core::now());
    let occurred = mamoru_core::alert::Occurred { at: row.occurred_at, flags: row.occurred_flags };
    html! {
        @if stale {
            p class="error" { "発生（" (occurred.label()) "）から時間がたっています。今配信してよいか確かめてください。" }
            label class="check" { input type="checkbox" name="stale" value="1" required; "発生から時間がたっていることを確認しました" }
        }
    }
}

fn verify(web: &Web, token: &str, now: UnixTime) -> Result<mamoru_core::token::Claims, (StatusCode, String)> {
    match web.app.verify(token, Purpose::Publish, now) {
        Ok(c) => Ok(c),
        Err(TokenError::Expired) => Err(gone(&web.app.cfg)),
        Err(_) => Err((StatusCode::BAD_REQUEST, pages::message(&web.app.cfg, "リンクが正しくありません", &["メールのリンクをそのまま開いてください。"]))),
    }
}

fn gone(cfg: &Config) -> (StatusCode, String) {
    (StatusCode::GONE, pages::message(cfg, "このリンクは使えません", &["配信済みか、期限が切れています。もう一度投稿してください。"]))
}

fn busy(cfg: &Config) -> (StatusCode, String) {
    (StatusCode::SERVICE_UNAVAILABLE, pages::busy(cfg))
}

/// `GET /p/TOKEN`. Changes nothing.
pub async fn show(web: std::sync::Arc<Web>, token: String) -> (StatusCode, String) {
    let now = mamoru_core::now();
    let claims = match verify(&web, &token, now) {
        Ok(c) => c,
        Err(e) => return e,
    };
    match crate::blocking(&web, "read an alert draft", move |w| w.app.publish_view(&claims, now)).await {
        Ok(Some(row)) => (StatusCode::OK, preview_page(&web, &token, &row)),
        Ok(None) => gone(&web.app.cfg),
        Err(crate::Busy) => busy(&web.app.cfg),
    }
}

/// `POST /p/TOKEN`: publishes.
/// `confirmed`: the form's checkbox for an old incident was ticked.
pub async fn post(web: std::sync::Arc<Web>, token: String, confirmed: bool) -> (StatusCode, String) {
    let now = mamoru_core::now();
    let claims = match verify(&web, &token, now) {
        Ok(c) => c,
        Err(e) => return e,
    };
    match crate::blocking(&web, "publish an alert", move |w| w.app.publish_confirmed(Publisher::Link(&claims), confirmed, now)).await {
        Ok(Published::Published { recipients, .. }) => {
            let n = format!("{recipients}件のメールを配信キューに入れました。順に届きます。");
            (StatusCode::OK, pages::message(&web.app.cfg, "配信しました", &[&n]))
        }
        Ok(Published::Unusable) => gone(&web.app.cfg),
        Ok(Published::StaleIncident) => {
            let why = "発生から時間がたっているお知らせです。リンクを開き直し、確認の欄に印を付けてから配信してください。";
            (StatusCode::BAD_REQUEST, pages::message(&web.app.cfg, "まだ配信していません", &[why]))
        }
        Err(crate::Busy) => busy(&web.app.cfg),
    }
}
