//! IMAP ingest against a real Dovecot (tests/it/dovecot.rs), through the
//! real binary: mail APPENDed into the watched mailboxes as a provider's MTA
//! would leave it, `mamoru serve` watching with IDLE (or `mamoru ingest
//! --imap-once`), the relay sending to Postfix's smtp-sink.
//!
//! - An empty mail → 登録受付 at the sink → link → districts → 登録完了;
//!   the message ends in the processed folder, junk without an envelope
//!   header in the dropped one; a DSN in the separate bounce mailbox
//!   suspends the address; Dovecot restarted meanwhile changes nothing but
//!   a reconnect.
//! - A wrong password: a clear log line without the login, `mamoru queue`
//!   shows the retry, serve stays up and goes on once the password is fixed.
//!   A mailbox that does not exist: a clear error, exit 75, a retry state.
//! - The mailbox deleted and recreated (UIDVALIDITY changed) with the same
//!   message in it again: handled again, no second reply.
//! - A message over `max_message_bytes`: moved to the dropped folder
//!   without its body being fetched (Dovecot's own count of body bytes).
//! - An alert post with a valid DKIM signature becomes a preview; an
//!   unsigned copy does not. One with our own Authentication-Results
//!   (`[alerts] authserv_id`) does; another authserv-id's, a `dkim=fail`, or
//!   one below the `Received:` does not.
//! - A server without MOVE: COPY, `\Deleted`, `UID EXPUNGE`, each message
//!   once.
//! - A full quota (the copy refused `[OVERQUOTA]`): a clear log line, a
//!   doubling back-off, the state in `mamoru queue`, one reply, the message
//!   kept in INBOX until the quota is raised, then moved.
//! - `mamoru serve` killed with SIGKILL again and again while it works
//!   through a few hundred messages: nothing lost, no second reply, the
//!   mailbox ends empty.

use std::path::Path;
use std::time::Duration;

use crate::dovecot::*;
use crate::support::*;

const T: Duration = Duration::from_secs(60);
const ANS: &str = "ans@mamoru.test";
const BOUNCE: &str = "bounce@mamoru.test";

fn password_file(dir: &Path, password: &str) -> std::path::PathBuf {
    let p = dir.join("imap.pass");
    std::fs::write(&p, format!("{password}\n")).expect("password file");
    p
}

/// Waits until `f` (given the server's log so far) holds; panics with the log.
fn wait_until(server: &mut Server, what: &str, mut f: impl FnMut(&str) -> bool) {
    let start = std::time::Instant::now();
    loop {
        let logs = server.logs();
        if f(&logs) {
            return;
        }
        assert!(start.elapsed() < T, "timed out waiting for {what}; mamoru serve logged:\n{logs}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn outbox_rows(inst: &Instance) -> i64 {
    rusqlite::Connection::open(inst.data_dir().join("mamoru.db"))
        .and_then(|db| db.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0)))
        .unwrap_or(0)
}

