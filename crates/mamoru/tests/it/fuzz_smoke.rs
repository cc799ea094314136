//! The always-on part of fuzzing: every property in `fuzz_checks` runs on
//! the fuzz seeds (written by `fuzz/seeds.py` from `fixtures/`) and on a
//! fixed, deterministic series of mutations of them, a few thousand inputs
//! per target. libFuzzer (`scripts/fuzz`) explores far more; this keeps a
//! regression from reaching main between fuzz runs.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::fuzz_checks::TARGETS;

/// Inputs per target at most, and time per target at most.
const RUNS: usize = 4000;
const BUDGET: Duration = Duration::from_secs(4);

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to mail, MIME, LMTP, HTML and TOML parsers.
const INTERESTING: &[&[u8]] = &[
    b"\r\n", b"\n", b"\r", b":", b";", b" ", b"\t", b"\0", b"\xff", b"\x1b$B", b"\x1b(B", b"=?", b"?=", b"<", b">",
    b"\"", b"(", b")", b"\\", b"@", b"--", b"\r\n.\r\n", b"boundary=\"b\"\r\n\r\n--b\r\nContent-Type: multipart/mixed; ",
    b"&#", b"<!--", b"-->", b"[", b"]", b"=", b"%", b"+",
];

fn mutate(rng: &mut XorShift, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..=rng.below(6) {
        let pos = rng.below(out.len() + 1);
        match rng.below(6) {
            0 => out.insert(pos, rng.next() as u8),
            1 => {
                let s = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(pos..pos, s.iter().copied());
            }
            2 if !out.is_empty() => {
                let end = (pos + rng.below(32)).min(out.len());
                out.drain(pos.min(end)..end);
            }
            3 if pos < out.len() => out[pos] ^= 1 << rng.below(8),
            4 => {
                // Repeat a slice: deep nesting and long runs come from here.
                let start = rng.below(out.len());
                let end = (start + rng.below(64)).min(out.len());
                let piece = out[start..end].to_vec();
                for _ in 0..rng.below(50) {
                    out.splice(pos..pos, piece.iter().copied());
                }
            }
            _ => {
                let other = &others[rng.below(others.len())];
                let start = rng.below(other.len());
                let end = (start + rng.below(256)).min(other.len());
                out.splice(pos..pos, other[start..end].iter().copied());
            }
        }
    }
    out
}

#[test]
fn every_parser_survives_mutated_seeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let names: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    let status = Command::new("python3")
        .arg(root.join("fuzz/seeds.py"))
        .arg(dir.path())
        .args(&names)
        .status()
        .expect("run fuzz/seeds.py");
    assert!(status.success(), "fuzz/seeds.py failed");

    let mut failures = Vec::new();
    for (name, check) in TARGETS {
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(dir.path().join(name))
            .expect("seed dir")
            .map(|e| std::fs::read(e.expect("entry").path()).expect("read seed"))
            .collect();
        seeds.sort();
        assert!(!seeds.is_empty(), "{name}: no seeds, so nothing would be tested");
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        let start = Instant::now();
        let mut runs = 0;
        while runs < RUNS && start.elapsed() < BUDGET {
            let input = if runs < seeds.len() {
                seeds[runs].clone()
            } else {
                let pick = rng.below(seeds.len());
                mutate(&mut rng, &seeds[pick], &seeds)
            };
            runs += 1;
            if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
                let path = std::env::temp_dir().join(format!("mamoru-fuzz-smoke-{name}-{runs}"));
                std::fs::write(&path, &input).expect("keep failing input");
                failures.push(format!("{name}: input #{runs} broke the property (saved to {})", path.display()));
                break;
            }
        }
        eprintln!("fuzz smoke {name}: {runs} inputs from {} seeds", seeds.len());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
