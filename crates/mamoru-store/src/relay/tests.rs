use std::time::Duration;

use mamoru_core::EmailAddress;
use mamoru_core::mail::{MailKind, OutgoingMail};

use super::*;
use crate::keys;

const T0: UnixTime = 1_800_000_000;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys::load_or_create(dir.path()).expect("keys");
    let store = Store::open_for_test(dir.path(), &keys, Duration::from_millis(200)).expect("store");
    (dir, store)
}

fn mail(to: &str, n: usize) -> OutgoingMail {
    OutgoingMail {
        kind: MailKind::RegistrationReceived,
        sender: "ans@x.test".into(),
        to: EmailAddress::parse(to).expect("address"),
        message_id: format!("{n}@x.test"),
        bytes: b"Subject: t\r\n\r\nbody\r\n".to_vec(),
    }
}

fn states(store: &Store) -> Vec<String> {
    let conn = store.conn().unwrap();
    let mut stmt = conn.prepare("SELECT state FROM outbox ORDER BY id").expect("prepare");
    stmt.query_map(params![], |r| r.get(0)).expect("query").collect::<Result<_>>().expect("rows")
}

#[test]
fn claims_are_per_pool_and_outcomes_commit_in_groups() {
    let (_dir, store) = store();
    let mails = [mail("a@docomo.ne.jp", 1), mail("b@au.com", 2), mail("c@example.com", 3), mail("d@docomo.ne.jp", 4)];
    let ids = store.queue_many(&mails, 0, T0, T0 + 3600).expect("queue");
    let carriers = vec!["docomo.ne.jp".to_string(), "au.com".to_string()];
    let docomo = store.claim_due_in(T0, 60, 10, &DomainFilter::Only(vec!["docomo.ne.jp".into()])).expect("claim");
    assert_eq!(docomo.iter().map(|m| m.id).collect::<Vec<_>>(), [ids[0], ids[3]]);
    let other = store.claim_due_in(T0, 60, 10, &DomainFilter::Except(carriers.clone())).expect("claim");
    assert_eq!(other.iter().map(|m| m.id).collect::<Vec<_>>(), [ids[2]]);
    // Claimed rows are not claimed twice while leased.
    assert!(store.claim_due_in(T0, 60, 10, &DomainFilter::Only(vec!["docomo.ne.jp".into()])).expect("claim").is_empty());
    store
        .record_outcomes(
            &[
                (ids[0], OutcomeRecord::Sent),
                (ids[3], OutcomeRecord::Retry { at: T0 + 5, reason: "421".into() }),
                (ids[2], OutcomeRecord::Failed { reason: "554".into() }),
            ],
            T0,
        )
        .expect("record");
    assert_eq!(states(&store), ["sent", "queued", "failed", "queued"]);
    // The retried row is due at its time, not before.
    assert!(store.claim_due_in(T0 + 4, 60, 10, &DomainFilter::Only(vec!["docomo.ne.jp".into()])).expect("c").is_empty());
    assert_eq!(store.claim_due_in(T0 + 5, 60, 10, &DomainFilter::Only(vec!["docomo.ne.jp".into()])).expect("c").len(), 1);
    // A dead relay's lease runs out and the row comes back.
    let back = store.claim_due_in(T0 + 66, 60, 10, &DomainFilter::Only(vec!["docomo.ne.jp".into()])).expect("claim");
    assert_eq!(back.iter().map(|m| (m.id, m.attempts)).collect::<Vec<_>>(), [(ids[3], 3)]);
}

