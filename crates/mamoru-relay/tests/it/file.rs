//! The `file` transport.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

use super::*;

fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_one_private_eml_per_row_atomically() {
    let env = Env::new();
    let mut rows = vec![
        env.queue_tricky("taro..yamada.@docomo.ne.jp"),
        env.queue_rendered("hanako.@ezweb.ne.jp"),
        env.queue_as("p@au.com", "../../etc/x y@mamoru.test", tricky_message),
    ];
    let odd = format!("{}-.._.._etc_x_y@mamoru.test.eml", rows[2].id);
    // A temporary file left by a crash mid-write, with the wrong mode: the
    // relay must not reuse it as it is.
    let dir = env.dir.path().join("mail");
    fs::DirBuilder::new().mode(0o700).create(&dir).expect("mail dir");
    let stale = dir.join(format!(".{}-{}.eml.tmp", rows[0].id, rows[0].message_id));
    fs::write(&stale, "half a mess").expect("stale temp file");
    fs::set_permissions(&stale, fs::Permissions::from_mode(0o644)).expect("chmod");

    // A poll interval of a minute: only the wake-up below can be quick.
    let relay = env.relay(Transport::File, RelayConfig { poll_interval_ms: 60_000, ..fast(1) });
    for r in &rows {
        assert_eq!(env.wait_state(r.id, "sent", Duration::from_secs(10)).await.attempts, 1);
    }
    let late = env.queue_tricky("late@softbank.ne.jp");
    relay.wake.notify_one();
    env.wait_state(late.id, "sent", Duration::from_secs(10)).await;
    rows.push(late);
    relay.stop(Duration::from_secs(5)).await;

    assert_eq!(mode(&dir), 0o700);
    let mut names: Vec<String> = fs::read_dir(&dir)
        .expect("read mail dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> =
        rows[..2].iter().chain(&rows[3..]).map(|r| format!("{}-{}.eml", r.id, r.message_id)).chain([odd]).collect();
    expected.sort();
    // Exactly one file per row and no temporary files left behind.
    assert_eq!(names, expected);
    for r in &rows {
        let name = names.iter().find(|n| n.starts_with(&format!("{}-", r.id))).expect("file of row");
        let path = dir.join(name);
        assert_eq!(fs::read(&path).expect("read eml"), r.content, "{name}");
        assert_eq!(mode(&path), 0o600, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_relay_stops_promptly() {
    let env = Env::new();
    let relay = env.relay(Transport::File, RelayConfig { poll_interval_ms: 60_000, ..fast(1) });
    let dir = env.dir.path().join("mail");
    wait_for("the relay to start", Duration::from_secs(10), || {
        if dir.is_dir() { Ok(()) } else { Err("no mail dir yet".into()) }
    })
    .await;
    // Well within the minute-long poll interval it is waiting on.
    let took = relay.stop(Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_data_dir_is_reported() {
    let env = Env::new();
    let not_a_dir = env.dir.path().join("plain-file");
    fs::write(&not_a_dir, "").expect("file");
    let relay = Arc::new(Relay {
        store: Arc::clone(&env.store),
        transport: Transport::File,
        data_dir: not_a_dir,
        settings: fast(1),
        hostname: DOMAIN.into(),
        pools: mamoru_core::carriers::default_carriers(),
        verp_key: None,
            dkim: None,
            alerts: env.app(),
    });
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        mamoru_relay::run(relay, Arc::new(Notify::new()), CancellationToken::new()),
    )
    .await
    .expect("run returns at once");
    assert!(matches!(result, Err(RelayError::MailDir { .. })), "{result:?}");
}
