//! `mamoru backup`, `mamoru store copy` and `mamoru subscribers
//! export|import`: the operator's commands on the data itself.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;

use anyhow::Context as _;
use mamoru_core::token::{Claims, Purpose};
use mamoru_core::{Config, mail};
use mamoru_store::import::{self, ImportMode, Imported};

use crate::cli::{BackupArgs, ExportArgs, ImportArgs, StoreCommand, StoreCopyArgs, SubscribersCommand};
use crate::setup;

pub fn backup(cfg: Config, args: BackupArgs) -> anyhow::Result<()> {
    let (store, _keys) = setup::open_store(&cfg)?;
    store.backup_to(&args.file).with_context(|| format!("back up the database to {}", args.file.display()))?;
    eprintln!("mamoru: database copied to {}; keep DATA_DIR/keys/ too (and apart from it)", args.file.display());
    Ok(())
}

pub fn store(cfg: Config, cmd: StoreCommand) -> anyhow::Result<()> {
    match cmd {
        StoreCommand::Copy(args) => store_copy(cfg, args),
    }
}

/// Copies the SQLite database of the data dir into PostgreSQL: one bar of
/// rows over all tables, with the table being copied; then the counts of
/// both sides, one line per table. Neither the URL (it may hold a
/// password) nor any row is printed.
fn store_copy(cfg: Config, args: StoreCopyArgs) -> anyhow::Result<()> {
    use mamoru_store::copy::{self, Progress};
    let db = cfg.data_dir.join(mamoru_store::DB_FILE);
    anyhow::ensure!(db.is_file(), "no SQLite database at {}: nothing to copy", db.display());
    let keys = mamoru_store::keys::load_or_create(&cfg.data_dir).context("load keys")?;
    let wait = std::time::Duration::from_millis(cfg.store.busy_timeout_ms.max(10_000));
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows {msg}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let ca = Some(std::path::Path::new(&cfg.store.tls_ca_file)).filter(|p| !p.as_os_str().is_empty());
    let counts = copy::sqlite_to_postgres(&db, &args.to, ca, &keys, wait, &mut |p| match p {
        Progress::Plan { tables } => bar.set_length(tables.iter().map(|t| t.1).sum()),
        Progress::Table { name, .. } => bar.set_message(name.to_owned()),
        Progress::Rows { rows } => bar.inc(rows),
        Progress::Verifying => bar.set_message("checking"),
    });
    bar.finish_and_clear();
    let counts = counts.context("copy the SQLite database into PostgreSQL")?;
    println!("{:<24} {:>12} {:>12}", "table", "sqlite", "postgresql");
    for c in &counts {
        println!("{:<24} {:>12} {:>12}", c.table, c.sqlite, c.postgres);
    }
    let rows: u64 = counts.iter().map(|c| c.postgres).sum();
    eprintln!(
        "mamoru: copied {rows} rows in {} tables; {} is unchanged. Set [store] url to the target, then start mamoru",
        counts.len(),
        db.display()
    );
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
    let out: Box<dyn Write> = match &args.output {
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
    import::write_export(&rows, out).context("write the CSV")?;
    eprintln!("mamoru: exported {} subscribers (addresses in clear: handle as personal data)", rows.len());
    Ok(())
}

fn import(cfg: Config, args: ImportArgs) -> anyhow::Result<()> {
    let bytes = if args.file.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::stdin().lock().read_to_end(&mut b).context("read the CSV from stdin")?;
        b
    } else {
        std::fs::read(&args.file).with_context(|| format!("read {}", args.file.display()))?
    };
    // A file that cannot be read as a whole imports nothing.
    let roster = import::parse_roster(&cfg, &bytes).context("read the CSV")?;
    eprintln!("mamoru: read the CSV as {}", roster.encoding);

    let (store, keys) = setup::open_store(&cfg)?;
    let tokens = keys.token_key();
    let bar = indicatif::ProgressBar::new(roster.rows.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut added, mut invited, mut existing) = (0u64, 0u64, 0u64);
    for row in &roster.rows {
        bar.inc(1);
        let (addr, districts) = (&row.address, &row.districts);
        let now = mamoru_core::now();
        let result = if args.confirm {
            let expires_at = now + cfg.tokens.register_ttl_secs;
            let mut random = [0u8; 12];
            store.sealer().random(&mut random).context("random source")?;
            store.import_subscriber(
                addr,
                districts,
                now,
                ImportMode::Invite {
                    token_expires_at: expires_at,
                    render: |sid, nonce| {
                        let token = tokens.sign(&Claims { purpose: Purpose::Register, subject: sid.subject(), nonce, expires_at });
                        mail::registration_received(&cfg, addr, &token, now, mail::message_id(&random, &cfg))
                    },
                },
            )
        } else {
            store.import_subscriber(addr, districts, now, ImportMode::<fn(mamoru_core::SubscriberId, [u8; 8]) -> mail::OutgoingMail>::Silent)
        };
        match result.with_context(|| format!("line {}: store", row.line))? {
            Imported::Added(_) => added += 1,
            Imported::Invited(_) => invited += 1,
            Imported::AlreadyRegistered => existing += 1,
        }
    }
    bar.finish_and_clear();
    // Bad rows are reported by line number only: the operator has the file,
    // and the terminal may be logged.
    for b in &roster.bad {
        eprintln!("mamoru: {b}");
    }
    println!(
        "imported {added}, invited {invited}, already registered {existing}, duplicates {}, bad rows {}",
        roster.duplicates,
        roster.bad.len()
    );
    if !roster.bad.is_empty() {
        anyhow::bail!("{} bad rows skipped (listed above); the other rows were imported", roster.bad.len());
    }
    Ok(())
}

