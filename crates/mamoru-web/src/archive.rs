//! The public archive: recent alerts as a page (`/alerts`,
//! `?d=ID` for one district) and as Atom feeds (`/alerts.atom`,
//! `/alerts/{ID}.atom`) — a second channel when carriers delay mail.
//!
//! No personal data: title, kind, districts, text and time only; not even
//! which admin posted. The page is a maud template; the feed is written by
//! quick-xml's writer, which escapes markup, and every text in it first goes
//! through [`text::clean`], which leaves out the characters XML 1.0 forbids,
//! so the feeds stay well-formed whatever an alert holds. テスト配信 never appears. Entries older than
//! `[alerts] archive_days` drop out.

use std::io;

use hyper::StatusCode;
use mamoru_core::alert::{FollowupKind, district_label};
use mamoru_core::{Config, UnixTime};
use mamoru_store::alerts::AlertRow;
use maud::html;
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};

use crate::{Web, pages, text};

/// Most entries shown or fed.
const LIMIT: usize = 50;

use mamoru_core::jst::civil_from_days as civil;

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

/// One incident: its first report and its published follow-ups, oldest
/// first. The feed has one entry per incident, updated by its follow-ups.
pub struct Incident<'a> {
    pub report: &'a AlertRow,
    pub followups: Vec<&'a AlertRow>,
}

impl<'a> Incident<'a> {
    /// Groups `followups` under their reports (`reports` in their order).
    pub fn group(reports: &'a [AlertRow], followups: &'a [AlertRow]) -> Vec<Self> {
        reports.iter().map(|r| Incident { report: r, followups: followups.iter().filter(|f| f.followup_of == Some(r.id)).collect() }).collect()
    }

    /// `【解決】` while resolved, retracted or followed up; empty while open.
    fn mark(&self) -> String {
        self.report.incident_state.map(FollowupKind::mark).unwrap_or_default()
    }

    /// The last change: the latest follow-up, or the report.
    fn updated(&self) -> UnixTime {
        self.report.published_at.max(self.report.updated_at)
    }

    /// The report's text, then each follow-up under its mark and time.
    fn text(&self) -> String {
        let mut t = self.report.text.clone();
        for f in &self.followups {
            let mark = f.followup_kind.map(FollowupKind::mark).unwrap_or_default();
            t.push_str(&format!("\n\n{mark}{}\n{}", jst(f.published_at), f.text));
        }
        t
    }
}

