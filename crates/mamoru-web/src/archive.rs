//! The public archive: recent alerts as a page (`/alerts`,
//! `?d=ID` for one district) and as Atom feeds (`/alerts.atom`,
//! `/alerts/{ID}.atom`) — a second channel when carriers delay mail.
//!
//! No personal data: title, kind, districts, text and time only; not even
//! which admin posted. Every text goes through [`pages::escape`], which also
//! leaves out the characters XML 1.0 forbids, so the feeds stay well-formed
//! whatever an alert holds. テスト配信 never appears. Entries older than
//! `[alerts] archive_days` drop out.

use hyper::StatusCode;
use mamoru_core::alert::district_label;
use mamoru_core::{Config, UnixTime};
use mamoru_store::alerts::AlertRow;

use crate::Web;
use crate::pages::{self, escape};

/// Most entries shown or fed.
const LIMIT: usize = 50;

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `2026-11-23T10:15:00Z`.
pub fn rfc3339(t: UnixTime) -> String {
    let (y, m, d) = civil(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s % 3600 / 60, s % 60)
}

/// `2026年11月23日 19:15` in Japan time, for the page.
pub fn jst(t: UnixTime) -> String {
    let t = t + 9 * 3600;
    let (y, m, d) = civil(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!("{y}年{m}月{d}日 {:02}:{:02}", s / 3600, s % 3600 / 60)
}

/// The `d` query parameter, if it names a configured district.
fn district_param(cfg: &Config, query: Option<&str>) -> Result<Option<u32>, ()> {
    let Some(q) = query else { return Ok(None) };
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("d=") {
            return v.parse().ok().filter(|id| cfg.district(*id).is_some()).map(Some).ok_or(());
        }
    }
    Ok(None)
}

fn page(cfg: &Config, district: Option<u32>, rows: &[AlertRow]) -> String {
    let mut out = String::with_capacity(4096 + rows.len() * 1024);
    pages::head(&mut out, cfg, "最近のお知らせ");
    pages::h1(&mut out, "最近のお知らせ");
    let days = cfg.alerts.archive_days.to_string();
    pages::p(&mut out, &format!("過去{days}日間に配信したお知らせです。メールが遅れるときもこのページで確かめられます。"));
    out.push_str("<p class=\"filter\">地区: <a href=\"/alerts\">すべて</a>");
    for d in &cfg.districts {
        out.push_str(&format!(" <a href=\"/alerts?d={}\">", d.id));
        escape(&mut out, &d.name);
        out.push_str("</a>");
    }
    out.push_str("</p>\n");
    let feed = district.map_or("/alerts.atom".to_string(), |d| format!("/alerts/{d}.atom"));
    out.push_str(&format!("<p><a href=\"{feed}\">Atomフィード</a></p>\n"));
    if rows.is_empty() {
        pages::p(&mut out, "お知らせはありません。");
    }
    for r in rows {
        out.push_str("<article class=\"alert\"><h2>");
        if !r.kind.is_empty() {
            out.push('[');
            escape(&mut out, &r.kind);
            out.push_str("] ");
        }
        escape(&mut out, &r.title);
        out.push_str("</h2><p class=\"meta\">");
        escape(&mut out, &jst(r.published_at));
        out.push_str(" ／ ");
        escape(&mut out, &district_label(cfg, &r.districts));
        out.push_str("</p><pre class=\"alert\">");
        escape(&mut out, &r.text);
        out.push_str("</pre></article>\n");
    }
    pages::foot(&mut out, cfg);
    out
}

/// The Atom feed of `rows` (newest first), of one district or all. Pure.
pub fn feed(cfg: &Config, district: Option<u32>, rows: &[AlertRow], now: UnixTime) -> String {
    let base = cfg.base_url();
    let (title, path) = match district.and_then(|d| cfg.district(d)) {
        Some(d) => (format!("{}（{}）", cfg.service_name, d.name), format!("/alerts/{}.atom", d.id)),
        None => (cfg.service_name.clone(), "/alerts.atom".into()),
    };
    let updated = rows.first().map_or(now, |r| r.published_at);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\">\n<title>");
    escape(&mut out, &title);
    out.push_str("</title>\n<id>");
    escape(&mut out, &format!("{base}{path}"));
    out.push_str("</id>\n<link rel=\"self\" href=\"");
    escape(&mut out, &format!("{base}{path}"));
    out.push_str("\"/>\n<link rel=\"alternate\" href=\"");
    escape(&mut out, &format!("{base}/alerts{}", district.map_or(String::new(), |d| format!("?d={d}"))));
    out.push_str(&format!("\"/>\n<updated>{}</updated>\n<author><name>", rfc3339(updated)));
    escape(&mut out, &cfg.service_name);
    out.push_str("</name></author>\n");
    for r in rows {
        out.push_str("<entry><title>");
        let kind = if r.kind.is_empty() { String::new() } else { format!("[{}] ", r.kind) };
        escape(&mut out, &format!("{kind}{}（{}）", r.title, district_label(cfg, &r.districts)));
        out.push_str("</title><id>");
        escape(&mut out, &format!("tag:{},2026:alert-{}", cfg.domain, r.id));
        out.push_str("</id>");
        out.push_str(&format!("<updated>{}</updated><published>{0}</published>", rfc3339(r.published_at)));
        out.push_str("<link rel=\"alternate\" href=\"");
        escape(&mut out, &format!("{base}/alerts"));
        out.push_str("\"/><content type=\"text\">");
        escape(&mut out, &r.text);
        out.push_str("</content></entry>\n");
    }
    out.push_str("</feed>\n");
    out
}

