//! `mamoru subscribers import|export`: moving a list in or out (a council
//! switching from another service, or keeping an offline copy).
//!
//! The CSV side is pure: [`parse_roster`] takes the file's bytes and gives
//! the rows to import and the bad rows by line number; [`write_export`]
//! writes the export. The rules:
//!
//! - Encoding: valid UTF-8 (a BOM is dropped) is read as UTF-8; anything
//!   else is decoded as Shift_JIS (Windows code page 932, as Excel saves a
//!   "CSV" on a Japanese system) and refused, importing nothing, if that
//!   fails too.
//! - Format: RFC 4180 with the `csv` crate: quoted fields may hold commas,
//!   quotes and line breaks; CRLF or LF; rows may have fewer or more fields
//!   than the header. Blank rows (also rows of empty cells only) are skipped.
//! - The header names an `address` column and optionally `districts`; other
//!   columns are ignored. A row is bad if its address is invalid or a
//!   district unknown; it is reported by the physical line its record
//!   starts on (and where it ends, when a quoted field spans lines), and the
//!   other rows are imported. An address seen twice counts once.
//! - Spreadsheet formulas: the export prefixes `'` to a cell starting with
//!   `=`, `+`, `-`, `@`, tab, CR or `'` (addresses may legally start with
//!   most of them), so a spreadsheet shows it as text; the import removes
//!   exactly that one `'`, so an export imports back unchanged.

use std::borrow::Cow;

use mamoru_core::mail::OutgoingMail;
use mamoru_core::token::{Nonce, Purpose};
use mamoru_core::{Config, EmailAddress, UnixTime};
use crate::db::OptionalExt;
use crate::params;

use crate::states::SubscriberStatus;
use crate::{Result, Store, SubscriberId, audit, districts_of};

/// What importing one address did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imported {
    /// Subscribed silently: active with the given districts.
    Added(SubscriberId),
    /// A pending registration with the districts pre-selected, and a 登録受付
    /// mail queued: the address owner confirms (or ignores it, and the
    /// registration is purged after 72 h).
    Invited(SubscriberId),
    /// The address is already registered (any status): left as it is.
    AlreadyRegistered,
}

/// One exported subscriber, decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRow {
    pub address: EmailAddress,
    pub status: SubscriberStatus,
    pub districts: Vec<u32>,
    pub created_at: UnixTime,
    pub confirmed_at: UnixTime,
}

/// Why a whole CSV file cannot be imported (nothing is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RosterError {
    #[error("line {line}: the file is neither UTF-8 nor Shift_JIS; save it as \"CSV UTF-8\" or \"CSV\"")]
    Encoding { line: u64 },
    #[error("the CSV is empty")]
    Empty,
    #[error("the CSV header (line {line}) needs an `address` column")]
    NoAddressColumn { line: u64 },
}

/// Why one row is not imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// The address itself is not repeated: the operator has the file, and
    /// the terminal may be logged.
    #[error("not a valid address")]
    Address,
    #[error("unknown district {0:?}")]
    District(String),
    /// Not echoed: it looks like an address (columns mixed up).
    #[error("an address in the districts column")]
    AddressAsDistrict,
    #[error("not a CSV record: {0}")]
    Csv(String),
}

/// A row that is not imported: where its record starts and ends in the
/// file (1-based physical lines; equal unless a quoted field spans lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub line: u64,
    pub last_line: u64,
    pub error: RowError,
}

impl std::fmt::Display for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.last_line > self.line {
            write!(f, "lines {}-{}: {}", self.line, self.last_line, self.error)
        } else {
            write!(f, "line {}: {}", self.line, self.error)
        }
    }
}

/// A row to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterRow {
    /// The physical line its record starts on.
    pub line: u64,
    pub address: EmailAddress,
    /// Configured district ids, sorted; every district if the cell was empty.
    pub districts: Vec<u32>,
}

/// A parsed CSV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    /// `UTF-8` or `Shift_JIS`: how the bytes were read.
    pub encoding: &'static str,
    pub rows: Vec<RosterRow>,
    pub bad: Vec<BadRow>,
    /// Rows whose address (compared as the blind index does) came earlier.
    pub duplicates: u64,
}

