//! The shipped (release) binary under a stranger's attack for a bounded time (`attacker.py`,
//! from loopback addresses of its own: idle and slow connections on both
//! listeners, nested-MIME and huge-header mail, waves of wrong admin
//! logins), while a genuine parent registers over LMTP and the web page and
//! a logged-in admin publishes from the panel. Both must go through, the
//! server must stay up, and the attacker must get no more than the limits
//! allow.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::alerts::{form_escape, http_h};
use crate::support::*;

const T: Duration = Duration::from_secs(60);
const ADMIN: &str = "staff@city.test";
const PARENT: &str = "hanako.@ezweb.ne.jp";
const PASSWORD: &str = "a long enough password";

fn mail_with(inst: &Instance, subject: &str, to: &str) -> Option<Mail> {
    inst.mail_files()
        .into_iter()
        .filter_map(|p| std::fs::read(p).ok())
        .map(|raw| parse_mail(&raw))
        .find(|m| m.subject.contains(subject) && m.to.contains(to))
}

/// The largest resident set the process has had, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

#[test]
fn a_parent_registers_and_an_admin_publishes_while_a_stranger_attacks() {
    let inst = Instance::new(&[]);
    let mut add = inst.cmd();
    add.args(["admin", "add", "chuo", "--email", ADMIN]);
    assert!(run_with_stdin(add, format!("{PASSWORD}\n").as_bytes()).status.success());
    let keys = mamoru_store::keys::load_or_create(&inst.data_dir()).expect("keys");
    let bounce = mamoru_core::verp::encode(&keys.token_key(), mamoru_core::OutboxId::new(1), DOMAIN);
    let bin = shipped_bin();
    eprintln!("attacking {bin}");
    let mut server = Server::start(inst.cmd_of(&bin).arg("serve"));
    let http = server.http;

    // The admin logs in before the attack; the session carries the publish.
    let ok = http_h(http, "POST", "/admin/login", &[], Some(&format!("login=chuo&password={}", form_escape(PASSWORD))));
    assert_eq!(ok.status, 303, "{}", ok.body);
    let cookie = ok.header("Set-Cookie").expect("cookie").split(';').next().expect("pair").to_string();
    let dash = http_h(http, "GET", "/admin", &[("Cookie", &cookie)], None);
    let csrf = dash.body.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("csrf").to_string();

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/attacker.py");
    let mut attacker = Command::new("python3")
        .arg(script)
        .args(["--web", &http.to_string(), "--lmtp", &server.lmtp.to_string(), "--bounce", &bounce, "--domain", DOMAIN])
        .args(["--seconds", "25"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start attacker.py");
    let mut out = BufReader::new(attacker.stdout.take().expect("stdout")).lines();
    assert_eq!(out.next().and_then(Result::ok).as_deref(), Some("ready"), "the attacker set up its floods");
    let attack_started = Instant::now();

    // A genuine parent, over LMTP (swaks, as Postfix's lmtp transport would).
    let started = Instant::now();
    let swaks = Command::new("swaks")
        .args(["--protocol", "LMTP", "--server", &server.lmtp.to_string(), "--from", PARENT, "--to", &format!("ans@{DOMAIN}")])
        .args(["--timeout", "30"])
        .output()
        .expect("swaks");
    assert!(swaks.status.success(), "the parent's empty mail was refused: {}", String::from_utf8_lossy(&swaks.stdout));
    let accepted = started.elapsed();
    let receipt = wait_for("the 登録受付 mail", T, || mail_with(&inst, "登録受付", PARENT));
    let path = link_path(&receipt.body);
    assert_eq!(http_h(http, "GET", &path, &[], None).status, 200);
    let done = http_h(http, "POST", &path, &[], Some("district=1"));
    assert!(done.status < 400, "registration page answered {}: {}", done.status, done.body);
    wait_for("the 登録完了 mail", T, || mail_with(&inst, "登録完了", PARENT));
    let registered = started.elapsed();

    // The admin composes and publishes from the panel.
    let started = Instant::now();
    let compose = format!("csrf={csrf}&title={}&district=1&text={}", form_escape("不審者"), form_escape("公園で声かけがありました。"));
    let drafted = http_h(http, "POST", "/admin/compose", &[("Cookie", &cookie)], Some(&compose));
    assert_eq!(drafted.status, 303, "{}", drafted.body);
    let alert_path = drafted.header("Location").expect("location").to_string();
    let published = http_h(http, "POST", &format!("{alert_path}/publish"), &[("Cookie", &cookie)], Some(&format!("csrf={csrf}")));
    assert_eq!(published.status, 303, "{}", published.body);
    wait_for("the alert at the parent", T, || mail_with(&inst, "【守るネット】", PARENT));
    let alerted = started.elapsed();
    let during = attack_started.elapsed();

    let report = out.next().and_then(Result::ok).expect("the attacker's report");
    assert!(attacker.wait().expect("attacker").success());
    let stats: serde_json::Value = serde_json::from_str(&report).expect("json");
    let n = |k: &str| stats.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    eprintln!(
        "under attack: LMTP 250 in {accepted:?}, registered in {registered:?}, alert delivered in {alerted:?} \
         ({during:?} into the attack); attacker saw {report}"
    );
    assert!(during < Duration::from_secs(10), "the genuine flows finished while the attack still ran");
    assert!(!report.contains("first_round_missing"), "every attack ran before the genuine traffic: {report}");
    assert!(server.child.try_wait().expect("status").is_none(), "mamoru serve died: {}", server.logs());
    // One client holds no more connections than its per-client limits.
    assert!(n("web_idle_still_open") <= 64, "{report}");
    assert!(n("lmtp_idle_still_open") <= 50, "{report}");
    // Five wrong passwords for one ID per window, twenty per client: every
    // other attempt was refused before a password was checked (the windows
    // run from the first attempt, so no clock boundary renews them).
    assert!(n("login_401") <= 20, "{report}");
    assert!(n("login_401") + n("login_429") + n("login_503") > 100, "the login waves ran: {report}");
    assert!(n("lmtp_attack_accepted") + n("lmtp_attack_refused") + n("lmtp_attack_552") + n("lmtp_attack_554") > 0, "{report}");
    let rss = peak_rss_kib(server.child.id());
    eprintln!("mamoru serve peak RSS: {} MiB", rss / 1024);
    assert!(rss < 400 * 1024, "peak RSS {rss} KiB");
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
