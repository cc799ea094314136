//! The bounce corpus in `fixtures/bounces/`: every case of `cases.toml`,
//! with LF and with CRLF line endings, parsed by `dsn::parse` and compared
//! with its expected class and recipient. The accuracy over the corpus is
//! printed; every case must match. `MAMORU_BLESS=1` prints what the parser
//! returned for each case instead of failing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use mamoru_ingest::dsn::{self, Class};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    file: String,
    expect: String,
    recipient: String,
    note: String,
}

/// Every class, and every style the issue names, must be in the corpus.
const MUST_COVER: &[&str] = &["unknown-user", "mailbox-full", "blocked-as-spam", "temporary", "other", "not-a-bounce"];
const STYLES: &[&str] = &["postfix", "exim", "gmail", "outlook", "docomo", "au-", "softbank", "autoreply", "qmail"];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/bounces")
}

fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 40);
    for &b in raw {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

#[test]
fn bounce_corpus_accuracy() {
    let dir = corpus_dir();
    let manifest: Manifest =
        toml::from_str(&std::fs::read_to_string(dir.join("cases.toml")).expect("read cases.toml")).expect("parse cases.toml");
    let bless = std::env::var_os("MAMORU_BLESS").is_some_and(|v| v == "1");
    assert!(manifest.case.len() >= 20, "the corpus needs at least 20 bounces");
    let mut covered = BTreeSet::new();
    let (mut right, mut total) = (0usize, 0usize);
    let mut wrong = Vec::new();
    let mut dsn_cases = 0;
    for case in &manifest.case {
        assert!(!case.note.is_empty(), "{}: note", case.file);
        let raw = std::fs::read(dir.join(&case.file)).unwrap_or_else(|e| panic!("{}: {e}", case.file));
        assert!(!raw.contains(&b'\r'), "{}: store fixtures with LF line endings", case.file);
        if raw.windows(16).any(|w| w.eq_ignore_ascii_case(b"multipart/report")) {
            dsn_cases += 1;
        }
        for (ending, bytes) in [("LF", raw.clone()), ("CRLF", crlf(&raw))] {
            let got = dsn::parse(&bytes).expect("within the MIME bounds");
            total += 1;
            let want_rcpt = (!case.recipient.is_empty()).then(|| case.recipient.clone());
            let rcpt_ok = case.expect == "not-a-bounce" || got.recipient == want_rcpt;
            if got.class.as_str() == case.expect && rcpt_ok {
                right += 1;
            } else {
                wrong.push(format!("{} ({ending}): expected {} {:?}, got {:?}", case.file, case.expect, want_rcpt, got));
            }
            if bless {
                println!("{} ({ending}): {:?}", case.file, got);
            }
        }
        covered.insert(case.expect.as_str());
    }
    let accuracy = right as f64 / total as f64 * 100.0;
    println!("bounce corpus: {right}/{total} parses right ({accuracy:.1}%), {} files, {dsn_cases} DSN", manifest.case.len());
    if bless {
        return;
    }
    assert!(dsn_cases >= 5 && manifest.case.len() - dsn_cases >= 5, "both DSN and non-DSN reports");
    for class in MUST_COVER {
        assert!(covered.contains(class), "no case expects {class}");
    }
    for style in STYLES {
        assert!(manifest.case.iter().any(|c| c.file.starts_with(style)), "no {style} case");
    }
    assert!(wrong.is_empty(), "accuracy {accuracy:.1}%; wrong:\n{}", wrong.join("\n"));
}

#[test]
fn every_class_name_is_stable() {
    for c in [Class::UnknownUser, Class::MailboxFull, Class::BlockedAsSpam, Class::Temporary, Class::Other, Class::NotABounce] {
        assert!(MUST_COVER.contains(&c.as_str()));
    }
}

/// A cheap, deterministic fuzz pass: every corpus file truncated at many
/// points and with bytes overwritten by a fixed pseudo-random sequence must
/// parse without a panic (the parser meets hostile bytes from anyone who can
/// guess the shape of a VERP address).
#[test]
fn mutated_bounces_never_panic() {
    let dir = corpus_dir();
    let mut files = 0;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for entry in std::fs::read_dir(&dir).expect("corpus dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "eml") {
            continue;
        }
        files += 1;
        let raw = std::fs::read(&path).expect("read");
        for cut in (0..raw.len()).step_by((raw.len() / 48).max(1)) {
            let _ = dsn::parse(&raw[..cut]);
        }
        for _ in 0..64 {
            let mut m = raw.clone();
            for _ in 0..8 {
                let i = (next() as usize) % m.len();
                m[i] = (next() & 0xff) as u8;
            }
            let _ = dsn::parse(&m);
        }
    }
    assert!(files >= 20, "{files} corpus files");
}
