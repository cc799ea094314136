//! kill -9 the relay mid-drain, several times: nothing is lost, and the
//! duplicates are bounded by what was in flight at each kill (the rows the
//! dead relay held leased). The carrier emulator runs in this process, so the
//! test reads exactly what it received.

use std::collections::HashMap;
use std::process::{Child, Stdio};

use std::sync::Arc;

use mamoru_core::mail::{MailKind, OutgoingMail};
use mamoru_sink::policy::PolicyConfig;
use mamoru_sink::server::Sink;
use tokio_util::sync::CancellationToken;

use crate::support::*;
use std::time::Duration;

const MESSAGES: usize = 5000;
const KILLS: usize = 4;

/// A small deterministic generator (the kill points only need to vary).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

fn sending(inst: &Instance) -> i64 {
    inst.store().outbox_counts().expect("counts").sending
}

/// A relay process, killed (by its pid) when dropped, so a failing
/// assertion leaves no relay behind.
struct Relay(Child);

impl Relay {
    fn kill_9(&mut self) {
        self.0.kill().expect("kill -9");
        self.0.wait().expect("reap");
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_relay(inst: &Instance, n: usize) -> Relay {
    let log = std::fs::File::create(inst.dir.path().join(format!("relay-{n}.log"))).expect("log file");
    Relay(inst.cmd().env("RUST_LOG", "warn").arg("relay").stdout(Stdio::null()).stderr(log).spawn().expect("start mamoru relay"))
}

#[test]
fn kill_9_mid_drain_loses_nothing_and_duplicates_only_what_was_in_flight() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let sink = Arc::new(Sink::new("carrier.test", PolicyConfig::default()));
    let stop = CancellationToken::new();
    rt.spawn(mamoru_sink::server::run(listener, Arc::clone(&sink), stop.clone()));

    let transport = format!("\"smtp://127.0.0.1:{port}\"");
    let inst = Instance::new(&[
        ("relay.transport", &transport),
        // A short lease so a dead relay's rows come back quickly.
        ("relay.lease_secs", "3"),
        ("relay.poll_interval_ms", "20"),
        ("carriers.default.max_connections", "4"),
        // Three pools, unthrottled: this test is about durability, not pace.
        ("carriers.docomo.rate_per_second", "0"),
        ("carriers.au.rate_per_second", "0"),
    ]);
    let now = mamoru_core::now();
    let mails: Vec<OutgoingMail> = (0..MESSAGES)
        .map(|i| {
            let domain = ["docomo.ne.jp", "ezweb.ne.jp", "example.com"][i % 3];
            let to = mamoru_core::EmailAddress::parse(&format!("p{i}@{domain}")).expect("address");
            let mid = format!("crash{i}@{DOMAIN}");
            let bytes = format!("From: <ans@{DOMAIN}>\r\nTo: <{to}>\r\nSubject: t\r\nMessage-ID: <{mid}>\r\n\r\nbody\r\n").into_bytes();
            OutgoingMail { kind: MailKind::RegistrationReceived, sender: format!("ans@{DOMAIN}"), to, message_id: mid, bytes }
        })
        .collect();
    inst.store().queue_many(&mails, 0, now, now + 3600).expect("queue");

    let mut rng = Lcg(u64::from(std::process::id()) ^ now as u64);
    let mut in_flight_at_kills = 0;
    for n in 0..KILLS {
        let received = sink.stats().accepted as usize;
        // Kill when the sink has received a random further 200..1000 messages.
        let target = received + 200 + rng.below(800) as usize;
        let mut relay = start_relay(&inst, n);
        wait_for_or(
            &format!("the sink to receive {target} messages"),
            Duration::from_secs(60),
            || (sink.stats().accepted as usize >= target.min(MESSAGES)).then_some(()),
            || std::fs::read_to_string(inst.dir.path().join(format!("relay-{n}.log"))).unwrap_or_default(),
        );
        relay.kill_9();
        // What the dead relay held: claimed and maybe delivered, not
        // recorded. Only these may be delivered twice.
        in_flight_at_kills += sending(&inst);
    }
    let mut relay = start_relay(&inst, KILLS);
    let store = inst.store();
    wait_for_or(
        "the outbox to drain after the kills",
        Duration::from_secs(120),
        || {
            let c = store.outbox_counts().expect("counts");
            (c.sent == MESSAGES as i64).then_some(())
        },
        || format!("{:?}", store.outbox_counts()),
    );
    relay.kill_9();
    stop.cancel();

    let seen: HashMap<String, u32> = sink.message_ids();
    let lost: Vec<&OutgoingMail> = mails.iter().filter(|m| !seen.contains_key(&m.message_id)).collect();
    assert!(lost.is_empty(), "{} messages lost, e.g. {:?}", lost.len(), lost.first().map(|m| &m.message_id));
    let duplicates: u64 = seen.values().map(|&n| u64::from(n.saturating_sub(1))).sum();
    assert!(
        duplicates <= in_flight_at_kills as u64,
        "{duplicates} duplicates, but only {in_flight_at_kills} rows were in flight at the kills"
    );
    assert_eq!(seen.len(), MESSAGES, "only our messages");
}
