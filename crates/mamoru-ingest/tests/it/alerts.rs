//! Alert posts to `alert@`: the format over the `fixtures/alerts/` corpus,
//! and who may post — with a real store, real DKIM signatures
//! made with keys this test generates and pins in the configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::DkimSigner;
use mamoru_core::alert::{self, FormatError};
use mamoru_core::{Config, EmailAddress};
use mamoru_ingest::alert_post::extract;
use mamoru_ingest::{Outcome, Registrar};
use mamoru_store::Store;
use mamoru_store::admins::AdminAdded;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/alerts")
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    #[serde(default)]
    districts: Vec<u32>,
    #[serde(default)]
    kind: String,
    title: Option<String>,
    text: Option<String>,
    #[serde(default)]
    attachments: usize,
    error: Option<String>,
}

fn error_name(e: &FormatError) -> String {
    format!("{e:?}").split(['(', ' ']).next().unwrap_or("").to_string()
}

#[test]
fn the_alert_corpus_parses_as_expected_with_lf_and_crlf() {
    let cfg = Config::default();
    let manifest: BTreeMap<String, Expected> =
        toml::from_str(&std::fs::read_to_string(fixtures().join("expected.toml")).expect("expected.toml")).expect("manifest");
    let mut ran = 0;
    for (name, want) in &manifest {
        let lf = std::fs::read(fixtures().join(format!("{name}.eml"))).unwrap_or_else(|e| panic!("{name}.eml: {e}"));
        let crlf = String::from_utf8(lf.clone()).expect("fixtures are ASCII").replace('\n', "\r\n").into_bytes();
        for raw in [lf, crlf] {
            let parsed = mailparse::parse_mail(&raw).expect("parse");
            let post = extract(&parsed);
            assert_eq!(post.attachments, want.attachments, "{name}: attachments");
            match (alert::parse_post(&cfg, &post.subject, &post.text, mamoru_core::now()), &want.error) {
                (Ok(d), None) => {
                    assert_eq!(d.districts, want.districts, "{name}");
                    assert_eq!(d.kind, want.kind, "{name}");
                    if let Some(t) = &want.title {
                        assert_eq!(&d.title, t, "{name}");
                    }
                    if let Some(t) = &want.text {
                        assert_eq!(d.text.trim(), t, "{name}");
                    }
                }
                (Err(e), Some(w)) => assert_eq!(&error_name(&e), w, "{name}"),
                (got, want) => panic!("{name}: got {got:?}, expected error {want:?}"),
            }
            ran += 1;
        }
    }
    assert!(ran >= 20, "the corpus ran ({ran} cases)");
}

const ADMIN: &str = "staff@city.test";

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    registrar: Registrar,
    key: Vec<u8>,
    evil_key: Vec<u8>,
}

/// A fresh Ed25519 key (PKCS#8 DER) and its DKIM TXT record.
fn ed25519() -> (Vec<u8>, String) {
    let der = Ed25519Key::generate_pkcs8().expect("generate");
    let key = Ed25519Key::from_pkcs8_der(&der).expect("key");
    let record = format!("v=DKIM1; k=ed25519; p={}", base64_encode(&key.public_key()));
    (der, record)
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn fixture(tweak: impl FnOnce(&mut Config)) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, record) = ed25519();
    let (evil_key, evil_record) = ed25519();
    let mut cfg = Config { domain: "mamoru.test".into(), data_dir: dir.path().to_path_buf(), ..Default::default() };
    cfg.alerts.dkim_keys.insert("sel._domainkey.city.test".into(), record);
    cfg.alerts.dkim_keys.insert("sel._domainkey.evil.test".into(), evil_record);
    tweak(&mut cfg);
    let keys = mamoru_store::keys::load_or_create(dir.path()).expect("keys");
    let store = Arc::new(Store::open(dir.path(), &keys, Duration::from_millis(500)).expect("store"));
    let admin = EmailAddress::parse(ADMIN).expect("addr");
    let added = store.add_admin("chuo", &admin, "$argon2id$unused", &[], "test", 1).expect("add admin");
    assert!(matches!(added, AdminAdded::Added(_)));
    let other = EmailAddress::parse("disabled@city.test").expect("addr");
    store.add_admin("gone", &other, "$argon2id$unused", &[], "test", 1).expect("add admin");
    store.disable_admin("gone", "test", 1).expect("disable");
    let subs = vec![(EmailAddress::parse("p@docomo.ne.jp").expect("addr"), vec![1])];
    store.import_active_subscribers(&subs, "test", 1).expect("import");
    let registrar = Registrar::new(Arc::new(mamoru_app::App::new(Arc::new(cfg), store.clone(), keys.token_key())));
    Fixture { _dir: dir, store, registrar, key, evil_key }
}

