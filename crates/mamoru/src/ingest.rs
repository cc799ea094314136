//! `mamoru ingest`, the Postfix `pipe(8)` entry point.
//!
//! Exit-code contract: 0 only after a durable commit or a
//! deliberate, logged drop; 75 (EX_TEMPFAIL) for everything else, so Postfix
//! keeps the message and retries. A panic is caught and becomes 75 too: exit
//! code 101 would make Postfix bounce the mail to a sender that may be forged.

use std::io::Read as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use mamoru_ingest::{Outcome, Registrar};

use crate::cli::IngestArgs;
use crate::setup;

const EX_TEMPFAIL: u8 = 75;

pub fn main(config: Option<&Path>, args: IngestArgs) -> ExitCode {
    // The default hook would print the panic message; keep that (it helps
    // the operator) and make sure the process still exits 75.
    match catch_unwind(AssertUnwindSafe(|| run(config, &args))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::warn!("{e:#}");
            eprintln!("mamoru ingest: {e:#}; the MTA should retry");
            ExitCode::from(EX_TEMPFAIL)
        }
        Err(_) => {
            eprintln!("mamoru ingest: internal error; the MTA should retry");
            ExitCode::from(EX_TEMPFAIL)
        }
    }
}

fn run(config: Option<&Path>, args: &IngestArgs) -> anyhow::Result<()> {
    let cfg = Arc::new(setup::load(config)?);
    setup::init_logging("info", cfg.log.format);
    fault_injection();
    if args.imap_once {
        return imap_once(cfg);
    }
    let (Some(sender), Some(recipient)) = (&args.sender, &args.recipient) else {
        anyhow::bail!("--sender and --recipient are required");
    };

    // Read one byte past the limit to tell "exactly at the limit" from "over".
    let limit = cfg.ingest.max_message_bytes;
    let mut message = Vec::new();
    std::io::stdin().lock().take(limit + 1).read_to_end(&mut message).context("read message from stdin")?;
    if message.len() as u64 > limit {
        tracing::info!(limit, "inbound message over the size limit dropped");
        return Ok(());
    }

    let (store, keys) = setup::open_store(&cfg)?;
    let registrar = Registrar::new(std::sync::Arc::new(mamoru_app::App::new(cfg, store, keys.token_key())))
        .with_entry(mamoru_app::metrics::Entry::Pipe);
    match registrar.deliver_authenticated(sender, recipient, args.sasl_username.as_deref(), &message) {
        Outcome::Stored | Outcome::Dropped(_) => Ok(()),
        Outcome::Transient(reason) => Err(anyhow::anyhow!("temporary failure: {reason}")),
    }
}

/// `--imap-once`: one session per `[[ingest.imap]]` mailbox, each handling
/// what is there. Every mailbox is tried; an error in any makes the command
/// fail (exit 75) after the others were handled.
fn imap_once(cfg: Arc<mamoru_core::Config>) -> anyhow::Result<()> {
    if cfg.ingest.imap.is_empty() {
        anyhow::bail!("no [[ingest.imap]] mailbox is configured");
    }
    let (store, keys) = setup::open_store(&cfg)?;
    let app = Arc::new(mamoru_app::App::new(cfg.clone(), store.clone(), keys.token_key()));
    let registrar = Arc::new(Registrar::new(app).with_entry(mamoru_app::metrics::Entry::Imap));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().context("start async runtime")?;
    let failed = rt.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut failed = 0;
        for m in &cfg.ingest.imap {
            let watcher = match crate::serve::imap_watcher(&cfg, m, &registrar, &store) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(mailbox = m.label(), error = %e, "IMAP mailbox: {e}");
                    failed += 1;
                    continue;
                }
            };
            if let Err(e) = watcher.once(&shutdown).await {
                tracing::warn!(mailbox = m.label(), error = %e, "IMAP mailbox: {e}; not drained");
                failed += 1;
            }
        }
        failed
    });
    if failed > 0 {
        anyhow::bail!("{failed} IMAP mailbox(es) could not be handled");
    }
    Ok(())
}

/// Test builds can be told to fail at a chosen point, to prove the exit-code
/// contract holds on paths that are otherwise hard to reach.
fn fault_injection() {
    #[cfg(debug_assertions)]
    if std::env::var_os("MAMORU_FAULT").is_some_and(|v| v == "ingest-panic") {
        panic!("injected fault: ingest-panic");
    }
}
