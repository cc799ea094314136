//! The configuration file, `mamoru.toml`.
//!
//! Every key has a built-in default, so `mamoru serve` runs with no file at
//! all. Unknown keys are errors (a typo must not silently fall back to a
//! default). Every value with a syntax of its own — listen addresses, the
//! relay's transport and each carrier route, the STARTTLS policy, the alert
//! authentication policy, the DNS resolver — is parsed once, as the file is
//! deserialized, into a typed field ([`Transport`], [`SmtpTls`],
//! [`AlertAuth`], `SocketAddr`): no consumer parses a configuration string
//! again, and none has a fallback for a value that could not be parsed.
//! [`Config::validate`] then checks what involves several keys. Errors name
//! the dotted key; those of the typed values give the shape they need and
//! never the value (a host, an address). `docs/configuration.md` documents
//! each key; `mamoru init` writes [`TEMPLATE`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::carriers::{self, CarrierConfig};
use std::collections::BTreeMap;

use crate::address::EmailAddress;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML at all (no key to name).
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The mail domain: `ans@DOMAIN` receives registrations; From addresses use it.
    pub domain: String,
    /// Base URL of the web pages, as parents' phones reach it.
    pub public_url: String,
    /// Where the database, keys and file-transport mail live. A relative path
    /// is relative to the config file's directory (or the working directory
    /// when there is no file).
    pub data_dir: PathBuf,
    /// The name parents know the service by; shown in mails and pages.
    pub service_name: String,
    pub ingest: IngestConfig,
    pub limits: LimitsConfig,
    pub tokens: TokensConfig,
    pub web: WebConfig,
    pub relay: RelayConfig,
    pub store: StoreConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub bounces: BouncesConfig,
    pub alerts: AlertsConfig,
    pub districts: Vec<District>,
    /// Carrier pools by name (`[carriers.NAME]`), the built-ins merged with
    /// the file's overrides; see [`crate::carriers`].
    #[serde(deserialize_with = "crate::carriers::deserialize")]
    pub carriers: BTreeMap<String, CarrierConfig>,
}

/// Alerts posted by admins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Local part of the privileged address admins post alerts to.
    pub alert_local: String,
    /// How a mailed post must be authenticated besides coming from an
    /// admin's address: `"sasl-or-dkim"` (default), `"sasl"` or `"dkim"`.
    pub require: AlertAuth,
    /// The authserv-id our own MTA writes in Authentication-Results. Empty:
    /// no Authentication-Results header is trusted at all.
    pub authserv_id: String,
    /// The values an optional `種別:` line may take.
    pub kinds: Vec<String>,
    /// Lifetime of the publish link in a preview mail.
    pub publish_ttl_secs: i64,
    /// An alert not delivered within this many seconds is not sent late.
    pub max_age_secs: i64,
    /// A post whose incident (`発生:`) is older than this many seconds at
    /// publication needs an explicit confirmation in the preview.
    pub stale_incident_secs: i64,
    /// DKIM public keys of the admins' domains, pinned: `"SELECTOR._domainkey.DOMAIN" = "v=DKIM1; k=rsa; p=..."`,
    /// the TXT record as published. mamoru verifies DKIM against these only
    /// and never asks DNS, so a spoofed DNS answer cannot authenticate a post.
    pub dkim_keys: std::collections::BTreeMap<String, String>,
    /// Published alerts stay in the public archive (`/alerts`, Atom) this
    /// many days.
    pub archive_days: i64,
    /// The 確認しました link of an alert copy works this many seconds
    /// after publication; then the record of which copies were counted is
    /// deleted and only the counts stay.
    pub confirm_ttl_secs: i64,
}

/// What authenticates a mailed alert post (`[alerts] require`). A security
/// policy: a value that is not one of the three is a configuration error,
/// never a default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertAuth {
    /// `"sasl-or-dkim"`: either.
    SaslOrDkim,
    /// `"sasl"`: the login of an authenticated submission only.
    Sasl,
    /// `"dkim"`: an aligned DKIM pass only.
    Dkim,
}

impl<'de> Deserialize<'de> for AlertAuth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        keyword(d, "\"sasl-or-dkim\", \"sasl\" or \"dkim\"", |s| match s {
            "sasl-or-dkim" => Some(Self::SaslOrDkim),
            "sasl" => Some(Self::Sasl),
            "dkim" => Some(Self::Dkim),
            _ => None,
        })
    }
}

/// Reads a string and turns it into a `T` with `parse`; a string `parse`
/// refuses is the error "must be SHAPE" (serde adds the key), without the
/// value.
fn keyword<'de, D: Deserializer<'de>, T>(d: D, shape: &str, parse: impl FnOnce(&str) -> Option<T>) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).ok_or_else(|| D::Error::custom(format!("must be {shape}")))
}

/// A listener's `IP:PORT` (IPv6 in brackets).
fn listen_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    keyword(d, "IP:PORT, e.g. 127.0.0.1:2424 (IPv6 in brackets, [::1]:2424)", |s| s.parse().ok())
}

/// `[metrics] listen`: `IP:PORT`, or empty for none.
fn optional_listen_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    keyword(d, "IP:PORT, e.g. 127.0.0.1:9464 (empty = no listener)", |s| {
        if s.is_empty() { Some(None) } else { s.parse().ok().map(Some) }
    })
}

/// `[relay] resolver`: `IP:PORT`, or empty for the system's.
fn resolver_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    keyword(d, "IP:PORT, e.g. 127.0.0.1:53 (empty = /etc/resolv.conf)", |s| {
        if s.is_empty() { Some(None) } else { s.parse().ok().map(Some) }
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    #[serde(deserialize_with = "listen_addr")]
    pub lmtp_listen: SocketAddr,
    /// Local part of the registration address.
    pub register_local: String,
    /// Largest inbound message accepted, in bytes (announced as LMTP SIZE).
    pub max_message_bytes: u64,
    /// LMTP connections open at once; more get `421 4.7.0` (the file
    /// descriptor budget of `mamoru serve` may lower it).
    pub lmtp_max_connections: usize,
    /// LMTP connections open at once from one client (IP address, IPv6 /64).
    pub lmtp_max_connections_per_client: usize,
    /// An LMTP connection silent this long is closed with 421.
    pub lmtp_idle_secs: u64,
    /// One LMTP transaction (MAIL to the replies after DATA) may take at
    /// most this long, however steadily the client drips its bytes.
    pub lmtp_transaction_secs: u64,
    /// Mailboxes watched over IMAP (`[[ingest.imap]]`), for a service whose
    /// mail lives at a provider instead of an MTA of its own. Empty: none.
    pub imap: Vec<ImapMailbox>,
}

/// One watched IMAP mailbox (`[[ingest.imap]]`): the account, the mailbox
/// and the folders its messages are moved to once handled.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImapMailbox {
    /// The name its state is kept under (`mamoru queue`) and logged with;
    /// empty = the mailbox's name. Unique among the entries.
    pub name: String,
    /// The IMAP server's host name (also the name its certificate must carry).
    pub server: String,
    pub port: u16,
    pub tls: ImapTls,
    /// PEM CA certificates that verify the server (a private server);
    /// empty = the system's roots.
    pub ca_file: String,
    /// The login name (often an address: it is never logged).
    pub user: String,
    /// File holding the password (one line; read at every connection).
    pub password_file: String,
    /// The mailbox watched.
    pub mailbox: String,
    /// Where a message goes once the store committed what it caused.
    pub processed_folder: String,
    /// Where a message goes that was deliberately not acted upon (junk,
    /// no envelope header, over `max_message_bytes`, a rate limit).
    pub dropped_folder: String,
    /// Where a message goes that crashed its handler.
    pub quarantine_folder: String,
    /// The header the final MTA adds that names the envelope recipient.
    /// The envelope sender is always taken from `Return-Path`.
    pub envelope_header: EnvelopeHeader,
    /// IDLE is ended and issued again after this many seconds (servers may
    /// drop an IDLE after 29 minutes; at most 1500).
    pub idle_secs: u64,
    /// A full scan of the mailbox every this many seconds, since an IDLE
    /// notification can be missed.
    pub scan_secs: u64,
}