fn queue_text(inst: &Instance) -> String {
    let out = inst.cmd().arg("queue").output().expect("mamoru queue");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn registration_and_a_bounce_over_imap_end_to_end() {
    let work = tempfile::tempdir().expect("tmp");
    let mut dovecot = Dovecot::start(&work.path().join("dovecot"), &[ANS, BOUNCE]);
    let sink = SmtpSink::start(&work.path().join("sink"));
    let pass = password_file(work.path(), PASSWORD);
    let boxes = format!(
        "[{}, {}]",
        mailbox_config(&dovecot, ANS, &pass, ", name = \"ans\""),
        mailbox_config(&dovecot, BOUNCE, &pass, ", name = \"bounces\", envelope_header = \"X-Original-To\", scan_secs = 2"),
    );
    let transport = format!("\"smtp://127.0.0.1:{}\"", sink.port);
    let inst = Instance::new(&[("ingest.imap", &boxes), ("relay.transport", &transport), ("relay.smtp_tls", "\"none\"")]);
    let mut server = inst.serve();

    let parent = "taro.yamada@docomo.ne.jp";
    dovecot.append(ANS, "INBOX", &empty_mail(parent, ANS));
    // Junk: no Delivered-To, so no envelope to trust.
    dovecot.append(ANS, "INBOX", format!("Return-Path: <{parent}>\r\nFrom: {parent}\r\nSubject: \r\n\r\n").as_bytes());

    let find = |subject: &str| {
        sink.messages().into_iter().find_map(|(rcpts, raw)| {
            let m = parse_mail(&raw);
            (m.subject.contains(subject) && rcpts.iter().any(|r| r == parent)).then_some(m)
        })
    };
    let mut received = None;
    wait_until(&mut server, "登録受付 at the sink", |_| {
        received = find("登録受付");
        received.is_some()
    });
    let received = received.expect("登録受付");
    let link = link_path(&received.body);
    let page = http(server.http, "GET", &link, None);
    assert_eq!(page.status, 200, "{}", page.body);
    let done = http(server.http, "POST", &link, Some("district=2&district=10"));
    assert_eq!(done.status, 200, "{}", done.body);
    wait_until(&mut server, "登録完了 at the sink", |_| find("登録完了").is_some());
    let s = inst.subscriber(parent).expect("subscriber");
    assert_eq!((s.status.as_str(), s.districts.clone()), ("active", vec![2, 10]));

    wait_until(&mut server, "INBOX to be emptied", |_| dovecot.count(ANS, "INBOX") == 0);
    assert_eq!(dovecot.count(ANS, "mamoru-processed"), 1);
    assert_eq!(dovecot.count(ANS, "mamoru-dropped"), 1);
    assert_eq!(dovecot.count(ANS, "mamoru-quarantine"), 0);
    assert!(server.logs().contains("no-envelope-header"), "{}", server.logs());

    // Dovecot goes away and comes back: the watchers reconnect.
    dovecot.restart();
    wait_until(&mut server, "a reconnect after the restart", |logs| {
        logs.lines().filter(|l| l.contains("IMAP mailbox selected") && l.contains("bounces")).count() >= 2
    });

    // The 登録完了's VERP return path, delivered by the provider into the
    // bounce mailbox (X-Original-To keeps the +tag).
    let outbox: mamoru_core::OutboxId = rusqlite::Connection::open(inst.data_dir().join("mamoru.db"))
        .and_then(|db| db.query_row("SELECT MAX(id) FROM outbox WHERE subscriber_id = ?1", [s.id], |r| r.get(0)))
        .expect("outbox row");
    let keys = mamoru_store::keys::load_or_create(&inst.data_dir()).expect("keys");
    let verp = mamoru_core::verp::encode(&keys.token_key(), outbox, DOMAIN);
    let dsn = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/bounces/postfix-unknown-user.eml")).expect("dsn");
    let mut bounce = format!("Return-Path: <>\r\nDelivered-To: {BOUNCE}\r\nX-Original-To: {verp}\r\n").into_bytes();
    bounce.extend_from_slice(&dsn);
    dovecot.append(BOUNCE, "INBOX", &bounce);
    wait_until(&mut server, "the bounce to suspend the subscriber", |_| inst.subscriber(parent).expect("subscriber").status.as_str() == "suspended");
    wait_until(&mut server, "the bounce to leave INBOX", |_| dovecot.count(BOUNCE, "INBOX") == 0);
    assert_eq!(dovecot.count(BOUNCE, "mamoru-processed"), 1);
    assert_eq!(sink.messages().len(), 2, "exactly the two replies");

    let q = queue_text(&inst);
    assert!(q.contains("imap mailbox"), "{q}");
    let ans_line = q.lines().find(|l| l.starts_with("ans ")).unwrap_or_else(|| panic!("{q}"));
    assert!(ans_line.contains("idle") && ans_line.split_whitespace().nth(2) == Some("1"), "{q}");
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains(parent) && !log.contains(ANS) && !log.contains(PASSWORD), "no address or password in clear: {log}");
}

