//! Every page's HTML and the one stylesheet, written by hand into a `String`.
//!
//! The pages are small, Japanese, phone-first and work with no JavaScript at
//! all (the CSP forbids scripts). Anything interpolated goes through
//! [`escape`], including configuration values.
//!
//! Pages that depend only on the configuration are rendered once into
//! [`StaticPages`] when the server starts; only the district form, the
//! completion page and the form with an error are rendered per request.

pub mod districts;
pub mod manage;

use hyper::body::Bytes;
use mamoru_core::Config;
use mamoru_core::config::District;

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
legend{font-weight:bold;margin-bottom:.25rem}\
.check{display:flex;align-items:center;gap:.75rem;min-height:3rem;margin:.5rem 0;padding:.5rem .9rem;border:1px solid #c4c4c4;border-radius:.5rem;font-weight:normal}\
.check input{width:1.5rem;height:1.5rem;margin:0;flex:none}\
button{display:block;width:100%;min-height:3.25rem;margin:1.25rem 0;padding:.75rem;font:inherit;font-size:1.15rem;font-weight:bold;color:#fff;background:#0b5394;border:0;border-radius:.5rem}\
button.danger{background:#b00020}\
.qr{text-align:center;margin:1.5rem 0}\
.qr svg{width:60%;max-width:18rem;height:auto}\
@media print{header,footer{display:none}.mail{border:0}}\
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

/// Appends `s` with the five HTML-significant characters escaped, so it is
/// safe both in text and inside a double- or single-quoted attribute.
///
/// It is also the one text rule of every page and feed: characters that XML
/// 1.0 forbids even as references (C0 controls but tab, LF and CR; U+FFFE,
/// U+FFFF) and the C1 controls and DEL (HTML parse errors, never meant in an
/// alert) are not written; vertical tab, form feed and NEL, which pasted
/// text uses as line breaks, become LF. So a stray byte in an alert cannot
/// break the Atom feed for every reader.
pub fn escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(c),
            '\u{b}' | '\u{c}' | '\u{85}' => out.push('\n'),
            '\u{fffe}' | '\u{ffff}' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
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
            busy: message(cfg, "ただいま混み合っています", &["しばらくしてからもう一度お試しください。"]).into(),
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

/// Opens the document: everything up to and including `<main>`.
pub(crate) fn head(out: &mut String, cfg: &Config, title: &str) {
    out.push_str(
        "<!doctype html>\n<html lang=\"ja\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"format-detection\" content=\"telephone=no\">\
         <link rel=\"stylesheet\" href=\"/style.css\"><title>",
    );
    escape(out, title);
    out.push_str(" - ");
    escape(out, &cfg.service_name);
    out.push_str("</title></head><body><header><p class=\"brand\"><a href=\"/\">");
    escape(out, &cfg.service_name);
    out.push_str("</a></p></header><main>\n");
}

/// Closes what [`head`] opened.
pub(crate) fn foot(out: &mut String, cfg: &Config) {
    out.push_str("</main><footer><a href=\"/\">");
    escape(out, &cfg.service_name);
    out.push_str("</a> 子どもの安全に関するお知らせメール</footer></body></html>\n");
}

pub(crate) fn h1(out: &mut String, text: &str) {
    out.push_str("<h1>");
    escape(out, text);
    out.push_str("</h1>\n");
}

pub(crate) fn p(out: &mut String, text: &str) {
    out.push_str("<p>");
    escape(out, text);
    out.push_str("</p>\n");
}

pub(crate) fn error(out: &mut String, text: &str) {
    out.push_str("<p class=\"error\" role=\"alert\">");
    escape(out, text);
    out.push_str("</p>\n");
}

/// The registration address as a big `mailto:` link.
fn mail_link(out: &mut String, cfg: &Config) {
    let ans = cfg.register_address();
    out.push_str("<p><a class=\"mail\" href=\"mailto:");
    escape(out, &ans);
    out.push_str("\">");
    escape(out, &ans);
    out.push_str("</a></p>\n");
}

fn ttl_hours(cfg: &Config) -> i64 {
    (cfg.tokens.register_ttl_secs + 3599) / 3600
}

/// The top page: how to subscribe by empty mail, and the PC form. `error`
/// and `value` are for showing the form again after a bad address.
pub fn index(cfg: &Config, error_text: Option<&str>, value: &str) -> String {
    let mut out = String::with_capacity(4096);
    let name = &cfg.service_name;
    head(&mut out, cfg, "登録のご案内");
    h1(&mut out, &format!("{name}に登録する"));
    p(&mut out, &format!("{name}は、不審者情報など子どもの安全に関わるお知らせを、登録した方にメールでお届けします。"));
    out.push_str("<h2>携帯電話・スマートフォンから</h2>\n");
    p(&mut out, "次のアドレスへ空メール(件名も本文もなし)を送ってください。");
    mail_link(&mut out, cfg);
    out.push_str("<ol>");
    for step in [
        "すぐに「登録受付」メールが届きます。",
        "メールのリンクを開き、お知らせを受け取りたい地区を選んで「登録する」を押します。",
        "「登録完了」メールが届いたら登録は終わりです。",
    ] {
        out.push_str("<li>");
        escape(&mut out, step);
        out.push_str("</li>");
    }
    out.push_str("</ol>\n");
    p(
        &mut out,
        &format!(
            "登録受付メールのリンクは{}時間有効で、一度だけ使えます。期限が切れたときは、もう一度空メールを送ってください。",
            ttl_hours(cfg)
        ),
    );
    p(&mut out, &format!("迷惑メール対策をしている場合は、「{}」からのメールを受け取れるように設定してください。", cfg.domain));
    out.push_str("<h2 id=\"pc\">パソコンから</h2>\n");
    p(&mut out, "携帯電話のメールアドレスを入力してください。そのアドレスへ登録受付メールを送ります。");
    if let Some(text) = error_text {
        error(&mut out, text);
    }
    out.push_str(
        "<form method=\"post\" action=\"/register\"><label for=\"address\">メールアドレス</label>\
         <input id=\"address\" name=\"address\" type=\"email\" inputmode=\"email\" autocomplete=\"email\" \
         autocapitalize=\"none\" spellcheck=\"false\" required maxlength=\"254\" value=\"",
    );
    escape(&mut out, value);
    out.push_str("\"><button type=\"submit\">登録受付メールを送る</button></form>\n");
    out.push_str("<h2>ご利用について</h2>\n<ul>");
    for note in [
        "登録は無料です(メールの通信料はご負担ください)。",
        "メールアドレスは、このお知らせの配信のためだけに使います。",
        "地区の変更や登録の削除は、もう一度空メールを送るとできます。",
    ] {
        out.push_str("<li>");
        escape(&mut out, note);
        out.push_str("</li>");
    }
    out.push_str("</ul>\n<p><a href=\"/d/\">地区別の登録案内(印刷用・QRコード)</a></p>\n");
    foot(&mut out, cfg);
    out
}

/// The answer to the PC form: the same whether the address was new, known or
/// refused by a rate limit.
pub fn register_sent(cfg: &Config) -> String {
    let mut out = String::with_capacity(2048);
    head(&mut out, cfg, "登録受付メールを送りました");
    h1(&mut out, "登録受付メールを送りました");
    p(&mut out, "入力されたアドレスへ「登録受付」メールを送りました。メールのリンクを開いて、お知らせを受け取りたい地区を選んでください。");
    p(
        &mut out,
        &format!(
            "数分たっても届かないときは、「{}」からのメールを受け取れるように設定してから、しばらく待ってもう一度お試しいただくか、携帯電話から次のアドレスへ空メールを送ってください。",
            cfg.domain
        ),
    );
    mail_link(&mut out, cfg);
    p(&mut out, "お心当たりのない方に届いたメールは、リンクを開かなければ登録されません。");
    foot(&mut out, cfg);
    out
}

/// A token page whose link does not verify.
pub fn link_invalid(cfg: &Config) -> String {
    let mut out = String::with_capacity(2048);
    head(&mut out, cfg, "このリンクは使えません");
    h1(&mut out, "このリンクは使えません");
    p(&mut out, "リンクが正しくありません。メールのリンクが途中で切れていないか確かめてください。");
    p(&mut out, "登録するには、もう一度、次のアドレスへ空メールを送ってください。新しいリンクをお送りします。");
    mail_link(&mut out, cfg);
    foot(&mut out, cfg);
    out
}

/// A token page whose link has expired or was already used.
pub fn link_gone(cfg: &Config) -> String {
    let mut out = String::with_capacity(2048);
    head(&mut out, cfg, "このリンクは期限切れか使用済みです");
    h1(&mut out, "このリンクは期限切れか、すでに使われています");
    p(&mut out, &format!("登録のリンクは{}時間有効で、一度だけ使えます。", ttl_hours(cfg)));
    p(&mut out, "登録をやり直すときや地区を変えるときは、もう一度、次のアドレスへ空メールを送ってください。新しいリンクをお送りします。");
    mail_link(&mut out, cfg);
    foot(&mut out, cfg);
    out
}

/// A short page with a title and a few paragraphs (errors and the like).
pub(crate) fn message(cfg: &Config, title: &str, lines: &[&str]) -> String {
    let mut out = String::with_capacity(1536);
    head(&mut out, cfg, title);
    h1(&mut out, title);
    for line in lines {
        p(&mut out, line);
    }
    out.push_str("<p><a href=\"/\">トップページへ</a></p>\n");
    foot(&mut out, cfg);
    out
}

/// The district form of a live registration link. `checked` are pre-checked;
/// `token` has been verified (base64url) but is escaped all the same.
pub fn choose(cfg: &Config, token: &str, checked: &[u32], error_text: Option<&str>) -> String {
    let mut out = String::with_capacity(3072 + 160 * cfg.districts.len());
    head(&mut out, cfg, "地区を選んでください");
    h1(&mut out, "受け取る地区を選んでください");
    p(&mut out, "お知らせを受け取りたい地区にチェックを入れて、「登録する」を押してください。いくつでも選べます。");
    if let Some(text) = error_text {
        error(&mut out, text);
    }
    out.push_str("<form method=\"post\" action=\"/r/");
    escape(&mut out, token);
    out.push_str("\"><fieldset><legend>地区</legend>\n");
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
    out.push_str("</fieldset><button type=\"submit\">登録する</button></form>\n");
    foot(&mut out, cfg);
    out
}

/// After a successful registration.
pub fn completed(cfg: &Config, districts: &[&District]) -> String {
    let mut out = String::with_capacity(2048 + 64 * districts.len());
    head(&mut out, cfg, "登録が完了しました");
    h1(&mut out, "登録が完了しました");
    p(&mut out, "次の地区のお知らせをメールでお届けします。");
    out.push_str("<ul>");
    for d in districts {
        out.push_str("<li>");
        escape(&mut out, &d.name);
        out.push_str("</li>");
    }
    out.push_str("</ul>\n");
    p(&mut out, "確認のため「登録完了」メールをお送りします。");
    p(&mut out, "地区を変えるときは、もう一度、次のアドレスへ空メールを送ってください。");
    mail_link(&mut out, cfg);
    foot(&mut out, cfg);
    out
}

fn push_u32(out: &mut String, mut n: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        out.push(b as char);
    }
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
        assert_eq!(esc("<script>alert('x')</script>"), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;");
        assert_eq!(esc("a\"b&c"), "a&quot;b&amp;c");
        assert_eq!(esc("&amp;"), "&amp;amp;");
        assert_eq!(esc("末尾<"), "末尾&lt;");
    }

    #[test]
    fn push_u32_writes_decimal() {
        for n in [0, 7, 10, 4_294_967_295] {
            let mut s = String::new();
            push_u32(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }

    fn cfg() -> Config {
        let mut cfg = Config::default();
        cfg.service_name = "見守り<ネット>".into();
        cfg
    }

    #[test]
    fn choose_has_one_checkbox_per_district_and_prechecks() {
        let cfg = cfg();
        let page = choose(&cfg, "TOK\"EN", &[1, 3], None);
        assert_eq!(page.matches("type=\"checkbox\"").count(), 10);
        assert_eq!(page.matches(" checked>").count(), 2);
        assert!(page.contains("value=\"1\" checked>中央地区</label>"), "{page}");
        assert!(page.contains("value=\"3\" checked>昭和地区</label>"), "{page}");
        assert!(page.contains("value=\"2\">天応・吉浦地区</label>"), "{page}");
        assert!(page.contains("action=\"/r/TOK&quot;EN\""), "{page}");
        assert!(page.contains("登録する</button>"));
        assert!(!page.contains("role=\"alert\""));
        assert!(choose(&cfg, "t", &[], Some("地区を選んでください")).contains("role=\"alert\""));
    }

    #[test]
    fn every_page_is_escaped_phone_friendly_and_script_free() {
        let cfg = cfg();
        let pages = StaticPages::new(&cfg);
        let dynamic = [
            index(&cfg, Some("<b>"), "\"><script>"),
            choose(&cfg, "t", &[], None),
            completed(&cfg, &[&cfg.districts[0]]),
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
            assert!(page.starts_with("<!doctype html>"), "{page}");
            assert!(page.contains("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"));
            assert!(page.contains("<link rel=\"stylesheet\" href=\"/style.css\">"));
            assert!(!page.to_ascii_lowercase().contains("<script"), "{page}");
            assert!(!page.contains("<ネット>") && page.contains("見守り&lt;ネット&gt;"), "{page}");
            assert!(page.ends_with("</html>\n"));
        }
        assert_eq!(n, 12);
    }

    #[test]
    fn index_explains_the_empty_mail() {
        let page = index(&Config::default(), None, "");
        assert!(page.contains("href=\"mailto:ans@localhost\""));
        assert!(page.contains("空メール"));
        assert!(page.contains("無料"));
        assert!(page.contains("24時間"));
        assert!(page.contains("action=\"/register\"") && page.contains("name=\"address\""));
    }
}