/// The file's text: UTF-8 if it is valid UTF-8, else Shift_JIS (CP932).
fn decode_roster(bytes: &[u8]) -> Result<(Cow<'_, str>, &'static str), RosterError> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Ok((Cow::Borrowed(text.strip_prefix('\u{feff}').unwrap_or(text)), "UTF-8"));
    }
    let mut decoder = encoding_rs::SHIFT_JIS.new_decoder_without_bom_handling();
    let room = decoder.max_utf8_buffer_length_without_replacement(bytes.len()).unwrap_or(bytes.len().saturating_mul(3));
    let mut text = String::with_capacity(room);
    let mut read_total = 0;
    loop {
        let (result, read) = decoder.decode_to_string_without_replacement(&bytes[read_total..], &mut text, true);
        read_total += read;
        match result {
            encoding_rs::DecoderResult::InputEmpty => return Ok((Cow::Owned(text), "Shift_JIS")),
            encoding_rs::DecoderResult::OutputFull => text.reserve(3 * (bytes.len() - read_total) + 16),
            encoding_rs::DecoderResult::Malformed(bad, after) => {
                // The bad sequence ends `after` bytes before what was read.
                let at = read_total.saturating_sub(usize::from(bad) + usize::from(after)).min(bytes.len());
                let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count() as u64;
                return Err(RosterError::Encoding { line });
            }
        }
    }
}

/// Removes the one `'` that [`spreadsheet_safe`] adds.
fn unguard(cell: &str) -> &str {
    let cell = cell.trim();
    match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(GUARDED) => rest,
        _ => cell,
    }
}

/// First characters a spreadsheet may take as a formula (OWASP's list), and
/// the guard itself, so that guarding can be undone exactly.
const GUARDED: [char; 7] = ['=', '+', '-', '@', '\t', '\r', '\''];

/// `cell` as a spreadsheet shows it literally: with a `'` in front if it
/// starts with a character that would make it a formula (or with `'`).
pub fn spreadsheet_safe(cell: &str) -> Cow<'_, str> {
    if cell.starts_with(GUARDED) { Cow::Owned(format!("'{cell}")) } else { Cow::Borrowed(cell) }
}

