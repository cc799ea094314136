//! The admin panel's pages, as maud templates. Handlers fetch and decide;
//! these only show.

use maud::{Markup, html};
use mamoru_core::alert::{AlertContent, CarrierCounts, FollowupKind, carrier_of, district_label};
use mamoru_core::{Config, password};
use mamoru_store::admins::Admin;
use mamoru_store::alerts::AlertRow;
use mamoru_store::bounces::BounceStat;
use mamoru_store::relay::{LearnedLimits, PushBackSignal};
use mamoru_store::states::AlertState;

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
    /// What each carrier pool's relay learned about its carrier.
    pub learned: &'a [LearnedLimits],
    /// Deferred rows per domain and reply code.
    pub deferred: &'a [mamoru_store::problems::Deferred],
    /// Registrations of the last days never completed, per domain.
    pub unfinished: &'a [mamoru_store::problems::Unfinished],
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
        // What waits, and what the carriers answered: a carrier deferring
        // everything with one code, or many registrations of one domain
        // never completed, is the sign that it filters our mail.
        h2 { "再送待ち（キャリア・応答コード別）" }
        @if d.deferred.is_empty() {
            p { "ありません。" }
        } @else {
            table {
                tr { th { "キャリア" } th { "ドメイン" } th { "応答" } th { "件数" } }
                @for x in d.deferred { tr { td { (carrier_of(&x.domain)) } td { (x.domain) } td { (x.code) } td { (x.count) } } }
            }
        }
        h2 { "完了していない登録（直近7日、ドメイン別）" }
        @if d.unfinished.is_empty() {
            p { "ありません。" }
        } @else {
            p class="meta" { "登録受付メールが届いていない可能性があります。" }
            table {
                tr { th { "キャリア" } th { "ドメイン" } th { "未完了" } th { "完了" } }
                @for u in d.unfinished { tr { td { (carrier_of(&u.domain)) } td { (u.domain) } td { (u.pending) } td { (u.completed) } } }
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
        // The carriers publish no limits; the relay learns each one's from
        // its refusals. A learned value far below the configured one says
        // that carrier is holding our mail back.
        h2 { "キャリアごとの送信の調整" }
        @if d.learned.is_empty() {
            p { "まだ記録がありません（配信すると表示されます）。" }
        } @else {
            table {
                tr { th { "キャリア" } th { "同時接続" } th { "送信ペース（通/秒）" } th { "最後の規制応答" } }
                @for l in d.learned {
                    tr {
                        td { (l.pool) }
                        td { (l.connections) " / " (l.connections_ceiling) }
                        td { (pace(l.pace)) " / " (pace(l.pace_ceiling)) }
                        td {
                            @match &l.last_push_back {
                                Some(p) => { (crate::archive::jst(p.at)) " " (push_back_label(p.signal)) " (" (p.code) @if !p.enhanced.is_empty() { " " (p.enhanced) } ")" }
                                None => "なし",
                            }
                        }
                    }
                }
            }
            p { "左が学習した値、右が設定の上限です。" }
        }
    })
}

/// A pace for the table: `0` is "no limit".
fn pace(per_second: f64) -> String {
    if per_second <= 0.0 { "制限なし".to_string() } else { format!("{per_second:.1}") }
}

fn push_back_label(signal: PushBackSignal) -> &'static str {
    match signal {
        PushBackSignal::Sessions => "接続数の超過",
        PushBackSignal::Pace => "送信ペースの超過",
    }
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
    pub test: bool,
    pub confirm: bool,
    pub urgent: bool,
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
            label class="check" { input type="checkbox" name="urgent" value="1" checked[c.urgent]; "緊急（件名に【緊急】。受け取らない時間帯を設定した方にもすぐ届けます）" }
            label class="check" { input type="checkbox" name="test" value="1" checked[c.test]; "テスト配信（件名に【テスト配信】）" }
            label class="check" { input type="checkbox" name="confirm" value="1" checked[c.confirm]; "「確認しました」リンクを付ける（地区・キャリア別の数だけを数え、誰が押したかは記録しません）" }
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
    /// Who a draft would reach if published now.
    pub audience: &'a mamoru_store::alerts::Audience,
    /// Confirmed / delivered per district and carrier (alerts that ask).
    pub confirms: &'a [mamoru_store::confirm::ConfirmRow],
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
    let kind = r.followup_kind;
    match (r.state, kind, r.incident_state) {
        (AlertState::Published, Some(k), _) => format!("{}配信済", k.mark()),
        (AlertState::Published, None, Some(k)) => format!("配信済・{}", k.label()),
        (AlertState::Published, None, None) => "配信済".into(),
        (_, Some(k), _) => format!("{}未配信", k.mark()),
        _ => "未配信".into(),
    }
}

