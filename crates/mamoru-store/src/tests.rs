use super::*;
use mamoru_core::Config;
use mamoru_core::mail;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    cfg: Config,
    keys: Keys,
}

/// A store on SQLite whatever the test backend: for what only SQLite has
/// (the file, its lock, its migrations).
fn sqlite_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys::load_or_create(dir.path()).unwrap();
    let store = Store::open(dir.path(), &keys, Duration::from_millis(200)).unwrap();
    Fixture { store, cfg: Config::default(), keys, _dir: dir }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys::load_or_create(dir.path()).unwrap();
    let store = Store::open_for_test(dir.path(), &keys, Duration::from_millis(200)).unwrap();
    Fixture { store, cfg: Config::default(), keys, _dir: dir }
}

pub(crate) const LIMITS: RegistrationLimits = RegistrationLimits {
    cooldown_secs: 300,
    daily_cap: 5,
    global_hourly_cap: 1000,
    web_global_hourly_cap: 1000,
    web_client_hourly_cap: 1000,
};
const T0: UnixTime = 1_800_000_000;

fn addr(s: &str) -> EmailAddress {
    EmailAddress::parse(s).unwrap()
}

impl Fixture {
    fn request(&self, a: &EmailAddress, now: UnixTime) -> RegistrationRequest {
        self.request_with(a, now, &LIMITS).0
    }

    fn request_with(&self, a: &EmailAddress, now: UnixTime, limits: &RegistrationLimits) -> (RegistrationRequest, Option<String>) {
        let mut token = None;
        let r = self
            .store
            .request_registration(a, now, limits, now + 86_400, |sid, nonce| {
                let claims = Claims { purpose: Purpose::Register, subject: sid.subject(), nonce, expires_at: now + 86_400 };
                let t = self.keys.token_key().sign(&claims);
                token = Some(t.clone());
                mail::registration_received(&self.cfg, a, &t, now, format!("{sid}.{}@x", hex(&nonce)))
            })
            .unwrap();
        (r, token)
    }

    fn claims(&self, token: &str, now: UnixTime) -> Claims {
        self.keys.token_key().verify(token, Purpose::Register, now).unwrap()
    }

