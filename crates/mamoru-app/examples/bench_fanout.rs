//! Fan-out benchmark: 100k active subscribers spread over 10
//! districts; an alert to 3 of them is published, and the time from the
//! call to the commit of all its outbox rows is printed. Then the
//! subscribers get preferences (a seventh turned the alert's kind off, an eleventh
//! another kind, a quarter have quiet hours 22:00–7:00 and a quarter a window
//! around now) and a second alert to the same districts is timed the same
//! way, so both figures come from one run. Run through
//! `scripts/bench-fanout` (release build). The rows hold no content: the
//! relay renders each copy when it sends it (`BENCH_SPLIT=1` also times
//! that rendering, which is not part of the figure).

use std::time::{Duration, Instant};

use std::sync::Arc;

use mamoru_app::App;
use mamoru_app::alerts::Publisher;
use mamoru_core::alert::AlertDraft;
use mamoru_core::{Config, EmailAddress};
use mamoru_store::Store;
use mamoru_store::admins::AdminAdded;
use mamoru_store::alerts::{Drafted, NewAlert, Published};

fn main() {
    let subscribers: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = mamoru_store::keys::load_or_create(dir.path()).expect("keys");
    let store = Arc::new(Store::open(dir.path(), &keys, Duration::from_secs(5)).expect("store"));
    let cfg = Config { domain: "mamoru.test".into(), ..Default::default() };
    let domains = ["docomo.ne.jp", "ezweb.ne.jp", "i.softbank.jp", "au.com", "gmail.com"];
    // Deterministic spread: each subscriber picks one district, a third of
    // them a second one, like parents with children at two schools.
    let items: Vec<(EmailAddress, Vec<u32>)> = (0..subscribers)
        .map(|i| {
            let addr = EmailAddress::parse(&format!("parent{i}@{}", domains[i % domains.len()])).expect("addr");
            let first = (i * 7 % 10) as u32 + 1;
            let mut d = vec![first];
            if i % 3 == 0 {
                d.push(first % 10 + 1);
            }
            (addr, d)
        })
        .collect();
    let t = Instant::now();
    store.import_active_subscribers(&items, "bench", 1).expect("import");
    eprintln!("imported {subscribers} subscribers in {:.2} s", t.elapsed().as_secs_f64());
    let AdminAdded::Added(_) = store.add_admin("bench", &EmailAddress::parse("staff@city.test").expect("addr"), "x", &[], "bench", 1).expect("admin")
    else {
        panic!("admin exists")
    };
    let app = App::new(Arc::new(cfg.clone()), Arc::clone(&store), keys.token_key());
    let admin_row = store.admin_credentials("bench").expect("store").expect("the admin").0;
    let (first, recipients, secs) = publish(&cfg, &store, &app, &admin_row, &items);
    report(&store, subscribers, "no preferences", recipients, secs);

    let db = rusqlite::Connection::open(store.path()).expect("open the database");
    let minute = mamoru_core::jst::minute_of_day(mamoru_core::now());
    db.execute_batch(&format!(
        "BEGIN;
         INSERT INTO subscriber_kinds_off (subscriber_id, kind) SELECT id, '不審者情報' FROM subscribers WHERE id % 7 = 2;
         INSERT INTO subscriber_kinds_off (subscriber_id, kind) SELECT id, '不審電話情報' FROM subscribers WHERE id % 11 = 1;
         UPDATE subscribers SET quiet_start = 1320, quiet_end = 420 WHERE id % 4 = 0;
         UPDATE subscribers SET quiet_start = {}, quiet_end = {} WHERE id % 4 = 1;
         COMMIT;",
        (minute + 1410) % 1440,
        (minute + 30) % 1440
    ))
    .expect("preferences");
    let (second, recipients, secs) = publish(&cfg, &store, &app, &admin_row, &items);
    report(&store, subscribers, "with kinds and quiet hours", recipients, secs);
    let held: i64 = db
        .query_row("SELECT COUNT(*) FROM outbox WHERE alert_id = ?1 AND next_attempt_at > created_at", [second.get()], |r| r.get(0))
        .expect("count");
    eprintln!("alert {first}: all at once; alert {second}: {held} of {recipients} rows held for quiet hours");
}

/// Drafts and publishes one alert to districts 1, 4 and 7; its id, the rows
/// and the seconds from the publish call to the commit.
fn publish(cfg: &Config, store: &Store, app: &App, admin_row: &mamoru_store::admins::Admin, items: &[(EmailAddress, Vec<u32>)]) -> (mamoru_core::AlertId, usize, f64) {
    let draft = AlertDraft { title: "不審な男性の声かけ".into(), kind: "不審者情報".into(), districts: vec![1, 4, 7], text: "本日15時ごろ、公園の近くで下校中の児童に声をかける男性がいました。\n年齢は40歳くらい、黒い服装です。\n見かけたら110番してください。".repeat(3), occurred: Default::default(), ask_confirm: false, urgent: false };
    let now = mamoru_core::now();
    let new = NewAlert { admin: admin_row.id, source: "cli", source_key: "", kind: &draft.kind, title: &draft.title, text: &draft.text, districts: &draft.districts, is_test: false, ..NewAlert::new(admin_row.id, "cli") };
    let Drafted::Created { alert, .. } = store
        .draft_alert(&new, now, now + 3600, |id, _, _| mamoru_core::alert::preview(cfg, &mamoru_core::alert::content(cfg, &draft, false, now), &EmailAddress::parse("staff@city.test").expect("addr"), &mamoru_core::alert::PreviewInfo { number: 0, counts: &Default::default(), reach: &Default::default(), ask_confirm: false, publish_url: "x", dropped_attachments: 0, is_test: false }, now, format!("preview.{id}@mamoru.test")))
        .expect("draft")
    else {
        panic!("duplicate")
    };
    if std::env::var_os("BENCH_SPLIT").is_some() {
        // What the relay now does per copy at send time, outside the
        // publishing transaction: render with the footer links.
        let t = Instant::now();
        let mut bytes = 0;
        for (i, (addr, _)) in items.iter().take(40_000).enumerate() {
            bytes += app.alert_copy(alert, mamoru_core::SubscriberId::new(i as i64), addr, [1; 8]).expect("store").expect("the alert").len();
        }
        eprintln!("relay-side render of 40000 copies: {:.3} s, {bytes} bytes", t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    let r = app.publish(Publisher::Operator { admin: admin_row, alert }, now).expect("publish");
    let secs = t.elapsed().as_secs_f64();
    let Published::Published { recipients, .. } = r else { panic!("not published") };
    (alert, recipients, secs)
}

fn report(store: &Store, subscribers: usize, what: &str, recipients: usize, secs: f64) {
    let db = std::fs::metadata(store.path()).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(store.path().with_extension("db-wal")).map(|m| m.len()).unwrap_or(0);
    println!(
        "fan-out ({what}): {subscribers} subscribers, alert to 3 of 10 districts: {recipients} outbox rows committed in {secs:.3} s ({:.0} rows/s, {:.1} MB written)",
        recipients as f64 / secs,
        db as f64 / 1e6
    );
}
