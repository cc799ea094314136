//! Alerts end to end: `mamoru admin`, an admin's post by mail (pipe with a
//! SASL login, and through a real Postfix with a DKIM signature verified
//! against a key the test generates and pins), the preview mail, the publish
//! page over real HTTP, and the fan-out reaching exactly the subscribers of
//! the chosen districts.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::DkimSigner;
use mamoru_core::EmailAddress;

use crate::postfix::{Postfix, chown_r, user_ids};
use crate::support::*;

const T: Duration = Duration::from_secs(60);
const ADMIN: &str = "staff@city.test";

fn admin_add(inst: &Instance, id: &str, email: &str, password: &str) -> std::process::Output {
    let mut cmd = inst.cmd();
    cmd.args(["admin", "add", id, "--email", email]);
    run_with_stdin(cmd, format!("{password}\n").as_bytes())
}

#[test]
fn admin_cli_adds_lists_and_disables() {
    let inst = Instance::new(&[]);
    let short = admin_add(&inst, "chuo", ADMIN, "short");
    assert!(!short.status.success() && String::from_utf8_lossy(&short.stderr).contains("at least"));
    let ok = admin_add(&inst, "chuo", ADMIN, "a long enough password");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(!admin_add(&inst, "chuo", "x@city.test", "a long enough password").status.success(), "login taken");
    let list = inst.cmd().args(["admin", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("chuo") && text.contains("active") && text.contains("s***@city.test"), "{text}");
    assert!(!text.contains(ADMIN), "addresses are masked: {text}");
    assert!(inst.cmd().args(["admin", "disable", "chuo"]).output().unwrap().status.success());
    let text = String::from_utf8_lossy(&inst.cmd().args(["admin", "list"]).output().unwrap().stdout).into_owned();
    assert!(text.contains("disabled"), "{text}");
    assert!(!inst.cmd().args(["admin", "disable", "nobody"]).output().unwrap().status.success());
    // Enabled again, with a new password for the forgotten one.
    assert!(inst.cmd().args(["admin", "enable", "chuo"]).output().unwrap().status.success());
    assert!(!inst.cmd().args(["admin", "enable", "chuo"]).output().unwrap().status.success(), "already active");
    let mut cmd = inst.cmd();
    cmd.args(["admin", "password", "chuo"]);
    let changed = run_with_stdin(cmd, b"a brand new password\n");
    assert!(changed.status.success(), "{}", String::from_utf8_lossy(&changed.stderr));
    let mut cmd = inst.cmd();
    cmd.args(["admin", "password", "nobody"]);
    assert!(!run_with_stdin(cmd, b"a brand new password\n").status.success());
    let (admin, hash) = inst.store().admin_credentials("chuo").unwrap().unwrap();
    assert!(admin.active && mamoru_core::password::verify("a brand new password", &hash));
    assert!(!mamoru_core::password::verify("a long enough password", &hash));
}

/// Subscribers: two in district 1, one in 3, one in 1 and 3, two elsewhere.
const SUBSCRIBERS: [(&str, &[u32]); 6] = [
    ("a..b.@docomo.ne.jp", &[1]),
    ("c@ezweb.ne.jp", &[1]),
    ("d@i.softbank.jp", &[3]),
    ("e@docomo.ne.jp", &[1, 3]),
    ("f@docomo.ne.jp", &[2]),
    ("g@au.com", &[10]),
];

fn import(inst: &Instance) {
    let items: Vec<(EmailAddress, Vec<u32>)> =
        SUBSCRIBERS.iter().map(|(a, d)| (EmailAddress::parse(a).unwrap(), d.to_vec())).collect();
    assert_eq!(inst.store().import_active_subscribers(&items, "test", mamoru_core::now()).unwrap(), 6);
}

fn post_text(message_id: &str) -> String {
    format!(
        "From: {ADMIN}\r\nTo: alert@mamoru.test\r\nSubject: =?UTF-8?B?5LiN5a+p6ICF?=\r\nMessage-ID: <{message_id}>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\n\
         種別: 不審者情報\r\n地区: 中央, 3\r\n本日15時ごろ、公園で児童に声をかける男性がいました。\r\n"
    )
}

/// The `/p/TOKEN` path in a preview body.
fn publish_path(body: &str) -> String {
    let start = body.find("/p/").expect("a /p/ link in the preview");
    body[start..].split_whitespace().next().unwrap().to_string()
}

/// Checks what each subscriber received: the alert once for districts 1 and
/// 3, nothing for the others.
fn check_fanout(messages: &[(String, Vec<u8>)]) {
    let expected = ["a..b.@docomo.ne.jp", "c@ezweb.ne.jp", "d@i.softbank.jp", "e@docomo.ne.jp"];
    let mut got: Vec<&str> = messages.iter().map(|(to, _)| to.as_str()).collect();
    got.sort();
    assert_eq!(got, expected, "every subscriber of 中央 and 昭和 exactly once, no one else");
    for (to, raw) in messages {
        let m = mailparse::parse_mail(raw).unwrap();
        let h = |k: &str| m.headers.iter().find(|x| x.get_key().eq_ignore_ascii_case(k)).map(|x| x.get_value()).unwrap_or_default();
        assert_eq!(h("Subject"), "【守るネット】[不審者情報] 不審者（中央地区、昭和地区）", "{to}");
        assert!(h("List-Unsubscribe").starts_with("<http://127.0.0.1:1/u/"), "{to}");
        assert_eq!(h("List-Unsubscribe-Post"), "List-Unsubscribe=One-Click");
        assert_eq!(h("Auto-Submitted"), "auto-generated");
        let body = m.get_body().unwrap();
        assert!(body.contains("公園で児童に声をかける") && body.contains("/m/"), "{body}");
    }
}

#[test]
fn a_post_with_a_sasl_login_is_previewed_then_published_to_its_districts_only() {
    let inst = Instance::new(&[]);
    assert!(admin_add(&inst, "chuo", ADMIN, "a long enough password").status.success());
    import(&inst);
    let server = inst.serve();
    let mut ingest = inst.cmd();
    ingest.args(["ingest", "--sender", ADMIN, "--recipient", "alert@mamoru.test", "--sasl-username=chuo"]);
    let out = run_with_stdin(ingest, post_text("p1@city.test").as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // An unauthenticated copy (no SASL login) is dropped; a replay is a no-op.
    assert!(inst.ingest(ADMIN, "alert@mamoru.test", post_text("p2@city.test").as_bytes()).status.success());
    let mut again = inst.cmd();
    again.args(["ingest", "--sender", ADMIN, "--recipient", "alert@mamoru.test", "--sasl-username=chuo"]);
    assert!(run_with_stdin(again, post_text("p1@city.test").as_bytes()).status.success());

    let preview = wait_for("the preview mail", T, || {
        inst.mail_files().into_iter().map(|p| std::fs::read(p).unwrap()).map(|raw| parse_mail(&raw)).find(|m| m.subject.contains("配信の確認"))
    });
    assert!(preview.to.contains(ADMIN));
    assert!(preview.body.contains("配信先: 4件") && preview.body.contains("・docomo: 2件"), "{}", preview.body);
    let path = publish_path(&preview.body);
    let page = http(server.http, "GET", &path, None);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("配信する") && page.header("Content-Security-Policy").is_some());
    assert_eq!(page.header("Referrer-Policy"), Some("no-referrer"));
    assert_eq!(inst.mail_files().len(), 1, "GET publishes nothing");
    let done = http(server.http, "POST", &path, Some(""));
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("4件"), "{}", done.body);
    assert_eq!(http(server.http, "POST", &path, Some("")).status, 410, "the link is single use");

    let alerts = wait_for("four alert mails", T, || {
        let v: Vec<(String, Vec<u8>)> = inst
            .mail_files()
            .into_iter()
            .map(|p| std::fs::read(p).unwrap())
            .filter(|raw| parse_mail(raw).subject.starts_with("【守るネット】[不審者情報]"))
            .map(|raw| (parse_mail(&raw).to.trim_matches(['<', '>']).to_string(), raw))
            .collect();
        (v.len() >= 4).then_some(v)
    });
    check_fanout(&alerts);

    // The public archive shows it, per district, as a page and as Atom.
    let all = http(server.http, "GET", "/alerts", None);
    assert_eq!(all.status, 200);
    assert!(all.body.contains("[不審者情報] 不審者") && all.body.contains("公園で児童に声をかける"), "{}", all.body);
    assert!(all.header("Content-Security-Policy").is_some() && all.header("Referrer-Policy") == Some("no-referrer"));
    assert!(!all.body.contains("chuo") && !all.body.contains("city.test"), "no personal data in the archive");
    assert!(http(server.http, "GET", "/alerts?d=3", None).body.contains("不審者"));
    assert!(!http(server.http, "GET", "/alerts?d=2", None).body.contains("公園で"));
    assert_eq!(http(server.http, "GET", "/alerts?d=99", None).status, 404);
    let atom = http(server.http, "GET", "/alerts/1.atom", None);
    assert_eq!(atom.status, 200);
    assert!(atom.header("Content-Type").is_some_and(|c| c.starts_with("application/atom+xml")));
    assert!(atom.body.contains("<entry><title>[不審者情報] 不審者（中央地区、昭和地区）</title>"), "{}", atom.body);
    assert!(!http(server.http, "GET", "/alerts/10.atom", None).body.contains("<entry>"));

    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    for (a, _) in SUBSCRIBERS {
        assert!(!log.contains(a), "address in clear in the log");
    }
    assert_eq!(inst.mail_files().len(), 5, "preview + four alerts, nothing else");
}

