//! `mamoru serve` under floods: idle connections beyond the per-client and
//! per-listener caps, idle timeouts, concurrent wrong admin logins and the
//! memory their password checks take. Different loopback addresses
//! (127.0.0.2, …; the whole 127/8 is loopback on Linux) act as different
//! clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::support::*;

const T: Duration = Duration::from_secs(30);
const ADMIN_PW: &str = "a long enough password";

/// A TCP connection from `source` (a loopback address) to `to`.
fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let from: SocketAddr = format!("{source}:0").parse().expect("source address");
    s.bind(&from.into()).expect("bind source address");
    s.connect_timeout(&to.into(), Duration::from_secs(5)).expect("connect");
    s.into()
}

/// Did the server close `s` (EOF or reset) within `wait`? Bytes it sent
/// first are read and returned with the answer.
fn closed_within(s: &mut TcpStream, wait: Duration) -> (bool, Vec<u8>) {
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (true, got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (true, got),
            Err(_) => return (false, got),
        }
    }
}

/// `GET /` from `source`; the status, or `None` if the connection was
/// closed unanswered.
fn get_from(source: &str, to: SocketAddr) -> Option<u16> {
    let mut s = connect_from(source, to);
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let _ = s.write_all(format!("GET / HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n").as_bytes());
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    text.lines().next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok())
}

/// The LMTP greeting from `source`, and how long it took.
fn lmtp_greeting_from(source: &str, to: SocketAddr) -> (String, Duration) {
    let started = Instant::now();
    let s = connect_from(source, to);
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    (line.trim_end().to_string(), started.elapsed())
}

