//! "Did it arrive?" with the real binary: a parent's 受信テスト reaches an
//! SMTP sink and its 届きました link confirms it; an unconfirmed test leads
//! to the help of the parent's carrier; a parent fixes a district right
//! after registering; an alert's 確認しました link counts each copy once,
//! and after the window the database holds counts and nothing that links a
//! subscriber to a confirmation.

use std::time::Duration;

use rusqlite::Connection;

use crate::support::*;

const T: Duration = Duration::from_secs(30);

/// The `/x/TOKEN` path of the first link of that kind in a body.
fn path_of(body: &str, prefix: &str) -> String {
    let start = body.find(prefix).unwrap_or_else(|| panic!("a {prefix} link in:\n{body}"));
    body[start..].split_whitespace().next().expect("link").to_string()
}

/// The sink's mails to `to` whose subject contains `subject`.
fn sink_mail(sink: &SmtpSink, to: &str, subject: &str) -> Option<Mail> {
    sink.messages()
        .into_iter()
        .filter(|(rcpts, _)| rcpts.iter().any(|r| r == to))
        .map(|(_, raw)| parse_mail(&raw))
        .find(|m| m.subject.contains(subject))
}

/// Asks for a test on the top page; returns the waiting page's path.
fn ask_test(server: &Server, addr: &str) -> String {
    let r = http(server.http, "POST", "/test", Some(&format!("address={}", addr.replace('@', "%40"))));
    assert_eq!(r.status, 303, "{}", r.body);
    let location = r.header("Location").expect("a Location").to_string();
    assert!(location.starts_with("/w/"), "{location}");
    location
}

#[test]
fn a_test_mail_reaches_the_sink_and_its_link_says_reception_works() {
    let work = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&work.path().join("sink"));
    let inst = Instance::new(&[("relay.transport", &format!("\"smtp://127.0.0.1:{}\"", sink.port))]);
    let server = inst.serve();
    let addr = "hanako.@ezweb.ne.jp";

    // The top page offers the test and the help.
    let top = http(server.http, "GET", "/", None);
    assert!(top.body.contains("action=\"/test\"") && top.body.contains("href=\"/help/au\""), "{}", top.body);
    assert!(top.body.contains("登録受付メールが届かないとき"), "{}", top.body);

    let waiting = ask_test(&server, addr);
    let page = http(server.http, "GET", &waiting, None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("テストメールを送りました") && page.body.contains("http-equiv=\"refresh\""), "{}", page.body);

    let mail = wait_for("the test mail at the sink", T, || sink_mail(&sink, addr, "受信テスト"));
    let arrived = path_of(&mail.body, "/t/");
    // A scanner's GET shows the button and confirms nothing.
    for _ in 0..3 {
        let g = http(server.http, "GET", &arrived, None);
        assert!(g.status == 200 && g.body.contains("届きました</button>"), "{}", g.body);
    }
    assert!(http(server.http, "GET", &waiting, None).body.contains("テストメールを送りました"));
    // The waiting page's token does not confirm, the mail's does.
    let forged = format!("/t/{}", waiting.trim_start_matches("/w/"));
    assert_eq!(http(server.http, "POST", &forged, Some("")).status, 410);
    let done = http(server.http, "POST", &arrived, Some(""));
    assert!(done.status == 200 && done.body.contains("受信できています"), "{}", done.body);
    let page = http(server.http, "GET", &waiting, None);
    assert!(page.body.contains("受信できています") && !page.body.contains("http-equiv"), "{}", page.body);

    // A second test to the same mailbox at once is refused (no bombing).
    let again = http(server.http, "POST", "/test", Some("address=hanako.%40ezweb.ne.jp"));
    assert_eq!(again.status, 429, "{}", again.body);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("hanako"), "address in clear in the log");
}

