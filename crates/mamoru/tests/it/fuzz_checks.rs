//! The properties every parser that sees outside input must keep, one
//! function per fuzz target. The same functions run under libFuzzer
//! (`fuzz/`, `scripts/fuzz`, coverage-guided, for hours) and in the normal
//! test suite (`fuzz_smoke`, a bounded run on mutated seeds), so the two
//! can never drift apart. A property breaks by panicking.

use std::path::Path;
use std::sync::OnceLock;

use mamoru_core::Config;
use mamoru_core::token::{Claims, Purpose, TokenKey};
use mamoru_ingest::Outcome;
use mamoru_ingest::classify::{Envelope, Rules, classify as classify_mail};
use mamoru_ingest::lmtp::{Event, Limits, Session};
use mamoru_web::form as web_form;

/// Every target, by the name of its binary under `fuzz/fuzz_targets/`.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("lmtp", lmtp),
    ("classify", classify),
    ("dsn", dsn),
    ("alert_format", alert_format),
    ("html_to_text", html_to_text),
    ("token", token),
    ("form", form),
    ("config", config),
    ("iso2022jp", iso2022jp),
    ("mime", mime),
    ("auth_results", auth_results),
    ("dkim_headers", dkim_headers),
    ("csv_import", csv_import),
    ("escape", escape),
    ("smtp_reply", smtp_reply),
];

fn cfg() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(|| Config::defaults(Path::new("/nonexistent")))
}

/// An LMTP conversation from arbitrary bytes, fed in chunks of the size the
/// first byte says: the session never panics and never loops.
pub fn lmtp(data: &[u8]) {
    let Some((&chunk, input)) = data.split_first() else { return };
    let chunk = usize::from(chunk % 64) + 1;
    let mut session = Session::new("mx.fuzz", Limits { max_message_bytes: 4096, max_recipients: 4 });
    let _ = session.greeting();
    let mut accept = false;
    for piece in input.chunks(chunk) {
        session.push_input(piece);
        // Every event consumes input or ends the session; a bound on the
        // steps per chunk turns a livelock into a reported crash.
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps <= piece.len() + 16, "session made no progress");
            match session.next_event() {
                Event::Reply(_) => {}
                Event::CheckRecipient(_) => {
                    accept = !accept;
                    let _ = session.recipient_checked(accept);
                }
                Event::Deliver(tx) => {
                    let outcomes: Vec<Outcome> = tx.recipients.iter().map(|_| Outcome::Stored).collect();
                    let _ = session.delivered(&outcomes);
                }
                Event::NeedInput => break,
                Event::Close(_) => return,
            }
        }
    }
    let _ = session.shutdown();
}

/// Inbound classification of an arbitrary message, for a few envelopes.
pub fn classify(data: &[u8]) {
    let rules = Rules { domain: "mamoru.test", register_local: "ans", max_header_bytes: Rules::DEFAULT_MAX_HEADER_BYTES };
    for (sender, recipient) in [
        ("parent@docomo.ne.jp", "ans@mamoru.test"),
        ("", "ans+chuo@mamoru.test"),
        ("MAILER-DAEMON@x.jp", "bounce+1-abc@mamoru.test"),
    ] {
        let _ = classify_mail(&rules, &Envelope { sender, recipient }, data);
    }
}

/// The bounce parser on an arbitrary returned message.
pub fn dsn(data: &[u8]) {
    let _ = mamoru_ingest::dsn::parse(data);
}

/// The alert post format: the first line is the subject, the rest the text.
pub fn alert_format(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (subject, text) = text.split_once('\n').unwrap_or((text, ""));
    if let Ok(draft) = mamoru_core::alert::parse_post(cfg(), subject, text, 1_800_000_000) {
        let _ = mamoru_core::alert::content(cfg(), &draft, false, 1_800_000_000);
    }
    let _ = mamoru_core::alert::parse_followup(text);
    let _ = mamoru_core::alert::parse_occurred(subject, 1_800_000_000);
    let _ = mamoru_core::alert::wrap(text, 36);
}

/// HTML-only posts become text, never longer than the input allows: no tag
/// or entity makes text out of nothing.
pub fn html_to_text(data: &[u8]) {
    let Ok(html) = std::str::from_utf8(data) else { return };
    let text = mamoru_ingest::alert_post::html_to_text(html);
    assert!(text.len() <= html.len() * 4 + 16, "output grew beyond the input");
}

/// Verification accepts only what the key signed (re-signing the claims
/// gives the same string: no second spelling of a token), and whatever it
/// signs verifies back to the same claims.
pub fn token(data: &[u8]) {
    let key = TokenKey::new(&[7u8; 32]);
    if let Ok(s) = std::str::from_utf8(data) {
        for purpose in [Purpose::Register, Purpose::Manage, Purpose::Unsubscribe, Purpose::Publish] {
            if let Ok(claims) = key.verify(s, purpose, 1_000) {
                assert_eq!(key.sign(&claims), s, "accepted a token spelled differently from the one signed");
            }
        }
    }
    if data.len() >= 20 {
        let word = |i: usize| data[i..i + 8].try_into().unwrap_or_default();
        let expires_at = i64::from(u32::from_le_bytes(data[16..20].try_into().unwrap_or_default()));
        let claims = Claims { purpose: Purpose::Manage, subject: u64::from_le_bytes(word(0)), nonce: word(8), expires_at };
        let token = key.sign(&claims);
        if expires_at > 1_000 {
            assert_eq!(key.verify(&token, Purpose::Manage, 1_000).ok(), Some(claims));
        }
    }
}

