//! The pages in a real headless Chromium (Debian `chromium` and
//! `chromium-driver`, driven by `browser.py` with python3-selenium) at a
//! phone-sized viewport: a parent registers through the link of a 登録受付
//! mail, an admin publishes from the link of a preview mail, and the alert
//! reaches the parent; then the admin logs in to the panel, composes,
//! previews and publishes a second alert. Screenshots go to a temp dir, and to
//! `docs/screenshots/` when `MAMORU_UPDATE_SCREENSHOTS=1`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

const T: Duration = Duration::from_secs(30);
const ADMIN: &str = "staff@city.test";
const PARENT: &str = "hanako.@ezweb.ne.jp";
/// A second parent, registered over plain HTTP, whose manage page the
/// browser changes.
const OTHER: &str = "taro@docomo.ne.jp";

fn mail_with(inst: &Instance, subject: &str) -> Option<Mail> {
    inst.mail_files().into_iter().map(|p| std::fs::read(p).unwrap()).map(|raw| parse_mail(&raw)).find(|m| m.subject.contains(subject))
}

#[test]
fn register_and_publish_in_a_real_chromium() {
    let work = tempfile::tempdir().unwrap();
    let inst = Instance::new(&[]);
    let mut add = inst.cmd();
    add.args(["admin", "add", "chuo", "--email", ADMIN]);
    assert!(run_with_stdin(add, b"a long enough password\n").status.success());
    let server = inst.serve();
    let base = format!("http://{}", server.http);

    assert!(inst.ingest(PARENT, "ans@mamoru.test", b"From: hanako.@ezweb.ne.jp\r\nSubject: \r\n\r\n").status.success());
    let received = wait_for("登録受付", T, || mail_with(&inst, "登録受付"));
    let register = link_path(&received.body);

    assert!(inst.ingest(OTHER, "ans@mamoru.test", b"From: taro@docomo.ne.jp\r\nSubject: \r\n\r\n").status.success());
    let to_other = |subject: &str| {
        inst.mail_files().into_iter().map(|p| parse_mail(&std::fs::read(p).unwrap())).find(|m| m.subject.contains(subject) && m.to.contains(OTHER))
    };
    let other_link = link_path(&wait_for("登録受付 for the second parent", T, || to_other("登録受付")).body);
    assert_eq!(http(server.http, "POST", &other_link, Some("district=2")).status, 200);
    let done = wait_for("登録完了 for the second parent", T, || to_other("登録完了"));
    let start = done.body.find("/m/").expect("a manage link in 登録完了");
    let manage = done.body[start..].split_whitespace().next().unwrap().to_string();

    let post = "From: staff@city.test\r\nTo: alert@mamoru.test\r\nSubject: =?UTF-8?B?5LiN5a+p6ICF?=\r\nMessage-ID: <b1@city.test>\r\n\
                Content-Type: text/plain; charset=UTF-8\r\n\r\n地区: 昭和\r\n本日15時ごろ、公園で児童に声をかける男性がいました。\r\n";
    let mut ingest = inst.cmd();
    ingest.args(["ingest", "--sender", ADMIN, "--recipient", "alert@mamoru.test", "--sasl-username=chuo"]);
    assert!(run_with_stdin(ingest, post.as_bytes()).status.success());
    let preview = wait_for("the preview", T, || mail_with(&inst, "配信の確認"));
    let start = preview.body.find("/p/").unwrap();
    let publish = preview.body[start..].split_whitespace().next().unwrap().to_string();

    let shots = work.path().join("shots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/browser.py");
    // Debian's python3-selenium lives in the system interpreter.
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .args([&base, &register, &publish])
        .arg(&shots)
        .arg(work.path().join("profile"))
        .args(["chuo", "a long enough password"])
        .arg(&manage)
        .output()
        .expect("run browser.py (scripts/install-test-deps installs chromium, chromium-driver, python3-selenium)");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(log.contains("registered: 登録が完了しました"), "{log}");
    assert!(log.contains("publish-page: 配信の確認"), "{log}");
    assert!(log.contains("published: 配信しました"), "{log}");
    assert!(log.contains("archive:") && log.contains("公園で児童に声をかける"), "{log}");

    assert!(log.contains("register-defaults: kinds=不審者情報,不審電話情報,その他 quiet=-"), "{log}");
    // The manage page kept what the browser saved, and so did the store.
    assert!(log.contains("manage-saved: 登録内容を変更しました"), "{log}");
    assert!(log.contains("manage-reloaded: kinds=不審者情報,その他 quiet=1320-420"), "{log}");
    let other = inst.subscriber(OTHER).expect("registered").id;
    let db = rusqlite::Connection::open(inst.data_dir().join(mamoru_store::DB_FILE)).unwrap();
    let quiet: (i64, i64) = db.query_row("SELECT quiet_start, quiet_end FROM subscribers WHERE id = ?1", [other], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    let off: String = db.query_row("SELECT group_concat(kind) FROM subscriber_kinds_off WHERE subscriber_id = ?1", [other], |r| r.get(0)).unwrap();
    assert_eq!((quiet, off.as_str()), ((1320, 420), "不審電話情報"));

    let s = inst.subscriber(PARENT).expect("registered");
    assert_eq!((s.status.as_str(), s.districts), ("active", vec![1, 3]));
    let alert = wait_for("the alert to the parent", T, || {
        inst.mail_files().into_iter().map(|p| parse_mail(&std::fs::read(p).unwrap())).find(|m| m.subject.starts_with("【守るネット】不審者"))
    });
    assert!(alert.to.contains(PARENT) && alert.body.contains("/u/"), "{}", alert.body);
    assert!(log.contains("admin-preview: 配信の確認") && log.contains("配信先: 1件"), "{log}");
    assert!(log.contains("admin-published: 配信の詳細"), "{log}");
    assert!(log.contains("admin-admins:") && log.contains("pta-kita p***@school.example 天応・吉浦地区 有効"), "{log}");
    wait_for("the panel's alert to the parent", T, || {
        inst.mail_files().into_iter().map(|p| parse_mail(&std::fs::read(p).unwrap())).find(|m| m.subject.starts_with("【守るネット】不審な電話"))
    });

    for name in ["manage", "manage-preferences", "manage-saved", "top", "register", "register-preferences", "registered", "publish", "alerts", "admin-login", "admin-dashboard", "admin-compose", "admin-preview", "admin-published", "admin-admins"] {
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