/// District ids from `1;3`, `中央地区;昭和地区` or `中央;昭和` (`|` also
/// separates; each part as a post names a district, full-width forms too);
/// empty, or separators only, means every district (what an export of
/// such a row reads back as, too).
pub fn parse_districts(cfg: &Config, field: &str) -> Result<Vec<u32>, RowError> {
    let parts: Vec<&str> = field.split([';', '|']).map(str::trim).filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Ok(cfg.districts.iter().map(|d| d.id).collect());
    }
    let mut ids = Vec::new();
    for part in parts {
        match mamoru_core::alert::district_id(cfg, &mamoru_core::alert::normalize_width(part)) {
            Some(id) => ids.push(id),
            None if part.contains('@') => return Err(RowError::AddressAsDistrict),
            None => return Err(RowError::District(part.to_string())),
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Reads a subscriber CSV (see the module documentation for the rules).
/// Pure: bytes in, rows and bad rows out; `Err` only when the file as a
/// whole cannot be read, and then nothing should be imported.
pub fn parse_roster(cfg: &Config, bytes: &[u8]) -> Result<Roster, RosterError> {
    let (text, encoding) = decode_roster(bytes)?;
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text.as_bytes());
    let mut records = reader.records();
    let mut header = None;
    for record in records.by_ref() {
        // The reader only fails on invalid UTF-8, which decoding ruled out;
        // a header it cannot read is no header.
        let Ok(record) = record else { continue };
        if record.iter().any(|f| !f.trim().is_empty()) {
            header = Some(record);
            break;
        }
    }
    // Physical lines from byte offsets: the reader's own line count is off
    // after CRLF line ends and blank lines.
    let newlines: Vec<usize> = text.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(i, _)| i).collect();
    let line_at = |pos: Option<&csv::Position>| -> u64 {
        let Some(pos) = pos else { return 0 };
        let start = usize::try_from(pos.byte()).unwrap_or(usize::MAX).min(text.len());
        // A record's offset may point at the line ends before it.
        let skipped = text[start..].bytes().take_while(|b| matches!(b, b'\r' | b'\n')).count();
        1 + newlines.partition_point(|&i| i < start + skipped) as u64
    };
    let header = header.ok_or(RosterError::Empty)?;
    let header_line = line_at(header.position());
    let names: Vec<String> = header.iter().map(|h| unguard(h).to_lowercase()).collect();
    let col_addr = names.iter().position(|h| h == "address").ok_or(RosterError::NoAddressColumn { line: header_line })?;
    let col_districts = names.iter().position(|h| h == "districts");

    let mut roster = Roster { encoding, rows: Vec::new(), bad: Vec::new(), duplicates: 0 };
    let mut seen = std::collections::HashSet::new();
    for record in records {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = line_at(e.position());
                roster.bad.push(BadRow { line, last_line: line, error: RowError::Csv(e.to_string()) });
                continue;
            }
        };
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let line = line_at(record.position());
        let breaks = record.iter().map(|f| f.matches('\n').count() as u64).sum::<u64>();
        let bad = |error| BadRow { line, last_line: line + breaks, error };
        let Ok(address) = EmailAddress::parse(unguard(record.get(col_addr).unwrap_or(""))) else {
            roster.bad.push(bad(RowError::Address));
            continue;
        };
        let districts = match parse_districts(cfg, col_districts.and_then(|c| record.get(c)).map_or("", unguard)) {
            Ok(d) => d,
            Err(e) => {
                roster.bad.push(bad(e));
                continue;
            }
        };
        if !seen.insert(address.canonical()) {
            roster.duplicates += 1;
            continue;
        }
        roster.rows.push(RosterRow { line, address, districts });
    }
    Ok(roster)
}

/// Writes the export CSV (UTF-8, a header, one row per subscriber), every
/// cell made [`spreadsheet_safe`].
pub fn write_export<W: std::io::Write>(rows: &[ExportRow], out: W) -> std::result::Result<(), csv::Error> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(["address", "status", "districts", "created_at", "confirmed_at"])?;
    for r in rows {
        let districts: Vec<String> = r.districts.iter().map(u32::to_string).collect();
        let cells = [r.address.as_str().to_string(), r.status.as_str().to_owned(), districts.join(";"), r.created_at.to_string(), r.confirmed_at.to_string()];
        w.write_record(cells.iter().map(|c| spreadsheet_safe(c).into_owned()))?;
    }
    w.flush()?;
    Ok(())
}

/// How a new subscriber enters.
pub enum ImportMode<F: FnOnce(SubscriberId, Nonce) -> OutgoingMail> {
    /// Active at once.
    Silent,
    /// Pending, with a 登録受付 mail whose token expires at the given time.
    Invite { token_expires_at: UnixTime, render: F },
}