fn post(from: &str, message_id: &str, body: &str) -> String {
    format!(
        "From: {from}\r\nTo: alert@mamoru.test\r\nSubject: =?UTF-8?B?5LiN5a+p6ICF?=\r\nMessage-ID: <{message_id}>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\n{body}"
    )
}

const BODY: &str = "地区: 中央\r\n公園で声かけがありました。\r\n";

fn sign(der: &[u8], domain: &str, message: &str) -> String {
    let key = Ed25519Key::from_pkcs8_der(der).expect("key");
    let sig = DkimSigner::from_key(key).domain(domain).selector("sel").headers(["From", "To", "Subject", "Message-ID"]).sign(message.as_bytes()).expect("sign");
    format!("{}{message}", sig.to_header())
}

impl Fixture {
    fn deliver(&self, sender: &str, sasl: Option<&str>, message: &str) -> Outcome {
        self.registrar.deliver_authenticated(sender, "alert@mamoru.test", sasl, message.as_bytes())
    }

    fn queued(&self) -> Vec<mamoru_store::QueuedMail> {
        self.store.claim_due(mamoru_core::now() + 5, 1, 100).expect("claim")
    }
}

#[test]
fn a_genuine_post_gets_a_preview_at_the_registered_address_once() {
    let f = fixture(|_| {});
    // LMTP accepts the alert address at RCPT (it carries no SASL login, so
    // only DKIM can authenticate a post there); it has one spelling only.
    use mamoru_ingest::Deliver as _;
    assert!(f.registrar.accepts_recipient("alert@mamoru.test") && f.registrar.accepts_recipient("<ALERT@Mamoru.Test>"));
    assert!(!f.registrar.accepts_recipient("alert+x@mamoru.test"));
    assert!(matches!(f.registrar.deliver(ADMIN, "alert@mamoru.test", post(ADMIN, "l1@x", BODY).as_bytes()), Outcome::Dropped(_)));
    assert_eq!(f.deliver(ADMIN, Some("chuo"), &post(ADMIN, "m1@city.test", BODY)), Outcome::Stored);
    assert_eq!(f.deliver(ADMIN, Some("chuo"), &post(ADMIN, "m1@city.test", BODY)), Outcome::Dropped("alert: duplicate".into()));
    let q = f.queued();
    assert_eq!(q.len(), 1);
    assert_eq!((q[0].kind.as_str(), q[0].recipient.as_str()), ("alert_preview", ADMIN));
    let m = mailparse::parse_mail(&q[0].content).expect("parse");
    let body = m.get_body().expect("body");
    assert!(body.contains("/p/") && body.contains("配信先: 1件") && body.contains("・docomo: 1件"), "{body}");
    assert!(body.contains("公園で声かけがありました。"), "{body}");
}

