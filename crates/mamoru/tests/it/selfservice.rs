//! Self-service end to end with the real binary: an empty mail from a
//! registered address gets a manage link; the manage page changes districts
//! or deletes; footer links (manage, one-click unsubscribe per RFC 8058);
//! scanners fetching every link change nothing; bounces to the VERP address
//! suspend; and afterwards no address is in clear in the database, its WAL,
//! a `mamoru backup` copy or the logs at trace level.

use std::process::Output;
use std::time::Duration;

use mamoru_core::links::subscriber_links;
use mamoru_core::{Config, OutboxId, SubscriberId, verp};
use rusqlite::Connection;

use crate::support::*;

const T: Duration = Duration::from_secs(30);

fn empty_mail(from: &str) -> Vec<u8> {
    format!("From: {from}\nTo: ans@mamoru.test\nSubject: \nMIME-Version: 1.0\nContent-Type: text/plain\n\n").into_bytes()
}

/// Instances here allow repeated empty mails from one address.
fn instance() -> Instance {
    Instance::new(&[("limits.register_cooldown_secs", "0")])
}

/// An empty mail through `mamoru ingest` (the pipe command); returns its output.
fn mail_ans(inst: &Instance, from: &str) -> Output {
    let out = inst.ingest(from, "ans@mamoru.test", &empty_mail(from));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The mails to `to` whose subject contains `subject`, oldest first.
fn mails(inst: &Instance, to: &str, subject: &str) -> Vec<Mail> {
    inst.mail_files()
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .map(|raw| parse_mail(&raw))
        .filter(|m| m.subject.contains(subject) && m.to.contains(to))
        .collect()
}

/// The `nth` (from 0) such mail, once the relay wrote it.
fn wait_mail(inst: &Instance, to: &str, subject: &str, nth: usize) -> Mail {
    wait_for(&format!("{subject} #{nth} to {to}"), T, || mails(inst, to, subject).into_iter().nth(nth))
}

/// The `/x/TOKEN` path of the first link of that kind in a body.
fn path_of(body: &str, prefix: &str) -> String {
    let start = body.find(prefix).unwrap_or_else(|| panic!("a {prefix} link in:\n{body}"));
    body[start..].split_whitespace().next().expect("link").to_string()
}

/// Registers `addr` for `districts` through mail and the web; returns its id.
fn register(inst: &Instance, server: &Server, addr: &str, districts: &str) -> SubscriberId {
    let (received, completed) = (mails(inst, addr, "登録受付").len(), mails(inst, addr, "登録完了").len());
    mail_ans(inst, addr);
    let m = wait_mail(inst, addr, "登録受付", received);
    let done = http(server.http, "POST", &link_path(&m.body), Some(districts));
    assert_eq!(done.status, 200, "{}", done.body);
    wait_mail(inst, addr, "登録完了", completed);
    inst.subscriber(addr).expect("registered").id
}

/// The footer links an alert to `subscriber` carries, as paths.
fn footer_paths(inst: &Instance, subscriber: SubscriberId) -> (String, String) {
    let keys = mamoru_store::keys::load_or_create(&inst.data_dir()).expect("keys");
    let nonce = inst.store().link_nonce(subscriber).expect("query").expect("a link nonce");
    let links = subscriber_links(&Config::default(), &keys.token_key(), subscriber, nonce, mamoru_core::now());
    let path = |url: &str| url.strip_prefix("http://127.0.0.1:8080").expect("default public_url").to_string();
    (path(&links.manage), path(&links.unsubscribe))
}

/// Everything a GET could wrongly change, as one comparable value.
fn state(inst: &Instance) -> Vec<String> {
    let db = Connection::open(inst.data_dir().join("mamoru.db")).expect("open db");
    let mut out = vec![];
    for sql in [
        "SELECT id || ':' || status || ':' || updated_at || ':' || hex(link_nonce) FROM subscribers ORDER BY id",
        "SELECT subscriber_id || ':' || district_id FROM subscriber_districts ORDER BY 1",
        "SELECT hex(nonce) || ':' || used_at FROM tokens ORDER BY 1",
        "SELECT id || ':' || kind FROM outbox ORDER BY id",
        "SELECT COUNT(*) || '' FROM audit_log",
    ] {
        let mut st = db.prepare(sql).expect("prepare");
        out.extend(st.query_map([], |r| r.get::<_, String>(0)).expect("query").map(|r| r.expect("row")));
        out.push("--".into());
    }
    out
}

#[test]
fn manage_by_mail_change_districts_and_delete() {
    let inst = instance();
    let server = inst.serve();
    let addr = "taro..yamada.@docomo.ne.jp";
    let id = register(&inst, &server, addr, "district=1");

    // A second empty mail: a manage link, not a second registration.
    mail_ans(&inst, addr);
    let m = wait_mail(&inst, addr, "登録内容の変更", 0);
    let manage = path_of(&m.body, "/m/");
    assert_eq!(state(&inst).iter().take_while(|l| *l != "--").count(), 1, "one subscriber row");
    let page = http(server.http, "GET", &manage, None);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("value=\"1\" checked>") && checked_districts(&page.body) == 1, "{}", page.body);
    assert_eq!(page.header("Referrer-Policy"), Some("no-referrer"));
    assert!(page.header("Content-Security-Policy").is_some_and(|v| v.contains("default-src 'none'")));
    assert_eq!(page.header("Cache-Control"), Some("no-store"));

    // No district: the form again, nothing changed.
    assert_eq!(http(server.http, "POST", &manage, Some("action=update")).status, 400);
    let changed = http(server.http, "POST", &manage, Some("action=update&district=2&district=3"));
    assert_eq!(changed.status, 200, "{}", changed.body);
    let confirm = wait_mail(&inst, addr, "変更完了", 0);
    assert!(confirm.body.contains("天応・吉浦地区") && confirm.body.contains("昭和地区"), "{}", confirm.body);
    assert_eq!(inst.subscriber(addr).unwrap().districts, vec![2, 3]);
    assert_eq!(inst.store().find_subscriber(&mamoru_core::EmailAddress::parse(addr).unwrap()).unwrap().unwrap().id, id);

    // The one-time link is used up.
    assert_eq!(http(server.http, "POST", &manage, Some("action=update&district=4")).status, 410);
    assert_eq!(http(server.http, "GET", &manage, None).status, 410);

    // A fresh manage link deletes: the 登録削除 mail goes out, the address is gone.
    mail_ans(&inst, addr);
    let manage2 = path_of(&wait_mail(&inst, addr, "登録内容の変更", 1).body, "/m/");
    let (footer_manage, footer_unsub) = footer_paths(&inst, id);
    let deleted = http(server.http, "POST", &manage2, Some("action=delete"));
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert!(inst.subscriber(addr).is_none());
    wait_mail(&inst, addr, "登録削除", 0);

    // Every old link fails cleanly: a page, never a 500.
    for path in [&manage, &manage2, &footer_manage, &footer_unsub] {
        for method in ["GET", "HEAD", "POST"] {
            let r = http(server.http, method, path, (method == "POST").then_some("action=delete"));
            assert_eq!(r.status, 410, "{method} {path}: {}", r.body);
        }
    }
    // Registering again works, and the old footer links stay dead.
    let id2 = register(&inst, &server, addr, "district=5");
    let (m2, _) = footer_paths(&inst, id2);
    assert_ne!(m2, footer_manage);
    assert_eq!(http(server.http, "GET", &footer_manage, None).status, 410);
    assert_eq!(http(server.http, "GET", &m2, None).status, 200);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("yamada"), "address in clear in the log");
}