/// What the archive answers: status, content type, body.
pub type Answer = (StatusCode, &'static str, String);

/// `GET /alerts`, `/alerts.atom`, `/alerts/{ID}.atom`; `None` for other paths.
pub async fn handle(web: std::sync::Arc<Web>, path: &str, query: Option<&str>) -> Option<Answer> {
    let cfg = &web.cfg;
    let (district, atom) = match path {
        "/alerts" => match district_param(cfg, query) {
            Ok(d) => (d, false),
            Err(()) => return Some((StatusCode::NOT_FOUND, HTML, pages::message(cfg, "地区が見つかりません", &["一覧から選んでください。"]))),
        },
        "/alerts.atom" => (None, true),
        _ => {
            let id = path.strip_prefix("/alerts/")?.strip_suffix(".atom")?;
            let id: u32 = id.parse().ok().filter(|id| cfg.district(*id).is_some())?;
            (Some(id), true)
        }
    };
    let now = mamoru_core::now();
    let since = now - cfg.alerts.archive_days * 86_400;
    let w = web.clone();
    let rows = match tokio::task::spawn_blocking(move || w.store.archive(district, since, LIMIT)).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "web: cannot read the archive");
            return Some((StatusCode::SERVICE_UNAVAILABLE, HTML, pages::message(cfg, "ただいま混み合っています", &["しばらくしてからもう一度お試しください。"])));
        }
        Err(e) => {
            tracing::error!(error = %e, "web: archive task failed");
            return Some((StatusCode::SERVICE_UNAVAILABLE, HTML, pages::message(cfg, "ただいま混み合っています", &["しばらくしてからもう一度お試しください。"])));
        }
    };
    Some(if atom {
        (StatusCode::OK, ATOM, feed(cfg, district, &rows, now))
    } else {
        (StatusCode::OK, HTML, page(cfg, district, &rows))
    })
}

const HTML: &str = "text/html; charset=utf-8";
const ATOM: &str = "application/atom+xml; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(jst(1_795_000_000), "2026年11月18日 20:06");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    fn row(id: i64, title: &str, kind: &str, text: &str) -> AlertRow {
        AlertRow {
            id,
            admin: 1,
            admin_login: "admin".into(),
            source: "panel".into(),
            kind: kind.into(),
            title: title.into(),
            text: text.into(),
            districts: vec![1],
            is_test: false,
            state: "published".into(),
            created_at: 1_795_000_000,
            published_at: 1_795_000_000,
            recipients: 0,
        }
    }

    /// Parses `xml` with Python's expat (an independent, strict XML 1.0
    /// parser) and returns every entry's title and content as it reads
    /// them.
    fn parse_with_expat(xml: &str) -> Result<Vec<(String, String)>, String> {
        use std::io::Write as _;
        let script = r#"
import sys
import xml.etree.ElementTree as ET
ns = {"a": "http://www.w3.org/2005/Atom"}
try:
    root = ET.fromstring(sys.stdin.buffer.read())
except ET.ParseError as e:
    print("not well-formed:", e, file=sys.stderr)
    sys.exit(1)
for e in root.findall("a:entry", ns):
    for tag in ("a:title", "a:content"):
        sys.stdout.buffer.write(((e.find(tag, ns).text or "") + "\0").encode())
"#;
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        child.stdin.take().expect("stdin").write_all(xml.as_bytes()).expect("write");
        let out = child.wait_with_output().expect("python3 ends");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let fields: Vec<&str> = text.split_terminator('\0').collect();
        Ok(fields.chunks(2).map(|p| (p[0].to_string(), p.get(1).copied().unwrap_or_default().to_string())).collect())
    }

    #[test]
    fn feed_stays_well_formed_with_control_characters() {
        let cfg = Config::default();
        let text = "公園で\u{1}声かけ\u{8}\u{b}\u{c}\u{1b}[31m\u{7f}\u{85}\u{9f}\u{fffe}\u{ffff}\t終\r\nわり";
        let rows = [row(7, "不審者\u{0}\u{1f}情報", "注意\u{2}", text)];
        let xml = feed(&cfg, None, &rows, 1_795_000_000);
        let entries = parse_with_expat(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        assert_eq!(entries.len(), 1);
        let (title, content) = &entries[0];
        assert!(title.starts_with("[注意] 不審者情報（"), "{title:?}");
        // Line-like controls become line breaks, the others are dropped;
        // tab and CR LF stay (XML reads CR LF as LF).
        assert_eq!(content, "公園で声かけ\n\n[31m\n\t終\nわり");
        // The HTML page drops the same characters.
        let html = page(&cfg, None, &rows);
        assert!(!html.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r')), "{html:?}");
        assert!(!html.contains(['\u{fffe}', '\u{ffff}']));
    }

    #[test]
    fn feed_escapes_markup_and_cdata_ends() {
        let cfg = Config::default();
        let rows = [row(8, "]]> & <b>\"'", "A&B", "<script>alert(1)</script> ]]> &amp; 'q' \"d\"")];
        let xml = feed(&cfg, Some(1), &rows, 1_795_000_000);
        assert!(!xml.contains("]]>"), "{xml}");
        let entries = parse_with_expat(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        assert_eq!(entries.len(), 1);
        assert!(entries[0].0.starts_with("[A&B] ]]> & <b>\"'（"), "{:?}", entries[0].0);
        assert_eq!(entries[0].1, "<script>alert(1)</script> ]]> &amp; 'q' \"d\"");
    }
}