/// A dead relay's rows come back to the pool they belong to, no more at
/// once than a claim takes, and the claim of one pool leaves the other
/// pools' lapsed rows free (on PostgreSQL: unlocked) for theirs.
#[test]
fn lapsed_rows_come_back_per_pool_and_no_more_than_the_claim_takes() {
    let (_dir, store) = store();
    let mails: Vec<OutgoingMail> =
        (0..12).map(|n| mail(&format!("p{n}@{}", ["docomo.ne.jp", "au.com", "example.com"][n % 3]), n)).collect();
    let ids = store.queue_many(&mails, 0, T0, T0 + 3600).expect("queue");
    assert_eq!(store.claim_due_in(T0, 60, 100, &DomainFilter::Except(vec![])).expect("claim").len(), 12);
    // The leases lapse (the relay died).
    let docomo = DomainFilter::Only(vec!["docomo.ne.jp".into()]);
    let other = DomainFilter::Except(vec!["docomo.ne.jp".into(), "au.com".into()]);
    let tx = store.begin_rows().expect("begin");
    assert_eq!(lapsed_rows(&tx, T0 + 61, 3, &docomo).expect("lapsed"), [ids[0], ids[3], ids[6]]);
    // While that claim is open, the other pool's rows are still its own
    // (SQLite has one writer at a time: nothing to see there).
    if store.dialect() == crate::db::Dialect::Postgres {
        let others = store.claim_due_in(T0 + 61, 60, 100, &other).expect("claim");
        assert_eq!(others.iter().map(|m| m.id).collect::<Vec<_>>(), [ids[2], ids[5], ids[8], ids[11]]);
    }
    drop(tx);
    let docomo_rows = store.claim_due_in(T0 + 61, 60, 2, &docomo).expect("claim");
    assert_eq!(docomo_rows.iter().map(|m| m.id).collect::<Vec<_>>(), [ids[0], ids[3]]);
    let au = store.claim_due_in(T0 + 61, 60, 100, &DomainFilter::Only(vec!["au.com".into()])).expect("claim");
    assert_eq!(au.len(), 4);
}

/// The pool of the domains no carrier names takes its domains in the order
/// of their first queued row, priority and then age, and each domain in
/// priority order; what one claim leaves, the next one starts with.
#[test]
fn the_other_domains_are_claimed_by_their_first_row_priority_then_age() {
    let (_dir, store) = store();
    let queue = |to: &str, n: usize, priority: i64| store.queue_many(&[mail(to, n)], priority, T0, T0 + 3600).expect("queue")[0];
    let example = queue("a@example.com", 1, 0);
    let gmail_low = queue("b@gmail.com", 2, 0);
    let yahoo = queue("c@yahoo.co.jp", 3, 100);
    let gmail_high = queue("d@gmail.com", 4, 100);
    let docomo = queue("e@docomo.ne.jp", 5, 100);
    let later = queue("f@yahoo.co.jp", 6, 0);
    let other = DomainFilter::Except(vec!["docomo.ne.jp".into()]);
    let ids = |claimed: Vec<QueuedMail>| claimed.iter().map(|m| m.id).collect::<Vec<_>>();
    // yahoo's first row (100, 3) before gmail's (100, 4) before example's (0, 1).
    assert_eq!(ids(store.claim_due_in(T0, 60, 3, &other).expect("claim")), [yahoo, later, gmail_high]);
    assert_eq!(ids(store.claim_due_in(T0, 60, 10, &other).expect("claim")), [example, gmail_low]);
    assert!(store.claim_due_in(T0, 60, 10, &other).expect("claim").is_empty());
    assert_eq!(ids(store.claim_due_in(T0, 60, 10, &DomainFilter::Except(vec![])).expect("claim")), [docomo]);
    // The walk over the domains reads the index alone: no scan of the
    // table, no sort (SQLite says so; PostgreSQL plans by its statistics).
    if store.dialect() == crate::db::Dialect::Sqlite {
        let c = store.conn().expect("conn");
        let plan: Vec<String> =
            c.query_map(&format!("EXPLAIN QUERY PLAN {}", queued_heads_sql(&c)), &[], |r| r.get(3)).expect("plan");
        assert!(plan.iter().any(|p| p.contains("outbox_pool_due")), "{plan:?}");
        // (The first row comes from an ordered walk of the index, stopped
        // after one row: "SCAN outbox USING COVERING INDEX".)
        assert!(!plan.iter().any(|p| (p.starts_with("SCAN") && !p.contains("INDEX") && p != "SCAN h" && p != "SCAN CONSTANT ROW") || p.contains("TEMP B-TREE")), "{plan:?}");
    }
}