    fn complete(&self, claims: &Claims, districts: &[u32], now: UnixTime) -> Completion {
        self.store
            .complete_registration(claims, districts, &Preferences::default(), now, now + 3600, |a, _| {
                mail::registration_completed(&self.cfg, a, &[], "", now, format!("done.{}@x", hex(&claims.nonce)))
            })
            .unwrap()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn registration_round_trip() {
    let f = fixture();
    let a = addr("taro..y.@docomo.ne.jp");
    let (r, token) = f.request_with(&a, T0, &LIMITS);
    let RegistrationRequest::Queued { subscriber, .. } = r else { panic!("{r:?}") };
    let token = token.unwrap();
    let claims = f.claims(&token, T0 + 10);
    assert_eq!(f.store.registration_view(&claims, T0 + 10).unwrap(), Some(RegistrationView { subscriber, districts: vec![], prefs: Preferences::default() }));
    assert_eq!(f.store.find_subscriber(&a).unwrap().unwrap().status, SubscriberStatus::Pending);

    assert_eq!(f.store.link_nonce(subscriber).unwrap(), None, "no footer links before confirmation");
    assert!(matches!(f.complete(&claims, &[3, 1], T0 + 20), Completion::Completed { .. }));
    let link_nonce = f.store.link_nonce(subscriber).unwrap().expect("footer-link nonce set at confirmation");
    let s = f.store.find_subscriber(&addr("TARO..Y.@DOCOMO.NE.JP")).unwrap().unwrap();
    assert_eq!((s.status.as_str(), s.districts.clone(), s.address.clone()), ("active", vec![1, 3], a.clone()));

    // Single use: the same token neither shows the page nor changes anything again.
    assert_eq!(f.store.registration_view(&claims, T0 + 30).unwrap(), None);
    assert_eq!(f.complete(&claims, &[5], T0 + 30), Completion::TokenUnusable);
    assert_eq!(f.store.find_subscriber(&a).unwrap().unwrap().districts, vec![1, 3]);
    assert_eq!(f.store.outbox_counts().unwrap().queued, 2);
    assert_eq!(f.store.link_nonce(subscriber).unwrap(), Some(link_nonce));
}

#[test]
fn expired_token_is_unusable_even_if_the_mac_is_fine() {
    let f = fixture();
    let (_, token) = f.request_with(&addr("a@au.com"), T0, &LIMITS);
    let claims = f.claims(&token.unwrap(), T0);
    assert_eq!(f.store.registration_view(&claims, T0 + 86_400).unwrap(), None);
    assert_eq!(f.complete(&claims, &[1], T0 + 86_400), Completion::TokenUnusable);
}

#[test]
fn another_subjects_token_cannot_complete() {
    let f = fixture();
    let (_, t1) = f.request_with(&addr("one@au.com"), T0, &LIMITS);
    let (_, _t2) = f.request_with(&addr("two@au.com"), T0, &LIMITS);
    let mut claims = f.claims(&t1.unwrap(), T0);
    claims.subject += 1;
    assert_eq!(f.complete(&claims, &[1], T0), Completion::TokenUnusable);
}

#[test]
fn cooldown_and_daily_cap() {
    let f = fixture();
    let a = addr("victim@docomo.ne.jp");
    assert!(matches!(f.request(&a, T0), RegistrationRequest::Queued { .. }));
    assert_eq!(f.request(&a, T0 + 1), RegistrationRequest::Limited(Limited::Cooldown));
    assert_eq!(f.request(&a, T0 + 299), RegistrationRequest::Limited(Limited::Cooldown));
    for i in 1..5 {
        assert!(matches!(f.request(&a, T0 + 300 * i), RegistrationRequest::Queued { .. }), "request {i}");
    }
    assert_eq!(f.request(&a, T0 + 300 * 5), RegistrationRequest::Limited(Limited::DailyCap));
    // Another address is not affected.
    assert!(matches!(f.request(&addr("other@docomo.ne.jp"), T0 + 1), RegistrationRequest::Queued { .. }));
    // The next Japanese calendar day opens a new window.
    let next_day = ((T0 + 9 * 3600) / 86_400 + 1) * 86_400 - 9 * 3600;
    assert!(matches!(f.request(&a, next_day), RegistrationRequest::Queued { .. }));
}

#[test]
fn a_thousand_forged_mails_send_at_most_the_cap() {
    let f = fixture();
    let a = addr("victim@ezweb.ne.jp");
    let mut queued = 0;
    for i in 0..1000 {
        // Spread over about 17 hours of one day's window and the next.
        if let RegistrationRequest::Queued { .. } = f.request(&a, T0 + i * 61) {
            queued += 1;
        }
    }
    assert!(queued <= 2 * LIMITS.daily_cap, "{queued} mails to one address");
    assert!(queued >= 1);
    assert_eq!(f.store.outbox_counts().unwrap().queued, queued);
}

#[test]
fn global_hourly_cap_rolls_back_the_address_slot() {
    let f = fixture();
    let limits = RegistrationLimits { global_hourly_cap: 3, ..LIMITS };
    let hour = (T0 / 3600 + 1) * 3600;
    for i in 0..3 {
        assert!(matches!(f.request_with(&addr(&format!("p{i}@au.com")), hour, &limits).0, RegistrationRequest::Queued { .. }));
    }
    let late = addr("late@au.com");
    assert_eq!(f.request_with(&late, hour + 10, &limits).0, RegistrationRequest::Limited(Limited::GlobalHourlyCap));
    // The refused request did not spend the address's cooldown.
    assert!(matches!(f.request_with(&late, hour + 3600, &limits).0, RegistrationRequest::Queued { .. }));
}

#[test]
fn leases_expire_and_rows_come_back() {
    let f = fixture();
    f.request(&addr("a@i.softbank.jp"), T0);
    let c = f.store.claim_due(T0, 60, 10).unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].recipient, addr("a@i.softbank.jp"));
    assert!(String::from_utf8_lossy(&c[0].content).contains("Subject:"));
    assert!(f.store.claim_due(T0 + 59, 60, 10).unwrap().is_empty(), "leased");
    let again = f.store.claim_due(T0 + 60, 60, 10).unwrap();
    assert_eq!((again.len(), again[0].attempts), (1, 2));
    f.store.mark_retry(again[0].id, T0 + 100, "451 try later").unwrap();
    assert!(f.store.claim_due(T0 + 99, 60, 10).unwrap().is_empty());
    let third = f.store.claim_due(T0 + 100, 60, 10).unwrap();
    f.store.mark_sent(third[0].id, T0 + 101).unwrap();
    assert_eq!(f.store.outbox_counts().unwrap(), OutboxCounts { sent: 1, ..Default::default() });
}