#[test]
fn forged_and_unauthenticated_posts_publish_nothing_and_get_no_reply() {
    let f = fixture(|c| c.alerts.authserv_id = "mx.mamoru.test".into());
    let p = |id: &str| post(ADMIN, id, BODY);
    let cases: Vec<(&str, String, String, Option<&str>)> = vec![
        ("From of an admin, no SASL, no DKIM", ADMIN.into(), p("f1@x"), None),
        ("SASL login of another user", ADMIN.into(), p("f2@x"), Some("mallory")),
        ("envelope sender differs from From", "mallory@evil.test".into(), p("f3@x"), Some("chuo")),
        ("not an admin", "mallory@evil.test".into(), post("mallory@evil.test", "f4@x", BODY), Some("mallory@evil.test")),
        ("disabled admin", "disabled@city.test".into(), post("disabled@city.test", "f5@x", BODY), Some("gone")),
        ("valid DKIM of another domain", ADMIN.into(), sign(&f.evil_key, "evil.test", &p("f6@x")), None),
        (
            "forged Authentication-Results below Received",
            ADMIN.into(),
            format!("Received: from evil.test by mx.mamoru.test\r\nAuthentication-Results: mx.mamoru.test; dkim=pass header.d=city.test\r\n{}", p("f7@x")),
            None,
        ),
        (
            "Authentication-Results of another authserv-id",
            ADMIN.into(),
            format!("Authentication-Results: mx.evil.test; dkim=pass header.d=city.test\r\n{}", p("f8@x")),
            None,
        ),
        ("DKIM of our admin's domain, body altered", ADMIN.into(), sign(&f.key, "city.test", &p("f9@x")).replace("声かけ", "不審"), None),
    ];
    for (what, sender, message, sasl) in &cases {
        match f.deliver(sender, *sasl, message) {
            Outcome::Dropped(reason) => assert!(reason.starts_with("alert: "), "{what}: {reason}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    assert!(f.queued().is_empty(), "no preview, no reply, nothing queued");
    assert!(f.store.recent_alerts(10).expect("alerts").is_empty());
}

#[test]
fn aligned_dkim_or_our_authentication_results_authenticate() {
    let f = fixture(|c| c.alerts.authserv_id = "mx.mamoru.test".into());
    let signed = sign(&f.key, "city.test", &post(ADMIN, "d1@city.test", BODY));
    assert_eq!(f.deliver(ADMIN, None, &signed), Outcome::Stored);
    let ar = format!("Authentication-Results: mx.mamoru.test; dkim=pass header.d=city.test\r\nReceived: from a by b\r\n{}", post(ADMIN, "d2@x", BODY));
    assert_eq!(f.deliver(ADMIN, None, &ar), Outcome::Stored);
    assert_eq!(f.queued().len(), 2);
    // With require = "sasl", DKIM alone is not enough.
    let strict = fixture(|c| c.alerts.require = mamoru_core::config::AlertAuth::Sasl);
    let signed = sign(&strict.key, "city.test", &post(ADMIN, "d3@city.test", BODY));
    assert!(matches!(strict.deliver(ADMIN, None, &signed), Outcome::Dropped(_)));
}

#[test]
fn a_malformed_post_is_answered_at_the_registered_address_once() {
    let f = fixture(|_| {});
    let bad = post(ADMIN, "bad@city.test", "地区: 東京\r\n本文\r\n");
    assert_eq!(f.deliver(ADMIN, Some("chuo"), &bad), Outcome::Stored);
    assert_eq!(f.deliver(ADMIN, Some("chuo"), &bad), Outcome::Dropped("alert: duplicate".into()));
    let q = f.queued();
    assert_eq!(q.len(), 1);
    assert_eq!((q[0].kind.as_str(), q[0].recipient.as_str()), ("alert_rejected", ADMIN));
    let body = mailparse::parse_mail(&q[0].content).expect("parse").get_body().expect("body");
    assert!(body.contains("東京") && body.contains("1 中央地区") && body.contains("10 音戸・倉橋地区"), "{body}");
}

fn sign_headers(der: &[u8], headers: &[&str], message: &str) -> String {
    let key = Ed25519Key::from_pkcs8_der(der).expect("key");
    let sig = DkimSigner::from_key(key).domain("city.test").selector("sel").headers(headers.iter().copied()).sign(message.as_bytes()).expect("sign");
    format!("{}{message}", sig.to_header())
}

/// A captured, genuinely signed post, tampered with: none of it may become
/// a draft, a preview or a reply.
#[test]
fn tampered_signed_posts_produce_nothing() {
    let f = fixture(|c| c.alerts.authserv_id = "mx.mamoru.test".into());
    let signed = |id: &str| sign(&f.key, "city.test", &post(ADMIN, id, BODY));
    let on_top = |header: &str, m: String| format!("{header}\r\n{m}");
    let cases: Vec<(&str, String)> = vec![
        ("second Subject on top", on_top("Subject: =?UTF-8?B?5YWo5Zyw5Yy644Gr57eK5oCl77ya44GZ44GQ6YG/6Zuj?=", signed("t1@city.test"))),
        ("second Subject at the bottom", signed("t2@city.test").replacen("MIME-Version", "Subject: x\r\nMIME-Version", 1)),
        ("second Message-ID on top", on_top("Message-ID: <replay@evil.test>", signed("t3@city.test"))),
        ("second From on top", on_top("From: staff@city.test", signed("t4@city.test"))),
        ("second Date", on_top("Date: Mon, 1 Jan 2024 00:00:00 +0900\r\nDate: Tue, 2 Jan 2024 00:00:00 +0900", signed("t5@city.test"))),
        ("second To, spaced name", on_top("To : all@mamoru.test", signed("t6@city.test"))),
        ("h= without From", sign_headers(&f.key, &["To", "Subject", "Message-ID"], &post(ADMIN, "t7@city.test", BODY))),
        ("h= without Subject", sign_headers(&f.key, &["From", "To", "Message-ID"], &post(ADMIN, "t8@city.test", BODY))),
        (
            "our A-R says fail, with pass inside a quoted reason",
            on_top(
                "Authentication-Results: mx.mamoru.test; dkim=fail reason=\"x dkim=pass header.d=city.test\" header.d=evil.test\r\nReceived: from evil.test",
                post(ADMIN, "t9@city.test", BODY),
            ),
        ),
        (
            "our A-R says fail, with pass inside a comment",
            on_top(
                "Authentication-Results: mx.mamoru.test; dkim=fail (dkim=pass header.d=city.test) header.d=evil.test\r\nReceived: from evil.test",
                post(ADMIN, "t10@city.test", BODY),
            ),
        ),
        (
            "pass inside the authserv-id's comment",
            on_top("Authentication-Results: mx.mamoru.test (dkim=pass header.d=city.test); none\r\nReceived: from evil.test", post(ADMIN, "t11@city.test", BODY)),
        ),
    ];
    for (what, message) in &cases {
        match f.deliver(ADMIN, None, message) {
            Outcome::Dropped(reason) => assert!(reason.starts_with("alert: "), "{what}: {reason}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    assert!(f.queued().is_empty(), "no preview, no reply, nothing queued");
    assert!(f.store.recent_alerts(10).expect("alerts").is_empty(), "no draft");
    // The untampered posts do authenticate.
    assert_eq!(f.deliver(ADMIN, None, &signed("t1@city.test")), Outcome::Stored);
    let opendkim = "Authentication-Results: mx.mamoru.test; dkim=pass (2048-bit key; unprotected) header.d=city.test header.i=@city.test header.b=abcd\r\nReceived: from city.test";
    assert_eq!(f.deliver(ADMIN, None, &on_top(opendkim, post(ADMIN, "t12@city.test", BODY))), Outcome::Stored);
    assert_eq!(f.queued().len(), 2);
}

#[test]
fn a_replayed_signed_post_with_a_new_message_id_is_a_duplicate() {
    let f = fixture(|_| {});
    // Message-ID not signed: a replay may carry any other one.
    let signed = sign_headers(&f.key, &["From", "To", "Subject"], &post(ADMIN, "orig@city.test", BODY));
    assert_eq!(f.deliver(ADMIN, None, &signed), Outcome::Stored);
    let replay = signed.replace("<orig@city.test>", "<new@evil.test>");
    assert_eq!(f.deliver(ADMIN, None, &replay), Outcome::Dropped("alert: duplicate".into()));
    assert_eq!(f.queued().len(), 1);
    assert_eq!(f.store.recent_alerts(10).expect("alerts").len(), 1);
}

#[test]
fn a_nested_post_is_answered_to_the_admin_and_dropped_for_a_forger() {
    let f = fixture(|_| {});
    let nested = String::from_utf8(mamoru_ingest::mime::nested_message(3_000, 0)).expect("ascii");
    let nested = nested.replace("From: a@example.jp\r\nTo: x@example.jp", &format!("From: {ADMIN}\r\nTo: alert@mamoru.test"));
    // A forger (no authentication): a logged drop, no reply.
    assert!(matches!(f.deliver(ADMIN, None, &nested), Outcome::Dropped(_)));
    assert!(f.queued().is_empty());
    // The admin: one 受付不可 reply, at the registered address.
    assert_eq!(f.deliver(ADMIN, Some("chuo"), &nested), Outcome::Stored);
    assert_eq!(f.deliver(ADMIN, Some("chuo"), &nested), Outcome::Dropped("alert: duplicate".into()));
    let q = f.queued();
    assert_eq!((q.len(), q[0].kind.as_str(), q[0].recipient.as_str()), (1, "alert_rejected", ADMIN));
    let body = mailparse::parse_mail(&q[0].content).expect("parse").get_body().expect("body");
    assert!(body.contains("読み取れませんでした"), "{body}");
}

/// mail-auth matches every `h=` name against every header field (quadratic
/// in both); a forged post may not make it do that at length.
#[test]
fn a_forged_signature_over_thousands_of_headers_is_cheap() {
    let f = fixture(|_| {});
    let names: Vec<String> = (0..4000).map(|i| format!("x-n{i}")).collect();
    let mut hs: Vec<&str> = names.iter().map(String::as_str).collect();
    hs.extend(["From", "Subject"]);
    let pad: String = (0..1500).map(|i| format!("X-P{i}: v\r\n")).collect();
    // Body intact (the body hash matches), a header changed: the headers
    // would be hashed before the signature fails.
    let signed = sign_headers(&f.key, &hs, &format!("{pad}{}", post(ADMIN, "cost@city.test", BODY))).replacen("Subject: ", "Subject: x", 1);
    let few = sign_headers(&f.key, &hs, &post(ADMIN, "cost2@city.test", BODY)).replacen("Subject: ", "Subject: x", 1);
    let t = std::time::Instant::now();
    assert_eq!(f.deliver(ADMIN, None, &signed), Outcome::Dropped("alert: too-many-headers".into()));
    assert_eq!(f.deliver(ADMIN, None, &few), Outcome::Dropped("alert: not-authenticated".into()));
    assert!(t.elapsed() < std::time::Duration::from_millis(500), "{:?}", t.elapsed());
    assert!(f.queued().is_empty());
}
