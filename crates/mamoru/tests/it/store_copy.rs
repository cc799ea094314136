//! `mamoru store copy --to URL`: an installation on SQLite moved to a real
//! PostgreSQL cluster, then served from there with `[store] url`.

use std::time::Duration;

use crate::support::*;

const T: Duration = Duration::from_secs(30);

fn empty_mail(from: &str) -> Vec<u8> {
    format!(
        "From: {from}\nTo: ans@mamoru.test\nSubject: \nDate: Mon, 23 Nov 2026 08:00:00 +0900\n\
         Message-ID: <{}.copy@test>\nMIME-Version: 1.0\nContent-Type: text/plain\n\n",
        from.replace('@', ".")
    )
    .into_bytes()
}

/// Rows per table in the command's output: `table sqlite postgresql`.
fn counts(stdout: &str) -> Vec<(String, u64, u64)> {
    stdout
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "{l:?}");
            (f[0].to_owned(), f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect()
}

#[test]
fn an_sqlite_installation_moves_to_postgres_and_serves_from_there() {
    // On SQLite: one registration completed, one requested (its 登録受付
    // still queued when mamoru stops).
    let inst = Instance::new(&[]);
    let out = inst.ingest("hanako@docomo.ne.jp", "ans@mamoru.test", &empty_mail("hanako@docomo.ne.jp"));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let server = inst.serve();
    let first = wait_for("登録受付 .eml", T, || inst.mail_files().first().cloned());
    let link = link_path(&parse_mail(&std::fs::read(&first).unwrap()).body);
    assert_eq!(http(server.http, "POST", &link, Some("district=2")).status, 200);
    wait_for("登録完了 .eml", T, || inst.mail_files().get(1).cloned());
    let (status, log) = server.stop();
    assert!(status.success(), "{status:?}\n{log}");
    let out = inst.ingest("taro@au.com", "ans@mamoru.test", &empty_mail("taro@au.com"));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let db = inst.data_dir().join(mamoru_store::DB_FILE);
    let before = std::fs::read(&db).unwrap();

    let cluster = mamoru_store::pgtest::PgCluster::start();
    let url = cluster.url();
    let copy = inst.cmd().args(["store", "copy", "--to", &url]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&copy.stdout), String::from_utf8_lossy(&copy.stderr));
    assert!(copy.status.success(), "{stdout}\n{stderr}");
    let rows = counts(&stdout);
    assert!(rows.len() >= 18 && rows.iter().all(|(_, l, p)| l == p), "{stdout}");
    let of = |t: &str| rows.iter().find(|r| r.0 == t).map(|r| r.2).unwrap_or_else(|| panic!("{t} in {stdout}"));
    assert_eq!((of("subscribers"), of("subscriber_districts"), of("outbox")), (2, 1, 3), "{stdout}");
    for text in [&stdout, &stderr] {
        assert!(!text.contains("hanako") && !text.contains("taro@") && !text.contains(&url), "{text}");
    }
    assert_eq!(std::fs::read(&db).unwrap(), before, "the SQLite file is left as it was");

    // Copying again would merge: refused, exit 1, nothing changed.
    let again = inst.cmd().args(["store", "copy", "--to", &url]).output().unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{err}");
    assert!(err.contains("not empty"), "{err}");

    // Served from PostgreSQL: the queued 登録受付 goes out and its link
    // works; a new registration gets fresh ids.
    let config = std::fs::read_to_string(&inst.config).unwrap();
    std::fs::write(&inst.config, config.replace("[store]\n", &format!("[store]\nurl = \"{url}\"\n"))).unwrap();
    let server = inst.serve();
    let third = wait_for("the copied 登録受付 .eml", T, || inst.mail_files().get(2).cloned());
    let received = parse_mail(&std::fs::read(&third).unwrap());
    assert!(received.to.contains("taro@au.com"), "{}", received.to);
    let done = http(server.http, "POST", &link_path(&received.body), Some("district=1&district=3"));
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(http(server.http, "POST", &link, Some("district=5")).status, 410, "a used token stays used");
    let out = inst.ingest("jiro@docomo.ne.jp", "ans@mamoru.test", &empty_mail("jiro@docomo.ne.jp"));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("登録受付 for a new address", T, || inst.mail_files().get(4).cloned());
    let (status, log) = server.stop();
    assert!(status.success(), "{status:?}\n{log}");
    assert_eq!(std::fs::read(&db).unwrap(), before, "nothing written to SQLite while on PostgreSQL");

    let export = inst.cmd().args(["subscribers", "export"]).output().unwrap();
    let csv = String::from_utf8_lossy(&export.stdout);
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    assert!(csv.lines().any(|l| l.starts_with("hanako@docomo.ne.jp,active,2,")), "{csv}");
    assert!(csv.lines().any(|l| l.starts_with("taro@au.com,active,1;3,")), "{csv}");
}
