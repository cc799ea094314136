//! The panel's handlers: read the form, apply the rules, call the store,
//! and answer with a page of [`super::pages`].

use std::sync::Arc;

use hyper::StatusCode;
use mamoru_app::admins::{Actor, NewAdmin, Refusal};
use mamoru_app::alerts::{DraftOutcome, Publisher, Source, content_of};
use mamoru_core::alert::{self, FollowupKind};
use mamoru_core::{AlertId, password};
use mamoru_store::StoreError;
use mamoru_store::alerts::Published;
use mamoru_store::states::AlertState;

use super::pages::{self, AlertView, Compose, Dashboard};
use super::{Answer, Me, blocking, busy, checks_busy, message, page, password_check, redirect};
use crate::{Web, form};

/// How far back the dashboard's bounce table looks.
const BOUNCE_WINDOW_SECS: i64 = 30 * 24 * 3600;
/// How far back the dashboard looks for registrations never completed.
pub(crate) const UNFINISHED_WINDOW_SECS: i64 = 7 * 24 * 3600;

pub(super) async fn dashboard(web: &Arc<Web>, me: Me<'_>) -> Answer {
    let since = mamoru_core::now() - BOUNCE_WINDOW_SECS;
    let week = mamoru_core::now() - UNFINISHED_WINDOW_SECS;
    let read = blocking(web, "read the dashboard", move |w| {
        let s = &w.app.store;
        let problems = (s.deferred()?, s.unfinished_registrations(week)?);
        Ok::<_, StoreError>((s.subscriber_counts()?, s.suspended_counts()?, s.bounce_stats(since)?, s.learned_limits()?, problems))
    });
    let (counts, suspended, bounces, learned, (deferred, unfinished)) = match read.await {
        Ok(v) => v,
        Err(a) => return a,
    };
    let d = Dashboard { counts: &counts, suspended: &suspended, bounces: &bounces, learned: &learned, deferred: &deferred, unfinished: &unfinished };
    page(StatusCode::OK, pages::dashboard(&web.app.cfg, me, &d))
}

/// `GET /admin/compose`.
pub(super) fn compose_form(web: &Web, me: Me<'_>) -> Answer {
    let empty = Compose { title: "", kind: "", text: "", occurred: "", checked: &[], test: false, confirm: false, urgent: false };
    page(StatusCode::OK, pages::compose(&web.app.cfg, me, None, &empty))
}

/// `POST /admin/compose`: a draft and its preview mail.
pub(super) async fn compose(web: &Arc<Web>, me: Me<'_>, body: &[u8], now: i64) -> Answer {
    let cfg = web.app.cfg.clone();
    let title = form::value(body, "title").unwrap_or_default().to_string();
    let kind = form::value(body, "kind").unwrap_or_default().to_string();
    let text = form::value(body, "text").unwrap_or_default().to_string();
    let occurred = form::value(body, "occurred").unwrap_or_default().to_string();
    let is_test = form::value(body, "test").is_some();
    let ask_confirm = form::value(body, "confirm").is_some();
    let urgent = form::value(body, "urgent").is_some();
    let ids = form::districts(body, &cfg).unwrap_or_default();
    let refused = |e: alert::FormatError| {
        let err = e.explain(&cfg);
        let sent = Compose { title: &title, kind: &kind, text: &text, occurred: &occurred, checked: &ids, test: is_test, confirm: ask_confirm, urgent };
        page(StatusCode::BAD_REQUEST, pages::compose(&cfg, me, Some(&err), &sent))
    };
    // The same checks as a mailed post, on the form's typed fields.
    let draft = match alert::draft(&cfg, &title, &kind, ids.clone(), &text)
        .and_then(|d| Ok(alert::AlertDraft { occurred: alert::parse_occurred(&occurred, now)?, ask_confirm, urgent, ..d }))
    {
        Ok(d) => d,
        Err(e) => return refused(e),
    };
    let admin = me.0.clone();
    // The preview mail goes out too: the admin's phone gets the same
    // one-time link as for a mailed post.
    match blocking(web, "draft an alert", move |w| w.app.draft(&admin, &draft, Source::Web, is_test, now)).await {
        Ok(DraftOutcome::Created { alert, .. }) => redirect(&format!("/admin/alerts/{alert}")),
        Ok(DraftOutcome::Refused(e)) => refused(e),
        Ok(DraftOutcome::Duplicate) => busy(&cfg),
        Err(a) => a,
    }
}

