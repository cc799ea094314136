//! The admin panel's pages, as maud templates. Handlers fetch and decide;
//! these only show.

use maud::{Markup, html};
use mamoru_core::alert::{AlertContent, CarrierCounts, FollowupKind, carrier_of, district_label};
use mamoru_core::{Config, password};
use mamoru_store::admins::Admin;
use mamoru_store::alerts::AlertRow;
use mamoru_store::bounces::BounceStat;

use super::Me;
use crate::archive::jst;
use crate::pages::{document, error};

/// The carriers of the panel's tables, in their order.
const CARRIERS: [&str; 5] = ["docomo", "au", "SoftBank", "Y!mobile", "その他"];

/// An admin page: the menu (with the logout button) when logged in, the
/// title as `h1`, then `body`.
fn layout(cfg: &Config, title: &str, me: Option<Me<'_>>, body: Markup) -> String {
    document(cfg, title, html! {
        @if let Some((a, csrf)) = me {
            nav class="admin" {
                a href="/admin" { "ダッシュボード" } " "
                a href="/admin/compose" { "新規配信" } " "
                a href="/admin/alerts" { "配信履歴" } " "
                a href="/admin/admins" { "管理者" } " "
                a href="/admin/audit" { "操作記録" } " "
                a href="/admin/password" { "パスワード変更" } " "
                form method="post" action="/admin/logout" class="inline" {
                    (csrf_field(csrf))
                    button type="submit" class="link" { "ログアウト（" (a.login) "）" }
                }
            }
        }
        h1 { (title) }
        (body)
    })
}

fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// A done line or an error line above a form.
fn notice(n: Option<Result<&str, &str>>) -> Markup {
    html! {
        @match n {
            Some(Ok(done)) => p { (done) },
            Some(Err(e)) => (error(e)),
            None => {}
        }
    }
}

/// A short page: a title and one line.
pub(super) fn message(cfg: &Config, title: &str, line: &str) -> String {
    crate::pages::message(cfg, title, &[line])
}

pub(super) fn login(cfg: &Config, error_text: Option<&str>) -> String {
    layout(cfg, "管理者ログイン", None, html! {
        @if let Some(e) = error_text { (error(e)) }
        form method="post" action="/admin/login" {
            label for="login" { "ID" }
            input type="text" id="login" name="login" autocomplete="username" autocapitalize="none" required maxlength="64";
            label for="password" { "パスワード" }
            input type="password" id="password" name="password" autocomplete="current-password" required maxlength="256";
            button type="submit" { "ログイン" }
        }
    })
}

/// What the dashboard shows.
pub(super) struct Dashboard<'a> {
    /// (district, address domain, subscribers).
    pub counts: &'a [(u32, String, i64)],
    /// (suspension reason, subscribers).
    pub suspended: &'a [(String, i64)],
    pub bounces: &'a [BounceStat],
}

pub(super) fn dashboard(cfg: &Config, me: Me<'_>, d: &Dashboard<'_>) -> String {
    layout(cfg, "ダッシュボード", Some(me), html! {
        h2 { "地区・キャリア別の登録者数" }
        table {
            tr { th { "地区" } @for c in CARRIERS { th { (c) } } th { "計" } }
            @for district in &cfg.districts {
                @let rows: Vec<(String, i64)> = d.counts.iter().filter(|(id, _, _)| *id == district.id).map(|(_, dom, n)| (dom.clone(), *n)).collect();
                @let cc = CarrierCounts::from_domains(&rows);
                tr { td { (district.name) } @for (_, n) in &cc.0 { td { (n) } } td { (cc.total()) } }
            }
        }
        // Suspended subscribers get no mail until they confirm again; the
        // dashboard shows how many and why, and which carriers bounced or
        // refused our mail lately ("blocked as spam" is about us, not the
        // subscriber).
        h2 { "配信を止めている登録者" }
        @if d.suspended.is_empty() {
            p { "ありません。" }
        } @else {
            table {
                tr { th { "理由" } th { "人数" } }
                @for (reason, n) in d.suspended { tr { td { (suspension_label(reason)) } td { (n) } } }
            }
        }
        h2 { "直近30日の不達（ドメイン別）" }
        @if d.bounces.is_empty() {
            p { "ありません。" }
        } @else {
            table {
                tr { th { "ドメイン" } th { "種類" } th { "件数" } }
                @for b in d.bounces { tr { td { (b.domain) } td { (bounce_label(&b.class)) } td { (b.count) } } }
            }
        }
    })
}

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

