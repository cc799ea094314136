//! Every page's HTML, as maud templates, and the one stylesheet.
//!
//! The pages are small, Japanese, phone-first and work with no JavaScript at
//! all (the CSP forbids scripts). maud escapes everything interpolated,
//! configuration values included, and [`document`], which every page ends
//! in, applies the character rule of [`crate::text`] to the whole page. No
//! page holds raw markup (`PreEscaped`).
//!
//! Pages that depend only on the configuration are rendered once into
//! [`StaticPages`] when the server starts; only the district form, the
//! completion page and the form with an error are rendered per request.

pub mod confirm;
pub mod districts;
pub mod manage;
pub mod reception;

use hyper::body::Bytes;
use maud::{DOCTYPE, Markup, html};
use mamoru_core::Config;
use mamoru_core::config::District;
use mamoru_store::Preferences;

use crate::text;
/// The stylesheet served at `/style.css`.
pub const STYLE: &str = "\
*{box-sizing:border-box}\
html{-webkit-text-size-adjust:100%}\
body{margin:0 auto;max-width:40rem;padding:1rem;font:1.0625rem/1.7 system-ui,-apple-system,\"Hiragino Sans\",\"Noto Sans JP\",sans-serif;color:#1a1a1a;background:#fff;overflow-wrap:anywhere}\
.brand{margin:0;font-weight:bold}\
.brand a{color:#0b5394;text-decoration:none}\
h1{font-size:1.4rem;line-height:1.4;margin:1rem 0}\
h2{font-size:1.15rem;margin:2rem 0 .5rem}\
a{color:#0b5394}\
.mail{display:block;padding:.9rem 1rem;border:2px solid #0b5394;border-radius:.5rem;text-align:center;font-size:1.2rem;font-weight:bold;text-decoration:none}\
label{display:block;font-weight:bold}\
input[type=email]{display:block;width:100%;min-height:3rem;margin:.4rem 0 0;padding:.5rem .75rem;font-size:1.1rem;border:1px solid #767676;border-radius:.4rem}\
fieldset{border:0;margin:0;padding:0}\
fieldset+fieldset,input+fieldset{margin-top:1.5rem}\
legend{font-weight:bold;margin-bottom:.25rem}\
.check{display:flex;align-items:center;gap:.75rem;min-height:3rem;margin:.5rem 0;padding:.5rem .9rem;border:1px solid #c4c4c4;border-radius:.5rem;font-weight:normal}\
.check input{width:1.5rem;height:1.5rem;margin:0;flex:none}\
button{display:block;width:100%;min-height:3.25rem;margin:1.25rem 0;padding:.75rem;font:inherit;font-size:1.15rem;font-weight:bold;color:#fff;background:#0b5394;border:0;border-radius:.5rem}\
button.danger{background:#b00020}\
.qr{text-align:center;margin:1.5rem 0}\
.qr svg{width:60%;max-width:18rem;height:auto}\
@media print{header,footer,.noprint{display:none}.mail{border:0}}\
ol.steps li{margin:.4rem 0}\
.error{padding:.75rem 1rem;border-left:.3rem solid #b00020;background:#fdecee;color:#7a0016}\
pre.alert{white-space:pre-wrap;padding:.75rem 1rem;border:1px solid #c4c4c4;border-radius:.5rem;background:#fafafa;font:inherit}\
article.alert{margin:1.5rem 0}\
.meta,.filter{font-size:.9rem;color:#555}\
nav.admin{display:flex;flex-wrap:wrap;gap:.5rem 1rem;font-size:.95rem}\
form.inline{display:inline}\
button.link{display:inline;width:auto;min-height:0;margin:0;padding:0;background:none;color:#0b5394;font-size:.95rem;font-weight:normal;text-decoration:underline}\
input[type=text],input[type=password],select,textarea{display:block;width:100%;min-height:3rem;margin:.4rem 0 1rem;padding:.5rem .75rem;font:inherit;border:1px solid #767676;border-radius:.4rem}\
table{border-collapse:collapse;width:100%;font-size:.9rem}\
th,td{border-bottom:1px solid #ddd;padding:.3rem;text-align:left}\
footer{margin-top:3rem;padding-top:1rem;border-top:1px solid #ddd;font-size:.9rem}\
";

