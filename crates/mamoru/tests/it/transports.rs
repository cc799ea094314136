//! The relay's SMTP transports end to end: the real `mamoru relay` process,
//! configured by file, against the carrier emulator (`mamoru-sink`, in this
//! process so the test reads what it received) with STARTTLS and AUTH, and,
//! for `mx`, a real DNS server (dnsmasq on a loopback port, answering from
//! its command line only: nothing leaves the machine).
//!
//! - `smtp://` with `smtp_tls = "required"`, a private CA and AUTH: every
//!   message arrives over TLS as the configured user; a wrong password or a
//!   server without STARTTLS defers everything (nothing sent, lost or failed).
//! - `mx`: two carrier domains through one single-connection pool (so its
//!   worker must switch connections by domain), a domain with only an A
//!   record, and a null MX and an NXDOMAIN that fail with a stored reason.
//! - STARTTLS offered but the handshake fails (the sink hangs up after its
//!   220, sends garbage instead of a ServerHello, or stalls): `smtp_tls =
//!   "opportunistic"` and `mx` reconnect in plain text and deliver each
//!   message once; `"required"` sends nothing and defers. A handshake that
//!   stalls counts as failed after the relay's limit (10 s).
//! - STARTTLS offered, the handshake failing, and MAIL refused without TLS
//!   (`530 5.7.0 Must issue a STARTTLS command first`): `"opportunistic"`
//!   and `mx` defer every message with the reason (none failed, nothing
//!   received), and once the server is fixed (restarted on the same port
//!   with a working TLS) deliver each over TLS, without a relay restart.
//! - `mx` with a domain whose DNS answers SERVFAIL (a real one: dnsmasq
//!   forwards that domain to a UDP socket answering SERVFAIL): that message
//!   is deferred, the pool's other domains are delivered meanwhile (one of
//!   them past an MX host whose address lookup fails the same way), and
//!   once DNS answers again a retry delivers it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mamoru_core::mail::{MailKind, OutgoingMail};
use mamoru_sink::policy::{DomainLimit, PolicyConfig};
use mamoru_sink::server::{HandshakeFault, Sink};
use tokio_util::sync::CancellationToken;

use crate::support::*;

const T: Duration = Duration::from_secs(30);

/// The carrier emulator on a loopback port, stopped when dropped.
struct Emulator {
    sink: Arc<Sink>,
    port: u16,
    stop: CancellationToken,
    _rt: tokio::runtime::Runtime,
}

impl Emulator {
    fn start(sink: Sink) -> Emulator {
        Self::start_on(sink, 0)
    }