#[test]
fn a_renewed_lease_keeps_a_held_row_from_a_second_claim() {
    let f = fixture();
    f.request(&addr("a@i.softbank.jp"), T0);
    let c = f.store.claim_due(T0, 60, 10).unwrap();
    assert_eq!(f.store.renew_leases(&[c[0].id], T0 + 100).unwrap(), 1);
    assert!(f.store.claim_due(T0 + 60, 60, 10).unwrap().is_empty(), "still held");
    assert_eq!(f.store.renew_leases(&[c[0].id], T0 + 90).unwrap(), 0, "never shortened");
    f.store.mark_sent(c[0].id, T0 + 61).unwrap();
    assert_eq!(f.store.renew_leases(&[c[0].id], T0 + 200).unwrap(), 0, "a finished row is not leased again");
    assert_eq!(f.store.outbox_counts().unwrap(), OutboxCounts { sent: 1, ..Default::default() });
}

#[test]
fn stale_mail_expires_instead_of_going_out_late() {
    let f = fixture();
    f.request(&addr("a@au.com"), T0);
    assert!(f.store.claim_due(T0 + 86_400, 60, 10).unwrap().is_empty());
    assert_eq!(f.store.outbox_counts().unwrap().expired, 1);
}

#[test]
fn unconfirmed_registrations_are_purged() {
    let f = fixture();
    let a = addr("gone@au.com");
    f.request(&a, T0);
    assert_eq!(f.store.purge_unconfirmed(T0).unwrap(), 0);
    assert_eq!(f.store.purge_unconfirmed(T0 + 1).unwrap(), 1);
    assert_eq!(f.store.find_subscriber(&a).unwrap(), None);
    assert_eq!(f.store.outbox_counts().unwrap(), OutboxCounts::default());
}

#[test]
fn no_address_in_clear_on_disk() {
    let f = sqlite_fixture();
    let a = addr("plainly.visible@docomo.ne.jp");
    let (_, token) = f.request_with(&a, T0, &LIMITS);
    f.complete(&f.claims(&token.unwrap(), T0), &[1], T0);
    let mut bytes = std::fs::read(f.store.path()).unwrap();
    bytes.extend(std::fs::read(f.store.path().with_extension("db-wal")).unwrap_or_default());
    assert!(bytes.len() > 4096);
    assert!(!bytes.windows(15).any(|w| w == b"plainly.visible"), "address found in the database files");
}

#[test]
fn a_held_write_lock_is_reported_as_busy_and_transient() {
    let f = sqlite_fixture();
    let other = Connection::open(f.store.path()).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = f
        .store
        .request_registration(&addr("a@au.com"), T0, &LIMITS, T0 + 1, |_, _| unreachable!("must not render"))
        .unwrap_err();
    assert!(matches!(err, StoreError::Busy), "{err:?}");
    assert!(err.is_transient());
    other.execute_batch("ROLLBACK").unwrap();
    assert!(matches!(f.request(&addr("a@au.com"), T0), RegistrationRequest::Queued { .. }));
}

#[test]
fn migrations_are_idempotent_and_refuse_the_future() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys::load_or_create(dir.path()).unwrap();
    drop(Store::open(dir.path(), &keys, Duration::from_millis(100)).unwrap());
    drop(Store::open(dir.path(), &keys, Duration::from_millis(100)).unwrap());
    let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    let err = Store::open(dir.path(), &keys, Duration::from_millis(100)).err().unwrap();
    assert!(matches!(err, StoreError::TooNew { found: 99, .. }));
}

