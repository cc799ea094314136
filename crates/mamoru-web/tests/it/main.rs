//! The web pages over real HTTP/1.1 on loopback, against a real store in a
//! temp dir. The client is a few lines of raw HTTP so the test sees exactly
//! the bytes the server sends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mamoru_core::token::{Claims, Purpose, TokenKey};
use mamoru_core::{Config, EmailAddress, UnixTime, mail};
use mamoru_store::{Completion, Keys, Preferences, RegistrationLimits, RegistrationRequest, Store, keys};
use mamoru_app::App;
use mamoru_web::{Web, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

struct Server {
    _dir: tempfile::TempDir,
    keys: Keys,
    web: Arc<Web>,
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }
}

async fn start() -> Server {
    start_with(|_| {}).await
}

async fn start_with(configure: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys::load_or_create(dir.path()).unwrap();
    let store = Store::open(dir.path(), &keys, Duration::from_secs(5)).unwrap();
    let mut cfg = Config::defaults(dir.path());
    configure(&mut cfg);
    let web = Arc::new(Web::new(Arc::new(App::new(Arc::new(cfg), Arc::new(store), keys.token_key()))));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(listener, web.clone(), shutdown.clone()));
    Server { _dir: dir, keys, web, addr, shutdown, task }
}

fn now() -> UnixTime {
    mamoru_core::now()
}

fn addr(s: &str) -> EmailAddress {
    EmailAddress::parse(s).unwrap()
}

impl Server {
    fn store(&self) -> &Store {
        &self.web.app.store
    }

    fn tokens(&self) -> TokenKey {
        self.keys.token_key()
    }

    /// A 登録受付 through the store API, as ingest does it; returns the token.
    fn request_token(&self, a: &EmailAddress, at: UnixTime) -> String {
        let cfg = &self.web.app.cfg;
        let limits = RegistrationLimits::from(&cfg.limits);
        let expires_at = at + cfg.tokens.register_ttl_secs;
        let mut token = None;
        let r = self
            .store()
            .request_registration(a, at, &limits, expires_at, |sid, nonce| {
                let t = self.tokens().sign(&Claims { purpose: Purpose::Register, subject: sid.subject(), nonce, expires_at });
                token = Some(t.clone());
                let mut random = [0u8; 12];
                self.store().sealer().random(&mut random).unwrap();
                mail::registration_received(cfg, a, &t, at, mail::message_id(&random, cfg))
            })
            .unwrap();
        assert!(matches!(r, RegistrationRequest::Queued { .. }), "{r:?}");
        token.unwrap()
    }

    async fn send(&self, raw: &[u8]) -> Resp {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        read_response(&mut s).await
    }

    async fn call(&self, method: &str, path: &str, body: &str) -> Resp {
        let raw = if method == "POST" {
            format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        } else {
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        };
        self.send(raw.as_bytes()).await
    }

    async fn get(&self, path: &str) -> Resp {
        self.call("GET", path, "").await
    }

    async fn post(&self, path: &str, body: &str) -> Resp {
        self.call("POST", path, body).await
    }

    /// A form POST as a TLS proxy forwards it for client `ip`.
    async fn post_from(&self, ip: &str, path: &str, body: &str) -> Resp {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Forwarded-For: {ip}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send(raw.as_bytes()).await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        timeout(WAIT, self.task).await.expect("server stops in time").expect("server task").expect("run returns Ok");
    }
}