#[test]
fn a_wrong_password_is_a_clear_retry_and_serve_stays_up() {
    let work = tempfile::tempdir().expect("tmp");
    let dovecot = Dovecot::start(&work.path().join("dovecot"), &[ANS]);
    let pass = password_file(work.path(), "not-the-password");
    let boxes = format!("[{}]", mailbox_config(&dovecot, ANS, &pass, ""));
    let inst = Instance::new(&[("ingest.imap", &boxes)]);

    let once = inst.cmd().args(["ingest", "--imap-once"]).output().expect("ingest --imap-once");
    let stderr = String::from_utf8_lossy(&once.stderr);
    assert_eq!(once.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("login refused [AUTHENTICATIONFAILED]"), "{stderr}");
    assert!(!stderr.contains(ANS) && !stderr.contains("not-the-password"), "{stderr}");

    let mut server = inst.serve();
    dovecot.append(ANS, "INBOX", &empty_mail("p@docomo.ne.jp", ANS));
    wait_until(&mut server, "the retry to show in mamoru queue", |_| {
        queue_text(&inst).lines().any(|l| l.contains("retrying") && l.contains("login refused"))
    });
    assert!(server.logs().contains("IMAP mailbox: login refused [AUTHENTICATIONFAILED]; retrying"), "{}", server.logs());
    assert_eq!(dovecot.count(ANS, "INBOX"), 1, "nothing taken");
    assert!(server.child.try_wait().expect("wait").is_none(), "serve is still running");

    // Fixed: the next retry logs in and handles the message.
    std::fs::write(&pass, PASSWORD).expect("password");
    wait_until(&mut server, "the message to be handled", |_| outbox_rows(&inst) == 1);
    wait_until(&mut server, "INBOX to be emptied", |_| dovecot.count(ANS, "INBOX") == 0);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains(ANS) && !log.contains(PASSWORD), "{log}");
}

#[test]
fn a_recreated_mailbox_is_rescanned_without_a_second_reply() {
    let work = tempfile::tempdir().expect("tmp");
    let dovecot = Dovecot::start(&work.path().join("dovecot"), &[ANS]);
    let pass = password_file(work.path(), PASSWORD);
    let boxes = format!("[{}]", mailbox_config(&dovecot, ANS, &pass, ", mailbox = \"ans\""));
    let inst = Instance::new(&[("ingest.imap", &boxes)]);
    let mail = empty_mail("p@docomo.ne.jp", ANS);
    let once = || {
        let out = inst.cmd().args(["ingest", "--imap-once"]).output().expect("ingest --imap-once");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        stderr
    };

    dovecot.imap(ANS, &[vec!["create".into(), "ans".into()]]);
    dovecot.append(ANS, "ans", &mail);
    once();
    assert_eq!((outbox_rows(&inst), dovecot.count(ANS, "ans")), (1, 0));
    let before = dovecot.imap(ANS, &[vec!["uidvalidity".into(), "ans".into()]]);

    // Deleted and recreated, and the same message is back in it.
    dovecot.imap(ANS, &[vec!["delete".into(), "ans".into()], vec!["create".into(), "ans".into()]]);
    std::thread::sleep(Duration::from_millis(1100)); // Dovecot's UIDVALIDITY is a timestamp.
    dovecot.imap(ANS, &[vec!["delete".into(), "ans".into()], vec!["create".into(), "ans".into()]]);
    assert_ne!(dovecot.imap(ANS, &[vec!["uidvalidity".into(), "ans".into()]]), before);
    dovecot.append(ANS, "ans", &mail);
    let log = once();
    assert!(log.contains("UIDVALIDITY changed"), "{log}");
    assert!(log.contains("rate limit: cooldown"), "{log}");
    assert_eq!(outbox_rows(&inst), 1, "no second reply");
    assert_eq!((dovecot.count(ANS, "ans"), dovecot.count(ANS, "mamoru-processed"), dovecot.count(ANS, "mamoru-dropped")), (0, 1, 1));
}

