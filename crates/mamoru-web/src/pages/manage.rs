//! The self-service pages: the manage page (change districts, delete), the
//! one-click unsubscribe confirmation, and what follows them.

use mamoru_core::Config;
use mamoru_core::config::District;

use super::{error, escape, foot, h1, head, mail_link, p, push_u32};

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
pub fn manage(cfg: &Config, token: &str, checked: &[u32], suspended: Suspension, error_text: Option<&str>) -> String {
    let mut out = String::with_capacity(4096 + 160 * cfg.districts.len());
    head(&mut out, cfg, "登録内容の変更");
    h1(&mut out, "登録内容の変更");
    match suspended {
        Suspension::None => {}
        Suspension::ResumesOnSave => error(
            &mut out,
            "このアドレスへのメールが届かなかったため、配信を止めています。「変更する」を押すと配信を再開します。",
        ),
        Suspension::NeedsFreshLink => {
            error(&mut out, "このアドレスへのメールが届かなかったため、配信を止めています。");
            p(&mut out, "再開するには、次のアドレスへ空メールを送り、届いたメールのリンクから「変更する」を押してください。");
            mail_link(&mut out, cfg);
        }
    }
    p(&mut out, "お知らせを受け取りたい地区にチェックを入れて、「変更する」を押してください。");
    if let Some(text) = error_text {
        error(&mut out, text);
    }
    out.push_str("<form method=\"post\" action=\"/m/");
    escape(&mut out, token);
    out.push_str("\"><input type=\"hidden\" name=\"action\" value=\"update\"><fieldset><legend>地区</legend>\n");
    for d in &cfg.districts {
        out.push_str("<label class=\"check\"><input type=\"checkbox\" name=\"district\" value=\"");
        push_u32(&mut out, d.id);
        out.push('"');
        if checked.contains(&d.id) {
            out.push_str(" checked");
        }
        out.push('>');
        escape(&mut out, &d.name);
        out.push_str("</label>\n");
    }
    out.push_str("</fieldset><button type=\"submit\">変更する</button></form>\n");
    out.push_str("<h2>登録の削除</h2>\n");
    p(&mut out, "お知らせが不要になったときは、登録を削除できます。メールアドレスも消去します。");
    out.push_str("<form method=\"post\" action=\"/m/");
    escape(&mut out, token);
    out.push_str("\"><input type=\"hidden\" name=\"action\" value=\"delete\"><button type=\"submit\" class=\"danger\">登録を削除する</button></form>\n");
    foot(&mut out, cfg);
    out
}

/// After the districts were changed.
pub fn changed(cfg: &Config, districts: &[&District]) -> String {
    let mut out = String::with_capacity(2048 + 64 * districts.len());
    head(&mut out, cfg, "変更しました");
    h1(&mut out, "受け取る地区を変更しました");
    out.push_str("<ul>");
    for d in districts {
        out.push_str("<li>");
        escape(&mut out, &d.name);
        out.push_str("</li>");
    }
    out.push_str("</ul>\n");
    p(&mut out, "確認のため「変更完了」メールをお送りします。");
    foot(&mut out, cfg);
    out
}

/// After the registration was deleted (manage page or one-click).
pub fn deleted(cfg: &Config) -> String {
    let mut out = String::with_capacity(2048);
    head(&mut out, cfg, "登録を削除しました");
    h1(&mut out, "登録を削除しました");
    p(&mut out, "お知らせのメールは、もう届きません。メールアドレスも消去しました。");
    p(&mut out, "また受け取るときは、次のアドレスへ空メールを送ってください。");
    mail_link(&mut out, cfg);
    foot(&mut out, cfg);
    out
}

/// `GET /u/{token}`: asks before stopping (mail scanners fetch every link,
/// so the GET itself must change nothing).
pub fn unsubscribe_confirm(cfg: &Config, token: &str) -> String {
    let mut out = String::with_capacity(2048);
    head(&mut out, cfg, "配信の停止");
    h1(&mut out, "配信を停止しますか");
    p(&mut out, "「配信を停止する」を押すと、登録を削除し、お知らせのメールは届かなくなります。");
    out.push_str("<form method=\"post\" action=\"/u/");
    escape(&mut out, token);
    out.push_str(
        "\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
         <button type=\"submit\" class=\"danger\">配信を停止する</button></form>\n",
    );
    p(&mut out, "地区を変えるだけのときは、お知らせメールの下にある「登録内容の変更」のリンクを開いてください。");
    foot(&mut out, cfg);
    out
}

/// A manage or unsubscribe link whose registration is gone or whose
/// one-time token was used.
pub fn manage_gone(cfg: &Config) -> String {
    let mut out = String::with_capacity(2048);
    head(&mut out, cfg, "このリンクは使えません");
    h1(&mut out, "このリンクは使えません");
    p(&mut out, "登録がすでに削除されたか、リンクの期限が切れているか、すでに使われています。");
    p(&mut out, "登録や変更をするときは、次のアドレスへ空メールを送ってください。新しいリンクをお送りします。");
    mail_link(&mut out, cfg);
    foot(&mut out, cfg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_escaped_and_script_free() {
        let mut cfg = Config::default();
        cfg.service_name = "見守り<ネット>".into();
        let pages = [
            manage(&cfg, "T\"K", &[2], Suspension::NeedsFreshLink, Some("<x>")),
            changed(&cfg, &[&cfg.districts[0]]),
            deleted(&cfg),
            unsubscribe_confirm(&cfg, "T\"K"),
            manage_gone(&cfg),
        ];
        for page in &pages {
            assert!(page.starts_with("<!doctype html>") && page.ends_with("</html>\n"));
            assert!(!page.to_ascii_lowercase().contains("<script"));
            assert!(!page.contains("<ネット>") && !page.contains("T\"K") && !page.contains("<x>"));
        }
        assert_eq!(pages[0].matches("type=\"checkbox\"").count(), 10);
        assert_eq!(pages[0].matches(" checked>").count(), 1);
        assert_eq!(pages[0].matches("action=\"/m/T&quot;K\"").count(), 2);
        assert!(pages[3].contains("name=\"List-Unsubscribe\" value=\"One-Click\""));
    }
}
