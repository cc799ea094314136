//! Alert rows are queued without content and rendered by the relay when it
//! sends them: each copy carries its subscriber's own To:, footer links and
//! List-Unsubscribe, and a resent row is the same message byte for byte.

use std::fs;

use mamoru_core::links::subscriber_links;
use mamoru_core::{AlertId, OutboxId, SubscriberId};
use mamoru_store::admins::AdminAdded;
use mamoru_store::alerts::{Drafted, NewAlert, PublishAuth, Published};

use super::*;

const T: Duration = Duration::from_secs(20);

/// `(outbox id, subscriber id)` of an alert's rows.
fn rows_of(env: &Env, alert: AlertId) -> Vec<(OutboxId, SubscriberId)> {
    let conn = rusqlite::Connection::open_with_flags(env.store.path(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
    let mut stmt = conn.prepare("SELECT id, subscriber_id FROM outbox WHERE alert_id = ?1 ORDER BY id").expect("prepare");
    stmt.query_map([alert], |r| Ok((r.get(0)?, r.get(1)?))).expect("query").collect::<Result<_, _>>().expect("rows")
}

/// An alert's outbox rows once `n` of its copies were claimed (they wait
/// in `alert_queue` until then).
async fn claimed_rows(env: &Env, alert: AlertId, n: usize) -> Vec<(OutboxId, SubscriberId)> {
    let until = std::time::Instant::now() + T;
    loop {
        let rows = rows_of(env, alert);
        if rows.len() >= n {
            return rows;
        }
        assert!(std::time::Instant::now() < until, "{} of {n} copies claimed", rows.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header(m: &mailparse::ParsedMail<'_>, k: &str) -> String {
    m.headers.iter().find(|h| h.get_key().eq_ignore_ascii_case(k)).map(|h| h.get_value()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spliced_alert_row_is_rendered_per_subscriber_and_identically_when_resent() {
    let env = Env::new();
    let key = mamoru_store::keys::load_or_create(env.dir.path()).expect("keys").token_key();
    let subscribers = [("taro..yamada.@docomo.ne.jp", vec![1]), ("hanako@ezweb.ne.jp", vec![1, 2]), ("other@au.com", vec![3])];
    let items: Vec<(EmailAddress, Vec<u32>)> =
        subscribers.iter().map(|(a, d)| (EmailAddress::parse(a).expect("address"), d.clone())).collect();
    let now = mamoru_core::now();
    assert_eq!(env.store.import_active_subscribers(&items, "test", now).expect("import"), 3);
    let staff = EmailAddress::parse("staff@city.test").expect("address");
    let AdminAdded::Added(admin) = env.store.add_admin("chuo", &staff, "x", &[], "test", now).expect("admin") else {
        panic!("admin exists")
    };
    let new = NewAlert {
        admin,
        source: "cli",
        source_key: "",
        kind: "不審者情報",
        title: "声かけ",
        text: "本日15時ごろ、公園で児童に声をかける男性がいました。",
        districts: &[1, 2],
        ..NewAlert::new(admin, "cli")
    };
    let preview = |_, _, _: &mamoru_store::alerts::Audience| OutgoingMail {
        kind: MailKind::AlertPreview,
        sender: SENDER.into(),
        to: staff.clone(),
        message_id: unique_message_id(),
        bytes: tricky_message(&staff, "preview@mamoru.test"),
    };
    let Drafted::Created { alert: id, .. } = env.store.draft_alert(&new, now, now + 3600, preview).expect("draft") else {
        panic!("duplicate")
    };
    // Published a little in the past: the copies carry that time, not the
    // time they are sent.
    let published_at = now - 100;
    let r = env.store.publish_alert(PublishAuth::Direct(id), "test", published_at, now + 3600, SENDER, DOMAIN).expect("publish");
    assert_eq!(r, Published::Published { alert: id, recipients: 2 });
    assert!(rows_of(&env, id).is_empty(), "the copies wait in alert_queue until a claim");

    let relay = env.relay(Transport::File, RelayConfig { poll_interval_ms: 60_000, ..fast(1) });
    let rows = claimed_rows(&env, id, 2).await;
    assert_eq!(rows.len(), 2);
    for (outbox, _) in &rows {
        env.wait_state(*outbox, "sent", T).await;
    }
    let dir = env.dir.path().join("mail");
    let file_of = |outbox: OutboxId, subscriber: SubscriberId| dir.join(format!("{outbox}-alert.{id}.{subscriber}@{DOMAIN}.eml"));
    let mut first = Vec::new();
    for (outbox, subscriber) in &rows {
        let raw = fs::read(file_of(*outbox, *subscriber)).expect("the rendered alert");
        let m = mailparse::parse_mail(&raw).expect("parse");
        let me = env.store.find_subscriber(&EmailAddress::parse(header(&m, "To").trim_matches(['<', '>'])).expect("to")).expect("find");
        let me = me.expect("the To: is a subscriber");
        assert_eq!(me.id, *subscriber, "each copy goes to its own subscriber");
        assert!(me.districts.contains(&1) || me.districts.contains(&2));
        let nonce = env.store.link_nonce(me.id).expect("nonce").expect("confirmed");
        let links = subscriber_links(&env.cfg, &key, me.id, nonce, published_at);
        assert_eq!(header(&m, "List-Unsubscribe"), format!("<{}>", links.unsubscribe));
        assert_eq!(header(&m, "List-Unsubscribe-Post"), "List-Unsubscribe=One-Click");
        assert_eq!(header(&m, "Message-ID"), format!("<alert.{id}.{subscriber}@{DOMAIN}>"));
        assert_eq!(mailparse::dateparse(&header(&m, "Date")).expect("date"), published_at);
        assert_eq!(header(&m, "Subject"), "【守るネット】[不審者情報] 声かけ（中央地区、天応・吉浦地区）");
        let body = m.get_body().expect("body");
        assert!(body.contains("公園で児童に声をかける") && body.contains(&links.manage) && body.contains(&links.unsubscribe), "{body}");
        first.push(raw);
    }
    assert!(fs::read_dir(&dir).expect("mail dir").count() == 3, "the preview and two alerts, nothing for district 3");

    // Send the first row again, as after a crash before its outcome was
    // committed: the file is rewritten with the very same bytes.
    let (outbox, subscriber) = rows[0];
    let conn = rusqlite::Connection::open(env.store.path()).expect("open");
    conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    conn.execute("UPDATE outbox SET state = 'queued', next_attempt_at = 0 WHERE id = ?1", [outbox]).expect("requeue");
    fs::remove_file(file_of(outbox, subscriber)).expect("remove");
    relay.wake.notify_one();
    assert_eq!(env.wait_state(outbox, "sent", T).await.attempts, 2);
    let again = fs::read(file_of(outbox, subscriber)).expect("the resent alert");
    assert_eq!(again, first[0], "a resent copy is identical");
    relay.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_row_whose_alert_is_gone_fails_and_other_mail_flows() {
    let env = Env::new();
    let now = mamoru_core::now();
    let a = EmailAddress::parse("taro@docomo.ne.jp").expect("address");
    env.store.import_active_subscribers(&[(a.clone(), vec![1])], "test", now).expect("import");
    let AdminAdded::Added(admin) = env.store.add_admin("chuo", &a, "x", &[], "test", now).expect("admin") else { panic!() };
    let new = NewAlert { title: "t", text: "x", districts: &[1], ..NewAlert::new(admin, "cli") };
    let preview = |_, _, _: &mamoru_store::alerts::Audience| OutgoingMail {
        kind: MailKind::AlertPreview,
        sender: SENDER.into(),
        to: a.clone(),
        message_id: unique_message_id(),
        bytes: tricky_message(&a, "p@mamoru.test"),
    };
    let Drafted::Created { alert: id, outbox: preview_row } = env.store.draft_alert(&new, now, now + 3600, preview).expect("draft") else {
        panic!("duplicate")
    };
    env.store.publish_alert(PublishAuth::Direct(id), "test", now, now + 3600, SENDER, DOMAIN).expect("publish");
    // The alert vanishes under its queued copies (a hand-edited database).
    let conn = rusqlite::Connection::open(env.store.path()).expect("open");
    conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    conn.execute("DELETE FROM alerts WHERE id = ?1", [id]).expect("delete");
    let relay = env.relay(Transport::File, fast(1));
    let (row, _) = claimed_rows(&env, id, 1).await[0];
    assert_eq!(env.wait_state(row, "failed", T).await.last_error, format!("alert {id} not found"));
    env.wait_state(preview_row, "sent", T).await;
    relay.stop(Duration::from_secs(5)).await;
}