/// How the IMAP connection is encrypted (`[[ingest.imap]] tls`); there is
/// no plain-text choice, the password would travel in clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImapTls {
    /// TLS from the first byte (port 993).
    Implicit,
    /// Plain IMAP, then STARTTLS before anything else (port 143).
    Starttls,
}

impl<'de> Deserialize<'de> for ImapTls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        keyword(d, "\"implicit\" or \"starttls\"", |s| match s {
            "implicit" => Some(Self::Implicit),
            "starttls" => Some(Self::Starttls),
            _ => None,
        })
    }
}

/// The header the final MTA adds that names the envelope recipient of a
/// message in an IMAP mailbox (which keeps no envelope).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeHeader {
    /// `Delivered-To` (Postfix, Dovecot, Gmail): the final recipient.
    DeliveredTo,
    /// `X-Original-To` (Postfix): the recipient before alias expansion,
    /// which keeps a `+tag`.
    XOriginalTo,
}

impl EnvelopeHeader {
    /// The header's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::DeliveredTo => "Delivered-To",
            Self::XOriginalTo => "X-Original-To",
        }
    }
}

impl<'de> Deserialize<'de> for EnvelopeHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        keyword(d, "\"Delivered-To\" or \"X-Original-To\"", |s| {
            [Self::DeliveredTo, Self::XOriginalTo].into_iter().find(|h| h.name().eq_ignore_ascii_case(s))
        })
    }
}

impl Default for ImapMailbox {
    fn default() -> Self {
        Self {
            name: String::new(),
            server: String::new(),
            port: 993,
            tls: ImapTls::Implicit,
            ca_file: String::new(),
            user: String::new(),
            password_file: String::new(),
            mailbox: "INBOX".into(),
            processed_folder: "mamoru-processed".into(),
            dropped_folder: "mamoru-dropped".into(),
            quarantine_folder: "mamoru-quarantine".into(),
            envelope_header: EnvelopeHeader::DeliveredTo,
            idle_secs: 1500,
            scan_secs: 300,
        }
    }
}

impl ImapMailbox {
    /// The name its state is kept and logged under.
    pub fn label(&self) -> &str {
        if self.name.is_empty() { &self.mailbox } else { &self.name }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// At most one 登録受付 mail per address within this many seconds.
    pub register_cooldown_secs: i64,
    /// At most this many 登録受付 mails per address per day (UTC+9 calendar day).
    pub register_daily_cap: i64,
    /// At most this many 登録受付 mails per clock hour in reply to empty mails.
    pub register_global_hourly_cap: i64,
    /// At most this many 登録受付 mails per clock hour requested through the
    /// PC form (a budget of its own, so a web flood cannot spend the phones').
    pub register_web_global_hourly_cap: i64,
    /// At most this many PC-form requests per clock hour from one client
    /// address (IPv6 by /64).
    pub register_web_client_hourly_cap: i64,
    /// At most one 受信テスト mail per mailbox within this many seconds.
    pub reception_cooldown_secs: i64,
    /// At most this many 受信テスト mails per mailbox per day (UTC+9).
    pub reception_daily_cap: i64,
    /// At most this many 受信テスト mails per clock hour in all (a client
    /// may ask for at most `register_web_client_hourly_cap` of them).
    pub reception_global_hourly_cap: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// Lifetime of the link in a 登録受付 mail.
    pub register_ttl_secs: i64,
    /// Lifetime of a 受信テスト (its 届きました link and its waiting page).
    pub reception_ttl_secs: i64,
    /// How long the waiting page waits for 届きました before it shows the
    /// carrier's help.
    pub reception_wait_secs: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    #[serde(deserialize_with = "listen_addr")]
    pub listen: SocketAddr,
    /// The admin panel is served to non-loopback clients only when a TLS
    /// proxy in front terminates HTTPS (cookies are `Secure` and HSTS is sent
    /// either way).
    pub behind_tls_proxy: bool,
    /// PEM certificate chain; with `tls_key`, the listener speaks HTTPS.
    pub tls_cert: String,
    /// PEM private key of `tls_cert`.
    pub tls_key: String,
    /// Admin sessions end after this many seconds without a request.
    pub admin_idle_secs: i64,
    /// HTTP connections open at once; more are closed unanswered (the file
    /// descriptor budget of `mamoru serve` may lower it).
    pub max_connections: usize,
    /// HTTP connections open at once from one client (IP address, IPv6
    /// /64). With `behind_tls_proxy`, loopback peers (the proxy) count only
    /// towards `max_connections`.
    pub max_connections_per_client: usize,
    /// How long a client may take to send a request's headers, and how long
    /// an idle keep-alive connection stays open.
    pub header_timeout_secs: u64,
    /// Admin password checks (argon2id, 19 MiB each) running at once; a
    /// login beyond it is answered "busy" at once.
    pub max_password_checks: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// `"file"`, `"smtp://HOST:PORT"` or `"mx"`.
    pub transport: Transport,
    /// First retry delay after a 4xx or a connection failure; doubles each time.
    pub retry_base_secs: i64,
    /// Ceiling of the retry delay.
    pub retry_max_secs: i64,
    /// A message not delivered within this age is marked expired, not sent late.
    pub max_age_secs: i64,
    /// How long a claimed outbox row stays leased before another relay may take it.
    pub lease_secs: i64,
    /// How often the relay looks for due rows written by other processes.
    pub poll_interval_ms: u64,
    /// DKIM selector (`SELECTOR._domainkey.DOMAIN` for the RSA key,
    /// `SELECTOR-ed25519._domainkey.DOMAIN` for ed25519); empty = no DKIM.
    pub dkim_selector: String,
    /// STARTTLS on `smtp://` hops: `"opportunistic"`, `"required"` or `"none"`.
    pub smtp_tls: SmtpTls,
    /// PEM CA certificates that verify the smarthost with `smtp_tls =
    /// "required"`; empty = the system's roots. Relative to the config file.
    pub smtp_tls_ca_file: String,
    /// AUTH user on `smtp://` hops; empty = no AUTH.
    pub smtp_username: String,
    /// File holding the AUTH password (never inline). Relative to the config file.
    pub smtp_password_file: String,
    /// DNS server of the `mx` transport, `IP:PORT`; `None` (an empty
    /// string in the file) = /etc/resolv.conf.
    #[serde(deserialize_with = "resolver_addr")]
    pub resolver: Option<SocketAddr>,
    /// Port of the `mx` transport's connections (25; other values for tests).
    pub mx_port: u16,
    /// Seconds without a push-back before a pool's learned pace or
    /// connection cap probes one step back up towards its ceiling.
    pub learn_probe_secs: i64,
    /// Seconds after which a pool forgets a limit it learned firmly (two
    /// push-backs near the same level) and probes up to the ceiling again.
    pub learn_drift_secs: i64,
}

/// STARTTLS on `smtp://` hops (`[relay] smtp_tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Never: plain SMTP.
    None,
    /// STARTTLS when the server offers it, certificate not verified (Postfix
    /// `smtp_tls_security_level = may`).
    Opportunistic,
    /// STARTTLS must succeed and the certificate must verify.
    Required,
}

