//! `mamoru-sink`: see the library documentation. Prints
//! `sink listening on ADDR` once it accepts connections; on SIGINT/SIGTERM
//! it stops accepting, waits for the open sessions to end (at most 30 s),
//! writes the stats file a last time (`"stopped": true` if none was left
//! open: the counts are final) and exits.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Parser;
use mamoru_sink::policy::{DomainLimit, LimitChange, Policy, PolicyConfig, ThrottleWindow};
use mamoru_sink::server::{self, HandshakeFault, Sink};
use tokio_util::sync::CancellationToken;

/// An SMTP sink that plays the Japanese mobile carriers (connection caps,
/// rate limits, unknown users, faults on demand) and records what it got.
#[derive(Debug, Parser)]
#[command(name = "mamoru-sink", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Limits of one domain: DOMAIN=CONNS/RATE[/BURST] (RATE 0 = no limit).
    #[arg(long = "domain", value_name = "DOMAIN=CONNS/RATE[/BURST]")]
    domains: Vec<String>,
    /// Sessions open at once at most; one more gets 421 at the greeting.
    #[arg(long)]
    greeting_cap: Option<u32>,
    /// Answer this domain's messages over its rate with 451 4.7.1 (the
    /// session goes on) instead of 421 and a close.
    #[arg(long = "pace-451", value_name = "DOMAIN")]
    pace_451: Vec<String>,
    /// From SECS on, DOMAIN has these limits.
    #[arg(long = "change", value_name = "DOMAIN@SECS=CONNS/RATE[/BURST]")]
    changes: Vec<String>,
    /// Share of recipients that are unknown users (550 5.1.1), 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    unknown_fraction: f64,
    /// Answer 421 to every RCPT for DOMAIN from FROM to TO seconds after start.
    #[arg(long = "throttle", value_name = "DOMAIN=FROM..TO")]
    throttles: Vec<String>,
    /// Append `MILLIS DOMAIN MESSAGE-ID` per received message to FILE.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Rewrite FILE with JSON statistics every 200 ms and at exit; only the
    /// exit write, marked `"stopped": true`, is final.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Name in the greeting and EHLO reply.
    #[arg(long, default_value = "sink.invalid")]
    hostname: String,
    /// Offer STARTTLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require AUTH (PLAIN or LOGIN) as USER:PASSWORD before MAIL; repeatable.
    /// With STARTTLS, AUTH is offered only after it.
    #[arg(long = "auth", value_name = "USER:PASSWORD")]
    accounts: Vec<String>,
    /// Offer STARTTLS (with or without a certificate) and fail every
    /// handshake: `close` hangs up after the 220, `garbage` sends a
    /// non-TLS line instead of a ServerHello, `stall` never answers.
    #[arg(long, value_name = "close|garbage|stall")]
    starttls_fault: Option<String>,
    /// Refuse MAIL without TLS (530 5.7.0 Must issue a STARTTLS command
    /// first); with --starttls-fault, nothing gets through.
    #[arg(long)]
    require_tls: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mamoru-sink: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config(args: &Args) -> Result<PolicyConfig, String> {
    let mut limits = BTreeMap::new();
    for d in &args.domains {
        let (name, spec) = d.split_once('=').ok_or(format!("--domain {d}: want DOMAIN=CONNS/RATE[/BURST]"))?;
        let limit = DomainLimit::parse(spec).ok_or(format!("--domain {d}: want DOMAIN=CONNS/RATE[/BURST]"))?;
        limits.insert(name.to_ascii_lowercase(), limit);
    }
    let mut throttle_windows = Vec::new();
    for t in &args.throttles {
        let bad = || format!("--throttle {t}: want DOMAIN=FROM..TO");
        let (domain, span) = t.split_once('=').ok_or_else(bad)?;
        let (from, to) = span.split_once("..").ok_or_else(bad)?;
        throttle_windows.push(ThrottleWindow {
            domain: domain.to_ascii_lowercase(),
            from: from.parse().map_err(|_| bad())?,
            to: to.parse().map_err(|_| bad())?,
        });
    }
    if !(0.0..=1.0).contains(&args.unknown_fraction) {
        return Err("--unknown-fraction must be from 0 to 1".into());
    }
    let mut changes = Vec::new();
    for c in &args.changes {
        changes.push(LimitChange::parse(c).ok_or(format!("--change {c}: want DOMAIN@SECS=CONNS/RATE[/BURST]"))?);
    }
    Ok(PolicyConfig {
        limits,
        unknown_fraction: args.unknown_fraction,
        throttle_windows,
        greeting_cap: args.greeting_cap,
        pace_451: args.pace_451.clone(),
        changes,
    })
}

fn run(args: Args) -> Result<(), String> {
    let cfg = config(&args)?;
    let log = match &args.log {
        Some(p) => Some(Mutex::new(
            std::fs::OpenOptions::new().create(true).append(true).open(p).map_err(|e| format!("{}: {e}", p.display()))?,
        )),
        None => None,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(server::tls_config(cert, key).map_err(|e| e.to_string())?)),
        _ => None,
    };
    let accounts = args
        .accounts
        .iter()
        .map(|a| a.split_once(':').map(|(u, p)| (u.to_string(), p.to_string())).ok_or(format!("--auth {a}: want USER:PASSWORD")))
        .collect::<Result<Vec<_>, _>>()?;
    let handshake = match &args.starttls_fault {
        Some(f) => Some(HandshakeFault::parse(f).ok_or(format!("--starttls-fault {f}: want close, garbage or stall"))?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| format!("bind {}: {e}", args.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let sink = Arc::new(Sink {
            hostname: args.hostname.clone(),
            policy: Mutex::new(Policy::new(cfg)),
            log,
            stats_path: args.stats.clone(),
            started: Instant::now(),
            tls,
            accounts,
            handshake,
            require_tls: args.require_tls,
        });
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "sink listening on {addr}");
            let _ = out.flush();
        }
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            match term {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            stop.cancel();
        });
        server::run(listener, sink, shutdown).await.map_err(|e| e.to_string())
    })
}
