//! Several `mamoru serve` nodes on one PostgreSQL database, on loopback: a
//! throwaway cluster (`mamoru_store::pgtest`), two serve processes with
//! data dirs of their own and the same keys, and the carrier emulator in
//! this process, which counts each domain's sessions and every Message-ID
//! it accepted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mamoru_core::mail::{MailKind, OutgoingMail};
use mamoru_sink::policy::PolicyConfig;
use mamoru_sink::server::Sink;
use mamoru_store::Store;
use mamoru_store::pgtest::PgCluster;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const DOMAINS: [&str; 3] = ["docomo.ne.jp", "ezweb.ne.jp", "example.com"];
/// Each pool's session ceiling: a carrier's cap, which must hold across
/// nodes.
const CAP: u32 = 2;
/// The built-in pools: docomo, au, softbank, ymobile and the default.
const POOLS: usize = 5;
/// The pace of the docomo and au pools (messages per second): slow enough
/// that their sessions stay open side by side, as a carrier's would.
const PACE: u32 = 100;

/// The carrier emulator on a loopback port, in this process.
struct Carrier {
    /// Runs the emulator; dropped with it.
    _rt: tokio::runtime::Runtime,
    sink: Arc<Sink>,
    port: u16,
    stop: CancellationToken,
}

impl Carrier {
    fn start() -> Carrier {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // Limits far above the pools' (no refusal, no pace): with limits
        // the emulator counts each domain's sessions.
        let open = mamoru_sink::policy::DomainLimit { max_connections: 100, rate: 0.0, burst: 5 };
        let limits = DOMAINS.iter().map(|d| (d.to_string(), open.clone())).collect();
        let sink = Arc::new(Sink::new("carrier.test", PolicyConfig { limits, ..PolicyConfig::default() }));
        let stop = CancellationToken::new();
        rt.spawn(mamoru_sink::server::run(listener, Arc::clone(&sink), stop.clone()));
        Carrier { _rt: rt, sink, port, stop }
    }

    fn accepted(&self) -> usize {
        self.sink.stats().accepted as usize
    }

    /// The most sessions each domain had open at once.
    fn most_sessions(&self) -> Vec<(String, u32)> {
        self.sink.stats().domains.iter().map(|(d, s)| (d.clone(), s.max_connections_seen)).collect()
    }
}

