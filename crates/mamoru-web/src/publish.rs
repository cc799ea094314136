//! The publish link of a preview mail (`/p/TOKEN`), the fan-out shared
//! with the admin panel and `mamoru alert post --yes`, and the renderer of
//! each subscriber's copy that the relay runs at send time.
//!
//! GET shows the alert as parents will see it and a button; only the POST
//! publishes, consuming the one-time token in the same transaction that
//! queues every subscriber's mail (mail scanners fetch every link).

use std::sync::{Arc, Mutex};

use hyper::StatusCode;
use mamoru_core::alert::{self, AlertDraft};
use mamoru_core::token::{Nonce, Purpose, TokenError, TokenKey};
use mamoru_core::{Config, EmailAddress, UnixTime};
use mamoru_store::Store;
use mamoru_store::alerts::{AlertRow, PublishAuth, Published};

use maud::html;

use crate::{Web, pages};

/// The alert text of a stored row, as `mamoru_core::alert` renders it.
pub fn draft_of(row: &AlertRow) -> AlertDraft {
    AlertDraft { title: row.title.clone(), kind: row.kind.clone(), districts: row.districts.clone(), text: row.text.clone() }
}

/// Publishes an alert: one outbox row per subscriber, without content;
/// the relay renders each copy when it sends it
/// (`mamoru_core::alert::render_for_subscriber`). Blocking (SQLite); the
/// caller picks the thread.
pub fn publish(cfg: &Config, store: &Store, auth: PublishAuth<'_>, actor: &str, now: UnixTime) -> mamoru_store::Result<Published> {
    let expires_at = now + cfg.alerts.max_age_secs;
    store.publish_alert(auth, actor, now, expires_at, &cfg.register_address(), &cfg.domain)
}

/// One subscriber's copy of a published alert, as the relay sends it: the
/// render hook (`mamoru_relay::RenderAlert`) the binary gives the relay.
/// Keeps the rendered text of the last few alerts, which every copy shares.
pub fn alert_renderer(cfg: Arc<Config>, tokens: TokenKey) -> impl Fn(&AlertRow, i64, &EmailAddress, Nonce) -> Vec<u8> + Send + Sync {
    let contents: Mutex<Vec<(i64, Arc<alert::AlertContent>)>> = Mutex::new(Vec::new());
    move |row, subscriber, to, link_nonce| {
        let content = {
            let mut cache = contents.lock().unwrap_or_else(|p| p.into_inner());
            match cache.iter().find(|(id, _)| *id == row.id) {
                Some((_, c)) => Arc::clone(c),
                None => {
                    let c = Arc::new(alert::content(&cfg, &draft_of(row), row.is_test));
                    if cache.len() >= 8 {
                        cache.remove(0);
                    }
                    cache.push((row.id, Arc::clone(&c)));
                    c
                }
            }
        };
        let recipient = alert::AlertRecipient { subscriber, address: to, link_nonce };
        alert::render_for_subscriber(&cfg, &tokens, row.id, &content, row.published_at, &recipient).bytes
    }
}

fn preview_page(cfg: &Config, token: &str, row: &AlertRow) -> String {
    let content = alert::content(cfg, &draft_of(row), row.is_test);
    pages::document(cfg, "配信の確認", html! {
        h1 { @if row.is_test { "テスト配信の確認" } @else { "配信の確認" } }
        p { "まだ配信されていません。内容を確かめて「配信する」を押してください。" }
        h2 { "件名" }
        p { (content.subject) }
        h2 { "本文" }
        pre class="alert" { (content.body) }
        form method="post" action={ "/p/" (token) } {
            button type="submit" { "配信する" }
        }
    })
}

fn verify(web: &Web, token: &str, now: UnixTime) -> Result<mamoru_core::token::Claims, (StatusCode, String)> {
    match web.tokens.verify(token, Purpose::Publish, now) {
        Ok(c) => Ok(c),
        Err(TokenError::Expired) => Err(gone(&web.cfg)),
        Err(_) => Err((StatusCode::BAD_REQUEST, pages::message(&web.cfg, "リンクが正しくありません", &["メールのリンクをそのまま開いてください。"]))),
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
    match crate::blocking(&web, "read an alert draft", move |w| w.store.publish_view(&claims, now)).await {
        Ok(Some(row)) => (StatusCode::OK, preview_page(&web.cfg, &token, &row)),
        Ok(None) => gone(&web.cfg),
        Err(crate::Busy) => busy(&web.cfg),
    }
}

/// `POST /p/TOKEN`: publishes.
pub async fn post(web: std::sync::Arc<Web>, token: String) -> (StatusCode, String) {
    let now = mamoru_core::now();
    let claims = match verify(&web, &token, now) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let result = crate::blocking(&web, "publish an alert", move |w| {
        let actor = format!("publish-link:alert={}", claims.subject);
        publish(&w.cfg, &w.store, PublishAuth::Token(&claims), &actor, now)
    })
    .await;
    match result {
        Ok(Published::Published { alert, recipients }) => {
            tracing::info!(alert, recipients, "alert published");
            web.queued.notify_one();
            let n = format!("{recipients}件のメールを配信キューに入れました。順に届きます。");
            (StatusCode::OK, pages::message(&web.cfg, "配信しました", &[&n]))
        }
        Ok(Published::Unusable) => gone(&web.cfg),
        Err(crate::Busy) => busy(&web.cfg),
    }
}