    /// On `port` (0: a free one), e.g. the port of one just dropped: the
    /// same server restarted with another configuration.
    fn start_on(sink: Sink, port: u16) -> Emulator {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let listener = rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let sink = Arc::new(sink);
        let stop = CancellationToken::new();
        rt.spawn(mamoru_sink::server::run(listener, Arc::clone(&sink), stop.clone()));
        Emulator { sink, port, stop, _rt: rt }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A child process (relay, dnsmasq), killed by its pid when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_relay(inst: &Instance, name: &str) -> Proc {
    let log = std::fs::File::create(relay_log_path(inst, name)).expect("log file");
    Proc(inst.cmd().env("RUST_LOG", "debug").arg("relay").stdout(Stdio::null()).stderr(log).spawn().expect("start mamoru relay"))
}

fn relay_log_path(inst: &Instance, name: &str) -> PathBuf {
    inst.dir.path().join(format!("relay-{name}.log"))
}

fn relay_log(inst: &Instance, name: &str) -> String {
    std::fs::read_to_string(relay_log_path(inst, name)).unwrap_or_default()
}

/// A CA and a certificate for `localhost` / 127.0.0.1 signed by it (P-256),
/// made with openssl in `dir`: (ca.pem, cert.pem, key.pem).
pub(crate) fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(&[&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=mamoru test CA", "-days", "2"]].concat());
    openssl(&[&["req"][..], &ec, &["-keyout", "key.pem", "-out", "cert.csr", "-subj", "/CN=localhost"]].concat());
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").expect("ext");
    openssl(&[
        "x509", "-req", "-in", "cert.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "cert.pem", "-days",
        "2", "-extfile", "ext.cnf",
    ]);
    (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"))
}

/// Queues one small message per address; returns (outbox id, Message-ID).
fn queue(inst: &Instance, addrs: &[&str]) -> Vec<(mamoru_core::OutboxId, String)> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let now = mamoru_core::now();
    let mails: Vec<OutgoingMail> = addrs
        .iter()
        .map(|a| {
            let to = mamoru_core::EmailAddress::parse(a).expect("address");
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mid = format!("t{n}.{}.{now}@{DOMAIN}", std::process::id());
            let bytes = format!("From: <ans@{DOMAIN}>\r\nTo: <{a}>\r\nSubject: t\r\nMessage-ID: <{mid}>\r\n\r\nbody\r\n").into_bytes();
            OutgoingMail { kind: MailKind::RegistrationReceived, sender: format!("ans@{DOMAIN}"), to, message_id: mid, bytes }
        })
        .collect();
    let ids = inst.store().queue_many(&mails, 0, now, now + 3600).expect("queue");
    ids.into_iter().zip(mails.into_iter().map(|m| m.message_id)).collect()
}

/// (state, attempts, last_error) of an outbox row, read from the database.
fn row(inst: &Instance, id: mamoru_core::OutboxId) -> (String, i64, String) {
    let db = inst.data_dir().join(mamoru_store::DB_FILE);
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open db");
    conn.query_row("SELECT state, attempts, last_error FROM outbox WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("outbox row")
}

fn wait_state(inst: &Instance, id: mamoru_core::OutboxId, state: &str, log: &str) -> (String, i64, String) {
    wait_for_or(
        &format!("row {id} to be {state}"),
        T,
        || Some(row(inst, id)).filter(|r| r.0 == state),
        || format!("row: {:?}\n{}", row(inst, id), relay_log(inst, log)),
    )
}

fn smtp_instance(port: u16, ca: &Path, password_file: &Path) -> Instance {
    Instance::new(&[
        ("relay.transport", &format!("\"smtp://127.0.0.1:{port}\"")),
        ("relay.smtp_tls", "\"required\""),
        ("relay.smtp_tls_ca_file", &format!("{:?}", ca.display().to_string())),
        ("relay.smtp_username", "\"mamoru\""),
        ("relay.smtp_password_file", &format!("{:?}", password_file.display().to_string())),
        ("relay.dkim_selector", "\"\""),
    ])
}

const ADDRS: [&str; 6] =
    ["taro..yamada.@docomo.ne.jp", "b@docomo.ne.jp", "c@ezweb.ne.jp", "d@ezweb.ne.jp", "e@example.com", "f@example.com"];

#[test]
fn smtp_required_tls_and_auth_every_message_encrypted_and_authenticated() {
    let work = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = make_certs(work.path());
    let em = Emulator::start(
        Sink::new("smarthost.test", PolicyConfig::default()).with_starttls(&cert, &key).expect("tls").with_account("mamoru", "s3cret"),
    );
    let pass = work.path().join("smtp.pass");
    std::fs::write(&pass, "s3cret\n").expect("password file");
    let inst = smtp_instance(em.port, &ca, &pass);
    let rows = queue(&inst, &ADDRS);
    let _relay = start_relay(&inst, "ok");
    for (id, _) in &rows {
        wait_state(&inst, *id, "sent", "ok");
    }
    let deliveries = em.sink.deliveries();
    assert_eq!(deliveries.len(), rows.len(), "{deliveries:?}");
    for (_, mid) in &rows {
        let d = deliveries.iter().find(|d| d.message_id == *mid).unwrap_or_else(|| panic!("{mid} not received"));
        assert!(d.tls, "{mid} came without TLS");
        assert_eq!(d.user.as_deref(), Some("mamoru"), "{mid}");
    }
    assert_eq!(em.sink.stats().auth_failures, 0);
    // The password never reaches the log, nor do the addresses.
    let log = relay_log(&inst, "ok");
    assert!(!log.contains("s3cret") && !log.contains("taro..yamada."), "{log}");
}

#[test]
fn smtp_wrong_password_defers_everything_and_a_fixed_one_delivers_it() {
    let work = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = make_certs(work.path());
    let em = Emulator::start(
        Sink::new("smarthost.test", PolicyConfig::default()).with_starttls(&cert, &key).expect("tls").with_account("mamoru", "s3cret"),
    );
    let pass = work.path().join("smtp.pass");
    std::fs::write(&pass, "wrong\n").expect("password file");
    let inst = smtp_instance(em.port, &ca, &pass);
    let rows = queue(&inst, &ADDRS);
    {
        let _relay = start_relay(&inst, "wrong");
        // Every pool tried and was refused: each row deferred with the reason.
        for (id, _) in &rows {
            wait_for_or(
                "a deferral with the AUTH failure",
                T,
                || Some(row(&inst, *id)).filter(|r| r.1 >= 1 && r.2.contains("AUTH failed")),
                || format!("{:?}\n{}", row(&inst, *id), relay_log(&inst, "wrong")),
            );
        }
    }
    assert!(em.sink.stats().auth_failures >= 1);
    assert_eq!(em.sink.stats().accepted, 0);
    for (id, _) in &rows {
        let (state, _, reason) = row(&inst, *id);
        assert!(state == "queued" || state == "sending", "row {id}: {state} {reason}");
        assert!(reason.contains("535"), "{reason}");
    }
    // Nothing was lost: with the right password, everything goes out.
    std::fs::write(&pass, "s3cret\n").expect("password file");
    let _relay = start_relay(&inst, "fixed");
    for (id, _) in &rows {
        wait_state(&inst, *id, "sent", "fixed");
    }
    assert_eq!(em.sink.deliveries().len(), rows.len());
}

#[test]
fn smtp_required_tls_without_starttls_defers() {
    let work = tempfile::tempdir().expect("tempdir");
    let (ca, _, _) = make_certs(work.path());
    // A server offering no STARTTLS (and no AUTH).
    let em = Emulator::start(Sink::new("plain.test", PolicyConfig::default()));
    let pass = work.path().join("smtp.pass");
    std::fs::write(&pass, "s3cret").expect("password file");
    let inst = smtp_instance(em.port, &ca, &pass);
    let rows = queue(&inst, &ADDRS[..2]);
    let _relay = start_relay(&inst, "plain");
    for (id, _) in &rows {
        wait_for_or(
            "a deferral for the missing STARTTLS",
            T,
            || Some(row(&inst, *id)).filter(|r| r.1 >= 1 && r.2.contains("STARTTLS")),
            || format!("{:?}\n{}", row(&inst, *id), relay_log(&inst, "plain")),
        );
        let (state, _, _) = row(&inst, *id);
        assert!(state == "queued" || state == "sending", "row {id}: {state}");
    }
    assert!(em.sink.stats().sessions >= 1, "the relay never connected");
    assert_eq!(em.sink.stats().accepted, 0);
}

const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// dnsmasq on 127.0.0.1:`port` with the test's records and no upstream:
/// every other name under `test` and `ne.jp` is NXDOMAIN, and nothing is
/// forwarded anywhere.
fn start_dnsmasq(dir: &Path, port: u16, records: &[String]) -> Proc {
    assert!(Path::new(DNSMASQ).exists(), "{DNSMASQ} is missing: scripts/install-test-deps installs dnsmasq-base");
    let log = dir.join("dnsmasq.log");
    let mut cmd = Command::new(DNSMASQ);
    cmd.args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll", "--bind-interfaces"])
        .arg("--listen-address=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg("--pid-file=")
        .args(["--local=/test/", "--local=/ne.jp/", "--log-queries"])
        .arg(format!("--log-facility={}", log.display()))
        .args(records);
    // As root dnsmasq drops to "nobody" unless told otherwise.
    if std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false) {
        cmd.arg("--user=root");
    }
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start dnsmasq");
    // Ready when it answers over UDP: a query for a name it knows.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    // A minimal query: id 1, RD, one question "mx1.docomo.test" A IN.
    let mut q = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["mx1", "docomo", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    wait_for("dnsmasq to answer", Duration::from_secs(10), || {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err);
            panic!("dnsmasq exited at start: {status}: {err}");
        }
        sock.send_to(&q, ("127.0.0.1", port)).ok()?;
        let mut buf = [0u8; 512];
        sock.recv_from(&mut buf).ok().map(|_| ())
    });
    Proc(child)
}

#[test]
fn mx_delivers_by_mx_lookup_falls_back_to_a_and_fails_null_mx() {
    let work = tempfile::tempdir().expect("tempdir");
    let (_, cert, key) = make_certs(work.path());
    // Both carrier domains count their connections: a session that carried
    // mail for one cannot take the other's (550 5.7.1), as at the carriers.
    let mut limits = std::collections::BTreeMap::new();
    limits.insert("docomo.ne.jp".to_string(), DomainLimit { max_connections: 2, rate: 0.0, burst: 5 });
    limits.insert("ezweb.ne.jp".to_string(), DomainLimit { max_connections: 2, rate: 0.0, burst: 5 });
    // The MX hosts offer STARTTLS with a certificate nobody vouches for:
    // opportunistic TLS uses it anyway.
    let em = Emulator::start(
        Sink::new("mx.test", PolicyConfig { limits, ..PolicyConfig::default() }).with_starttls(&cert, &key).expect("tls"),
    );
    let dns_port = free_port();
    let records: Vec<String> = [
        // Two MX hosts for docomo; the preferred one has no address, so the
        // relay must go on to the next by preference.
        "--mx-host=docomo.ne.jp,mx1.docomo.test,10",
        "--mx-host=docomo.ne.jp,mx0.docomo.test,5",
        "--mx-host=docomo.ne.jp,mx2.docomo.test,20",
        "--host-record=mx1.docomo.test,127.0.0.1",
        "--host-record=mx2.docomo.test,127.0.0.1",
        "--mx-host=ezweb.ne.jp,mx.ezweb.test,10",
        "--host-record=mx.ezweb.test,127.0.0.1",
        // No MX: the implicit MX is the domain's own A record.
        "--host-record=a-only.test,127.0.0.1",
        // RFC 7505 null MX: preference 0, exchange "." (rdata 0000 00).
        "--dns-rr=nullmx.test,15,000000",
        "--host-record=nullmx.test,127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _dns = start_dnsmasq(work.path(), dns_port, &records);
    let inst = Instance::new(&[
        ("relay.transport", "\"mx\""),
        ("relay.resolver", &format!("\"127.0.0.1:{dns_port}\"")),
        ("relay.mx_port", &em.port.to_string()),
        ("relay.dkim_selector", "\"\""),
        // One pool, one connection, two carrier domains: its worker must
        // open a connection per destination domain.
        ("carriers.mobile.domains", "[\"docomo.ne.jp\", \"ezweb.ne.jp\"]"),
        ("carriers.mobile.max_connections", "1"),
        ("carriers.mobile.rate_per_second", "0"),
        ("carriers.docomo.domains", "[\"docomo.example\"]"),
        ("carriers.au.domains", "[\"au.example\"]"),
    ]);
    let addrs = [
        "taro..yamada.@docomo.ne.jp",
        "a1@ezweb.ne.jp",
        "a2@docomo.ne.jp",
        "a3@ezweb.ne.jp",
        "a4@docomo.ne.jp",
        "a5@ezweb.ne.jp",
        "someone@a-only.test",
    ];
    let ok = queue(&inst, &addrs);
    let bad = queue(&inst, &["x@nullmx.test", "y@gone.test"]);
    let _relay = start_relay(&inst, "mx");
    for (id, _) in &ok {
        wait_state(&inst, *id, "sent", "mx");
    }
    let (_, _, reason) = wait_state(&inst, bad[0].0, "failed", "mx");
    assert!(reason.contains("null MX"), "{reason}");
    let (_, _, reason) = wait_state(&inst, bad[1].0, "failed", "mx");
    assert!(reason.contains("NXDOMAIN"), "{reason}");

    let deliveries = em.sink.deliveries();
    assert_eq!(deliveries.len(), ok.len(), "{deliveries:?}");
    for (_, mid) in &ok {
        let d = deliveries.iter().find(|d| d.message_id == *mid).unwrap_or_else(|| panic!("{mid} not received"));
        assert!(d.tls, "{mid}: opportunistic STARTTLS was offered but not used");
        assert_eq!(d.user, None);
    }
    let stats = em.sink.stats();
    assert_eq!(stats.domains.get("a-only.test").map(|d| d.accepted), Some(1));
    assert_eq!(stats.domains.get("docomo.ne.jp").map(|d| d.accepted), Some(3));
    assert_eq!(stats.domains.get("ezweb.ne.jp").map(|d| d.accepted), Some(3));
    // The same worker carried both carrier domains, one connection each.
    assert!(stats.sessions >= 3, "{stats:?}");
    let log = relay_log(&inst, "mx");
    assert!(!log.contains("taro..yamada."), "an address in clear in the log");
    // Every question went to our dnsmasq, about our names only.
    let queries = std::fs::read_to_string(work.path().join("dnsmasq.log")).unwrap_or_default();
    assert!(queries.contains("docomo.ne.jp") && queries.contains("a-only.test"), "{queries}");
}

/// A smarthost instance with `smtp_tls` = `tls`, no AUTH.
fn smarthost_instance(port: u16, tls: &str) -> Instance {
    Instance::new(&[
        ("relay.transport", &format!("\"smtp://127.0.0.1:{port}\"")),
        ("relay.smtp_tls", &format!("\"{tls}\"")),
        ("relay.dkim_selector", "\"\""),
    ])
}

/// Every queued message arrived exactly once, in plain text, on the first
/// attempt (none deferred, none failed).
fn assert_all_once_in_plain_text(inst: &Instance, em: &Emulator, rows: &[(mamoru_core::OutboxId, String)], log: &str) {
    for (id, _) in rows {
        let (_, attempts, reason) = wait_state(inst, *id, "sent", log);
        assert_eq!((attempts, reason.as_str()), (1, ""), "row {id}");
    }
    let deliveries = em.sink.deliveries();
    assert_eq!(deliveries.len(), rows.len(), "{deliveries:?}");
    let seen = em.sink.message_ids();
    for (_, mid) in rows {
        assert_eq!(seen.get(mid), Some(&1), "{mid}");
        let d = deliveries.iter().find(|d| d.message_id == *mid).unwrap_or_else(|| panic!("{mid} not received"));
        assert!(!d.tls, "{mid} came over TLS through a failed handshake?");
    }
    let stats = em.sink.stats();
    assert_eq!(stats.duplicates, 0, "{stats:?}");
    assert!(stats.tls_failures >= 1, "the relay never tried STARTTLS: {stats:?}");
    let text = relay_log(inst, log);
    assert!(text.contains("STARTTLS failed; retrying without TLS"), "{text}");
    assert!(!text.contains("taro..yamada."), "an address in clear in the log");
}

#[test]
fn smtp_opportunistic_tls_falls_back_to_plain_text_when_the_handshake_fails() {
    for fault in [HandshakeFault::Close, HandshakeFault::Garbage] {
        let em = Emulator::start(Sink::new("smarthost.test", PolicyConfig::default()).with_handshake_fault(fault));
        let inst = smarthost_instance(em.port, "opportunistic");
        let rows = queue(&inst, &ADDRS);
        let name = format!("{fault:?}");
        let _relay = start_relay(&inst, &name);
        assert_all_once_in_plain_text(&inst, &em, &rows, &name);
    }
}

#[test]
fn smtp_required_tls_with_a_failing_handshake_defers_and_never_sends_in_clear() {
    // A stalled handshake too is a failed STARTTLS (after the relay's 10 s
    // handshake limit), not a server that never greeted.
    for fault in [HandshakeFault::Close, HandshakeFault::Garbage, HandshakeFault::Stall] {
        let em = Emulator::start(Sink::new("smarthost.test", PolicyConfig::default()).with_handshake_fault(fault));
        let inst = smarthost_instance(em.port, "required");
        let rows = queue(&inst, &ADDRS[..2]);
        let name = format!("{fault:?}");
        {
            let _relay = start_relay(&inst, &name);
            // A stalled handshake takes its 10 s limit, and while the pool's
            // second session is still open the refusal first lowers the
            // learned cap (the row goes back due, nothing recorded) before
            // the lone session's refusal defers a row and pauses the pool:
            // one deferral is what the failure must lead to. The pool's
            // pauses then grow, so the other row may wait longer than a test
            // should; below, neither row is failed or sent.
            wait_for_or(
                "a deferral for the failed STARTTLS",
                Duration::from_secs(90),
                || rows.iter().map(|(id, _)| row(&inst, *id)).find(|r| r.1 >= 1 && r.2.contains("STARTTLS failed")),
                || format!("{:?}\n{}", rows.iter().map(|(id, _)| row(&inst, *id)).collect::<Vec<_>>(), relay_log(&inst, &name)),
            );
        }
        for (id, _) in &rows {
            let (state, _, reason) = row(&inst, *id);
            assert!(state == "queued" || state == "sending", "row {id}: {state} {reason}");
        }
        let stats = em.sink.stats();
        assert!(stats.tls_failures >= 1, "{stats:?}");
        assert_eq!(stats.accepted, 0, "{stats:?}");
        assert!(em.sink.deliveries().is_empty());
        let text = relay_log(&inst, &name);
        assert!(!text.contains("retrying without TLS"), "{text}");
    }
}

/// A DNS server on a loopback UDP port that answers every question with
/// SERVFAIL, until [`FlakyDns::recover`]: then every name has the A record
/// 127.0.0.1 and nothing else (so a domain's MX is implicit). Counts the
/// questions; stops when dropped.
struct FlakyDns {
    port: u16,
    questions: Arc<std::sync::atomic::AtomicUsize>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FlakyDns {
    fn start() -> FlakyDns {
        use std::sync::atomic::Ordering::Relaxed;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        sock.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        let port = sock.local_addr().expect("addr").port();
        let questions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (q, h, s) = (Arc::clone(&questions), Arc::clone(&healthy), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
                if let Some(reply) = Self::answer(&buf[..n], h.load(Relaxed)) {
                    q.fetch_add(1, Relaxed);
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        FlakyDns { port, questions, healthy, stop, thread: Some(thread) }
    }

    /// The reply to `query`: its header and question, flagged as a
    /// response (RD kept, RA), with RCODE 2 (SERVFAIL), or when healthy
    /// RCODE 0 and, for an A question, the answer 127.0.0.1.
    fn answer(query: &[u8], healthy: bool) -> Option<Vec<u8>> {
        // The question: a name (labels, no compression in a query), type, class.
        let mut end = 12;
        while *query.get(end)? != 0 {
            end += 1 + usize::from(query[end]);
        }
        let qtype = u16::from_be_bytes([*query.get(end + 1)?, *query.get(end + 2)?]);
        end += 5;
        let mut reply = query.get(..end)?.to_vec();
        reply[2] = 0x80 | (query[2] & 0x01);
        reply[3] = if healthy { 0x80 } else { 0x80 | 2 };
        // QDCOUNT 1, ANCOUNT, NSCOUNT 0, ARCOUNT 0 (the query's EDNS is dropped).
        let a = healthy && qtype == 1;
        reply[4..12].copy_from_slice(&[0, 1, 0, u8::from(a), 0, 0, 0, 0]);
        if a {
            // The question's name (a pointer to offset 12), A, IN, TTL 0, 127.0.0.1.
            reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 127, 0, 0, 1]);
        }
        Some(reply)
    }

    fn recover(&self) {
        self.healthy.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn questions(&self) -> usize {
        self.questions.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for FlakyDns {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// MX records for the two carrier domains, both served by 127.0.0.1.
fn carrier_mx_records() -> Vec<String> {
    [
        "--mx-host=docomo.ne.jp,mx1.docomo.test,10",
        "--host-record=mx1.docomo.test,127.0.0.1",
        "--mx-host=ezweb.ne.jp,mx.ezweb.test,10",
        "--host-record=mx.ezweb.test,127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// An `mx` instance asking dnsmasq on `dns_port`, delivering to `mx_port`,
/// with one single-connection pool for `domains`.
fn mx_instance(dns_port: u16, mx_port: u16, domains: &[&str]) -> Instance {
    let domains = format!("[{}]", domains.iter().map(|d| format!("\"{d}\"")).collect::<Vec<_>>().join(", "));
    Instance::new(&[
        ("relay.transport", "\"mx\""),
        ("relay.resolver", &format!("\"127.0.0.1:{dns_port}\"")),
        ("relay.mx_port", &mx_port.to_string()),
        ("relay.dkim_selector", "\"\""),
        ("carriers.mobile.domains", &domains),
        ("carriers.mobile.max_connections", "1"),
        ("carriers.mobile.rate_per_second", "0"),
        ("carriers.docomo.domains", "[\"docomo.example\"]"),
        ("carriers.au.domains", "[\"au.example\"]"),
    ])
}

#[test]
fn mx_falls_back_to_plain_text_when_the_handshake_fails() {
    let work = tempfile::tempdir().expect("tempdir");
    // MX hosts announcing STARTTLS and answering the ClientHello with garbage.
    let em = Emulator::start(Sink::new("mx.test", PolicyConfig::default()).with_handshake_fault(HandshakeFault::Garbage));
    let dns_port = free_port();
    let _dns = start_dnsmasq(work.path(), dns_port, &carrier_mx_records());
    let inst = mx_instance(dns_port, em.port, &["docomo.ne.jp", "ezweb.ne.jp"]);
    let rows = queue(&inst, &["taro..yamada.@docomo.ne.jp", "a1@ezweb.ne.jp", "a2@docomo.ne.jp", "a3@ezweb.ne.jp"]);
    let _relay = start_relay(&inst, "mx-garbage");
    assert_all_once_in_plain_text(&inst, &em, &rows, "mx-garbage");
}

#[test]
fn mx_servfail_defers_only_that_domain_and_the_pool_delivers_the_rest() {
    let work = tempfile::tempdir().expect("tempdir");
    let em = Emulator::start(Sink::new("mx.test", PolicyConfig::default()));
    let flaky = FlakyDns::start();
    let dns_port = free_port();
    let mut records = carrier_mx_records();
    // dnsmasq forwards questions about servfail.test to the flaky server
    // and passes its SERVFAIL on (within milliseconds, no timeout involved).
    records.push(format!("--server=/servfail.test/127.0.0.1#{}", flaky.port));
    // docomo's preferred MX host is under servfail.test: its address
    // lookup fails, so the relay goes on to the next host.
    records.push("--mx-host=docomo.ne.jp,mx0.servfail.test,5".into());
    let _dns = start_dnsmasq(work.path(), dns_port, &records);
    // One pool, one connection, the failing domain first in the queue.
    let inst = mx_instance(dns_port, em.port, &["servfail.test", "docomo.ne.jp", "ezweb.ne.jp"]);
    let dead = queue(&inst, &["x@servfail.test"]);
    let rows = queue(&inst, &["taro..yamada.@docomo.ne.jp", "a1@ezweb.ne.jp", "a2@docomo.ne.jp", "a3@ezweb.ne.jp"]);
    let _relay = start_relay(&inst, "servfail");
    for (id, _) in &rows {
        let (_, attempts, reason) = wait_state(&inst, *id, "sent", "servfail");
        assert_eq!((attempts, reason.as_str()), (1, ""), "row {id}");
    }
    let (state, attempts, reason) = wait_for_or(
        "the servfail.test row to be deferred",
        T,
        || Some(row(&inst, dead[0].0)).filter(|r| r.1 >= 1),
        || format!("{:?}\n{}", row(&inst, dead[0].0), relay_log(&inst, "servfail")),
    );
    assert!(state == "queued" || state == "sending", "{state} after {attempts} attempts: {reason}");
    // hickory's name for RCODE 2, passed on by dnsmasq.
    assert!(reason.contains("MX lookup for servfail.test failed: Server Failure"), "{reason}");
    assert!(flaky.questions() >= 2, "dnsmasq did not ask the SERVFAIL server");
    let queries = std::fs::read_to_string(work.path().join("dnsmasq.log")).unwrap_or_default();
    assert!(queries.contains("mx0.servfail.test") && queries.contains("SERVFAIL"), "{queries}");
    let stats = em.sink.stats();
    assert_eq!(stats.accepted, rows.len() as u64, "{stats:?}");
    assert!(!stats.domains.contains_key("servfail.test"), "{stats:?}");
    // Deferred, not given up: once DNS answers, a retry delivers it (no
    // SERVFAIL kept in a cache), to the domain's own address.
    flaky.recover();
    let (_, attempts, _) = wait_state(&inst, dead[0].0, "sent", "servfail");
    assert!(attempts >= 2, "{attempts}");
    assert_eq!(em.sink.stats().domains.get("servfail.test").map(|d| d.accepted), Some(1));
    let text = relay_log(&inst, "servfail");
    assert!(text.contains("delivery deferred"), "{text}");
    assert!(!text.contains("taro..yamada.") && !text.contains("x@servfail.test"), "an address in clear in the log");
}

#[test]
fn smtp_opportunistic_tls_falls_back_to_plain_text_when_the_handshake_stalls() {
    // The server takes the ClientHello and never answers: the relay gives up
    // on TLS after its handshake limit and delivers in plain text, rather
    // than deferring the mail for as long as the server stays broken.
    let em = Emulator::start(Sink::new("smarthost.test", PolicyConfig::default()).with_handshake_fault(HandshakeFault::Stall));
    let inst = smarthost_instance(em.port, "opportunistic");
    let rows = queue(&inst, &ADDRS[..2]);
    let _relay = start_relay(&inst, "stall");
    assert_all_once_in_plain_text(&inst, &em, &rows, "stall");
    let text = relay_log(&inst, "stall");
    assert!(text.contains("no TLS handshake within"), "{text}");
}

/// The sink restarted on the same port: first demanding TLS (530 5.7.0 to
/// MAIL in plain text) while its handshake fails as `fault` says, then with
/// a working TLS. The relay (`inst`, started as `name`) must defer every row
/// meanwhile, and deliver each once over TLS after the fix.
fn tls_required_but_broken_defers_until_fixed(port: u16, inst: &Instance, rows: &[(mamoru_core::OutboxId, String)], name: &str, fault: HandshakeFault) {
    let work = tempfile::tempdir().expect("tempdir");
    let (_, cert, key) = make_certs(work.path());
    let broken = Emulator::start_on(Sink::new("tls.test", PolicyConfig::default()).with_handshake_fault(fault).with_required_tls(), port);
    let _relay = start_relay(inst, name);
    for (id, _) in rows {
        wait_for_or(
            "a deferral for the TLS the server requires",
            T,
            || Some(row(inst, *id)).filter(|r| r.1 >= 1 && r.2.contains("server requires TLS, and the STARTTLS handshake failed")),
            || format!("{:?}\n{}", row(inst, *id), relay_log(inst, name)),
        );
    }
    for (id, _) in rows {
        let (state, _, reason) = row(inst, *id);
        assert!(state == "queued" || state == "sending", "row {id}: {state} {reason}");
        assert!(reason.contains("530 5.7.0") && reason.contains("(after MAIL FROM)"), "{reason}");
    }
    let stats = broken.sink.stats();
    assert!(stats.tls_failures >= 1, "{stats:?}");
    assert_eq!(stats.accepted, 0, "{stats:?}");
    assert!(broken.sink.deliveries().is_empty());
    drop(broken);

    // The operator fixes TLS: the same relay delivers everything, encrypted.
    let fixed =
        Emulator::start_on(Sink::new("tls.test", PolicyConfig::default()).with_starttls(&cert, &key).expect("tls").with_required_tls(), port);
    for (id, _) in rows {
        let (_, attempts, _) = wait_state(inst, *id, "sent", name);
        assert!(attempts >= 2, "row {id}: {attempts}");
    }
    let deliveries = fixed.sink.deliveries();
    assert_eq!(deliveries.len(), rows.len(), "{deliveries:?}");
    let seen = fixed.sink.message_ids();
    for (_, mid) in rows {
        assert_eq!(seen.get(mid), Some(&1), "{mid}");
        let d = deliveries.iter().find(|d| d.message_id == *mid).unwrap_or_else(|| panic!("{mid} not received"));
        assert!(d.tls, "{mid} came without TLS");
    }
    let text = relay_log(inst, name);
    assert!(!text.contains("delivery failed permanently"), "{text}");
    assert!(!text.contains("taro..yamada."), "an address in clear in the log");
}

#[test]
fn smtp_opportunistic_tls_to_a_server_requiring_it_defers_until_its_tls_works() {
    let port = free_port();
    let inst = smarthost_instance(port, "opportunistic");
    let rows = queue(&inst, &ADDRS);
    tls_required_but_broken_defers_until_fixed(port, &inst, &rows, "tls530", HandshakeFault::Garbage);
}

#[test]
fn mx_to_a_host_requiring_tls_defers_until_its_tls_works() {
    let work = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let dns_port = free_port();
    let _dns = start_dnsmasq(work.path(), dns_port, &carrier_mx_records());
    let inst = mx_instance(dns_port, port, &["docomo.ne.jp", "ezweb.ne.jp"]);
    let rows = queue(&inst, &["taro..yamada.@docomo.ne.jp", "a1@ezweb.ne.jp", "a2@docomo.ne.jp"]);
    tls_required_but_broken_defers_until_fixed(port, &inst, &rows, "mx-tls530", HandshakeFault::Close);
}
