//! The self-service pages: the manage page (change districts, delete), the
//! one-click unsubscribe confirmation, and what follows them.

use mamoru_core::Config;
use mamoru_core::config::District;

use maud::html;

use mamoru_store::Preferences;

use super::{district_boxes, district_list, document, error, mail_link, preference_fields, preference_summary};

/// Whether the registration is suspended after bounces, and whether saving
/// on this page resumes it (only a one-time link, which just reached the
/// mailbox, proves the mailbox works again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspension {
    None,
    ResumesOnSave,
    NeedsFreshLink,
}

/// The manage page of a live manage link: the districts pre-checked, a
/// button to save them and a separate form to delete the registration.
pub fn manage(cfg: &Config, token: &str, checked: &[u32], prefs: &Preferences, suspended: Suspension, error_text: Option<&str>) -> String {
    document(cfg, "登録内容の変更", html! {
        h1 { "登録内容の変更" }
        @match suspended {
            Suspension::None => {}
            Suspension::ResumesOnSave => (error("このアドレスへのメールが届かなかったため、配信を止めています。「変更する」を押すと配信を再開します。")),
            Suspension::NeedsFreshLink => {
                (error("このアドレスへのメールが届かなかったため、配信を止めています。"))
                p { "再開するには、次のアドレスへ空メールを送り、届いたメールのリンクから「変更する」を押してください。" }
                (mail_link(cfg))
            }
        }
        p { "お知らせを受け取りたい地区と種類にチェックを入れて、「変更する」を押してください。" }
        @if let Some(text) = error_text { (error(text)) }
        form method="post" action={ "/m/" (token) } {
            input type="hidden" name="action" value="update";
            fieldset {
                legend { "地区" }
                (district_boxes(&cfg.districts, checked))
            }
            (preference_fields(cfg, prefs))
            button type="submit" { "変更する" }
        }
        h2 { "受信テスト" }
        p { "登録したアドレスへテストメールを送り、届くか確かめます。" }
        form method="post" action={ "/m/" (token) } {
            input type="hidden" name="action" value="test";
            button type="submit" { "テストメールを送る" }
        }
        h2 { "登録の削除" }
        p { "お知らせが不要になったときは、登録を削除できます。メールアドレスも消去します。" }
        form method="post" action={ "/m/" (token) } {
            input type="hidden" name="action" value="delete";
            button type="submit" class="danger" { "登録を削除する" }
        }
    })
}

/// After the districts were changed.
pub fn changed(cfg: &Config, districts: &[&District], prefs: &Preferences) -> String {
    document(cfg, "変更しました", html! {
        h1 { "登録内容を変更しました" }
        p { "次の地区のお知らせをお届けします。" }
        (district_list(districts))
        (preference_summary(prefs))
        p { "確認のため「変更完了」メールをお送りします。" }
    })
}

/// After the registration was deleted (manage page or one-click).
pub fn deleted(cfg: &Config) -> String {
    document(cfg, "登録を削除しました", html! {
        h1 { "登録を削除しました" }
        p { "お知らせのメールは、もう届きません。メールアドレスも消去しました。" }
        p { "また受け取るときは、次のアドレスへ空メールを送ってください。" }
        (mail_link(cfg))
    })
}

/// `GET /u/{token}`: asks before stopping (mail scanners fetch every link,
/// so the GET itself must change nothing).
pub fn unsubscribe_confirm(cfg: &Config, token: &str) -> String {
    document(cfg, "配信の停止", html! {
        h1 { "配信を停止しますか" }
        p { "「配信を停止する」を押すと、登録を削除し、お知らせのメールは届かなくなります。" }
        form method="post" action={ "/u/" (token) } {
            input type="hidden" name="List-Unsubscribe" value="One-Click";
            button type="submit" class="danger" { "配信を停止する" }
        }
        p { "地区を変えるだけのときは、お知らせメールの下にある「登録内容の変更」のリンクを開いてください。" }
    })
}

/// A manage or unsubscribe link whose registration is gone or whose
/// one-time token was used.
pub fn manage_gone(cfg: &Config) -> String {
    document(cfg, "このリンクは使えません", html! {
        h1 { "このリンクは使えません" }
        p { "登録がすでに削除されたか、リンクの期限が切れているか、すでに使われています。" }
        p { "登録や変更をするときは、次のアドレスへ空メールを送ってください。新しいリンクをお送りします。" }
        (mail_link(cfg))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_escaped_and_script_free() {
        let mut cfg = Config::default();
        cfg.service_name = "見守り<ネット>".into();
        cfg.alerts.kinds.push("<b>".into());
        let prefs = Preferences { kinds_off: vec!["その他".into()], quiet: Some((1320, 420)) };
        let pages = [
            manage(&cfg, "T\"K", &[2], &prefs, Suspension::NeedsFreshLink, Some("<x>")),
            changed(&cfg, &[&cfg.districts[0]], &prefs),
            deleted(&cfg),
            unsubscribe_confirm(&cfg, "T\"K"),
            manage_gone(&cfg),
        ];
        for page in &pages {
            assert!(page.starts_with("<!DOCTYPE html>") && page.ends_with("</html>\n"));
            assert!(!page.to_ascii_lowercase().contains("<script"));
            assert!(!page.contains("<ネット>") && !page.contains("T\"K") && !page.contains("<x>"));
        }
        assert_eq!(pages[0].matches("type=\"checkbox\"").count(), 10 + 4, "districts and kinds");
        assert_eq!(pages[0].matches(" checked>").count(), 1 + 3, "district 2, and every kind but その他");
        assert!(!pages[0].contains("<b>") && pages[0].contains("value=\"&lt;b&gt;\""));
        assert!(pages[0].contains("<option value=\"1320\" selected>22:00</option>") && pages[0].contains("<option value=\"420\" selected>7:00</option>"), "{}", pages[0]);
        assert!(pages[1].contains("受け取らない種類: その他") && pages[1].contains("22:00〜7:00"), "{}", pages[1]);
        assert_eq!(pages[0].matches("action=\"/m/T&quot;K\"").count(), 3);
        assert!(pages[0].contains("name=\"action\" value=\"test\""));
        assert!(pages[3].contains("name=\"List-Unsubscribe\" value=\"One-Click\""));
    }
}