/// Opens `n` idle connections from `source` and sorts them into those the
/// server keeps and those it closed at once (with what it said).
fn flood(source: &str, to: SocketAddr, n: usize) -> (Vec<TcpStream>, Vec<Vec<u8>>) {
    let all: Vec<TcpStream> = (0..n).map(|_| connect_from(source, to)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut kept = vec![];
    let mut refused = vec![];
    for mut s in all {
        s.set_nonblocking(true).expect("nonblocking");
        let mut said = Vec::new();
        let mut buf = [0u8; 512];
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => said.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        s.set_nonblocking(false).expect("blocking");
        if closed { refused.push(said) } else { kept.push(s) }
    }
    (kept, refused)
}

#[test]
fn an_idle_flood_from_one_client_is_capped_and_leaves_the_web_and_lmtp_answering() {
    let inst = Instance::new(&[
        ("web.max_connections", "30"),
        ("web.max_connections_per_client", "10"),
        ("web.header_timeout_secs", "3"),
        ("ingest.lmtp_max_connections", "8"),
        ("ingest.lmtp_max_connections_per_client", "4"),
    ]);
    let mut server = inst.serve();
    let (web, lmtp) = (server.http, server.lmtp);

    // One client opens 25 idle connections: 10 are kept, 15 closed at once.
    let (kept, refused) = flood("127.0.0.1", web, 25);
    assert_eq!((kept.len(), refused.len()), (10, 15));
    assert!(refused.iter().all(Vec::is_empty), "closed unanswered");
    // Another client is served, and so is LMTP.
    assert_eq!(get_from("127.0.0.2", web), Some(200));
    let (greeting, took) = lmtp_greeting_from("127.0.0.1", lmtp);
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // Two more clients fill the web listener's total of 30: a fourth is
    // refused, yet LMTP, with its own cap, still greets.
    let (kept2, _) = flood("127.0.0.3", web, 10);
    let (kept3, _) = flood("127.0.0.4", web, 10);
    assert_eq!(kept2.len() + kept3.len(), 20);
    assert_eq!(get_from("127.0.0.5", web), None, "the web listener is full");
    let (greeting, _) = lmtp_greeting_from("127.0.0.5", lmtp);
    assert!(greeting.starts_with("220 "), "{greeting}");

    // The reverse: a flood of LMTP gets 421 beyond its caps and the web
    // pages answer (once the idle web connections are gone).
    let (lkept, lrefused) = flood("127.0.0.6", lmtp, 6);
    assert_eq!((lkept.len(), lrefused.len()), (4, 2), "LMTP per-client cap");
    for said in &lrefused {
        assert_eq!(String::from_utf8_lossy(said), "421 4.7.0 too many connections\r\n");
    }
    let (lkept2, lrefused2) = flood("127.0.0.7", lmtp, 6);
    assert_eq!((lkept2.len(), lrefused2.len()), (4, 2), "LMTP total cap of 8");

    // The header timeout (3 s) closes every idle web connection; then the
    // flooding client is served again.
    for mut s in kept.into_iter().chain(kept2).chain(kept3) {
        let (closed, said) = closed_within(&mut s, Duration::from_secs(10));
        assert!(closed, "idle connection closed by the header timeout");
        assert!(said.is_empty() || String::from_utf8_lossy(&said).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&said));
    }
    assert_eq!(get_from("127.0.0.1", web), Some(200));
    drop((lkept, lkept2));
    let log = server.logs();
    assert!(log.contains("http connections refused"), "{log}");
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn behind_a_tls_proxy_the_proxy_address_is_held_only_to_the_total() {
    let inst = Instance::new(&[
        ("web.behind_tls_proxy", "true"),
        ("web.max_connections", "25"),
        ("web.max_connections_per_client", "5"),
        ("web.header_timeout_secs", "2"),
    ]);
    let server = inst.serve();
    let web = server.http;
    // A keep-alive connection left idle after its answer is closed by the
    // header timeout too.
    let mut ka = connect_from("127.0.0.1", web);
    ka.write_all(format!("GET / HTTP/1.1\r\nHost: {web}\r\n\r\n").as_bytes()).expect("request");
    let idle_from = Instant::now();
    let (closed, said) = closed_within(&mut ka, Duration::from_secs(10));
    assert!(closed && String::from_utf8_lossy(&said).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&said));
    assert!(idle_from.elapsed() >= Duration::from_millis(1500), "kept alive until the timeout: {:?}", idle_from.elapsed());
    // The proxy (loopback) carries many clients: 20 connections stay open.
    let (kept, refused) = flood("127.0.0.1", web, 20);
    assert_eq!((kept.len(), refused.len()), (20, 0));
    assert_eq!(get_from("127.0.0.1", web), Some(200));
    // The total still holds.
    let (more, refused) = flood("127.0.0.1", web, 10);
    assert_eq!((more.len(), refused.len()), (5, 5));
    drop((kept, more));
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

fn admin_add(inst: &Instance, id: &str) {
    let mut cmd = inst.cmd();
    cmd.args(["admin", "add", id, "--email", &format!("{id}@city.test")]);
    let out = run_with_stdin(cmd, format!("{ADMIN_PW}\n").as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Fires `logins` (ID, password) at once and returns each answer's status.
fn concurrent_logins(web: SocketAddr, logins: Vec<(String, String)>) -> Vec<u16> {
    let start = Arc::new(Barrier::new(logins.len()));
    let threads: Vec<_> = logins
        .into_iter()
        .map(|(id, pw)| {
            let start = start.clone();
            std::thread::spawn(move || {
                let body = format!("login={id}&password={}", pw.replace(' ', "+"));
                start.wait();
                http(web, "POST", "/admin/login", Some(&body)).status
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("login thread")).collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[test]
fn thirty_concurrent_wrong_logins_for_one_id_get_at_most_five_password_checks() {
    // Enough password-check slots that only the login limit can stop them.
    let inst = Instance::new(&[("web.max_password_checks", "32")]);
    admin_add(&inst, "chuo");
    admin_add(&inst, "kita");
    let server = inst.serve();
    let statuses = concurrent_logins(server.http, vec![("chuo".to_string(), "wrong password".to_string()); 30]);
    // 401 = the password was checked and was wrong; 429 = locked out first.
    assert_eq!(count(&statuses, 401), 5, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 25, "{statuses:?}");
    // The locked ID stays locked even with the right password...
    assert_eq!(http(server.http, "POST", "/admin/login", Some("login=chuo&password=a+long+enough+password")).status, 429);
    // ...and another ID logs in from the same client.
    assert_eq!(http(server.http, "POST", "/admin/login", Some("login=kita&password=a+long+enough+password")).status, 303);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

/// The peak resident memory of a process, from /proc, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmHWM value")
}

#[test]
fn concurrent_logins_beyond_the_password_check_slots_are_answered_busy_at_once() {
    // Default: two argon2id runs (19 MiB each) at a time.
    let inst = Instance::new(&[]);
    admin_add(&inst, "chuo");
    let server = inst.serve();
    // Warm up, so the peak below is the logins' own.
    assert_eq!(get_from("127.0.0.1", server.http), Some(200));
    let before = vm_hwm_kib(server.child.id());
    // Twenty IDs, the client's whole allowance: without a bound, twenty
    // checks at once would take some 380 MiB.
    let logins = (0..20).map(|i| (format!("id{i}"), "wrong password".to_string())).collect();
    let statuses = concurrent_logins(server.http, logins);
    let after = vm_hwm_kib(server.child.id());
    let busy = count(&statuses, 503);
    assert!(busy > 0, "{statuses:?}");
    assert_eq!(busy + count(&statuses, 401), 20, "{statuses:?}");
    assert!(after - before < 100 * 1024, "peak grew by {} KiB", after - before);
    // A busy answer counted no attempt: the right password still works.
    let ok = wait_for("a free password check", T, || {
        let s = http(server.http, "POST", "/admin/login", Some("login=chuo&password=a+long+enough+password")).status;
        (s != 503).then_some(s)
    });
    assert_eq!(ok, 303);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}