impl<'de> Deserialize<'de> for SmtpTls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        keyword(d, "\"opportunistic\", \"required\" or \"none\"", |s| match s {
            "none" => Some(Self::None),
            "opportunistic" => Some(Self::Opportunistic),
            "required" => Some(Self::Required),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// How long a writer waits for a lock held by another process before the
    /// operation fails as transient (ingest exits 75, LMTP answers 451).
    /// On PostgreSQL: how long an operation waits for a pooled connection.
    pub busy_timeout_ms: u64,
    /// Empty (the default): SQLite in the data dir. `postgres://…` (or
    /// `postgresql://…`, libpq's URL form): that PostgreSQL database; the
    /// keys stay in the data dir.
    pub url: String,
    /// PEM file of the CA that signed the PostgreSQL server's certificate;
    /// empty: the system's roots. The certificate is always verified.
    pub tls_ca_file: String,
}

/// The operator's listener of `mamoru serve`: `/metrics`, `/healthz`,
/// `/readyz`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `IP:PORT`; `None` (an empty string in the file, the default) = no
    /// metrics listener. Never the web listener's port.
    #[serde(deserialize_with = "optional_listen_addr")]
    pub listen: Option<SocketAddr>,
}

/// How log lines are written (stderr).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `"text"` (one human-readable line per event) or `"json"` (one JSON
    /// object per line, for log shippers). `MAMORU_LOG_FORMAT` overrides it.
    pub format: LogFormat,
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// `text` or `json`; anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        keyword(d, "\"text\" or \"json\"", Self::parse)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BouncesConfig {
    /// Soft bounces (mailbox full, temporary, unclassified) a subscriber may
    /// collect before being suspended. Unknown-user bounces suspend at once;
    /// "blocked as spam" never counts.
    pub soft_threshold: i64,
    /// Only soft bounces within this many seconds count towards the threshold.
    pub soft_window_secs: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct District {
    pub id: u32,
    pub name: String,
    /// Optional ASCII tag for the district's registration address,
    /// `ans+TAG@DOMAIN` (e.g. `chuo`), printed on school handouts. The id
    /// works as a tag too (`ans+1@`).
    #[serde(default)]
    pub tag: String,
}

/// Where the relay hands mail over (`[relay] transport`, `[carriers.NAME]
/// route`): `"file"`, `"mx"` or `"smtp://HOST:PORT"`; the smarthost's
/// STARTTLS and AUTH are `[relay]` keys of their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// `.eml` files under `DATA_DIR/mail/`.
    File,
    /// A smarthost (`[relay] smtp_tls`, AUTH with `smtp_username`).
    Smtp { host: String, port: u16 },
    /// Direct delivery to each recipient domain's MX hosts.
    Mx,
}

/// What a transport value must look like, for errors.
const TRANSPORT_SHAPE: &str = "\"file\", \"mx\" or \"smtp://HOST:PORT\"";

impl Transport {
    /// `"file"`, `"mx"` or `"smtp://HOST:PORT"` (surrounding white space and
    /// a trailing `/` ignored; an IPv6 host in brackets); `None` otherwise.
    fn parse(value: &str) -> Option<Self> {
        let t = value.trim();
        match t {
            "file" => return Some(Transport::File),
            "mx" => return Some(Transport::Mx),
            _ => {}
        }
        let rest = t.strip_prefix("smtp://")?.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':')?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port: u16 = port.parse().ok()?;
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
        if host.is_empty() || !host.chars().all(plain) || port == 0 {
            return None;
        }
        Some(Transport::Smtp { host: host.to_string(), port })
    }

    /// Is this a smarthost on the loopback interface (where AUTH without TLS
    /// exposes the password to no one)?
    pub fn is_loopback(&self) -> bool {
        match self {
            Transport::Smtp { host, .. } => {
                host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for Transport {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        keyword(d, TRANSPORT_SHAPE, Transport::parse)
    }
}

/// The syntax [`Transport`] is read from: `Transport::parse(t.to_string())`
/// is `t` again.
impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::File => f.write_str("file"),
            Transport::Mx => f.write_str("mx"),
            Transport::Smtp { host, port } if host.contains(':') => write!(f, "smtp://[{host}]:{port}"),
            Transport::Smtp { host, port } => write!(f, "smtp://{host}:{port}"),
        }
    }
}

/// `[carriers.NAME] route`: a [`Transport`], or empty for the relay's.
pub(crate) fn route<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Transport>, D::Error> {
    keyword(d, &format!("{TRANSPORT_SHAPE} (empty = the relay's transport)"), |s| {
        if s.is_empty() { Some(None) } else { Transport::parse(s).map(Some) }
    })
}

/// Tags of the Kure districts (`ans+chuo@`), in the order of [`KURE_DISTRICTS`].
pub const KURE_TAGS: [&str; 10] = ["chuo", "tenno", "showa", "aga", "kawajiri", "kamagari", "yutaka", "gobara", "miyahara", "ondo"];

/// The Kure districts of the original service. Configuration, not code: this
/// list is only the default and the template.
pub const KURE_DISTRICTS: [(u32, &str); 10] = [
    (1, "中央地区"),
    (2, "天応・吉浦地区"),
    (3, "昭和地区"),
    (4, "阿賀・広地区・仁方"),
    (5, "川尻・安浦"),
    (6, "下蒲刈・蒲刈地区"),
    (7, "豊・豊浜地区"),
    (8, "郷原地区"),
    (9, "宮原・警固屋地区"),
    (10, "音戸・倉橋地区"),
];

