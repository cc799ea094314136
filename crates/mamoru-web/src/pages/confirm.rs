//! `/k/{token}`: 確認しました. GET shows the button (a mail scanner
//! changes nothing), POST counts the copy once.

use mamoru_core::Config;
use maud::html;

use super::document;

/// The button, under the alert's title.
pub fn confirm(cfg: &Config, token: &str, title: &str) -> String {
    document(cfg, "確認しました", html! {
        h1 { "お知らせを確認しましたか" }
        p { "「" (title) "」" }
        p { "読んだら、下のボタンを押してください。押した数だけを数え、誰が押したかは記録しません。" }
        form method="post" action={ "/k/" (token) } {
            button type="submit" { "確認しました" }
        }
    })
}

/// After the button (counted now or before: the same answer).
pub fn confirmed(cfg: &Config) -> String {
    document(cfg, "ありがとうございました", html! {
        h1 { "ありがとうございました" }
        p { "確認を受け付けました。" }
        p { a href="/alerts" { "これまでのお知らせ" } }
    })
}

/// The link's alert no longer counts (its window ended).
pub fn closed(cfg: &Config) -> String {
    document(cfg, "受付は終わりました", html! {
        h1 { "確認の受付は終わりました" }
        p { "このお知らせの確認は、もう受け付けていません。" }
        p { a href="/alerts" { "これまでのお知らせ" } }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_escaped_and_script_free() {
        let cfg = Config::default();
        for page in [confirm(&cfg, "T\"K", "<b>声かけ"), confirmed(&cfg), closed(&cfg)] {
            assert!(page.starts_with("<!DOCTYPE html>") && !page.to_ascii_lowercase().contains("<script"));
            assert!(!page.contains("T\"K") && !page.contains("<b>"));
        }
        assert!(confirm(&cfg, "T", "x").contains("action=\"/k/T\""));
    }
}