/// `application/x-www-form-urlencoded` bodies and the district choice.
pub fn form(data: &[u8]) {
    for (k, v) in web_form::pairs(data) {
        assert!(k.len() <= data.len() * 3 && v.len() <= data.len() * 3, "decoded field longer than possible");
    }
    let _ = web_form::value(data, "email");
    let _ = web_form::decode(data);
    let _ = web_form::districts(data, cfg());
}

/// Configuration text: parsing and validation never panic; a config that
/// parses is valid as it stands, and its typed values (transports, listen
/// addresses, the resolver), written back in the file's syntax, read as
/// themselves.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let base = Path::new("/nonexistent");
    let Ok(cfg) = Config::from_toml(text, base) else { return };
    assert!(cfg.validate().is_ok(), "a parsed config fails its own validation");
    let reread = |toml: String| Config::from_toml(&toml, base).unwrap_or_else(|e| panic!("{toml}: {e}"));
    for t in std::iter::once(&cfg.relay.transport).chain(cfg.carriers.values().filter_map(|p| p.route.as_ref())) {
        assert_eq!(&reread(format!("[relay]\ntransport = \"{t}\"\n")).relay.transport, t);
        assert_eq!(reread(format!("[carriers.x]\nroute = \"{t}\"\n")).carriers["x"].route.as_ref(), Some(t));
    }
    assert_eq!(reread(format!("[ingest]\nlmtp_listen = \"{}\"\n", cfg.ingest.lmtp_listen)).ingest.lmtp_listen, cfg.ingest.lmtp_listen);
    assert_eq!(reread(format!("[web]\nlisten = \"{}\"\n", cfg.web.listen)).web.listen, cfg.web.listen);
    if let Some(r) = cfg.relay.resolver {
        assert_eq!(reread(format!("[relay]\nresolver = \"{r}\"\n")).relay.resolver, Some(r));
    }
}

fn subject_and_body(raw: &[u8]) -> Option<(String, String)> {
    let m = mailparse::parse_mail(raw).ok()?;
    let subject = m.headers.iter().find(|h| h.get_key_ref().eq_ignore_ascii_case("subject")).map(|h| h.get_value()).unwrap_or_default();
    Some((subject, m.get_body().ok()?))
}

/// The per-pool ISO-2022-JP re-encoding: what it produces parses, and its
/// subject and text decode back to exactly those of the input.
pub fn iso2022jp(data: &[u8]) {
    let Ok(out) = mamoru_relay::charset::to_iso2022jp(data) else { return };
    let after = subject_and_body(&out);
    assert!(after.is_some(), "converted mail does not parse");
    if let (Some((s0, b0)), Some((s1, b1))) = (subject_and_body(data), after) {
        // Leading and trailing white space of an unstructured field is
        // not part of its text (a fold right after the colon leaves some).
        assert_eq!(s0.trim(), s1.trim(), "subject changed");
        // Line ends become CRLF on the way; nothing else may change.
        let lines = |b: &str| b.replace("\r\n", "\n").trim_end_matches('\n').to_owned();
        assert_eq!(lines(&b0), lines(&b1), "text changed");
    }
}

/// The bounded MIME parse every posted or returned message goes through:
/// within the bounds, the tree is walked for a post's text; beyond them,
/// nothing recursive ever saw the bytes.
pub fn mime(data: &[u8]) {
    let limits = mamoru_ingest::mime::Limits::DEFAULT;
    let shape = mamoru_ingest::mime::prescan(data, &limits);
    if let Ok(parsed) = mamoru_ingest::mime::parse(data, &limits) {
        assert!(shape.is_ok(), "parsed a message the prescan refused");
        let _ = mamoru_ingest::alert_post::extract(&parsed);
        let _ = mamoru_ingest::alert_post::duplicated_header(&parsed.headers);
    }
}

/// RFC 8601 Authentication-Results: never panics, and a pass is only ever
/// read from a result statement, never from a comment or a quoted reason.
pub fn auth_results(data: &[u8]) {
    let Ok(value) = std::str::from_utf8(data) else { return };
    // One header field: a line break would start another one.
    let value = value.replace(['\r', '\n'], " ");
    let parsed = mamoru_ingest::auth_results::parse(&value);
    let mut raw = format!("Authentication-Results: {value}\r\nReceived: from x\r\n\r\n").into_bytes();
    if mamoru_ingest::alert_auth::trusted_results_pass("mx.mamoru.test", "city.example", &raw) {
        let ar = parsed.expect("a pass from a header that does not parse");
        assert!(ar.authserv_id.eq_ignore_ascii_case("mx.mamoru.test"), "a pass under someone else's authserv-id");
        assert!(ar.results.iter().any(|r| r.method == "dkim" && r.result == "pass"), "a pass without a dkim=pass statement");
    }
    raw.clear();
}