/// Reads one response from a connection the server closes after it
/// (`Connection: close`). A reset after the response (the server did not read
/// an oversize body) still counts as the end.
async fn read_response(s: &mut TcpStream) -> Resp {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match timeout(WAIT, s.read(&mut chunk)).await.expect("response in time") {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if !buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> Resp {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("end of head");
    let head = std::str::from_utf8(&buf[..end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let body = buf[end + 4..].to_vec();
    let resp = Resp { status, headers, body };
    if !resp.body.is_empty() {
        let len: usize = resp.header("content-length").expect("content-length").parse().unwrap();
        assert_eq!(resp.body.len(), len, "body length");
    }
    resp
}

fn flip_char(token: &str, i: usize) -> String {
    let mut b = token.as_bytes().to_vec();
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

async fn notified(n: &Notify) {
    timeout(WAIT, n.notified()).await.expect("outbox notification");
}

fn check_security_headers(what: &str, r: &Resp) {
    assert_eq!(
        r.header("content-security-policy"),
        Some("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
        "{what}"
    );
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{what}");
    assert_eq!(r.header("x-frame-options"), Some("DENY"), "{what}");
    assert_ne!(r.status, 500, "{what}");
}

fn count_checkboxes(page: &str) -> usize {
    page.matches("type=\"checkbox\" name=\"district\"").count()
}

/// District boxes pre-checked (the kinds' boxes are checked by default).
fn checked_districts(page: &str) -> usize {
    page.split("name=\"district\"").skip(1).filter(|rest| rest.split('>').next().is_some_and(|tag| tag.ends_with(" checked"))).count()
}

#[tokio::test]
async fn full_registration_flow() {
    let srv = start().await;
    let a = addr("taro..y.@docomo.ne.jp");
    let token = srv.request_token(&a, now());
    let path = format!("/r/{token}");

    let page = srv.get(&path).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let html = page.text();
    assert_eq!(count_checkboxes(html), 10, "{html}");
    assert_eq!(checked_districts(html), 0, "a new registration has no district pre-checked");
    assert!(html.contains(&format!("<form method=\"post\" action=\"{path}\">")), "{html}");
    assert!(html.contains("登録する</button>"));
    for d in &srv.web.app.cfg.districts {
        assert!(html.contains(&format!("value=\"{}\">{}</label>", d.id, d.name)), "{}", d.name);
    }

    let done = srv.post(&path, "district=3&district=1").await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.header("cache-control"), Some("no-store"));
    let html = done.text();
    assert!(html.contains("登録が完了しました"), "{html}");
    assert!(html.contains("<li>中央地区</li>") && html.contains("<li>昭和地区</li>"), "{html}");
    assert!(!html.contains("郷原地区"), "{html}");
    notified(srv.web.app.wake()).await;

    let s = srv.store().find_subscriber(&a).unwrap().unwrap();
    assert_eq!((s.status.as_str(), s.districts.as_slice()), ("active", &[1, 3][..]));

    // Single use: a second POST and a later GET say the link is spent.
    let again = srv.post(&path, "district=5").await;
    assert_eq!(again.status, 410, "{}", again.text());
    assert!(again.text().contains("ans@localhost"));
    assert_eq!(srv.get(&path).await.status, 410);
    assert_eq!(srv.store().find_subscriber(&a).unwrap().unwrap().districts, vec![1, 3]);

    // The outbox holds the 登録受付 and the 登録完了 mail, nothing more.
    assert_eq!(srv.store().outbox_counts().unwrap().queued, 2);
    let rows = srv.store().claim_due(now() + 1, 60, 10).unwrap();
    let completed: Vec<_> = rows.iter().filter(|m| m.kind.as_str() == "registration_completed").collect();
    assert_eq!(completed.len(), 1, "{rows:?}");
    assert_eq!(completed[0].recipient, a);
    let parsed = String::from_utf8_lossy(&completed[0].content).into_owned();
    assert!(parsed.contains("Message-ID: <") && parsed.contains("@localhost>"), "{parsed}");
    srv.stop().await;
}

#[tokio::test]
async fn current_districts_are_prechecked_for_a_known_subscriber() {
    let srv = start().await;
    let a = addr("hanako@ezweb.ne.jp");
    let t1 = srv.request_token(&a, now() - 3600);
    assert_eq!(srv.post(&format!("/r/{t1}"), "district=2&district=10").await.status, 200);
    let t2 = srv.request_token(&a, now());
    let html = srv.get(&format!("/r/{t2}")).await.text().to_string();
    assert_eq!(count_checkboxes(&html), 10);
    assert_eq!(checked_districts(&html), 2, "{html}");
    assert!(html.contains("value=\"2\" checked>") && html.contains("value=\"10\" checked>"), "{html}");
    srv.stop().await;
}

#[tokio::test]
async fn tampered_and_malformed_links_get_instructions_not_500() {
    let srv = start().await;
    let token = srv.request_token(&addr("a@au.com"), now());
    let mut cases: Vec<String> = [0, 10, 25, 50].iter().map(|&i| flip_char(&token, i)).collect();
    cases.extend(["".into(), "x".into(), format!("{token}A"), token[..50].to_string(), "%00%0d%0a".into()]);
    // A genuine signature for the wrong purpose cannot register.
    let claims = srv.tokens().verify(&token, Purpose::Register, now()).unwrap();
    cases.push(srv.tokens().sign(&Claims { purpose: Purpose::Manage, ..claims }));
    for bad in &cases {
        for r in [srv.get(&format!("/r/{bad}")).await, srv.post(&format!("/r/{bad}"), "district=1").await] {
            assert_eq!(r.status, 400, "{bad}: {}", r.text());
            let html = r.text();
            assert!(html.contains("このリンクは使えません"), "{html}");
            assert!(html.contains("空メール") && html.contains("href=\"mailto:ans@localhost\""), "{html}");
            check_security_headers(bad, &r);
        }
    }
    // None of that touched the real token.
    assert_eq!(srv.get(&format!("/r/{token}")).await.status, 200);
    srv.stop().await;
}

#[tokio::test]
async fn expired_and_unknown_links_are_gone() {
    let srv = start().await;
    let a = addr("late@docomo.ne.jp");
    let token = srv.request_token(&a, now());
    let claims = srv.tokens().verify(&token, Purpose::Register, now()).unwrap();
    let expired = srv.tokens().sign(&Claims { expires_at: now() - 10, ..claims.clone() });
    // A valid signature on a nonce the store never issued.
    let unknown = srv.tokens().sign(&Claims { nonce: [9; 8], ..claims });
    for t in [&expired, &unknown] {
        for r in [srv.get(&format!("/r/{t}")).await, srv.post(&format!("/r/{t}"), "district=1").await] {
            assert_eq!(r.status, 410, "{}", r.text());
            assert!(r.text().contains("期限切れ") && r.text().contains("空メール"), "{}", r.text());
            assert_eq!(r.header("cache-control"), Some("no-store"));
        }
    }
    assert_eq!(srv.store().find_subscriber(&a).unwrap().unwrap().status.as_str(), "pending");
    srv.stop().await;
}

#[tokio::test]
async fn get_and_head_change_nothing() {
    let srv = start().await;
    let a = addr("scanned@i.softbank.jp");
    let token = srv.request_token(&a, now());
    let path = format!("/r/{token}");
    let before = srv.store().outbox_counts().unwrap();
    let mut get_len = None;
    for _ in 0..100 {
        let g = srv.get(&path).await;
        assert_eq!(g.status, 200);
        get_len = Some(g.body.len());
        let h = srv.call("HEAD", &path, "").await;
        assert_eq!(h.status, 200);
        assert!(h.body.is_empty(), "HEAD has no body");
        assert_eq!(h.header("cache-control"), Some("no-store"));
        check_security_headers("HEAD", &h);
    }
    assert!(get_len.unwrap() > 1000);
    let s = srv.store().find_subscriber(&a).unwrap().unwrap();
    assert_eq!((s.status.as_str(), s.districts.len()), ("pending", 0));
    assert_eq!(srv.store().outbox_counts().unwrap(), before);
    // The token is still good for the one POST that counts.
    assert_eq!(srv.post(&path, "district=7").await.status, 200);
    assert_eq!(srv.store().find_subscriber(&a).unwrap().unwrap().districts, vec![7]);
    srv.stop().await;
}

#[tokio::test]
async fn a_bad_choice_shows_the_form_again_without_a_change() {
    let srv = start().await;
    let a = addr("picky@au.com");
    let token = srv.request_token(&a, now());
    let path = format!("/r/{token}");
    for (body, message) in [("", "1つ以上"), ("submit=1", "1つ以上"), ("district=11", "正しくありません"), ("district=1&district=x", "正しくありません")] {
        let r = srv.post(&path, body).await;
        assert_eq!(r.status, 400, "{body}");
        let html = r.text();
        assert!(html.contains(message) && html.contains("role=\"alert\""), "{body}: {html}");
        assert_eq!(count_checkboxes(html), 10);
    }
    let s = srv.store().find_subscriber(&a).unwrap().unwrap();
    assert_eq!((s.status.as_str(), s.districts.len()), ("pending", 0));
    assert_eq!(srv.post(&path, "district=4").await.status, 200);
    srv.stop().await;
}

/// A form value, percent-encoded.
fn enc(v: &str) -> String {
    v.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

#[tokio::test]
async fn refused_preferences_keep_the_ticks_and_a_good_choice_is_saved_on_both_pages() {
    let srv = start().await;
    let a = addr("careful@au.com");
    let token = srv.request_token(&a, now());
    let path = format!("/r/{token}");
    let kinds = &srv.web.app.cfg.alerts.kinds;
    // 不審者情報 ticked, a kind that is not configured, and その他 unticked.
    let ticks = format!("prefs=1&kind={}&kind={}&kind=%3Cb%3E", enc(&kinds[0]), enc(&kinds[1]));
    for (quiet, message) in [
        ("quiet_start=5940&quiet_end=420", "時刻が正しくありません"),
        ("quiet_start=99&quiet_end=420", "時刻が正しくありません"),
        ("quiet_start=1320&quiet_end=1320", "別の時刻に"),
        ("quiet_start=1320&quiet_end=", "両方を選んで"),
    ] {
        let r = srv.post(&path, &format!("district=1&{ticks}&{quiet}")).await;
        assert_eq!(r.status, 400, "{quiet}");
        let html = r.text();
        assert!(html.contains(message) && html.contains("role=\"alert\""), "{quiet}: {html}");
        assert_eq!(checked_districts(html), 1, "{quiet}");
        assert!(html.contains(&format!("value=\"{}\" checked>", kinds[1])) && html.contains(&format!("value=\"{}\">", kinds[2])), "the ticks as posted: {html}");
        assert!(!html.contains("&lt;b&gt;"), "{html}");
    }
    let r = srv.post(&path, "district=1&prefs=1&quiet_start=1320&quiet_end=420").await;
    assert!(r.status == 400 && r.text().contains("種類を1つ以上"), "{}", r.text());
    assert_eq!(srv.store().find_subscriber(&a).unwrap().unwrap().status.as_str(), "pending", "nothing refused was saved");

    let done = srv.post(&path, &format!("district=1&{ticks}&quiet_start=1320&quiet_end=420")).await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert!(done.text().contains("受け取らない種類: その他") && done.text().contains("22:00〜7:00"), "{}", done.text());
    let s = srv.store().find_subscriber(&a).unwrap().unwrap();
    let nonce = srv.store().link_nonce(s.id).unwrap().expect("a footer-link nonce");
    let manage = Claims { purpose: Purpose::Manage, subject: s.id.subject(), nonce, expires_at: now() + 3600 };
    let prefs = srv.store().manage_view(&manage, now()).unwrap().unwrap().prefs;
    assert_eq!(prefs, Preferences { kinds_off: vec![kinds[2].clone()], quiet: Some((1320, 420)) });

    // The manage page shows them, refuses the same way, and saves a change.
    let path = format!("/m/{}", srv.tokens().sign(&manage));
    let html = srv.get(&path).await.text().to_string();
    assert!(html.contains("<option value=\"1320\" selected>22:00</option>") && html.contains("<option value=\"420\" selected>7:00</option>"), "{html}");
    let r = srv.post(&path, &format!("action=update&district=2&{ticks}&quiet_start=60&quiet_end=60")).await;
    assert!(r.status == 400 && r.text().contains("別の時刻に") && r.text().contains(&format!("value=\"{}\">", kinds[2])), "{}", r.text());
    let all = kinds.iter().map(|k| format!("kind={}", enc(k))).collect::<Vec<_>>().join("&");
    let r = srv.post(&path, &format!("action=update&district=2&prefs=1&{all}&quiet_start=&quiet_end=")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let view = srv.store().manage_view(&manage, now()).unwrap().unwrap();
    assert_eq!((view.districts, view.prefs), (vec![2], Preferences::default()), "everything, any time");
    srv.stop().await;
}

#[tokio::test]
async fn register_form_answers_the_same_for_new_known_and_limited() {
    let srv = start().await;
    // An active subscriber, registered an hour ago (outside every cooldown).
    let known = addr("known@docomo.ne.jp");
    let t = srv.request_token(&known, now() - 3600);
    let claims = srv.tokens().verify(&t, Purpose::Register, now()).unwrap();
    let done = srv.store().complete_registration(&claims, &[1], &Default::default(), now() - 3600, now(), |to, _| {
        mail::registration_completed(&srv.web.app.cfg, to, &[], "", now(), mail::message_id(&[7; 12], &srv.web.app.cfg))
    });
    assert!(matches!(done.unwrap(), Completion::Completed { .. }));
    let queued = |n| assert_eq!(srv.store().outbox_counts().unwrap().queued, n);
    queued(2);

    let new = srv.post("/register", "address=new.parent%40docomo.ne.jp").await;
    assert_eq!(new.status, 200, "{}", new.text());
    assert!(new.text().contains("登録受付メールを送りました"));
    notified(srv.web.app.wake()).await;
    queued(3);
    let pending = srv.store().find_subscriber(&addr("new.parent@docomo.ne.jp")).unwrap().unwrap();
    assert_eq!(pending.status.as_str(), "pending");

    let limited = srv.post("/register", "address=New.Parent%40DOCOMO.ne.jp").await;
    queued(3); // the cooldown refused a second mail
    let existing = srv.post("/register", "address=known%40docomo.ne.jp").await;
    queued(4);
    assert_eq!(srv.store().find_subscriber(&known).unwrap().unwrap().status.as_str(), "active");

    for r in [&limited, &existing] {
        assert_eq!(r.status, new.status);
        assert_eq!(r.body, new.body, "identical answers");
        assert_eq!(r.header("content-length"), new.header("content-length"));
    }

    // The queued 登録受付 mail carries a link that works on the web.
    let rows = srv.store().claim_due(now() + 1, 60, 10).unwrap();
    let mail_to_new = rows.iter().find(|m| m.recipient.as_str() == "new.parent@docomo.ne.jp").expect("mail queued");
    assert_eq!(mail_to_new.kind.as_str(), "registration_received");
    let text = String::from_utf8_lossy(&mail_to_new.content).into_owned();
    let body = mailparse::parse_mail(text.as_bytes()).unwrap().get_body().unwrap();
    let link = body.lines().find_map(|l| l.trim().strip_prefix("http://127.0.0.1:8080")).expect("link in mail").to_string();
    assert_eq!(srv.get(&link).await.status, 200, "{link}");
    srv.stop().await;
}

#[tokio::test]
async fn one_client_flooding_the_form_cannot_lock_out_the_phones() {
    let srv = start_with(|c| {
        c.web.behind_tls_proxy = true;
        c.limits.register_web_client_hourly_cap = 5;
        c.limits.register_web_global_hourly_cap = 12;
        c.limits.register_global_hourly_cap = 12;
    })
    .await;
    let queued = || srv.store().outbox_counts().unwrap().queued;
    let hour = now() / 3600;
    let first = srv.post_from("203.0.113.7", "/register", "address=victim0%40au.com").await;
    for i in 1..60 {
        let r = srv.post_from("203.0.113.7", "/register", &format!("address=victim{i}%40au.com")).await;
        assert_eq!((r.status, &r.body), (first.status, &first.body), "identical answers");
    }
    // Other hosts of the same IPv6 /64 are the same client.
    for i in 0..5 {
        let r = srv.post_from(&format!("2001:db8:1:2::{i:x}"), "/register", &format!("address=v6victim{i}%40au.com")).await;
        assert_eq!(r.body, first.body);
    }
    let from_one_client = queued();
    // Many clients use up the form's budget, and only the form's.
    for i in 0..20 {
        srv.post_from(&format!("198.51.100.{i}"), "/register", &format!("address=other{i}%40au.com")).await;
    }
    let from_the_web = queued();
    if now() / 3600 == hour {
        assert_eq!(from_one_client, 5 + 5, "one IPv4 client and one IPv6 /64: 5 each");
        assert_eq!(from_the_web, 12);
    }
    // A parent's empty mail still gets its reply.
    srv.request_token(&addr("parent@docomo.ne.jp"), now());
    assert_eq!(queued(), from_the_web + 1);
    srv.stop().await;
}

#[tokio::test]
async fn register_form_never_replies_to_daemons_role_mailboxes_or_itself() {
    let srv = start_with(|c| c.domain = "mamoru.test".into()).await;
    let reference = srv.post("/register", "address=someone%40docomo.ne.jp").await;
    let mut queued = srv.store().outbox_counts().unwrap().queued;
    assert_eq!(queued, 1);
    for (sender, want) in mamoru_core::mailbox::NO_REPLY_EXAMPLES {
        let r = srv.post("/register", &format!("address={}", sender.replace('@', "%40").replace('+', "%2B"))).await;
        assert_eq!((r.status, &r.body), (reference.status, &reference.body), "{sender}: same page");
        if want.is_none() {
            queued += 1;
        }
        assert_eq!(srv.store().outbox_counts().unwrap().queued, queued, "{sender}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn register_form_rejects_bad_addresses_with_the_form() {
    let srv = start().await;
    for body in ["", "address=", "address=no-at-sign", "address=%3Cscript%3Ealert(1)%3C%2Fscript%3E%40x.jp", "address=a%0d%0aBcc%3A+x%40y.jp"] {
        let r = srv.post("/register", body).await;
        assert_eq!(r.status, 400, "{body}");
        let html = r.text();
        assert!(html.contains("形式が正しくありません") && html.contains("action=\"/register\""), "{html}");
        assert!(!html.contains("<script>"), "{html}");
    }
    let r = srv.post("/register", "address=%22%3E%3Cb%3E").await;
    assert!(r.text().contains("value=\"&quot;&gt;&lt;b&gt;\""), "{}", r.text());
    assert_eq!(srv.store().outbox_counts().unwrap().queued, 0);
    srv.stop().await;
}

#[tokio::test]
async fn top_page_and_stylesheet() {
    let srv = start().await;
    let top = srv.get("/").await;
    assert_eq!(top.status, 200);
    let html = top.text();
    assert!(html.contains("<meta name=\"viewport\""), "{html}");
    assert!(html.contains("href=\"mailto:ans@localhost\"") && html.contains("空メール") && html.contains("無料"));
    assert!(html.contains("<form method=\"post\" action=\"/register\">") && html.contains("name=\"address\""));
    assert!(!html.contains("<script"));
    let css = srv.get("/style.css").await;
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    assert!(css.text().contains("button{"));
    // Keep-alive works: two requests on one connection.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /style.css HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut all = Vec::new();
    timeout(WAIT, s.read_to_end(&mut all)).await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&all).matches("HTTP/1.1 200 OK").count(), 2);
    srv.stop().await;
}

#[tokio::test]
async fn security_headers_on_every_route() {
    let srv = start().await;
    let token = srv.request_token(&addr("h@au.com"), now());
    let live = format!("/r/{token}");
    let cases: Vec<(&str, &str, &str, u16)> = vec![
        ("GET", "/", "", 200),
        ("HEAD", "/", "", 200),
        ("GET", "/style.css", "", 200),
        ("POST", "/", "x=1", 405),
        ("GET", "/register", "", 405),
        ("POST", "/register", "address=x%40au.com", 200),
        ("POST", "/register", "address=bad", 400),
        ("GET", &live, "", 200),
        ("HEAD", &live, "", 200),
        ("POST", &live, "", 400),
        ("PUT", &live, "", 405),
        ("GET", "/r/bogus", "", 400),
        ("GET", "/nope", "", 404),
        ("GET", "/r", "", 404),
        ("DELETE", "/", "", 405),
    ];
    for (method, path, body, status) in cases {
        let r = srv.call(method, path, body).await;
        let what = format!("{method} {path}");
        assert_eq!(r.status, status, "{what}");
        check_security_headers(&what, &r);
        if path.starts_with("/r/") {
            assert_eq!(r.header("cache-control"), Some("no-store"), "{what}");
        }
        if status == 405 {
            let allow = r.header("allow").unwrap_or_default();
            assert!(!allow.is_empty() && !allow.contains(method), "{what}: Allow {allow}");
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn requests_are_counted_by_route_class_and_status_without_the_token() {
    let srv = start().await;
    let token = srv.request_token(&addr("taro@docomo.ne.jp"), now());
    assert_eq!(srv.get(&format!("/r/{token}")).await.status, 200);
    assert_eq!(srv.post(&format!("/r/{token}"), "district=1").await.status, 200);
    assert_eq!(srv.get(&format!("/r/{token}")).await.status, 410);
    assert_eq!(srv.get("/").await.status, 200);
    assert_eq!(srv.get("/nope/taro@docomo.ne.jp").await.status, 404);
    let text = srv.web.app.metrics().encode();
    for line in [
        "mamoru_http_requests_total{route=\"registration\",status=\"200\"} 2",
        "mamoru_http_requests_total{route=\"registration\",status=\"410\"} 1",
        "mamoru_http_requests_total{route=\"index\",status=\"200\"} 1",
        "mamoru_http_requests_total{route=\"other\",status=\"404\"} 1",
        "mamoru_http_request_duration_seconds_count{route=\"registration\"} 3",
        "mamoru_registrations_completed_total 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
    }
    assert!(!text.contains(&token) && !text.contains('@'), "{text}");
    srv.stop().await;
}

#[tokio::test]
async fn unknown_path_is_404() {
    let srv = start().await;
    for path in ["/nope", "/r", "/registerx", "/style.css/x", "/..%2f"] {
        let r = srv.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        assert!(r.text().contains("ページが見つかりません"));
    }
    srv.stop().await;
}

#[tokio::test]
async fn oversize_posts_are_413_and_change_nothing() {
    let srv = start().await;
    let a = addr("big@docomo.ne.jp");
    let token = srv.request_token(&a, now());
    let path = format!("/r/{token}");
    let big = format!("district=1&pad={}", "x".repeat(20 * 1024));
    for p in [path.as_str(), "/register"] {
        let r = srv.post(p, &big).await;
        assert_eq!(r.status, 413, "{p}");
        check_security_headers(p, &r);
    }
    // Chunked, with no Content-Length to check up front.
    let chunk = "x".repeat(4096);
    let mut raw = format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    raw.push_str("a\r\ndistrict=1\r\n");
    for _ in 0..5 {
        raw.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    raw.push_str("0\r\n\r\n");
    assert_eq!(srv.send(raw.as_bytes()).await.status, 413);
    // A body just under the limit is fine.
    let ok = format!("district=1&pad={}", "x".repeat(16 * 1024 - 20));
    assert_eq!(srv.post(&path, &ok).await.status, 200);
    assert_eq!(srv.store().find_subscriber(&a).unwrap().unwrap().districts, vec![1]);
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish() {
    let srv = start().await;
    let body = "address=inflight%40au.com";
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let head = format!(
        "POST /register HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // hyper sends 100 Continue once the handler starts reading the body: from
    // here on the request is in flight.
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(timeout(WAIT, s.read(&mut b)).await.unwrap().unwrap(), 1);
        got.push(b[0]);
    }
    assert!(got.starts_with(b"HTTP/1.1 100 Continue"), "{}", String::from_utf8_lossy(&got));
    // An idle keep-alive connection must not hold shutdown up.
    let mut idle = TcpStream::connect(srv.addr).await.unwrap();
    idle.write_all(b"GET /style.css HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut first = [0u8; 12];
    timeout(WAIT, idle.read_exact(&mut first)).await.unwrap().unwrap();

    srv.shutdown.cancel();
    s.write_all(body.as_bytes()).await.unwrap();
    let r = read_response(&mut s).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("登録受付メールを送りました"));
    timeout(WAIT, srv.task).await.expect("run returns").unwrap().unwrap();
    assert!(TcpStream::connect(srv.addr).await.is_err(), "no longer accepting");
    assert_eq!(srv.web.app.store.outbox_counts().unwrap().queued, 1);
}

/// The admin panel refuses clients other than loopback unless a TLS proxy is
/// declared in front (`[web] behind_tls_proxy`).
#[tokio::test]
async fn the_admin_panel_refuses_remote_clients_without_tls() {
    let server = start().await;
    let remote: SocketAddr = "192.0.2.9:40000".parse().unwrap();
    let headers = hyper::HeaderMap::new();
    let get = hyper::Method::GET;
    let body = hyper::body::Bytes::new();
    let a = mamoru_web::admin::handle(server.web.clone(), &get, "/admin/login", &headers, body.clone(), remote).await;
    assert_eq!(a.status, 403);
    let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let a = mamoru_web::admin::handle(server.web.clone(), &get, "/admin/login", &headers, body.clone(), local).await;
    assert_eq!(a.status, 200);
    let mut cfg = (*server.web.app.cfg).clone();
    cfg.web.behind_tls_proxy = true;
    let proxied = Arc::new(Web::new(Arc::new(App::new(Arc::new(cfg), server.web.app.store.clone(), server.keys.token_key()))));
    let a = mamoru_web::admin::handle(proxied, &get, "/admin/login", &headers, body, remote).await;
    assert_eq!(a.status, 200);
    assert!(a.headers.iter().any(|(k, _)| k == hyper::header::STRICT_TRANSPORT_SECURITY));
}

/// Stores and publishes an alert as the panel does and returns its id.
fn publish_alert(srv: &Server, title: &str, text: &str) -> mamoru_core::AlertId {
    use mamoru_store::admins::AdminAdded;
    use mamoru_store::alerts::{Drafted, NewAlert, Published};
    let store = srv.store();
    let cfg = &srv.web.app.cfg;
    let staff = addr("staff@mamoru.test");
    let admin = match store.add_admin("chuo", &staff, "$argon2id$unused", &[], "test", now()).unwrap() {
        AdminAdded::Added(a) => a,
        AdminAdded::LoginTaken => store.admin_credentials("chuo").unwrap().unwrap().0.id,
    };
    let new = NewAlert { admin, source: "web", source_key: "", kind: "", title, text, districts: &[1], is_test: false, ..NewAlert::new(admin, "web") };
    let draft = mamoru_core::alert::AlertDraft { title: title.into(), kind: String::new(), districts: vec![1], text: text.into(), occurred: Default::default(), ask_confirm: false, urgent: false };
    let content = mamoru_core::alert::content(cfg, &draft, false, now());
    let at = now();
    let Drafted::Created { alert, .. } = store
        .draft_alert(&new, at, at + 3600, |_, _, domains| {
            let counts = mamoru_core::alert::CarrierCounts::from_domains(&domains.domains);
            let info = mamoru_core::alert::PreviewInfo { number: 0, counts: &counts, reach: &Default::default(), ask_confirm: false, publish_url: "https://x/p/t", dropped_attachments: 0, is_test: false };
            mamoru_core::alert::preview(cfg, &content, &staff, &info, at, mail::message_id(&[7; 12], cfg))
        })
        .unwrap()
    else {
        panic!("duplicate draft")
    };
    let me = store.admin_credentials("chuo").unwrap().unwrap().0;
    let by = mamoru_app::alerts::Publisher::Operator { admin: &me, alert };
    let published = srv.web.app.publish(by, at).unwrap();
    assert!(matches!(published, Published::Published { .. }), "{published:?}");
    alert
}

/// Reads an Atom document with quick-xml's reader to the end (an error
/// is an ill-formed document) and returns every `<content>` text.
fn atom_contents(xml: &str) -> Result<Vec<String>, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let (mut contents, mut inside, mut depth) = (Vec::new(), false, 0usize);
    loop {
        match reader.read_event().map_err(|e| format!("at {}: {e}", reader.error_position()))? {
            Event::Start(e) => {
                depth += 1;
                if e.name().as_ref() == b"content" {
                    inside = true;
                    contents.push(String::new());
                }
            }
            Event::End(e) => {
                depth = depth.checked_sub(1).ok_or("unbalanced end tag")?;
                if e.name().as_ref() == b"content" {
                    inside = false;
                }
            }
            Event::Text(t) => {
                let raw = std::str::from_utf8(&t).map_err(|e| e.to_string())?;
                // XML 1.0 §2.2: these characters are not allowed anywhere, not
                // even as references; quick-xml's reader does not check it.
                if let Some(c) = raw.chars().find(|&c| !matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)) {
                    return Err(format!("character {c:?} is not allowed in XML"));
                }
                if inside {
                    let text = quick_xml::escape::unescape(raw).map_err(|e| e.to_string())?;
                    contents.last_mut().ok_or("text outside content")?.push_str(&text);
                }
            }
            Event::GeneralRef(r) => {
                let name = std::str::from_utf8(&r).map_err(|e| e.to_string())?;
                let c = quick_xml::escape::resolve_predefined_entity(name).ok_or(format!("unknown entity &{name};"))?;
                if inside {
                    contents.last_mut().ok_or("reference outside content")?.push_str(c);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unclosed element".into());
    }
    Ok(contents)
}

/// One stray control character in one alert must not make the feed
/// unreadable for everyone: the served feed parses, and the text reads as
/// the alert's without the characters XML cannot carry.
#[tokio::test]
async fn the_served_feed_stays_well_formed_with_a_control_character_in_an_alert() {
    let srv = start().await;
    publish_alert(&srv, "不審者情報", "公園で\u{1}声かけ <b>&</b>\u{ffff}");
    for path in ["/alerts.atom", "/alerts/1.atom"] {
        let r = srv.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("application/atom+xml; charset=utf-8"));
        let contents = atom_contents(r.text()).unwrap_or_else(|e| panic!("{path}: {e}\n{}", r.text()));
        assert_eq!(contents, ["公園で声かけ <b>&</b>"], "{path}");
    }
    let page = srv.get("/alerts").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("公園で声かけ &lt;b&gt;&amp;&lt;/b&gt;"), "{}", page.text());
    assert!(!page.text().contains(['\u{1}', '\u{ffff}']));
    srv.stop().await;
}