/// Concurrent attempts as the login handler makes them: take a slot, and
/// only with a slot "verify" (here: count, then hold the slot a moment as a
/// password check would) and fail.
fn concurrent_login_attempts(store: &Store, logins: &[String], client: &[u8], now: UnixTime) -> usize {
    let verified = std::sync::atomic::AtomicUsize::new(0);
    let start = std::sync::Barrier::new(logins.len());
    std::thread::scope(|s| {
        for login in logins {
            s.spawn(|| {
                start.wait();
                if store.take_login_attempt(login, client, now).unwrap() {
                    verified.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    store.record_login_failure(login, now).unwrap();
                }
            });
        }
    });
    verified.into_inner()
}

#[test]
fn concurrent_wrong_logins_for_one_id_get_at_most_five_checks() {
    let f = fixture();
    let logins = vec!["chuo".to_string(); 30];
    assert_eq!(concurrent_login_attempts(&f.store, &logins, b"client-a", T0), admins::LOGIN_FAILURES_MAX as usize);
    // Locked for every client now; the refused attempts counted nothing
    // against this client, so it may still try other IDs.
    assert!(!f.store.take_login_attempt("chuo", b"client-b", T0).unwrap());
    assert!(f.store.take_login_attempt("kita", b"client-a", T0).unwrap());
    // The window runs from the first attempt, not from a clock boundary:
    // still locked a second before it ends, afresh once it has.
    assert!(!f.store.take_login_attempt("chuo", b"client-a", T0 + admins::LOGIN_WINDOW_SECS - 1).unwrap());
    assert!(f.store.take_login_attempt("chuo", b"client-a", T0 + admins::LOGIN_WINDOW_SECS).unwrap());
}

#[test]
fn a_login_budget_is_not_renewed_by_a_clock_boundary() {
    let f = fixture();
    // Attempts right before and right after a 15-minute mark of the clock.
    let mark = (T0.div_euclid(admins::LOGIN_WINDOW_SECS) + 1) * admins::LOGIN_WINDOW_SECS;
    let mut granted = 0;
    for i in 0..30 {
        let at = mark - 5 + i / 3;
        granted += usize::from(f.store.take_login_attempt(&format!("id{i}"), b"client-a", at).unwrap());
    }
    assert_eq!(granted, admins::LOGIN_FAILURES_PER_CLIENT_MAX as usize);
}

#[test]
fn concurrent_logins_with_many_ids_from_one_client_get_at_most_twenty_checks() {
    let f = fixture();
    let logins: Vec<String> = (0..40).map(|i| format!("id{i}")).collect();
    assert_eq!(concurrent_login_attempts(&f.store, &logins, b"client-a", T0), admins::LOGIN_FAILURES_PER_CLIENT_MAX as usize);
    assert!(!f.store.take_login_attempt("fresh", b"client-a", T0).unwrap());
    // The ID counter the refused attempt touched was rolled back: "fresh"
    // still has all five attempts for another client.
    for _ in 0..admins::LOGIN_FAILURES_MAX {
        assert!(f.store.take_login_attempt("fresh", b"client-b", T0).unwrap());
    }
    assert!(!f.store.take_login_attempt("fresh", b"client-b", T0).unwrap());
}

#[test]
fn a_successful_login_clears_the_id_and_gives_the_client_its_attempt_back() {
    let f = fixture();
    for _ in 0..4 {
        assert!(f.store.take_login_attempt("chuo", b"client-a", T0).unwrap());
    }
    assert!(f.store.take_login_attempt("chuo", b"client-a", T0).unwrap());
    f.store.login_attempt_succeeded("chuo", b"client-a", T0).unwrap();
    for _ in 0..admins::LOGIN_FAILURES_MAX {
        assert!(f.store.take_login_attempt("chuo", b"client-a", T0).unwrap());
    }
    // 5 + 5 taken, 1 given back: 9 of the client's 20.
    let left = (0..20).filter(|i| f.store.take_login_attempt(&format!("x{i}"), b"client-a", T0).unwrap()).count();
    assert_eq!(left, 11);
}

