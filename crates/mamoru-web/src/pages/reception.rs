//! 受信テスト and the receiving help: the waiting page (`/w/`, reloads
//! itself with a meta refresh), the 届きました page (`/t/`), and a help
//! page per carrier (`/help/{slug}`, printable), with their index.

use mamoru_app::reception::TestStatus;
use mamoru_core::Config;
use mamoru_core::help::Carrier;
use maud::{Markup, html};

use super::{document, document_refreshing, error};

/// Seconds between reloads of the waiting page.
pub const REFRESH_SECS: u32 = 15;

/// The form that asks for a test mail to a typed address (the top page).
pub fn test_form(value: &str) -> Markup {
    html! {
        form method="post" action="/test" class="noprint" {
            label for="test-address" { "メールアドレス" }
            input id="test-address" name="address" type="email" inputmode="email" autocomplete="email"
                autocapitalize="none" spellcheck="false" required maxlength="254" value=(value);
            button type="submit" { "テストメールを送る" }
        }
    }
}

/// Links to every help page.
pub fn help_links() -> Markup {
    html! {
        ul {
            @for c in Carrier::ALL {
                li { a href={ "/help/" (c.slug()) } { (c.name()) } }
            }
        }
    }
}

fn steps(cfg: &Config, c: Carrier) -> Markup {
    html! {
        ol class="steps" {
            @for s in c.steps(cfg) { li { (s) } }
        }
    }
}

/// The waiting page of a test, by its state. `token` is the page's own
/// (verified) token, for the reload link.
pub fn waiting(cfg: &Config, token: &str, status: TestStatus) -> String {
    let reload = html! {
        p class="noprint" { a href={ "/w/" (token) } { "このページを更新する" } }
    };
    match status {
        TestStatus::Waiting => document_refreshing(cfg, "テストメールを送りました", REFRESH_SECS, html! {
            h1 { "テストメールを送りました" }
            p { "「受信テスト」という件名のメールが届きます。" }
            p { "届いたら、メールのリンクを開いて「届きました」を押してください。" }
            p { "このページは自動で更新されます。" }
            (reload)
        }),
        TestStatus::Arrived => document(cfg, "受信できています", html! {
            h1 { "受信できています" }
            p { "テストメールが届きました。お知らせのメールも受け取れます。" }
            p { a href="/" { "トップページへ" } }
        }),
        TestStatus::Unconfirmed(carrier) => document_refreshing(cfg, "まだ届いていません", 60, html! {
            h1 { "テストメールがまだ届いていません" }
            p { "迷惑メール対策で止められているかもしれません。" }
            p { "「" (cfg.domain) "」からのメールを受け取れるように設定してください。" }
            @match carrier {
                Some(c) => {
                    h2 { (c.name()) "の設定" }
                    (steps(cfg, c))
                    p { a href={ "/help/" (c.slug()) } { "この手順を印刷する" } }
                    h2 { "ほかの機種・アプリ" }
                    (help_links())
                }
                None => {
                    p { "お使いの携帯会社・アプリを選んでください。" }
                    (help_links())
                }
            }
            p { "設定したら、もう一度テストしてください。" }
            p class="noprint" { a href="/#test" { "受信テストをやり直す" } }
            p { "あとから届いたときは、このページに表示されます。" }
            (reload)
        }),
    }
}

/// `GET /t/{token}`: the 届きました button (a mail scanner's GET changes
/// nothing), or the answer when it was pressed already.
pub fn arrived_confirm(cfg: &Config, token: &str, already: bool) -> String {
    if already {
        return arrived_done(cfg);
    }
    document(cfg, "受信テスト", html! {
        h1 { "テストメールが届きましたか" }
        p { "このページが開けたなら、メールは届いています。下のボタンを押してください。" }
        form method="post" action={ "/t/" (token) } {
            button type="submit" { "届きました" }
        }
    })
}

/// After the 届きました button.
pub fn arrived_done(cfg: &Config) -> String {
    document(cfg, "受信できています", html! {
        h1 { "受信できています" }
        p { "ありがとうございました。お知らせのメールも受け取れます。" }
        p { "テストを申し込んだページにも「受信できています」と表示されます。" }
        p { a href="/" { "トップページへ" } }
    })
}