fn page(cfg: &Config, district: Option<u32>, rows: &[Incident<'_>]) -> String {
    let feed = district.map_or("/alerts.atom".to_string(), |d| format!("/alerts/{d}.atom"));
    pages::document(cfg, "最近のお知らせ", html! {
        h1 { "最近のお知らせ" }
        p { "過去" (cfg.alerts.archive_days) "日間に配信したお知らせです。メールが遅れるときもこのページで確かめられます。" }
        p class="filter" {
            "地区: " a href="/alerts" { "すべて" }
            @for d in &cfg.districts { " " a href={ "/alerts?d=" (d.id) } { (d.name) } }
        }
        p { a href=(feed) { "Atomフィード" } }
        @if rows.is_empty() { p { "お知らせはありません。" } }
        @for i in rows {
            @let r = i.report;
            article class="alert" {
                h2 { (i.mark()) @if !r.kind.is_empty() { "[" (r.kind) "] " } (r.title) }
                p class="meta" { (jst(r.published_at)) " ／ " (district_label(cfg, &r.districts)) }
                pre class="alert" { (i.text()) }
            }
        }
    })
}

/// One element holding text: `<name>text</name>`, the text under the
/// character rule and escaped by the writer.
fn text_element(w: &mut Writer<Vec<u8>>, name: &str, value: &str) -> io::Result<()> {
    w.create_element(name).write_text_content(BytesText::new(&text::clean(value)))?;
    Ok(())
}

/// `<link rel="REL" href="HREF"/>`.
fn link(w: &mut Writer<Vec<u8>>, rel: &str, href: &str) -> io::Result<()> {
    w.create_element("link").with_attribute(("rel", rel)).with_attribute(("href", &*text::clean(href))).write_empty()?;
    Ok(())
}

/// The Atom feed of `rows` (newest first), of one district or all. Pure.
pub fn feed(cfg: &Config, district: Option<u32>, rows: &[Incident<'_>], now: UnixTime) -> String {
    let mut w = Writer::new(Vec::with_capacity(2048 + rows.len() * 1024));
    // Writing into a Vec cannot fail.
    if write_feed(&mut w, cfg, district, rows, now).is_err() {
        return String::new();
    }
    // Every piece written is a &str, so the bytes are UTF-8.
    String::from_utf8(w.into_inner()).unwrap_or_default()
}

fn write_feed(w: &mut Writer<Vec<u8>>, cfg: &Config, district: Option<u32>, rows: &[Incident<'_>], now: UnixTime) -> io::Result<()> {
    let base = cfg.base_url();
    let (title, path) = match district.and_then(|d| cfg.district(d)) {
        Some(d) => (format!("{}（{}）", cfg.service_name, d.name), format!("/alerts/{}.atom", d.id)),
        None => (cfg.service_name.clone(), "/alerts.atom".into()),
    };
    let updated = rows.iter().map(Incident::updated).max().unwrap_or(now);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("utf-8"), None)))?;
    w.write_event(Event::Text(BytesText::new("\n")))?;
    w.create_element("feed").with_attribute(("xmlns", "http://www.w3.org/2005/Atom")).write_inner_content(|w| {
        text_element(w, "title", &title)?;
        text_element(w, "id", &format!("{base}{path}"))?;
        link(w, "self", &format!("{base}{path}"))?;
        link(w, "alternate", &format!("{base}/alerts{}", district.map_or(String::new(), |d| format!("?d={d}"))))?;
        text_element(w, "updated", &rfc3339(updated))?;
        w.create_element("author").write_inner_content(|w| text_element(w, "name", &cfg.service_name))?;
        for i in rows {
            let r = i.report;
            w.create_element("entry").write_inner_content(|w| {
                let kind = if r.kind.is_empty() { String::new() } else { format!("[{}] ", r.kind) };
                text_element(w, "title", &format!("{}{kind}{}（{}）", i.mark(), r.title, district_label(cfg, &r.districts)))?;
                // The report's id: a follow-up updates the entry, it does
                // not add one.
                text_element(w, "id", &format!("tag:{},2026:alert-{}", cfg.domain, r.id))?;
                text_element(w, "updated", &rfc3339(i.updated()))?;
                text_element(w, "published", &rfc3339(r.published_at))?;
                link(w, "alternate", &format!("{base}/alerts"))?;
                w.create_element("content")
                    .with_attribute(("type", "text"))
                    .write_text_content(BytesText::new(&text::clean(&i.text())))?;
                Ok(())
            })?;
        }
        Ok(())
    })?;
    w.write_event(Event::Text(BytesText::new("\n")))?;
    Ok(())
}