#[test]
fn tag_and_dot_spellings_of_one_gmail_inbox_share_its_limits() {
    let f = fixture();
    let mut queued = 0;
    for i in 0..44 {
        // `victim.parent+i@gmail.com`, dots moved around, case changed, the
        // googlemail.com alias: all one inbox.
        let local = if i % 2 == 0 { format!("victim.parent+{i}") } else { format!("V.i.c.t.i.m.Parent+{i}") };
        let domain = if i % 3 == 0 { "googlemail.com" } else { "gmail.com" };
        if let RegistrationRequest::Queued { .. } = f.request(&addr(&format!("{local}@{domain}")), T0 + i * 400) {
            queued += 1;
        }
    }
    assert_eq!(queued, LIMITS.daily_cap, "one inbox got {queued} 登録受付 mails in a day");
    // A carrier address keeps its dots: another person, its own limits.
    assert!(matches!(f.request(&addr("taro.yamada@docomo.ne.jp"), T0), RegistrationRequest::Queued { .. }));
    assert!(matches!(f.request(&addr("taroyamada@docomo.ne.jp"), T0), RegistrationRequest::Queued { .. }));
}

impl Fixture {
    fn link(&self, a: &str, channel: &Channel, now: UnixTime, limits: &RegistrationLimits) -> manage::LinkRequest {
        let a = addr(a);
        self.store
            .request_link(&a, channel, now, limits, now + 3600, None, |kind, sid, nonce| {
                let claims = Claims { purpose: kind.purpose(), subject: sid.subject(), nonce, expires_at: now + 3600 };
                let t = self.keys.token_key().sign(&claims);
                mail::registration_received(&self.cfg, &a, &t, now, format!("{sid}.{}@x", hex(&nonce)))
            })
            .unwrap()
    }
}

#[test]
fn a_web_flood_spends_neither_the_phones_budget_nor_more_than_its_client_cap() {
    use manage::LinkRequest;
    let f = fixture();
    let limits = RegistrationLimits { web_client_hourly_cap: 10, web_global_hourly_cap: 30, global_hourly_cap: 30, ..LIMITS };
    let hour = (T0 / 3600 + 1) * 3600;
    let flooder = Channel::Web { client: [7; 32] };
    let mut queued = 0;
    for i in 0..60 {
        match f.link(&format!("victim{i}@au.com"), &flooder, hour + i, &limits) {
            LinkRequest::Queued { .. } => queued += 1,
            LinkRequest::Limited(l) => assert_eq!(l, Limited::ClientHourlyCap),
        }
    }
    assert_eq!(queued, 10, "one client queued {queued} mails");
    // Many clients exhaust the web budget, not the mail budget.
    for i in 0..40 {
        let client = Channel::Web { client: [i as u8 + 10; 32] };
        f.link(&format!("other{i}@au.com"), &client, hour + 100 + i, &limits);
    }
    let web = Channel::Web { client: [200; 32] };
    assert_eq!(f.link("late@au.com", &web, hour + 200, &limits), LinkRequest::Limited(Limited::GlobalHourlyCap));
    assert!(matches!(f.link("parent@docomo.ne.jp", &Channel::Mail, hour + 201, &limits), LinkRequest::Queued { .. }));
    // The next hour, the client may ask again.
    assert!(matches!(f.link("victim0x@au.com", &flooder, hour + 3600, &limits), LinkRequest::Queued { .. }));
}

#[test]
fn the_mail_path_and_the_form_share_one_mailbox_window() {
    use manage::LinkRequest;
    let f = fixture();
    let web = Channel::Web { client: [1; 32] };
    assert!(matches!(f.link("Taro.Yamada+a@gmail.com", &Channel::Mail, T0, &LIMITS), LinkRequest::Queued { .. }));
    assert_eq!(f.link("taroyamada@googlemail.com", &web, T0 + 10, &LIMITS), LinkRequest::Limited(Limited::Cooldown));
}

/// One row of each table whose id leaves the database; returns its id.
fn insert_row(c: &Connection, table: &str) -> i64 {
    let sql = match table {
        "subscribers" => {
            "INSERT INTO subscribers (addr_index, addr_sealed, domain, status, created_at, updated_at)
             VALUES (randomblob(32), X'', 'x.example', 'pending', 0, 0)"
        }
        "outbox" => {
            "INSERT INTO outbox (kind, domain, sender, recipient_sealed, message_id, content_sealed,
                                 next_attempt_at, created_at, expires_at)
             VALUES ('test', 'x.example', 's', X'', hex(randomblob(16)), X'', 0, 0, 0)"
        }
        "alerts" => {
            "INSERT INTO alerts (admin_id, source, title, text, districts, created_at)
             VALUES ((SELECT id FROM admins), 'cli', 't', 't', '1', 0)"
        }
        other => panic!("no row recipe for {other}"),
    };
    c.execute(sql, []).unwrap();
    c.last_insert_rowid()
}