/// A test (or its link) that expired or never was.
pub fn test_gone(cfg: &Config) -> String {
    document(cfg, "このテストは終わりました", html! {
        h1 { "このテストは終わりました" }
        p { "受信テストの期限が切れたか、リンクが正しくありません。" }
        p { a href="/#test" { "もう一度受信テストをする" } }
    })
}

/// The answer to a test request a limit refused, or for an address that
/// never gets mail.
pub fn test_refused(cfg: &Config, text: &str) -> String {
    document(cfg, "受信テスト", html! {
        h1 { "受信テスト" }
        (error(text))
        p { a href="/#test" { "受信テストのご案内へ" } }
    })
}

/// `/help/{slug}`: one carrier's steps, printable.
pub fn help(cfg: &Config, c: Carrier) -> String {
    document(cfg, &format!("{}の受信設定", c.name()), html! {
        h1 { (c.name()) "の受信設定" }
        p { (cfg.service_name) "のメールは「" (cfg.domain) "」から届きます。" }
        p { "次の手順で、このドメインからのメールを受け取れるようにしてください。" }
        (steps(cfg, c))
        p { "設定したら、受信テストで届くか確かめてください。" }
        p class="noprint" { a href="/#test" { "受信テストをする" } }
        h2 class="noprint" { "ほかの機種・アプリ" }
        div class="noprint" { (help_links()) }
    })
}

/// `/help/`: every help page.
pub fn help_index(cfg: &Config) -> String {
    document(cfg, "受信設定のご案内", html! {
        h1 { "メールが届かないとき" }
        p { "迷惑メール対策で、" (cfg.service_name) "のメールが止められていることがあります。" }
        p { "「" (cfg.domain) "」からのメールを受け取れるように設定してください。" }
        h2 { "携帯会社・アプリを選んでください" }
        (help_links())
        p class="noprint" { a href="/#test" { "受信テストをする" } }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_escaped_script_free_and_name_our_domain() {
        let cfg = Config { service_name: "見守り<ネット>".into(), domain: "mamoru.example.jp".into(), ..Config::default() };
        let mut pages: Vec<String> = vec![
            waiting(&cfg, "T\"K", TestStatus::Waiting),
            waiting(&cfg, "T\"K", TestStatus::Arrived),
            waiting(&cfg, "T\"K", TestStatus::Unconfirmed(Some(Carrier::Docomo))),
            waiting(&cfg, "T\"K", TestStatus::Unconfirmed(None)),
            arrived_confirm(&cfg, "T\"K", false),
            arrived_done(&cfg),
            test_gone(&cfg),
            test_refused(&cfg, "<x>"),
            help_index(&cfg),
        ];
        pages.extend(Carrier::ALL.map(|c| help(&cfg, c)));
        for page in &pages {
            assert!(page.starts_with("<!DOCTYPE html>") && page.ends_with("</html>\n"));
            assert!(!page.to_ascii_lowercase().contains("<script"));
            assert!(!page.contains("<ネット>") && !page.contains("T\"K") && !page.contains("<x>"));
        }
        assert!(pages[0].contains("<meta http-equiv=\"refresh\" content=\"15\">"), "{}", pages[0]);
        assert!(pages[0].contains("href=\"/w/T&quot;K\""));
        assert!(!pages[1].contains("http-equiv"), "an arrived test stops reloading");
        assert!(pages[2].contains("受信リスト設定") && pages[2].contains("「mamoru.example.jp」"), "{}", pages[2]);
        assert!(pages[3].contains("href=\"/help/docomo\"") && pages[3].contains("href=\"/help/gmail\""));
        assert!(pages[4].contains("action=\"/t/T&quot;K\"") && pages[4].contains("届きました</button>"));
        for (page, c) in pages[9..].iter().zip(Carrier::ALL) {
            assert!(page.contains("mamoru.example.jp"), "{c:?}");
            assert!(page.contains("<ol class=\"steps\">"), "{c:?}");
        }
    }
}
