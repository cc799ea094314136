//! `mamoru admin add|list|disable` and `mamoru alert post|followup|show`: run by an operator on the machine, so
//! the audit log names the actor `cli`.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::{Context as _, bail};
use std::sync::Arc;

use mamoru_app::App;
use mamoru_app::admins::{Actor, NewAdmin, Refusal};
use mamoru_app::alerts::{DraftOutcome, Publisher, Source};
use mamoru_core::alert::FollowupKind;
use mamoru_core::{AlertId, Config, EmailAddress, alert, password};
use mamoru_store::admins::Admin;
use mamoru_store::alerts::Published;
use mamoru_store::states::AlertState;

use crate::cli::{AdminCommand, AlertCommand, AlertFollowupArgs, AlertPostArgs, FollowupKindArg};
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

/// `mamoru alert post|followup|show`.
pub fn alert(cfg: Config, cmd: AlertCommand) -> anyhow::Result<()> {
    match cmd {
        AlertCommand::Post(args) => alert_post(cfg, args),
        AlertCommand::Followup(args) => alert_followup(cfg, args),
        AlertCommand::Show { id } => alert_show(cfg, id),
    }
}

/// The app and the active admin `login`, for posting in its name.
fn poster(cfg: &Config, login: &str) -> anyhow::Result<(App, Admin)> {
    setup::init_logging("warn", cfg.log.format);
    let (store, keys) = setup::open_store(cfg)?;
    let tokens = keys.token_key();
    let Some((admin, _)) = store.admin_credentials(login)? else { bail!("no admin {login}") };
    if !admin.active {
        bail!("admin {login} is disabled");
    }
    Ok((App::new(Arc::new(cfg.clone()), store, tokens), admin))
}

fn read_stdin_text() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text).context("read the alert text from stdin")?;
    Ok(text)
}

/// `mamoru alert post`: the same checks and the same preview as a mailed
/// post; `--yes` publishes at once (the operator on the machine is trusted).
fn alert_post(cfg: Config, args: AlertPostArgs) -> anyhow::Result<()> {
    let now = mamoru_core::now();
    let (app, admin) = poster(&cfg, &args.admin)?;
    let text = read_stdin_text()?;
    // The same checks as mailed posts, so the rules cannot drift apart;
    // `--districts` is read as a `地区:` line is.
    let explain = |e: alert::FormatError| anyhow::anyhow!("{}", e.explain(&cfg));
    let districts = alert::parse_districts(&cfg, &args.districts).map_err(explain)?;
    let mut draft = alert::draft(&cfg, &args.title, args.kind.as_deref().unwrap_or(""), districts, &text).map_err(explain)?;
    draft.ask_confirm = args.confirm;
    draft.urgent = args.urgent;
    draft.occurred = alert::parse_occurred(args.occurred.as_deref().unwrap_or(""), now).map_err(explain)?;
    let outcome = app.draft(&admin, &draft, Source::Cli, args.test, now)?;
    publish_or_preview(&cfg, &app, &admin, outcome, args.yes, args.confirm_stale, now)
}

/// `mamoru alert followup`: a 続報, 解決 or 取消 of a published alert, with
/// the same checks and preview as one posted by mail or from the panel.
fn alert_followup(cfg: Config, args: AlertFollowupArgs) -> anyhow::Result<()> {
    let now = mamoru_core::now();
    let (app, admin) = poster(&cfg, &args.admin)?;
    let text = read_stdin_text()?;
    let kind = match args.kind {
        FollowupKindArg::Update => FollowupKind::Update,
        FollowupKindArg::Resolved => FollowupKind::Resolved,
        FollowupKindArg::Retracted => FollowupKind::Retracted,
    };
    let outcome = app.draft_followup(&admin, args.id, kind, &text, Source::Cli, now)?;
    publish_or_preview(&cfg, &app, &admin, outcome, args.yes, false, now)
}

