//! Hostile MIME against the binary: a message of thousands of nested
//! multiparts, to every address that parses mail, through the pipe command
//! (exit 0 or 75, never a signal) and over LMTP to `mamoru serve` (which
//! stays up and keeps answering).


use mamoru_core::EmailAddress;
use mamoru_ingest::mime::nested_message;

use crate::support::*;

const ADMIN: &str = "staff@city.test";

/// The attack message, addressed as a post from the admin.
fn attack(depth: usize) -> Vec<u8> {
    let raw = String::from_utf8(nested_message(depth, 0)).expect("ascii");
    raw.replace("From: a@example.jp\r\nTo: x@example.jp", &format!("From: {ADMIN}\r\nTo: alert@{DOMAIN}")).into_bytes()
}

/// An instance with one admin, and a valid VERP return path (the tag
/// verifies, so the bounce reaches the parser).
fn instance() -> (Instance, String) {
    let inst = Instance::new(&[]);
    let store = inst.store();
    store.add_admin("chuo", &EmailAddress::parse(ADMIN).expect("addr"), "$argon2id$unused", &[], "test", 1).expect("add admin");
    let keys = mamoru_store::keys::load_or_create(&inst.data_dir()).expect("keys");
    let verp = mamoru_core::verp::encode(&keys.token_key(), mamoru_core::OutboxId::new(1), DOMAIN);
    (inst, verp)
}

#[test]
fn nested_mime_through_the_pipe_command_is_a_logged_drop_or_a_reply() {
    let (inst, verp) = instance();
    for depth in [3_000, 45_000] {
        let msg = attack(depth);
        let cases: Vec<(&str, Vec<&str>)> = vec![
            (verp.as_str(), vec![]),
            ("ans@mamoru.test", vec![]),
            ("alert@mamoru.test", vec![]),
            ("alert@mamoru.test", vec!["--sasl-username", "chuo"]),
        ];
        for (rcpt, extra) in cases {
            let mut cmd = inst.cmd();
            cmd.args(["ingest", "--sender", ADMIN, "--recipient", rcpt]).args(&extra);
            let out = run_with_stdin(cmd, &msg);
            let log = String::from_utf8_lossy(&out.stderr);
            assert!(matches!(out.status.code(), Some(0 | 75)), "{depth} levels to {rcpt} {extra:?}: {:?}\n{log}", out.status);
            assert_eq!(out.status.code(), Some(0), "{depth} levels to {rcpt}: a defined outcome, not a retry\n{log}");
        }
    }
    // Only the authenticated admin got an answer (once: the second depth is
    // another post): the 受付不可 reply, nothing published.
    let q = inst.store().claim_due(mamoru_core::now() + 5, 10, 100).expect("claim");
    let kinds: Vec<&str> = q.iter().map(|m| m.kind.as_str()).collect();
    assert_eq!(kinds, ["alert_rejected", "alert_rejected"], "{kinds:?}");
}

/// Python's smtplib sends one message to several recipients and prints each
/// per-recipient reply.
fn lmtp_send(server: &Server, sender: &str, rcpts: &[&str], message: &[u8]) -> Vec<String> {
    let script = r#"
import smtplib, sys
host, port, sender, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rcpts = sys.argv[5:]
msg = open(path, "rb").read()
c = smtplib.LMTP(host, port)
c.ehlo_or_helo_if_needed = lambda: None
c.docmd("LHLO", "client.test")
c.docmd("MAIL", "FROM:<%s>" % sender)
accepted = sum(c.docmd("RCPT", "TO:<%s>" % r)[0] == 250 for r in rcpts)
print("DATA", c.docmd("DATA")[0])
c.send(msg + b".\r\n")
for _ in range(accepted):
    code, text = c.getreply()
    print("REPLY", code, text.decode())
c.docmd("QUIT")
"#;
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), message).expect("write message");
    let mut args: Vec<&std::ffi::OsStr> = vec![sender.as_ref(), file.path().as_os_str()];
    args.extend(rcpts.iter().map(|r| std::ffi::OsStr::new(*r)));
    run_lmtp_script(script, server, &args)
}

#[test]
fn nested_mime_over_lmtp_leaves_serve_up() {
    let (inst, verp) = instance();
    let mut server = inst.serve();
    for depth in [3_000, 45_000] {
        let replies = lmtp_send(&server, ADMIN, &[&verp, "alert@mamoru.test", "ans@mamoru.test"], &attack(depth));
        let codes: Vec<&str> = replies.iter().filter(|l| l.starts_with("REPLY")).map(|l| &l[6..9]).collect();
        assert_eq!(codes, ["250", "250", "250"], "{depth} levels: {replies:?}\n{}", server.logs());
        assert!(server.child.try_wait().expect("try_wait").is_none(), "serve died:\n{}", server.logs());
    }
    // Still answering: a plain registration goes through.
    let ok = lmtp_send(&server, "parent@docomo.ne.jp", &["ans@mamoru.test"], b"From: parent@docomo.ne.jp\r\nSubject: \r\n\r\n");
    assert!(ok.iter().any(|l| l.starts_with("REPLY 250")), "{ok:?}");
    wait_for("the registration to be queued", std::time::Duration::from_secs(10), || {
        inst.subscriber("parent@docomo.ne.jp").map(|_| ())
    });
    let logs = server.logs();
    assert!(logs.contains("bounce beyond the MIME bounds"), "{logs}");
    assert!(!logs.contains("parent@docomo.ne.jp"), "no address in clear");
    let (status, _) = server.stop();
    assert!(status.success(), "{status:?}");
}