impl Store {
    /// Imports one address with `districts` (configured ids, checked by the
    /// caller). Not rate limited: the operator vouches for the list.
    pub fn import_subscriber<F: FnOnce(SubscriberId, Nonce) -> OutgoingMail>(
        &self,
        addr: &EmailAddress,
        districts: &[u32],
        now: UnixTime,
        mode: ImportMode<F>,
    ) -> Result<Imported> {
        let index = self.sealer.index(addr);
        let tx = self.begin()?;
        let existing: Option<SubscriberId> =
            tx.query_row("SELECT id FROM subscribers WHERE addr_index = ?1", params![&index[..]], |r| r.get(0)).optional()?;
        if existing.is_some() {
            return Ok(Imported::AlreadyRegistered);
        }
        let (status, confirmed_at) = match mode {
            ImportMode::Silent => (SubscriberStatus::Active, now),
            ImportMode::Invite { .. } => (SubscriberStatus::Pending, 0),
        };
        let subscriber: SubscriberId = tx.query_row(
            "INSERT INTO subscribers (addr_index, addr_sealed, domain, status, created_at, confirmed_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5) RETURNING id",
            params![&index[..], self.sealer.seal_address(addr)?, addr.domain(), status, now, confirmed_at],
            |r| r.get(0),
        )?;
        {
            let mut ins = tx.prepare("INSERT INTO subscriber_districts (subscriber_id, district_id) VALUES (?1, ?2)")?;
            for d in districts {
                ins.execute(params![subscriber, d])?;
            }
        }
        let imported = match mode {
            ImportMode::Silent => {
                let mut link_nonce: Nonce = [0; 8];
                self.sealer.random(&mut link_nonce)?;
                tx.execute("UPDATE subscribers SET link_nonce = ?1 WHERE id = ?2", params![&link_nonce[..], subscriber])?;
                Imported::Added(subscriber)
            }
            ImportMode::Invite { token_expires_at, render } => {
                let nonce = self.issue_token(&tx, Purpose::Register, subscriber.get(), token_expires_at)?;
                let mail = render(subscriber, nonce);
                self.insert_outbox(&tx, &mail, Some(subscriber), 0, now, token_expires_at)?;
                Imported::Invited(subscriber)
            }
        };
        audit(&tx, now, "cli", "subscriber-imported", &format!("subscriber={subscriber} addr={} status={}", addr.masked(), status.as_str()))?;
        tx.commit()?;
        Ok(imported)
    }