impl Default for Config {
    fn default() -> Self {
        Self {
            domain: "localhost".into(),
            public_url: "http://127.0.0.1:8080".into(),
            data_dir: PathBuf::from("data"),
            service_name: "守るネット".into(),
            ingest: IngestConfig::default(),
            limits: LimitsConfig::default(),
            tokens: TokensConfig::default(),
            web: WebConfig::default(),
            relay: RelayConfig::default(),
            store: StoreConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            bounces: BouncesConfig::default(),
            districts: KURE_DISTRICTS
                .iter()
                .zip(KURE_TAGS)
                .map(|(&(id, name), tag)| District { id, name: name.into(), tag: tag.into() })
                .collect(),
            carriers: carriers::default_carriers(),
            alerts: AlertsConfig::default(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            lmtp_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 2424)),
            register_local: "ans".into(),
            max_message_bytes: 10 * 1024 * 1024,
            lmtp_max_connections: 100,
            lmtp_max_connections_per_client: 50,
            lmtp_idle_secs: 300,
            lmtp_transaction_secs: 600,
            imap: Vec::new(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            register_cooldown_secs: 300,
            register_daily_cap: 5,
            register_global_hourly_cap: 2000,
            register_web_global_hourly_cap: 500,
            register_web_client_hourly_cap: 20,
            reception_cooldown_secs: 120,
            reception_daily_cap: 5,
            reception_global_hourly_cap: 300,
        }
    }
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self { register_ttl_secs: 24 * 3600, reception_ttl_secs: 24 * 3600, reception_wait_secs: 180 }
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            behind_tls_proxy: false,
            tls_cert: String::new(),
            tls_key: String::new(),
            admin_idle_secs: 1800,
            max_connections: 1024,
            max_connections_per_client: 64,
            header_timeout_secs: 30,
            max_password_checks: 2,
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            transport: Transport::File,
            retry_base_secs: 30,
            retry_max_secs: 3600,
            max_age_secs: 3 * 24 * 3600,
            lease_secs: 300,
            poll_interval_ms: 100,
            dkim_selector: "mamoru".into(),
            smtp_tls: SmtpTls::Opportunistic,
            smtp_tls_ca_file: String::new(),
            smtp_username: String::new(),
            smtp_password_file: String::new(),
            resolver: None,
            mx_port: 25,
            learn_probe_secs: 60,
            learn_drift_secs: 86_400,
        }
    }
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            alert_local: "alert".into(),
            require: AlertAuth::SaslOrDkim,
            authserv_id: String::new(),
            kinds: vec!["不審者情報".into(), "不審電話情報".into(), "その他".into()],
            publish_ttl_secs: 3600,
            max_age_secs: 6 * 3600,
            stale_incident_secs: 24 * 3600,
            dkim_keys: Default::default(),
            archive_days: 30,
            confirm_ttl_secs: 3 * 86_400,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { busy_timeout_ms: 5000, url: String::new(), tls_ca_file: String::new() }
    }
}

impl Default for BouncesConfig {
    fn default() -> Self {
        Self { soft_threshold: 5, soft_window_secs: 30 * 24 * 3600 }
    }
}