/// One SMTP transaction with a prepared message, as a mail client would.
fn smtp_send(port: u16, from: &str, to: &str, message: &str) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut transcript = String::new();
    let reply = |r: &mut BufReader<TcpStream>, t: &mut String| -> String {
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            t.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return line;
            }
        }
    };
    reply(&mut r, &mut transcript);
    for cmd in ["EHLO city.test".to_string(), format!("MAIL FROM:<{from}>"), format!("RCPT TO:<{to}>"), "DATA".into()] {
        write!(w, "{cmd}\r\n").unwrap();
        reply(&mut r, &mut transcript);
    }
    let data = message.replace("\r\n.", "\r\n..");
    write!(w, "{data}\r\n.\r\n").unwrap();
    let last = reply(&mut r, &mut transcript);
    write!(w, "QUIT\r\n").unwrap();
    assert!(last.starts_with("250"), "{transcript}");
    transcript
}

#[test]
fn a_dkim_signed_post_through_postfix_reaches_every_subscriber_once() {
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sink = SmtpSink::start(&work.path().join("sink"));
    let der = Ed25519Key::generate_pkcs8().unwrap();
    let key = Ed25519Key::from_pkcs8_der(&der).unwrap();
    use base64::Engine as _;
    let record = format!("v=DKIM1; k=ed25519; p={}", base64::engine::general_purpose::STANDARD.encode(key.public_key()));
    let inst = Instance::new(&[
        ("relay.transport", &format!("\"smtp://127.0.0.1:{}\"", sink.port)),
        ("alerts.dkim_keys", &format!("{{ \"sel._domainkey.city.test\" = \"{record}\" }}")),
    ]);
    assert!(admin_add(&inst, "chuo", ADMIN, "a long enough password").status.success());
    import(&inst);

    std::fs::set_permissions(inst.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&inst.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bin = inst.dir.path().join("mamoru");
    std::fs::copy(BIN, &bin).unwrap();
    chown_r(&inst.data_dir(), "mamoru");
    let (uid, gid) = user_ids("mamoru");
    let mut serve = Command::new(&bin);
    serve.arg("-c").arg(&inst.config).arg("serve").env("RUST_LOG", "debug").uid(uid).gid(gid);
    let server = Server::start(&mut serve);
    let bin_s = bin.to_string_lossy().into_owned();
    let config_s = inst.config.to_string_lossy().into_owned();
    let postfix = Postfix::start(&work.path().join("postfix"), &["--mode", "pipe", "--mamoru-bin", &bin_s, "--mamoru-config", &config_s]);

    let message = post_text("dkim1@city.test");
    let sig = DkimSigner::from_key(key)
        .domain("city.test")
        .selector("sel")
        .headers(["From", "To", "Subject", "Message-ID"])
        .sign(message.as_bytes())
        .unwrap();
    let signed = format!("{}{message}", sig.to_header());
    smtp_send(postfix.port, ADMIN, "alert@mamoru.test", &signed);
    // A forged copy (no signature) through the same path gets nowhere.
    smtp_send(postfix.port, ADMIN, "alert@mamoru.test", &post_text("forged@city.test"));

    let sink_mail = |pred: &dyn Fn(&Mail) -> bool| -> Vec<(String, Vec<u8>)> {
        sink.messages().into_iter().filter(|(_, raw)| pred(&parse_mail(raw))).map(|(r, raw)| (r.join(","), raw)).collect()
    };
    let preview = wait_for_or(
        "the preview at the sink",
        T,
        || sink_mail(&|m| m.subject.contains("配信の確認")).into_iter().next(),
        || postfix.log(),
    );
    assert_eq!(preview.0, ADMIN);
    let path = publish_path(&parse_mail(&preview.1).body);
    assert_eq!(http(server.http, "POST", &path, Some("")).status, 200);
    let alerts = wait_for_or(
        "four alerts at the sink",
        T,
        || {
            let v = sink_mail(&|m| m.subject.starts_with("【守るネット】[不審者情報]"));
            (v.len() >= 4).then_some(v)
        },
        || postfix.log(),
    );
    check_fanout(&alerts);
    assert_eq!(sink.messages().len(), 5, "one preview, four alerts; nothing for the forged post");
    drop(postfix);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn alert_post_from_the_command_line_previews_or_publishes_with_yes() {
    let inst = Instance::new(&[]);
    assert!(admin_add(&inst, "chuo", ADMIN, "a long enough password").status.success());
    import(&inst);
    let post_to = |districts: &str, extra: &[&str], text: &str| {
        let mut cmd = inst.cmd();
        cmd.args(["alert", "post", "--admin", "chuo", "--title", "不審者", "--kind", "不審者情報", "--districts", districts]).args(extra);
        run_with_stdin(cmd, text.as_bytes())
    };
    let post = |extra: &[&str], text: &str| post_to("中央, 3", extra, text);
    let bad = post_to("東京", &[], "本文");
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("東京"));
    let preview = post(&[], "本日15時ごろ、公園で児童に声をかける男性がいました。");
    assert!(preview.status.success(), "{}", String::from_utf8_lossy(&preview.stderr));
    assert!(String::from_utf8_lossy(&preview.stdout).contains("preview queued for s***@city.test"));
    let store = inst.store();
    assert_eq!(store.outbox_counts().unwrap().queued, 1, "only the preview");
    let test = post(&["--test", "--yes"], "テストです。");
    assert!(test.status.success(), "{}", String::from_utf8_lossy(&test.stderr));
    assert!(String::from_utf8_lossy(&test.stdout).contains("published to 4 subscribers"));
    assert_eq!(store.outbox_counts().unwrap().queued, 6, "two previews and four alert rows");
    // The rows hold no content: the relay of `mamoru serve` renders each copy.
    let server = inst.serve();
    let alerts = wait_for("four alert mails", T, || {
        let v: Vec<Mail> = inst.mail_files().into_iter().map(|p| parse_mail(&std::fs::read(p).unwrap())).filter(|m| m.subject.starts_with("【守るネット】【テスト配信】")).collect();
        (v.len() >= 4).then_some(v)
    });
    assert_eq!(alerts.len(), 4);
    assert_eq!(alerts[0].subject, "【守るネット】【テスト配信】[不審者情報] 不審者（中央地区、昭和地区）");
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    assert!(store.archive(None, 0, 10).unwrap().is_empty(), "テスト配信 is not archived");
    let disabled = inst.cmd().args(["admin", "disable", "chuo"]).output().unwrap();
    assert!(disabled.status.success());
    assert!(!post(&["--yes"], "x").status.success(), "a disabled admin cannot post");
}

/// HTTP with extra request headers (a cookie), over a real socket.
pub fn http_h(addr: std::net::SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], form: Option<&str>) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let body = form.unwrap_or("");
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let ctype = if form.is_some() { "Content-Type: application/x-www-form-urlencoded\r\n" } else { "" };
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}{ctype}Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).unwrap();
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    Response { status, headers, body: body.to_string() }
}