/// What the archive answers: status, content type, body.
pub type Answer = (StatusCode, &'static str, String);

/// `GET /alerts`, `/alerts.atom`, `/alerts/{ID}.atom`; `None` for other paths.
pub async fn handle(web: std::sync::Arc<Web>, path: &str, query: Option<&str>) -> Option<Answer> {
    let cfg = &web.app.cfg;
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
    let read = crate::blocking(&web, "read the archive", move |w| {
        let reports = w.app.store.archive(district, since, LIMIT)?;
        let ids: Vec<_> = reports.iter().map(|r| r.id).collect();
        let followups = w.app.store.followups_of(&ids)?;
        Ok::<_, mamoru_store::StoreError>((reports, followups))
    });
    let Ok((reports, followups)) = read.await else {
        return Some((StatusCode::SERVICE_UNAVAILABLE, HTML, pages::busy(cfg)));
    };
    let rows = Incident::group(&reports, &followups);
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
            id: mamoru_core::AlertId::new(id),
            admin: mamoru_core::AdminId::new(1),
            admin_login: "admin".into(),
            source: "panel".into(),
            kind: kind.into(),
            title: title.into(),
            text: text.into(),
            districts: vec![1],
            is_test: false,
            state: mamoru_store::states::AlertState::Published,
            created_at: 1_795_000_000,
            published_at: 1_795_000_000,
            recipients: 0,
            followup_of: None,
            followup_kind: None,
            incident_state: None,
            updated_at: 0,
            occurred_at: 0,
            occurred_flags: 0,
            urgent: false,
            report_published_at: 0,
            ask_confirm: false,
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
        let xml = feed(&cfg, None, &Incident::group(&rows, &[]), 1_795_000_000);
        let entries = parse_with_expat(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        assert_eq!(entries.len(), 1);
        let (title, content) = &entries[0];
        assert!(title.starts_with("[注意] 不審者情報（"), "{title:?}");
        // Line-like controls become line breaks, the others are dropped;
        // tab and CR LF stay (XML reads CR LF as LF).
        assert_eq!(content, "公園で声かけ\n\n[31m\n\t終\nわり");
        // The HTML page drops the same characters.
        let html = page(&cfg, None, &Incident::group(&rows, &[]));
        assert!(!html.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r')), "{html:?}");
        assert!(!html.contains(['\u{fffe}', '\u{ffff}']));
    }

    #[test]
    fn feed_escapes_markup_and_cdata_ends() {
        let cfg = Config::default();
        let rows = [row(8, "]]> & <b>\"'", "A&B", "<script>alert(1)</script> ]]> &amp; 'q' \"d\"")];
        let xml = feed(&cfg, Some(1), &Incident::group(&rows, &[]), 1_795_000_000);
        assert!(!xml.contains("]]>"), "{xml}");
        let entries = parse_with_expat(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        assert_eq!(entries.len(), 1);
        assert!(entries[0].0.starts_with("[A&B] ]]> & <b>\"'（"), "{:?}", entries[0].0);
        assert_eq!(entries[0].1, "<script>alert(1)</script> ]]> &amp; 'q' \"d\"");
    }

    #[test]
    fn a_followed_up_incident_is_one_entry_with_its_state_and_update_time() {
        let cfg = Config::default();
        let mut report = row(7, "不審者", "", "公園で声かけ");
        report.incident_state = Some(FollowupKind::Resolved);
        report.updated_at = 1_795_003_600;
        let mut update = row(8, "不審者", "", "男は立ち去りました");
        (update.followup_of, update.followup_kind, update.published_at) = (Some(mamoru_core::AlertId::new(7)), Some(FollowupKind::Update), 1_795_001_800);
        let mut resolved = row(9, "不審者", "", "保護者の方でした");
        (resolved.followup_of, resolved.followup_kind, resolved.published_at) = (Some(mamoru_core::AlertId::new(7)), Some(FollowupKind::Resolved), 1_795_003_600);
        let reports = [report];
        let followups = [update, resolved];
        let xml = feed(&cfg, None, &Incident::group(&reports, &followups), 1_795_009_999);
        let entries = parse_with_expat(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        assert_eq!(entries.len(), 1, "one entry per incident");
        assert!(entries[0].0.starts_with("【解決】不審者（"), "{:?}", entries[0].0);
        assert_eq!(entries[0].1, "公園で声かけ\n\n【続報】2026年11月18日 20:36\n男は立ち去りました\n\n【解決】2026年11月18日 21:06\n保護者の方でした");
        assert_eq!(xml.matches("<updated>2026-11-18T12:06:40Z</updated>").count(), 2, "the feed's and the entry's: {xml}");
        assert!(xml.contains("<published>2026-11-18T11:06:40Z</published>"));
    }
}