impl Config {
    /// Parses and validates a config file's text. `base` is the directory
    /// relative paths (`data_dir`, the TLS and password files) are resolved
    /// against: the config file's own.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut cfg: Config = serde_path_to_error::deserialize(toml::Deserializer::parse(text)?).map_err(|e| {
            let key = e.path().to_string();
            let e = e.into_inner();
            if key.is_empty() || key == "." {
                return ConfigError::Parse(e);
            }
            // The message and the line, not toml's excerpt of it: the value
            // may be a host or an address.
            let line = e.span().map(|s| 1 + text.as_bytes()[..s.start.min(text.len())].iter().filter(|&&b| b == b'\n').count());
            invalid(key, match line {
                Some(line) => format!("{} (line {line})", e.message()),
                None => e.message().to_string(),
            })
        })?;
        if cfg.data_dir.is_relative() {
            cfg.data_dir = base.join(&cfg.data_dir);
        }
        let imap_paths = cfg.ingest.imap.iter_mut().flat_map(|m| [&mut m.ca_file, &mut m.password_file]);
        let paths = [&mut cfg.relay.smtp_tls_ca_file, &mut cfg.relay.smtp_password_file, &mut cfg.web.tls_cert, &mut cfg.web.tls_key];
        for path in paths.into_iter().chain(imap_paths) {
            if !path.is_empty() && Path::new(path.as_str()).is_relative() {
                *path = base.join(path.as_str()).to_string_lossy().into_owned();
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The built-in defaults, with `data_dir` resolved against `base`.
    pub fn defaults(base: &Path) -> Self {
        let mut cfg = Config::default();
        cfg.data_dir = base.join(&cfg.data_dir);
        cfg
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        EmailAddress::parse(&format!("postmaster@{}", self.domain))
            .map_err(|e| invalid("domain", format!("{:?} is not a mail domain ({e})", self.domain)))?;
        let url = self.public_url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.contains(char::is_whitespace) {
            return Err(invalid("public_url", "must be an http:// or https:// URL without spaces"));
        }
        if self.service_name.trim().is_empty() || self.service_name.contains(['\r', '\n', '\0']) {
            return Err(invalid("service_name", "must be one non-empty line"));
        }
        EmailAddress::parse(&format!("{}@{}", self.ingest.register_local, self.domain))
            .ok()
            .filter(|_| !self.ingest.register_local.contains('+'))
            .ok_or_else(|| invalid("ingest.register_local", "must be a plain local part such as \"ans\""))?;
        let store_url = self.store.url.as_str();
        if !store_url.is_empty() {
            if !(store_url.starts_with("postgres://") || store_url.starts_with("postgresql://")) || store_url.contains(char::is_whitespace) {
                return Err(invalid("store.url", "must be empty (SQLite in the data dir) or a postgres:// URL"));
            }
            // libpq's verify-ca / verify-full are what sslmode=require does
            // here (the certificate is always verified); the driver knows
            // only disable, prefer and require.
            if store_url.contains("sslmode=verify") {
                return Err(invalid("store.url", "use sslmode=require: the server's certificate is always verified"));
            }
        }
        if self.ingest.max_message_bytes < 1024 {
            return Err(invalid("ingest.max_message_bytes", "must be at least 1024"));
        }
        for (key, n) in [
            ("ingest.lmtp_max_connections", self.ingest.lmtp_max_connections as u64),
            ("ingest.lmtp_max_connections_per_client", self.ingest.lmtp_max_connections_per_client as u64),
            ("ingest.lmtp_idle_secs", self.ingest.lmtp_idle_secs),
            ("ingest.lmtp_transaction_secs", self.ingest.lmtp_transaction_secs),
            ("web.max_connections", self.web.max_connections as u64),
            ("web.max_connections_per_client", self.web.max_connections_per_client as u64),
            ("web.header_timeout_secs", self.web.header_timeout_secs),
            ("web.max_password_checks", self.web.max_password_checks as u64),
        ] {
            if n == 0 {
                return Err(invalid(key, "must be positive"));
            }
        }
        positive("limits.register_cooldown_secs", self.limits.register_cooldown_secs, true)?;
        positive("limits.register_daily_cap", self.limits.register_daily_cap, false)?;
        positive("limits.register_global_hourly_cap", self.limits.register_global_hourly_cap, false)?;
        positive("limits.register_web_global_hourly_cap", self.limits.register_web_global_hourly_cap, false)?;
        positive("limits.register_web_client_hourly_cap", self.limits.register_web_client_hourly_cap, false)?;
        positive("tokens.register_ttl_secs", self.tokens.register_ttl_secs, false)?;
        positive("limits.reception_cooldown_secs", self.limits.reception_cooldown_secs, true)?;
        positive("limits.reception_daily_cap", self.limits.reception_daily_cap, false)?;
        positive("limits.reception_global_hourly_cap", self.limits.reception_global_hourly_cap, false)?;
        positive("tokens.reception_ttl_secs", self.tokens.reception_ttl_secs, false)?;
        positive("tokens.reception_wait_secs", self.tokens.reception_wait_secs, false)?;
        if self.tokens.reception_wait_secs >= self.tokens.reception_ttl_secs {
            return Err(invalid("tokens.reception_wait_secs", "must be less than tokens.reception_ttl_secs"));
        }
        positive("relay.retry_base_secs", self.relay.retry_base_secs, false)?;
        positive("relay.retry_max_secs", self.relay.retry_max_secs, false)?;
        positive("relay.max_age_secs", self.relay.max_age_secs, false)?;
        positive("relay.lease_secs", self.relay.lease_secs, false)?;
        positive("relay.learn_probe_secs", self.relay.learn_probe_secs, false)?;
        positive("relay.learn_drift_secs", self.relay.learn_drift_secs, false)?;
        positive("bounces.soft_threshold", self.bounces.soft_threshold, false)?;
        positive("bounces.soft_window_secs", self.bounces.soft_window_secs, false)?;
        if self.relay.poll_interval_ms == 0 {
            return Err(invalid("relay.poll_interval_ms", "must be positive"));
        }
        let sel = &self.relay.dkim_selector;
        if sel.len() > 50 || !sel.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || sel.starts_with('-') {
            return Err(invalid("relay.dkim_selector", "letters, digits and - only (empty = no DKIM)"));
        }
        if let Some(m) = self.metrics.listen {
            for (key, other) in [("web.listen", self.web.listen), ("ingest.lmtp_listen", self.ingest.lmtp_listen)] {
                if m.port() != 0 && m.port() == other.port() && (m.ip() == other.ip() || m.ip().is_unspecified() || other.ip().is_unspecified()) {
                    return Err(invalid("metrics.listen", format!("must not be the port of `{key}` (the metrics are for the operator, not the public)")));
                }
            }
        }
        carriers::validate(&self.carriers).map_err(|(key, reason)| invalid(key, reason))?;
        self.validate_alerts()?;
        self.validate_smtp()?;
        self.validate_imap()?;
        if self.districts.is_empty() {
            return Err(invalid("districts", "at least one [[districts]] entry is needed"));
        }
        for (i, d) in self.districts.iter().enumerate() {
            if d.id == 0 {
                return Err(invalid(format!("districts[{i}].id"), "must be 1 or more"));
            }
            if d.name.trim().is_empty() || d.name.contains(['\r', '\n', '\0', '<', '>', '&', '"']) {
                return Err(invalid(format!("districts[{i}].name"), "must be a non-empty plain name"));
            }
            if self.districts[..i].iter().any(|o| o.id == d.id) {
                return Err(invalid(format!("districts[{i}].id"), format!("id {} is used twice", d.id)));
            }
            if !d.tag.is_empty()
                && (!d.tag.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    || d.tag.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(invalid(format!("districts[{i}].tag"), "must be lowercase ASCII letters, digits or '-', not only digits"));
            }
            if !d.tag.is_empty() && self.districts[..i].iter().any(|o| o.tag == d.tag) {
                return Err(invalid(format!("districts[{i}].tag"), format!("tag {:?} is used twice", d.tag)));
            }
            if self.districts[..i].iter().any(|o| o.name == d.name) {
                return Err(invalid(format!("districts[{i}].name"), format!("name {:?} is used twice", d.name)));
            }
        }
        Ok(())
    }

    /// Each `[[ingest.imap]]` entry: an account to log in to, names that
    /// are IMAP mailbox names, and a distinct name for its state.
    fn validate_imap(&self) -> Result<(), ConfigError> {
        for (i, m) in self.ingest.imap.iter().enumerate() {
            let key = |k: &str| format!("ingest.imap[{i}].{k}");
            for (k, v) in [("server", &m.server), ("user", &m.user), ("password_file", &m.password_file)] {
                if v.trim().is_empty() {
                    return Err(invalid(key(k), "must be set"));
                }
            }
            if m.server.contains(|c: char| c.is_whitespace() || c == '/') {
                return Err(invalid(key("server"), "must be a host name or IP address"));
            }
            if m.port == 0 {
                return Err(invalid(key("port"), "must be positive"));
            }
            let folders = [
                ("mailbox", &m.mailbox),
                ("processed_folder", &m.processed_folder),
                ("dropped_folder", &m.dropped_folder),
                ("quarantine_folder", &m.quarantine_folder),
            ];
            for (k, v) in folders {
                // An IMAP astring may hold anything but controls; a quote or
                // backslash would need quoting the client does not do.
                if v.is_empty() || v.len() > 200 || v.contains(|c: char| c.is_control() || c == '"' || c == '\\') {
                    return Err(invalid(key(k), "must be a mailbox name (no quotes, backslashes or control characters)"));
                }
            }
            for (k, v) in &folders[1..] {
                if *v == &m.mailbox {
                    return Err(invalid(key(k), "must differ from the watched mailbox"));
                }
            }
            if !(1..=1500).contains(&m.idle_secs) {
                return Err(invalid(key("idle_secs"), "must be 1 to 1500 (servers may end an IDLE after 29 minutes)"));
            }
            if m.scan_secs == 0 {
                return Err(invalid(key("scan_secs"), "must be positive"));
            }
            if self.ingest.imap[..i].iter().any(|o| o.label() == m.label()) {
                return Err(invalid(key("name"), "two entries have this name (it defaults to the mailbox): set distinct names"));
            }
        }
        Ok(())
    }

    /// The STARTTLS, AUTH and DNS keys of `[relay]`, and the routes.
    fn validate_smtp(&self) -> Result<(), ConfigError> {
        let r = &self.relay;
        let tls = r.smtp_tls;
        if r.mx_port == 0 {
            return Err(invalid("relay.mx_port", "must be a port, 1-65535"));
        }
        let hops: Vec<&Transport> = std::iter::once(&r.transport).chain(self.carriers.values().filter_map(|p| p.route.as_ref())).collect();
        if r.smtp_username.contains(|c: char| c.is_control()) {
            return Err(invalid("relay.smtp_username", "must not contain control characters"));
        }
        if r.smtp_username.is_empty() != r.smtp_password_file.is_empty() {
            return Err(invalid("relay.smtp_password_file", "smtp_username and smtp_password_file go together"));
        }
        // A password must never cross the network in clear: AUTH needs
        // verified TLS unless every smarthost is on this machine.
        if !r.smtp_username.is_empty() && tls != SmtpTls::Required {
            if let Some(hop) = hops.iter().find(|t| matches!(t, Transport::Smtp { .. }) && !t.is_loopback()) {
                let Transport::Smtp { host, .. } = hop else { unreachable!("filtered above") };
                return Err(invalid(
                    "relay.smtp_username",
                    format!("AUTH to {host} needs smtp_tls = \"required\" (only a loopback smarthost may be used without it)"),
                ));
            }
        }
        if !r.smtp_tls_ca_file.is_empty() && tls != SmtpTls::Required {
            return Err(invalid("relay.smtp_tls_ca_file", "is used only with smtp_tls = \"required\""));
        }
        Ok(())
    }

    fn validate_alerts(&self) -> Result<(), ConfigError> {
        let a = &self.alerts;
        EmailAddress::parse(&format!("{}@{}", a.alert_local, self.domain))
            .ok()
            .filter(|_| !a.alert_local.contains('+') && !a.alert_local.eq_ignore_ascii_case(&self.ingest.register_local))
            .ok_or_else(|| invalid("alerts.alert_local", "must be a plain local part other than ingest.register_local"))?;
        if a.authserv_id.contains(|c: char| c.is_whitespace() || c == ';' || c.is_control()) {
            return Err(invalid("alerts.authserv_id", "must be one token without spaces or semicolons"));
        }
        for (i, k) in a.kinds.iter().enumerate() {
            if k.trim().is_empty() || k.contains(['\r', '\n', '\0', '<', '>', '&', '"']) {
                return Err(invalid(format!("alerts.kinds[{i}]"), "must be a non-empty plain name"));
            }
        }
        positive("alerts.publish_ttl_secs", a.publish_ttl_secs, false)?;
        positive("alerts.max_age_secs", a.max_age_secs, false)?;
        positive("alerts.stale_incident_secs", a.stale_incident_secs, false)?;
        positive("alerts.archive_days", a.archive_days, false)?;
        positive("alerts.confirm_ttl_secs", a.confirm_ttl_secs, false)?;
        positive("web.admin_idle_secs", self.web.admin_idle_secs, false)?;
        if self.web.tls_cert.is_empty() != self.web.tls_key.is_empty() {
            return Err(invalid("web.tls_cert", "tls_cert and tls_key go together"));
        }
        Ok(())
    }

    /// `alert@DOMAIN`.
    pub fn alert_address(&self) -> String {
        format!("{}@{}", self.alerts.alert_local, self.domain)
    }

    /// `ans@DOMAIN`.
    pub fn register_address(&self) -> String {
        format!("{}@{}", self.ingest.register_local, self.domain)
    }

    /// The public URL without a trailing slash.
    pub fn base_url(&self) -> &str {
        self.public_url.trim_end_matches('/')
    }

    /// The carrier pool of a recipient domain.
    pub fn pool_of(&self, domain: &str) -> &str {
        carriers::pool_of(&self.carriers, domain)
    }

    /// Does the web listener speak HTTPS itself?
    pub fn web_tls(&self) -> bool {
        !self.web.tls_cert.is_empty()
    }

    pub fn district(&self, id: u32) -> Option<&District> {
        self.districts.iter().find(|d| d.id == id)
    }

    /// The district a registration recipient names, `ans+TAG@` with TAG a
    /// district's tag or id (case-insensitive); `None` for plain `ans@` or an
    /// unknown tag.
    pub fn district_of_recipient(&self, recipient: &str) -> Option<&District> {
        let r = recipient.trim().trim_start_matches('<').trim_end_matches('>');
        let local = r.rsplit_once('@').map_or(r, |(l, _)| l);
        let (_, tag) = local.split_once('+')?;
        let tag = tag.to_ascii_lowercase();
        match tag.parse::<u32>() {
            Ok(id) => self.district(id),
            Err(_) => self.districts.iter().find(|d| !d.tag.is_empty() && d.tag == tag),
        }
    }

    /// The registration address of a district: `ans+TAG@DOMAIN`, or
    /// `ans+ID@DOMAIN` when it has no tag.
    pub fn district_address(&self, d: &District) -> String {
        let tag = if d.tag.is_empty() { d.id.to_string() } else { d.tag.clone() };
        format!("{}+{tag}@{}", self.ingest.register_local, self.domain)
    }
}

fn positive(key: &str, v: i64, zero_ok: bool) -> Result<(), ConfigError> {
    if v < 0 || (v == 0 && !zero_ok) {
        return Err(invalid(key, if zero_ok { "must not be negative" } else { "must be positive" }));
    }
    Ok(())
}

/// The commented configuration `mamoru init` writes. It parses to the defaults
/// (a test checks), so it doubles as the reference of every key.
pub const TEMPLATE: &str = include_str!("template.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::from_toml(s, Path::new("/srv/mamoru"))
    }

    fn err(s: &str) -> String {
        parse(s).expect_err("should fail").to_string()
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.data_dir, Path::new("/srv/mamoru/data"));
        assert_eq!(c.districts.len(), 10);
        assert_eq!(c.relay.transport, Transport::File);
        assert_eq!(c.register_address(), "ans@localhost");
    }

    #[test]
    fn template_parses_to_the_defaults() {
        let t = parse(TEMPLATE).unwrap();
        let d = Config::defaults(Path::new("/srv/mamoru"));
        assert_eq!(format!("{t:?}"), format!("{d:?}"));
    }

    const IMAP: &str = "[[ingest.imap]]\nserver = \"imap.example.jp\"\nuser = \"ans@example.jp\"\npassword_file = \"imap.pass\"\n";

    #[test]
    fn imap_mailboxes_are_typed_with_defaults() {
        let c = parse(IMAP).unwrap();
        let [m] = c.ingest.imap.as_slice() else { panic!("one mailbox: {:?}", c.ingest.imap) };
        assert_eq!((m.port, m.tls, m.mailbox.as_str(), m.label()), (993, ImapTls::Implicit, "INBOX", "INBOX"));
        assert_eq!(m.envelope_header, EnvelopeHeader::DeliveredTo);
        assert_eq!(m.password_file, "/srv/mamoru/imap.pass", "relative to the config file");
        assert_eq!((m.idle_secs, m.scan_secs), (1500, 300));
        let two = format!("{IMAP}name = \"ans\"\n{IMAP}mailbox = \"Bounces\"\ntls = \"starttls\"\nport = 143\nenvelope_header = \"x-original-to\"\nca_file = \"ca.pem\"\n");
        let c = parse(&two).unwrap();
        assert_eq!(c.ingest.imap.len(), 2);
        let b = &c.ingest.imap[1];
        assert_eq!((b.tls, b.port, b.envelope_header, b.label()), (ImapTls::Starttls, 143, EnvelopeHeader::XOriginalTo, "Bounces"));
        assert_eq!(b.ca_file, "/srv/mamoru/ca.pem");
        assert!(parse("").unwrap().ingest.imap.is_empty());
    }

    #[test]
    fn the_templates_imap_example_is_the_defaults() {
        let block: String = TEMPLATE
            .lines()
            .skip_while(|l| *l != "# [[ingest.imap]]")
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let m = parse(&block).unwrap().ingest.imap.remove(0);
        let expected = ImapMailbox {
            server: "imap.example.jp".into(),
            user: "ans@example.jp".into(),
            password_file: "/srv/mamoru/imap.pass".into(),
            ..ImapMailbox::default()
        };
        assert_eq!(m, expected);
    }

    #[test]
    fn imap_errors_name_the_key() {
        let e = err(&format!("{IMAP}tls = \"none\""));
        assert!(e.contains("ingest.imap[0].tls") && e.contains("\"implicit\" or \"starttls\""), "{e}");
        assert!(err(&format!("{IMAP}envelope_header = \"Return-Path\"")).contains("ingest.imap[0].envelope_header"));
        assert!(err("[[ingest.imap]]\nuser = \"u\"\npassword_file = \"p\"").contains("ingest.imap[0].server"));
        assert!(err("[[ingest.imap]]\nserver = \"h\"\npassword_file = \"p\"").contains("ingest.imap[0].user"));
        assert!(err("[[ingest.imap]]\nserver = \"h\"\nuser = \"u\"").contains("ingest.imap[0].password_file"));
        assert!(err(&format!("{IMAP}idle_secs = 1800")).contains("ingest.imap[0].idle_secs"));
        assert!(err(&format!("{IMAP}scan_secs = 0")).contains("ingest.imap[0].scan_secs"));
        assert!(err(&format!("{IMAP}dropped_folder = \"INBOX\"")).contains("ingest.imap[0].dropped_folder"));
        assert!(err(&format!("{IMAP}processed_folder = \"a\\\"b\"")).contains("ingest.imap[0].processed_folder"));
        assert!(err(&IMAP.replace("imap.example.jp", "a b")).contains("ingest.imap[0].server"));
        assert!(err(&format!("{IMAP}bogus = 1")).contains("bogus"));
        let e = err(&format!("{IMAP}{IMAP}"));
        assert!(e.contains("ingest.imap[1].name"), "{e}");
        // The user (an address) is never repeated in an error.
        assert!(!err(&format!("{IMAP}port = 0")).contains("ans@example.jp"));
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("[ingest]\nlmtp_lisen = \"x\"").contains("lmtp_lisen"));
        assert!(err("[ingest]\nlmtp_listen = \"nope\"").contains("ingest.lmtp_listen"));
        assert!(err("[web]\nlisten = \"1.2.3.4\"").contains("web.listen"));
        assert!(err("[metrics]\nlisten = \"9464\"").contains("metrics.listen"));
        assert!(err("[log]\nformat = \"xml\"").contains("log.format"));
        // The metrics are never served on the public web port.
        assert!(err("[metrics]\nlisten = \"127.0.0.1:8080\"").contains("metrics.listen"));
        assert!(err("[web]\nlisten = \"0.0.0.0:8080\"\n[metrics]\nlisten = \"127.0.0.1:8080\"").contains("metrics.listen"));
        assert!(err("[metrics]\nlisten = \"127.0.0.1:2424\"").contains("metrics.listen"));
        let ok = parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n[log]\nformat = \"json\"").unwrap();
        assert_eq!((ok.metrics.listen, ok.log.format), (Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9464))), LogFormat::Json));
        assert_eq!(parse("[metrics]\nlisten = \"\"").unwrap().metrics.listen, None);
        assert!(err("domain = \"bad domain\"").contains("`domain`"));
        assert!(err("public_url = \"ftp://x\"").contains("public_url"));
        assert!(err("[relay]\ntransport = \"smtp://host\"").contains("relay.transport"));
        assert!(err("[relay]\ntransport = \"mx:\"").contains("relay.transport"));
        assert!(err("[limits]\nregister_daily_cap = 0").contains("limits.register_daily_cap"));
        assert!(err("[limits]\nregister_daily_cap = \"5\"").contains("register_daily_cap"));
        assert!(err("[limits]\nregister_web_client_hourly_cap = 0").contains("limits.register_web_client_hourly_cap"));
        assert!(err("[limits]\nregister_web_global_hourly_cap = -1").contains("limits.register_web_global_hourly_cap"));
        assert!(err("[[districts]]\nid = 1\nname = \"a\"\n[[districts]]\nid = 1\nname = \"b\"").contains("districts[1].id"));
        assert!(err("[[districts]]\nid = 1\nname = \"\"").contains("districts[0].name"));
        assert!(err("[ingest]\nregister_local = \"a+b\"").contains("ingest.register_local"));
        assert!(err("[carriers.docomo]\nmax_connections = 0").contains("carriers.docomo.max_connections"));
        assert!(err("[carriers.docomo]\nrate = 1").contains("rate"));
        assert!(err("[carriers.x]\ndomains = [\"a b\"]").contains("carriers.x.domains"));
        assert!(err("[carriers.default]\ndomains = [\"a.jp\"]").contains("carriers.default.domains"));
        assert!(err("[alerts]\nrequire = \"none\"").contains("alerts.require"));
        assert!(err("[alerts]\nalert_local = \"ans\"").contains("alerts.alert_local"));
        assert!(err("[alerts]\nauthserv_id = \"a b\"").contains("alerts.authserv_id"));
        assert!(err("[carriers.au]\nroute = \"dns\"").contains("carriers.au.route"));
        assert!(err("[relay]\nsmtp_tls = \"may\"").contains("relay.smtp_tls"));
        assert!(err("[relay]\nresolver = \"127.0.0.1\"").contains("relay.resolver"));
        assert!(err("[relay]\nmx_port = 0").contains("relay.mx_port"));
        assert!(err("[relay]\nsmtp_username = \"u\"").contains("relay.smtp_password_file"));
        assert!(err("[relay]\nsmtp_password = \"secret\"").contains("smtp_password"));
        assert!(err("[relay]\nsmtp_tls_ca_file = \"ca.pem\"").contains("relay.smtp_tls_ca_file"));
    }

    #[test]
    fn smtp_transport_parses() {
        let c = parse("[relay]\ntransport = \"smtp://127.0.0.1:2525\"").unwrap();
        assert_eq!(c.relay.transport, Transport::Smtp { host: "127.0.0.1".into(), port: 2525 });
        let c = parse("[relay]\ntransport = \"smtp://[::1]:25\"").unwrap();
        assert_eq!(c.relay.transport, Transport::Smtp { host: "::1".into(), port: 25 });
    }

    #[test]
    fn mx_transport_and_dns_keys_parse() {
        let c = parse("[relay]\ntransport = \"mx\"\nresolver = \"127.0.0.1:5353\"\nmx_port = 2525\n[carriers.au]\nroute = \"mx\"").unwrap();
        assert_eq!(c.relay.transport, Transport::Mx);
        assert_eq!(c.carriers["au"].route, Some(Transport::Mx));
        assert_eq!(c.relay.resolver, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(c.relay.mx_port, 2525);
        assert_eq!(parse("").unwrap().relay.resolver, None);
    }

    #[test]
    fn auth_needs_verified_tls_unless_loopback() {
        let auth = "smtp_username = \"mamoru\"\nsmtp_password_file = \"smtp.pass\"";
        // Opportunistic TLS may fall back to plain text: refused for a remote smarthost.
        let e = err(&format!("[relay]\ntransport = \"smtp://relay.example:587\"\n{auth}"));
        assert!(e.contains("relay.smtp_username") && e.contains("required"), "{e}");
        let e = err(&format!("[relay]\nsmtp_tls = \"none\"\n{auth}\n[carriers.au]\nroute = \"smtp://10.0.0.1:25\""));
        assert!(e.contains("10.0.0.1"), "{e}");
        // Loopback, or verified TLS: accepted.
        for t in ["smtp://127.0.0.1:25", "smtp://[::1]:25", "smtp://localhost:25"] {
            parse(&format!("[relay]\ntransport = \"{t}\"\nsmtp_tls = \"none\"\n{auth}")).unwrap();
        }
        let c = parse(&format!("[relay]\ntransport = \"smtp://relay.example:587\"\nsmtp_tls = \"required\"\nsmtp_tls_ca_file = \"ca.pem\"\n{auth}")).unwrap();
        assert_eq!(c.relay.smtp_tls, SmtpTls::Required);
        // Files are relative to the config file's directory.
        assert_eq!(c.relay.smtp_password_file, "/srv/mamoru/smtp.pass");
        assert_eq!(c.relay.smtp_tls_ca_file, "/srv/mamoru/ca.pem");
        let w = parse("[web]\ntls_cert = \"tls/cert.pem\"\ntls_key = \"/etc/ssl/key.pem\"").unwrap();
        assert_eq!((w.web.tls_cert.as_str(), w.web.tls_key.as_str()), ("/srv/mamoru/tls/cert.pem", "/etc/ssl/key.pem"));
        assert_eq!(parse("").unwrap().relay.smtp_tls, SmtpTls::Opportunistic);
    }

    #[test]
    fn district_tags_in_recipients() {
        let c = parse("domain = \"mamoru.test\"").unwrap();
        assert_eq!(c.district_of_recipient("ans+chuo@mamoru.test").map(|d| d.id), Some(1));
        assert_eq!(c.district_of_recipient("<ANS+Showa@mamoru.test>").map(|d| d.id), Some(3));
        assert_eq!(c.district_of_recipient("ans+10@mamoru.test").map(|d| d.id), Some(10));
        assert_eq!(c.district_of_recipient("ans@mamoru.test"), None);
        assert_eq!(c.district_of_recipient("ans+nowhere@mamoru.test"), None);
        assert_eq!(c.district_address(&c.districts[0]), "ans+chuo@mamoru.test");
        assert!(err("[[districts]]\nid = 1\nname = \"a\"\ntag = \"Bad Tag\"").contains("districts[0].tag"));
    }

    /// A value with a syntax of its own that does not parse is an error
    /// naming the key, the shape it needs and the line; never the value
    /// (a host, an address) and never a fallback: a route is not replaced
    /// by the relay's transport, a security policy not by a default.
    #[test]
    fn a_bad_route_or_alert_policy_names_key_and_shape_never_the_value() {
        let route_shape = "\"file\", \"mx\" or \"smtp://HOST:PORT\"";
        let require_shape = "\"sasl-or-dkim\", \"sasl\" or \"dkim\"";
        for (text, key, shape, value) in [
            ("[carriers.au]\nroute = \"smtp://relay.example\"", "carriers.au.route", route_shape, "relay.example"),
            ("[carriers.au]\nroute = \"relay.example:25\"", "carriers.au.route", route_shape, "relay.example"),
            ("[carriers.docomo]\nroute = \"smtp://a b:25\"", "carriers.docomo.route", route_shape, "a b"),
            ("[alerts]\nrequire = \"SASL\"", "alerts.require", require_shape, "SASL"),
            ("[alerts]\nrequire = \"sasl-and-dkim\"", "alerts.require", require_shape, "sasl-and-dkim"),
            ("[relay]\ntransport = \"smtp://relay.example\"", "relay.transport", route_shape, "relay.example"),
            ("[relay]\nsmtp_tls = \"may\"", "relay.smtp_tls", "\"opportunistic\", \"required\" or \"none\"", "may"),
        ] {
            let e = err(text);
            assert!(e.contains(&format!("config key `{key}`")) && e.contains(shape), "{text}: {e}");
            assert!(!e.contains(value), "{text}: the error repeats the value: {e}");
        }
        assert!(err("[alerts]\nrequire = \"\"").contains("alerts.require"));
        // Only an empty route means the relay's transport.
        assert!(err("[carriers.au]\nroute = \" \"").contains("carriers.au.route"));
        assert_eq!(parse("[carriers.au]\nroute = \"\"").unwrap().carriers["au"].route, None);
        assert!(err("[carriers.au]\nroute = \"smtp://[::1:25\"").contains("carriers.au.route"));
    }

    #[test]
    fn transports_write_back_in_their_own_syntax() {
        for t in ["file", "mx", "smtp://relay.example:587", "smtp://127.0.0.1:25", "smtp://[::1]:2525"] {
            let c = parse(&format!("[relay]\ntransport = \"{t}\"\n[carriers.au]\nroute = \"{t}\"")).unwrap();
            assert_eq!(c.relay.transport.to_string(), t);
            assert_eq!(c.carriers["au"].route.as_ref().map(ToString::to_string).as_deref(), Some(t));
        }
    }

    #[test]
    fn absolute_data_dir_is_kept() {
        assert_eq!(parse("data_dir = \"/var/lib/mamoru\"").unwrap().data_dir, Path::new("/var/lib/mamoru"));
    }
}