#[test]
fn footer_links_one_click_and_a_thousand_scanner_fetches() {
    let inst = instance();
    let server = inst.serve();
    let a = register(&inst, &server, "hanako@ezweb.ne.jp", "district=1&district=2");
    let b = register(&inst, &server, "ichiro@i.softbank.jp", "district=3");
    let (a_manage, a_unsub) = footer_paths(&inst, a);
    let (b_manage, b_unsub) = footer_paths(&inst, b);
    // A fresh one-time manage link and an unused registration link too.
    mail_ans(&inst, "hanako@ezweb.ne.jp");
    let a_once = path_of(&wait_mail(&inst, "hanako@ezweb.ne.jp", "登録内容の変更", 0).body, "/m/");
    mail_ans(&inst, "new.parent@au.com");
    let reg = link_path(&wait_mail(&inst, "new.parent@au.com", "登録受付", 0).body);
    wait_for("the relay to drain", T, || (inst.store().outbox_counts().unwrap().queued == 0).then_some(()));

    // Mail scanners fetch every link, with GET and HEAD: nothing changes.
    let before = state(&inst);
    let paths = [&a_manage, &a_unsub, &b_manage, &b_unsub, &a_once, &reg];
    for i in 0..1000 {
        let path = paths[i % paths.len()];
        let method = if i % 2 == 0 { "GET" } else { "HEAD" };
        let r = http(server.http, method, path, None);
        assert_eq!(r.status, 200, "{method} {path}");
    }
    assert_eq!(state(&inst), before, "GET/HEAD changed the database");

    // The unsubscribe GET is a confirm page with a POST button.
    let confirm = http(server.http, "GET", &a_unsub, None);
    assert!(confirm.body.contains("method=\"post\"") && confirm.body.contains("One-Click"), "{}", confirm.body);

    // One subscriber's links cannot touch another: a manage token at /u/
    // (wrong purpose) and a token with another subscriber's id (bad MAC).
    let a_token = a_manage.trim_start_matches("/m/");
    assert_eq!(http(server.http, "POST", &format!("/u/{a_token}"), Some("List-Unsubscribe=One-Click")).status, 400);
    let mut forged = a_token.as_bytes().to_vec();
    forged[5] = if forged[5] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(http(server.http, "POST", &format!("/u/{forged}"), Some("List-Unsubscribe=One-Click")).status, 400);
    assert_eq!(http(server.http, "POST", &format!("/m/{forged}"), Some("action=delete")).status, 400);
    assert_eq!(state(&inst), before, "refused requests changed the database");

    // B's footer manage link changes B only, and can be used again.
    for d in ["district=4", "district=5"] {
        assert_eq!(http(server.http, "POST", &b_manage, Some(&format!("action=update&{d}"))).status, 200);
    }
    assert_eq!(inst.subscriber("ichiro@i.softbank.jp").unwrap().districts, vec![5]);
    assert_eq!(inst.subscriber("hanako@ezweb.ne.jp").unwrap().districts, vec![1, 2]);

    // RFC 8058 one-click: a bare POST, no cookie, no page visited before.
    // Queue a mail for A first: it must never leave.
    let db = Connection::open(inst.data_dir().join("mamoru.db")).unwrap();
    db.execute("UPDATE outbox SET state = 'queued', next_attempt_at = 4000000000 WHERE id = (SELECT MAX(id) FROM outbox WHERE subscriber_id = ?1)", [a])
        .unwrap();
    let r = http_raw(
        server.http,
        &format!(
            "POST {a_unsub} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 26\r\n\r\nList-Unsubscribe=One-Click"
        ),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(!r.to_ascii_lowercase().contains("set-cookie"));
    assert!(inst.subscriber("hanako@ezweb.ne.jp").is_none(), "stopped at once");
    let left: i64 = db.query_row("SELECT COUNT(*) FROM outbox WHERE subscriber_id = ?1 AND state IN ('queued', 'sending')", [a], |r| r.get(0)).unwrap();
    assert_eq!(left, 0, "pending mail of the deleted subscriber purged");
    for path in [&a_manage, &a_unsub, &a_once] {
        assert_eq!(http(server.http, "GET", path, None).status, 410, "{path}");
    }
    assert_eq!(http(server.http, "POST", &a_unsub, Some("List-Unsubscribe=One-Click")).status, 410);
    assert!(inst.subscriber("ichiro@i.softbank.jp").is_some(), "B untouched");
    drop(server);
}

/// A request written by hand (exact bytes, no cookie).
fn http_raw(addr: std::net::SocketAddr, req: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

const DSN_UNKNOWN: &str = include_str!("../../../../fixtures/bounces/postfix-unknown-user.eml");
const DSN_SPAM: &str = include_str!("../../../../fixtures/bounces/postfix-blocked-rbl.eml");
const DSN_FULL: &str = include_str!("../../../../fixtures/bounces/postfix-mailbox-full.eml");

fn newest_outbox(inst: &Instance, subscriber: SubscriberId) -> OutboxId {
    let db = Connection::open(inst.data_dir().join("mamoru.db")).unwrap();
    db.query_row("SELECT MAX(id) FROM outbox WHERE subscriber_id = ?1", [subscriber], |r| r.get(0)).unwrap()
}

fn verp_for(inst: &Instance, outbox: OutboxId) -> String {
    let keys = mamoru_store::keys::load_or_create(&inst.data_dir()).unwrap();
    verp::encode(&keys.token_key(), outbox, DOMAIN)
}

#[test]
fn bounces_through_pipe_and_lmtp_suspend_score_or_are_dropped() {
    let inst = Instance::new(&[("limits.register_cooldown_secs", "0"), ("bounces.soft_threshold", "2")]);
    let server = inst.serve();
    let dead = register(&inst, &server, "dead@docomo.ne.jp", "district=1");
    let full = register(&inst, &server, "full@ezweb.ne.jp", "district=1");

    // A forged bounce (bad tag) changes nothing, and is acknowledged.
    let forged = format!("bounce+{}-0000000000@{DOMAIN}", newest_outbox(&inst, dead));
    let out = inst.ingest("", &forged, DSN_UNKNOWN.as_bytes());
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad VERP tag"));
    assert_eq!(inst.subscriber("dead@docomo.ne.jp").unwrap().status.as_str(), "active");

    // Blocked as spam: never counted against the subscriber.
    let out = inst.ingest("", &verp_for(&inst, newest_outbox(&inst, dead)), DSN_SPAM.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("carrier=docomo.ne.jp"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(inst.subscriber("dead@docomo.ne.jp").unwrap().status.as_str(), "active");

    // Unknown user, over LMTP (the serve process): suspended at once.
    mail_ans(&inst, "dead@docomo.ne.jp");
    wait_mail(&inst, "dead@docomo.ne.jp", "登録内容の変更", 0);
    let rcpt = verp_for(&inst, newest_outbox(&inst, dead));
    let replies = lmtp_send(&server, "", &rcpt, DSN_UNKNOWN.as_bytes());
    assert!(replies.contains("250"), "{replies}");
    wait_for("suspension", T, || (inst.subscriber("dead@docomo.ne.jp").unwrap().status.as_str() == "suspended").then_some(()));

    // Soft bounces: suspended at the threshold (2), one bounce per outbox row.
    let first = newest_outbox(&inst, full);
    assert_eq!(inst.ingest("", &verp_for(&inst, first), DSN_FULL.as_bytes()).status.code(), Some(0));
    assert_eq!(inst.ingest("", &verp_for(&inst, first), DSN_FULL.as_bytes()).status.code(), Some(0), "duplicate");
    assert_eq!(inst.subscriber("full@ezweb.ne.jp").unwrap().status.as_str(), "active");
    mail_ans(&inst, "full@ezweb.ne.jp");
    let once = path_of(&wait_mail(&inst, "full@ezweb.ne.jp", "登録内容の変更", 0).body, "/m/");
    assert_eq!(inst.ingest("", &verp_for(&inst, newest_outbox(&inst, full)), DSN_FULL.as_bytes()).status.code(), Some(0));
    assert_eq!(inst.subscriber("full@ezweb.ne.jp").unwrap().status.as_str(), "suspended");

    // The manage page says so, and saving with the mailed link reactivates.
    let page = http(server.http, "GET", &once, None);
    assert!(page.body.contains("「変更する」を押すと配信を再開します"), "{}", page.body);
    let (footer, _) = footer_paths(&inst, full);
    let page = http(server.http, "GET", &footer, None);
    assert!(page.body.contains("配信を止めています") && page.body.contains("空メール"), "{}", page.body);
    assert_eq!(http(server.http, "POST", &footer, Some("action=update&district=3")).status, 200);
    assert_eq!(inst.subscriber("full@ezweb.ne.jp").unwrap().status.as_str(), "suspended", "a footer link does not resume");
    assert_eq!(http(server.http, "POST", &once, Some("action=update&district=2")).status, 200);
    assert_eq!(inst.subscriber("full@ezweb.ne.jp").unwrap().status.as_str(), "active");

    // An auto-reply to the return path is not a bounce.
    let auto = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/bounces/autoreply-japanese-vacation.eml"),
    )
    .unwrap();
    let out = inst.ingest("kyoko@docomo.ne.jp", &verp_for(&inst, newest_outbox(&inst, full)), &auto);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(inst.subscriber("full@ezweb.ne.jp").unwrap().status.as_str(), "active");
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

/// One message over LMTP with Python's smtplib; returns the replies.
fn lmtp_send(server: &Server, sender: &str, rcpt: &str, msg: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("msg.eml");
    std::fs::write(&file, msg).unwrap();
    let script = r#"
import smtplib, sys
c = smtplib.LMTP(sys.argv[1], int(sys.argv[2]))
c.ehlo_or_helo_if_needed = lambda: None
print(c.docmd("LHLO", "client.test"))
print(c.docmd("MAIL", "FROM:<%s>" % sys.argv[3]))
print(c.docmd("RCPT", "TO:<%s>" % sys.argv[4]))
print(c.docmd("DATA"))
data = open(sys.argv[5], "rb").read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
data = b"\r\n".join((b"." + l if l.startswith(b".") else l) for l in data.split(b"\r\n"))
c.send(data + b"\r\n.\r\n")
print(c.getreply())
c.docmd("QUIT")
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(server.lmtp.ip().to_string())
        .arg(server.lmtp.port().to_string())
        .arg(sender)
        .arg(rcpt)
        .arg(&file)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn no_address_in_clear_in_the_database_wal_backup_or_trace_logs() {
    let inst = instance();
    let mut cmd = inst.cmd();
    cmd.arg("serve").env("RUST_LOG", "trace");
    let server = Server::start(&mut cmd);
    let addrs = ["privacy.one@docomo.ne.jp", "privacy..two.@ezweb.ne.jp", "privacy3@i.softbank.jp", "deleted.parent@au.com"];
    let all_addrs = [addrs[0], addrs[1], addrs[2], addrs[3], "privacy.lmtp@docomo.ne.jp"];
    let mut logs = String::new();
    let mut tokens: Vec<String> = vec![];
    for a in &addrs {
        let out = inst.ingest_with(a, "ans@mamoru.test", &empty_mail(a), &[("RUST_LOG", "trace")]);
        assert_eq!(out.status.code(), Some(0));
        logs.push_str(&String::from_utf8_lossy(&out.stderr));
        let m = wait_mail(&inst, a, "登録受付", 0);
        tokens.push(link_path(&m.body)[3..].to_string());
        assert_eq!(http(server.http, "POST", &link_path(&m.body), Some("district=1&district=7")).status, 200);
        wait_mail(&inst, a, "登録完了", 0);
    }
    // LMTP (the serve process) logs too.
    let via_lmtp = "privacy.lmtp@docomo.ne.jp";
    assert!(lmtp_send(&server, via_lmtp, "ans@mamoru.test", &empty_mail(via_lmtp)).contains("250"));
    wait_mail(&inst, via_lmtp, "登録受付", 0);
    // The PC form and a manage round trip log too.
    assert_eq!(http(server.http, "POST", "/register", Some("address=privacy.one%40docomo.ne.jp")).status, 200);
    let manage = path_of(&wait_mail(&inst, addrs[0], "登録内容の変更", 0).body, "/m/");
    assert_eq!(http(server.http, "POST", &manage, Some("action=update&district=3")).status, 200);
    let gone = inst.subscriber(addrs[3]).unwrap().id;
    let (_, unsub) = footer_paths(&inst, gone);
    tokens.push(manage[3..].to_string());
    tokens.push(unsub[3..].to_string());
    assert_eq!(http(server.http, "POST", &unsub, Some("List-Unsubscribe=One-Click")).status, 200);
    // A bounce goes through the log path too.
    let bounce = inst.ingest_with("", &verp_for(&inst, newest_outbox(&inst, inst.subscriber(addrs[2]).unwrap().id)), DSN_UNKNOWN.as_bytes(), &[("RUST_LOG", "trace")]);
    logs.push_str(&String::from_utf8_lossy(&bounce.stderr));
    wait_for("the relay to drain", T, || (inst.store().outbox_counts().unwrap().queued == 0).then_some(()));

    // A backup while the server runs, through the CLI.
    let backup = inst.dir.path().join("backup.db");
    let out = inst.cmd().arg("backup").arg(&backup).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!inst.cmd().arg("backup").arg(&backup).output().unwrap().status.success(), "never overwrites");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o600);
        let copy = Connection::open(&backup).unwrap();
        let n: i64 = copy.query_row("SELECT COUNT(*) FROM subscribers", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 4, "a consistent copy: three confirmed (one unsubscribed) and one pending");
    }

    // Scan the database file and its WAL (before the server checkpoints it
    // away on exit) and the backup for any address, or its local part.
    let db = inst.data_dir().join("mamoru.db");
    let wal = inst.data_dir().join("mamoru.db-wal");
    let mut scanned = 0;
    for file in [&db, &wal, &backup] {
        let Ok(bytes) = std::fs::read(file) else { continue };
        scanned += 1;
        for a in &all_addrs {
            let local = a.split('@').next().unwrap();
            for needle in [a.as_bytes(), local.as_bytes()] {
                assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{} in clear in {}", a, file.display());
            }
        }
    }
    assert_eq!(scanned, 3, "the database, its WAL and the backup were scanned");
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    logs.push_str(&log);
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"), "trace logging is on, or the scan proves nothing");
    for a in &all_addrs {
        assert!(!logs.contains(a), "{a} in clear in the logs");
    }
    assert_eq!(tokens.len(), 6);
    for t in &tokens {
        assert_eq!(t.len(), 51, "a token: {t}");
        assert!(!logs.contains(t.as_str()), "a token in the logs");
    }
    assert!(logs.contains("p***@docomo.ne.jp"), "masked addresses are logged");
    // After the clean stop the WAL is checkpointed into the file: scan again.
    let bytes = std::fs::read(&db).unwrap();
    for a in &all_addrs {
        let local = a.split('@').next().unwrap().as_bytes();
        assert!(!bytes.windows(local.len()).any(|w| w == local), "{a} in clear in the database");
    }
}

#[test]
fn a_district_address_preselects_and_its_handout_has_a_qr_code() {
    let inst = instance();
    let server = inst.serve();
    let from = "child.showa@docomo.ne.jp";
    let out = inst.ingest(from, "ans+Showa@mamoru.test", &empty_mail(from));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let m = wait_mail(&inst, from, "登録受付", 0);
    let page = http(server.http, "GET", &link_path(&m.body), None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("value=\"3\" checked>") && checked_districts(&page.body) == 1, "{}", page.body);
    // By id too, and an unknown tag is a plain registration.
    let out = inst.ingest("by.id@au.com", "ans+7@mamoru.test", &empty_mail("by.id@au.com"));
    assert_eq!(out.status.code(), Some(0));
    let page = http(server.http, "GET", &link_path(&wait_mail(&inst, "by.id@au.com", "登録受付", 0).body), None);
    assert!(page.body.contains("value=\"7\" checked>"), "{}", page.body);
    let out = inst.ingest("plain@au.com", "ans+nowhere@mamoru.test", &empty_mail("plain@au.com"));
    assert_eq!(out.status.code(), Some(0));
    let page = http(server.http, "GET", &link_path(&wait_mail(&inst, "plain@au.com", "登録受付", 0).body), None);
    assert_eq!(checked_districts(&page.body), 0, "{}", page.body);

    // The printable handout: address, mailto and an inline SVG QR code,
    // under the same strict CSP as every page.
    let list = http(server.http, "GET", "/d/", None);
    assert_eq!(list.status, 200);
    assert_eq!(list.body.matches("<a href=\"/d/").count(), 10);
    let handout = http(server.http, "GET", "/d/3", None);
    assert_eq!(handout.status, 200);
    assert!(handout.body.contains("href=\"mailto:ans+showa@mamoru.test\""), "{}", handout.body);
    assert!(handout.body.contains("<svg role=\"img\""), "{}", handout.body);
    let csp = handout.header("Content-Security-Policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'") && !csp.contains("unsafe"), "{csp}");
    assert_eq!(handout.header("Referrer-Policy"), Some("no-referrer"));
    assert_eq!(http(server.http, "GET", "/d/99", None).status, 404);
    assert_eq!(http(server.http, "POST", "/d/3", Some("x=1")).status, 405);
    drop(server);
}