impl Drop for Carrier {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A node's instance: its own data dir with the first node's keys, the
/// shared database, the carrier as smarthost, three pools of `CAP`
/// sessions, a short lease so a dead node's pools and rows come back soon.
fn node(cluster: &PgCluster, carrier: &Carrier, keys_from: Option<&Instance>, pace: u32) -> Instance {
    node_on(Some(cluster), carrier, keys_from, pace)
}

/// [`node`], or with `cluster` `None` a node on SQLite in its data dir.
fn node_on(cluster: Option<&PgCluster>, carrier: &Carrier, keys_from: Option<&Instance>, pace: u32) -> Instance {
    let url = cluster.map_or_else(|| "\"\"".to_string(), |c| format!("\"{}\"", c.url()));
    let transport = format!("\"smtp://127.0.0.1:{}\"", carrier.port);
    let cap = CAP.to_string();
    let pace = pace.to_string();
    let inst = Instance::new(&[
        ("store.url", url.as_str()),
        ("relay.transport", transport.as_str()),
        ("relay.lease_secs", "3"),
        ("relay.poll_interval_ms", "1000"),
        ("carriers.default.max_connections", cap.as_str()),
        ("carriers.docomo.max_connections", cap.as_str()),
        ("carriers.docomo.rate_per_second", pace.as_str()),
        ("carriers.au.max_connections", cap.as_str()),
        ("carriers.au.rate_per_second", pace.as_str()),
    ]);
    let keys = inst.data_dir().join("keys");
    std::fs::create_dir_all(&keys).expect("keys dir");
    if let Some(first) = keys_from {
        for e in std::fs::read_dir(first.data_dir().join("keys")).expect("keys of the first node").flatten() {
            std::fs::copy(e.path(), keys.join(e.file_name())).expect("copy a key");
        }
    } else {
        mamoru_store::keys::load_or_create(&inst.data_dir()).expect("keys");
    }
    inst
}

fn serve(inst: &Instance) -> Server {
    Server::start(inst.cmd().env("RUST_LOG", "info").arg("serve"))
}

fn store(cluster: &PgCluster, inst: &Instance) -> Store {
    let keys = mamoru_store::keys::load_or_create(&inst.data_dir()).expect("keys");
    Store::open_postgres(&cluster.url(), &keys, Duration::from_secs(10)).expect("open the shared store")
}

fn mails(n: usize, tag: &str) -> Vec<OutgoingMail> {
    (0..n)
        .map(|i| {
            let to = mamoru_core::EmailAddress::parse(&format!("p{i}@{}", DOMAINS[i % DOMAINS.len()])).expect("address");
            let mid = format!("{tag}{i}@{DOMAIN}");
            let bytes = format!("From: <ans@{DOMAIN}>\r\nTo: <{to}>\r\nSubject: t\r\nMessage-ID: <{mid}>\r\n\r\nbody\r\n").into_bytes();
            OutgoingMail { kind: MailKind::RegistrationReceived, sender: format!("ans@{DOMAIN}"), to, message_id: mid, bytes }
        })
        .collect()
}

/// Lost (never accepted) and duplicated (accepted more than once) among
/// `sent`, from the carrier's own records.
fn lost_and_duplicates(carrier: &Carrier, sent: &[OutgoingMail]) -> (usize, u64) {
    lost_and_duplicates_of(carrier, &sent.iter().map(|m| m.message_id.clone()).collect::<Vec<_>>())
}

/// [`lost_and_duplicates`] by Message-ID.
fn lost_and_duplicates_of(carrier: &Carrier, sent: &[String]) -> (usize, u64) {
    let seen: HashMap<String, u32> = carrier.sink.message_ids();
    let lost = sent.iter().filter(|m| !seen.contains_key(*m)).count();
    let duplicates = seen.values().map(|&n| u64::from(n.saturating_sub(1))).sum();
    (lost, duplicates)
}

fn assert_caps(carrier: &Carrier) {
    let most = carrier.most_sessions();
    assert_eq!(most.len(), DOMAINS.len(), "every domain's sessions counted: {most:?}");
    for (domain, most) in most {
        assert!(most >= 1, "{domain}: no session counted");
        assert!(most <= CAP, "{domain}: {most} sessions at once, over the cap of {CAP} of its pool");
    }
}

/// Two nodes serve one database: mail queued after both started is woken
/// across nodes (the nodes poll only once a second here), every pool is
/// sent by one node at a time, so the carrier never sees more sessions
/// than one pool's cap, and every message arrives once.
#[test]
fn two_nodes_on_one_postgres_deliver_everything_once_within_each_carriers_cap() {
    let cluster = PgCluster::start();
    let carrier = Carrier::start();
    let a = node(&cluster, &carrier, None, PACE);
    let b = node(&cluster, &carrier, Some(&a), PACE);
    let server_a = serve(&a);
    let server_b = serve(&b);
    let store = store(&cluster, &a);
    // Both nodes hold what they will hold before the mail comes.
    wait_for("the pools to be held", Duration::from_secs(20), || (store.pool_holders().expect("holders").len() == POOLS).then_some(()));

    let sent = mails(3 * 3 * PACE as usize, "two");
    let began = std::time::Instant::now();
    store.queue_many(&sent[..3], 0, mamoru_core::now(), mamoru_core::now() + 3600).expect("queue");
    wait_for("the first three messages", Duration::from_secs(20), || (carrier.accepted() >= 3).then_some(()));
    let first = began.elapsed();
    store.queue_many(&sent[3..], 0, mamoru_core::now(), mamoru_core::now() + 3600).expect("queue");
    wait_for_or(
        "every message at the carrier",
        Duration::from_secs(120),
        || (carrier.accepted() >= sent.len()).then_some(()),
        || format!("{:?}", store.outbox_counts()),
    );
    // Woken by the other node's NOTIFY, not by the one-second poll.
    assert!(first < Duration::from_millis(900), "the first messages took {first:?}");
    let (lost, duplicates) = lost_and_duplicates(&carrier, &sent);
    assert_eq!((lost, duplicates), (0, 0));
    assert_caps(&carrier);
    // And the pace is the pool's too: no second of the carrier's counts
    // more than one pool's rate and its burst (5).
    let stats = carrier.sink.stats();
    for domain in ["docomo.ne.jp", "ezweb.ne.jp"] {
        let busiest = stats.domains[domain].per_second.iter().max().copied().unwrap_or(0);
        assert!(busiest <= u64::from(PACE) + 5 + 5, "{domain}: {busiest} messages in one second, over the pace of {PACE}/s");
    }
    let holders = store.pool_holders().expect("holders");
    assert_eq!(holders.len(), POOLS, "{holders:?}");

    // The queue command names the holder of each pool.
    let out = a.cmd().arg("queue").output().expect("mamoru queue");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("relay (node)") && text.contains(&holders[0].1), "{text}");