pub fn form_escape(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

#[test]
fn the_admin_panel_logs_in_composes_and_publishes_with_csrf_and_audit() {
    let inst = Instance::new(&[]);
    assert!(admin_add(&inst, "chuo", ADMIN, "a long enough password").status.success());
    import(&inst);
    // One subscriber's carrier said "unknown user": the dashboard shows it.
    let gone = inst.subscriber("g@au.com").unwrap();
    inst.store().mark_undeliverable(gone.id, mamoru_core::now()).unwrap();
    // What a relay learned about docomo: the dashboard shows it beside the ceilings.
    use mamoru_store::relay::{LearnedLimits, PushBack, PushBackSignal};
    let learned = LearnedLimits {
        pool: "docomo".into(),
        connections: 1,
        connections_ceiling: 2,
        pace: 5.0,
        pace_ceiling: 10.0,
        sessions_mark: None,
        pace_mark: None,
        last_push_back: Some(PushBack { at: 1_800_000_000, signal: PushBackSignal::Sessions, code: 421, enhanced: "4.7.0".into() }),
        updated_at: 1_800_000_000,
    };
    inst.store().save_learned_limits(&[learned]).unwrap();
    let server = inst.serve();
    let addr = server.http;

    // Not logged in: to the login page.
    let r = http_h(addr, "GET", "/admin", &[], None);
    assert_eq!((r.status, r.header("Location")), (303, Some("/admin/login")));
    // Wrong passwords, then the ID is locked even for the right one.
    for _ in 0..5 {
        assert_eq!(http_h(addr, "POST", "/admin/login", &[], Some("login=chuo&password=wrong+password")).status, 401);
    }
    let locked = http_h(addr, "POST", "/admin/login", &[], Some("login=chuo&password=a+long+enough+password"));
    assert_eq!(locked.status, 429, "{}", locked.body);
    // The lock is a fixed 15-minute window; end it here instead of waiting.
    let db = rusqlite::Connection::open(inst.data_dir().join("mamoru.db")).unwrap();
    db.execute("DELETE FROM rate_limits WHERE scope = 'admin-login'", []).unwrap();
    drop(db);

    let ok = http_h(addr, "POST", "/admin/login", &[], Some("login=chuo&password=a+long+enough+password"));
    assert_eq!(ok.status, 303, "{}", ok.body);
    let set = ok.header("Set-Cookie").unwrap().to_string();
    for attr in ["__Host-mamoru_admin=", "Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(set.contains(attr), "{set}");
    }
    let cookie_pair = set.split(';').next().unwrap().to_string();
    let cookie = [("Cookie", cookie_pair.as_str())];

    let dash = http_h(addr, "GET", "/admin", &cookie, None);
    assert_eq!(dash.status, 200);
    assert!(dash.body.contains("<td>中央地区</td><td>2</td><td>1</td><td>0</td><td>0</td><td>0</td><td>3</td>"), "{}", dash.body);
    assert!(dash.body.contains("<tr><td>宛先不明（アドレスが存在しない）</td><td>1</td></tr>"), "{}", dash.body);
    // The running relay re-saved the pools with this instance's ceilings
    // (no pace limit configured); the learned connection cap and the
    // push-back stay.
    let docomo = "<tr><td>docomo</td><td>1 / 2</td><td>制限なし / 制限なし</td><td>2027年1月15日 17:00 接続数の超過 (421 4.7.0)</td></tr>";
    assert!(dash.body.contains(docomo), "{}", dash.body);
    assert!(dash.header("Strict-Transport-Security").is_some() && dash.header("Content-Security-Policy").is_some());
    let marker = "name=\"csrf\" value=\"";
    let csrf = dash.body.split(marker).nth(1).and_then(|r| r.split('"').next()).unwrap().to_string();
    assert_eq!(csrf.len(), 32);

    let compose = format!(
        "title={}&kind={}&district=1&district=3&text={}",
        form_escape("不審者"),
        form_escape("不審者情報"),
        form_escape("本日15時ごろ、公園で児童に声をかける男性がいました。")
    );
    let forged = http_h(addr, "POST", "/admin/compose", &cookie, Some(&compose));
    assert_eq!(forged.status, 403, "no CSRF token, no draft");
    let drafted = http_h(addr, "POST", "/admin/compose", &cookie, Some(&format!("csrf={csrf}&{compose}")));
    assert_eq!(drafted.status, 303, "{}", drafted.body);
    let alert_path = drafted.header("Location").unwrap().to_string();
    let preview = http_h(addr, "GET", &alert_path, &cookie, None);
    assert!(preview.body.contains("配信先: 4件") && preview.body.contains("配信する"), "{}", preview.body);
    let published = http_h(addr, "POST", &format!("{alert_path}/publish"), &cookie, Some(&format!("csrf={csrf}")));
    assert_eq!(published.status, 303, "{}", published.body);
    let alerts = wait_for("four alert mails", T, || {
        let v: Vec<(String, Vec<u8>)> = inst
            .mail_files()
            .into_iter()
            .map(|p| std::fs::read(p).unwrap())
            .filter(|raw| parse_mail(raw).subject.starts_with("【守るネット】[不審者情報]"))
            .map(|raw| (parse_mail(&raw).to.trim_matches(['<', '>']).to_string(), raw))
            .collect();
        (v.len() >= 4).then_some(v)
    });
    check_fanout(&alerts);
    let detail = http_h(addr, "GET", &alert_path, &cookie, None);
    assert!(detail.body.contains("配信状況") && detail.body.contains("<td>docomo</td>"), "{}", detail.body);
    assert!(http_h(addr, "GET", "/admin/alerts", &cookie, None).body.contains("不審者"));
    let audit = http_h(addr, "GET", "/admin/audit", &cookie, None).body;
    for action in ["admin-login-failed", "admin-login", "alert-drafted", "alert-published"] {
        assert!(audit.contains(action), "{action} in {audit}");
    }

    let out = http_h(addr, "POST", "/admin/logout", &cookie, Some(&format!("csrf={csrf}")));
    assert_eq!(out.status, 303);
    assert_eq!(http_h(addr, "GET", "/admin", &cookie, None).status, 303, "the session is gone");
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    let sid = cookie_pair.split('=').nth(1).unwrap();
    assert!(!log.contains(sid), "session id in the log");
}

/// Logs in and returns the cookie header value and the CSRF token.
fn panel_login(addr: std::net::SocketAddr, login: &str, password: &str) -> (String, String) {
    let ok = http_h(addr, "POST", "/admin/login", &[], Some(&format!("login={login}&password={}", form_escape(password))));
    assert_eq!(ok.status, 303, "{}", ok.body);
    let cookie = ok.header("Set-Cookie").unwrap().split(';').next().unwrap().to_string();
    let dash = http_h(addr, "GET", "/admin", &[("Cookie", &cookie)], None);
    let csrf = dash.body.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_string();
    (cookie, csrf)
}

#[test]
fn the_admin_panel_adds_and_disables_admins() {
    let inst = Instance::new(&[]);
    assert!(admin_add(&inst, "chuo", ADMIN, "a long enough password").status.success());
    let server = inst.serve();
    let addr = server.http;
    let (cookie, csrf) = panel_login(addr, "chuo", "a long enough password");
    let c = [("Cookie", cookie.as_str())];

    let page = http_h(addr, "GET", "/admin/admins", &c, None);
    assert!(page.body.contains("管理者を追加") && page.body.contains("s***@city.test"), "{}", page.body);
    assert!(!page.body.contains(ADMIN), "addresses are masked");
    let add = |login: &str, pw: &str, extra: &str, with_csrf: bool| {
        let token = if with_csrf { format!("csrf={csrf}&") } else { String::new() };
        let body = format!("{token}login={login}&email=pta%40school.test&password={}{extra}", form_escape(pw));
        http_h(addr, "POST", "/admin/admins/add", &c, Some(&body))
    };
    assert_eq!(add("kita", "a long enough password", "&district=2", false).status, 403, "no CSRF token, no admin");
    let short = add("kita", "short", "&district=2", true);
    assert_eq!(short.status, 400);
    assert!(short.body.contains("文字以上"), "{}", short.body);
    assert_eq!(add("bad id", "a long enough password", "", true).status, 400);
    assert_eq!(add("kita", "a long enough password", "&district=99", true).status, 400, "unknown district");
    let added = add("kita", "another long password", "&district=2", true);
    assert_eq!(added.status, 200, "{}", added.body);
    assert!(added.body.contains("kita を追加しました") && added.body.contains("<td>天応・吉浦地区</td>"), "{}", added.body);
    assert_eq!(add("kita", "another long password", "", true).status, 400, "login taken");
    let list = String::from_utf8_lossy(&inst.cmd().args(["admin", "list"]).output().unwrap().stdout).into_owned();
    assert!(list.contains("kita") && list.contains("p***@school.test"), "{list}");

    // The new admin logs in, but a district-limited admin manages no one.
    let (kcookie, kcsrf) = panel_login(addr, "kita", "another long password");
    let kc = [("Cookie", kcookie.as_str())];
    let theirs = http_h(addr, "GET", "/admin/admins", &kc, None);
    assert!(!theirs.body.contains("管理者を追加") && !theirs.body.contains("停止する"), "{}", theirs.body);
    let refused = http_h(addr, "POST", "/admin/admins/disable", &kc, Some(&format!("csrf={kcsrf}&login=chuo")));
    assert_eq!(refused.status, 403);

    // Nobody disables themselves; disabling ends the other's session.
    let own = http_h(addr, "POST", "/admin/admins/disable", &c, Some(&format!("csrf={csrf}&login=chuo")));
    assert_eq!(own.status, 400, "{}", own.body);
    let gone = http_h(addr, "POST", "/admin/admins/disable", &c, Some(&format!("csrf={csrf}&login=kita")));
    assert_eq!(gone.status, 200, "{}", gone.body);
    assert!(gone.body.contains("停止"), "{}", gone.body);
    assert_eq!(http_h(addr, "GET", "/admin", &kc, None).status, 303, "the disabled admin's session is over");
    let relogin = http_h(addr, "POST", "/admin/login", &[], Some("login=kita&password=another+long+password"));
    assert_eq!(relogin.status, 401);

    let audit = http_h(addr, "GET", "/admin/audit", &c, None).body;
    assert!(audit.contains("admin-added") && audit.contains("admin-disabled") && audit.contains("admin:chuo"), "{audit}");
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("pta@school.test"), "no address in the log");
}