    /// Every confirmed subscriber (active or suspended), decrypted, by id.
    pub fn export_subscribers(&self) -> Result<Vec<ExportRow>> {
        let conn = self.conn()?;
        let rows: Vec<(SubscriberId, Vec<u8>, SubscriberStatus, i64, i64)> = {
            let mut st = conn.prepare(
                "SELECT id, addr_sealed, status, created_at, confirmed_at FROM subscribers
                 WHERE status IN ('active', 'suspended') ORDER BY id",
            )?;
            let it = st.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
            it.collect::<Result<_>>()?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (id, sealed, status, created_at, confirmed_at) in rows {
            out.push(ExportRow {
                address: self.sealer.open_address(&sealed)?,
                status,
                districts: districts_of(&conn, id)?,
                created_at,
                confirmed_at,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/../../fixtures/csv/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn parse(bytes: &[u8]) -> Roster {
        parse_roster(&Config::default(), bytes).expect("readable")
    }

    fn addresses(r: &Roster) -> Vec<(u64, &str, Vec<u32>)> {
        r.rows.iter().map(|r| (r.line, r.address.as_str(), r.districts.clone())).collect()
    }

    #[test]
    fn districts_by_id_or_name() {
        let cfg = Config::default();
        assert_eq!(parse_districts(&cfg, "3;1;3"), Ok(vec![1, 3]));
        assert_eq!(parse_districts(&cfg, "中央地区;昭和地区"), Ok(vec![1, 3]));
        // As a post names them: without 地区, full-width, circled.
        assert_eq!(parse_districts(&cfg, "中央;昭和"), Ok(vec![1, 3]));
        assert_eq!(parse_districts(&cfg, "１|③"), Ok(vec![1, 3]));
        assert_eq!(parse_districts(&cfg, "").map(|v| v.len()), Ok(10));
        assert_eq!(parse_districts(&cfg, " ; |").map(|v| v.len()), Ok(10), "separators only: as empty");
        assert_eq!(parse_districts(&cfg, "99"), Err(RowError::District("99".into())));
        assert_eq!(parse_districts(&cfg, "1;hanako@ezweb.ne.jp"), Err(RowError::AddressAsDistrict), "never echoed");
    }

    #[test]
    fn reads_shift_jis_as_excel_saves_it() {
        let r = parse(&fixture("excel-shift_jis.csv"));
        assert_eq!(r.encoding, "Shift_JIS");
        assert_eq!(
            addresses(&r),
            vec![
                (2, "taro..yamada.@docomo.ne.jp", vec![1, 3]),
                (3, "hanako@ezweb.ne.jp", vec![2]),
                (4, "ichiro@i.softbank.jp", (1..=10).collect()),
            ]
        );
        assert!(r.bad.is_empty(), "{:?}", r.bad);
    }

    #[test]
    fn reads_utf8_with_a_bom_and_removes_the_export_guard() {
        let r = parse(&fixture("utf8-bom.csv"));
        assert_eq!(r.encoding, "UTF-8");
        assert_eq!(
            addresses(&r),
            vec![(2, "parent1@docomo.ne.jp", vec![1]), (3, "-dash@ezweb.ne.jp", vec![3]), (4, "parent2@au.com", vec![2, 4])]
        );
    }

    #[test]
    fn quoted_line_breaks_stay_in_their_record() {
        let r = parse(&fixture("multiline.csv"));
        assert_eq!(
            addresses(&r),
            vec![(2, "one@docomo.ne.jp", vec![1]), (5, "two@ezweb.ne.jp", vec![2]), (6, "three@au.com", vec![3])]
        );
        assert!(r.bad.is_empty(), "{:?}", r.bad);
    }

    #[test]
    fn bad_rows_are_reported_by_line_and_the_rest_is_kept() {
        let r = parse(&fixture("bad-rows.csv"));
        assert_eq!(addresses(&r), vec![(2, "ok1@docomo.ne.jp", vec![1]), (10, "ok3@au.com", vec![2])]);
        let bad: Vec<String> = r.bad.iter().map(ToString::to_string).collect();
        assert_eq!(bad, ["line 4: not a valid address", "line 5: unknown district \"99\"", "lines 8-9: not a valid address"]);
        assert_eq!(r.duplicates, 1);
    }

    #[test]
    fn unreadable_files_import_nothing() {
        let cfg = Config::default();
        // 0xFF is neither UTF-8 nor Shift_JIS.
        assert_eq!(parse_roster(&cfg, b"address\r\na@docomo.ne.jp\r\nb\xff@au.com\r\n"), Err(RosterError::Encoding { line: 3 }));
        // A lead byte before the line end: the line of the lead byte.
        assert_eq!(parse_roster(&cfg, b"address\na\x81\nb@au.com\n"), Err(RosterError::Encoding { line: 2 }));
        assert_eq!(parse_roster(&cfg, b""), Err(RosterError::Empty));
        assert_eq!(parse_roster(&cfg, b"\xef\xbb\xbf\r\n,,\r\n"), Err(RosterError::Empty));
        assert_eq!(parse_roster(&cfg, b"\nmail,districts\na@au.com,1\n"), Err(RosterError::NoAddressColumn { line: 2 }));
    }

    #[test]
    fn export_guards_formula_cells_and_imports_back_unchanged() {
        let cfg = Config::default();
        let addrs = ["=cmd|x@docomo.ne.jp", "+taro@au.com", "-ichiro@ezweb.ne.jp", "'quote@au.com", "''two@au.com", "'=both@au.com", "plain@au.com"];
        let rows: Vec<ExportRow> = addrs
            .iter()
            .map(|a| ExportRow {
                address: EmailAddress::parse(a).expect("valid"),
                status: SubscriberStatus::Active,
                districts: vec![1, 3],
                created_at: 1,
                confirmed_at: 2,
            })
            .collect();
        let mut out = Vec::new();
        write_export(&rows, &mut out).expect("write");
        let text = String::from_utf8(out.clone()).expect("utf-8");
        for line in text.lines().skip(1) {
            assert!(!line.starts_with(['=', '+', '-', '@', '\t', '\r']), "{line}");
        }
        assert!(text.contains("\n'=cmd|x@docomo.ne.jp,active,1;3,1,2\n"), "{text}");
        assert!(text.contains("\n'-ichiro@ezweb.ne.jp,"), "{text}");
        assert!(text.contains("\nplain@au.com,"), "{text}");
        let back = parse_roster(&cfg, &out).expect("readable");
        assert_eq!(back.rows.iter().map(|r| r.address.as_str()).collect::<Vec<_>>(), addrs);
        assert!(back.rows.iter().all(|r| r.districts == [1, 3]));
    }
}