/// No message verifies against a pinned key whose private half nobody has
/// (generated once for this check and thrown away),
/// whatever its headers (duplicates, huge or many signatures, odd `h=`).
pub fn dkim_headers(data: &[u8]) {
    let mut keys = std::collections::BTreeMap::new();
    keys.insert(
        "sel._domainkey.city.example".to_owned(),
        "v=DKIM1; k=ed25519; p=XfOmnYovl5xnF3cAxCOdJfjfQ8HSC6G4ZbGazgkm4GM=".to_owned(),
    );
    assert!(mamoru_ingest::alert_auth::dkim_verifies(&keys, "city.example", data).is_none(), "a forged signature verified");
}

/// CSV rosters: never panics; every reported line exists; the rows read
/// export and import back unchanged.
pub fn csv_import(data: &[u8]) {
    let Ok(roster) = mamoru_store::import::parse_roster(cfg(), data) else { return };
    let lines = data.split(|&b| b == b'\n').count() as u64;
    for bad in &roster.bad {
        assert!(bad.line >= 1 && bad.line <= bad.last_line && bad.last_line <= lines, "line {bad} of {lines}");
    }
    let rows: Vec<mamoru_store::import::ExportRow> = roster
        .rows
        .iter()
        .map(|r| mamoru_store::import::ExportRow {
            address: r.address.clone(),
            status: mamoru_store::states::SubscriberStatus::Active,
            districts: r.districts.clone(),
            created_at: 0,
            confirmed_at: 0,
        })
        .collect();
    let mut out = Vec::new();
    mamoru_store::import::write_export(&rows, &mut out).expect("export");
    let back = mamoru_store::import::parse_roster(cfg(), &out).expect("our own export reads back");
    assert!(back.bad.is_empty(), "our own export has bad rows: {:?}", back.bad);
    let got: Vec<_> = back.rows.iter().map(|r| (r.address.as_str().to_owned(), r.districts.clone())).collect();
    let want: Vec<_> = roster.rows.iter().map(|r| (r.address.as_str().to_owned(), r.districts.clone())).collect();
    assert_eq!(got, want, "export and import changed the rows");
}

/// The one text rule of pages and feeds: what a page writes for a text
/// (`pages::escape`, the same two steps as every page) and every byte of an
/// Atom feed holding it (`archive::feed`, quick-xml's writer) are XML
/// character data: allowed characters only, and in the page's text markup
/// escaped and every `&` an entity.
pub fn escape(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let allowed = |c: char| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..);
    let mut out = String::new();
    mamoru_web::pages::escape(&mut out, text);
    for c in out.chars() {
        assert!(allowed(c) && c != '<' && c != '>', "{c:?} written");
    }
    for (i, _) in out.match_indices('&') {
        let rest = &out[i..];
        assert!(["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"].iter().any(|e| rest.starts_with(e)), "a bare & at {i}");
    }
    let row = mamoru_store::alerts::AlertRow {
        id: mamoru_core::AlertId::new(1),
        admin: mamoru_core::AdminId::new(1),
        admin_login: String::new(),
        source: "web".into(),
        kind: text.into(),
        title: text.into(),
        text: text.into(),
        districts: vec![1],
        is_test: false,
        state: mamoru_store::states::AlertState::Published,
        created_at: 0,
        published_at: 0,
        recipients: 0,
        followup_of: None,
        followup_kind: None,
        incident_state: None,
        updated_at: 0,
        occurred_at: 0,
        occurred_flags: 0,
        urgent: false,
        report_published_at: 0,
        ask_confirm: false,
    };
    let rows = [row];
    let feed = mamoru_web::archive::feed(cfg(), None, &mamoru_web::archive::Incident::group(&rows, &[]), 0);
    assert!(feed.ends_with("</feed>\n"), "feed not written: {feed:?}");
    if let Some(c) = feed.chars().find(|&c| !allowed(c)) {
        panic!("{c:?} in the feed");
    }
}

/// A peer's SMTP reply as the relay reads it: the code is the first three
/// digits, an enhanced code only ever agrees with the code's class, and
/// only a temporary (4xx) reply is ever a throttle signal.
pub fn smtp_reply(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some(reply) = mamoru_relay::outcome::Reply::parse(text) else { return };
    assert!((200..600).contains(&reply.code), "code {}", reply.code);
    assert_eq!(text.get(..3).and_then(|c| c.parse().ok()), Some(reply.code), "code not from the first three digits");
    if let Some(e) = reply.enhanced {
        assert_eq!(u16::from(e.class), reply.code / 100, "enhanced class disagrees with the code");
    }
    if reply.is_pace_push_back() || reply.is_session_refusal() {
        assert!((400..500).contains(&reply.code), "a throttle signal from {text:?}");
    }
}