#[test]
fn ids_that_leave_the_database_are_never_reused() {
    let f = sqlite_fixture();
    let c = f.store.sqlite().unwrap();
    c.execute(
        "INSERT INTO admins (login, email_index, email_sealed, password_hash, created_at, updated_at)
         VALUES ('root', X'', X'', '', 0, 0)",
        [],
    )
    .unwrap();
    for table in ["subscribers", "outbox", "alerts"] {
        insert_row(&c, table);
        let newest = insert_row(&c, table);
        assert_eq!(c.execute(&format!("DELETE FROM {table} WHERE id = ?1"), [newest]).unwrap(), 1);
        let next = insert_row(&c, table);
        assert!(next > newest, "{table}: id {newest} was deleted and handed out again as {next}");
    }
}

#[test]
fn the_autoincrement_rebuild_keeps_rows_ids_and_their_districts() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys::load_or_create(dir.path()).unwrap();
    {
        // A database as the version before the rebuild left it.
        let mut c = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let tx = c.transaction().unwrap();
        for sql in &MIGRATIONS[..6] {
            tx.execute_batch(sql).unwrap();
        }
        tx.pragma_update(None, "user_version", 6).unwrap();
        tx.commit().unwrap();
        c.execute("INSERT INTO admins (login, email_index, email_sealed, password_hash, created_at, updated_at) VALUES ('root', X'', X'', '', 0, 0)", []).unwrap();
        for table in ["subscribers", "subscribers", "outbox", "alerts"] {
            insert_row(&c, table);
        }
        c.execute("DELETE FROM subscribers WHERE id = 1", []).unwrap();
        c.execute("INSERT INTO subscriber_districts (subscriber_id, district_id) VALUES (2, 3), (2, 5)", []).unwrap();
    }
    let store = Store::open(dir.path(), &keys, Duration::from_millis(200)).unwrap();
    let c = store.sqlite().unwrap();
    let districts: Vec<(i64, i64)> = c
        .prepare("SELECT subscriber_id, district_id FROM subscriber_districts ORDER BY 2")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(districts, [(2, 3), (2, 5)], "the rebuild must not cascade into subscriber_districts");
    let ids: Vec<i64> = ["subscribers", "outbox", "alerts"]
        .iter()
        .map(|t| c.query_row(&format!("SELECT group_concat(id) FROM {t}"), [], |r| r.get::<_, String>(0)).unwrap())
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(ids, [2, 1, 1]);
    assert!(c.pragma_query_value(None, "foreign_keys", |r| r.get::<_, bool>(0)).unwrap(), "enforcement is back on");
    // The cascade still works on the rebuilt table.
    c.execute("DELETE FROM subscribers WHERE id = 2", []).unwrap();
    assert_eq!(c.query_row("SELECT count(*) FROM subscriber_districts", [], |r| r.get::<_, i64>(0)).unwrap(), 0);
    // The sequence starts after the ids that were copied.
    assert_eq!(insert_row(&c, "subscribers"), 3);
}