#[test]
fn an_admin_changes_its_password_and_its_other_sessions_end() {
    let inst = Instance::new(&[]);
    assert!(admin_add(&inst, "chuo", ADMIN, "a long enough password").status.success());
    assert!(admin_add(&inst, "kita", "kita@city.test", "kita's long password").status.success());
    let server = inst.serve();
    let addr = server.http;
    let (phone, csrf) = panel_login(addr, "chuo", "a long enough password");
    let (pc, _) = panel_login(addr, "chuo", "a long enough password");
    let c = [("Cookie", phone.as_str())];
    let change = |current: &str, new: &str, again: &str| {
        let body = format!("csrf={csrf}&current={}&new={}&again={}", form_escape(current), form_escape(new), form_escape(again));
        http_h(addr, "POST", "/admin/password", &c, Some(&body))
    };
    assert!(http_h(addr, "GET", "/admin/password", &c, None).body.contains("今のパスワード"));
    assert_eq!(change("a long enough password", "new password one", "new password two").status, 400, "mismatch");
    assert_eq!(change("a long enough password", "short", "short").status, 400);
    let wrong = change("not my password", "a new long password", "a new long password");
    assert_eq!(wrong.status, 400);
    assert!(wrong.body.contains("今のパスワードが違います"), "{}", wrong.body);
    let ok = change("a long enough password", "a new long password", "a new long password");
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("パスワードを変更しました"), "{}", ok.body);
    // This session stays; the PC's session of the same admin ends.
    assert_eq!(http_h(addr, "GET", "/admin", &c, None).status, 200);
    assert_eq!(http_h(addr, "GET", "/admin", &[("Cookie", pc.as_str())], None).status, 303);
    assert_eq!(http_h(addr, "POST", "/admin/login", &[], Some("login=chuo&password=a+long+enough+password")).status, 401);
    panel_login(addr, "chuo", "a new long password");

    // A disabled admin is enabled again from the panel.
    let d = http_h(addr, "POST", "/admin/admins/disable", &c, Some(&format!("csrf={csrf}&login=kita")));
    assert!(d.body.contains("再開する"), "{}", d.body);
    let e = http_h(addr, "POST", "/admin/admins/enable", &c, Some(&format!("csrf={csrf}&login=kita")));
    assert_eq!(e.status, 200, "{}", e.body);
    panel_login(addr, "kita", "kita's long password");
    let audit = http_h(addr, "GET", "/admin/audit", &c, None).body;
    assert!(audit.contains("admin-password-changed") && audit.contains("sessions_ended=1") && audit.contains("admin-enabled"), "{audit}");
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("new long password"));
}

