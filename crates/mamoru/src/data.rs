//! `mamoru backup` and `mamoru subscribers export|import`: the operator's
//! commands on the data itself.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;

use anyhow::Context as _;
use mamoru_core::token::{Claims, Purpose};
use mamoru_core::{Config, EmailAddress, mail};
use mamoru_store::import::{ImportMode, Imported};

use crate::cli::{BackupArgs, ExportArgs, ImportArgs, SubscribersCommand};
use crate::setup;

pub fn backup(cfg: Config, args: BackupArgs) -> anyhow::Result<()> {
    let (store, _keys) = setup::open_store(&cfg)?;
    store.backup_to(&args.file).with_context(|| format!("back up the database to {}", args.file.display()))?;
    eprintln!("mamoru: database copied to {}; keep DATA_DIR/keys/ too (and apart from it)", args.file.display());
    Ok(())
}

pub fn subscribers(cfg: Config, cmd: SubscribersCommand) -> anyhow::Result<()> {
    match cmd {
        SubscribersCommand::Export(args) => export(cfg, args),
        SubscribersCommand::Import(args) => import(cfg, args),
    }
}

fn export(cfg: Config, args: ExportArgs) -> anyhow::Result<()> {
    let (store, _keys) = setup::open_store(&cfg)?;
    let rows = store.export_subscribers().context("read subscribers")?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    writeln!(out, "address,status,districts,created_at,confirmed_at")?;
    for r in &rows {
        let districts: Vec<String> = r.districts.iter().map(u32::to_string).collect();
        // Addresses never hold a comma or a quote (EmailAddress refuses
        // them), so no field needs quoting.
        writeln!(out, "{},{},{},{},{}", r.address.as_str(), r.status, districts.join(";"), r.created_at, r.confirmed_at)?;
    }
    out.flush()?;
    eprintln!("mamoru: exported {} subscribers (addresses in clear: handle as personal data)", rows.len());
    Ok(())
}

/// Splits one CSV line (RFC 4180 quoting, no line breaks inside fields).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                if let Some(f) = fields.last_mut() {
                    f.push('"');
                }
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            _ => {
                if let Some(f) = fields.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    fields.into_iter().map(|f| f.trim().to_string()).collect()
}

/// District ids from `1;3` or `中央地区;昭和地区`; empty means all.
fn parse_districts(cfg: &Config, field: &str) -> Result<Vec<u32>, String> {
    if field.trim().is_empty() {
        return Ok(cfg.districts.iter().map(|d| d.id).collect());
    }
    let mut ids = Vec::new();
    for part in field.split([';', '|']).map(str::trim).filter(|p| !p.is_empty()) {
        let found = part.parse::<u32>().ok().and_then(|id| cfg.district(id)).or_else(|| cfg.districts.iter().find(|d| d.name == part));
        match found {
            Some(d) => ids.push(d.id),
            None => return Err(format!("unknown district {part:?}")),
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

fn import(cfg: Config, args: ImportArgs) -> anyhow::Result<()> {
    let input: Box<dyn Read> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(&args.file).with_context(|| format!("open {}", args.file.display()))?)
    };
    let lines: Vec<String> = BufReader::new(input).lines().collect::<Result<_, _>>().context("read the CSV")?;
    let (header_line, body) = lines.split_first().context("the CSV is empty")?;
    let header: Vec<String> = csv_fields(header_line.trim_start_matches('\u{feff}')).into_iter().map(|h| h.to_ascii_lowercase()).collect();
    let col_addr = header.iter().position(|h| h == "address").context("the CSV header needs an `address` column")?;
    let col_districts = header.iter().position(|h| h == "districts");

    let (store, keys) = setup::open_store(&cfg)?;
    let tokens = keys.token_key();
    let bar = indicatif::ProgressBar::new(body.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut added, mut invited, mut existing, mut duplicates) = (0u64, 0u64, 0u64, 0u64);
    let mut bad: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in body.iter().enumerate() {
        bar.inc(1);
        let lineno = i + 2;
        if line.trim().is_empty() {
            continue;
        }
        let fields = csv_fields(line);
        let raw = fields.get(col_addr).map(String::as_str).unwrap_or("");
        // Bad rows are reported by line number only: the operator has the
        // file, and the terminal may be logged.
        let Ok(addr) = EmailAddress::parse(raw) else {
            bad.push(format!("line {lineno}: not a valid address"));
            continue;
        };
        let districts = match parse_districts(&cfg, col_districts.and_then(|c| fields.get(c)).map(String::as_str).unwrap_or("")) {
            Ok(d) => d,
            Err(e) => {
                bad.push(format!("line {lineno}: {e}"));
                continue;
            }
        };
        if !seen.insert(store.sealer().index(&addr)) {
            duplicates += 1;
            continue;
        }
        let now = mamoru_core::now();
        let result = if args.confirm {
            let expires_at = now + cfg.tokens.register_ttl_secs;
            let mut random = [0u8; 12];
            store.sealer().random(&mut random).context("random source")?;
            store.import_subscriber(
                &addr,
                &districts,
                now,
                ImportMode::Invite {
                    token_expires_at: expires_at,
                    render: |sid, nonce| {
                        let token = tokens.sign(&Claims { purpose: Purpose::Register, subject: sid as u64, nonce, expires_at });
                        mail::registration_received(&cfg, &addr, &token, now, mail::message_id(&random, &cfg))
                    },
                },
            )
        } else {
            store.import_subscriber(&addr, &districts, now, ImportMode::<fn(i64, [u8; 8]) -> mail::OutgoingMail>::Silent)
        };
        match result.with_context(|| format!("line {lineno}: store"))? {
            Imported::Added(_) => added += 1,
            Imported::Invited(_) => invited += 1,
            Imported::AlreadyRegistered => existing += 1,
        }
    }
    bar.finish_and_clear();
    for b in &bad {
        eprintln!("mamoru: {b}");
    }
    println!(
        "imported {added}, invited {invited}, already registered {existing}, duplicates {duplicates}, bad rows {}",
        bad.len()
    );
    if !bad.is_empty() {
        anyhow::bail!("{} bad rows skipped (listed above); the other rows were imported", bad.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_handle_quotes() {
        assert_eq!(csv_fields("a,b , c"), vec!["a", "b", "c"]);
        assert_eq!(csv_fields("\"x,y\",\"say \"\"hi\"\"\""), vec!["x,y", "say \"hi\""]);
        assert_eq!(csv_fields(""), vec![""]);
    }

    #[test]
    fn districts_by_id_or_name() {
        let cfg = Config::default();
        assert_eq!(parse_districts(&cfg, "3;1;3"), Ok(vec![1, 3]));
        assert_eq!(parse_districts(&cfg, "中央地区;昭和地区"), Ok(vec![1, 3]));
        assert_eq!(parse_districts(&cfg, "").map(|v| v.len()), Ok(10));
        assert!(parse_districts(&cfg, "99").is_err());
    }
}
