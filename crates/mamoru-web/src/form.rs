//! A tiny `application/x-www-form-urlencoded` decoder: the two forms of the
//! registration pages need one field each, so a dependency is not worth it.
//!
//! Decoding follows the WHATWG URL standard's parser: `+` is a space, `%XX`
//! is a byte, and a `%` not followed by two hex digits is kept as it is.
//! Bytes that are not UTF-8 after decoding become U+FFFD.

use std::borrow::Cow;

use mamoru_core::Config;

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

#[cfg(test)]
mod tests {
    use super::*;

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
