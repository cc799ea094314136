//! Printable per-district handouts for schools: the district's own
//! registration address (`ans+chuo@`, which pre-selects the district) as
//! text, as a `mailto:` link and as a QR code. The QR code is inline SVG
//! (no image request, no script), so the strict CSP stays as it is; it is
//! drawn by the template from the code's modules, so no raw markup is
//! inserted.

use maud::{Markup, html};
use mamoru_core::Config;
use mamoru_core::config::District;
use qrcode::{Color, QrCode};

use super::document;

/// `/d/`: every district with a link to its handout.
pub fn list(cfg: &Config) -> String {
    document(cfg, "地区別の登録案内", html! {
        h1 { "地区別の登録案内(印刷用)" }
        p { "地区ごとの登録用アドレスとQRコードを印刷して、学校や地域で配ることができます。このアドレスから登録すると、その地区が最初から選ばれています。" }
        ul { @for d in &cfg.districts { li { a href={ "/d/" (d.id) } { (d.name) } } } }
    })
}

/// `/d/{id}`: one district's handout.
pub fn handout(cfg: &Config, d: &District) -> String {
    let addr = cfg.district_address(d);
    let mailto = format!("mailto:{addr}");
    document(cfg, &format!("{}の登録案内", d.name), html! {
        h1 { (cfg.service_name) "「" (d.name) "」のお知らせメール" }
        p { "不審者情報など、子どもの安全に関わるお知らせをメールでお届けします。登録は無料です。" }
        ol {
            li { "QRコードを読み取るか、次のアドレスへ空メール(件名も本文もなし)を送ってください。" }
            li { "届いた「登録受付」メールのリンクを開き、「登録する」を押してください。" }
        }
        div class="qr" { @if let Some(svg) = qr_svg(&mailto, &format!("{addr} へのメール")) { (svg) } }
        p { a class="mail" href=(mailto) { (addr) } }
        p { "迷惑メール対策をしている場合は、「" (cfg.domain) "」からのメールを受け取れるように設定してください。" }
    })
}

/// Modules of white border around the code (the QR specification's quiet
/// zone).
const QUIET: usize = 4;

/// The QR code of `data` as an inline `<svg>` element with an accessible
/// label: one black square per dark module on white. `None` if `data` is
/// too long for a QR code.
pub fn qr_svg(data: &str, label: &str) -> Option<Markup> {
    let code = QrCode::new(data.as_bytes()).ok()?;
    let width = code.width();
    let size = width + 2 * QUIET;
    let mut path = String::with_capacity(width * width * 6);
    for (i, color) in code.to_colors().iter().enumerate() {
        if *color == Color::Dark {
            // Numbers only: the path data is not text from anyone.
            path.push_str(&format!("M{} {}h1v1h-1z", i % width + QUIET, i / width + QUIET));
        }
    }
    Some(html! {
        svg role="img" aria-label=(label) xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (size) " " (size) }
            width="240" height="240" shape-rendering="crispEdges" {
            rect width=(size) height=(size) fill="#ffffff" {}
            path fill="#000000" d=(path) {}
        }
    })
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
        assert!(qr_svg(&"x".repeat(5000), "too long").is_none());
    }

    #[test]
    fn the_qr_svg_draws_every_dark_module() {
        let data = "mailto:ans+chuo@mamoru.test";
        let code = QrCode::new(data.as_bytes()).expect("short data fits");
        let dark = code.to_colors().iter().filter(|c| **c == Color::Dark).count();
        let svg = qr_svg(data, "<label>").expect("short data fits").into_string();
        assert_eq!(svg.matches("h1v1h-1z").count(), dark);
        let size = code.width() + 2 * QUIET;
        assert!(svg.contains(&format!("viewBox=\"0 0 {size} {size}\"")), "{svg}");
        assert!(svg.contains("aria-label=\"&lt;label&gt;\""), "{svg}");
        // The same modules, at the same places, as the qrcode crate's own
        // renderer draws with its quiet zone.
        let drawn: Vec<(usize, usize)> = svg
            .split('M')
            .skip(1)
            .map(|m| {
                let (x, rest) = m.split_once(' ').expect("x y");
                (x.parse().expect("x"), rest.split('h').next().expect("y").parse().expect("y"))
            })
            .collect();
        let reference: String = code.render::<char>().quiet_zone(true).module_dimensions(1, 1).dark_color('#').light_color('.').build();
        let expected: Vec<(usize, usize)> = reference
            .lines()
            .enumerate()
            .flat_map(|(y, row)| row.chars().enumerate().filter(|(_, c)| *c == '#').map(move |(x, _)| (x, y)))
            .collect();
        assert_eq!(drawn, expected);
    }
}