/// The compose form, filled with what was sent when it comes back with an
/// error.
pub(super) struct Compose<'a> {
    pub title: &'a str,
    pub kind: &'a str,
    pub text: &'a str,
    /// The `発生` field as typed.
    pub occurred: &'a str,
    pub checked: &'a [u32],
}

pub(super) fn compose(cfg: &Config, me: Me<'_>, error_text: Option<&str>, c: &Compose<'_>) -> String {
    let allowed = cfg.districts.iter().filter(|d| me.0.districts.is_empty() || me.0.districts.contains(&d.id));
    layout(cfg, "新規配信", Some(me), html! {
        @if let Some(e) = error_text { (error(e)) }
        form method="post" action="/admin/compose" {
            (csrf_field(me.1))
            label for="title" { "件名" }
            input type="text" id="title" name="title" required maxlength="60" value=(c.title);
            label for="kind" { "種別" }
            select id="kind" name="kind" {
                option value="" { "（なし）" }
                @for k in &cfg.alerts.kinds { option selected[k == c.kind] { (k) } }
            }
            fieldset {
                legend { "地区" }
                (crate::pages::district_boxes(allowed, c.checked))
            }
            label for="occurred" { "発生日時（例: 12/1 13:25ごろ。空欄は「不明」）" }
            input type="text" id="occurred" name="occurred" maxlength="40" value=(c.occurred);
            label for="text" { "本文" }
            textarea id="text" name="text" rows="8" required maxlength="4000" { (c.text) }
            label class="check" { input type="checkbox" name="test" value="1"; "テスト配信（件名に【テスト配信】）" }
            button type="submit" { "確認へ進む" }
        }
    })
}

/// One alert: a draft (recipients by carrier, the author's publish button)
/// or a published one (delivery progress).
pub(super) struct AlertView<'a> {
    pub row: &'a AlertRow,
    pub content: &'a AlertContent,
    /// (carrier domain, outbox state, rows).
    pub progress: &'a [(String, String, i64)],
    /// Recipients' address domains of a draft.
    pub counts: &'a [(String, i64)],
    /// A published report's follow-ups, oldest first.
    pub followups: &'a [AlertRow],
    /// (domain, copies sent, last delivery).
    pub delivered: &'a [(String, i64, i64)],
    /// A draft whose incident is older than `[alerts] stale_incident_secs`.
    pub stale: bool,
}

/// Incident → publication → last copy delivered, per carrier.
fn timeline(row: &AlertRow, delivered: &[(String, i64, i64)]) -> Markup {
    let occurred = mamoru_core::alert::Occurred { at: row.occurred_at, flags: row.occurred_flags };
    let last = |c: &str| delivered.iter().filter(|(d, _, _)| carrier_of(d) == c).map(|(_, _, t)| *t).max();
    html! {
        h2 { "経過" }
        table {
            tr { th { "発生" } td { (occurred.label()) } }
            tr { th { "配信" } td { @if row.published_at > 0 { (jst(row.published_at)) } @else { "未配信" } } }
            @for c in CARRIERS {
                @if let Some(t) = last(c) {
                    tr { th { (c) "に最後に届けた時刻" } td { (jst(t)) " （配信から" ((t - row.published_at).max(0) / 60) "分）" } }
                }
            }
        }
    }
}

