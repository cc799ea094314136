use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use mamoru_core::AlertId;

/// Child-safety alert mail: subscribe by empty mail, receive alerts for the
/// districts you choose.
#[derive(Debug, Parser)]
#[command(name = "mamoru", version, about)]
pub struct Cli {
    /// Configuration file. Default: ./mamoru.toml if it exists, otherwise the
    /// built-in defaults.
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented mamoru.toml and fresh key material into DIR.
    Init(InitArgs),
    /// Run the LMTP listener, the web pages and the relay in one process.
    Serve,
    /// Read one message on stdin, as Postfix pipe(8) delivers it.
    ///
    /// Exits 0 once the message is durably recorded or deliberately dropped
    /// (and logged), 75 (EX_TEMPFAIL) for anything transient so the MTA
    /// retries. Never any other code.
    Ingest(IngestArgs),
    /// Run the relay alone: deliver queued mail to the configured transport.
    Relay,
    /// Show the outbox by carrier pool × state × age (like qshape), and each
    /// pool's live state (rate now, pause, connections).
    Queue(QueueArgs),
    /// Write a consistent copy of the database to FILE, safe while `mamoru
    /// serve` runs (SQLite online backup). The copy holds no address in
    /// clear; restoring it also needs DATA_DIR/keys/.
    Backup(BackupArgs),
    /// Move the data to another store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Export or import the subscriber list (CSV).
    #[command(subcommand)]
    Subscribers(SubscribersCommand),
    /// Manage the admins who post alerts.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Post alerts from the command line.
    #[command(subcommand)]
    Alert(AlertCommand),
}

#[derive(Debug, Subcommand)]
pub enum SubscribersCommand {
    /// Write confirmed subscribers as CSV (UTF-8): address,status,districts,
    /// created_at,confirmed_at (districts as ids joined by ";"). A cell that
    /// starts with =, +, -, @ or ' gets a leading ' so that spreadsheets
    /// show it as text; import removes it again. The output holds addresses
    /// in clear: handle it as personal data.
    Export(ExportArgs),
    /// Read a CSV with an `address` column and an optional `districts`
    /// column (ids or names, 中央 for 中央地区 too, joined by ";"; empty =
    /// every district); other
    /// columns are ignored. UTF-8 (with or without BOM) or Shift_JIS, as
    /// Excel saves "CSV UTF-8" and "CSV"; quoted fields may hold commas and
    /// line breaks. Validates every row, skips duplicates and addresses
    /// already registered, shows a progress bar. Bad rows are listed by the
    /// line they start on and skipped; the good rows are imported and the
    /// exit status is 1. A file in another encoding, empty or without an
    /// `address` column imports nothing (exit 1).
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Write to FILE (created 0600, never overwritten) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The CSV file; "-" reads stdin.
    pub file: PathBuf,
    /// Instead of subscribing silently, send each new address a 登録受付
    /// mail with its districts pre-selected; it is subscribed only once the
    /// owner confirms.
    #[arg(long)]
    pub confirm: bool,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The copy to write; must not exist yet. Created with mode 0600.
    pub file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy the SQLite database of the data dir (DATA_DIR/mamoru.db) into
    /// an empty PostgreSQL database, migrated first: every table, ids kept,
    /// in one transaction, then the row counts of both sides. Stop mamoru
    /// first. The SQLite file is opened read-only and left as it is. A
    /// target that holds any row is refused and left as it is (exit 1).
    /// Shows progress on stderr; no address is printed.
    Copy(StoreCopyArgs),
}

#[derive(Debug, Args)]
pub struct StoreCopyArgs {
    /// The target, as `[store] url` takes it: `postgres://USER@HOST/DB`.
    #[arg(long, value_name = "URL")]
    pub to: String,
}

#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// Post an alert in an admin's name. The text is read from standard
    /// input. Without --yes the preview with its publish link goes to the
    /// admin's registered address, exactly as for a mailed post.
    Post(AlertPostArgs),
    /// Post a follow-up of a published alert in an admin's name: 続報
    /// (update), 解決 (resolved) or 取消 (retracted). The text is read from
    /// standard input. It goes to the subscribers who got the alert (not to
    /// those who chose its districts since, nor to anyone who left), as a
    /// reply to their copy; a retraction first stops the copies not sent yet.
    /// Without --yes the preview goes to the admin's registered address.
    Followup(AlertFollowupArgs),
    /// Show one alert: its text, state, follow-ups and delivery per carrier.
    Show {
        /// The alert's number (the panel's history, the preview mail).
        id: AlertId,
    },
}

