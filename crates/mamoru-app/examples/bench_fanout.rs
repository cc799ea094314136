//! Fan-out benchmark: N active subscribers (100k by default) spread over 10
//! districts; an alert to 3 of them is published, and the time from the
//! call to the commit of all its outbox rows is printed. Then the
//! subscribers get preferences (a seventh turned the alert's kind off, an
//! eleventh another kind, a quarter have quiet hours 22:00–7:00 and a
//! quarter a window around now) and alerts to the same districts are timed
//! the same way.
//!
//! One run measures each backend in `BENCH_BACKENDS` (default
//! `sqlite,postgres`) on the same subscribers: SQLite in a temporary data
//! dir, PostgreSQL on a throwaway cluster of its own (`pgtest`: initdb on a
//! loopback port, fsync and synchronous_commit on). Each figure is taken
//! `BENCH_REPS` times (default 5), the outbox emptied and checkpointed
//! before each, and the run ends with the medians side by side. Run through
//! `scripts/bench-fanout` (release build).
//!
//! Seeding: SQLite through `Store::import_active_subscribers`; PostgreSQL
//! with the same rows (the store's sealer and blind index, ids 1..N)
//! inserted in batches of 10 000 over a connection of the benchmark's own,
//! because the store's import is one statement per row
//! (`BENCH_PG_SEED=import` takes the store's import there too). After the
//! seeding and after the preferences PostgreSQL gets `VACUUM ANALYZE`, what
//! autovacuum does after that many changed rows.
//!
//! The rows hold no content: the relay renders each copy when it sends it
//! (`BENCH_SPLIT=1` also times that rendering once, which is not part of
//! the figure).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mamoru_app::App;
use mamoru_app::alerts::Publisher;
use mamoru_core::alert::AlertDraft;
use mamoru_core::{Config, EmailAddress};
use mamoru_store::Store;
use mamoru_store::admins::AdminAdded;
use mamoru_store::alerts::{Drafted, NewAlert, Published};
use mamoru_store::pgtest::PgCluster;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The benchmark's own connection to the database the store uses, for
/// what the store has no call for: seeding in batches, preferences in
/// bulk, emptying the outbox between repetitions, counting.
enum Sql {
    Sqlite(rusqlite::Connection),
    Postgres(tokio::runtime::Runtime, tokio_postgres::Client),
}

impl Sql {
    fn postgres(url: &str) -> Sql {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let client = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
            tokio::spawn(conn);
            client
        });
        Sql::Postgres(rt, client)
    }

    fn batch(&self, sql: &str) {
        match self {
            Sql::Sqlite(c) => c.execute_batch(sql).unwrap_or_else(|e| panic!("{sql}: {e}")),
            Sql::Postgres(rt, c) => rt.block_on(c.batch_execute(sql)).unwrap_or_else(|e| panic!("{sql}: {e}")),
        }
    }

    /// A query of one row and one integer column.
    fn count(&self, sql: &str) -> i64 {
        match self {
            Sql::Sqlite(c) => c.query_row(sql, [], |r| r.get(0)).unwrap_or_else(|e| panic!("{sql}: {e}")),
            Sql::Postgres(rt, c) => rt.block_on(c.query_one(sql, &[])).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0),
        }
    }
}

/// One backend under test. Fields drop in order: the store before the
/// cluster it talks to.
struct Bench {
    backend: Backend,
    store: Arc<Store>,
    sql: Sql,
    keys: mamoru_store::keys::Keys,
    _dir: tempfile::TempDir,
    _cluster: Option<PgCluster>,
}

/// The medians of one backend: without and with preferences.
struct Figures {
    backend: Backend,
    plain: Vec<f64>,
    prefs: Vec<f64>,
    rows_plain: usize,
    rows_prefs: usize,
}

