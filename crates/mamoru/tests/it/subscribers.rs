//! `mamoru subscribers import|export` with the real binary: validation,
//! dedupe, bad rows by line number, silent import vs `--confirm`, and an
//! export that round-trips.

use std::time::Duration;

use crate::support::*;

const T: Duration = Duration::from_secs(30);

#[test]
fn import_validates_dedupes_and_export_round_trips() {
    let inst = Instance::new(&[]);
    let csv = inst.dir.path().join("list.csv");
    std::fs::write(
        &csv,
        "address,districts\n\
         taro..yamada.@docomo.ne.jp,1;3\n\
         \"hanako@ezweb.ne.jp\",中央地区\n\
         not an address,1\n\
         ichiro@i.softbank.jp,\n\
         TARO..YAMADA.@DOCOMO.NE.JP,2\n\
         jiro@au.com,99\n\
         \n",
    )
    .unwrap();
    let out = inst.cmd().args(["subscribers", "import"]).arg(&csv).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "bad rows make the exit status 1:\n{stdout}\n{stderr}");
    assert!(stdout.contains("imported 3, invited 0, already registered 0, duplicates 1, bad rows 2"), "{stdout}");
    assert!(stderr.contains("line 4: not a valid address") && stderr.contains("line 7: unknown district"), "{stderr}");
    for a in ["taro..yamada", "hanako", "ichiro", "jiro@au.com"] {
        assert!(!stdout.contains(a) && !stderr.contains(a), "{a} printed");
    }
    let taro = inst.subscriber("taro..yamada.@docomo.ne.jp").unwrap();
    assert_eq!((taro.status.as_str(), taro.districts), ("active", vec![1, 3]));
    assert_eq!(inst.subscriber("hanako@ezweb.ne.jp").unwrap().districts, vec![1]);
    assert_eq!(inst.subscriber("ichiro@i.softbank.jp").unwrap().districts.len(), 10, "empty = every district");
    assert!(inst.subscriber("jiro@au.com").is_none());
    assert!(inst.store().link_nonce(taro.id).unwrap().is_some(), "imported subscribers get footer links");
    assert_eq!(inst.store().outbox_counts().unwrap().queued, 0, "silent import sends nothing");

    // Again: everything is already registered.
    let again = inst.cmd().args(["subscribers", "import"]).arg(&csv).output().unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("imported 0, invited 0, already registered 3"));

    // Export: a CSV with the addresses in clear, to a new 0600 file.
    let exported = inst.dir.path().join("export.csv");
    let out = inst.cmd().args(["subscribers", "export", "-o"]).arg(&exported).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&exported).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "address,status,districts,created_at,confirmed_at");
    assert!(lines[1].starts_with("taro..yamada.@docomo.ne.jp,active,1;3,"), "{text}");
    assert_eq!(lines.len(), 4, "{text}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&exported).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!inst.cmd().args(["subscribers", "export", "-o"]).arg(&exported).output().unwrap().status.success(), "never overwrites");

    // The export imports into a fresh instance unchanged.
    let other = Instance::new(&[]);
    let out = other.cmd().args(["subscribers", "import"]).arg(&exported).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(other.subscriber("taro..yamada.@docomo.ne.jp").unwrap().districts, vec![1, 3]);
}

#[test]
fn import_with_confirm_sends_a_registration_link_with_districts_preselected() {
    let inst = Instance::new(&[]);
    let server = inst.serve();
    let csv = inst.dir.path().join("list.csv");
    std::fs::write(&csv, "address,districts\nparent@docomo.ne.jp,2;4\n").unwrap();
    let out = inst.cmd().args(["subscribers", "import", "--confirm"]).arg(&csv).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 0, invited 1"));
    assert_eq!(inst.subscriber("parent@docomo.ne.jp").unwrap().status.as_str(), "pending", "not subscribed until confirmed");
    let mail = wait_for("登録受付 for the invited address", T, || inst.mail_files().first().cloned());
    let m = parse_mail(&std::fs::read(mail).unwrap());
    assert!(m.subject.contains("登録受付") && m.to.contains("parent@docomo.ne.jp"));
    let page = http(server.http, "GET", &link_path(&m.body), None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("value=\"2\" checked>") && page.body.contains("value=\"4\" checked>"), "{}", page.body);
    assert_eq!(checked_districts(&page.body), 2, "{}", page.body);
    assert_eq!(http(server.http, "POST", &link_path(&m.body), Some("district=2&district=4")).status, 200);
    assert_eq!(inst.subscriber("parent@docomo.ne.jp").unwrap().status.as_str(), "active");
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/csv").join(name)
}

