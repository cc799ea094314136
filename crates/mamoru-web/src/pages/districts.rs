//! Printable per-district handouts for schools: the district's own
//! registration address (`ans+chuo@`, which pre-selects the district) as
//! text, as a `mailto:` link and as a QR code. The QR code is inline SVG
//! (no image request, no script), so the strict CSP stays as it is.

use mamoru_core::Config;
use mamoru_core::config::District;
use qrcode::QrCode;
use qrcode::render::svg;

use super::{escape, foot, h1, head, p, push_u32};

/// `/d/`: every district with a link to its handout.
pub fn list(cfg: &Config) -> String {
    let mut out = String::with_capacity(2048 + 200 * cfg.districts.len());
    head(&mut out, cfg, "地区別の登録案内");
    h1(&mut out, "地区別の登録案内(印刷用)");
    p(&mut out, "地区ごとの登録用アドレスとQRコードを印刷して、学校や地域で配ることができます。このアドレスから登録すると、その地区が最初から選ばれています。");
    out.push_str("<ul>");
    for d in &cfg.districts {
        out.push_str("<li><a href=\"/d/");
        push_u32(&mut out, d.id);
        out.push_str("\">");
        escape(&mut out, &d.name);
        out.push_str("</a></li>");
    }
    out.push_str("</ul>\n");
    foot(&mut out, cfg);
    out
}

/// `/d/{id}`: one district's handout.
pub fn handout(cfg: &Config, d: &District) -> String {
    let addr = cfg.district_address(d);
    let mailto = format!("mailto:{addr}");
    let mut out = String::with_capacity(16 * 1024);
    head(&mut out, cfg, &format!("{}の登録案内", d.name));
    h1(&mut out, &format!("{}「{}」のお知らせメール", cfg.service_name, d.name));
    p(&mut out, "不審者情報など、子どもの安全に関わるお知らせをメールでお届けします。登録は無料です。");
    out.push_str("<ol><li>");
    escape(&mut out, "QRコードを読み取るか、次のアドレスへ空メール(件名も本文もなし)を送ってください。");
    out.push_str("</li><li>");
    escape(&mut out, "届いた「登録受付」メールのリンクを開き、「登録する」を押してください。");
    out.push_str("</li></ol>\n<div class=\"qr\">");
    out.push_str(&qr_svg(&mailto, &format!("{addr} へのメール")));
    out.push_str("</div>\n<p><a class=\"mail\" href=\"");
    escape(&mut out, &mailto);
    out.push_str("\">");
    escape(&mut out, &addr);
    out.push_str("</a></p>\n");
    p(
        &mut out,
        &format!("迷惑メール対策をしている場合は、「{}」からのメールを受け取れるように設定してください。", cfg.domain),
    );
    foot(&mut out, cfg);
    out
}

/// The QR code of `data` as an inline `<svg>` element with an accessible
/// label; empty if `data` is too long for a QR code.
pub fn qr_svg(data: &str, label: &str) -> String {
    let Ok(code) = QrCode::new(data.as_bytes()) else { return String::new() };
    let doc = code
        .render::<svg::Color<'_>>()
        .min_dimensions(240, 240)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build();
    // Inline in HTML: drop the XML declaration, keep the <svg> element.
    let Some(start) = doc.find("<svg") else { return String::new() };
    let mut label_attr = String::new();
    escape(&mut label_attr, label);
    doc[start..].replacen("<svg", &format!("<svg role=\"img\" aria-label=\"{label_attr}\""), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handout_has_the_address_a_mailto_and_an_inline_qr() {
        let mut cfg = Config::default();
        cfg.domain = "mamoru.test".into();
        let page = handout(&cfg, &cfg.districts[0]);
        assert!(page.contains("href=\"mailto:ans+chuo@mamoru.test\""), "{page}");
        assert!(page.contains("<svg role=\"img\" aria-label=\"ans+chuo@mamoru.test へのメール\""), "{page}");
        assert!(!page.contains("<?xml") && !page.contains("<script") && !page.contains("style=\""));
        assert!(page.contains("中央地区"));
        assert_eq!(list(&cfg).matches("<li><a href=\"/d/").count(), 10);
        assert_eq!(qr_svg(&"x".repeat(5000), "too long"), "");
    }
}
