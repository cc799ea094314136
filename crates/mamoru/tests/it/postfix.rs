//! The whole registration flow behind a real Postfix, configured from the
//! files operators install (docker/postfix/, rendered by
//! scripts/postfix-instance): a parent's empty mail is submitted to Postfix
//! over SMTP, Postfix hands it to mamoru (pipe(8) running `mamoru ingest`, or
//! LMTP), mamoru's 登録受付 reaches Postfix's smtp-sink, the test follows the
//! link over HTTP, and the 登録完了 reaches the sink too.
//!
//! Needs root (Postfix) and the unprivileged `mamoru` user that
//! scripts/install-test-deps creates: pipe(8) refuses to run commands as root,
//! so mamoru runs as that user here, as in production.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;

const T: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub(crate) fn user_ids(name: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, name]).output().expect("run id");
        assert!(out.status.success(), "user {name:?} is missing: run scripts/install-test-deps");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("numeric id")
    };
    (id("-u"), id("-g"))
}

pub(crate) fn chown_r(path: &Path, user: &str) {
    let st = Command::new("chown").arg("-R").arg(format!("{user}:")).arg(path).status().expect("chown");
    assert!(st.success());
}

/// A private Postfix instance; stopped on drop.
pub(crate) struct Postfix {
    dir: PathBuf,
    pub(crate) port: u16,
}

impl Postfix {
    pub(crate) fn start(dir: &Path, args: &[&str]) -> Postfix {
        let out = Command::new(repo_root().join("scripts/postfix-instance"))
            .arg("start")
            .arg(dir)
            .args(["--smtp-port", "0", "--domain", DOMAIN])
            .args(args)
            .output()
            .expect("run scripts/postfix-instance");
        assert!(out.status.success(), "postfix did not start:\n{}", String::from_utf8_lossy(&out.stderr));
        let port = String::from_utf8_lossy(&out.stdout).trim().parse().expect("port printed by postfix-instance");
        Postfix { dir: dir.to_path_buf(), port }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Submits `file` as the message, from the null sender, like a bounce.
    fn submit_bounce(&self, to: &str, file: &Path) -> (bool, String) {
        let out = Command::new("swaks")
            .args(["--server", &format!("127.0.0.1:{}", self.port), "--from", "<>", "--to", to, "--data"])
            .arg(file)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run swaks");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Submits a mail over SMTP with swaks; returns swaks' transcript.
    fn submit(&self, from: &str, to: &str) -> (bool, String) {
        let out = Command::new("swaks")
            .args(["--server", &format!("127.0.0.1:{}", self.port), "--from", from, "--to", to])
            .args(["--header", "Subject: ", "--body", " "])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run swaks");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/postfix-instance")).arg("stop").arg(&self.dir).status();
    }
}

