//! The carrier-aware relay against the carrier emulator (`mamoru-sink`, a
//! real SMTP server on loopback, run in this process so the test can read
//! its records): caps and rates hold by the sink's own count, throttling
//! slows a pool down without loss and without touching the other pools,
//! unknown users are final, a reset after the dot duplicates at most once.

use std::collections::BTreeMap;

use mamoru_core::carriers::{CarrierConfig, DEFAULT_POOL, default_carriers};
use mamoru_sink::policy::{DomainLimit, PolicyConfig, Stats, ThrottleWindow};
use mamoru_sink::server::Sink as Emulated;

use super::*;

const T: Duration = Duration::from_secs(40);

struct Emulator {
    sink: Arc<Emulated>,
    port: u16,
    stop: CancellationToken,
}

impl Emulator {
    async fn start(cfg: PolicyConfig) -> Emulator {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let sink = Arc::new(Emulated::new("carrier.test", cfg));
        let stop = CancellationToken::new();
        tokio::spawn(mamoru_sink::server::run(listener, Arc::clone(&sink), stop.clone()));
        Emulator { sink, port, stop }
    }

    fn stats(&self) -> Stats {
        self.sink.stats()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn limit(conns: u32, rate: f64, burst: u32) -> DomainLimit {
    DomainLimit { max_connections: conns, rate, burst }
}

fn pool(domains: &[&str], conns: u32, rate: f64, burst: u32) -> CarrierConfig {
    CarrierConfig {
        domains: domains.iter().map(|d| d.to_string()).collect(),
        max_connections: conns,
        messages_per_connection: 50,
        rate_per_second: rate,
        burst,
        route: None,
        charset: Default::default(),
    }
}

fn pools(list: &[(&str, CarrierConfig)]) -> BTreeMap<String, CarrierConfig> {
    let mut m: BTreeMap<String, CarrierConfig> = list.iter().map(|(n, c)| (n.to_string(), c.clone())).collect();
    m.entry(DEFAULT_POOL.into()).or_insert_with(|| default_carriers().remove(DEFAULT_POOL).expect("default pool"));
    m
}

/// Queues one small message per address in one transaction.
fn queue_bulk(env: &Env, addrs: &[String]) -> Vec<Queued> {
    let now = mamoru_core::now();
    let mails: Vec<OutgoingMail> = addrs
        .iter()
        .map(|a| {
            let to = EmailAddress::parse(a).expect("address");
            let mid = unique_message_id();
            let bytes = format!("From: <{SENDER}>\r\nTo: <{a}>\r\nSubject: test\r\nMessage-ID: <{mid}>\r\n\r\nbody\r\n").into_bytes();
            OutgoingMail { kind: MailKind::RegistrationReceived, sender: SENDER.into(), to, message_id: mid, bytes }
        })
        .collect();
    let ids = env.store.queue_many(&mails, 0, now, now + 3600).expect("queue");
    ids.into_iter().zip(mails).map(|(id, m)| Queued { id, message_id: m.message_id, content: m.bytes }).collect()
}

fn addrs(prefix: &str, domain: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@{domain}")).collect()
}

/// Waits until every row is in a final state, and returns the time it took.
async fn wait_all_done(env: &Env, rows: &[Queued], limit: Duration) -> Duration {
    let start = Instant::now();
    wait_for("every row to be final", limit, || {
        let open: Vec<Row> = rows.iter().map(|q| env.row(q.id)).filter(|r| r.state == "queued" || r.state == "sending").collect();
        if open.is_empty() { Ok(()) } else { Err(format!("{} open, e.g. {:?}", open.len(), open.first())) }
    })
    .await;
    start.elapsed()
}

fn assert_all_received(em: &Emulator, rows: &[Queued]) {
    let ids = em.sink.message_ids();
    for q in rows {
        assert!(ids.contains_key(&q.message_id), "{} lost", q.message_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_and_rates_hold_by_the_sinks_count() {
    let mut env = Env::new();
    env.set_pools(pools(&[("docomo", pool(&["docomo.ne.jp"], 2, 20.0, 2)), ("au", pool(&["au.com"], 1, 10.0, 2))]));
    let mut limits = BTreeMap::new();
    limits.insert("docomo.ne.jp".to_string(), limit(2, 20.0, 5));
    limits.insert("au.com".to_string(), limit(1, 10.0, 5));
    let em = Emulator::start(PolicyConfig { limits, ..PolicyConfig::default() }).await;
    let mut rows = queue_bulk(&env, &addrs("d", "docomo.ne.jp", 60));
    rows.extend(queue_bulk(&env, &addrs("a", "au.com", 30)));
    let relay = env.relay(smtp(em.port), fast(1));
    let took = wait_all_done(&env, &rows, T).await;
    relay.stop(Duration::from_secs(10)).await;

    for q in &rows {
        assert_eq!(env.row(q.id).state, "sent");
    }
    assert_all_received(&em, &rows);
    let stats = em.stats();
    for (domain, cap, rate) in [("docomo.ne.jp", 2, 20), ("au.com", 1, 10)] {
        let d = &stats.domains[domain];
        assert!(d.max_connections_seen <= cap, "{domain}: {d:?}");
        assert_eq!((d.throttled_connections, d.throttled_rate), (0, 0), "{domain}: {d:?}");
        // A whole second never holds more than the rate plus the burst.
        assert!(d.per_second.iter().all(|&n| n <= rate + 5), "{domain}: {:?}", d.per_second);
    }
    assert_eq!(stats.duplicates, 0);
    // 60 messages at 20/s and 30 at 10/s, in parallel: about 3 s, not 6.
    assert!(took >= Duration::from_millis(2500), "faster than the configured rates: {took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_pool_slows_down_recovers_loses_nothing_and_spares_the_others() {
    let mut env = Env::new();
    env.set_pools(pools(&[("docomo", pool(&["docomo.ne.jp"], 2, 20.0, 2)), ("au", pool(&["au.com"], 1, 0.0, 5))]));
    let em = Emulator::start(PolicyConfig {
        throttle_windows: vec![ThrottleWindow { domain: "docomo.ne.jp".into(), from: 0.0, to: 2.0 }],
        ..PolicyConfig::default()
    })
    .await;
    let docomo = queue_bulk(&env, &addrs("d", "docomo.ne.jp", 40));
    let au = queue_bulk(&env, &addrs("a", "au.com", 100));
    let relay = env.relay(smtp(em.port), fast(1));
    wait_all_done(&env, &au, T).await;
    // The other pool finished while docomo was still held back.
    let docomo_open = docomo.iter().filter(|q| env.row(q.id).state != "sent").count();
    assert!(docomo_open > 0, "docomo finished as fast as au: no throttling seen");
    wait_all_done(&env, &docomo, T).await;
    let states = env.store.pool_states().expect("pool states");
    let metrics = Arc::clone(&relay.metrics);
    relay.stop(Duration::from_secs(10)).await;

    for q in docomo.iter().chain(&au) {
        assert_eq!(env.row(q.id).state, "sent");
    }
    assert_all_received(&em, &docomo);
    assert_all_received(&em, &au);
    let stats = em.stats();
    assert_eq!(stats.duplicates, 0);
    assert!(stats.domains["docomo.ne.jp"].throttled_window >= 1, "{stats:?}");
    // The relay backed off instead of hammering: a handful of 421s, not one
    // per message per retry.
    assert!(stats.domains["docomo.ne.jp"].throttled_window <= 12, "{stats:?}");
    let state = |n: &str| states.iter().find(|s| s.name == n).cloned().expect("pool state");
    assert!(state("docomo").throttles >= 1, "{states:?}");
    assert_eq!(state("au").throttles, 0, "{states:?}");

    // The metrics count what the sink answered: every 421 it gave was
    // provoked and seen, every message it accepted was counted sent.
    let d = &stats.domains["docomo.ne.jp"];
    let given_421 = d.throttled_window + d.throttled_connections + d.throttled_rate;
    assert_eq!(sample(&metrics, "mamoru_relay_provoked_421_total{pool=\"docomo\"}"), given_421 as f64, "{stats:?}");
    assert_eq!(sample(&metrics, "mamoru_relay_provoked_421_total{pool=\"au\"}"), 0.0);
    let pushed = sample(&metrics, "mamoru_relay_push_backs_total{pool=\"docomo\",signal=\"pace\"}")
        + sample(&metrics, "mamoru_relay_push_backs_total{pool=\"docomo\",signal=\"sessions\"}");
    assert_eq!(pushed, given_421 as f64);
    assert_eq!(sample(&metrics, "mamoru_relay_deliveries_total{pool=\"docomo\",outcome=\"sent\",reply_class=\"2xx\"}"), 40.0);
    assert_eq!(sample(&metrics, "mamoru_relay_deliveries_total{pool=\"au\",outcome=\"sent\",reply_class=\"2xx\"}"), 100.0);
    // The last snapshot: nothing left, no pool paused any more.
    for pool in ["docomo", "au"] {
        assert_eq!(sample(&metrics, &format!("mamoru_outbox_oldest_age_seconds{{pool=\"{pool}\"}}")), 0.0);
        assert_eq!(sample(&metrics, &format!("mamoru_outbox_rows{{pool=\"{pool}\",state=\"queued\",age=\"0-5m\"}}")), 0.0);
    }
    assert_eq!(sample(&metrics, "mamoru_pool_max_connections{pool=\"docomo\"}"), 2.0);
    assert_eq!(sample(&metrics, "mamoru_pool_pace_ceiling{pool=\"docomo\"}"), 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_is_final_suspended_and_the_connection_survives() {
    let mut env = Env::new();
    env.set_pools(pools(&[("au", pool(&["au.com"], 1, 0.0, 5))]));
    let em = Emulator::start(PolicyConfig::default()).await;
    let dead = env.queue_tricky("unknown.taro@au.com");
    let later = env.queue_tricky("unknown.taro@au.com");
    let ok1 = env.queue_tricky("hanako@au.com");
    let ok2 = env.queue_tricky("jiro@au.com");
    let relay = env.relay(smtp(em.port), fast(1));
    let failed = env.wait_state(dead.id, "failed", T).await;
    env.wait_state(ok1.id, "sent", T).await;
    env.wait_state(ok2.id, "sent", T).await;
    relay.stop(Duration::from_secs(10)).await;

    assert!(failed.last_error.starts_with("550 5.1.1"), "{failed:?}");
    assert!(!failed.last_error.contains("unknown.taro@"), "address in clear: {failed:?}");
    assert_eq!(failed.attempts, 1);
    // The second mail to the dead address is final too: refused the same way
    // if it was already claimed, else failed with the suspension, untried.
    let second = env.row(later.id);
    assert_eq!(second.state, "failed", "{second:?}");
    assert!(second.last_error == "recipient undeliverable" || second.last_error.starts_with("550 5.1.1"), "{second:?}");
    let conn = rusqlite::Connection::open(env.store.path()).expect("db");
    let (status, reason, at): (String, String, i64) = conn
        .query_row(
            "SELECT s.status, s.suspended_reason, s.undeliverable_at FROM subscribers s JOIN outbox o ON o.subscriber_id = s.id WHERE o.id = ?1",
            [dead.id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("subscriber");
    assert_eq!((status.as_str(), reason.as_str()), ("suspended", "unknown-user"));
    assert!(at > 0);
    // RSET, not reconnect: one session carried all three transactions.
    assert_eq!(em.stats().sessions, 1, "{:?}", em.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_echoing_the_local_part_stores_no_form_of_it() {
    // Every log line of this process, at debug level, into `logs`.
    #[derive(Clone)]
    struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let logs = Capture(Arc::default());
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let mut env = Env::new();
    env.set_pools(pools(&[("au", pool(&["au.com"], 1, 0.0, 5))]));
    let em = Emulator::start(PolicyConfig::default()).await;
    let gone = env.queue_tricky("echo550.gone.privacy@au.com");
    let full = env.queue_tricky("Echo452.Full.Privacy@au.com");
    let relay = env.relay(smtp(em.port), fast(30));
    let failed = env.wait_state(gone.id, "failed", T).await;
    let deferred = wait_for("the 452 to be deferred", T, || {
        let r = env.row(full.id);
        if r.state == "queued" && r.attempts >= 1 { Ok(r) } else { Err(format!("{r:?}")) }
    })
    .await;
    relay.stop(Duration::from_secs(10)).await;

    assert_eq!(failed.last_error, "550 5.1.1 User unknown: e*** (after RCPT TO)", "{failed:?}");
    assert_eq!(deferred.last_error, "452 4.2.2 Mailbox of E*** is over quota (after RCPT TO)", "{deferred:?}");
    // Neither the database nor its WAL holds the local parts, in any case.
    let db = env.store.path().to_path_buf();
    let mut bytes = std::fs::read(&db).expect("db file");
    let wal = db.with_extension("db-wal");
    bytes.extend(std::fs::read(&wal).unwrap_or_default());
    let lower = bytes.to_ascii_lowercase();
    let logged = logs.0.lock().unwrap_or_else(|p| p.into_inner()).to_ascii_lowercase();
    assert!(String::from_utf8_lossy(&logged).contains("recipient unknown"), "the log was captured");
    for local in ["echo550.gone.privacy", "echo452.full.privacy"] {
        assert!(!lower.windows(local.len()).any(|w| w == local.as_bytes()), "{local} in {db:?} or its WAL");
        assert!(!logged.windows(local.len()).any(|w| w == local.as_bytes()), "{local} in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_after_the_dot_and_transient_replies() {
    let mut env = Env::new();
    env.set_pools(pools(&[("au", pool(&["au.com"], 1, 0.0, 5))]));
    let em = Emulator::start(PolicyConfig::default()).await;
    let reset = env.queue_tricky("reset.x@au.com");
    let full = env.queue_tricky("fail552.y@au.com");
    let later = env.queue_tricky("fail452.z@au.com");
    let relay = env.relay(smtp(em.port), fast(30));
    let sent = env.wait_state(reset.id, "sent", T).await;
    let failed = env.wait_state(full.id, "failed", T).await;
    let deferred = wait_for("the 452 to be deferred", T, || {
        let r = env.row(later.id);
        if r.state == "queued" && r.attempts >= 1 { Ok(r) } else { Err(format!("{r:?}")) }
    })
    .await;
    relay.stop(Duration::from_secs(10)).await;

    // The reset cost exactly one duplicate, identical by Message-ID.
    assert_eq!(sent.attempts, 2, "{sent:?}");
    assert_eq!(em.sink.message_ids().get(&reset.message_id), Some(&2));
    assert_eq!(em.stats().duplicates, 1);
    // 552 is final for the message, but the address stays deliverable.
    assert!(failed.last_error.starts_with("552"), "{failed:?}");
    let status: String = rusqlite::Connection::open(env.store.path())
        .expect("db")
        .query_row("SELECT s.status FROM subscribers s JOIN outbox o ON o.subscriber_id = s.id WHERE o.id = ?1", [full.id], |r| r.get(0))
        .expect("status");
    assert_eq!(status, "pending");
    assert!(deferred.last_error.starts_with("452"), "{deferred:?}");
    assert!(deferred.next_attempt_at > mamoru_core::now() - 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_a_route_delivers_there() {
    let mut env = Env::new();
    let elsewhere = Emulator::start(PolicyConfig::default()).await;
    let mut au = pool(&["au.com"], 1, 0.0, 5);
    au.route = Some(smtp(elsewhere.port));
    env.set_pools(pools(&[("au", au)]));
    let main = Emulator::start(PolicyConfig::default()).await;
    let to_au = queue_bulk(&env, &addrs("a", "au.com", 5));
    let other = queue_bulk(&env, &addrs("o", "example.com", 5));
    let relay = env.relay(smtp(main.port), fast(1));
    wait_all_done(&env, &to_au, T).await;
    wait_all_done(&env, &other, T).await;
    relay.stop(Duration::from_secs(10)).await;
    assert_all_received(&elsewhere, &to_au);
    assert_all_received(&main, &other);
    assert_eq!((elsewhere.stats().accepted, main.stats().accepted), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_waiting_longer_than_a_lease_are_renewed_not_claimed_twice() {
    // One connection at one message a second, a 3-second lease: each row
    // waits in the pool's queue longer than its lease. Without renewal the
    // relay would claim the waiting rows again and send them twice.
    let mut env = Env::new();
    env.set_pools(pools(&[("softbank", pool(&["softbank.ne.jp"], 1, 1.0, 1))]));
    let em = Emulator::start(PolicyConfig::default()).await;
    let rows = queue_bulk(&env, &addrs("s", "softbank.ne.jp", 10));
    let relay = env.relay(smtp(em.port), RelayConfig { lease_secs: 3, ..fast(1) });
    wait_all_done(&env, &rows, T).await;
    relay.stop(Duration::from_secs(10)).await;
    for q in &rows {
        let row = env.row(q.id);
        assert_eq!((row.state.as_str(), row.attempts), ("sent", 1), "{q:?}");
    }
    assert_all_received(&em, &rows);
    assert_eq!(em.stats().duplicates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_charset_iso_2022_jp_sends_jis_and_the_others_utf8() {
    let mut env = Env::new();
    let mut sb = default_carriers().remove("softbank").expect("softbank pool");
    sb.charset = mamoru_core::carriers::Charset::Iso2022Jp;
    env.set_pools(pools(&[("softbank", sb)]));
    let jis = env.queue_rendered("old.phone@softbank.ne.jp");
    let utf8 = env.queue_rendered("new.phone@docomo.ne.jp");
    let emoji = env.queue("emoji@softbank.ne.jp", |to, mid| {
        format!("From: <{SENDER}>\r\nTo: <{to}>\r\nSubject: =?utf-8?b?{}?=\r\nMessage-ID: <{mid}>\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n不審者 🚨\r\n",
            super::dkim::base64_std("お知らせ".as_bytes())).into_bytes()
    });
    let relay = env.relay(Transport::File, fast(1));
    for r in [&jis, &utf8, &emoji] {
        env.wait_state(r.id, "sent", Duration::from_secs(10)).await;
    }
    relay.stop(Duration::from_secs(5)).await;
    let file = |q: &Queued| std::fs::read(env.dir.path().join("mail").join(format!("{}-{}.eml", q.id, q.message_id))).expect("eml");

    let sent = file(&jis);
    assert!(sent.iter().all(|&b| b < 0x80), "7-bit on the wire");
    let text = String::from_utf8_lossy(&sent);
    assert!(text.contains("charset=ISO-2022-JP") && text.contains("=?ISO-2022-JP?B?"), "{text}");
    // An independent decoder reads back the same subject and text.
    let (a, b) = (mailparse::parse_mail(&sent).expect("parse"), mailparse::parse_mail(&jis.content).expect("parse"));
    use mailparse::MailHeaderMap as _;
    assert_eq!(a.headers.get_first_value("Subject"), b.headers.get_first_value("Subject"));
    assert_eq!(a.get_body().expect("body").trim_end(), b.get_body().expect("body").trim_end());
    assert_eq!(file(&utf8), utf8.content, "other pools are untouched");
    assert_eq!(file(&emoji), emoji.content, "what has no JIS form goes unchanged");
}

/// A carrier tighter than the pool on both counts: it takes one session
/// where the pool opens two (the second refused at the greeting), and half
/// the pool's configured pace, answered with `pace` over it. The pool must
/// learn both without losing or doubling a message, with few provoked
/// push-backs and a makespan near what the carrier's pace allows.
async fn learns_a_tighter_carrier(pace_451: bool) {
    const N: usize = 400;
    const CARRIER_RATE: f64 = 10.0;
    let mut env = Env::new();
    env.set_pools(pools(&[("docomo", pool(&["docomo.ne.jp"], 2, 2.0 * CARRIER_RATE, 2))]));
    let mut limits = BTreeMap::new();
    limits.insert("docomo.ne.jp".to_string(), limit(2, CARRIER_RATE, 5));
    let em = Emulator::start(PolicyConfig {
        limits,
        greeting_cap: Some(1),
        pace_451: if pace_451 { vec!["docomo.ne.jp".into()] } else { Vec::new() },
        ..PolicyConfig::default()
    })
    .await;
    let rows = queue_bulk(&env, &addrs("d", "docomo.ne.jp", N));
    let relay = env.relay(smtp(em.port), RelayConfig { learn_probe_secs: 10, ..fast(1) });
    let took = wait_all_done(&env, &rows, Duration::from_secs(120)).await;
    relay.stop(Duration::from_secs(10)).await;

    for q in &rows {
        assert_eq!(env.row(q.id).state, "sent", "{q:?}");
    }
    // Everything delivered, once.
    let ids = em.sink.message_ids();
    for q in &rows {
        assert_eq!(ids.get(&q.message_id), Some(&1), "{}", q.message_id);
    }
    let stats = em.stats();
    assert_eq!(stats.duplicates, 0);
    let d = &stats.domains["docomo.ne.jp"];
    let provoked = stats.throttled_greeting + d.throttled_connections + d.throttled_rate + d.throttled_window;
    // The second session was refused at least once, and learned: not again
    // and again.
    assert!(stats.throttled_greeting >= 1, "{stats:?}");
    assert!(provoked as f64 <= 0.02 * N as f64, "{provoked} provoked push-backs of {N}: {stats:?}");
    // T* = N / the carrier's pace; generous, the machine is noisy.
    let optimum = N as f64 / CARRIER_RATE;
    let secs = took.as_secs_f64();
    eprintln!("makespan {secs:.1} s, T* {optimum:.1} s, provoked {provoked} ({:.2} %)", 100.0 * provoked as f64 / N as f64);
    assert!(secs <= 1.4 * optimum + 5.0, "makespan {secs:.1} s against T* = {optimum:.1} s: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_taking_one_session_and_half_the_pace_is_learned_421() {
    learns_a_tighter_carrier(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_taking_one_session_and_half_the_pace_is_learned_451() {
    learns_a_tighter_carrier(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_full_defers_its_message_and_leaves_the_pace_alone() {
    let mut env = Env::new();
    env.set_pools(pools(&[("au", pool(&["au.com"], 1, 20.0, 2))]));
    let em = Emulator::start(PolicyConfig::default()).await;
    // 452 4.2.2 and 451 4.3.0: about the recipient or the server, not the pace.
    let full = env.queue_tricky("fail452.full@au.com");
    let trouble = env.queue_tricky("fail451.trouble@au.com");
    let rows = queue_bulk(&env, &addrs("a", "au.com", 10));
    let relay = env.relay(smtp(em.port), fast(30));
    wait_all_done(&env, &rows, T).await;
    for q in [&full, &trouble] {
        wait_for("the 4xx to be deferred", T, || {
            let r = env.row(q.id);
            if r.state == "queued" && r.attempts >= 1 { Ok(r) } else { Err(format!("{r:?}")) }
        })
        .await;
    }
    let states = env.store.pool_states().expect("pool states");
    relay.stop(Duration::from_secs(10)).await;
    assert_all_received(&em, &rows);
    let au = states.iter().find(|s| s.name == "au").expect("au state");
    assert_eq!(au.throttles, 0, "{states:?}");
    assert_eq!(au.paused_until_ms, 0, "{states:?}");
}

/// The learned limits of `pool` as the relay stored them.
fn learned(env: &Env, pool: &str) -> mamoru_store::relay::LearnedLimits {
    let all = env.store.learned_limits().expect("learned limits");
    all.into_iter().find(|l| l.pool == pool).unwrap_or_else(|| panic!("no learned row for {pool}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_relay_starts_from_the_learned_session_cap() {
    let mut env = Env::new();
    env.set_pools(pools(&[("docomo", pool(&["docomo.ne.jp"], 2, 40.0, 2))]));
    let mut limits = BTreeMap::new();
    limits.insert("docomo.ne.jp".to_string(), limit(1, 100.0, 10));
    let em = Emulator::start(PolicyConfig { limits, ..PolicyConfig::default() }).await;

    let first = queue_bulk(&env, &addrs("a", "docomo.ne.jp", 40));
    let relay = env.relay(smtp(em.port), fast(1));
    wait_all_done(&env, &first, T).await;
    relay.stop(Duration::from_secs(10)).await;
    let refused_first = em.stats().domains["docomo.ne.jp"].throttled_connections;
    assert!(refused_first >= 1, "the second session was refused: {:?}", em.stats());
    let l = learned(&env, "docomo");
    assert_eq!((l.connections, l.connections_ceiling), (1, 2), "{l:?}");
    let pb = l.last_push_back.clone().expect("a push-back");
    assert_eq!((pb.signal, pb.code, pb.enhanced.as_str()), (mamoru_store::relay::PushBackSignal::Sessions, 421, "4.7.0"), "{l:?}");

    // A new relay on the same store: it opens one session, as learned.
    let second = queue_bulk(&env, &addrs("b", "docomo.ne.jp", 40));
    let relay = env.relay(smtp(em.port), fast(1));
    wait_all_done(&env, &second, T).await;
    relay.stop(Duration::from_secs(10)).await;
    let stats = em.stats();
    let d = &stats.domains["docomo.ne.jp"];
    assert_eq!(d.throttled_connections, refused_first, "the restarted relay was refused again: {stats:?}");
    assert_eq!(d.max_connections_seen, 1, "{stats:?}");
    let ids = em.sink.message_ids();
    for q in first.iter().chain(&second) {
        assert_eq!(env.row(q.id).state, "sent", "{q:?}");
        assert_eq!(ids.get(&q.message_id), Some(&1), "{}", q.message_id);
    }
    assert_eq!(learned(&env, "docomo").connections, 1);
}

/// Holds one session bound to `domain` at the sink (its first RCPT
/// accepted) until `release` is cancelled, then QUITs.
async fn hold_a_session(port: u16, domain: &str, release: CancellationToken) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    async fn reply(lines: &mut tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>) -> String {
        loop {
            let line = lines.next_line().await.expect("read").expect("a reply");
            if line.as_bytes().get(3) != Some(&b'-') {
                return line;
            }
        }
    }
    assert!(reply(&mut lines).await.starts_with("220"));
    for cmd in ["EHLO holder.test".to_string(), "MAIL FROM:<x@holder.test>".into(), format!("RCPT TO:<holder@{domain}>")] {
        write.write_all(format!("{cmd}\r\n").as_bytes()).await.expect("write");
        let r = reply(&mut lines).await;
        assert!(r.starts_with("250"), "{cmd}: {r}");
    }
    tokio::spawn(async move {
        release.cancelled().await;
        let _ = write.write_all(b"QUIT\r\n").await;
        let _ = reply(&mut lines).await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_session_refused_at_the_first_rcpt_is_no_pace_signal() {
    // The carrier takes one session and already has one (another sender's):
    // the pool's only session is refused with 421 4.7.0 at its first RCPT,
    // before it delivered anything. That says "too many sessions", not "too
    // fast": the pool waits, but its pace stays at the ceiling.
    let mut env = Env::new();
    env.set_pools(pools(&[("docomo", pool(&["docomo.ne.jp"], 1, 20.0, 2))]));
    let mut limits = BTreeMap::new();
    limits.insert("docomo.ne.jp".to_string(), limit(1, 100.0, 10));
    let em = Emulator::start(PolicyConfig { limits, ..PolicyConfig::default() }).await;
    let release = CancellationToken::new();
    let holder = hold_a_session(em.port, "docomo.ne.jp", release.clone()).await;
    let rows = queue_bulk(&env, &addrs("d", "docomo.ne.jp", 30));
    let relay = env.relay(smtp(em.port), fast(1));
    wait_for("the pool's session to be refused", T, || {
        let n = em.stats().domains.get("docomo.ne.jp").map_or(0, |d| d.throttled_connections);
        if n >= 1 { Ok(()) } else { Err(format!("{:?}", em.stats())) }
    })
    .await;
    release.cancel();
    holder.await.expect("holder");
    wait_all_done(&env, &rows, T).await;
    relay.stop(Duration::from_secs(10)).await;

    assert_all_received(&em, &rows);
    assert_eq!(em.stats().duplicates, 0);
    let l = learned(&env, "docomo");
    assert_eq!((l.pace, l.pace_mark), (20.0, None), "a refused session lowered the pace: {l:?}");
    let pb = l.last_push_back.expect("a push-back");
    assert_eq!((pb.signal, pb.code), (mamoru_store::relay::PushBackSignal::Sessions, 421), "{pb:?}");
}