/// `GET /admin/alerts/{id}`.
pub(super) async fn show_alert(web: &Arc<Web>, me: Me<'_>, id: AlertId) -> Answer {
    let cfg = &web.app.cfg;
    let read = blocking(web, "read an alert", move |w| {
        let row = w.app.store.alert(id)?;
        let progress = w.app.store.alert_progress(id)?;
        let delivered = w.app.store.delivery_times(id)?;
        let counts = match &row {
            Some(r) if r.state == AlertState::Draft => w.app.store.audience(&r.districts, r.followup_of, &r.kind, r.urgent, mamoru_core::now())?,
            _ => Default::default(),
        };
        let followups = match &row {
            Some(r) if r.followup_of.is_none() => w.app.store.followups_of(&[r.id])?,
            _ => vec![],
        };
        let confirms = match &row {
            Some(r) if r.ask_confirm => w.app.store.confirm_table(id)?,
            _ => vec![],
        };
        Ok::<_, StoreError>((row, progress, counts, followups, delivered, confirms))
    });
    let (row, progress, counts, followups, delivered, confirms) = match read.await {
        Ok(v) => v,
        Err(a) => return a,
    };
    let Some(row) = row else { return message(cfg, StatusCode::NOT_FOUND, "配信が見つかりません", "配信履歴から選んでください。") };
    let content = content_of(&web.app, &row);
    let view = AlertView { row: &row, content: &content, progress: &progress, audience: &counts, followups: &followups, delivered: &delivered, confirms: &confirms, stale: web.app.is_stale(&row, mamoru_core::now()) };
    page(StatusCode::OK, pages::alert(cfg, me, &view))
}

/// `POST /admin/alerts/{id}/publish`.
pub(super) async fn publish_alert(web: &Arc<Web>, me: Me<'_>, id: AlertId, body: &[u8], now: i64) -> Answer {
    let cfg = &web.app.cfg;
    let admin = me.0.clone();
    let confirmed = form::value(body, "stale").is_some();
    // Only the author publishes a draft from the panel.
    let publish = move |w: &Web| w.app.publish_confirmed(Publisher::Author { admin: &admin, alert: id }, confirmed, now);
    match blocking(web, "publish an alert", publish).await {
        Ok(Published::Published { alert, .. }) => redirect(&format!("/admin/alerts/{alert}")),
        Ok(Published::Unusable) => message(cfg, StatusCode::GONE, "配信できません", "配信済みか、配信できない状態です。"),
        Ok(Published::StaleIncident) => {
            message(cfg, StatusCode::BAD_REQUEST, "まだ配信していません", "発生から時間がたっています。確認の欄に印を付けてから配信してください。")
        }
        Err(a) => a,
    }
}

/// `POST /admin/alerts/{id}/followup`: a 続報, 解決 or 取消 of a published
/// report, drafted and previewed like a first report.
pub(super) async fn followup(web: &Arc<Web>, me: Me<'_>, id: AlertId, body: &[u8], now: i64) -> Answer {
    let cfg = web.app.cfg.clone();
    let Some(kind) = form::value(body, "kind").and_then(|k| FollowupKind::parse(&k)) else {
        return message(&cfg, StatusCode::BAD_REQUEST, "続報を受け付けられません", "種類（続報・解決・取消）を選んでください。");
    };
    let text = form::value(body, "text").unwrap_or_default().to_string();
    let admin = me.0.clone();
    match blocking(web, "draft a follow-up", move |w| w.app.draft_followup(&admin, id, kind, &text, Source::Web, now)).await {
        Ok(DraftOutcome::Created { alert, .. }) => redirect(&format!("/admin/alerts/{alert}")),
        Ok(DraftOutcome::Refused(e)) => message(&cfg, StatusCode::BAD_REQUEST, "続報を受け付けられません", &e.explain(&cfg)),
        Ok(DraftOutcome::Duplicate) => busy(&cfg),
        Err(a) => a,
    }
}