#[test]
fn the_outbox_rebuild_keeps_rows_and_ids_and_each_index_holds_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys::load_or_create(dir.path()).unwrap();
    {
        // A database as the version before fewer outbox indexes left it:
        // rows 1–3, the newest deleted, one of them a copy of an alert.
        let mut c = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let tx = c.transaction().unwrap();
        for sql in &MIGRATIONS[..14] {
            tx.execute_batch(sql).unwrap();
        }
        tx.pragma_update(None, "user_version", 14).unwrap();
        tx.commit().unwrap();
        for _ in 0..3 {
            insert_row(&c, "outbox");
        }
        c.execute("UPDATE outbox SET alert_id = 7, subscriber_id = 5, message_id = 'alert.7.5@x', state = 'sent' WHERE id = 2", []).unwrap();
        c.execute("DELETE FROM outbox WHERE id = 3", []).unwrap();
    }
    let store = Store::open(dir.path(), &keys, Duration::from_millis(200)).unwrap();
    let c = store.sqlite().unwrap();
    let rows: Vec<(i64, i64, String)> = c
        .prepare("SELECT id, alert_id, state FROM outbox ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(rows, [(1, 0, "queued".to_owned()), (2, 7, "sent".to_owned())]);
    // The deleted id stays used: the sequence came over with the rows.
    assert_eq!(insert_row(&c, "outbox"), 4);
    // Message-IDs stay unique: of plain rows by their index, of copies by
    // (alert, subscriber), which the Message-ID is made of.
    let plain: String = c.query_row("SELECT message_id FROM outbox WHERE id = 1", [], |r| r.get(0)).unwrap();
    let again = c.execute("UPDATE outbox SET message_id = ?1 WHERE id = 4", [&plain]);
    assert!(again.is_err(), "a second plain row with one Message-ID");
    let copy = c.execute("UPDATE outbox SET alert_id = 7, subscriber_id = 5 WHERE id = 4", []);
    assert!(copy.is_err(), "a second copy of one alert for one subscriber");
    // Each query finds its rows through an index, though the partial
    // indexes hold only some rows: the conditions that name them are in
    // the query text.
    let alerts = crate::alerts::ALERT_ROWS;
    for sql in crate::manage::OUTBOX_OF_SUBSCRIBER
        .iter()
        .map(|rows| format!("SELECT id FROM outbox WHERE {rows}"))
        .chain([format!("SELECT domain, COUNT(*) FROM outbox WHERE {alerts} GROUP BY domain")])
    {
        let plan: Vec<String> = c
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map([5], |r| r.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(plan.iter().any(|p| p.contains("outbox USING")) && !plan.iter().any(|p| p.starts_with("SCAN outbox")), "{sql}: {plan:?}");
    }
}

#[test]
fn the_store_is_writable_until_another_process_holds_the_write_lock() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys::load_or_create(dir.path()).unwrap();
    let store = Store::open(dir.path(), &keys, Duration::from_millis(100)).unwrap();
    store.check_writable().unwrap();
    let other = Connection::open(dir.path().join(DB_FILE)).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    assert!(matches!(store.check_writable(), Err(StoreError::Busy)));
    other.execute_batch("ROLLBACK").unwrap();
    store.check_writable().unwrap();
}

/// Flows that meet on one row (here the hourly count of registrations by
/// mail, and a counter) abort each other on PostgreSQL whenever they
/// overlap; the store runs them again instead of answering `Busy`. Before
/// it did, 660 of these 800 registrations were refused.
#[test]
fn concurrent_flows_on_one_row_on_postgres_are_run_again_not_refused() {
    let cluster = crate::pgtest::PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = keys::load_or_create(dir.path()).unwrap();
    let store = Store::open_postgres(&cluster.url(), &keys, Duration::from_secs(10)).unwrap();
    let cfg = Config::default();
    let refused = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..8 {
            let (store, cfg, refused) = (&store, &cfg, &refused);
            s.spawn(move || {
                for n in 0..100 {
                    let a = addr(&format!("p{t}x{n}@{}", ["docomo.ne.jp", "au.com", "gmail.com"][n % 3]));
                    let r = store.request_registration(&a, T0 + n as i64, &LIMITS, T0 + 86_400, |sid, nonce| {
                        mail::registration_received(cfg, &a, "token", T0, format!("{sid}.{}@x", hex(&nonce)))
                    });
                    let counted = store.count(crate::counters::ALERTS_PUBLISHED, &[]);
                    for e in [r.err(), counted.err()].into_iter().flatten() {
                        refused.lock().unwrap().push(e.to_string());
                    }
                }
            });
        }
    });
    assert_eq!(refused.into_inner().unwrap(), Vec::<String>::new());
    let queued: i64 = store.conn().unwrap().query_row("SELECT COUNT(*) FROM outbox", &[], |r| r.get(0)).unwrap();
    assert_eq!(queued, 800);
    let counters = store.counters().unwrap();
    assert_eq!(counters.iter().find(|c| c.name == crate::counters::ALERTS_PUBLISHED).map(|c| c.value), Some(800));
}