#[test]
fn expiry_and_shape() {
    let (_dir, store) = store();
    store.queue_many(&[mail("a@docomo.ne.jp", 1)], 0, T0, T0 + 10).expect("queue");
    store.queue_many(&[mail("b@docomo.ne.jp", 2)], 0, T0 - 700, T0 + 3600).expect("queue");
    assert!(store.claim_due_in(T0 + 10, 60, 10, &DomainFilter::Only(vec!["docomo.ne.jp".into()])).expect("c").len() == 1);
    assert_eq!(store.expire_due(T0 + 10).expect("expire"), 1);
    assert_eq!(states(&store), ["expired", "sending"]);
    let shape = store.outbox_shape(T0 + 10).expect("shape");
    assert_eq!(shape.len(), 2);
    assert_eq!((shape[0].state.as_str(), shape[0].buckets[0]), ("expired", 1));
    // Queued 710 s before: the 10–20 minute bucket.
    assert_eq!((shape[1].state.as_str(), shape[1].buckets[2]), ("sending", 1));
    // The rows still to deliver only, with the oldest one's queue time.
    let pending = store.pending_shape(T0 + 10).expect("pending");
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!((pending[0].domain.as_str(), pending[0].state.as_str()), ("docomo.ne.jp", "sending"));
    assert_eq!((pending[0].buckets[2], pending[0].buckets.iter().sum::<i64>(), pending[0].oldest), (1, 1, T0 - 700));
}

#[test]
fn the_pending_shape_buckets_as_the_full_shape_does_at_every_bound() {
    let (_dir, store) = store();
    // Ages on both sides of each bucket's bound, in two domains.
    let mut n = 0;
    for domain in ["docomo.ne.jp", "ezweb.ne.jp"] {
        for age in [0, 299, 300, 301, 599, 600, 1199, 1200, 2400, 4799, 9600, 19_199, 38_400, 76_799, 76_800, 500_000] {
            n += 1;
            store.queue_many(&[mail(&format!("u{n}@{domain}"), n)], 0, T0 - age, T0 + 3600).expect("queue");
        }
    }
    // Some in flight, one delivered (left out of the pending shape).
    let claimed = store.claim_due_in(T0, 60, 5, &DomainFilter::Only(vec!["ezweb.ne.jp".into()])).expect("claim");
    assert_eq!(claimed.len(), 5);
    store.mark_sent(claimed[0].id, T0).expect("sent");
    let pending = store.pending_shape(T0).expect("pending");
    let full: Vec<_> = store
        .outbox_shape(T0)
        .expect("shape")
        .into_iter()
        .filter(|r| matches!(r.state.as_str(), "queued" | "sending"))
        .map(|r| (r.domain, r.state.as_str().to_string(), r.buckets))
        .collect();
    let got: Vec<_> = pending.iter().map(|r| (r.domain.clone(), r.state.clone(), r.buckets.clone())).collect();
    assert_eq!(got, full);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(pending.iter().map(|r| r.buckets.iter().sum::<i64>()).sum::<i64>(), 31);
    let docomo = &pending[0];
    assert_eq!(docomo.buckets, [2, 3, 2, 1, 2, 0, 2, 0, 2, 2], "{docomo:?}");
    assert_eq!(docomo.oldest, T0 - 500_000);
}

#[test]
fn pool_state_round_trips() {
    let (_dir, store) = store();
    let p = PoolState {
        name: "docomo".into(),
        rate_configured: 10.0,
        rate_now: 5.0,
        paused_until_ms: 7,
        connections: 1,
        max_connections: 2,
        throttles: 3,
        sent: 4,
        updated_at: T0,
    };
    store.save_pool_states(std::slice::from_ref(&p)).expect("save");
    store.save_pool_states(&[PoolState { sent: 9, ..p.clone() }]).expect("save");
    assert_eq!(store.pool_states().expect("read"), [PoolState { sent: 9, ..p }]);
}