/// Appends `s` as a page carries it: the markup characters escaped (maud's
/// escaping: `&`, `<`, `>`, `"`; attributes are always double-quoted) and
/// the character rule of [`crate::text`] applied, so the result is XML
/// character data too. The same two steps as every [`document`].
pub fn escape(out: &mut String, s: &str) {
    out.push_str(&text::clean(&html! { (s) }.into_string()));
}

/// Pages that only depend on the configuration, rendered once.
pub struct StaticPages {
    pub index: Bytes,
    pub register_sent: Bytes,
    pub link_invalid: Bytes,
    pub link_gone: Bytes,
    pub busy: Bytes,
    pub not_found: Bytes,
    pub method_not_allowed: Bytes,
    pub too_large: Bytes,
    pub bad_request: Bytes,
    pub manage_gone: Bytes,
    pub deleted: Bytes,
    pub style: Bytes,
}

impl StaticPages {
    pub fn new(cfg: &Config) -> Self {
        Self {
            index: index(cfg, None, "").into(),
            register_sent: register_sent(cfg).into(),
            link_invalid: link_invalid(cfg).into(),
            link_gone: link_gone(cfg).into(),
            busy: busy(cfg).into(),
            not_found: message(cfg, "ページが見つかりません", &["アドレスが正しいか確かめてください。"]).into(),
            method_not_allowed: message(cfg, "この操作はできません", &["トップページからやり直してください。"]).into(),
            too_large: message(cfg, "送信された内容が大きすぎます", &["トップページからやり直してください。"]).into(),
            bad_request: message(cfg, "リクエストが正しくありません", &["トップページからやり直してください。"]).into(),
            manage_gone: manage::manage_gone(cfg).into(),
            deleted: manage::deleted(cfg).into(),
            style: Bytes::from_static(STYLE.as_bytes()),
        }
    }
}

/// The whole document around `main`: head, brand header, footer. Every page
/// is made here, and here the character rule is applied to all of it (the
/// markup itself holds no character the rule changes).
pub(crate) fn document(cfg: &Config, title: &str, main: Markup) -> String {
    document_with(cfg, title, None, main)
}

/// [`document`] that reloads itself every `secs` seconds (a meta refresh:
/// pages here have no script).
pub(crate) fn document_refreshing(cfg: &Config, title: &str, secs: u32, main: Markup) -> String {
    document_with(cfg, title, Some(secs), main)
}

fn document_with(cfg: &Config, title: &str, refresh: Option<u32>, main: Markup) -> String {
    let page = html! {
        (DOCTYPE)
        html lang="ja" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="format-detection" content="telephone=no";
                @if let Some(secs) = refresh { meta http-equiv="refresh" content=(secs); }
                link rel="stylesheet" href="/style.css";
                title { (title) " - " (cfg.service_name) }
            }
            body {
                header { p class="brand" { a href="/" { (cfg.service_name) } } }
                main { (main) }
                footer { a href="/" { (cfg.service_name) } " 子どもの安全に関するお知らせメール" }
            }
        }
    };
    let mut out = text::clean_owned(page.into_string());
    out.push('\n');
    out
}

/// An error or warning line, read out by screen readers.
pub(crate) fn error(text: &str) -> Markup {
    html! { p class="error" role="alert" { (text) } }
}

/// The registration address as a big `mailto:` link.
fn mail_link(cfg: &Config) -> Markup {
    let ans = cfg.register_address();
    html! { p { a class="mail" href={ "mailto:" (ans) } { (ans) } } }
}

fn ttl_hours(cfg: &Config) -> i64 {
    (cfg.tokens.register_ttl_secs + 3599) / 3600
}

/// One checkbox per district, `checked` ones pre-checked.
pub(crate) fn district_boxes<'a>(districts: impl IntoIterator<Item = &'a District>, checked: &[u32]) -> Markup {
    html! {
        @for d in districts {
            label class="check" {
                input type="checkbox" name="district" value=(d.id) checked[checked.contains(&d.id)];
                (d.name)
            }
        }
    }
}