/// `GET /admin/alerts`.
pub(super) async fn history(web: &Arc<Web>, me: Me<'_>) -> Answer {
    match blocking(web, "read the alert history", |w| w.app.store.recent_alerts(100)).await {
        Ok(rows) => page(StatusCode::OK, pages::history(&web.app.cfg, me, &rows)),
        Err(a) => a,
    }
}

/// `GET /admin/admins`, and the answer to its forms with `notice`.
pub(super) async fn admins(web: &Arc<Web>, me: Me<'_>, notice: Option<Result<String, String>>, status: StatusCode) -> Answer {
    match blocking(web, "list the admins", |w| w.app.store.list_admins()).await {
        Ok(list) => {
            let notice = notice.as_ref().map(|n| n.as_deref().map_err(String::as_str));
            page(status, pages::admins(&web.app.cfg, me, &list, notice))
        }
        Err(a) => a,
    }
}

/// `POST /admin/admins/add`.
pub(super) async fn add_admin(web: &Arc<Web>, me: Me<'_>, body: &[u8], now: i64) -> Answer {
    let cfg = web.app.cfg.clone();
    if !me.0.can_manage_admins() {
        return message(&cfg, StatusCode::FORBIDDEN, "操作を受け付けられません", "管理者の追加は全地区の管理者が行います。");
    }
    let login = form::value(body, "login").unwrap_or_default().trim().to_string();
    let email = form::value(body, "email").unwrap_or_default().to_string();
    let pw = form::value(body, "password").unwrap_or_default().to_string();
    let Ok(districts) = form::districts(body, &cfg) else {
        return admins(web, me, Some(Err("地区の選び方が正しくありません。".into())), StatusCode::BAD_REQUEST).await;
    };
    let Some(permit) = password_check(web) else { return checks_busy(&cfg) };
    let (by, l) = (me.0.clone(), login.clone());
    let added = blocking(web, "add an admin", move |w| {
        let _permit = permit;
        let new = NewAdmin { login: &l, email: &email, password: &pw, districts: &districts };
        w.app.add_admin(Actor::Admin(&by), &new, now)
    })
    .await;
    match added {
        Ok(Ok(_)) => admins(web, me, Some(Ok(format!("管理者 {login} を追加しました。"))), StatusCode::OK).await,
        Ok(Err(why)) => {
            let status = if why == Refusal::NotAllowed { StatusCode::FORBIDDEN } else { StatusCode::BAD_REQUEST };
            admins(web, me, Some(Err(refusal(&why))), status).await
        }
        Err(a) => a,
    }
}

/// A refusal of the admins flow, as the panel says it.
fn refusal(why: &Refusal) -> String {
    match why {
        Refusal::NotAllowed => "管理者の操作は全地区の管理者が行います。".into(),
        Refusal::BadLogin => "IDは64文字までの英数字と . _ - で入力してください。".into(),
        Refusal::BadEmail => "登録アドレスが正しくありません。".into(),
        Refusal::UnknownDistrict(_) => "地区の選び方が正しくありません。".into(),
        Refusal::WeakPassword => format!("パスワードは{}文字以上で、改行などを含めないでください。", password::MIN_LEN),
        Refusal::LoginTaken => "そのIDはすでに使われています。".into(),
        Refusal::NoSuchAdmin => "その管理者は見つかりません。".into(),
        Refusal::Yourself => "自分自身は停止できません。".into(),
        Refusal::WrongPassword => "今のパスワードが違います。".into(),
    }
}