#[test]
fn an_oversized_message_is_dropped_without_fetching_its_body() {
    let work = tempfile::tempdir().expect("tmp");
    let dovecot = Dovecot::start(&work.path().join("dovecot"), &[ANS]);
    let pass = password_file(work.path(), PASSWORD);
    let boxes = format!("[{}]", mailbox_config(&dovecot, ANS, &pass, ""));
    let inst = Instance::new(&[("ingest.imap", &boxes), ("ingest.max_message_bytes", "1048576")]);
    let mut big = empty_mail("p@docomo.ne.jp", ANS);
    let line = [b'x'; 998];
    while big.len() < 10 * 1024 * 1024 {
        big.extend_from_slice(&line);
        big.extend_from_slice(b"\r\n");
    }
    dovecot.append(ANS, "INBOX", &big);

    let out = inst.cmd().args(["ingest", "--imap-once"]).output().expect("ingest --imap-once");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("message over max_message_bytes; dropped without fetching it"), "{stderr}");
    assert_eq!((dovecot.count(ANS, "INBOX"), dovecot.count(ANS, "mamoru-dropped")), (0, 1));
    assert_eq!(outbox_rows(&inst), 0);
    // Dovecot's own account of each session: no body byte was sent (the
    // test's own sessions only APPEND and ask STATUS).
    let log = dovecot.log();
    let logouts: Vec<&str> = log.lines().filter(|l| l.contains("body_bytes=")).collect();
    assert!(logouts.len() >= 3 && logouts.iter().all(|l| l.contains("body_bytes=0")), "{log}");
    // The count does count what ingest fetches: a small message's session shows it.
    dovecot.append(ANS, "INBOX", &empty_mail("p@docomo.ne.jp", ANS));
    let out = inst.cmd().args(["ingest", "--imap-once"]).output().expect("ingest --imap-once");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(outbox_rows(&inst), 1);
    let log = dovecot.log();
    assert!(log.lines().any(|l| l.contains("body_bytes=") && !l.contains("body_bytes=0")), "{log}");
}

#[test]
fn sigkill_between_commit_and_move_loses_nothing_and_replies_once() {
    const N: usize = 300;
    let work = tempfile::tempdir().expect("tmp");
    let dovecot = Dovecot::start(&work.path().join("dovecot"), &[ANS]);
    let pass = password_file(work.path(), PASSWORD);
    let boxes = format!("[{}]", mailbox_config(&dovecot, ANS, &pass, ""));
    let inst = Instance::new(&[("ingest.imap", &boxes)]);
    let mails = work.path().join("mails");
    std::fs::create_dir_all(&mails).expect("mails");
    let ops: Vec<Vec<String>> = (0..N)
        .map(|i| {
            let f = mails.join(format!("{i}.eml"));
            std::fs::write(&f, empty_mail(&format!("parent{i}@docomo.ne.jp"), ANS)).expect("mail");
            vec!["append".into(), "INBOX".into(), f.display().to_string()]
        })
        .collect();
    dovecot.imap(ANS, &ops);

    // SIGKILL after a varying time, again and again, while messages remain.
    let mut kills = 0;
    for round in 0..60u64 {
        if dovecot.count(ANS, "INBOX") == 0 {
            break;
        }
        let mut server = inst.serve();
        std::thread::sleep(Duration::from_millis(150 + (round * 137) % 600));
        server.child.kill().expect("SIGKILL");
        server.child.wait().expect("wait");
        kills += 1;
    }
    assert!(kills >= 3, "the run ended before enough kills ({kills}); make it longer");
    let mut server = inst.serve();
    wait_until(&mut server, "INBOX to be emptied", |_| dovecot.count(ANS, "INBOX") == 0);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");

    let (processed, dropped) = (dovecot.count(ANS, "mamoru-processed"), dovecot.count(ANS, "mamoru-dropped"));
    assert_eq!(processed + dropped, N as i64, "every message moved exactly once");
    // Every parent got exactly one 登録受付: a message handled again after a
    // kill before its move met the cooldown.
    let db = rusqlite::Connection::open(inst.data_dir().join("mamoru.db")).expect("db");
    let subscribers: i64 = db.query_row("SELECT COUNT(*) FROM subscribers", [], |r| r.get(0)).expect("count");
    assert_eq!((subscribers, outbox_rows(&inst)), (N as i64, N as i64), "{kills} kills, {dropped} handled twice");
    eprintln!("{kills} kills; {dropped} messages handled a second time and dropped by the cooldown");
}