#[test]
fn learned_limits_round_trip_and_keep_no_reply_text() {
    let (_dir, store) = store();
    assert_eq!(store.learned_limits().expect("read"), []);
    let docomo = LearnedLimits {
        pool: "docomo".into(),
        connections: 1,
        connections_ceiling: 2,
        pace: 4.5,
        pace_ceiling: 10.0,
        sessions_mark: Some(LearnedMark { level: 2.0, hits: 2, at: T0 - 60 }),
        pace_mark: Some(LearnedMark { level: 5.0, hits: 1, at: T0 - 30 }),
        last_push_back: Some(PushBack { at: T0 - 30, signal: PushBackSignal::Pace, code: 421, enhanced: "4.7.0".into() }),
        updated_at: T0,
    };
    let au = LearnedLimits {
        pool: "au".into(),
        connections: 4,
        connections_ceiling: 4,
        pace: 0.0,
        pace_ceiling: 0.0,
        sessions_mark: None,
        pace_mark: None,
        last_push_back: None,
        updated_at: T0,
    };
    store.save_learned_limits(&[docomo.clone(), au.clone()]).expect("save");
    assert_eq!(store.learned_limits().expect("read"), [au.clone(), docomo.clone()]);
    // Rewritten in place, one row per pool.
    let later = LearnedLimits { connections: 2, sessions_mark: None, updated_at: T0 + 5, ..docomo };
    store.save_learned_limits(std::slice::from_ref(&later)).expect("save");
    assert_eq!(store.learned_limits().expect("read"), [au, later]);
    // Only codes are kept: the table has no column for a reply's text.
    let conn = store.conn().unwrap();
    let mut stmt = conn
        .prepare(match store.dialect() {
            crate::db::Dialect::Sqlite => "SELECT name FROM pragma_table_info('relay_learned')",
            crate::db::Dialect::Postgres => {
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns WHERE table_name = 'relay_learned'"
            }
        })
        .expect("prepare");
    let columns: Vec<String> = stmt.query_map(params![], |r| r.get(0)).expect("query").collect::<Result<_>>().expect("rows");
    assert!(columns.iter().all(|c| !c.contains("text") && !c.contains("reason")), "{columns:?}");
}

/// Two stores on one PostgreSQL database are two mamoru nodes: claiming
/// together, from two threads each, they never lease the same row, and
/// between them they take every row once.
#[test]
fn two_nodes_on_one_postgres_database_never_claim_the_same_row() {
    let cluster = crate::pgtest::PgCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys::load_or_create(dir.path()).expect("keys");
    let nodes = [
        Store::open_postgres(&cluster.url(), &keys, Duration::from_secs(10)).expect("node a"),
        Store::open_postgres(&cluster.url(), &keys, Duration::from_secs(10)).expect("node b"),
    ];
    let domains = ["docomo.ne.jp", "au.com", "example.com"];
    let mails: Vec<OutgoingMail> = (0..600).map(|n| mail(&format!("p{n}@{}", domains[n % 3]), n)).collect();
    nodes[0].queue_many(&mails, 0, T0, T0 + 3600).expect("queue");
    let filters = [DomainFilter::Only(vec!["docomo.ne.jp".into()]), DomainFilter::Except(vec!["docomo.ne.jp".into()])];
    let claimed: Vec<OutboxId> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (node, filter) = (&nodes[w % 2], &filters[w / 2]);
                s.spawn(move || {
                    let mut mine = Vec::new();
                    let mut empty = 0;
                    while empty < 3 {
                        match node.claim_due_in(T0, 600, 25, filter) {
                            Ok(rows) if rows.is_empty() => empty += 1,
                            Ok(rows) => mine.extend(rows.iter().map(|r| r.id)),
                            // PostgreSQL aborted a claim to keep it serial:
                            // the relay tries again, and so does this.
                            Err(crate::StoreError::Busy) => std::thread::sleep(Duration::from_millis(2)),
                            Err(e) => panic!("claim: {e}"),
                        }
                    }
                    mine
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    let mut unique = claimed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), claimed.len(), "a row was leased twice");
    assert_eq!(claimed.len(), 600, "every row is taken once");
    assert_eq!(nodes[1].outbox_counts().expect("counts").sending, 600);
}