fn publish_or_preview(cfg: &Config, app: &App, admin: &Admin, outcome: DraftOutcome, yes: bool, stale_ok: bool, now: i64) -> anyhow::Result<()> {
    let id = match outcome {
        DraftOutcome::Created { alert, .. } => alert,
        DraftOutcome::Refused(e) => bail!("{}", e.explain(cfg)),
        DraftOutcome::Duplicate => bail!("the alert was not recorded"),
    };
    let mut out = std::io::stdout().lock();
    if !yes {
        writeln!(out, "alert {id}: preview queued for {} (publish from the link in it)", admin.email.masked())?;
        return Ok(());
    }
    match app.publish_confirmed(Publisher::Operator { admin, alert: id }, stale_ok, now)? {
        Published::Published { recipients, .. } => writeln!(out, "alert {id}: published to {recipients} subscribers")?,
        Published::Unusable => bail!("alert {id} could not be published"),
        Published::StaleIncident => {
            bail!("alert {id}: the incident is older than alerts.stale_incident_secs; not published (add --confirm-stale, or publish from the preview)")
        }
    }
    Ok(())
}

/// `mamoru alert show ID`.
fn alert_show(cfg: Config, id: AlertId) -> anyhow::Result<()> {
    let (store, _keys) = setup::open_store(&cfg)?;
    let Some(row) = store.alert(id)? else { bail!("no alert {id}") };
    let followups = if row.followup_of.is_none() { store.followups_of(&[id])? } else { vec![] };
    let progress = store.alert_progress(id)?;
    let delivered = store.delivery_times(id)?;
    let mut out = std::io::stdout().lock();
    let state = match (row.state, row.incident_state) {
        (AlertState::Published, Some(s)) => format!("published, {}", s.as_str()),
        (s, _) => s.as_str().to_string(),
    };
    writeln!(out, "alert {id}: {state}{}", if row.is_test { " (test)" } else { "" })?;
    if let Some(kind) = row.followup_kind {
        writeln!(out, "follow-up: {} ({}) of alert {}", kind.as_str(), kind.label(), row.followup_of.map_or(0, AlertId::get))?;
    }
    writeln!(out, "title: {}", row.title)?;
    if !row.kind.is_empty() {
        writeln!(out, "kind: {}", row.kind)?;
    }
    writeln!(out, "districts: {}", alert::district_label(&cfg, &row.districts))?;
    writeln!(out, "admin: {}", row.admin_login)?;
    let when = |t: i64| if t == 0 { "-".to_string() } else { format!("{} JST", mamoru_core::jst::month_day_time(t)) };
    let occurred = alert::Occurred { at: row.occurred_at, flags: row.occurred_flags };
    writeln!(out, "occurred: {}", if occurred.is_known() { format!("{} JST", occurred.label()) } else { "unknown".into() })?;
    writeln!(out, "drafted: {}", when(row.created_at))?;
    writeln!(out, "published: {}", when(row.published_at))?;
    // Incident → publication → last copy delivered, per carrier.
    let carriers = alert::CarrierCounts::from_domains(&[]).0;
    for (carrier, _) in carriers {
        let mine: Vec<&(String, i64, i64)> = delivered.iter().filter(|(d, _, _)| alert::carrier_of(d) == carrier).collect();
        let Some(last) = mine.iter().map(|(_, _, t)| *t).max() else { continue };
        let sent: i64 = mine.iter().map(|(_, n, _)| n).sum();
        let lag = |from: i64| if from > 0 { format!(" (+{} min)", (last - from).max(0) / 60) } else { String::new() };
        writeln!(out, "last delivered {carrier}: {}, {sent} copies{}", when(last), lag(row.published_at))?;
    }
    if occurred.is_known() && row.published_at > 0 {
        writeln!(out, "incident to publication: {} min", (row.published_at - occurred.at).max(0) / 60)?;
    }
    writeln!(out, "recipients: {}", row.recipients)?;
    for f in &followups {
        let kind = f.followup_kind.map_or("?", FollowupKind::as_str);
        writeln!(out, "follow-up {}: {kind}, published {}, {} recipients", f.id, when(f.published_at), f.recipients)?;
    }
    if !progress.is_empty() {
        writeln!(out, "delivery (domain state count):")?;
        for (domain, st, n) in &progress {
            writeln!(out, "  {domain:<20} {st:<10} {n}")?;
        }
    }
    Ok(())
}