#[test]
fn an_unconfirmed_test_leads_to_the_help_of_the_parents_carrier() {
    let inst = Instance::new(&[("tokens.reception_wait_secs", "2")]);
    let server = inst.serve();
    let waiting = ask_test(&server, "taro@docomo.ne.jp");
    wait_for("the test mail", T, || inst.mail_files().into_iter().next());
    let page = wait_for("the help", T, || {
        let p = http(server.http, "GET", &waiting, None);
        p.body.contains("まだ届いていません").then_some(p)
    });
    assert!(page.body.contains("ドコモ(docomo)の設定"), "{}", page.body);
    assert!(page.body.contains("受信リスト設定") && page.body.contains("「mamoru.test」と入力します"), "{}", page.body);
    assert!(page.body.contains("href=\"/help/docomo\""), "{}", page.body);
    // Each help page stands alone, printable, with our domain in its steps.
    let help = http(server.http, "GET", "/help/docomo", None);
    assert!(help.status == 200 && help.body.contains("「mamoru.test」"), "{}", help.body);
    assert_eq!(http(server.http, "GET", "/help/nokia", None).status, 404);
    assert!(http(server.http, "GET", "/help/", None).body.contains("href=\"/help/gmail\""));
    // The 登録受付 mail links the help of its carrier.
    let from = "jiro@softbank.ne.jp";
    let out = inst.ingest(from, "ans@mamoru.test", format!("From: {from}\nSubject: \n\n").as_bytes());
    assert_eq!(out.status.code(), Some(0));
    let received = wait_for("登録受付", T, || {
        inst.mail_files().into_iter().map(|p| parse_mail(&std::fs::read(p).unwrap())).find(|m| m.subject.contains("登録受付"))
    });
    assert!(received.body.contains("/help/softbank"), "{}", received.body);
}

#[test]
fn a_parent_fixes_a_district_right_after_registering() {
    // The default cooldown (300 s) applies.
    let inst = Instance::new(&[]);
    let server = inst.serve();
    let addr = "hanako@au.com";
    let mails = |subject: &str| {
        inst.mail_files().into_iter().map(|p| parse_mail(&std::fs::read(p).unwrap())).filter(|m| m.subject.contains(subject)).collect::<Vec<_>>()
    };
    let empty = format!("From: {addr}\nSubject: \n\n");
    assert_eq!(inst.ingest(addr, "ans@mamoru.test", empty.as_bytes()).status.code(), Some(0));
    let received = wait_for("登録受付", T, || mails("登録受付").into_iter().next());
    assert_eq!(http(server.http, "POST", &link_path(&received.body), Some("district=1")).status, 200);
    let completed = wait_for("登録完了", T, || mails("登録完了").into_iter().next());
    // 登録完了 carries the manage link itself.
    let manage = path_of(&completed.body, "/m/");
    assert_eq!(http(server.http, "POST", &manage, Some("action=update&district=3")).status, 200);
    assert_eq!(inst.subscriber(addr).unwrap().districts, vec![3]);
    // The manage page sends a 受信テスト to the registered address.
    let asked = http(server.http, "POST", &manage, Some("action=test"));
    assert!(asked.status == 303 && asked.header("Location").is_some_and(|l| l.starts_with("/w/")), "{}", asked.body);
    let test = wait_for("the manage page's test mail", T, || mails("受信テスト").into_iter().next());
    assert!(test.to.contains(addr), "{}", test.to);
    // And a second empty mail within the cooldown gets its answer.
    assert_eq!(inst.ingest(addr, "ans@mamoru.test", empty.as_bytes()).status.code(), Some(0));
    wait_for("登録内容の変更", T, || mails("登録内容の変更").into_iter().next());
    // A third one is within the cooldown again: no mail.
    assert_eq!(inst.ingest(addr, "ans@mamoru.test", empty.as_bytes()).status.code(), Some(0));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(mails("登録内容の変更").len(), 1);
}