/// The kinds (a ticked box is a kind received) and the quiet hours (two
/// selects, half-hourly, なし for none) of the registration and manage
/// forms; plain controls, no script, for feature phones.
pub(crate) fn preference_fields(cfg: &Config, prefs: &Preferences) -> Markup {
    let (start, end) = prefs.quiet.map_or((None, None), |(a, b)| (Some(a), Some(b)));
    html! {
        input type="hidden" name="prefs" value="1";
        @if !cfg.alerts.kinds.is_empty() {
            fieldset {
                legend { "受け取るお知らせの種類" }
                @for k in &cfg.alerts.kinds {
                    label class="check" { input type="checkbox" name="kind" value=(k) checked[!prefs.kinds_off.contains(k)]; (k) }
                }
            }
        }
        fieldset {
            legend { "受け取らない時間帯" }
            p { "この時間帯のお知らせは、時間帯が終わってから届きます。「緊急」のお知らせは、この時間帯にもすぐ届きます。" }
            label for="quiet_start" { "始まり" }
            select id="quiet_start" name="quiet_start" { (time_options(start)) }
            label for="quiet_end" { "終わり" }
            select id="quiet_end" name="quiet_end" { (time_options(end)) }
        }
    }
}

fn time_options(selected: Option<i64>) -> Markup {
    html! {
        option value="" selected[selected.is_none()] { "なし" }
        @for m in (0..1440).step_by(crate::form::QUIET_STEP as usize) {
            option value=(m) selected[selected == Some(m)] { (clock(m)) }
        }
    }
}

/// `22:00` for minute 1320 of the day.
pub(crate) fn clock(minute: i64) -> String {
    format!("{}:{:02}", minute / 60, minute % 60)
}

/// What was chosen besides the districts, for the pages after a save.
pub(crate) fn preference_summary(prefs: &Preferences) -> Markup {
    html! {
        @if !prefs.kinds_off.is_empty() { p { "受け取らない種類: " (prefs.kinds_off.join("・")) } }
        @if let Some((a, b)) = prefs.quiet {
            p { "受け取らない時間帯: " (clock(a)) "〜" (clock(b)) "（その間のお知らせは終わってから届きます。緊急のお知らせはすぐ届きます）" }
        }
    }
}

/// A list of district names.
fn district_list(districts: &[&District]) -> Markup {
    html! { ul { @for d in districts { li { (d.name) } } } }
}

/// The top page: how to subscribe by empty mail, and the PC form. `error`
/// and `value` are for showing the form again after a bad address.
pub fn index(cfg: &Config, error_text: Option<&str>, value: &str) -> String {
    let name = &cfg.service_name;
    document(cfg, "登録のご案内", html! {
        h1 { (name) "に登録する" }
        p { (name) "は、不審者情報など子どもの安全に関わるお知らせを、登録した方にメールでお届けします。" }
        h2 { "携帯電話・スマートフォンから" }
        p { "次のアドレスへ空メール(件名も本文もなし)を送ってください。" }
        (mail_link(cfg))
        ol {
            li { "すぐに「登録受付」メールが届きます。" }
            li { "メールのリンクを開き、お知らせを受け取りたい地区を選んで「登録する」を押します。" }
            li { "「登録完了」メールが届いたら登録は終わりです。" }
        }
        p { "登録受付メールのリンクは" (ttl_hours(cfg)) "時間有効で、一度だけ使えます。期限が切れたときは、もう一度空メールを送ってください。" }
        p { "迷惑メール対策をしている場合は、「" (cfg.domain) "」からのメールを受け取れるように設定してください。" }
        h2 id="help" { "登録受付メールが届かないとき" }
        ol {
            li { "迷惑メールのフォルダを見てください。" }
            li { "「" (cfg.domain) "」を受信許可に設定してください。" }
            li { "下の受信テストで、届くか確かめてください。" }
            li { "届くようになったら、もう一度空メールを送ってください。" }
        }
        p { "設定の方法(印刷できます):" }
        (reception::help_links())
        h2 id="test" { "受信テスト" }
        p { "お使いのアドレスへテストメールを送ります。届くかどうかを確かめられます。登録はされません。" }
        (reception::test_form(""))
        h2 id="pc" { "パソコンから" }
        p { "携帯電話のメールアドレスを入力してください。そのアドレスへ登録受付メールを送ります。" }
        @if let Some(text) = error_text { (error(text)) }
        form method="post" action="/register" {
            label for="address" { "メールアドレス" }
            input id="address" name="address" type="email" inputmode="email" autocomplete="email"
                autocapitalize="none" spellcheck="false" required maxlength="254" value=(value);
            button type="submit" { "登録受付メールを送る" }
        }
        h2 { "ご利用について" }
        ul {
            li { "登録は無料です(メールの通信料はご負担ください)。" }
            li { "メールアドレスは、このお知らせの配信のためだけに使います。" }
            li { "地区の変更や登録の削除は、もう一度空メールを送るとできます。" }
        }
        p { a href="/d/" { "地区別の登録案内(印刷用・QRコード)" } }
    })
}

