//! The public archive: recent alerts as a page (`/alerts`,
//! `?d=ID` for one district) and as Atom feeds (`/alerts.atom`,
//! `/alerts/{ID}.atom`) — a second channel when carriers delay mail.
//!
//! No personal data: title, kind, districts, text and time only; not even
//! which admin posted. テスト配信 never appears. Entries older than
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

fn feed(cfg: &Config, district: Option<u32>, rows: &[AlertRow], now: UnixTime) -> String {
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
        out.push_str(&format!("</title><id>tag:{},2026:alert-{}</id>", cfg.domain, r.id));
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
}