/// What the history and an alert's page say about its state.
fn state_label(r: &AlertRow) -> String {
    let kind = FollowupKind::parse(&r.followup_kind);
    match (r.state.as_str(), kind, FollowupKind::parse(&r.incident_state)) {
        ("published", Some(k), _) => format!("{}配信済", k.mark()),
        ("published", None, Some(k)) => format!("配信済・{}", k.label()),
        ("published", None, None) => "配信済".into(),
        (_, Some(k), _) => format!("{}未配信", k.mark()),
        _ => "未配信".into(),
    }
}

pub(super) fn alert(cfg: &Config, me: Me<'_>, v: &AlertView<'_>) -> String {
    let row = v.row;
    let title = if row.state == "draft" { "配信の確認" } else { "配信の詳細" };
    layout(cfg, title, Some(me), html! {
        h2 { "件名" }
        p { (v.content.subject) }
        h2 { "本文" }
        pre class="alert" { (v.content.body) }
        p { "番号: " (row.id) " ／ 状態: " (state_label(row)) }
        @if row.followup_of != 0 {
            p { a href={ "/admin/alerts/" (row.followup_of) } { "元のお知らせ（" (row.followup_of) "番）" } }
        }
        @if row.state == "draft" {
            @let cc = CarrierCounts::from_domains(v.counts);
            @let parts: Vec<String> = cc.0.iter().map(|(c, n)| format!("{c} {n}")).collect();
            p { "配信先: " (cc.total()) "件（" (parts.join("、")) "）" }
            @if row.followup_of != 0 { p { "元のお知らせを受け取った方のうち、登録を続けている方に届きます。" } }
            @if row.admin == me.0.id {
                form method="post" action={ "/admin/alerts/" (row.id) "/publish" } {
                    (csrf_field(me.1))
                    @if v.stale {
                        p class="error" { "発生から時間がたっています。今配信してよいか確かめてください。" }
                        label class="check" { input type="checkbox" name="stale" value="1" required; "発生から時間がたっていることを確認しました" }
                    }
                    button type="submit" { "配信する" }
                }
            }
        } @else {
            (progress_table(v.progress))
        }
        (timeline(row, v.delivered))
        @if !v.followups.is_empty() {
            h2 { "続報" }
            ul {
                @for f in v.followups {
                    li {
                        a href={ "/admin/alerts/" (f.id) } { (FollowupKind::parse(&f.followup_kind).map(FollowupKind::mark).unwrap_or_default()) }
                        " " (jst(f.published_at)) " ／ " (f.recipients) "件"
                    }
                }
            }
        }
        @if row.state == "published" && row.followup_of == 0 && row.incident_state != "retracted" {
            h2 { "続報・解決・取消を送る" }
            p { "このお知らせを受け取った方に、返信の形で届きます。取消は、まだ送っていない分を止めてから送ります。" }
            form method="post" action={ "/admin/alerts/" (row.id) "/followup" } {
                (csrf_field(me.1))
                label for="kind" { "種類" }
                select id="kind" name="kind" {
                    @for k in FollowupKind::ALL { option value=(k.as_str()) { (k.label()) } }
                }
                label for="text" { "本文" }
                textarea id="text" name="text" rows="6" required maxlength="4000" {}
                button type="submit" { "確認へ進む" }
            }
        }
    })
}

/// Delivery progress per carrier: queued / sent / deferred / failed / expired.
fn progress_table(progress: &[(String, String, i64)]) -> Markup {
    let states =
        [("queued", "待ち"), ("sending", "送信中"), ("sent", "送信済"), ("failed", "失敗"), ("expired", "期限切れ"), ("cancelled", "取消で停止")];
    let count = |c: &str, state: &str| -> i64 { progress.iter().filter(|(d, s, _)| carrier_of(d) == c && s == state).map(|(_, _, n)| n).sum() };
    html! {
        h2 { "配信状況" }
        table {
            tr { th { "キャリア" } @for (_, label) in states { th { (label) } } }
            @for c in CARRIERS { tr { td { (c) } @for (state, _) in states { td { (count(c, state)) } } } }
        }
    }
}