#[test]
fn idle_picks_up_a_burst_without_waiting_for_the_full_scan() {
    const N: usize = 150;
    let work = tempfile::tempdir().expect("tmp");
    let dovecot = Dovecot::start(&work.path().join("dovecot"), &[ANS]);
    let pass = password_file(work.path(), PASSWORD);
    // The full scan is far away: only IDLE can bring these in time.
    let boxes = format!("[{}]", mailbox_config(&dovecot, ANS, &pass, ", scan_secs = 3600"));
    let inst = Instance::new(&[("ingest.imap", &boxes)]);
    let mut server = inst.serve();
    wait_until(&mut server, "the watcher to idle", |_| queue_text(&inst).lines().any(|l| l.starts_with("INBOX ") && l.contains("idle")));
    let mails = work.path().join("mails");
    std::fs::create_dir_all(&mails).expect("mails");
    let ops: Vec<Vec<String>> = (0..N)
        .map(|i| {
            let f = mails.join(format!("{i}.eml"));
            std::fs::write(&f, empty_mail(&format!("burst{i}@docomo.ne.jp"), ANS)).expect("mail");
            vec!["append".into(), "INBOX".into(), f.display().to_string()]
        })
        .collect();
    dovecot.imap(ANS, &ops);
    wait_until(&mut server, "every message of the burst", |_| outbox_rows(&inst) == N as i64);
    wait_until(&mut server, "INBOX to be emptied", |_| dovecot.count(ANS, "INBOX") == 0);
}

#[test]
fn a_missing_mailbox_is_a_clear_error() {
    let work = tempfile::tempdir().expect("tmp");
    let dovecot = Dovecot::start(&work.path().join("dovecot"), &[ANS]);
    let pass = password_file(work.path(), PASSWORD);
    let boxes = format!("[{}]", mailbox_config(&dovecot, ANS, &pass, ", mailbox = \"nosuch\""));
    let inst = Instance::new(&[("ingest.imap", &boxes)]);
    let out = inst.cmd().args(["ingest", "--imap-once"]).output().expect("ingest --imap-once");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    // Dovecot gives no response code for it; the phrase is ours.
    assert!(stderr.contains("IMAP mailbox: the mailbox cannot be selected; not drained"), "{stderr}");
    assert!(queue_text(&inst).lines().any(|l| l.starts_with("nosuch ") && l.contains("retrying")), "{}", queue_text(&inst));
}

const ALERT: &str = "alert@mamoru.test";
const ADMIN: &str = "staff@city.test";

/// The alert mailbox on a Dovecot of its own, an admin `chuo` registered as
/// [`ADMIN`], one subscriber in district 1, and `mamoru serve` watching the
/// mailbox, sending to a sink, with `alerts` settings on top.
struct AlertDesk {
    dovecot: Dovecot,
    sink: SmtpSink,
    inst: Instance,
    server: Server,
    _work: tempfile::TempDir,
}

impl AlertDesk {
    fn start(alerts: &[(&str, &str)]) -> AlertDesk {
        let work = tempfile::tempdir().expect("tmp");
        let dovecot = Dovecot::start(&work.path().join("dovecot"), &[ALERT]);
        let sink = SmtpSink::start(&work.path().join("sink"));
        let pass = password_file(work.path(), PASSWORD);
        let boxes = format!("[{}]", mailbox_config(&dovecot, ALERT, &pass, ", name = \"alert\""));
        let transport = format!("\"smtp://127.0.0.1:{}\"", sink.port);
        let mut config = vec![("ingest.imap", boxes.as_str()), ("relay.transport", &transport), ("relay.smtp_tls", "\"none\"")];
        config.extend_from_slice(alerts);
        let inst = Instance::new(&config);
        let mut add = inst.cmd();
        add.args(["admin", "add", "chuo", "--email", ADMIN]);
        assert!(run_with_stdin(add, b"a long enough password\n").status.success());
        let items = vec![(mamoru_core::EmailAddress::parse("hanako@docomo.ne.jp").expect("address"), vec![1])];
        inst.store().import_active_subscribers(&items, "test", mamoru_core::now()).expect("import");
        let server = inst.serve();
        AlertDesk { dovecot, sink, inst, server, _work: work }
    }

    /// A post as the admin's mail program writes it.
    fn post(message_id: &str) -> String {
        format!(
            "From: {ADMIN}\r\nTo: {ALERT}\r\nSubject: =?UTF-8?B?5LiN5a+p6ICF?=\r\nMessage-ID: <{message_id}>\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\n地区: 中央\r\n公園で児童に声をかける男性がいました。\r\n"
        )
    }