#[test]
fn one_client_guessing_across_many_ids_is_locked_out() {
    let metrics: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let inst = Instance::new(&[("metrics.listen", &format!("\"{metrics}\""))]);
    assert!(admin_add(&inst, "chuo", ADMIN, "a long enough password").status.success());
    let server = inst.serve();
    let addr = server.http;
    // Four wrong passwords for each of five IDs: no single ID reaches its
    // limit of five, but the client reaches its limit of twenty.
    for id in ["a", "b", "c", "d", "e"] {
        for _ in 0..4 {
            assert_eq!(http_h(addr, "POST", "/admin/login", &[], Some(&format!("login={id}&password=guess+guess+guess"))).status, 401);
        }
    }
    let locked = http_h(addr, "POST", "/admin/login", &[], Some("login=chuo&password=a+long+enough+password"));
    assert_eq!(locked.status, 429, "{}", locked.body);
    // Counted as a refusal by the login limit, without the ID.
    let exposition = http(metrics, "GET", "/metrics", None).body;
    assert!(exposition.lines().any(|l| l == "mamoru_rate_limit_refusals_total{limit=\"admin-login\"} 1"), "{exposition}");
    assert!(!exposition.contains("chuo") && !exposition.contains("login=\"a\""), "{exposition}");
    // The counter row holds a keyed hash, not the client's address.
    let db = rusqlite::Connection::open(inst.data_dir().join("mamoru.db")).unwrap();
    let key: Vec<u8> = db.query_row("SELECT key FROM rate_limits WHERE scope = 'admin-login-client'", [], |r| r.get(0)).unwrap();
    assert_eq!(key.len(), 32);
    assert!(!key.windows(4).any(|w| w == [127, 0, 0, 1]));
    db.execute("DELETE FROM rate_limits WHERE scope = 'admin-login-client'", []).unwrap();
    drop(db);
    assert_eq!(http_h(addr, "POST", "/admin/login", &[], Some("login=chuo&password=a+long+enough+password")).status, 303);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn behind_a_proxy_failed_logins_count_per_forwarded_client() {
    let inst = Instance::new(&[("web.behind_tls_proxy", "true")]);
    assert!(admin_add(&inst, "chuo", ADMIN, "a long enough password").status.success());
    let server = inst.serve();
    let addr = server.http;
    let login = |xff: &str, id: &str, pw: &str| {
        let body = format!("login={id}&password={}", form_escape(pw));
        http_h(addr, "POST", "/admin/login", &[("X-Forwarded-For", xff)], Some(&body)).status
    };
    // One client behind the proxy guesses across IDs; what it puts in front
    // of the proxy's own entry does not change who it is.
    for i in 0..20 {
        let xff = if i % 2 == 0 { "203.0.113.5" } else { "198.51.100.1, 203.0.113.5" };
        assert_eq!(login(xff, &format!("id{}", i % 4), "guess guess guess"), 401);
    }
    assert_eq!(login("203.0.113.5", "chuo", "a long enough password"), 429);
    // Another client behind the same proxy is not locked out by it.
    assert_eq!(login("203.0.113.6", "chuo", "a long enough password"), 303);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn the_web_listener_speaks_https_with_the_configured_certificate() {
    let work = tempfile::tempdir().unwrap();
    let (cert, key) = (work.path().join("cert.pem"), work.path().join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let inst = Instance::new(&[
        ("web.tls_cert", &format!("\"{}\"", cert.display())),
        ("web.tls_key", &format!("\"{}\"", key.display())),
    ]);
    assert!(admin_add(&inst, "chuo", ADMIN, "a long enough password").status.success());
    let server = inst.serve();
    let url = format!("https://{}/admin/login", server.http);
    // curl is an independent TLS client; it trusts only the test's certificate.
    let curl = |args: &[&str]| {
        let out = Command::new("curl").args(["-sS", "--max-time", "20", "--cacert"]).arg(&cert).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (ok, page) = curl(&["-w", "\n%{http_code}", &url]);
    assert!(ok && page.ends_with("\n200") && page.contains("管理者ログイン"), "{page}");
    let (ok, headers) = curl(&["-D", "-", "-o", "/dev/null", "--data", "login=chuo&password=a+long+enough+password", &url]);
    assert!(ok, "{headers}");
    let lower = headers.to_ascii_lowercase();
    assert!(lower.contains("set-cookie: __host-mamoru_admin=") && lower.contains("secure") && lower.contains("strict-transport-security"), "{headers}");
    // Plain HTTP on the TLS port gets nowhere.
    let plain = Command::new("curl").args(["-sS", "--max-time", "5", &format!("http://{}/", server.http)]).output().unwrap();
    assert!(!plain.status.success());
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

/// `mamoru alert ARGS…` with `text` on stdin; the alert number it printed.
fn alert_cli(inst: &Instance, args: &[&str], text: &str) -> (i64, String) {
    let mut cmd = inst.cmd();
    cmd.arg("alert").args(args);
    let out = run_with_stdin(cmd, text.as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let id = stdout.strip_prefix("alert ").and_then(|r| r.split(':').next()).and_then(|n| n.parse().ok()).expect("an alert number");
    (id, stdout)
}

/// Every delivered message whose subject starts with `prefix`, with its
/// raw bytes, once there are `n`.
fn delivered(inst: &Instance, prefix: &str, n: usize) -> Vec<(Mail, Vec<(String, String)>)> {
    wait_for(&format!("{n} mails starting {prefix}"), T, || {
        let v: Vec<_> = inst
            .mail_files()
            .into_iter()
            .map(|p| std::fs::read(p).unwrap())
            .filter(|raw| parse_mail(raw).subject.starts_with(prefix))
            .map(|raw| {
                let headers = mailparse::parse_mail(&raw).unwrap().headers.iter().map(|h| (h.get_key(), h.get_value())).collect();
                (parse_mail(&raw), headers)
            })
            .collect();
        (v.len() >= n).then_some(v)
    })
}

#[test]
fn followups_thread_under_the_report_reach_its_recipients_only_and_a_retraction_stops_the_rest() {
    let inst = Instance::new(&[]);
    assert!(admin_add(&inst, "chuo", ADMIN, "a long enough password").status.success());
    import(&inst);
    let report_args = ["post", "--admin", "chuo", "--title", "不審者", "--kind", "不審者情報", "--districts", "中央, 3", "--yes"];
    let (report, _) = alert_cli(&inst, &report_args, "本日15時ごろ、公園で児童に声をかける男性がいました。");
    let server = inst.serve();
    let firsts = delivered(&inst, "【守るネット】[不審者情報]", 4);
    let original_id = |to: &str| firsts.iter().find(|(m, _)| m.to.contains(to)).map(|(m, _)| m.message_id.clone()).unwrap();
    // c@ezweb.ne.jp leaves with the one-click link of its copy; f@docomo.ne.jp
    // (district 2) chooses district 1 too: neither gets the follow-up.
    let c = &firsts.iter().find(|(m, _)| m.to.contains("c@ezweb.ne.jp")).unwrap().1;
    let unsubscribe = c.iter().find(|(k, _)| k == "List-Unsubscribe").unwrap().1.trim_matches(['<', '>']).to_string();
    let path = &unsubscribe[unsubscribe.find("/u/").unwrap()..];
    assert_eq!(http(server.http, "POST", path, Some("List-Unsubscribe=One-Click")).status, 200);
    let f = inst.subscriber("f@docomo.ne.jp").unwrap().id;
    let db = rusqlite::Connection::open(inst.data_dir().join(mamoru_store::DB_FILE)).unwrap();
    db.execute("INSERT INTO subscriber_districts (subscriber_id, district_id) VALUES (?1, 1)", [f]).unwrap();

    let followup = |id: i64, kind: &str, text: &str| {
        let id = id.to_string();
        alert_cli(&inst, &["followup", id.as_str(), "--admin", "chuo", "--kind", kind, "--yes"], text)
    };
    let (update, out) = followup(report, "update", "男は北の方へ立ち去りました。");
    assert!(out.contains("published to 3 subscribers"), "{out}");
    let updates = delivered(&inst, "【続報】【守るネット】[不審者情報] 不審者（中央地区、昭和地区）", 3);
    let mut to: Vec<String> = updates.iter().map(|(m, _)| m.to.trim_matches(['<', '>']).to_string()).collect();
    to.sort();
    assert_eq!(to, ["a..b.@docomo.ne.jp", "d@i.softbank.jp", "e@docomo.ne.jp"]);
    for (m, h) in &updates {
        let get = |k: &str| h.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone()).unwrap_or_default();
        let parent = original_id(m.to.trim_matches(['<', '>']));
        assert_eq!(get("In-Reply-To"), parent, "threads under the subscriber's copy");
        assert_eq!(get("References"), parent);
        assert!(m.message_id.starts_with(&format!("<alert.{update}.")), "{}", m.message_id);
        assert!(m.body.contains("配信のお知らせの続報です。") && m.body.contains("北の方へ立ち去りました"), "{}", m.body);
    }
    let atom = http(server.http, "GET", "/alerts.atom", None).body;
    assert_eq!(atom.matches("<entry>").count(), 1, "one entry per incident: {atom}");
    assert!(atom.contains("<title>【続報】[不審者情報] 不審者（中央地区、昭和地区）</title>") && atom.contains("北の方へ"), "{atom}");
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");

    // A second report goes out to 中央 while one copy is sent and the other
    // still waits (as a relay leaves it between two claims); its 取消 stops
    // the waiting one and reaches only the subscriber who got the report.
    let args = ["post", "--admin", "chuo", "--title", "声かけ", "--districts", "中央", "--yes"];
    let (second, out) = alert_cli(&inst, &args, "駅前で声かけがありました。");
    assert!(out.contains("published to 3 subscribers"), "a, e and f (now in 中央): {out}");
    let store = inst.store();
    let claimed = store.claim_due(mamoru_core::now(), 60, 100).unwrap();
    let mut copies: Vec<_> = claimed.iter().filter(|m| m.alert.is_some_and(|a| a.alert_id.get() == second)).collect();
    copies.sort_by_key(|m| m.id);
    let got_it = copies[0].recipient.as_str().to_string();
    store.mark_sent(copies[0].id, mamoru_core::now()).unwrap();
    for m in claimed.iter().filter(|m| m.id != copies[0].id) {
        store.mark_retry(m.id, 0, "").unwrap();
    }
    let (_, out) = followup(second, "retracted", "誤って配信しました。");
    assert!(out.contains("published to 1 subscribers"), "{out}");
    let server = inst.serve();
    let retractions = delivered(&inst, "【取消】【守るネット】声かけ（中央地区）", 1);
    assert_eq!(retractions[0].0.to.trim_matches(['<', '>']), got_it);
    let states = |id: i64| -> Vec<(String, i64)> {
        let p = inst.store().alert_progress(mamoru_core::AlertId::new(id)).unwrap();
        let mut by: Vec<(String, i64)> = vec![];
        for (_, s, n) in p {
            match by.iter_mut().find(|(k, _)| *k == s) {
                Some(e) => e.1 += n,
                None => by.push((s, n)),
            }
        }
        by.sort();
        by
    };
    assert_eq!(states(second), [("cancelled".to_string(), 2), ("sent".to_string(), 1)]);
    let atom = http(server.http, "GET", "/alerts.atom", None).body;
    assert_eq!(atom.matches("<entry>").count(), 2, "{atom}");
    assert!(atom.contains("<title>【取消】声かけ（中央地区）</title>"), "{atom}");
    // 取消 is final: the CLI says why and exits 1.
    let mut cmd = inst.cmd();
    cmd.args(["alert", "followup", &second.to_string(), "--admin", "chuo", "--kind", "update", "--yes"]);
    let late = run_with_stdin(cmd, "まだ何か".as_bytes());
    assert_eq!(late.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&late.stderr).contains("取り消し済み"));
    let show = inst.cmd().args(["alert", "show", &report.to_string()]).output().unwrap();
    let show = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(show.contains("published, update") && show.contains(&format!("follow-up {update}: update")), "{show}");
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    assert!(inst.mail_files().iter().all(|p| !parse_mail(&std::fs::read(p).unwrap()).subject.starts_with("【守るネット】声かけ")), "no stopped copy went out");
}

#[test]
fn the_incident_time_is_in_the_mail_and_alert_show_records_incident_publication_and_delivery() {
    use mamoru_core::jst;
    let inst = Instance::new(&[]);
    assert!(admin_add(&inst, "chuo", ADMIN, "a long enough password").status.success());
    import(&inst);
    let occurred = mamoru_core::now() - 40 * 60;
    let c = jst::civil(occurred);
    let when = format!("{}/{} {}:{:02}ごろ", c.month, c.day, c.hour, c.minute);
    let args = ["post", "--admin", "chuo", "--title", "不審者", "--districts", "3", "--occurred", when.as_str(), "--yes"];
    let (id, _) = alert_cli(&inst, &args, "公園で声かけがありました。");
    let (unknown, _) = alert_cli(&inst, &["post", "--admin", "chuo", "--title", "声かけ", "--districts", "2", "--yes"], "駅前で。");
    let server = inst.serve();
    let mails = delivered(&inst, "【守るネット】不審者", 2);
    let published = inst.store().alert(mamoru_core::AlertId::new(id)).unwrap().unwrap().published_at;
    let expected = mamoru_core::alert::timing_line(&mamoru_core::alert::Occurred { at: occurred - occurred % 60, flags: 1 }, published);
    assert!(expected.contains("ごろ発生・"), "{expected}");
    for (m, _) in &mails {
        assert!(m.body.contains(&format!("■{expected}")), "{}", m.body);
    }
    let other = delivered(&inst, "【守るネット】声かけ", 1);
    assert!(other[0].0.body.contains("■発生日時不明・"), "never the post time: {}", other[0].0.body);
    // An incident two days old needs a confirmation: --confirm-stale with
    // --yes, the checkbox on the publish page.
    let old = jst::civil(mamoru_core::now() - 2 * 86_400);
    let old = format!("{}/{}/{} 8:00", old.year, old.month, old.day);
    let post_old = |extra: &[&str]| {
        let mut cmd = inst.cmd();
        cmd.args(["alert", "post", "--admin", "chuo", "--title", "古い件", "--districts", "10", "--occurred", old.as_str()]).args(extra);
        run_with_stdin(cmd, "おととい".as_bytes())
    };
    let refused = post_old(&["--yes"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--confirm-stale"));
    let ok = post_old(&["--yes", "--confirm-stale"]);
    assert!(String::from_utf8_lossy(&ok.stdout).contains("published to 1 subscribers"), "{}", String::from_utf8_lossy(&ok.stderr));
    let drafted = post_old(&[]);
    assert!(drafted.status.success());
    // The refused and the confirmed post were drafted too, each with its own
    // preview: wait for this draft's, by its Message-ID.
    let drafted = String::from_utf8_lossy(&drafted.stdout).into_owned();
    let old_id = drafted.strip_prefix("alert ").and_then(|r| r.split(':').next()).expect("alert id").to_string();
    let preview = wait_for("the preview of the old incident", T, || {
        inst.mail_files()
            .into_iter()
            .map(|p| parse_mail(&std::fs::read(p).unwrap()))
            .find(|m| m.subject.contains("配信の確認") && m.message_id.contains(&format!("preview.{old_id}.")))
    });
    let path = publish_path(&preview.body);
    let page = http(server.http, "GET", &path, None);
    assert!(page.body.contains("name=\"stale\"") && page.body.contains("時間がたっています"), "{}", page.body);
    assert_eq!(http(server.http, "POST", &path, Some("")).status, 400, "not without the confirmation");
    let done = http(server.http, "POST", &path, Some("stale=1"));
    assert_eq!(done.status, 200, "{}", done.body);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    let show = inst.cmd().args(["alert", "show", &id.to_string()]).output().unwrap();
    let show = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(show.contains(&format!("occurred: {} JST", mamoru_core::alert::Occurred { at: occurred - occurred % 60, flags: 1 }.label())), "{show}");
    assert!(show.contains("last delivered docomo:") && show.contains("last delivered SoftBank:"), "{show}");
    assert!(show.contains("incident to publication: 40 min") || show.contains("incident to publication: 39 min"), "{show}");
    let show = inst.cmd().args(["alert", "show", &unknown.to_string()]).output().unwrap();
    assert!(String::from_utf8_lossy(&show.stdout).contains("occurred: unknown"));
    let mut bad = inst.cmd();
    bad.args(["alert", "post", "--admin", "chuo", "--title", "t", "--districts", "1", "--occurred", "きのう", "--yes"]);
    let bad = run_with_stdin(bad, b"x");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("発生: きのう"));
}

/// Preferences through the real binary. a..b. (中央) is inside quiet hours
/// set around now, c (中央) turned 不審者情報 off, e (中央・昭和) chose
/// nothing: the preview counts them; a normal alert reaches e at once and a
/// only when the window ends; a 緊急 one reaches a and e at once; c gets
/// neither.
#[test]
fn quiet_hours_hold_a_normal_alert_until_they_end_and_an_urgent_one_goes_at_once() {
    let inst = Instance::new(&[]);
    assert!(admin_add(&inst, "chuo", ADMIN, "a long enough password").status.success());
    import(&inst);
    let store = inst.store();
    let a = inst.subscriber("a..b.@docomo.ne.jp").unwrap().id;
    let c = inst.subscriber("c@ezweb.ne.jp").unwrap().id;
    let now = mamoru_core::now();
    let minute = mamoru_core::jst::minute_of_day(now);
    // The window ends 20 to 80 seconds from now: long enough to see the copy
    // wait, short enough for a test.
    let ends = (minute + if now % 60 < 40 { 1 } else { 2 }) % 1440;
    let end_at = now - now % 60 + (ends - minute + 1440) % 1440 * 60;
    store.set_preferences(a, &[], Some(((minute + 1439) % 1440, ends)), now).unwrap();
    store.set_preferences(c, &["不審者情報".to_string()], None, now).unwrap();

    let kind = ["--admin", "chuo", "--kind", "不審者情報", "--districts", "中央"];
    let post = |title: &str, extra: &[&str]| {
        let args: Vec<&str> = ["post", "--title", title].into_iter().chain(kind).chain(extra.iter().copied()).collect();
        alert_cli(&inst, &args, "駅前で刃物を持った男が目撃されました。")
    };
    let (_, out) = post("下書き", &[]);
    assert!(out.contains("preview queued"), "{out}");
    let (_, out) = post("声かけ", &["--yes"]);
    assert!(out.contains("published to 2 subscribers"), "a (later) and e; not c: {out}");
    let (_, out) = post("刃物", &["--yes", "--urgent"]);
    assert!(out.contains("published to 2 subscribers"), "{out}");

    let server = inst.serve();
    let to = |mails: &[(Mail, Vec<(String, String)>)]| {
        let mut v: Vec<String> = mails.iter().map(|(m, _)| m.to.trim_matches(['<', '>']).to_string()).collect();
        v.sort();
        v
    };
    let preview = delivered(&inst, "【守るネット】配信の確認", 1);
    let body = &preview[0].0.body;
    assert!(body.contains("配信先: 2件"), "{body}");
    assert!(body.contains("すぐ届く方 1件・受け取らない時間帯が終わってから届く方 1件"), "{body}");
    assert!(body.contains("この種別を受け取らない設定の方 1件には届きません"), "{body}");
    let urgent = delivered(&inst, "【守るネット】【緊急】[不審者情報] 刃物", 2);
    assert_eq!(to(&urgent), ["a..b.@docomo.ne.jp", "e@docomo.ne.jp"], "緊急 ignores quiet hours");
    assert!(urgent[0].0.body.contains("■緊急"), "{}", urgent[0].0.body);
    let normal = delivered(&inst, "【守るネット】[不審者情報] 声かけ", 1);
    assert_eq!(to(&normal), ["e@docomo.ne.jp"], "a is still inside its quiet hours");
    assert!(mamoru_core::now() < end_at, "the window had not ended yet");

    let later = wait_for("the held copy", Duration::from_secs(150), || {
        let v = delivered(&inst, "【守るネット】[不審者情報] 声かけ", 1);
        (v.len() == 2).then(|| (v, mamoru_core::now()))
    });
    assert_eq!(to(&later.0), ["a..b.@docomo.ne.jp", "e@docomo.ne.jp"]);
    assert!(later.1 >= end_at, "delivered at {} before the window ended at {end_at}", later.1);
    let for_c = inst.mail_files().into_iter().map(|p| parse_mail(&std::fs::read(p).unwrap())).filter(|m| m.to.contains("c@ezweb.ne.jp")).count();
    assert_eq!(for_c, 0, "c turned 不審者情報 off");
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

/// A reply to the preview of a published alert, as a phone writes it (the
/// preview quoted below), is a 解決 of that alert: previewed like any post,
/// without the quote, and published to the report's recipients.
#[test]
fn a_reply_to_the_preview_is_a_follow_up_of_its_alert() {
    let inst = Instance::new(&[]);
    assert!(admin_add(&inst, "chuo", ADMIN, "a long enough password").status.success());
    import(&inst);
    let server = inst.serve();
    let sasl_ingest = |raw: &str| {
        let mut ingest = inst.cmd();
        ingest.args(["ingest", "--sender", ADMIN, "--recipient", "alert@mamoru.test", "--sasl-username=chuo"]);
        let out = run_with_stdin(ingest, raw.as_bytes());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    sasl_ingest(&post_text("r1@city.test"));
    let preview = delivered(&inst, "【守るネット】配信の確認", 1).remove(0).0;
    assert!(preview.message_id.starts_with("<preview."), "{}", preview.message_id);
    assert_eq!(http(server.http, "POST", &publish_path(&preview.body), Some("")).status, 200);
    delivered(&inst, "【守るネット】[不審者情報] 不審者", 4);

    let reply = format!(
        "From: {ADMIN}\r\nTo: alert@mamoru.test\r\nSubject: Re: =?UTF-8?B?5LiN5a+p6ICF?=\r\nMessage-ID: <r2@city.test>\r\n\
         In-Reply-To: {id}\r\nReferences: {id}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\n\
         解決\r\n声をかけていたのは保護者の方でした。\r\n\r\n> 配信の確認です。まだ送信されていません。\r\n> 地区: 中央\r\n",
        id = preview.message_id
    );
    sasl_ingest(&reply);
    let second = wait_for("the follow-up's preview", T, || {
        let v = delivered(&inst, "【守るネット】配信の確認", 1);
        v.into_iter().map(|(m, _)| m).find(|m| m.subject.contains("【解決】"))
    });
    assert!(second.body.contains("保護者の方でした"), "{}", second.body);
    assert!(!second.body.contains("> 地区"), "the quote is not part of it: {}", second.body);
    assert_eq!(http(server.http, "POST", &publish_path(&second.body), Some("")).status, 200);
    let resolved = delivered(&inst, "【解決】【守るネット】[不審者情報] 不審者", 4);
    assert!(resolved.iter().all(|(m, _)| m.body.contains("は解決しました。")), "{}", resolved[0].0.body);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}