#[test]
fn import_reads_excel_shift_jis_bom_utf8_and_multiline_fields() {
    let inst = Instance::new(&[]);
    for (name, summary) in [
        ("excel-shift_jis.csv", "imported 3, invited 0, already registered 0, duplicates 0, bad rows 0"),
        ("utf8-bom.csv", "imported 3, invited 0, already registered 0, duplicates 0, bad rows 0"),
        ("multiline.csv", "imported 3, invited 0, already registered 0, duplicates 0, bad rows 0"),
    ] {
        let out = inst.cmd().args(["subscribers", "import"]).arg(fixture(name)).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{name}:\n{stdout}\n{stderr}");
        assert!(stdout.contains(summary), "{name}: {stdout}");
    }
    assert_eq!(inst.subscriber("taro..yamada.@docomo.ne.jp").unwrap().districts, vec![1, 3], "Shift_JIS district names");
    assert_eq!(inst.subscriber("hanako@ezweb.ne.jp").unwrap().districts, vec![2]);
    assert_eq!(inst.subscriber("-dash@ezweb.ne.jp").unwrap().districts, vec![3], "the export's ' guard removed");
    assert_eq!(inst.subscriber("two@ezweb.ne.jp").unwrap().districts, vec![2]);
    assert_eq!(inst.subscriber("three@au.com").unwrap().districts, vec![3]);

    // Bad rows: physical line numbers, the good rows imported, exit 1.
    let out = inst.cmd().args(["subscribers", "import"]).arg(fixture("bad-rows.csv")).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("imported 2, invited 0, already registered 0, duplicates 1, bad rows 3"), "{stdout}");
    for l in ["line 4: not a valid address", "line 5: unknown district", "lines 8-9: not a valid address"] {
        assert!(stderr.contains(l), "{l} in {stderr}");
    }
    assert!(!stderr.contains("line 2") && !stderr.contains("line 10"), "{stderr}");
    assert!(inst.subscriber("ok3@au.com").is_some());

    // Neither UTF-8 nor Shift_JIS: nothing imported, exit 1, the line named.
    let latin = inst.dir.path().join("latin1.csv");
    std::fs::write(&latin, b"address\nnew@au.com\nm\xfcller@au.com\n").unwrap();
    let out = inst.cmd().args(["subscribers", "import"]).arg(&latin).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 3: the file is neither UTF-8 nor Shift_JIS"), "{stderr}");
    assert!(inst.subscriber("new@au.com").is_none(), "nothing imported");
}

#[test]
fn export_cells_never_start_a_formula_and_import_back_unchanged() {
    let inst = Instance::new(&[]);
    let addrs = ["=1+1@docomo.ne.jp", "+plus@au.com", "-minus@ezweb.ne.jp", "'quote@au.com", "plain@i.softbank.jp"];
    let csv = inst.dir.path().join("list.csv");
    let list: String = addrs.iter().map(|a| format!("\"{a}\",1;3\n")).collect();
    std::fs::write(&csv, format!("address,districts\n{list}").replace("\"'quote", "\"''quote")).unwrap();
    let out = inst.cmd().args(["subscribers", "import"]).arg(&csv).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exported = inst.dir.path().join("export.csv");
    let out = inst.cmd().args(["subscribers", "export", "-o"]).arg(&exported).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&exported).unwrap();
    for line in text.lines() {
        assert!(!line.starts_with(['=', '+', '-', '@', '\t', '\r']), "a spreadsheet runs {line:?}");
    }
    assert!(text.contains("'=1+1@docomo.ne.jp,active,1;3,"), "{text}");
    let other = Instance::new(&[]);
    let out = other.cmd().args(["subscribers", "import"]).arg(&exported).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for a in addrs {
        assert_eq!(other.subscriber(a).map(|s| s.districts), Some(vec![1, 3]), "{a} after the round trip");
    }
}