    /// Delivers `message` into the alert mailbox with the envelope headers
    /// the provider's final delivery agent puts on top.
    fn deliver(&self, message: &str) {
        let envelope = format!("Return-Path: <{ADMIN}>\r\nDelivered-To: {ALERT}\r\n");
        self.dovecot.append(ALERT, "INBOX", format!("{envelope}{message}").as_bytes());
    }

    /// Previews that reached the admin at the sink.
    fn previews(sink: &SmtpSink) -> usize {
        sink.messages()
            .into_iter()
            .filter(|(rcpts, raw)| rcpts.iter().any(|r| r == ADMIN) && parse_mail(raw).subject.contains("配信の確認"))
            .count()
    }

    /// Waits until every delivered post left the mailbox and one preview
    /// reached the admin; checks that exactly one draft exists and where the
    /// posts went; stops serve. Returns its log.
    fn expect_one_preview(self, processed: i64, dropped: i64) -> String {
        let AlertDesk { dovecot, sink, inst, mut server, _work } = self;
        wait_until(&mut server, "the preview at the sink", |_| AlertDesk::previews(&sink) >= 1);
        wait_until(&mut server, "INBOX to be emptied", |_| dovecot.count(ALERT, "INBOX") == 0);
        let drafts: i64 = rusqlite::Connection::open(inst.data_dir().join("mamoru.db"))
            .and_then(|db| db.query_row("SELECT COUNT(*) FROM alerts WHERE state = 'draft'", [], |r| r.get(0)))
            .expect("alerts");
        assert_eq!((drafts, AlertDesk::previews(&sink)), (1, 1), "one draft, one preview");
        assert_eq!((dovecot.count(ALERT, "mamoru-processed"), dovecot.count(ALERT, "mamoru-dropped")), (processed, dropped));
        let (status, log) = server.stop();
        assert!(status.success(), "{log}");
        assert!(!log.contains(ADMIN) && !log.contains(PASSWORD), "no address or password in clear: {log}");
        log
    }
}

/// An admin's alert post left in the alert mailbox by the provider: with a
/// valid DKIM signature (the key from `[alerts] dkim_keys`) it becomes a
/// draft and its preview reaches the admin; an unsigned copy with the same
/// From gets nothing (there is no SASL login over IMAP).
#[test]
fn a_dkim_signed_alert_post_over_imap_is_previewed_and_a_forged_one_is_not() {
    use base64::Engine as _;
    use mail_auth::common::crypto::Ed25519Key;
    use mail_auth::common::headers::HeaderWriter as _;
    use mail_auth::dkim::DkimSigner;

    let der = Ed25519Key::generate_pkcs8().expect("key");
    let key = Ed25519Key::from_pkcs8_der(&der).expect("key");
    let record = format!("v=DKIM1; k=ed25519; p={}", base64::engine::general_purpose::STANDARD.encode(key.public_key()));
    let keys = format!("{{ \"sel._domainkey.city.test\" = \"{record}\" }}");
    let desk = AlertDesk::start(&[("alerts.dkim_keys", &keys)]);

    let message = AlertDesk::post("imap-dkim@city.test");
    let sig = DkimSigner::from_key(key)
        .domain("city.test")
        .selector("sel")
        .headers(["From", "To", "Subject", "Message-ID"])
        .sign(message.as_bytes())
        .expect("sign");
    desk.deliver(&format!("{}{message}", sig.to_header()));
    desk.deliver(&AlertDesk::post("imap-forged@city.test"));
    desk.expect_one_preview(1, 1);
}