/// The relay's busy transactions on PostgreSQL — two pools claiming, their
/// acceptances committed in groups, the held rows' leases renewed — run
/// side by side without PostgreSQL aborting one of them. Each is run once
/// here, not through `serially`, so an abort is an error the test sees:
/// under `SERIALIZABLE` these aborted each other by the dozen.
#[test]
fn claims_outcomes_and_renewals_together_on_postgres_are_never_refused() {
    use std::sync::Mutex;
    let cluster = crate::pgtest::PgCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys::load_or_create(dir.path()).expect("keys");
    let store = Store::open_postgres(&cluster.url(), &keys, Duration::from_secs(10)).expect("store");
    let domains = ["docomo.ne.jp", "au.com", "example.com"];
    let mails: Vec<OutgoingMail> = (0..3000).map(|n| mail(&format!("p{n}@{}", domains[n % 3]), n)).collect();
    store.queue_many(&mails, 0, T0, T0 + 3600).expect("queue");
    let filters = [DomainFilter::Only(vec!["docomo.ne.jp".into()]), DomainFilter::Except(vec!["docomo.ne.jp".into()])];
    // What the pools hold between their claim and its outcome.
    let held: Mutex<Vec<OutboxId>> = Mutex::new(Vec::new());
    let claiming = std::sync::atomic::AtomicUsize::new(filters.len());
    let (claimed, renewed) = std::thread::scope(|s| {
        let pools: Vec<_> = filters
            .iter()
            .map(|filter| {
                let (store, held, claiming) = (&store, &held, &claiming);
                s.spawn(move || {
                    let pool = || -> Result<Vec<OutboxId>> {
                        let mut mine = Vec::new();
                        loop {
                            let rows = store.claim_rows(T0, 600, 40, filter)?;
                            if rows.is_empty() {
                                return Ok(mine);
                            }
                            let ids: Vec<OutboxId> = rows.iter().map(|r| r.0.0).collect();
                            held.lock().unwrap().extend(&ids);
                            // Accepted, in two groups as the committer makes them.
                            for group in ids.chunks(25) {
                                let outcomes: Vec<_> = group.iter().map(|id| (*id, OutcomeRecord::Sent)).collect();
                                store.record_outcomes_once(&outcomes, T0 + 1)?;
                                held.lock().unwrap().retain(|id| !group.contains(id));
                            }
                            mine.extend(ids);
                        }
                    };
                    let mine = pool();
                    // Also when the pool failed, so the renewals stop.
                    claiming.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    mine.expect("claim or outcomes")
                })
            })
            .collect();
        let renewals = s.spawn(|| {
            let mut renewed = 0;
            let mut until = T0 + 600;
            while claiming.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                let ids: Vec<OutboxId> = held.lock().unwrap().clone();
                until += 1;
                match store.renew_leases_once(&ids, until) {
                    Ok(n) => renewed += n,
                    Err(e) => return Err(e),
                }
            }
            Ok(renewed)
        });
        let claimed: Vec<OutboxId> = pools.into_iter().flat_map(|p| p.join().expect("pool")).collect();
        (claimed, renewals.join().expect("renewals").expect("renewal"))
    });
    let mut unique = claimed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((claimed.len(), unique.len()), (3000, 3000), "every row claimed once");
    assert!(renewed > 0, "the renewals ran beside the claims");
    let counts = store.outbox_counts().expect("counts");
    assert_eq!((counts.sent, counts.sending, counts.queued), (3000, 0, 0));
}

