//! The one text rule of every page and feed: which characters may be
//! written at all. Markup is escaped by the writers (maud for HTML,
//! quick-xml for Atom); neither leaves out characters, so this does.
//!
//! Left out: what XML 1.0 forbids even as a character reference (C0
//! controls but tab, LF and CR; U+FFFE, U+FFFF), and the C1 controls and
//! DEL (HTML parse errors, never meant in an alert). Vertical tab, form feed
//! and NEL, which pasted text uses as line breaks, become LF. So one stray
//! byte in an alert cannot make the Atom feed ill-formed for every reader.

use std::borrow::Cow;

/// What [`clean`] does with one character.
fn rule(c: char) -> Option<char> {
    match c {
        '\t' | '\n' | '\r' => Some(c),
        '\u{b}' | '\u{c}' | '\u{85}' => Some('\n'),
        '\u{fffe}' | '\u{ffff}' => None,
        c if c.is_control() => None,
        c => Some(c),
    }
}

/// `s` under the rule; borrowed when nothing changes.
pub fn clean(s: &str) -> Cow<'_, str> {
    if s.chars().all(|c| rule(c) == Some(c)) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.chars().filter_map(rule).collect())
}

/// [`clean`] for an owned string, without a copy when nothing changes.
pub fn clean_owned(s: String) -> String {
    match clean(&s) {
        Cow::Borrowed(_) => s,
        Cow::Owned(o) => o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_out_what_xml_forbids_and_keeps_the_rest() {
        assert!(matches!(clean("中央地区 <b>&\t\r\n"), Cow::Borrowed(_)));
        assert_eq!(clean("a\u{0}b\u{1}\u{8}\u{1b}[31m\u{7f}\u{9f}\u{fffe}\u{ffff}c"), "ab[31mc");
        assert_eq!(clean("1\u{b}2\u{c}3\u{85}4"), "1\n2\n3\n4");
        assert_eq!(clean("\u{fffd}\u{10000}\u{e000}"), "\u{fffd}\u{10000}\u{e000}");
        assert_eq!(clean_owned("x\u{1}".into()), "x");
    }
}