/// With `[alerts] authserv_id`, the `Authentication-Results` that our own
/// final MTA writes (its DKIM milter's verdict, above the `Received:` it
/// adds) authenticates a post that arrives over IMAP: a pass for the
/// admin's domain under our authserv-id is previewed; the same post with
/// another authserv-id, with `dkim=fail`, or with a pass the sender wrote
/// below the `Received:` drafts nothing and is dropped.
#[test]
fn an_alert_post_with_our_own_authentication_results_over_imap_is_previewed_and_others_are_not() {
    const OURS: &str = "mx.mamoru.test";
    let desk = AlertDesk::start(&[("alerts.require", "\"dkim\""), ("alerts.authserv_id", &format!("\"{OURS}\""))]);
    let received = format!(
        "Received: from mail.city.test (mail.city.test [192.0.2.7])\r\n\tby {OURS} (Postfix) with ESMTPS id 4TzQ1\r\n\t\
         for <{ALERT}>; Sat, 05 Dec 2026 07:00:00 +0000 (UTC)\r\n"
    );
    let as_our_mta_adds = |results: &str, id: &str| format!("Authentication-Results: {results}\r\n{received}{}", AlertDesk::post(id));
    desk.deliver(&as_our_mta_adds(&format!("{OURS}; dkim=pass header.d=city.test header.s=sel"), "ar-pass@city.test"));
    desk.deliver(&as_our_mta_adds("mx.elsewhere.test; dkim=pass header.d=city.test header.s=sel", "ar-theirs@city.test"));
    desk.deliver(&as_our_mta_adds(&format!("{OURS}; dkim=fail header.d=city.test header.s=sel"), "ar-fail@city.test"));
    desk.deliver(&format!(
        "{received}Authentication-Results: {OURS}; dkim=pass header.d=city.test header.s=sel\r\n{}",
        AlertDesk::post("ar-below@city.test")
    ));
    let log = desk.expect_one_preview(1, 3);
    assert_eq!(log.lines().filter(|l| l.contains("alert post accepted") && l.contains("authentication-results")).count(), 1, "{log}");
    assert_eq!(log.lines().filter(|l| l.contains("alert post refused") && l.contains("not-authenticated")).count(), 3, "{log}");
}