#[test]
fn one_relay_holds_a_pool_until_its_hold_lapses_or_it_lets_go() {
    let (_dir, store) = store();
    let pools = vec!["docomo".to_string(), "au".to_string(), "default".to_string()];
    assert_eq!(store.hold_pools("node-a", &pools, T0, T0 + 30).unwrap(), ["au", "default", "docomo"]);
    // Another relay gets nothing while the holds last, even at their last
    // second.
    assert!(store.hold_pools("node-b", &pools, T0 + 29, T0 + 59).unwrap().is_empty());
    // The holder renews; a pool it no longer runs is not reported.
    assert_eq!(store.hold_pools("node-a", &pools[..2], T0 + 10, T0 + 40).unwrap(), ["au", "docomo"]);
    // The unrenewed hold lapses and the other relay takes that pool only.
    assert_eq!(store.hold_pools("node-b", &pools, T0 + 30, T0 + 60).unwrap(), ["default"]);
    assert_eq!(store.hold_pools("node-a", &pools, T0 + 31, T0 + 61).unwrap(), ["au", "docomo"]);
    // Letting go hands the pools over at once.
    assert_eq!(store.let_go_pools("node-a").unwrap(), 2);
    assert_eq!(store.hold_pools("node-b", &pools, T0 + 32, T0 + 62).unwrap(), ["au", "default", "docomo"]);
    let holders = store.pool_holders().unwrap();
    assert_eq!(holders, [("au".into(), "node-b".into(), T0 + 62), ("default".into(), "node-b".into(), T0 + 62), ("docomo".into(), "node-b".into(), T0 + 62)]);
}

/// What one node queues wakes another node's relay, also after the server
/// restarted under both (the listening connection is made again), and the
/// pooled connections come back by themselves: statements fail as
/// transient while the server is down and succeed once it is up.
#[test]
fn a_node_hears_what_another_queues_and_both_come_back_after_a_restart() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut cluster = crate::pgtest::PgCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys::load_or_create(dir.path()).expect("keys");
    let a = Store::open_postgres(&cluster.url(), &keys, Duration::from_secs(2)).expect("node a");
    let b = Store::open_postgres(&cluster.url(), &keys, Duration::from_secs(2)).expect("node b");
    let heard = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&heard);
    assert!(b.on_queued(move || { h.fetch_add(1, Ordering::SeqCst); }).expect("listen"));
    let wait_for = |n: usize| {
        let until = std::time::Instant::now() + Duration::from_secs(40);
        while heard.load(Ordering::SeqCst) < n {
            assert!(std::time::Instant::now() < until, "heard {} of {n}", heard.load(Ordering::SeqCst));
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Once when listening starts.
    wait_for(1);
    a.queue_many(&[mail("p1@docomo.ne.jp", 1), mail("p2@au.com", 2)], 0, T0, T0 + 3600).expect("queue");
    wait_for(2);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(heard.load(Ordering::SeqCst), 2, "one statement, one wake-up");

    cluster.crash();
    let err = a.queue_many(&[mail("p3@docomo.ne.jp", 3)], 0, T0, T0 + 3600).expect_err("the server is down");
    assert!(err.is_transient(), "{err}");
    cluster.restart();
    // The pool drops its dead connections and makes new ones.
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let queued = loop {
        match a.queue_many(&[mail("p4@docomo.ne.jp", 4)], 0, T0, T0 + 3600) {
            Ok(ids) => break ids,
            Err(e) => {
                assert!(e.is_transient() && std::time::Instant::now() < until, "{e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(queued.len(), 1);
    // Heard again: on listening anew, and for the row (or both at once).
    wait_for(3);
    assert_eq!(b.claim_due_in(T0, 60, 10, &DomainFilter::Only(vec!["docomo.ne.jp".into()])).expect("claim").len(), 2);
}