#[test]
fn a_confirmation_counts_once_and_only_counts_outlive_the_window() {
    let inst = Instance::new(&[("alerts.confirm_ttl_secs", "6")]);
    let mut add = inst.cmd();
    add.args(["admin", "add", "chuo", "--email", "staff@city.test"]);
    assert!(run_with_stdin(add, b"a long enough password\n").status.success());
    let mut server = inst.serve();
    let mails = |subject: &str| {
        inst.mail_files().into_iter().map(|p| parse_mail(&std::fs::read(p).unwrap())).filter(|m| m.subject.contains(subject)).collect::<Vec<_>>()
    };
    for addr in ["a@ezweb.ne.jp", "b@docomo.ne.jp"] {
        assert_eq!(inst.ingest(addr, "ans@mamoru.test", format!("From: {addr}\nSubject: \n\n").as_bytes()).status.code(), Some(0));
        let r = wait_for("登録受付", T, || mails("登録受付").into_iter().find(|m| m.to.contains(addr)));
        assert_eq!(http(server.http, "POST", &link_path(&r.body), Some("district=3")).status, 200);
    }
    let mut post = inst.cmd();
    post.args(["alert", "post", "--admin", "chuo", "--title", "声かけ", "--districts", "昭和", "--confirm", "--yes"]);
    let out = run_with_stdin(post, "本日15時ごろ、公園で児童に声をかける男性がいました。".as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let copy = wait_for("the au copy", T, || mails("声かけ").into_iter().find(|m| m.to.contains("a@ezweb.ne.jp")));
    let link = path_of(&copy.body, "/k/");
    let db = || Connection::open(inst.data_dir().join("mamoru.db")).unwrap();
    let counts = || -> Vec<(i64, String, i64)> {
        let db = db();
        let mut st = db.prepare("SELECT district_id, carrier, confirmed FROM confirm_counts ORDER BY 1, 2").unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
    };
    // A scanner's GETs count nothing.
    for _ in 0..3 {
        let g = http(server.http, "GET", &link, None);
        assert!(g.status == 200 && g.body.contains("確認しました</button>"), "{}", g.body);
    }
    assert!(counts().is_empty());
    // Pressed twice, then from a forwarded copy (the same link in a
    // quoted body): counted once.
    assert_eq!(http(server.http, "POST", &link, Some("")).status, 200);
    assert_eq!(http(server.http, "POST", &link, Some("")).status, 200);
    let forwarded = format!("---------- Forwarded message ---------\n> {}", copy.body.replace('\n', "\n> "));
    assert_eq!(http(server.http, "POST", &path_of(&forwarded, "/k/"), Some("")).status, 200);
    assert_eq!(counts(), vec![(3, "au".to_string(), 1)]);
    let seen: i64 = db().query_row("SELECT COUNT(*) FROM confirm_seen", [], |r| r.get(0)).unwrap();
    assert_eq!(seen, 1);

    // After the window: the link is closed; a restarted server's
    // housekeeping leaves the counts and nothing else.
    wait_for("the window to end", T, || (http(server.http, "POST", &link, Some("")).status == 410).then_some(()));
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    server = inst.serve();
    wait_for("the seen-set to go", T, || {
        let n: i64 = db().query_row("SELECT COUNT(*) FROM confirm_seen", [], |r| r.get(0)).unwrap();
        (n == 0).then_some(())
    });
    assert_eq!(counts(), vec![(3, "au".to_string(), 1)]);
    // No table of confirmations has a column naming a subscriber or a copy.
    let db = db();
    for table in ["confirm_counts", "confirm_seen"] {
        let mut st = db.prepare(&format!("SELECT name FROM pragma_table_info('{table}')")).unwrap();
        let cols: Vec<String> = st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        assert!(!cols.iter().any(|c| c.contains("subscriber") || c.contains("outbox")), "{table}: {cols:?}");
    }
    let audit: i64 = db.query_row("SELECT COUNT(*) FROM audit_log WHERE action LIKE '%confirm%'", [], |r| r.get(0)).unwrap();
    assert_eq!(audit, 0, "no audit row per confirmation");
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn test_and_help_pages_in_a_real_chromium() {
    use std::path::Path;
    use std::process::Command;
    let work = tempfile::tempdir().unwrap();
    // The meta refresh reloads every 15 s; the help shows after 10.
    let inst = Instance::new(&[("tokens.reception_wait_secs", "10")]);
    let server = inst.serve();
    let base = format!("http://{}", server.http);
    // A test of another address, whose mailed link the browser opens.
    ask_test(&server, "hanako@ezweb.ne.jp");
    let mail = wait_for("the test mail", T, || {
        inst.mail_files().into_iter().map(|p| parse_mail(&std::fs::read(p).unwrap())).find(|m| m.subject.contains("受信テスト"))
    });
    let arrived = path_of(&mail.body, "/t/");
    let shots = work.path().join("shots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/reception_browser.py");
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .args([&base, &arrived])
        .arg(&shots)
        .arg(work.path().join("profile"))
        .output()
        .expect("run reception_browser.py (scripts/install-test-deps installs chromium, chromium-driver, python3-selenium)");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(log.contains("waiting: テストメールを送りました"), "{log}");
    assert!(log.contains("受信リスト設定") && log.contains("「mamoru.test」と入力します"), "{log}");
    assert!(log.contains("arrived: 受信できています"), "{log}");
    assert!(log.contains("help-gmail: Gmailの受信設定"), "{log}");
    let names = ["test-waiting", "test-help", "test-arrived-confirm", "test-arrived", "help-docomo", "help-au", "help-softbank", "help-ymobile", "help-iphone", "help-android", "help-gmail", "help-index"];
    for name in names {
        let png = std::fs::read(shots.join(format!("{name}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name}.png");
        if std::env::var_os("MAMORU_UPDATE_SCREENSHOTS").is_some() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
        }
    }
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}
