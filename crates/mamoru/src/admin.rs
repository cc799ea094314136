//! `mamoru admin add|list|disable` and `mamoru alert post`: run by an operator on the machine, so
//! the audit log names the actor `cli`.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::{Context as _, bail};
use std::sync::Arc;

use mamoru_app::App;
use mamoru_app::admins::{Actor, NewAdmin, Refusal};
use mamoru_app::alerts::{DraftOutcome, Publisher, Source};
use mamoru_core::{Config, EmailAddress, alert, password};
use mamoru_store::alerts::Published;

use crate::cli::{AdminCommand, AlertCommand};
use crate::setup;

pub fn run(cfg: Config, cmd: AdminCommand) -> anyhow::Result<()> {
    let (store, keys) = setup::open_store(&cfg)?;
    let app = App::new(Arc::new(cfg), store, keys.token_key());
    let now = mamoru_core::now();
    let mut out = std::io::stdout().lock();
    match cmd {
        AdminCommand::Add(args) => {
            let pw = read_password(&args.id)?;
            let new = NewAdmin { login: &args.id, email: &args.email, password: &pw, districts: &args.districts };
            app.add_admin(Actor::Operator, &new, now)?.map_err(|why| refusal(&why, &args.id))?;
            let masked = EmailAddress::parse(args.email.trim()).map(|e| e.masked()).unwrap_or_default();
            writeln!(out, "admin {} added ({masked})", args.id)?;
        }
        AdminCommand::List => {
            for a in app.store.list_admins()? {
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
            app.set_admin_active(Actor::Operator, &id, false, now)?.map_err(|why| refusal(&why, &id))?;
            writeln!(out, "admin {id} disabled")?;
        }
        AdminCommand::Enable { id } => {
            app.set_admin_active(Actor::Operator, &id, true, now)?.map_err(|why| match why {
                Refusal::NoSuchAdmin => anyhow::anyhow!("no disabled admin {id}"),
                why => refusal(&why, &id),
            })?;
            writeln!(out, "admin {id} enabled")?;
        }
        AdminCommand::Password { id } => {
            if app.store.admin_credentials(&id)?.is_none() {
                bail!("no admin {id}");
            }
            let pw = read_password(&id)?;
            app.reset_admin_password(&id, &pw, now)?.map_err(|why| refusal(&why, &id))?;
            writeln!(out, "admin {id}: password changed; web sessions ended")?;
        }
    }
    Ok(())
}

/// A refusal of the admins flow, as the terminal says it.
fn refusal(why: &Refusal, id: &str) -> anyhow::Error {
    match why {
        Refusal::BadLogin => anyhow::anyhow!("admin ID must be 1–64 letters, digits, '.', '_' or '-'"),
        Refusal::BadEmail => anyhow::anyhow!("--email: not a valid address"),
        Refusal::UnknownDistrict(d) => anyhow::anyhow!("--districts: no district with id {d}"),
        Refusal::WeakPassword => anyhow::anyhow!("the password must have at least {} characters, on one line", password::MIN_LEN),
        Refusal::LoginTaken => anyhow::anyhow!("admin {id} already exists"),
        Refusal::NoSuchAdmin => anyhow::anyhow!("no admin {id}"),
        Refusal::NotAllowed | Refusal::Yourself | Refusal::WrongPassword => anyhow::anyhow!("refused: {why:?}"),
    }
}

/// Reads a new password: one line of stdin, prompted on a terminal.
fn read_password(id: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password for {} (at least {} characters): ", id, password::MIN_LEN);
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line).context("read password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// `mamoru alert post`: the same checks and the same preview as a mailed
/// post; `--yes` publishes at once (the operator on the machine is trusted).
pub fn alert(cfg: Config, cmd: AlertCommand) -> anyhow::Result<()> {
    let AlertCommand::Post(args) = cmd;
    setup::init_logging("warn", cfg.log.format);
    let (store, keys) = setup::open_store(&cfg)?;
    let tokens = keys.token_key();
    let now = mamoru_core::now();
    let Some((admin, _)) = store.admin_credentials(&args.admin)? else { bail!("no admin {}", args.admin) };
    if !admin.active {
        bail!("admin {} is disabled", args.admin);
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text).context("read the alert text from stdin")?;
    // The same checks as mailed posts, so the rules cannot drift apart;
    // `--districts` is read as a `地区:` line is.
    let explain = |e: alert::FormatError| anyhow::anyhow!("{}", e.explain(&cfg));
    let districts = alert::parse_districts(&cfg, &args.districts).map_err(explain)?;
    let mut draft = alert::draft(&cfg, &args.title, args.kind.as_deref().unwrap_or(""), districts, &text).map_err(explain)?;
    draft.ask_confirm = args.confirm;
    let app = App::new(Arc::new(cfg.clone()), store, tokens);
    let id = match app.draft(&admin, &draft, Source::Cli, args.test, now)? {
        DraftOutcome::Created { alert, .. } => alert,
        DraftOutcome::Refused(e) => return Err(explain(e)),
        DraftOutcome::Duplicate => bail!("the alert was not recorded"),
    };
    let mut out = std::io::stdout().lock();
    if !args.yes {
        writeln!(out, "alert {id}: preview queued for {} (publish from the link in it)", admin.email.masked())?;
        return Ok(());
    }
    match app.publish(Publisher::Operator { admin: &admin, alert: id }, now)? {
        Published::Published { recipients, .. } => writeln!(out, "alert {id}: published to {recipients} subscribers")?,
        Published::Unusable => bail!("alert {id} could not be published"),
    }
    Ok(())
}
