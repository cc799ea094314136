//! `mamoru ingest`, the Postfix pipe(8) command, and its exit-code contract:
//! 0 after a durable commit or a logged drop, 75 for anything transient.


use rusqlite::Connection;

use crate::support::*;

const EMPTY_MAIL: &[u8] = b"Return-Path: <parent@docomo.ne.jp>\n\
From: parent@docomo.ne.jp\n\
To: ans@mamoru.test\n\
Subject: \n\
Date: Mon, 23 Nov 2026 08:00:00 +0900\n\
Message-ID: <20261123080000.abc@docomo.ne.jp>\n\
MIME-Version: 1.0\n\
Content-Type: text/plain; charset=Shift_JIS\n\
\n";

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

fn queued(inst: &Instance) -> i64 {
    inst.store().outbox_counts().unwrap().queued
}

#[test]
fn an_empty_mail_is_queued_once_within_the_cooldown() {
    let inst = Instance::new(&[]);
    let out = inst.ingest("parent@docomo.ne.jp", "ans@mamoru.test", EMPTY_MAIL);
    assert_eq!(code(&out), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(queued(&inst), 1);
    assert_eq!(inst.subscriber("parent@docomo.ne.jp").unwrap().status.as_str(), "pending");

    // Postfix redelivers the same mail (say, after a lost exit status).
    let again = inst.ingest("parent@docomo.ne.jp", "ans@mamoru.test", EMPTY_MAIL);
    assert_eq!(code(&again), Some(0));
    assert_eq!(queued(&inst), 1, "one 登録受付 within the cooldown");

    // Logs never show the address in clear.
    for o in [&out, &again] {
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(!log.contains("parent@docomo.ne.jp"), "{log}");
        assert!(log.contains("p***@docomo.ne.jp"), "{log}");
    }
}

#[test]
fn junk_and_auto_replies_get_no_reply() {
    let inst = Instance::new(&[]);
    let auto = [b"Auto-Submitted: auto-replied\n".as_slice(), EMPTY_MAIL].concat();
    let bulk = [b"Precedence: bulk\n".as_slice(), EMPTY_MAIL].concat();
    for (sender, rcpt, msg) in [
        ("", "ans@mamoru.test", EMPTY_MAIL),
        ("MAILER-DAEMON@mx.example.jp", "ans@mamoru.test", EMPTY_MAIL),
        ("ans@mamoru.test", "ans@mamoru.test", EMPTY_MAIL),
        ("parent@docomo.ne.jp", "ans@mamoru.test", &auto[..]),
        ("parent@docomo.ne.jp", "ans@mamoru.test", &bulk[..]),
        ("parent@docomo.ne.jp", "info@mamoru.test", EMPTY_MAIL),
        ("not an address", "ans@mamoru.test", EMPTY_MAIL),
    ] {
        let out = inst.ingest(sender, rcpt, msg);
        assert_eq!(code(&out), Some(0), "{sender} -> {rcpt}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("dropped"), "a logged drop");
    }
    assert_eq!(queued(&inst), 0);
}

#[test]
fn a_locked_store_exits_75_and_the_retry_succeeds() {
    let inst = Instance::new(&[]);
    // Create the database, then hold its write lock from another connection.
    assert_eq!(code(&inst.ingest("", "ans@mamoru.test", EMPTY_MAIL)), Some(0));
    let db = Connection::open(inst.data_dir().join("mamoru.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    let out = inst.ingest("parent@docomo.ne.jp", "ans@mamoru.test", EMPTY_MAIL);
    assert_eq!(code(&out), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);
    assert_eq!(queued(&inst), 0);

    let retry = inst.ingest("parent@docomo.ne.jp", "ans@mamoru.test", EMPTY_MAIL);
    assert_eq!(code(&retry), Some(0), "{}", String::from_utf8_lossy(&retry.stderr));
    assert_eq!(queued(&inst), 1);
}

#[test]
fn an_unusable_data_dir_exits_75() {
    let inst = Instance::new(&[("data_dir", "\"/dev/null/data\"")]);
    let out = inst.ingest("parent@docomo.ne.jp", "ans@mamoru.test", EMPTY_MAIL);
    assert_eq!(code(&out), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_bad_config_exits_75_not_1() {
    let inst = Instance::new(&[("web.listen", "\"nowhere\"")]);
    let out = inst.ingest("parent@docomo.ne.jp", "ans@mamoru.test", EMPTY_MAIL);
    assert_eq!(code(&out), Some(75));
    assert!(String::from_utf8_lossy(&out.stderr).contains("web.listen"));
}

#[test]
fn a_panic_exits_75_never_101() {
    let inst = Instance::new(&[]);
    let out = inst.ingest_with("parent@docomo.ne.jp", "ans@mamoru.test", EMPTY_MAIL, &[("MAMORU_FAULT", "ingest-panic")]);
    assert_eq!(code(&out), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_oversize_message_is_a_logged_drop() {
    let inst = Instance::new(&[("ingest.max_message_bytes", "2048")]);
    let big = [EMPTY_MAIL, &vec![b'x'; 4096][..]].concat();
    let out = inst.ingest("parent@docomo.ne.jp", "ans@mamoru.test", &big);
    assert_eq!(code(&out), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("size limit"));
    assert_eq!(queued(&inst), 0);
}

#[test]
fn concurrent_pipes_share_one_store_without_loss() {
    let inst = Instance::new(&[("store.busy_timeout_ms", "10000")]);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let config = inst.config.clone();
            std::thread::spawn(move || {
                let mut cmd = std::process::Command::new(BIN);
                cmd.arg("-c").arg(&config).args(["ingest", "--sender", &format!("p{i}@au.com"), "--recipient", "ans@mamoru.test"]);
                run_with_stdin(cmd, EMPTY_MAIL).status.code()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), Some(0));
    }
    assert_eq!(queued(&inst), 8);
}