pub(super) fn alert(cfg: &Config, me: Me<'_>, v: &AlertView<'_>) -> String {
    let row = v.row;
    let title = if row.state == AlertState::Draft { "配信の確認" } else { "配信の詳細" };
    layout(cfg, title, Some(me), html! {
        h2 { "件名" }
        p { (v.content.subject) }
        h2 { "本文" }
        pre class="alert" { (v.content.body) }
        p { "番号: " (row.id) " ／ 状態: " (state_label(row)) }
        @if let Some(report) = row.followup_of {
            p { a href={ "/admin/alerts/" (report) } { "元のお知らせ（" (report) "番）" } }
        }
        @if row.state == AlertState::Draft {
            @let cc = CarrierCounts::from_domains(&v.audience.domains);
            @let parts: Vec<String> = cc.0.iter().map(|(c, n)| format!("{c} {n}")).collect();
            p { "配信先: " (cc.total()) "件（" (parts.join("、")) "）" }
            @for line in v.audience.reach.lines() { p { (line) } }
            @if row.followup_of.is_some() { p { "元のお知らせを受け取った方のうち、登録を続けている方に届きます。" } }
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
            @if row.ask_confirm { (confirm_table(cfg, v.confirms)) }
        }
        (timeline(row, v.delivered))
        @if !v.followups.is_empty() {
            h2 { "続報" }
            ul {
                @for f in v.followups {
                    li {
                        a href={ "/admin/alerts/" (f.id) } { (f.followup_kind.map(FollowupKind::mark).unwrap_or_default()) }
                        " " (jst(f.published_at)) " ／ " (f.recipients) "件"
                    }
                }
            }
        }
        @if row.state == AlertState::Published && row.followup_of.is_none() && row.incident_state != Some(FollowupKind::Retracted) {
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

/// 確認しました per district and carrier: confirmed / delivered, and the
/// share (a carrier far below the others is the sign of a filter).
fn confirm_table(cfg: &Config, rows: &[mamoru_store::confirm::ConfirmRow]) -> Markup {
    let district = |id: u32| cfg.district(id).map(|d| d.name.clone()).unwrap_or_else(|| "（地区変更・削除）".into());
    html! {
        h2 { "確認しました（地区・キャリア別）" }
        p class="meta" { "数だけを記録しています。誰が押したかは記録していません。" }
        table {
            tr { th { "地区" } th { "キャリア" } th { "確認" } th { "送信済" } th { "割合" } }
            @for r in rows {
                tr {
                    td { (district(r.district)) }
                    td { (r.carrier) }
                    td { (r.confirmed) }
                    td { (r.delivered) }
                    td { @if r.delivered > 0 { (r.confirmed * 100 / r.delivered) "%" } @else { "-" } }
                }
            }
        }
    }
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
            @for r in rows.iter().filter(|r| r.state != AlertState::Rejected) {
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

#[cfg(test)]
mod tests {
    use mamoru_core::{Config, EmailAddress};
    use mamoru_store::admins::Admin;
    use mamoru_store::confirm::ConfirmRow;
    use mamoru_store::problems::{Deferred, Unfinished};

    use super::*;

    fn admin() -> Admin {
        Admin { id: mamoru_core::AdminId::new(1), login: "chuo".into(), email: EmailAddress::parse("staff@city.test").unwrap(), districts: vec![], active: true }
    }

    #[test]
    fn the_dashboard_shows_what_waits_why_and_the_registrations_never_completed() {
        let cfg = Config::default();
        let a = admin();
        let deferred = [Deferred { domain: "ezweb.ne.jp".into(), code: "421 4.7.0".into(), count: 12 }];
        let unfinished = [Unfinished { domain: "au.com".into(), pending: 7, completed: 1 }];
        let suspended = [("unknown-user".to_string(), 2)];
        let d = Dashboard { counts: &[], suspended: &suspended, bounces: &[], learned: &[], deferred: &deferred, unfinished: &unfinished };
        let page = dashboard(&cfg, (&a, "csrf"), &d);
        assert!(page.contains("<td>au</td><td>ezweb.ne.jp</td><td>421 4.7.0</td><td>12</td>"), "{page}");
        assert!(page.contains("<td>au</td><td>au.com</td><td>7</td><td>1</td>"), "{page}");
        assert!(page.contains("宛先不明") && page.contains("<td>2</td>"), "{page}");
    }

    #[test]
    fn the_confirmation_table_shows_confirmed_over_delivered_per_district_and_carrier() {
        let cfg = Config::default();
        let rows = [
            ConfirmRow { district: 3, carrier: "docomo", delivered: 10, confirmed: 4 },
            ConfirmRow { district: 3, carrier: "au", delivered: 50, confirmed: 1 },
            ConfirmRow { district: 0, carrier: "その他", delivered: 1, confirmed: 0 },
        ];
        let html = confirm_table(&cfg, &rows).into_string();
        assert!(html.contains("<td>昭和地区</td><td>docomo</td><td>4</td><td>10</td><td>40%</td>"), "{html}");
        assert!(html.contains("<td>昭和地区</td><td>au</td><td>1</td><td>50</td><td>2%</td>"), "{html}");
        assert!(html.contains("（地区変更・削除）"), "{html}");
    }
}
