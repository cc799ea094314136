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

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::{Method, StatusCode};
use mamoru_app::alerts::{DraftOutcome, Publisher, content_of};
use mamoru_core::alert::{self, CarrierCounts, carrier_of, district_label};
use mamoru_core::{Config, password};
use mamoru_store::admins::{Admin, AdminAdded, valid_login};
use mamoru_store::alerts::Published;
use ring::digest;

use crate::Web;
use crate::archive::jst;
use crate::form;
use crate::pages::{self, escape};

const COOKIE: &str = "__Host-mamoru_admin";

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
    page(status, pages::message(cfg, title, &[line]))
}

fn busy(cfg: &Config) -> Answer {
    message(cfg, StatusCode::SERVICE_UNAVAILABLE, "ただいま混み合っています", "しばらくしてからもう一度お試しください。")
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

fn session_id(headers: &HeaderMap) -> Option<[u8; 32]> {
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for c in v.split(';') {
            if let Some(val) = c.trim().strip_prefix(COOKIE).and_then(|r| r.strip_prefix('=')) {
                let raw = URL_SAFE_NO_PAD.decode(val).ok()?;
                let d = digest::digest(&digest::SHA256, &raw);
                return d.as_ref().try_into().ok();
            }
        }
    }
    None
}

/// Context of the keyed hash of a login client.
const LOGIN_CLIENT: &str = "admin-login-client";

/// The client a login attempt (or a PC-form registration) is counted
/// against: its IP address (IPv6 by /64, which one host usually holds
/// whole), as a hash keyed for `context`.
pub(crate) fn client_key(web: &Web, headers: &HeaderMap, peer: SocketAddr, context: &str) -> [u8; 32] {
    let mut ip = peer.ip();
    if web.cfg.web.behind_tls_proxy {
        // The proxy appends the address it saw last; anything left of it
        // came from the client and proves nothing.
        let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).next_back();
        if let Some(last) = forwarded.and_then(|v| v.rsplit(',').next()).and_then(|v| v.trim().parse::<IpAddr>().ok()) {
            ip = last;
        }
    }
    let bytes = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets()[..8].to_vec(),
        },
    };
    web.store.sealer().keyed_index(context, &bytes)
}

fn random(web: &Web, n: usize) -> Option<Vec<u8>> {
    let mut b = vec![0u8; n];
    web.store.sealer().random(&mut b).ok()?;
    Some(b)
}

/// Runs a store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    web: &Arc<Web>,
    f: impl FnOnce(&Web) -> mamoru_store::Result<T> + Send + 'static,
) -> Result<T, Answer> {
    let w = web.clone();
    match tokio::task::spawn_blocking(move || f(&w)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "admin: store error");
            Err(busy(&web.cfg))
        }
        Err(e) => {
            tracing::error!(error = %e, "admin: task failed");
            Err(busy(&web.cfg))
        }
    }
}

fn head(out: &mut String, cfg: &Config, title: &str, admin: Option<(&Admin, &str)>) {
    pages::head(out, cfg, title);
    if let Some((a, csrf)) = admin {
        out.push_str("<nav class=\"admin\"><a href=\"/admin\">ダッシュボード</a> <a href=\"/admin/compose\">新規配信</a> \
                      <a href=\"/admin/alerts\">配信履歴</a> <a href=\"/admin/admins\">管理者</a> <a href=\"/admin/audit\">操作記録</a> \
                      <a href=\"/admin/password\">パスワード変更</a> ");
        out.push_str("<form method=\"post\" action=\"/admin/logout\" class=\"inline\">");
        csrf_field(out, csrf);
        out.push_str("<button type=\"submit\" class=\"link\">ログアウト（");
        escape(out, &a.login);
        out.push_str("）</button></form></nav>\n");
    }
    pages::h1(out, title);
}

fn csrf_field(out: &mut String, csrf: &str) {
    out.push_str("<input type=\"hidden\" name=\"csrf\" value=\"");
    escape(out, csrf);
    out.push_str("\">");
}

fn login_page(cfg: &Config, error: Option<&str>) -> String {
    let mut out = String::new();
    head(&mut out, cfg, "管理者ログイン", None);
    if let Some(e) = error {
        pages::error(&mut out, e);
    }
    out.push_str(
        "<form method=\"post\" action=\"/admin/login\">\
         <label for=\"login\">ID</label><input type=\"text\" id=\"login\" name=\"login\" autocomplete=\"username\" autocapitalize=\"none\" required maxlength=\"64\">\
         <label for=\"password\">パスワード</label><input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required maxlength=\"256\">\
         <button type=\"submit\">ログイン</button></form>\n",
    );
    pages::foot(&mut out, cfg);
    out
}