fn main() {
    let subscribers: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let reps: usize = std::env::var("BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(5).max(1);
    let backends: Vec<Backend> = std::env::var("BENCH_BACKENDS")
        .unwrap_or_else(|_| "sqlite,postgres".into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| match s.trim() {
            "sqlite" => Backend::Sqlite,
            "postgres" | "pg" => Backend::Postgres,
            other => panic!("BENCH_BACKENDS: unknown backend {other:?} (sqlite, postgres)"),
        })
        .collect();
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
    let cfg = Config { domain: "mamoru.test".into(), ..Default::default() };
    let mut all = Vec::new();
    for backend in backends {
        all.push(run(backend, &cfg, &items, reps));
    }
    println!();
    println!("fan-out, {subscribers} subscribers, alert to 3 of 10 districts, {reps} runs each; medians (min–max):");
    for f in &all {
        println!(
            "  {:<8} no preferences {:>7} rows {}   with preferences {:>7} rows {}",
            f.backend.name(),
            f.rows_plain,
            spread(&f.plain),
            f.rows_prefs,
            spread(&f.prefs)
        );
    }
    if let (Some(lite), Some(pg)) =
        (all.iter().find(|f| f.backend == Backend::Sqlite), all.iter().find(|f| f.backend == Backend::Postgres))
    {
        println!(
            "  postgres / sqlite: no preferences {:.2}×, with preferences {:.2}×",
            median(&pg.plain) / median(&lite.plain),
            median(&pg.prefs) / median(&lite.prefs)
        );
    }
    let bar = match subscribers {
        100_000 => Some(1.0),
        1_000_000 => Some(3.0),
        _ => None,
    };
    if let Some(bar) = bar {
        for f in &all {
            let worst = median(&f.plain).max(median(&f.prefs));
            let holds = if worst <= bar { "holds" } else { "MISSED" };
            println!("  bar ≤ {bar:.0} s on {}: {holds} (slower median {worst:.3} s)", f.backend.name());
        }
    }
}

fn run(backend: Backend, cfg: &Config, items: &[(EmailAddress, Vec<u32>)], reps: usize) -> Figures {
    let subscribers = items.len();
    let bench = open(backend);
    let store = &bench.store;
    let t = Instant::now();
    seed(&bench, items);
    eprintln!("[{}] seeded {subscribers} subscribers in {:.2} s", backend.name(), t.elapsed().as_secs_f64());
    let AdminAdded::Added(_) = store.add_admin("bench", &EmailAddress::parse("staff@city.test").expect("addr"), "x", &[], "bench", 1).expect("admin")
    else {
        panic!("admin exists")
    };
    let app = App::new(Arc::new(cfg.clone()), Arc::clone(store), bench.keys.token_key());
    let admin_row = store.admin_credentials("bench").expect("store").expect("the admin").0;

    let mut plain = Vec::new();
    let mut rows_plain = 0;
    for rep in 0..reps {
        empty_outbox(&bench);
        let (_, recipients, secs) = publish(cfg, store, &app, &admin_row, items, rep == 0);
        report(backend, subscribers, "no preferences", rep, recipients, secs);
        plain.push(secs);
        rows_plain = recipients;
    }

    let t = Instant::now();
    let minute = mamoru_core::jst::minute_of_day(mamoru_core::now());
    bench.sql.batch(&format!(
        "BEGIN;
         INSERT INTO subscriber_kinds_off (subscriber_id, kind) SELECT id, '不審者情報' FROM subscribers WHERE id % 7 = 2;
         INSERT INTO subscriber_kinds_off (subscriber_id, kind) SELECT id, '不審電話情報' FROM subscribers WHERE id % 11 = 1;
         UPDATE subscribers SET quiet_start = 1320, quiet_end = 420 WHERE id % 4 = 0;
         UPDATE subscribers SET quiet_start = {}, quiet_end = {} WHERE id % 4 = 1;
         COMMIT;",
        (minute + 1410) % 1440,
        (minute + 30) % 1440
    ));
    if backend == Backend::Postgres {
        bench.sql.batch("VACUUM ANALYZE subscribers, subscriber_kinds_off");
    }
    eprintln!("[{}] preferences set in {:.2} s", backend.name(), t.elapsed().as_secs_f64());

    let mut prefs = Vec::new();
    let mut rows_prefs = 0;
    for rep in 0..reps {
        empty_outbox(&bench);
        let (alert, recipients, secs) = publish(cfg, store, &app, &admin_row, items, false);
        let held = bench.sql.count(&format!(
            "SELECT COUNT(*) FROM alert_queue WHERE alert_id = {} AND due_at > created_at",
            alert.get()
        ));
        report(backend, subscribers, "with kinds and quiet hours", rep, recipients, secs);
        eprintln!("[{}]   {held} of {recipients} copies held for quiet hours", backend.name());
        prefs.push(secs);
        rows_prefs = recipients;
    }
    // The server's log, e.g. with BENCH_PG_SETTINGS naming auto_explain.
    if let (Some(cluster), Ok("1")) = (&bench._cluster, std::env::var("BENCH_PG_LOG").as_deref()) {
        eprintln!("[postgres] server log:\n{}", cluster.log());
    }
    Figures { backend, plain, prefs, rows_plain, rows_prefs }
}

fn open(backend: Backend) -> Bench {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = mamoru_store::keys::load_or_create(dir.path()).expect("keys");
    match backend {
        Backend::Sqlite => {
            let store = Store::open(dir.path(), &keys, Duration::from_secs(5)).expect("store");
            let sql = Sql::Sqlite(rusqlite::Connection::open(store.path()).expect("open the database"));
            Bench { backend, store: Arc::new(store), sql, keys, _dir: dir, _cluster: None }
        }
        Backend::Postgres => {
            let mut cluster = PgCluster::start();
            // Server settings other than the test cluster's, e.g.
            // `BENCH_PG_SETTINGS=shared_buffers=128MB` (PostgreSQL's own
            // default, where pgtest keeps 16 MB for its many small clusters).
            let settings = std::env::var("BENCH_PG_SETTINGS").unwrap_or_default();
            if !settings.is_empty() {
                let sql = Sql::postgres(&cluster.url());
                if settings.contains("auto_explain.") {
                    // Its settings are known once the module is loaded.
                    sql.batch("LOAD 'auto_explain'");
                }
                for setting in settings.split(',') {
                    let (name, value) = setting.split_once('=').expect("BENCH_PG_SETTINGS: name=value,…");
                    sql.batch(&format!("ALTER SYSTEM SET {name} = '{}'", value.replace('\'', "''")));
                }
                drop(sql);
                cluster.restart();
            }
            let store = Store::open_postgres(&cluster.url(), &keys, Duration::from_secs(30)).expect("store");
            let sql = Sql::postgres(&cluster.url());
            let version = sql_text(&sql, "SHOW server_version");
            eprintln!("[postgres] PostgreSQL {version}, shared_buffers {}", sql_text(&sql, "SHOW shared_buffers"));
            Bench { backend, store: Arc::new(store), sql, keys, _dir: dir, _cluster: Some(cluster) }
        }
    }
}

fn sql_text(sql: &Sql, q: &str) -> String {
    match sql {
        Sql::Sqlite(c) => c.query_row(q, [], |r| r.get(0)).expect("query"),
        Sql::Postgres(rt, c) => rt.block_on(c.query_one(q, &[])).expect("query").get(0),
    }
}

/// Adds the subscribers as `Store::import_active_subscribers` does.
fn seed(bench: &Bench, items: &[(EmailAddress, Vec<u32>)]) {
    let pg_import = std::env::var("BENCH_PG_SEED").as_deref() == Ok("import");
    match &bench.sql {
        Sql::Postgres(rt, client) if !pg_import => {
            let sealer = bench.store.sealer();
            rt.block_on(async {
                client.batch_execute("BEGIN").await.expect("begin");
                let mut next_id = 1i64;
                for chunk in items.chunks(10_000) {
                    let (mut ids, mut index, mut sealed, mut domain, mut nonce) = (vec![], vec![], vec![], vec![], vec![]);
                    let (mut sub, mut dist) = (vec![], vec![]);
                    for (addr, districts) in chunk {
                        let mut n = [0u8; 8];
                        sealer.random(&mut n).expect("random");
                        ids.push(next_id);
                        index.push(sealer.index(addr).to_vec());
                        sealed.push(sealer.seal_address(addr).expect("seal"));
                        domain.push(addr.domain().to_owned());
                        nonce.push(n.to_vec());
                        for d in districts {
                            sub.push(next_id);
                            dist.push(i64::from(*d));
                        }
                        next_id += 1;
                    }
                    client
                        .execute(
                            "INSERT INTO subscribers (id, addr_index, addr_sealed, domain, status, created_at, confirmed_at, updated_at, link_nonce)
                             SELECT i, a, s, d, 'active', 1, 1, 1, n
                             FROM unnest($1::bigint[], $2::bytea[], $3::bytea[], $4::text[], $5::bytea[]) AS t (i, a, s, d, n)",
                            &[&ids, &index, &sealed, &domain, &nonce],
                        )
                        .await
                        .expect("insert subscribers");
                    client
                        .execute(
                            "INSERT INTO subscriber_districts (subscriber_id, district_id) SELECT * FROM unnest($1::bigint[], $2::bigint[])",
                            &[&sub, &dist],
                        )
                        .await
                        .expect("insert districts");
                }
                client
                    .batch_execute(
                        "SELECT setval(pg_get_serial_sequence('subscribers', 'id'), (SELECT max(id) FROM subscribers));
                         COMMIT",
                    )
                    .await
                    .expect("commit");
            });
        }
        _ => {
            bench.store.import_active_subscribers(items, "bench", 1).expect("import");
        }
    }
    if bench.backend == Backend::Postgres {
        bench.sql.batch("VACUUM ANALYZE subscribers, subscriber_districts");
    }
}

/// Empties the outbox and the alert queue and checkpoints, so every
/// repetition starts alike.
fn empty_outbox(bench: &Bench) {
    match bench.backend {
        Backend::Sqlite => bench.sql.batch("DELETE FROM outbox; DELETE FROM alert_queue; PRAGMA wal_checkpoint(TRUNCATE);"),
        Backend::Postgres => bench.sql.batch("TRUNCATE outbox, alert_queue; CHECKPOINT;"),
    }
}

/// Drafts and publishes one alert to districts 1, 4 and 7; its id, the rows
/// and the seconds from the publish call to the commit.
fn publish(
    cfg: &Config,
    store: &Store,
    app: &App,
    admin_row: &mamoru_store::admins::Admin,
    items: &[(EmailAddress, Vec<u32>)],
    split: bool,
) -> (mamoru_core::AlertId, usize, f64) {
    let draft = AlertDraft { title: "不審な男性の声かけ".into(), kind: "不審者情報".into(), districts: vec![1, 4, 7], text: "本日15時ごろ、公園の近くで下校中の児童に声をかける男性がいました。\n年齢は40歳くらい、黒い服装です。\n見かけたら110番してください。".repeat(3), occurred: Default::default(), ask_confirm: false, urgent: false };
    let now = mamoru_core::now();
    let new = NewAlert { admin: admin_row.id, source: "cli", source_key: "", kind: &draft.kind, title: &draft.title, text: &draft.text, districts: &draft.districts, is_test: false, ..NewAlert::new(admin_row.id, "cli") };
    let Drafted::Created { alert, .. } = store
        .draft_alert(&new, now, now + 3600, |id, _, _| mamoru_core::alert::preview(cfg, &mamoru_core::alert::content(cfg, &draft, false, now), &EmailAddress::parse("staff@city.test").expect("addr"), &mamoru_core::alert::PreviewInfo { number: 0, counts: &Default::default(), reach: &Default::default(), ask_confirm: false, publish_url: "x", dropped_attachments: 0, is_test: false }, now, format!("preview.{id}@mamoru.test")))
        .expect("draft")
    else {
        panic!("duplicate")
    };
    if split && std::env::var_os("BENCH_SPLIT").is_some() {
        // What the relay does per copy at send time, outside the
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

fn report(backend: Backend, subscribers: usize, what: &str, rep: usize, recipients: usize, secs: f64) {
    println!(
        "fan-out [{}] ({what}, run {}): {subscribers} subscribers, alert to 3 of 10 districts: {recipients} copies committed in {secs:.3} s ({:.0} copies/s)",
        backend.name(),
        rep + 1,
        recipients as f64 / secs,
    );
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

fn spread(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    format!("{:.3} s ({min:.3}–{max:.3})", median(v))
}
