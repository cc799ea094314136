//! `mamoru serve`: LMTP in, web pages, relay out — the whole registration
//! flow with an independent LMTP client (swaks, Python's smtplib) and HTTP
//! over a real socket.

use std::time::Duration;

use rusqlite::Connection;

use crate::support::*;

const T: Duration = Duration::from_secs(30);

/// Python's smtplib as a second, independent LMTP client, driven command by
/// command so every per-recipient reply after DATA is visible.
fn python_lmtp(server: &Server, sender: &str, rcpts: &[&str], copies: usize) -> Vec<String> {
    let script = r#"
import smtplib, sys
host, port, sender, copies = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rcpts = sys.argv[5:]
c = smtplib.LMTP(host, port)
c.ehlo_or_helo_if_needed = lambda: None
print(c.docmd("LHLO", "client.test")[0])
msg = b"From: " + sender.encode() + b"\r\nTo: ans@mamoru.test\r\nSubject: \r\n\r\n"
for _ in range(copies):
    print(c.docmd("MAIL", "FROM:<%s>" % sender)[0])
    accepted = 0
    for r in rcpts:
        code = c.docmd("RCPT", "TO:<%s>" % r)[0]
        print("RCPT", code)
        accepted += code == 250
    if accepted == 0:
        c.docmd("RSET")
        continue
    print("DATA", c.docmd("DATA")[0])
    c.send(msg + b".\r\n")
    for _ in range(accepted):
        code, text = c.getreply()
        print("REPLY", code, text.decode())
c.docmd("QUIT")
"#;
    let copies = copies.to_string();
    let mut args: Vec<&std::ffi::OsStr> = vec![sender.as_ref(), copies.as_ref()];
    args.extend(rcpts.iter().map(|r| std::ffi::OsStr::new(*r)));
    run_lmtp_script(script, server, &args)
}

#[test]
fn register_over_lmtp_and_the_web_end_to_end() {
    let inst = Instance::new(&[]);
    let server = inst.serve();

    let swaks = swaks_lmtp(&server, "taro..yamada.@docomo.ne.jp", "ans@mamoru.test");
    assert!(swaks.contains("250 2.0.0"), "{swaks}");

    let first = wait_for("登録受付 .eml", T, || inst.mail_files().first().cloned());
    let received = parse_mail(&std::fs::read(&first).unwrap());
    assert!(received.subject.contains("登録受付"), "{}", received.subject);
    assert!(received.to.contains("taro..yamada.@docomo.ne.jp"));
    let link = link_path(&received.body);

    // The page: ten districts as checkboxes, no JavaScript, strict headers.
    let page = http(server.http, "GET", &link, None);
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.body.matches("type=\"checkbox\" name=\"district\"").count(), 10, "{}", page.body);
    assert!(page.body.contains("中央地区") && !page.body.contains("<script"));
    assert_eq!(page.header("Referrer-Policy"), Some("no-referrer"));
    assert!(page.header("Content-Security-Policy").is_some_and(|v| v.contains("default-src 'none'")));
    // Looking at the page again changes nothing.
    assert_eq!(http(server.http, "GET", &link, None).status, 200);

    let done = http(server.http, "POST", &link, Some("district=1&district=3"));
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("昭和地区"));

    let second = wait_for("登録完了 .eml", T, || inst.mail_files().get(1).cloned());
    let completed = parse_mail(&std::fs::read(&second).unwrap());
    assert!(completed.subject.contains("登録完了"), "{}", completed.subject);
    assert!(completed.body.contains("中央地区") && completed.body.contains("昭和地区"));

    // The link was single use.
    assert_eq!(http(server.http, "POST", &link, Some("district=2")).status, 410);
    assert_eq!(http(server.http, "GET", &link, None).status, 410);

    let (status, log) = server.stop();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(!log.contains("taro..yamada"), "address in clear in the log:\n{log}");

    let s = inst.subscriber("taro..yamada.@docomo.ne.jp").unwrap();
    assert_eq!((s.status.as_str(), s.districts), ("active", vec![1, 3]));
}

#[test]
fn lmtp_answers_per_recipient_and_rejects_unknown_local_parts() {
    let inst = Instance::new(&[]);
    let server = inst.serve();
    let swaks = swaks_lmtp(&server, "parent@au.com", "ans@mamoru.test,info@mamoru.test,ans+chuo@mamoru.test");
    assert!(swaks.contains("550 5.1.1"), "unknown local part refused at RCPT:\n{swaks}");
    // Two accepted recipients, two replies after the data (the second is a
    // deliberate drop inside the cooldown, still 250).
    assert_eq!(swaks.matches("<-  250 2.0.0").count(), 2, "{swaks}");
    wait_for("one 登録受付", T, || (inst.mail_files().len() == 1).then_some(()));
    drop(server);
}