/// `POST /admin/admins/disable` and `/admin/admins/enable`.
pub(super) async fn set_admin_active(web: &Arc<Web>, me: Me<'_>, body: &[u8], now: i64, enable: bool) -> Answer {
    let cfg = web.app.cfg.clone();
    let verb = if enable { "再開" } else { "停止" };
    if !me.0.can_manage_admins() {
        let why = format!("管理者の{verb}は全地区の管理者が行います。");
        return message(&cfg, StatusCode::FORBIDDEN, "操作を受け付けられません", &why);
    }
    let login = form::value(body, "login").unwrap_or_default().trim().to_string();
    let (by, l) = (me.0.clone(), login.clone());
    let changed = blocking(web, "enable or disable an admin", move |w| w.app.set_admin_active(Actor::Admin(&by), &l, enable, now)).await;
    match changed {
        Ok(Ok(())) => {
            let done = if enable {
                format!("管理者 {login} を再開しました。")
            } else {
                format!("管理者 {login} を停止しました。ログイン中の画面も使えなくなります。")
            };
            admins(web, me, Some(Ok(done)), StatusCode::OK).await
        }
        Ok(Err(Refusal::NoSuchAdmin)) => {
            let missing = if enable { "停止中のその管理者は見つかりません。" } else { "その管理者は見つかりません。" };
            admins(web, me, Some(Err(missing.into())), StatusCode::NOT_FOUND).await
        }
        Ok(Err(why)) => admins(web, me, Some(Err(refusal(&why))), StatusCode::BAD_REQUEST).await,
        Err(a) => a,
    }
}

/// `GET /admin/password`.
pub(super) fn password_form(web: &Web, me: Me<'_>) -> Answer {
    page(StatusCode::OK, pages::password(&web.app.cfg, me, None))
}

/// `POST /admin/password`: the admin's own password; the current one is
/// asked again, so a session left open on a shared PC cannot take the
/// account over. Other sessions of this admin end; this one stays.
pub(super) async fn change_password(web: &Arc<Web>, me: Me<'_>, body: &[u8], sid: [u8; 32], client: [u8; 32], now: i64) -> Answer {
    let cfg = web.app.cfg.clone();
    let current = form::value(body, "current").unwrap_or_default().to_string();
    let new = form::value(body, "new").unwrap_or_default().to_string();
    let again = form::value(body, "again").unwrap_or_default().to_string();
    if new != again {
        return page(StatusCode::BAD_REQUEST, pages::password(&cfg, me, Some(Err("新しいパスワードが確認欄と一致しません。"))));
    }
    if password::check_new(&new).is_err() {
        let e = format!("新しいパスワードは{}文字以上で、改行などを含めないでください。", password::MIN_LEN);
        return page(StatusCode::BAD_REQUEST, pages::password(&cfg, me, Some(Err(&e))));
    }
    let Some(permit) = password_check(web) else {
        web.app.metrics().rate_limited("password-checks");
        return checks_busy(&cfg);
    };
    let by = me.0.clone();
    let changed = blocking(web, "change an admin password", move |w| {
        let _permit = permit;
        w.app.change_own_password(&by, &current, &new, &sid, &client, now)
    })
    .await;
    match changed {
        Ok(Ok(())) => page(StatusCode::OK, pages::password(&cfg, me, Some(Ok("パスワードを変更しました。")))),
        Ok(Err(Refusal::NoSuchAdmin)) => busy(&cfg),
        Ok(Err(why)) => page(StatusCode::BAD_REQUEST, pages::password(&cfg, me, Some(Err(&refusal(&why))))),
        Err(a) => a,
    }
}

/// `GET /admin/audit`.
pub(super) async fn audit(web: &Arc<Web>, me: Me<'_>) -> Answer {
    match blocking(web, "read the audit log", |w| w.app.store.audit_log(200)).await {
        Ok(log) => page(StatusCode::OK, pages::audit(&web.app.cfg, me, &log)),
        Err(a) => a,
    }
}
