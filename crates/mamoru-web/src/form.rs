//! A tiny `application/x-www-form-urlencoded` decoder: the forms of the
//! pages have a handful of plain fields, so a dependency is not worth it.
//!
//! Decoding follows the WHATWG URL standard's parser: `+` is a space, `%XX`
//! is a byte, and a `%` not followed by two hex digits is kept as it is.
//! Bytes that are not UTF-8 after decoding become U+FFFD.

use std::borrow::Cow;

use mamoru_core::Config;
use mamoru_store::Preferences;

/// The `name=value` pairs of a form body, decoded, in order.
pub fn pairs(body: &[u8]) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    body.split(|&b| b == b'&').filter(|p| !p.is_empty()).map(|pair| {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        (decode(name), decode(value))
    })
}

/// The first value of field `name`, if present.
pub fn value<'a>(body: &'a [u8], name: &str) -> Option<Cow<'a, str>> {
    pairs(body).find(|(n, _)| n == name).map(|(_, v)| v)
}

/// Decodes one name or value. Borrows when there is nothing to decode.
pub fn decode(raw: &[u8]) -> Cow<'_, str> {
    if !raw.iter().any(|&b| b == b'+' || b == b'%') {
        return String::from_utf8_lossy(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => match (raw.get(i + 1).and_then(|&h| hex(h)), raw.get(i + 2).and_then(|&l| hex(l))) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Why a district choice was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DistrictsError {
    /// A `district` value is not the id of a configured district (a stale
    /// page after a configuration change, or a hand-made request).
    Unknown,
}

/// The `district` fields of the registration form: configured ids only,
/// sorted and without duplicates. Other fields are ignored.
pub fn districts(body: &[u8], cfg: &Config) -> Result<Vec<u32>, DistrictsError> {
    let mut ids = Vec::new();
    for (name, value) in pairs(body) {
        if name != "district" {
            continue;
        }
        let id: u32 = value.parse().map_err(|_| DistrictsError::Unknown)?;
        if cfg.district(id).is_none() {
            return Err(DistrictsError::Unknown);
        }
        ids.push(id);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Why the kinds and quiet hours of a form were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefsError {
    /// Every kind unticked.
    NoKind,
    /// One end of the quiet hours chosen, the other なし.
    OneEnd,
    /// The same time at both ends.
    SameTime,
    /// A time no select offers (a hand-made request).
    BadTime,
}

impl PrefsError {
    /// What the page says, above the form.
    pub fn message(self) -> &'static str {
        match self {
            Self::NoKind => "受け取るお知らせの種類を1つ以上選んでください。",
            Self::OneEnd => "受け取らない時間帯は、始まりと終わりの両方を選んでください（設けないときは両方を「なし」に）。",
            Self::SameTime => "受け取らない時間帯の始まりと終わりを、別の時刻にしてください。",
            Self::BadTime => "選ばれた時刻が正しくありません。もう一度選んでください。",
        }
    }
}

/// The minutes of the day the quiet-hours selects offer: every half hour.
pub const QUIET_STEP: i64 = 30;

/// The kinds and quiet hours of the registration and manage forms. A
/// ticked `kind` field is a kind received; the configured kinds not ticked
/// are off (values that are not configured kinds are ignored). A form
/// without the `prefs` marker (a page from before these fields existed)
/// turns nothing off. `quiet_start` / `quiet_end` are minutes of the day,
/// both empty for none.
pub fn preferences(body: &[u8], cfg: &Config) -> Result<Preferences, PrefsError> {
    if value(body, "prefs").is_none() {
        return Ok(Preferences::default());
    }
    let kinds_off = kinds_off(body, cfg);
    if !cfg.alerts.kinds.is_empty() && kinds_off.len() == cfg.alerts.kinds.len() {
        return Err(PrefsError::NoKind);
    }
    let quiet = match (minute(body, "quiet_start")?, minute(body, "quiet_end")?) {
        (None, None) => None,
        (Some(a), Some(b)) if a == b => return Err(PrefsError::SameTime),
        (Some(a), Some(b)) => Some((a, b)),
        _ => return Err(PrefsError::OneEnd),
    };
    Ok(Preferences { kinds_off, quiet })
}

/// What a refused form shows again: the kinds as they were ticked, so a
/// parent who fixes the quiet hours does not turn an unticked kind back on
/// unawares, and the quiet hours only when they were a window (a refused
/// one shows なし at both ends).
pub fn preferences_as_posted(body: &[u8], cfg: &Config) -> Preferences {
    if value(body, "prefs").is_none() {
        return Preferences::default();
    }
    let quiet = match (minute(body, "quiet_start"), minute(body, "quiet_end")) {
        (Ok(Some(a)), Ok(Some(b))) if a != b => Some((a, b)),
        _ => None,
    };
    Preferences { kinds_off: kinds_off(body, cfg), quiet }
}

/// The configured kinds whose box is not ticked; ticked values that are
/// not configured kinds are ignored.
fn kinds_off(body: &[u8], cfg: &Config) -> Vec<String> {
    let ticked: Vec<String> = pairs(body).filter(|(n, _)| n == "kind").map(|(_, v)| v.into_owned()).collect();
    cfg.alerts.kinds.iter().filter(|k| !ticked.contains(k)).cloned().collect()
}

/// A quiet-hours select: empty for なし, else a minute of the day that the
/// select offers.
fn minute(body: &[u8], name: &str) -> Result<Option<i64>, PrefsError> {
    match value(body, name).as_deref().unwrap_or("") {
        "" => Ok(None),
        v => match v.parse::<i64>() {
            Ok(m) if (0..1440).contains(&m) && m % QUIET_STEP == 0 => Ok(Some(m)),
            _ => Err(PrefsError::BadTime),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferences_are_the_unticked_kinds_and_a_real_window() {
        let cfg = Config::default();
        let p = preferences("prefs=1&kind=%E4%B8%8D%E5%AF%A9%E8%80%85%E6%83%85%E5%A0%B1&kind=x&quiet_start=1320&quiet_end=420".as_bytes(), &cfg).unwrap();
        assert_eq!(p, Preferences { kinds_off: vec!["不審電話情報".into(), "その他".into()], quiet: Some((1320, 420)) });
        let all = "prefs=1&kind=%E4%B8%8D%E5%AF%A9%E8%80%85%E6%83%85%E5%A0%B1&kind=%E4%B8%8D%E5%AF%A9%E9%9B%BB%E8%A9%B1%E6%83%85%E5%A0%B1&kind=%E3%81%9D%E3%81%AE%E4%BB%96";
        assert_eq!(preferences(format!("{all}&quiet_start=&quiet_end=").as_bytes(), &cfg), Ok(Preferences::default()));
        assert_eq!(preferences(b"district=1", &cfg), Ok(Preferences::default()), "a page without the fields turns nothing off");
        assert_eq!(preferences(b"prefs=1&kind=x", &cfg), Err(PrefsError::NoKind));
        for (q, e) in [
            ("quiet_start=60&quiet_end=", PrefsError::OneEnd),
            ("quiet_start=&quiet_end=60", PrefsError::OneEnd),
            ("quiet_start=60&quiet_end=60", PrefsError::SameTime),
            ("quiet_start=99&quiet_end=60", PrefsError::BadTime),
            ("quiet_start=1440&quiet_end=60", PrefsError::BadTime),
            ("quiet_start=-30&quiet_end=60", PrefsError::BadTime),
            ("quiet_start=22%3A00&quiet_end=60", PrefsError::BadTime),
        ] {
            assert_eq!(preferences(format!("{all}&{q}").as_bytes(), &cfg), Err(e), "{q}");
        }
    }

    #[test]
    fn a_refused_form_shows_the_kinds_as_ticked_and_only_a_real_window() {
        let cfg = Config::default();
        // 不審者情報 ticked, a bogus kind, the end of the window missing.
        let body = "prefs=1&kind=%E4%B8%8D%E5%AF%A9%E8%80%85%E6%83%85%E5%A0%B1&kind=x&quiet_start=1320&quiet_end=";
        assert_eq!(preferences(body.as_bytes(), &cfg), Err(PrefsError::OneEnd));
        let shown = Preferences { kinds_off: vec!["不審電話情報".into(), "その他".into()], quiet: None };
        assert_eq!(preferences_as_posted(body.as_bytes(), &cfg), shown);
        for q in ["quiet_start=99&quiet_end=60", "quiet_start=60&quiet_end=60"] {
            assert_eq!(preferences_as_posted(format!("prefs=1&{q}").as_bytes(), &cfg).quiet, None, "{q}");
        }
        // No kind ticked is refused, and shown again as posted: none ticked,
        // the window kept.
        let none = preferences_as_posted(b"prefs=1&quiet_start=1320&quiet_end=420", &cfg);
        assert_eq!(none, Preferences { kinds_off: cfg.alerts.kinds.clone(), quiet: Some((1320, 420)) });
        assert_eq!(preferences_as_posted(b"district=1", &cfg), Preferences::default());
    }

    fn all(body: &str) -> Vec<(String, String)> {
        pairs(body.as_bytes()).map(|(n, v)| (n.into_owned(), v.into_owned())).collect()
    }

    #[test]
    fn decodes_pairs() {
        assert_eq!(all(""), vec![]);
        assert_eq!(all("a=1&b=2"), vec![("a".into(), "1".into()), ("b".into(), "2".into())]);
        assert_eq!(all("a&&b="), vec![("a".into(), "".into()), ("b".into(), "".into())]);
        assert_eq!(all("x=a=b"), vec![("x".into(), "a=b".into())]);
        assert_eq!(all("address=taro..y.%40docomo.ne.jp"), vec![("address".into(), "taro..y.@docomo.ne.jp".into())]);
        assert_eq!(all("q=a+b%20c%2Bd"), vec![("q".into(), "a b c+d".into())]);
        assert_eq!(all("%E5%AE%88=%e3%82%8b"), vec![("守".into(), "る".into())]);
    }

    #[test]
    fn keeps_broken_escapes_and_replaces_bad_utf8() {
        assert_eq!(decode(b"100%"), "100%");
        assert_eq!(decode(b"%zz%4"), "%zz%4");
        assert_eq!(decode(b"%ff"), "\u{fffd}");
        assert_eq!(decode(b"a%00b"), "a\0b");
        assert!(matches!(decode(b"plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn value_finds_the_first() {
        assert_eq!(value(b"a=1&address=x%40y.jp&address=z", "address").as_deref(), Some("x@y.jp"));
        assert_eq!(value(b"a=1", "address"), None);
    }

    #[test]
    fn districts_are_checked_sorted_and_deduplicated() {
        let cfg = Config::default();
        assert_eq!(districts(b"district=3&district=1&district=3&x=9", &cfg), Ok(vec![1, 3]));
        assert_eq!(districts(b"", &cfg), Ok(vec![]));
        assert_eq!(districts(b"district=10", &cfg), Ok(vec![10]));
        for bad in ["district=11", "district=0", "district=", "district=-1", "district=1x", "district=99999999999"] {
            assert_eq!(districts(bad.as_bytes(), &cfg), Err(DistrictsError::Unknown), "{bad}");
        }
    }
}