/// The answer to the PC form: the same whether the address was new, known or
/// refused by a rate limit.
pub fn register_sent(cfg: &Config) -> String {
    document(cfg, "登録受付メールを送りました", html! {
        h1 { "登録受付メールを送りました" }
        p { "入力されたアドレスへ「登録受付」メールを送りました。メールのリンクを開いて、お知らせを受け取りたい地区を選んでください。" }
        p {
            "数分たっても届かないときは、「" (cfg.domain) "」からのメールを受け取れるように設定してから、しばらく待ってもう一度お試しいただくか、携帯電話から次のアドレスへ空メールを送ってください。"
        }
        (mail_link(cfg))
        p { "お心当たりのない方に届いたメールは、リンクを開かなければ登録されません。" }
    })
}

/// A token page whose link does not verify.
pub fn link_invalid(cfg: &Config) -> String {
    document(cfg, "このリンクは使えません", html! {
        h1 { "このリンクは使えません" }
        p { "リンクが正しくありません。メールのリンクが途中で切れていないか確かめてください。" }
        p { "登録するには、もう一度、次のアドレスへ空メールを送ってください。新しいリンクをお送りします。" }
        (mail_link(cfg))
    })
}

/// A token page whose link has expired or was already used.
pub fn link_gone(cfg: &Config) -> String {
    document(cfg, "このリンクは期限切れか使用済みです", html! {
        h1 { "このリンクは期限切れか、すでに使われています" }
        p { "登録のリンクは" (ttl_hours(cfg)) "時間有効で、一度だけ使えます。" }
        p { "登録をやり直すときや地区を変えるときは、もう一度、次のアドレスへ空メールを送ってください。新しいリンクをお送りします。" }
        (mail_link(cfg))
    })
}

/// A short page with a title and a few paragraphs (errors and the like).
pub(crate) fn message(cfg: &Config, title: &str, lines: &[&str]) -> String {
    document(cfg, title, html! {
        h1 { (title) }
        @for line in lines { p { (line) } }
        p { a href="/" { "トップページへ" } }
    })
}

/// The store or the blocking pool is in trouble: try again later.
pub(crate) fn busy(cfg: &Config) -> String {
    message(cfg, "ただいま混み合っています", &["しばらくしてからもう一度お試しください。"])
}

/// The district form of a live registration link. `checked` are pre-checked;
/// `token` has been verified (base64url) but is escaped all the same.
pub fn choose(cfg: &Config, token: &str, checked: &[u32], prefs: &Preferences, error_text: Option<&str>) -> String {
    document(cfg, "地区を選んでください", html! {
        h1 { "受け取る地区を選んでください" }
        p { "お知らせを受け取りたい地区にチェックを入れて、「登録する」を押してください。いくつでも選べます。" }
        @if let Some(text) = error_text { (error(text)) }
        form method="post" action={ "/r/" (token) } {
            fieldset {
                legend { "地区" }
                (district_boxes(&cfg.districts, checked))
            }
            (preference_fields(cfg, prefs))
            button type="submit" { "登録する" }
        }
    })
}

