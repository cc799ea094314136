//! `mamoru admin add|list|disable`: run by an operator on the machine, so
//! the audit log names the actor `cli`.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::{Context as _, bail};
use mamoru_core::{Config, EmailAddress, password};
use mamoru_store::admins::AdminAdded;

use crate::cli::AdminCommand;
use crate::setup;

pub fn run(cfg: Config, cmd: AdminCommand) -> anyhow::Result<()> {
    let (store, _keys) = setup::open_store(&cfg)?;
    let now = mamoru_core::now();
    let mut out = std::io::stdout().lock();
    match cmd {
        AdminCommand::Add(args) => {
            if args.id.is_empty() || args.id.len() > 64 || !args.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                bail!("admin ID must be 1–64 letters, digits, '.', '_' or '-'");
            }
            let email = EmailAddress::parse(&args.email).map_err(|e| anyhow::anyhow!("--email: {e}"))?;
            for d in &args.districts {
                if cfg.district(*d).is_none() {
                    bail!("--districts: no district with id {d}");
                }
            }
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprint!("password for {} (at least {} characters): ", args.id, password::MIN_LEN);
            }
            let mut line = String::new();
            stdin.lock().read_line(&mut line).context("read password from stdin")?;
            let pw = line.trim_end_matches(['\r', '\n']);
            let mut salt = [0u8; 16];
            store.sealer().random(&mut salt)?;
            let hash = password::hash(pw, &salt)?;
            match store.add_admin(&args.id, &email, &hash, &args.districts, "cli", now)? {
                AdminAdded::Added(_) => writeln!(out, "admin {} added ({})", args.id, email.masked())?,
                AdminAdded::LoginTaken => bail!("admin {} already exists", args.id),
            }
        }
        AdminCommand::List => {
            for a in store.list_admins()? {
                let districts = if a.districts.is_empty() {
                    "all".to_string()
                } else {
                    a.districts.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
                };
                let state = if a.active { "active" } else { "disabled" };
                // Masked: the list may end up in a terminal log or a ticket.
                writeln!(out, "{:<20} {:<9} {:<30} districts={districts}", a.login, state, a.email.masked())?;
            }
        }
        AdminCommand::Disable { id } => {
            if !store.disable_admin(&id, "cli", now)? {
                bail!("no admin {id}");
            }
            writeln!(out, "admin {id} disabled")?;
        }
    }
    Ok(())
}