    let (status_b, log_b) = server_b.stop();
    let (status_a, log_a) = server_a.stop();
    assert!(status_a.success() && status_b.success(), "{log_a}\n{log_b}");
    // A node that stops gives its pools up.
    assert!(store.pool_holders().expect("holders").is_empty());
}

/// kill -9 of the node that sends, several times during the delivery of an
/// alert's copies (claimed from `alert_queue` as they go): the other
/// node takes the pools over once their holds lapse and finishes; nothing
/// is lost, duplicates are at most the rows the dead node had leased, and
/// the carrier never sees more sessions than a pool's cap. The figures
/// are printed; `MAMORU_FAILOVER_MESSAGES` and `MAMORU_FAILOVER_KILLS`
/// make it the failover benchmark (scripts/bench-failover).
#[test]
fn kill_9_of_the_sending_node_loses_nothing_and_the_other_node_finishes() {
    let messages: usize = std::env::var("MAMORU_FAILOVER_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let kills: usize = std::env::var("MAMORU_FAILOVER_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let cluster = PgCluster::start();
    let carrier = Carrier::start();
    // Unpaced: this test is about what a kill leaves, not about pace.
    let a = node(&cluster, &carrier, None, 0);
    let b = node(&cluster, &carrier, Some(&a), 0);
    let store = store(&cluster, &a);
    let mut nodes = [Some(serve(&a)), Some(serve(&b))];
    wait_for("the pools to be held", Duration::from_secs(20), || (store.pool_holders().expect("holders").len() == POOLS).then_some(()));
    // An alert's copies, as in an incident (and its preview).
    let sent = publish_to(&store, messages, "failover");
    let began = std::time::Instant::now();

    let step = messages / (kills + 1);
    let mut leased_at_kills = 0;
    for k in 0..kills {
        let target = (k + 1) * step;
        wait_for_or(
            &format!("the carrier to accept {target} messages"),
            Duration::from_secs(120),
            || (carrier.accepted() >= target).then_some(()),
            || format!("{:?} {:?}", store.outbox_counts(), store.pool_holders()),
        );
        // The node that holds the most pools is the one sending.
        let holders = store.pool_holders().expect("holders");
        let dir_a = a.data_dir().display().to_string();
        let on_a = holders.iter().filter(|(_, node, _)| node.ends_with(&dir_a)).count();
        let victim = usize::from(on_a * 2 < holders.len());
        let mut dead = nodes[victim].take().expect("the victim runs");
        dead.child.kill().expect("kill -9");
        dead.child.wait().expect("reap");
        // What was leased (by the dead node, and any pool the other held):
        // only these may arrive twice.
        leased_at_kills += store.outbox_counts().expect("counts").sending;
        // The other node takes every pool over once the holds lapse.
        let other = if victim == 0 { &b } else { &a };
        let other_dir = other.data_dir().display().to_string();
        wait_for_or(
            "the other node to take every pool over",
            Duration::from_secs(30),
            || {
                let now = mamoru_core::now();
                let h = store.pool_holders().expect("holders");
                (h.len() == POOLS && h.iter().all(|(_, node, until)| node.ends_with(&other_dir) && *until > now)).then_some(())
            },
            || format!("{:?}", store.pool_holders()),
        );
        // Only then does the dead node come back, as the spare: restarted
        // at once it would take its own pools back (its name is its machine
        // and data dir), and nothing would fail over.
        nodes[victim] = Some(serve(if victim == 0 { &a } else { &b }));
    }
    wait_for_or(
        "the outbox to drain after the kills",
        Duration::from_secs(300),
        || (store.outbox_counts().expect("counts").sent == sent.len() as i64).then_some(()),
        || format!("{:?} {:?}", store.outbox_counts(), store.pool_holders()),
    );
    let secs = began.elapsed().as_secs_f64();
    let (lost, duplicates) = lost_and_duplicates_of(&carrier, &sent);
    let most = carrier.most_sessions();
    eprintln!(
        "failover: an alert to {messages} subscribers, {kills} kills -9 across two nodes on PostgreSQL: {secs:.1} s; \
         {lost} lost, {duplicates} duplicates (rows leased at the kills: {leased_at_kills}); most sessions per domain {most:?} (cap {CAP})"
    );
    assert_eq!(lost, 0, "lost messages");
    assert!(duplicates <= leased_at_kills as u64, "{duplicates} duplicates, but {leased_at_kills} rows were leased at the kills");
    assert_caps(&carrier);
    for n in nodes.into_iter().flatten() {
        let (status, log) = n.stop();
        assert!(status.success(), "{log}");
    }
}

/// PostgreSQL goes down under a running node: meanwhile LMTP answers 451
/// and the pipe command exits 75 (nothing acknowledged that was not
/// committed); once it is back the node reconnects by itself and the same
/// mail is taken.
#[test]
fn postgres_down_means_451_and_75_and_the_node_reconnects_by_itself() {
    let mut cluster = PgCluster::start();
    let url = format!("\"{}\"", cluster.url());
    let inst = Instance::new(&[("store.url", url.as_str()), ("relay.transport", "\"file\""), ("store.busy_timeout_ms", "1000")]);
    let mut server = inst.serve();
    let lmtp = |server: &Server| swaks_lmtp(server, "hanako@docomo.ne.jp", "ans@mamoru.test");

    cluster.crash();
    let refused = lmtp(&server);
    assert!(refused.contains("451 4.3.0"), "{refused}");
    let piped = inst.ingest("taro@docomo.ne.jp", "ans@mamoru.test", b"Subject: \r\n\r\n");
    assert_eq!(piped.status.code(), Some(75), "{}", String::from_utf8_lossy(&piped.stderr));
    assert!(inst.mail_files().is_empty());

    cluster.restart();
    // The MTA retries; the node needs no restart.
    let accepted = wait_for("LMTP to accept again", Duration::from_secs(30), || {
        let reply = lmtp(&server);
        reply.contains("250 2.0.0").then_some(reply)
    });
    assert!(!accepted.contains("451"), "{accepted}");
    let piped = inst.ingest("taro@docomo.ne.jp", "ans@mamoru.test", b"Subject: \r\n\r\n");
    assert!(piped.status.success(), "{}", String::from_utf8_lossy(&piped.stderr));
    let store = {
        let keys = mamoru_store::keys::load_or_create(&inst.data_dir()).expect("keys");
        Store::open_postgres(&cluster.url(), &keys, Duration::from_secs(10)).expect("store")
    };
    wait_for_or("both 登録受付", Duration::from_secs(30), || (inst.mail_files().len() == 2).then_some(()), || {
        format!("{:?} {:?} {:?}", inst.mail_files(), store.outbox_counts(), store.pool_holders())
    });
    let log = server.logs();
    assert!(!log.contains("hanako") && !log.contains("taro"), "address in clear in the log");
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

/// `[store] url` with `sslmode=require` on a server that takes TLS only:
/// with `tls_ca_file` naming the CA of its certificate a node registers a
/// parent; with the system's roots (which do not know that CA) it refuses
/// to start rather than go on unverified.
#[test]
fn postgres_over_verified_tls() {
    let certs = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = crate::transports::make_certs(certs.path());
    let mut cluster = PgCluster::start();
    cluster.require_tls(&cert, &key);
    let url = format!("\"postgres://mamoru@localhost:{}/mamoru?sslmode=require\"", cluster.port());
    let ca_file = format!("\"{}\"", ca.display());

    // A plain connection is refused by the server: TLS is really in use.
    let plain = format!("\"postgres://mamoru@localhost:{}/mamoru?sslmode=disable\"", cluster.port());
    let out = Instance::new(&[("store.url", plain.as_str())]).cmd().arg("queue").output().expect("mamoru queue");
    assert!(!out.status.success(), "a plain connection was accepted");

    let unverified = Instance::new(&[("store.url", url.as_str())]);
    let out = unverified.cmd().arg("queue").output().expect("mamoru queue");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.to_lowercase().contains("certificate"), "{err}");

    let inst = Instance::new(&[("store.url", url.as_str()), ("store.tls_ca_file", ca_file.as_str()), ("relay.transport", "\"file\"")]);
    let server = inst.serve();
    let reply = swaks_lmtp(&server, "hanako@docomo.ne.jp", "ans@mamoru.test");
    assert!(reply.contains("250 2.0.0"), "{reply}");
    wait_for("登録受付", Duration::from_secs(20), || inst.mail_files().first().cloned());
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

/// Publishes an alert to `n` new subscribers spread over [`DOMAINS`], as
/// an admin's publish does, and returns the Message-IDs of its copies and
/// of its preview (mailed to an admin of the same domains).
fn publish_to(store: &Store, n: usize, tag: &str) -> Vec<String> {
    use mamoru_store::admins::AdminAdded;
    use mamoru_store::alerts::{Drafted, NewAlert, PublishAuth, Published};
    let now = mamoru_core::now();
    let items: Vec<(mamoru_core::EmailAddress, Vec<u32>)> = (0..n)
        .map(|i| (mamoru_core::EmailAddress::parse(&format!("{tag}{i}@{}", DOMAINS[i % DOMAINS.len()])).expect("address"), vec![1]))
        .collect();
    assert_eq!(store.import_active_subscribers(&items, "bench", now).expect("import"), n);
    // Looked up before the publish: the copies go out as soon as it commits.
    let subscribers: Vec<i64> =
        items.iter().map(|(a, _)| store.find_subscriber(a).expect("find").expect("subscriber").id.get()).collect();
    let staff = mamoru_core::EmailAddress::parse("staff@example.com").expect("address");
    let AdminAdded::Added(admin) = store.add_admin(tag, &staff, "x", &[], "bench", now).expect("admin") else { panic!("admin exists") };
    let new = NewAlert { title: "声かけ", text: "公園で児童に声をかける男性がいました。", districts: &[1], ..NewAlert::new(admin, "cli") };
    let preview = format!("preview.{tag}@{DOMAIN}");
    let render = |_, _, _: &mamoru_store::alerts::Audience| OutgoingMail {
        kind: MailKind::AlertPreview,
        sender: format!("ans@{DOMAIN}"),
        to: staff.clone(),
        message_id: preview.clone(),
        bytes: format!("To: <staff@example.com>\r\nSubject: p\r\nMessage-ID: <{preview}>\r\n\r\nbody\r\n").into_bytes(),
    };
    let Drafted::Created { alert, .. } = store.draft_alert(&new, now, now + 3600, render).expect("draft") else { panic!("duplicate") };
    let mut ids: Vec<String> = subscribers.iter().map(|s| format!("alert.{alert}.{s}@{DOMAIN}")).collect();
    ids.push(preview);
    let published = store.publish_alert(PublishAuth::Direct(alert), "bench", now, now + 3600, &format!("ans@{DOMAIN}"), DOMAIN);
    assert_eq!(published.expect("publish"), Published::Published { alert, recipients: n });
    ids
}

/// Drain figures, side by side in one run: `MAMORU_DRAIN_MESSAGES`
/// (default 3000) queued at once to three unpaced pools, delivered by one
/// node on SQLite, then by two nodes on one PostgreSQL; the time from the
/// queue's commit to the carrier's last acceptance, and nothing lost or
/// doubled, counted at the carrier. `scripts/bench-nodes` runs it large.
/// With `MAMORU_DRAIN_ALERT=1` the messages are the copies of one
/// published alert (and its preview) instead of mails queued as they are.
#[test]
fn drain_two_nodes_on_postgres_beside_one_node_on_sqlite() {
    let messages: usize = std::env::var("MAMORU_DRAIN_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let alert = std::env::var("MAMORU_DRAIN_ALERT").is_ok_and(|v| v == "1");
    let drain = |carrier: &Carrier, store: &Store, tag: &str| -> f64 {
        let (sent, began) = if alert {
            let ids = publish_to(store, messages, tag);
            (ids, std::time::Instant::now())
        } else {
            let sent = mails(messages, tag);
            let now = mamoru_core::now();
            store.queue_many(&sent, 0, now, now + 3600).expect("queue");
            (sent.into_iter().map(|m| m.message_id).collect(), std::time::Instant::now())
        };
        wait_for_or(
            "every message at the carrier",
            Duration::from_secs(600),
            || (carrier.accepted() >= sent.len()).then_some(()),
            || format!("{:?}", store.outbox_counts()),
        );
        let secs = began.elapsed().as_secs_f64();
        assert_eq!(lost_and_duplicates_of(carrier, &sent), (0, 0), "{tag}: lost and duplicates");
        assert_caps(carrier);
        secs
    };

    let carrier = Carrier::start();
    let one = node_on(None, &carrier, None, 0);
    let server = serve(&one);
    let sqlite = drain(&carrier, &one.store(), "sqlite");
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");

    let cluster = PgCluster::start();
    let carrier = Carrier::start();
    let a = node(&cluster, &carrier, None, 0);
    let b = node(&cluster, &carrier, Some(&a), 0);
    let (server_a, server_b) = (serve(&a), serve(&b));
    let store = store(&cluster, &a);
    wait_for("the pools to be held", Duration::from_secs(20), || (store.pool_holders().expect("holders").len() == POOLS).then_some(()));
    let postgres = drain(&carrier, &store, "postgres");
    for server in [server_a, server_b] {
        let (status, log) = server.stop();
        assert!(status.success(), "{log}");
    }
    let rate = |secs: f64| messages as f64 / secs;
    eprintln!(
        "drain: {messages} {}, 3 pools of {CAP} sessions, unpaced: one node on SQLite {:.0} msg/s ({sqlite:.2} s); \
         two nodes on PostgreSQL {:.0} msg/s ({postgres:.2} s); PostgreSQL / SQLite {:.2}",
        if alert { "copies of a published alert" } else { "messages" },
        rate(sqlite),
        rate(postgres),
        sqlite / postgres
    );
}