/// Everything but the Postfix delivery mode is the same in both tests.
fn registration_through_postfix(mode: &str) {
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sink = SmtpSink::start(&work.path().join("sink"));
    let inst = Instance::new(&[("relay.transport", &format!("\"smtp://127.0.0.1:{}\"", sink.port))]);

    // mamoru runs as its own user, as pipe(8) requires: give it a copy of the
    // binary, a readable config and its own data dir.
    std::fs::set_permissions(inst.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&inst.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bin = inst.dir.path().join("mamoru");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::create_dir(inst.data_dir()).unwrap();
    chown_r(&inst.data_dir(), "mamoru");
    let (uid, gid) = user_ids("mamoru");
    let mut serve = Command::new(&bin);
    serve.arg("-c").arg(&inst.config).arg("serve").env("RUST_LOG", "debug").uid(uid).gid(gid);
    let server = Server::start(&mut serve);

    let bin_s = bin.to_string_lossy().into_owned();
    let config_s = inst.config.to_string_lossy().into_owned();
    let lmtp_s = server.lmtp.to_string();
    let mut args = vec!["--mode", mode, "--mamoru-bin", &bin_s, "--mamoru-config", &config_s];
    if mode == "lmtp" {
        args.extend(["--lmtp", &lmtp_s]);
    }
    let postfix = Postfix::start(&work.path().join("postfix"), &args);

    // Postfix refuses local parts mamoru does not handle, at RCPT time.
    let (ok, transcript) = postfix.submit("parent@docomo.ne.jp", "info@mamoru.test");
    assert!(!ok && transcript.contains("550"), "{transcript}");

    let parent = "taro..yamada.@docomo.ne.jp";
    let (ok, transcript) = postfix.submit(parent, "ans@mamoru.test");
    assert!(ok, "{transcript}");

    let find = |subject: &str| {
        sink.messages().into_iter().find_map(|(rcpts, raw)| {
            let m = parse_mail(&raw);
            (m.subject.contains(subject) && rcpts.iter().any(|r| r == parent)).then_some(m)
        })
    };
    let received = wait_for_or("登録受付 at the sink", T, || find("登録受付"), || postfix.log());
    assert!(received.message_id.ends_with("@mamoru.test>"), "{}", received.message_id);
    let link = link_path(&received.body);
    let page = http(server.http, "GET", &link, None);
    assert_eq!(page.status, 200, "{}", page.body);
    let done = http(server.http, "POST", &link, Some("district=2&district=10"));
    assert_eq!(done.status, 200, "{}", done.body);
    let completed = wait_for_or("登録完了 at the sink", T, || find("登録完了"), || postfix.log());
    assert!(completed.body.contains("天応・吉浦地区") && completed.body.contains("音戸・倉橋地区"));

    let s = inst.subscriber(parent).expect("subscriber in the store");
    assert_eq!((s.status.as_str(), s.districts), ("active", vec![2, 10]));
    assert_eq!(sink.messages().len(), 2, "exactly the two mails");

    // A bounce to the VERP return path of the 登録完了 passes Postfix
    // (bounce@ in recipients, recipient_delimiter +) and suspends the
    // address; a forged tag is accepted by Postfix and dropped by mamoru.
    let outbox: mamoru_core::OutboxId = rusqlite::Connection::open(inst.data_dir().join("mamoru.db"))
        .and_then(|db| db.query_row("SELECT MAX(id) FROM outbox WHERE subscriber_id = ?1", [s.id], |r| r.get(0)))
        .expect("outbox row");
    let keys = mamoru_store::keys::load_or_create(&inst.data_dir()).expect("keys");
    let verp = mamoru_core::verp::encode(&keys.token_key(), outbox, DOMAIN);
    let dsn = repo_root().join("fixtures/bounces/postfix-unknown-user.eml");
    let forged = format!("bounce+{outbox}-0000000000@{DOMAIN}");
    let (ok, transcript) = postfix.submit_bounce(&forged, &dsn);
    assert!(ok, "{transcript}");
    wait_for_or(
        "Postfix to hand the forged bounce to mamoru",
        T,
        || postfix.log().lines().any(|l| l.contains(&forged) && l.contains("status=sent")).then_some(()),
        || postfix.log(),
    );
    assert_eq!(inst.subscriber(parent).expect("subscriber").status.as_str(), "active", "a forged bounce changes nothing");
    let (ok, transcript) = postfix.submit_bounce(&verp, &dsn);
    assert!(ok, "{transcript}");
    wait_for_or(
        "the unknown-user bounce to suspend the subscriber",
        T,
        || (inst.subscriber(parent).expect("subscriber").status.as_str() == "suspended").then_some(()),
        || postfix.log(),
    );

    // A district's own address passes Postfix too and pre-selects it.
    let second = "second.parent@au.com";
    let (ok, transcript) = postfix.submit(second, "ans+chuo@mamoru.test");
    assert!(ok, "{transcript}");
    let invite = wait_for_or(
        "登録受付 for ans+chuo@",
        T,
        || {
            sink.messages().into_iter().find_map(|(rcpts, raw)| {
                let m = parse_mail(&raw);
                (m.subject.contains("登録受付") && rcpts.iter().any(|r| r == second)).then_some(m)
            })
        },
        || postfix.log(),
    );
    let page = http(server.http, "GET", &link_path(&invite.body), None);
    assert!(page.body.contains("value=\"1\" checked>"), "{}", page.body);
    drop(postfix);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains(parent), "address in clear in the log");
}

#[test]
fn register_through_postfix_pipe() {
    registration_through_postfix("pipe");
}

#[test]
fn register_through_postfix_lmtp() {
    registration_through_postfix("lmtp");
}
