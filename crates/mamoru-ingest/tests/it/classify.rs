//! The inbound corpus in `fixtures/inbound/`: every case of `cases.toml`,
//! once with LF and once with CRLF line endings, against the expectation
//! written there. `MAMORU_BLESS=1` rewrites the `expect` lines from what
//! `classify` returns instead of failing; nothing is rewritten otherwise.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use mamoru_core::EmailAddress;
use mamoru_ingest::classify::{Classification, Envelope, Rules, classify};
use serde::Deserialize;

const RULES: Rules<'static> =
    Rules { domain: "mamoru.test", register_local: "ans", max_header_bytes: Rules::DEFAULT_MAX_HEADER_BYTES };

/// Every outcome the corpus must exercise at least once, so a case that is
/// deleted or re-labelled cannot silently leave a rule untested.
const MUST_COVER: &[&str] = &[
    "register",
    "drop:null-sender",
    "drop:mailer-daemon",
    "drop:auto-submitted",
    "drop:precedence",
    "drop:mailing-list",
    "drop:own-domain",
    "drop:invalid-sender",
    "drop:unknown-recipient",
    "drop:headers-too-large",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    file: String,
    sender: String,
    recipient: String,
    expect: String,
    note: String,
    #[serde(default)]
    generate: Option<String>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/inbound")
}

#[test]
fn classify_corpus() {
    let dir = corpus_dir();
    let manifest_path = dir.join("cases.toml");
    let manifest_text = std::fs::read_to_string(&manifest_path).expect("read fixtures/inbound/cases.toml");
    let manifest: Manifest = toml::from_str(&manifest_text).expect("parse cases.toml");
    let bless = std::env::var_os("MAMORU_BLESS").is_some_and(|v| v == "1");

    let mut failures = Vec::new();
    let mut blessed = Vec::new();
    let mut runs = 0;
    for (index, case) in manifest.case.iter().enumerate() {
        let stored = std::fs::read(dir.join(&case.file)).unwrap_or_else(|e| panic!("read {}: {e}", case.file));
        assert!(!case.note.trim().is_empty(), "{}: every case needs a note", case.file);
        assert!(!contains(&stored, b"\r\n"), "{}: fixtures are stored with LF line endings", case.file);
        let lf = expand(case, stored);
        let crlf = to_crlf(&lf);

        let mut outcomes = Vec::new();
        for (endings, raw) in [("LF", &lf), ("CRLF", &crlf)] {
            runs += 1;
            match check(case, raw) {
                Ok(actual) => outcomes.push((endings, actual)),
                Err(why) => failures.push(format!("{} ({endings}): {why}", case.file)),
            }
        }
        let [(_, lf_outcome), (_, crlf_outcome)] = outcomes.as_slice() else {
            continue;
        };
        if lf_outcome != crlf_outcome {
            failures.push(format!("{}: LF gives {lf_outcome} but CRLF gives {crlf_outcome}", case.file));
        } else if *lf_outcome != case.expect {
            if bless {
                blessed.push((index, lf_outcome.clone()));
            } else {
                failures.push(format!(
                    "{}: expected {}, got {lf_outcome} ({})",
                    case.file, case.expect, case.note
                ));
            }
        }
    }

    if !blessed.is_empty() {
        std::fs::write(&manifest_path, rewrite_expectations(&manifest_text, &blessed)).expect("rewrite cases.toml");
        eprintln!("MAMORU_BLESS: rewrote {} expectation(s) in cases.toml", blessed.len());
    }
    assert!(failures.is_empty(), "{} corpus failure(s):\n{}", failures.len(), failures.join("\n"));

    assert!(manifest.case.len() >= 20, "only {} cases in cases.toml", manifest.case.len());
    assert_eq!(runs, 2 * manifest.case.len());
    let listed: BTreeSet<&str> = manifest.case.iter().map(|c| c.file.as_str()).collect();
    assert_eq!(listed.len(), manifest.case.len(), "a file is listed twice in cases.toml");
    for entry in std::fs::read_dir(&dir).expect("list fixtures/inbound") {
        let name = entry.expect("dir entry").file_name().to_string_lossy().into_owned();
        if name.ends_with(".eml") {
            assert!(listed.contains(name.as_str()), "{name} is not listed in cases.toml");
        }
    }
    // After a bless run the manifest on disk holds the new outcomes.
    let expected: BTreeSet<&str> = manifest
        .case
        .iter()
        .enumerate()
        .map(|(i, c)| blessed.iter().find(|(b, _)| *b == i).map_or(c.expect.as_str(), |(_, o)| o.as_str()))
        .collect();
    for outcome in MUST_COVER {
        assert!(expected.contains(outcome), "no case expects {outcome}");
    }
    eprintln!("classify corpus: {} cases, {runs} runs (LF and CRLF)", manifest.case.len());
}