pub(super) fn history(cfg: &Config, me: Me<'_>, rows: &[AlertRow]) -> String {
    layout(cfg, "配信履歴", Some(me), html! {
        table {
            tr { th { "日時" } th { "件名" } th { "地区" } th { "状態" } th { "件数" } }
            @for r in rows.iter().filter(|r| r.state != "rejected") {
                @let when = if r.published_at > 0 { r.published_at } else { r.created_at };
                tr {
                    td { (jst(when)) }
                    td { a href={ "/admin/alerts/" (r.id) } { @if r.is_test { "【テスト】" } (r.title) } }
                    td { (district_label(cfg, &r.districts)) }
                    td { (state_label(r)) }
                    td { (r.recipients) }
                }
            }
        }
    })
}

pub(super) fn admins(cfg: &Config, me: Me<'_>, list: &[Admin], note: Option<Result<&str, &str>>) -> String {
    let manage = me.0.can_manage_admins();
    layout(cfg, "管理者", Some(me), html! {
        (notice(note))
        table {
            tr { th { "ID" } th { "アドレス" } th { "地区" } th { "状態" } @if manage { th {} } }
            @for a in list {
                tr {
                    td { (a.login) }
                    td { (a.email.masked()) }
                    td { @if a.districts.is_empty() { "全地区" } @else { (district_label(cfg, &a.districts)) } }
                    td { @if a.active { "有効" } @else { "停止" } }
                    @if manage {
                        td {
                            @if a.id != me.0.id {
                                @let (action, label) = if a.active { ("disable", "停止する") } else { ("enable", "再開する") };
                                form method="post" action={ "/admin/admins/" (action) } class="inline" {
                                    (csrf_field(me.1))
                                    input type="hidden" name="login" value=(a.login);
                                    button type="submit" class="link" { (label) }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if manage {
            h2 { "管理者を追加" }
            form method="post" action="/admin/admins/add" {
                (csrf_field(me.1))
                label for="new-login" { "ID（英数字と . _ -）" }
                input type="text" id="new-login" name="login" required maxlength="64" autocapitalize="none" autocomplete="off";
                label for="new-email" { "登録アドレス（配信確認メールの送り先）" }
                input type="email" id="new-email" name="email" required maxlength="254" autocomplete="off";
                label for="new-password" { "初期パスワード（" (password::MIN_LEN) "文字以上）" }
                input type="password" id="new-password" name="password" required minlength=(password::MIN_LEN) maxlength="256" autocomplete="new-password";
                fieldset {
                    legend { "配信できる地区（選ばなければ全地区・管理者の追加も可）" }
                    (crate::pages::district_boxes(&cfg.districts, &[]))
                }
                button type="submit" { "追加する" }
            }
        } @else {
            p { "管理者の追加と停止は、全地区の管理者が行います。" }
        }
    })
}

pub(super) fn password(cfg: &Config, me: Me<'_>, note: Option<Result<&str, &str>>) -> String {
    let min = password::MIN_LEN;
    layout(cfg, "パスワード変更", Some(me), html! {
        (notice(note))
        form method="post" action="/admin/password" {
            (csrf_field(me.1))
            label for="current" { "今のパスワード" }
            input type="password" id="current" name="current" required maxlength="256" autocomplete="current-password";
            label for="new" { "新しいパスワード（" (min) "文字以上）" }
            input type="password" id="new" name="new" required minlength=(min) maxlength="256" autocomplete="new-password";
            label for="again" { "新しいパスワード（確認）" }
            input type="password" id="again" name="again" required minlength=(min) maxlength="256" autocomplete="new-password";
            button type="submit" { "変更する" }
        }
        p { "変更すると、ほかの端末でのログインは終了します。" }
    })
}

pub(super) fn audit(cfg: &Config, me: Me<'_>, log: &[(i64, String, String, String)]) -> String {
    layout(cfg, "操作記録", Some(me), html! {
        table {
            tr { th { "日時" } th { "誰が" } th { "操作" } th { "内容" } }
            @for (at, actor, action, detail) in log { tr { td { (jst(*at)) } td { (actor) } td { (action) } td { (detail) } } }
        }
    })
}