/// A server that does not announce MOVE: each message is copied to its
/// folder, flagged `\Deleted` and removed with `UID EXPUNGE`, once. Every
/// parent gets one 登録受付; the processed folder holds each message once,
/// neither deleted nor seen.
#[test]
fn without_move_a_message_is_copied_flagged_and_expunged_exactly_once() {
    let work = tempfile::tempdir().expect("tmp");
    let dovecot = Dovecot::start_with(&work.path().join("dovecot"), &[ANS], WITHOUT_MOVE);
    let caps = dovecot.imap(ANS, &[vec!["capability".into()]]).join(" ");
    assert!(caps.contains("UIDPLUS") && !caps.split_whitespace().any(|c| c == "MOVE"), "{caps}");
    let sink = SmtpSink::start(&work.path().join("sink"));
    let pass = password_file(work.path(), PASSWORD);
    let boxes = format!("[{}]", mailbox_config(&dovecot, ANS, &pass, ", name = \"ans\""));
    let transport = format!("\"smtp://127.0.0.1:{}\"", sink.port);
    let inst = Instance::new(&[("ingest.imap", &boxes), ("relay.transport", &transport), ("relay.smtp_tls", "\"none\"")]);
    let mut server = inst.serve();

    let parents = ["ichiro@docomo.ne.jp", "jiro@ezweb.ne.jp", "saburo@softbank.ne.jp"];
    for p in parents {
        dovecot.append(ANS, "INBOX", &empty_mail(p, ANS));
    }
    wait_until(&mut server, "INBOX to be emptied", |_| dovecot.count(ANS, "INBOX") == 0);
    wait_until(&mut server, "a 登録受付 for every parent", |_| sink.messages().len() >= parents.len());
    let logs = server.logs();
    assert!(logs.lines().any(|l| l.contains("IMAP mailbox selected") && l.contains("mv=false")), "{logs}");
    assert_eq!((dovecot.count(ANS, "mamoru-processed"), dovecot.count(ANS, "mamoru-dropped")), (3, 0));
    let flags = dovecot.imap(ANS, &[vec!["flags".into(), "mamoru-processed".into()]]).join(" ");
    assert_eq!(flags, "() () ()", "copied before being flagged, and never read");
    let mut to: Vec<String> = sink
        .messages()
        .into_iter()
        .filter(|(_, raw)| parse_mail(raw).subject.contains("登録受付"))
        .flat_map(|(rcpts, _)| rcpts)
        .collect();
    to.sort();
    assert_eq!(to, ["ichiro@docomo.ne.jp", "jiro@ezweb.ne.jp", "saburo@softbank.ne.jp"], "one 登録受付 each");
    assert_eq!(outbox_rows(&inst), 3);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

/// The mailbox is full: the provider's server refuses the copy into the
/// processed folder with `NO [OVERQUOTA]` (Dovecot's quota plugin, one
/// message per user; on a server without MOVE, where the copy counts).
/// The registration is committed and answered once; the message stays in
/// INBOX; the watcher logs the refusal, shows it in `mamoru queue` and
/// retries with a doubling back-off, moving (not handling again) the
/// message it already handled — even past the registration cooldown,
/// shortened here to a second. Once the quota is raised and Dovecot
/// reloaded, the message goes to the processed folder; serve never stops.
#[test]
fn a_full_quota_keeps_the_message_answers_once_and_moves_it_once_raised() {
    let work = tempfile::tempdir().expect("tmp");
    let dovecot = Dovecot::start_with(&work.path().join("dovecot"), &[ANS], &format!("{WITHOUT_MOVE}{}", quota(1)));
    let sink = SmtpSink::start(&work.path().join("sink"));
    let pass = password_file(work.path(), PASSWORD);
    let boxes = format!("[{}]", mailbox_config(&dovecot, ANS, &pass, ", name = \"ans\""));
    let transport = format!("\"smtp://127.0.0.1:{}\"", sink.port);
    let inst = Instance::new(&[
        ("ingest.imap", &boxes),
        ("relay.transport", &transport),
        ("relay.smtp_tls", "\"none\""),
        ("limits.register_cooldown_secs", "1"),
    ]);
    let mut server = inst.serve();
    let parent = "taro.yamada@docomo.ne.jp";
    dovecot.append(ANS, "INBOX", &empty_mail(parent, ANS));

    let retries = |logs: &str| -> Vec<u64> {
        logs.lines()
            .filter(|l| l.contains("IMAP mailbox: a message cannot be moved [OVERQUOTA]; retrying"))
            .filter_map(|l| l.split("retry_in_secs=").nth(1)?.split_whitespace().next()?.parse().ok())
            .collect()
    };
    wait_until(&mut server, "three refused moves", |logs| retries(logs).len() >= 3);
    let logs = server.logs();
    assert_eq!(retries(&logs)[..3], [1, 2, 4], "a doubling back-off: {logs}");
    assert!(logs.contains("IMAP message handled before its move failed; moving it now"), "{logs}");
    let q = queue_text(&inst);
    let line = q.lines().find(|l| l.starts_with("ans ")).unwrap_or_else(|| panic!("{q}"));
    assert!(line.contains("retrying") && line.contains("a message cannot be moved [OVERQUOTA]"), "{q}");
    assert_eq!((dovecot.count(ANS, "INBOX"), dovecot.count(ANS, "mamoru-processed")), (1, 0), "nothing lost, nothing copied");
    assert!(server.child.try_wait().expect("wait").is_none(), "serve is still running");
    wait_until(&mut server, "the 登録受付 at the sink", |_| !sink.messages().is_empty());

    dovecot.reconfigure(&format!("{WITHOUT_MOVE}{}", quota(100)));
    wait_until(&mut server, "INBOX to be emptied", |_| dovecot.count(ANS, "INBOX") == 0);
    assert_eq!((dovecot.count(ANS, "mamoru-processed"), dovecot.count(ANS, "mamoru-dropped")), (1, 0));
    wait_until(&mut server, "the watcher to idle", |_| queue_text(&inst).lines().any(|l| l.starts_with("ans ") && l.contains("idle")));
    assert_eq!(outbox_rows(&inst), 1, "one reply queued, however many retries");
    let replies: Vec<_> = sink.messages().into_iter().filter(|(rcpts, _)| rcpts.iter().any(|r| r == parent)).collect();
    assert_eq!(replies.len(), 1);
    assert!(parse_mail(&replies[0].1).subject.contains("登録受付"));
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains(parent) && !log.contains(ANS) && !log.contains(PASSWORD), "no address or password in clear: {log}");
}