#[test]
fn a_locked_store_answers_451_and_the_retry_is_accepted() {
    let inst = Instance::new(&[]);
    let server = inst.serve();
    let db = Connection::open(inst.data_dir().join("mamoru.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let replies = python_lmtp(&server, "parent@docomo.ne.jp", &["ans@mamoru.test"], 1);
    assert!(replies.iter().any(|l| l.starts_with("REPLY 451 4.3.0")), "{replies:?}");
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);
    let replies = python_lmtp(&server, "parent@docomo.ne.jp", &["ans@mamoru.test"], 1);
    assert!(replies.iter().any(|l| l.starts_with("REPLY 250")), "{replies:?}");
    wait_for("the 登録受付 after recovery", T, || (inst.mail_files().len() == 1).then_some(()));
}

#[test]
fn a_thousand_forged_mails_reach_the_victim_at_most_the_cap() {
    let inst = Instance::new(&[]);
    let server = inst.serve();
    let replies = python_lmtp(&server, "victim@docomo.ne.jp", &["ans@mamoru.test"], 1000);
    assert_eq!(replies.iter().filter(|l| l.starts_with("REPLY 250")).count(), 1000, "all acknowledged");
    wait_for("the relay to finish", T, || (inst.store().outbox_counts().unwrap().queued == 0).then_some(()));
    let to_victim = inst.mail_files().len();
    // The cooldown allows one within five minutes; the daily cap is 5.
    assert_eq!(to_victim, 1, "{to_victim} mails to the victim");
}

#[test]
fn the_top_page_and_the_pc_form() {
    let inst = Instance::new(&[]);
    let server = inst.serve();
    let top = http(server.http, "GET", "/", None);
    assert_eq!(top.status, 200);
    assert!(top.body.contains("ans@mamoru.test"), "{}", top.body);
    assert!(top.body.contains("action=\"/register\""), "{}", top.body);

    let new = http(server.http, "POST", "/register", Some("address=pc.user%40i.softbank.jp"));
    let again = http(server.http, "POST", "/register", Some("address=pc.user%40i.softbank.jp"));
    assert_eq!(new.status, 200);
    assert_eq!((again.status, &again.body), (new.status, &new.body), "same answer for known and unknown");
    let mail = wait_for("登録受付 for the PC form", T, || inst.mail_files().first().cloned());
    assert!(parse_mail(&std::fs::read(mail).unwrap()).to.contains("pc.user@i.softbank.jp"));
    assert_eq!(inst.mail_files().len(), 1);
}

/// `[store] url` on a real PostgreSQL: the same registration, end to end,
/// with nothing written to an SQLite file.
#[test]
fn register_end_to_end_with_the_store_on_postgres() {
    let cluster = mamoru_store::pgtest::PgCluster::start();
    let url = format!("\"{}\"", cluster.url());
    let inst = Instance::new(&[("store.url", url.as_str())]);
    let server = inst.serve();

    let swaks = swaks_lmtp(&server, "hanako@docomo.ne.jp", "ans@mamoru.test");
    assert!(swaks.contains("250 2.0.0"), "{swaks}");
    let first = wait_for("登録受付 .eml", T, || inst.mail_files().first().cloned());
    let received = parse_mail(&std::fs::read(&first).unwrap());
    assert!(received.subject.contains("登録受付"), "{}", received.subject);
    let link = link_path(&received.body);
    let done = http(server.http, "POST", &link, Some("district=2"));
    assert_eq!(done.status, 200, "{}", done.body);
    let second = wait_for("登録完了 .eml", T, || inst.mail_files().get(1).cloned());
    assert!(parse_mail(&std::fs::read(&second).unwrap()).subject.contains("登録完了"));

    let (status, log) = server.stop();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(!log.contains("hanako"), "address in clear in the log:\n{log}");
    assert!(!inst.data_dir().join(mamoru_store::DB_FILE).exists(), "no SQLite file beside PostgreSQL");

    let keys = mamoru_store::keys::load_or_create(&inst.data_dir()).unwrap();
    let store = mamoru_store::Store::open_postgres(&cluster.url(), &keys, Duration::from_secs(10)).unwrap();
    let s = store.find_subscriber(&mamoru_core::EmailAddress::parse("hanako@docomo.ne.jp").unwrap()).unwrap().unwrap();
    assert_eq!((s.status.as_str(), s.districts), ("active", vec![2]));
}