/// Classifies one variant and returns its outcome as written in the
/// manifest. A registration must reply to the envelope sender, nothing else.
fn check(case: &Case, raw: &[u8]) -> Result<String, String> {
    let env = Envelope { sender: &case.sender, recipient: &case.recipient };
    match classify(&RULES, &env, raw) {
        Classification::Register { reply_to } => {
            let want = EmailAddress::parse(&case.sender)
                .map_err(|e| format!("registered an unparseable sender {:?}: {e}", case.sender))?;
            if reply_to != want {
                return Err(format!("reply_to {reply_to} is not the envelope sender {want}"));
            }
            Ok("register".to_owned())
        }
        Classification::Drop(reason) => Ok(format!("drop:{}", reason.as_str())),
    }
}

/// Expands the placeholder of a generated case; big inputs are made here so
/// the repository does not carry megabytes of noise.
fn expand(case: &Case, stored: Vec<u8>) -> Vec<u8> {
    let Some(generate) = case.generate.as_deref() else {
        return stored;
    };
    let (placeholder, generated, min_len): (&[u8], Vec<u8>, usize) = match generate {
        "base64-2mb" => (b"@@GENERATE-BASE64-2MB@@\n", base64_lines(2 * 1024 * 1024), 2 * 1024 * 1024),
        "received-70k" => (b"@@GENERATE-RECEIVED-70K@@\n", received_headers(70 * 1024), 70 * 1024),
        other => panic!("{}: unknown generator {other:?}", case.file),
    };
    let at = find(&stored, placeholder)
        .unwrap_or_else(|| panic!("{}: placeholder {:?} missing", case.file, String::from_utf8_lossy(placeholder)));
    let mut out = Vec::with_capacity(stored.len() + generated.len());
    out.extend_from_slice(&stored[..at]);
    out.extend_from_slice(&generated);
    out.extend_from_slice(&stored[at + placeholder.len()..]);
    assert!(out.len() >= min_len, "{}: generated only {} bytes", case.file, out.len());
    out
}

/// At least `len` bytes of valid base64 (pseudo-random, deterministic) in
/// 76-character lines, as a mail client encodes an attached photo.
fn base64_lines(len: usize) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut out = Vec::with_capacity(len + 77);
    while out.len() < len {
        for _ in 0..76 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.push(ALPHABET[(state % 64) as usize]);
        }
        out.push(b'\n');
    }
    out
}

/// At least `len` bytes of Received headers, as a forwarding loop piles up.
fn received_headers(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 256);
    let mut hop = 0u32;
    while out.len() < len {
        out.extend_from_slice(
            format!(
                "Received: from relay{hop}.example.org (relay{hop}.example.org [192.0.2.{}])\n\
                 \tby relay{}.example.org (Postfix) with ESMTP id 4Xq{hop:07}Zz1\n\
                 \tfor <ans@mamoru.test>; Sun,  8 Jun 2025 10:00:00 +0900 (JST)\n",
                hop % 254 + 1,
                hop + 1
            )
            .as_bytes(),
        );
        hop += 1;
    }
    out
}

/// CR before every LF. The stored files have no CRLF, so no CR is doubled,
/// and bare CRs in the malformed cases stay bare.
fn to_crlf(lf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lf.len() + lf.len() / 32);
    for &b in lf {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// Replaces the `expect = ...` line of the given cases (by index), keeping
/// every other line of the manifest, comments included, as it was.
fn rewrite_expectations(text: &str, blessed: &[(usize, String)]) -> String {
    let mut case_index: Option<usize> = None;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if line.trim() == "[[case]]" {
            case_index = Some(case_index.map_or(0, |i| i + 1));
        }
        let new = case_index
            .filter(|_| line.trim_start().starts_with("expect"))
            .and_then(|i| blessed.iter().find(|(b, _)| *b == i));
        match new {
            Some((_, outcome)) => out.push_str(&format!("expect = \"{outcome}\"\n")),
            None => out.push_str(line),
        }
    }
    out
}

#[test]
fn rewrite_keeps_everything_but_the_expectation() {
    let text = "# c\n[[case]]\nfile = \"a\"\nexpect = \"register\"\n\n[[case]]\nexpect = \"register\"\nnote = \"n\"\n";
    let got = rewrite_expectations(text, &[(1, "drop:precedence".to_owned())]);
    assert_eq!(
        got,
        "# c\n[[case]]\nfile = \"a\"\nexpect = \"register\"\n\n[[case]]\nexpect = \"drop:precedence\"\nnote = \"n\"\n"
    );
}