#[derive(Debug, Args)]
pub struct AlertFollowupArgs {
    /// The number of the alert it follows.
    pub id: AlertId,
    /// The admin's login ID (`mamoru admin list`).
    #[arg(long, value_name = "ID")]
    pub admin: String,
    /// What it says: update (続報), resolved (解決) or retracted (取消).
    #[arg(long, value_enum)]
    pub kind: FollowupKindArg,
    /// Publish at once, without a preview. For an operator on the machine.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FollowupKindArg {
    Update,
    Resolved,
    Retracted,
}

#[derive(Debug, Args)]
pub struct AlertPostArgs {
    /// The admin's login ID (`mamoru admin list`).
    #[arg(long, value_name = "ID")]
    pub admin: String,
    /// The title (the subject of the alert mail).
    #[arg(long)]
    pub title: String,
    /// Districts as in a `地区:` line: names, numbers or 全地区.
    #[arg(long, value_name = "LIST")]
    pub districts: String,
    /// One of `[alerts] kinds` (the `種別:` line).
    #[arg(long)]
    pub kind: Option<String>,
    /// When it happened, as in a `発生:` line: `12/1 13:25ごろ`, `12/1`,
    /// `2026/12/1 9:05`, Japan time. Default: unknown (never the post time).
    #[arg(long, value_name = "WHEN")]
    pub occurred: Option<String>,
    /// テスト配信: a marked test mail to the subscribers of the districts.
    #[arg(long)]
    pub test: bool,
    /// 緊急: marked 【緊急】 and delivered at once, also to subscribers
    /// inside their quiet hours.
    #[arg(long)]
    pub urgent: bool,
    /// Copies carry a 確認しました link; confirmations are counted per
    /// district and carrier (never who) and shown in the admin panel.
    #[arg(long)]
    pub confirm: bool,
    /// Publish at once, without a preview. For an operator on the machine.
    #[arg(long)]
    pub yes: bool,
    /// With --yes: publish even though the incident (--occurred) is older
    /// than `[alerts] stale_incident_secs`.
    #[arg(long)]
    pub confirm_stale: bool,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Add an admin. The password is read from standard input (one line).
    Add(AdminAddArgs),
    /// List the admins.
    List,
    /// Disable an admin: no more posts, no more logins.
    Disable {
        /// The admin's login ID.
        id: String,
    },
    /// Enable a disabled admin again.
    Enable {
        /// The admin's login ID.
        id: String,
    },
    /// Set a new password (read from standard input, one line) and end the
    /// admin's web sessions: for a forgotten or leaked password.
    Password {
        /// The admin's login ID.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct AdminAddArgs {
    /// Login ID (letters, digits, `.`, `_`, `-`).
    pub id: String,
    /// Registered address: previews and publish links go here.
    #[arg(long, value_name = "ADDR")]
    pub email: String,
    /// Districts this admin may post to (ids, comma separated). Default: all.
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub districts: Vec<u32>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to initialise (created if missing).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Envelope sender (Postfix ${sender}; empty for the null sender).
    #[arg(long, value_name = "S", allow_hyphen_values = true, required_unless_present = "imap_once")]
    pub sender: Option<String>,
    /// Envelope recipient (Postfix ${recipient}).
    #[arg(long, value_name = "R", required_unless_present = "imap_once")]
    pub recipient: Option<String>,
    /// Instead of reading stdin: handle what is in every `[[ingest.imap]]`
    /// mailbox now, move it to its folder, log out and exit (for cron).
    /// Exits 0 when every mailbox was handled, 75 when one was not (a
    /// connection, login or store failure; the log says which): run it
    /// again later.
    #[arg(long, conflicts_with_all = ["sender", "recipient", "sasl_username"])]
    pub imap_once: bool,
    /// SASL login of an authenticated submission (Postfix ${sasl_username}).
    #[arg(long, value_name = "U")]
    pub sasl_username: Option<String>,
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}