/// After a successful registration.
pub fn completed(cfg: &Config, districts: &[&District], prefs: &Preferences) -> String {
    document(cfg, "登録が完了しました", html! {
        h1 { "登録が完了しました" }
        p { "次の地区のお知らせをメールでお届けします。" }
        (district_list(districts))
        (preference_summary(prefs))
        p { "確認のため「登録完了」メールをお送りします。" }
        p { "地区を変えるときは、もう一度、次のアドレスへ空メールを送ってください。" }
        (mail_link(cfg))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &str) -> String {
        let mut out = String::new();
        escape(&mut out, s);
        out
    }

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(esc(""), "");
        assert_eq!(esc("中央地区"), "中央地区");
        assert_eq!(esc("<script>alert('x')</script>"), "&lt;script&gt;alert('x')&lt;/script&gt;");
        assert_eq!(esc("a\"b&c"), "a&quot;b&amp;c");
        assert_eq!(esc("&amp;"), "&amp;amp;");
        assert_eq!(esc("末尾<"), "末尾&lt;");
        assert_eq!(esc("公園で\u{1}声かけ\u{b}\u{ffff}"), "公園で声かけ\n");
    }

    fn cfg() -> Config {
        let mut cfg = Config::default();
        cfg.service_name = "見守り<ネット>".into();
        cfg
    }

    #[test]
    fn choose_has_one_checkbox_per_district_and_prechecks() {
        let cfg = cfg();
        let page = choose(&cfg, "TOK\"EN", &[1, 3], &Preferences::default(), None);
        assert_eq!(page.matches("type=\"checkbox\"").count(), 10 + 3, "districts and kinds");
        assert_eq!(page.matches(" checked>").count(), 2 + 3, "every kind is ticked for a new registration");
        assert!(page.contains("<option value=\"\" selected>なし</option>"), "no quiet hours by default: {page}");
        assert!(page.contains("value=\"1\" checked>中央地区</label>"), "{page}");
        assert!(page.contains("value=\"3\" checked>昭和地区</label>"), "{page}");
        assert!(page.contains("value=\"2\">天応・吉浦地区</label>"), "{page}");
        assert!(page.contains("action=\"/r/TOK&quot;EN\""), "{page}");
        assert!(page.contains("登録する</button>"));
        assert!(!page.contains("role=\"alert\""));
        assert!(choose(&cfg, "t", &[], &Preferences::default(), Some("地区を選んでください")).contains("role=\"alert\""));
    }

    #[test]
    fn every_page_is_escaped_phone_friendly_and_script_free() {
        let cfg = cfg();
        let pages = StaticPages::new(&cfg);
        let dynamic = [
            index(&cfg, Some("<b>"), "\"><script>"),
            choose(&cfg, "t", &[], &Preferences::default(), None),
            completed(&cfg, &[&cfg.districts[0]], &Preferences::default()),
        ];
        let all = [
            &pages.index, &pages.register_sent, &pages.link_invalid, &pages.link_gone, &pages.busy,
            &pages.not_found, &pages.method_not_allowed, &pages.too_large, &pages.bad_request,
        ]
        .into_iter()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .chain(dynamic);
        let mut n = 0;
        for page in all {
            n += 1;
            assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
            assert!(page.contains("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"));
            assert!(page.contains("<link rel=\"stylesheet\" href=\"/style.css\">"));
            assert!(!page.to_ascii_lowercase().contains("<script"), "{page}");
            assert!(!page.contains("<ネット>") && page.contains("見守り&lt;ネット&gt;"), "{page}");
            assert!(page.ends_with("</html>\n"));
            assert!(!page.contains("<p class=\"error\"") || page.contains("&lt;b&gt;"), "{page}");
        }
        assert_eq!(n, 12);
    }

    #[test]
    fn index_explains_the_empty_mail() {
        let page = index(&Config::default(), None, "");
        assert!(index(&cfg(), Some("\u{1}<b>"), "\"><script>\u{7}").contains("value=\"&quot;&gt;&lt;script&gt;\""));
        assert!(page.contains("href=\"mailto:ans@localhost\""));
        assert!(page.contains("空メール"));
        assert!(page.contains("無料"));
        assert!(page.contains("24時間"));
        assert!(page.contains("action=\"/register\"") && page.contains("name=\"address\""));
    }
}