/// Entry point from the router for every `/admin` path.
pub async fn handle(web: Arc<Web>, method: &Method, path: &str, headers: &HeaderMap, body: Bytes, peer: SocketAddr) -> Answer {
    let cfg = web.cfg.clone();
    if !peer.ip().is_loopback() && !cfg.web.behind_tls_proxy && !cfg.web_tls() {
        return message(&cfg, StatusCode::FORBIDDEN, "管理画面は使えません", "暗号化された接続（HTTPS）からのみ使えます。");
    }
    let now = mamoru_core::now();
    let post = method == Method::POST;
    if path == "/admin/login" {
        return if post {
            let client = client_key(&web, headers, peer, LOGIN_CLIENT);
            login(&web, &body, client).await
        } else {
            page(StatusCode::OK, login_page(&cfg, None))
        };
    }
    let Some(sid) = session_id(headers) else { return redirect("/admin/login") };
    let idle = cfg.web.admin_idle_secs;
    let session = match blocking(&web, move |w| w.store.session(&sid, now, idle)).await {
        Ok(s) => s,
        Err(a) => return a,
    };
    let Some((admin, csrf)) = session else { return redirect("/admin/login") };
    if post {
        let sent = form::value(&body, "csrf").unwrap_or_default();
        // Constant-time comparison is not needed for a per-session value an
        // attacker cannot observe, but equal lengths are checked first anyway.
        if sent.len() != csrf.len() || sent != csrf.as_str() {
            return message(&cfg, StatusCode::FORBIDDEN, "操作を受け付けられません", "画面を開き直してからもう一度お試しください。");
        }
    }
    let me = (&admin, csrf.as_str());
    match (post, path) {
        (false, "/admin") => dashboard(&web, me).await,
        (false, "/admin/compose") => page(StatusCode::OK, compose_page(&cfg, me, None, "", "", "", &[])),
        (true, "/admin/compose") => compose(&web, me, &body, now).await,
        (false, "/admin/alerts") => history(&web, me).await,
        (false, "/admin/admins") => admins(&web, me, None, StatusCode::OK).await,
        (true, "/admin/admins/add") => add_admin(&web, me, &body, now).await,
        (true, "/admin/admins/disable") => set_admin_active(&web, me, &body, now, false).await,
        (true, "/admin/admins/enable") => set_admin_active(&web, me, &body, now, true).await,
        (false, "/admin/password") => page(StatusCode::OK, password_page(&cfg, me, None)),
        (true, "/admin/password") => {
            let client = client_key(&web, headers, peer, LOGIN_CLIENT);
            change_password(&web, me, &body, sid, client, now).await
        }
        (false, "/admin/audit") => audit(&web, me).await,
        (true, "/admin/logout") => {
            let actor = format!("admin:{}", admin.login);
            let _ = blocking(&web, move |w| w.store.delete_session(&sid, &actor, now)).await;
            let mut a = redirect("/admin/login");
            a.headers.push((header::SET_COOKIE, format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")));
            a
        }
        _ => {
            let rest = path.strip_prefix("/admin/alerts/");
            let (id, publish) = match rest.map(|r| r.strip_suffix("/publish").map_or((r, false), |r| (r, true))) {
                Some((id, p)) => (id.parse::<i64>().ok(), p),
                None => (None, false),
            };
            match (id, post, publish) {
                (Some(id), false, false) => show_alert(&web, me, id).await,
                (Some(id), true, true) => publish_alert(&web, me, id, now).await,
                _ => message(&cfg, StatusCode::NOT_FOUND, "ページが見つかりません", "メニューから選んでください。"),
            }
        }
    }
}

async fn login(web: &Arc<Web>, body: &[u8], client: [u8; 32]) -> Answer {
    let cfg = &web.cfg;
    let login = form::value(body, "login").unwrap_or_default().trim().to_string();
    let pw = form::value(body, "password").unwrap_or_default().to_string();
    let now = mamoru_core::now();
    let Some(permit) = password_check(web) else { return checks_busy(cfg) };
    let l = login.clone();
    let checked = blocking(web, move |w| {
        let _permit = permit;
        // The attempt is counted before the password is checked, in one
        // atomic step: concurrent guesses cannot all pass a check that
        // only later counts them.
        if !w.store.take_login_attempt(&l, &client, now)? {
            return Ok(Err(true));
        }
        let creds = w.store.admin_credentials(&l)?;
        let hash = creds.as_ref().map_or(password::dummy_hash(), |(_, h)| h.as_str());
        let ok = password::verify(&pw, hash);
        match creds {
            Some((admin, _)) if ok && admin.active => {
                w.store.login_attempt_succeeded(&l, &client, now)?;
                Ok(Ok(admin))
            }
            _ => {
                w.store.record_login_failure(&l, now)?;
                Ok(Err(false))
            }
        }
    })
    .await;
    let admin = match checked {
        Ok(Ok(a)) => a,
        Ok(Err(blocked)) => {
            let text = if blocked {
                "ログインの失敗が続いたため、しばらくログインできません。時間をおいてお試しください。"
            } else {
                "IDまたはパスワードが違います。"
            };
            let status = if blocked { StatusCode::TOO_MANY_REQUESTS } else { StatusCode::UNAUTHORIZED };
            return page(status, login_page(cfg, Some(text)));
        }
        Err(a) => return a,
    };
    let (Some(sid), Some(csrf)) = (random(web, 32), random(web, 16)) else { return busy(cfg) };
    let hash: [u8; 32] = match digest::digest(&digest::SHA256, &sid).as_ref().try_into() {
        Ok(h) => h,
        Err(_) => return busy(cfg),
    };
    let csrf: String = csrf.iter().map(|b| format!("{b:02x}")).collect();
    if let Err(a) = blocking(web, move |w| w.store.create_session(&admin, &hash, &csrf, now)).await {
        return a;
    }
    let mut a = redirect("/admin");
    a.headers.push((
        header::SET_COOKIE,
        format!("{COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict", URL_SAFE_NO_PAD.encode(&sid)),
    ));
    a
}

async fn dashboard(web: &Arc<Web>, me: (&Admin, &str)) -> Answer {
    let cfg = &web.cfg;
    let counts = match blocking(web, |w| w.store.subscriber_counts()).await {
        Ok(c) => c,
        Err(a) => return a,
    };
    let carriers = ["docomo", "au", "SoftBank", "Y!mobile", "その他"];
    let mut out = String::new();
    head(&mut out, cfg, "ダッシュボード", Some(me));
    out.push_str("<h2>地区・キャリア別の登録者数</h2><table><tr><th>地区</th>");
    for c in carriers {
        out.push_str(&format!("<th>{c}</th>"));
    }
    out.push_str("<th>計</th></tr>\n");
    for d in &cfg.districts {
        out.push_str("<tr><td>");
        escape(&mut out, &d.name);
        out.push_str("</td>");
        let rows: Vec<(String, i64)> = counts.iter().filter(|(id, _, _)| *id == d.id).map(|(_, dom, n)| (dom.clone(), *n)).collect();
        let cc = CarrierCounts::from_domains(&rows);
        for (_, n) in &cc.0 {
            out.push_str(&format!("<td>{n}</td>"));
        }
        out.push_str(&format!("<td>{}</td></tr>\n", cc.total()));
    }
    out.push_str("</table>\n");

    // Suspended subscribers get no mail until they confirm again; the dashboard shows how many and why, and which carriers
    // bounced or refused our mail lately ("blocked as spam" is about us,
    // not the subscriber).
    let since = mamoru_core::now() - BOUNCE_WINDOW_SECS;
    let (suspended, bounces) = match blocking(web, move |w| Ok((w.store.suspended_counts()?, w.store.bounce_stats(since)?))).await {
        Ok(v) => v,
        Err(a) => return a,
    };
    out.push_str("<h2>配信を止めている登録者</h2>");
    if suspended.is_empty() {
        out.push_str("<p>ありません。</p>\n");
    } else {
        out.push_str("<table><tr><th>理由</th><th>人数</th></tr>\n");
        for (reason, n) in &suspended {
            out.push_str("<tr><td>");
            escape(&mut out, suspension_label(reason));
            out.push_str(&format!("</td><td>{n}</td></tr>\n"));
        }
        out.push_str("</table>\n");
    }
    out.push_str("<h2>直近30日の不達（ドメイン別）</h2>");
    if bounces.is_empty() {
        out.push_str("<p>ありません。</p>\n");
    } else {
        out.push_str("<table><tr><th>ドメイン</th><th>種類</th><th>件数</th></tr>\n");
        for b in &bounces {
            out.push_str("<tr><td>");
            escape(&mut out, &b.domain);
            out.push_str("</td><td>");
            escape(&mut out, bounce_label(&b.class));
            out.push_str(&format!("</td><td>{}</td></tr>\n", b.count));
        }
        out.push_str("</table>\n");
    }
    pages::foot(&mut out, cfg);
    page(StatusCode::OK, out)
}

/// How far back the dashboard's bounce table looks.
const BOUNCE_WINDOW_SECS: i64 = 30 * 24 * 3600;

fn suspension_label(reason: &str) -> &str {
    match reason {
        "unknown-user" => "宛先不明（アドレスが存在しない）",
        "soft-bounces" => "一時的な不達の繰り返し",
        other => other,
    }
}

fn bounce_label(class: &str) -> &str {
    match class {
        "unknown-user" => "宛先不明",
        "mailbox-full" => "容量超過",
        "blocked-as-spam" => "迷惑メールとして拒否（当方への規制）",
        "temporary" => "一時的な不達",
        "other" => "その他",
        other => other,
    }
}

fn compose_page(cfg: &Config, me: (&Admin, &str), error: Option<&str>, title: &str, kind: &str, text: &str, checked: &[u32]) -> String {
    let mut out = String::new();
    head(&mut out, cfg, "新規配信", Some(me));
    if let Some(e) = error {
        pages::error(&mut out, e);
    }
    out.push_str("<form method=\"post\" action=\"/admin/compose\">");
    csrf_field(&mut out, me.1);
    out.push_str("<label for=\"title\">件名</label><input type=\"text\" id=\"title\" name=\"title\" required maxlength=\"60\" value=\"");
    escape(&mut out, title);
    out.push_str("\"><label for=\"kind\">種別</label><select id=\"kind\" name=\"kind\"><option value=\"\">（なし）</option>");
    for k in &cfg.alerts.kinds {
        out.push_str("<option");
        if k == kind {
            out.push_str(" selected");
        }
        out.push('>');
        escape(&mut out, k);
        out.push_str("</option>");
    }
    out.push_str("</select><fieldset><legend>地区</legend>\n");
    for d in cfg.districts.iter().filter(|d| me.0.districts.is_empty() || me.0.districts.contains(&d.id)) {
        out.push_str(&format!("<label class=\"check\"><input type=\"checkbox\" name=\"district\" value=\"{}\"", d.id));
        if checked.contains(&d.id) {
            out.push_str(" checked");
        }
        out.push('>');
        escape(&mut out, &d.name);
        out.push_str("</label>\n");
    }
    out.push_str("</fieldset><label for=\"text\">本文</label><textarea id=\"text\" name=\"text\" rows=\"8\" required maxlength=\"4000\">");
    escape(&mut out, text);
    out.push_str("</textarea><label class=\"check\"><input type=\"checkbox\" name=\"test\" value=\"1\">テスト配信（件名に【テスト配信】）</label>\
                  <button type=\"submit\">確認へ進む</button></form>\n");
    pages::foot(&mut out, cfg);
    out
}

async fn compose(web: &Arc<Web>, me: (&Admin, &str), body: &[u8], now: i64) -> Answer {
    let cfg = web.cfg.clone();
    let title = form::value(body, "title").unwrap_or_default().to_string();
    let kind = form::value(body, "kind").unwrap_or_default().to_string();
    let text = form::value(body, "text").unwrap_or_default().to_string();
    let is_test = form::value(body, "test").is_some();
    let ids = form::districts(body, &cfg).unwrap_or_default();
    let refused = |e: alert::FormatError| {
        let err = e.explain(&cfg);
        page(StatusCode::BAD_REQUEST, compose_page(&cfg, me, Some(&err), &title, &kind, &text, &ids))
    };
    // The same checks as a mailed post, on the form's typed fields.
    let draft = match alert::draft(&cfg, &title, &kind, ids.clone(), &text) {
        Ok(d) => d,
        Err(e) => return refused(e),
    };
    let admin = me.0.clone();
    let result = web.app.run(move |app| app.draft(&admin, &draft, mamoru_app::alerts::Source::Web, is_test, now)).await;
    match result {
        Ok(DraftOutcome::Created { alert, .. }) => redirect(&format!("/admin/alerts/{alert}")),
        Ok(DraftOutcome::Refused(e)) => refused(e),
        Ok(DraftOutcome::Duplicate) => busy(&cfg),
        Err(e) => {
            tracing::warn!(error = %e, "admin: cannot record a draft");
            busy(&cfg)
        }
    }
}

async fn show_alert(web: &Arc<Web>, me: (&Admin, &str), id: i64) -> Answer {
    let cfg = &web.cfg;
    let (row, progress, counts) = match blocking(web, move |w| {
        let row = w.store.alert(id)?;
        let progress = w.store.alert_progress(id)?;
        let counts = match &row {
            Some(r) if r.state == "draft" => w.store.recipient_domains(&r.districts)?,
            _ => vec![],
        };
        Ok((row, progress, counts))
    })
    .await
    {
        Ok(v) => v,
        Err(a) => return a,
    };
    let Some(row) = row else { return message(cfg, StatusCode::NOT_FOUND, "配信が見つかりません", "配信履歴から選んでください。") };
    let content = content_of(&web.app, &row);
    let mut out = String::new();
    head(&mut out, cfg, if row.state == "draft" { "配信の確認" } else { "配信の詳細" }, Some(me));
    out.push_str("<h2>件名</h2><p>");
    escape(&mut out, &content.subject);
    out.push_str("</p><h2>本文</h2><pre class=\"alert\">");
    escape(&mut out, &content.body);
    out.push_str("</pre>");
    if row.state == "draft" {
        let cc = CarrierCounts::from_domains(&counts);
        out.push_str(&format!("<p>配信先: {}件（", cc.total()));
        let parts: Vec<String> = cc.0.iter().map(|(c, n)| format!("{c} {n}")).collect();
        escape(&mut out, &parts.join("、"));
        out.push_str("）</p>");
        if row.admin == me.0.id {
            out.push_str(&format!("<form method=\"post\" action=\"/admin/alerts/{}/publish\">", row.id));
            csrf_field(&mut out, me.1);
            out.push_str("<button type=\"submit\">配信する</button></form>\n");
        }
    } else {
        progress_table(&mut out, &progress);
    }
    pages::foot(&mut out, cfg);
    page(StatusCode::OK, out)
}

/// Delivery progress per carrier: queued / sent / deferred / failed / expired.
fn progress_table(out: &mut String, progress: &[(String, String, i64)]) {
    let states = [("queued", "待ち"), ("sending", "送信中"), ("sent", "送信済"), ("failed", "失敗"), ("expired", "期限切れ")];
    let carriers = ["docomo", "au", "SoftBank", "Y!mobile", "その他"];
    out.push_str("<h2>配信状況</h2><table><tr><th>キャリア</th>");
    for (_, label) in states {
        out.push_str(&format!("<th>{label}</th>"));
    }
    out.push_str("</tr>\n");
    for c in carriers {
        out.push_str(&format!("<tr><td>{c}</td>"));
        for (state, _) in states {
            let n: i64 = progress.iter().filter(|(d, s, _)| carrier_of(d) == c && s == state).map(|(_, _, n)| n).sum();
            out.push_str(&format!("<td>{n}</td>"));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

async fn publish_alert(web: &Arc<Web>, me: (&Admin, &str), id: i64, now: i64) -> Answer {
    let cfg = &web.cfg;
    let admin = me.0.clone();
    let result = web.app.run(move |app| app.publish(Publisher::Author { admin: &admin, alert: id }, now)).await;
    match result {
        Ok(Published::Published { alert, .. }) => redirect(&format!("/admin/alerts/{alert}")),
        Ok(Published::Unusable) => message(cfg, StatusCode::GONE, "配信できません", "配信済みか、配信できない状態です。"),
        Err(e) => {
            tracing::warn!(error = %e, "admin: cannot publish");
            busy(cfg)
        }
    }
}

async fn history(web: &Arc<Web>, me: (&Admin, &str)) -> Answer {
    let cfg = &web.cfg;
    let rows = match blocking(web, |w| w.store.recent_alerts(100)).await {
        Ok(r) => r,
        Err(a) => return a,
    };
    let mut out = String::new();
    head(&mut out, cfg, "配信履歴", Some(me));
    out.push_str("<table><tr><th>日時</th><th>件名</th><th>地区</th><th>状態</th><th>件数</th></tr>\n");
    for r in rows.iter().filter(|r| r.state != "rejected") {
        let when = if r.published_at > 0 { r.published_at } else { r.created_at };
        out.push_str("<tr><td>");
        escape(&mut out, &jst(when));
        out.push_str(&format!("</td><td><a href=\"/admin/alerts/{}\">", r.id));
        if r.is_test {
            out.push_str("【テスト】");
        }
        escape(&mut out, &r.title);
        out.push_str("</a></td><td>");
        escape(&mut out, &district_label(cfg, &r.districts));
        let state = if r.state == "published" { "配信済" } else { "未配信" };
        out.push_str(&format!("</td><td>{state}</td><td>{}</td></tr>\n", r.recipients));
    }
    out.push_str("</table>\n");
    pages::foot(&mut out, cfg);
    page(StatusCode::OK, out)
}

async fn admins(web: &Arc<Web>, me: (&Admin, &str), notice: Option<Result<String, String>>, status: StatusCode) -> Answer {
    let cfg = &web.cfg;
    let list = match blocking(web, |w| w.store.list_admins()).await {
        Ok(l) => l,
        Err(a) => return a,
    };
    let manage = me.0.can_manage_admins();
    let mut out = String::new();
    head(&mut out, cfg, "管理者", Some(me));
    match &notice {
        Some(Ok(done)) => pages::p(&mut out, done),
        Some(Err(e)) => pages::error(&mut out, e),
        None => {}
    }
    out.push_str("<table><tr><th>ID</th><th>アドレス</th><th>地区</th><th>状態</th>");
    if manage {
        out.push_str("<th></th>");
    }
    out.push_str("</tr>\n");
    for a in list {
        out.push_str("<tr><td>");
        escape(&mut out, &a.login);
        out.push_str("</td><td>");
        escape(&mut out, &a.email.masked());
        out.push_str("</td><td>");
        let d = if a.districts.is_empty() { "全地区".to_string() } else { district_label(cfg, &a.districts) };
        escape(&mut out, &d);
        out.push_str(&format!("</td><td>{}</td>", if a.active { "有効" } else { "停止" }));
        if manage {
            out.push_str("<td>");
            if a.id != me.0.id {
                let (action, label) = if a.active { ("disable", "停止する") } else { ("enable", "再開する") };
                out.push_str(&format!("<form method=\"post\" action=\"/admin/admins/{action}\" class=\"inline\">"));
                csrf_field(&mut out, me.1);
                out.push_str("<input type=\"hidden\" name=\"login\" value=\"");
                escape(&mut out, &a.login);
                out.push_str(&format!("\"><button type=\"submit\" class=\"link\">{label}</button></form>"));
            }
            out.push_str("</td>");
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    if manage {
        out.push_str("<h2>管理者を追加</h2><form method=\"post\" action=\"/admin/admins/add\">");
        csrf_field(&mut out, me.1);
        out.push_str(
            "<label for=\"new-login\">ID（英数字と . _ -）</label><input type=\"text\" id=\"new-login\" name=\"login\" required maxlength=\"64\" autocapitalize=\"none\" autocomplete=\"off\">\
             <label for=\"new-email\">登録アドレス（配信確認メールの送り先）</label><input type=\"email\" id=\"new-email\" name=\"email\" required maxlength=\"254\" autocomplete=\"off\">",
        );
        out.push_str(&format!(
            "<label for=\"new-password\">初期パスワード（{}文字以上）</label><input type=\"password\" id=\"new-password\" name=\"password\" required minlength=\"{}\" maxlength=\"256\" autocomplete=\"new-password\">",
            password::MIN_LEN,
            password::MIN_LEN
        ));
        out.push_str("<fieldset><legend>配信できる地区（選ばなければ全地区・管理者の追加も可）</legend>\n");
        for d in &cfg.districts {
            out.push_str(&format!("<label class=\"check\"><input type=\"checkbox\" name=\"district\" value=\"{}\">", d.id));
            escape(&mut out, &d.name);
            out.push_str("</label>\n");
        }
        out.push_str("</fieldset><button type=\"submit\">追加する</button></form>\n");
    } else {
        pages::p(&mut out, "管理者の追加と停止は、全地区の管理者が行います。");
    }
    pages::foot(&mut out, cfg);
    page(status, out)
}

/// `POST /admin/admins/add`.
async fn add_admin(web: &Arc<Web>, me: (&Admin, &str), body: &[u8], now: i64) -> Answer {
    let cfg = web.cfg.clone();
    if !me.0.can_manage_admins() {
        return message(&cfg, StatusCode::FORBIDDEN, "操作を受け付けられません", "管理者の追加は全地区の管理者が行います。");
    }
    let login = form::value(body, "login").unwrap_or_default().trim().to_string();
    let email = form::value(body, "email").unwrap_or_default().trim().to_string();
    let pw = form::value(body, "password").unwrap_or_default().to_string();
    let refuse = |e: &str| admins(web, me, Some(Err(e.to_string())), StatusCode::BAD_REQUEST);
    if !valid_login(&login) {
        return refuse("IDは64文字までの英数字と . _ - で入力してください。").await;
    }
    let Ok(email) = mamoru_core::EmailAddress::parse(&email) else {
        return refuse("登録アドレスが正しくありません。").await;
    };
    let Ok(districts) = form::districts(body, &cfg) else {
        return refuse("地区の選び方が正しくありません。").await;
    };
    if password::check_new(&pw).is_err() {
        return refuse(&format!("パスワードは{}文字以上で、改行などを含めないでください。", password::MIN_LEN)).await;
    }
    let Some(salt) = random(web, 16) else { return busy(&cfg) };
    let Some(permit) = password_check(web) else { return checks_busy(&cfg) };
    let actor = format!("admin:{}", me.0.login);
    let l = login.clone();
    let added = blocking(web, move |w| {
        let _permit = permit;
        let mut s = [0u8; 16];
        s.copy_from_slice(&salt);
        // check_new passed, so hashing fails only if argon2 itself does.
        let Ok(hash) = password::hash(&pw, &s) else { return Ok(None) };
        w.store.add_admin(&l, &email, &hash, &districts, &actor, now).map(Some)
    })
    .await;
    match added {
        Ok(Some(AdminAdded::Added(_))) => {
            tracing::info!(admin = %login, by = %me.0.login, "admin added from the web panel");
            admins(web, me, Some(Ok(format!("管理者 {login} を追加しました。"))), StatusCode::OK).await
        }
        Ok(Some(AdminAdded::LoginTaken)) => refuse("そのIDはすでに使われています。").await,
        Ok(None) => busy(&cfg),
        Err(a) => a,
    }
}

/// `POST /admin/admins/disable` and `/admin/admins/enable`.
async fn set_admin_active(web: &Arc<Web>, me: (&Admin, &str), body: &[u8], now: i64, enable: bool) -> Answer {
    let cfg = web.cfg.clone();
    let verb = if enable { "再開" } else { "停止" };
    if !me.0.can_manage_admins() {
        let why = format!("管理者の{verb}は全地区の管理者が行います。");
        return message(&cfg, StatusCode::FORBIDDEN, "操作を受け付けられません", &why);
    }
    let login = form::value(body, "login").unwrap_or_default().trim().to_string();
    if !enable && login == me.0.login {
        return admins(web, me, Some(Err("自分自身は停止できません。".into())), StatusCode::BAD_REQUEST).await;
    }
    let actor = format!("admin:{}", me.0.login);
    let l = login.clone();
    let changed = blocking(web, move |w| if enable { w.store.enable_admin(&l, &actor, now) } else { w.store.disable_admin(&l, &actor, now) }).await;
    match changed {
        Ok(true) => {
            tracing::info!(admin = %login, by = %me.0.login, enable, "admin enabled or disabled from the web panel");
            let done = if enable {
                format!("管理者 {login} を再開しました。")
            } else {
                format!("管理者 {login} を停止しました。ログイン中の画面も使えなくなります。")
            };
            admins(web, me, Some(Ok(done)), StatusCode::OK).await
        }
        Ok(false) => {
            let missing = if enable { "停止中のその管理者は見つかりません。" } else { "その管理者は見つかりません。" };
            admins(web, me, Some(Err(missing.into())), StatusCode::NOT_FOUND).await
        }
        Err(a) => a,
    }
}

fn password_page(cfg: &Config, me: (&Admin, &str), notice: Option<Result<&str, &str>>) -> String {
    let mut out = String::new();
    head(&mut out, cfg, "パスワード変更", Some(me));
    match notice {
        Some(Ok(done)) => pages::p(&mut out, done),
        Some(Err(e)) => pages::error(&mut out, e),
        None => {}
    }
    out.push_str("<form method=\"post\" action=\"/admin/password\">");
    csrf_field(&mut out, me.1);
    out.push_str(&format!(
        "<label for=\"current\">今のパスワード</label><input type=\"password\" id=\"current\" name=\"current\" required maxlength=\"256\" autocomplete=\"current-password\">\
         <label for=\"new\">新しいパスワード（{min}文字以上）</label><input type=\"password\" id=\"new\" name=\"new\" required minlength=\"{min}\" maxlength=\"256\" autocomplete=\"new-password\">\
         <label for=\"again\">新しいパスワード（確認）</label><input type=\"password\" id=\"again\" name=\"again\" required minlength=\"{min}\" maxlength=\"256\" autocomplete=\"new-password\">\
         <button type=\"submit\">変更する</button></form>\n",
        min = password::MIN_LEN
    ));
    pages::p(&mut out, "変更すると、ほかの端末でのログインは終了します。");
    pages::foot(&mut out, cfg);
    out
}

/// `POST /admin/password`: the admin's own password; the current one is
/// asked again, so a session left open on a shared PC cannot take the
/// account over. Other sessions of this admin end; this one stays.
async fn change_password(web: &Arc<Web>, me: (&Admin, &str), body: &[u8], sid: [u8; 32], client: [u8; 32], now: i64) -> Answer {
    let cfg = web.cfg.clone();
    let current = form::value(body, "current").unwrap_or_default().to_string();
    let new = form::value(body, "new").unwrap_or_default().to_string();
    let again = form::value(body, "again").unwrap_or_default().to_string();
    if new != again {
        return page(StatusCode::BAD_REQUEST, password_page(&cfg, me, Some(Err("新しいパスワードが確認欄と一致しません。"))));
    }
    if password::check_new(&new).is_err() {
        let e = format!("新しいパスワードは{}文字以上で、改行などを含めないでください。", password::MIN_LEN);
        return page(StatusCode::BAD_REQUEST, password_page(&cfg, me, Some(Err(&e))));
    }
    let Some(salt) = random(web, 16) else { return busy(&cfg) };
    let Some(permit) = password_check(web) else { return checks_busy(&cfg) };
    let login = me.0.login.clone();
    let changed = blocking(web, move |w| {
        let _permit = permit;
        // A guess at the current password counts like a login attempt.
        if !w.store.take_login_attempt(&login, &client, now)? {
            return Ok(Some(false));
        }
        let Some((_, hash)) = w.store.admin_credentials(&login)? else { return Ok(None) };
        if !password::verify(&current, &hash) {
            w.store.record_login_failure(&login, now)?;
            return Ok(Some(false));
        }
        w.store.login_attempt_succeeded(&login, &client, now)?;
        let mut s = [0u8; 16];
        s.copy_from_slice(&salt);
        let Ok(new_hash) = password::hash(&new, &s) else { return Ok(None) };
        let actor = format!("admin:{login}");
        Ok(Some(w.store.set_admin_password(&login, &new_hash, Some(&sid), &actor, now)?))
    })
    .await;
    match changed {
        Ok(Some(true)) => page(StatusCode::OK, password_page(&cfg, me, Some(Ok("パスワードを変更しました。")))),
        Ok(Some(false)) => page(StatusCode::BAD_REQUEST, password_page(&cfg, me, Some(Err("今のパスワードが違います。")))),
        Ok(None) => busy(&cfg),
        Err(a) => a,
    }
}

async fn audit(web: &Arc<Web>, me: (&Admin, &str)) -> Answer {
    let cfg = &web.cfg;
    let log = match blocking(web, |w| w.store.audit_log(200)).await {
        Ok(l) => l,
        Err(a) => return a,
    };
    let mut out = String::new();
    head(&mut out, cfg, "操作記録", Some(me));
    out.push_str("<table><tr><th>日時</th><th>誰が</th><th>操作</th><th>内容</th></tr>\n");
    for (at, actor, action, detail) in log {
        out.push_str("<tr><td>");
        escape(&mut out, &jst(at));
        out.push_str("</td><td>");
        escape(&mut out, &actor);
        out.push_str("</td><td>");
        escape(&mut out, &action);
        out.push_str("</td><td>");
        escape(&mut out, &detail);
        out.push_str("</td></tr>\n");
    }
    out.push_str("</table>\n");
    pages::foot(&mut out, cfg);
    page(StatusCode::OK, out)
}
