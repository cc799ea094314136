//! The flows end to end against a real SQLite store in a temp dir.

use std::sync::Arc;
use std::time::Duration;

use mamoru_core::alert::{self, FollowupKind, FormatError};
use mamoru_core::token::Purpose;
use mamoru_core::{AlertId, Config, EmailAddress, UnixTime};
use mamoru_store::admins::{Admin, AdminAdded};
use mamoru_store::alerts::Published;
use mamoru_store::manage::{LinkMail, ManageOutcome};
use mamoru_store::{Channel, Completion, Preferences, QueuedMail, Store, keys};

use crate::alerts::{DraftOutcome, Publisher, Source};
use crate::registration::LinkOutcome;
use crate::App;

const T0: UnixTime = 1_800_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    app: App,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys::load_or_create(dir.path()).unwrap();
    let store = Store::open(dir.path(), &keys, Duration::from_millis(200)).unwrap();
    let cfg = Config { domain: "mamoru.test".into(), ..Config::default() };
    let app = App::new(Arc::new(cfg), Arc::new(store), keys.token_key());
    Fixture { app, _dir: dir }
}

fn addr(s: &str) -> EmailAddress {
    EmailAddress::parse(s).unwrap()
}

impl Fixture {
    /// Every queued mail, taken from the outbox.
    fn take(&self, now: UnixTime) -> Vec<QueuedMail> {
        self.app.store.claim_due(now, 1_000_000, 1000).unwrap()
    }

    /// The token of the one link in the one mail queued.
    fn token(&self, now: UnixTime, path: &str) -> String {
        let mails = self.take(now);
        assert_eq!(mails.len(), 1);
        let text = mailparse::parse_mail(&mails[0].content).unwrap().get_body().unwrap();
        let at = text.find(path).expect("a link");
        text[at + path.len()..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect()
    }

    fn admin(&self, login: &str, districts: &[u32]) -> Admin {
        let email = addr(&format!("{login}@city.example.jp"));
        let AdminAdded::Added(_) = self.app.store.add_admin(login, &email, "x", districts, "test", T0).unwrap() else { panic!() };
        self.app.store.admin_credentials(login).unwrap().unwrap().0
    }
}

#[test]
fn a_new_address_registers_and_a_known_one_gets_a_manage_link() {
    let f = fixture();
    let a = addr("parent@docomo.ne.jp");
    let LinkOutcome::Queued { kind: LinkMail::Register, .. } = f.app.request_link(&a, Channel::Mail, Some("ans+chuo@mamoru.test"), T0).unwrap()
    else {
        panic!("not queued")
    };
    let token = f.token(T0, "/r/");
    let claims = f.app.verify(&token, Purpose::Register, T0).unwrap();
    // The district of `ans+chuo@` is pre-selected.
    let view = f.app.registration_view(&claims, T0).unwrap().unwrap();
    assert!(!view.districts.is_empty());
    assert!(matches!(f.app.complete_registration(&claims, &[1, 3], &Preferences::default(), T0 + 1).unwrap(), Completion::Completed { .. }));
    assert_eq!(f.take(T0 + 1).len(), 1, "登録完了");
    // The same link cannot complete twice.
    assert_eq!(f.app.complete_registration(&claims, &[2], &Preferences::default(), T0 + 2).unwrap(), Completion::TokenUnusable);

    // Later, by the form: a manage link, and the district change it allows.
    let LinkOutcome::Queued { kind: LinkMail::Manage, .. } = f.app.request_link(&a, Channel::Web { client: [7; 32] }, None, T0 + 400).unwrap()
    else {
        panic!("not queued")
    };
    let token = f.token(T0 + 400, "/m/");
    let claims = f.app.verify(&token, Purpose::Manage, T0 + 400).unwrap();
    assert_eq!(f.app.manage_view(&claims, T0 + 400).unwrap().unwrap().districts, vec![1, 3]);
    assert!(matches!(f.app.change_districts(&claims, &[2], &Preferences::default(), T0 + 401).unwrap(), ManageOutcome::Done { .. }));
    assert_eq!(f.take(T0 + 401).len(), 1, "変更完了");
}

#[test]
fn daemons_and_our_own_domain_never_get_a_link_and_nothing_is_recorded() {
    let f = fixture();
    for a in ["MAILER-DAEMON@docomo.ne.jp", "no-reply@example.com", "someone@mamoru.test"] {
        let out = f.app.request_link(&addr(a), Channel::Web { client: [1; 32] }, None, T0).unwrap();
        assert!(matches!(out, LinkOutcome::NoReply(_)), "{a}: {out:?}");
    }
    assert!(f.take(T0).is_empty());
}

#[test]
fn a_second_request_within_the_cooldown_is_limited() {
    let f = fixture();
    let a = addr("parent@au.com");
    assert!(matches!(f.app.request_link(&a, Channel::Mail, None, T0).unwrap(), LinkOutcome::Queued { .. }));
    assert!(matches!(f.app.request_link(&a, Channel::Mail, None, T0 + 10).unwrap(), LinkOutcome::Limited(_)));
}

#[test]
fn an_admin_cannot_draft_for_districts_outside_their_own() {
    let f = fixture();
    let admin = f.admin("chuo", &[1]);
    let draft = alert::draft(&f.app.cfg, "不審者", "", vec![1, 2], "本文").unwrap();
    let out = f.app.draft(&admin, &draft, Source::Web, false, T0).unwrap();
    assert_eq!(out, DraftOutcome::Refused(FormatError::DistrictsNotAllowed(vec![2])));
    assert!(f.take(T0).is_empty(), "no preview for a refused post");
}

#[test]
fn a_mailed_post_is_drafted_once() {
    let f = fixture();
    let admin = f.admin("chuo", &[]);
    let draft = alert::parse_post(&f.app.cfg, "不審者", "地区: 中央\n本文", T0).unwrap();
    let src = Source::Mail { key: "mid:<a@b>", attachments: 0 };
    assert!(matches!(f.app.draft(&admin, &draft, src, false, T0).unwrap(), DraftOutcome::Created { .. }));
    assert_eq!(f.app.draft(&admin, &draft, src, false, T0 + 1).unwrap(), DraftOutcome::Duplicate);
}

#[test]
fn only_the_author_publishes_from_the_panel_and_every_copy_renders_alike() {
    let f = fixture();
    // A subscriber of 中央.
    let a = addr("parent@docomo.ne.jp");
    f.app.request_link(&a, Channel::Mail, None, T0).unwrap();
    let claims = f.app.verify(&f.token(T0, "/r/"), Purpose::Register, T0).unwrap();
    f.app.complete_registration(&claims, &[1], &Preferences::default(), T0).unwrap();
    f.take(T0);

    let author = f.admin("chuo", &[]);
    let other = f.admin("showa", &[]);
    let draft = alert::draft(&f.app.cfg, "不審者", "", vec![1], "本文").unwrap();
    let DraftOutcome::Created { alert, .. } = f.app.draft(&author, &draft, Source::Web, false, T0).unwrap() else { panic!() };
    // The preview carries the publish link.
    let token = f.token(T0, "/p/");
    assert!(f.app.verify(&token, Purpose::Publish, T0).is_ok());

    assert_eq!(f.app.publish(Publisher::Author { admin: &other, alert }, T0).unwrap(), Published::Unusable);
    let Published::Published { recipients: 1, .. } = f.app.publish(Publisher::Author { admin: &author, alert }, T0 + 5).unwrap() else {
        panic!()
    };
    let copy = &f.take(T0 + 5)[0];
    let r = copy.alert.expect("an alert row");
    let first = f.app.alert_copy(r.alert_id, r.subscriber_id, &copy.recipient, r.link_nonce).unwrap().unwrap();
    let again = f.app.alert_copy(r.alert_id, r.subscriber_id, &copy.recipient, r.link_nonce).unwrap().unwrap();
    assert_eq!(first, again);
    assert!(String::from_utf8_lossy(&first).contains("Date:"));
    assert_eq!(f.app.alert_copy(mamoru_core::AlertId::new(r.alert_id.get() + 100), r.subscriber_id, &copy.recipient, r.link_nonce).unwrap(), None);
}

#[test]
fn a_parent_who_just_registered_can_fix_the_districts_at_once() {
    let f = fixture();
    let a = addr("parent@docomo.ne.jp");
    f.app.request_link(&a, Channel::Mail, None, T0).unwrap();
    let claims = f.app.verify(&f.token(T0, "/r/"), Purpose::Register, T0).unwrap();
    f.app.complete_registration(&claims, &[1], &Preferences::default(), T0 + 30).unwrap();
    // 登録完了 carries a manage link of its own, which opens the manage page.
    let token = f.token(T0 + 30, "/m/");
    let manage = f.app.verify(&token, Purpose::Manage, T0 + 30).unwrap();
    assert_eq!(f.app.manage_view(&manage, T0 + 30).unwrap().unwrap().districts, vec![1]);
    // A second empty mail within the cooldown of the first still gets its
    // manage link: the completed registration lifted the cooldown once.
    let out = f.app.request_link(&a, Channel::Mail, None, T0 + 60).unwrap();
    assert!(matches!(out, LinkOutcome::Queued { kind: LinkMail::Manage, .. }), "{out:?}");
    assert_eq!(f.token(T0 + 60, "/m/").len(), 51);
    // The one after it is within the cooldown again.
    let out = f.app.request_link(&a, Channel::Mail, None, T0 + 90).unwrap();
    assert_eq!(out, LinkOutcome::Limited(mamoru_store::Limited::Cooldown));
}

#[test]
fn only_configured_kinds_and_real_windows_are_saved() {
    let f = fixture();
    let a = addr("parent@docomo.ne.jp");
    f.app.request_link(&a, Channel::Mail, None, T0).unwrap();
    let claims = f.app.verify(&f.token(T0, "/r/"), Purpose::Register, T0).unwrap();
    // A hand-made request: an unknown kind, a kind twice, a window past the day.
    let odd = Preferences { kinds_off: vec!["号外".into(), "その他".into(), "その他".into()], quiet: Some((1320, 1500)) };
    f.app.complete_registration(&claims, &[1], &odd, T0 + 1).unwrap();
    let manage = f.app.verify(&f.token(T0 + 1, "/m/"), Purpose::Manage, T0 + 1).unwrap();
    let saved = f.app.manage_view(&manage, T0 + 1).unwrap().unwrap().prefs;
    assert_eq!(saved, Preferences { kinds_off: vec!["その他".into()], quiet: None });
    // A real window wrapping past midnight is kept; a window of no length is none.
    let night = Preferences { kinds_off: vec!["不審電話情報".into()], quiet: Some((1320, 420)) };
    f.app.change_districts(&manage, &[1], &night, T0 + 2).unwrap();
    assert_eq!(f.app.manage_view(&manage, T0 + 2).unwrap().unwrap().prefs, night);
    f.app.change_districts(&manage, &[1], &Preferences { kinds_off: vec![], quiet: Some((300, 300)) }, T0 + 3).unwrap();
    assert_eq!(f.app.manage_view(&manage, T0 + 3).unwrap().unwrap().prefs, Preferences::default());
}

#[test]
fn completing_a_registration_does_not_lift_the_daily_cap() {
    let f = fixture();
    let a = addr("parent@ezweb.ne.jp");
    let cap = f.app.cfg.limits.register_daily_cap;
    let cooldown = f.app.cfg.limits.register_cooldown_secs;
    f.app.request_link(&a, Channel::Mail, None, T0).unwrap();
    let claims = f.app.verify(&f.token(T0, "/r/"), Purpose::Register, T0).unwrap();
    f.app.complete_registration(&claims, &[1], &Preferences::default(), T0 + 1).unwrap();
    f.take(T0 + 1);
    let mut queued = 1;
    for i in 1..=cap + 2 {
        if let LinkOutcome::Queued { .. } = f.app.request_link(&a, Channel::Mail, None, T0 + 1 + i * (cooldown + 1)).unwrap() {
            queued += 1;
        }
    }
    assert_eq!(queued, cap, "the daily cap counts every mail of the day");
}

#[test]
fn a_reception_test_arrives_or_leads_to_the_carriers_help() {
    use crate::reception::{Asker, TestOutcome, TestStatus};
    use mamoru_core::help::Carrier;
    let f = fixture();
    let a = addr("parent@docomo.ne.jp");
    let wait = f.app.cfg.tokens.reception_wait_secs;
    let ask = |a: &EmailAddress, now| {
        let TestOutcome::Queued { waiting } = f.app.request_test(Asker::Visitor { addr: a, client: [3; 32] }, now).unwrap() else {
            panic!("not queued")
        };
        f.app.verify(&waiting, Purpose::Waiting, now).unwrap()
    };
    let waiting = ask(&a, T0);
    assert_eq!(f.app.test_status(&waiting, T0 + 1).unwrap(), Some(TestStatus::Waiting));
    assert_eq!(f.app.test_status(&waiting, T0 + wait).unwrap(), Some(TestStatus::Unconfirmed(Some(Carrier::Docomo))));
    let arrived = f.app.verify(&f.token(T0, "/t/"), Purpose::Arrived, T0).unwrap();
    assert_eq!(f.app.test_view(&arrived, T0 + 5).unwrap().unwrap().arrived_at, 0, "GET changes nothing");
    assert!(f.app.mark_test_arrived(&arrived, T0 + wait + 5).unwrap().is_some());
    assert_eq!(f.app.test_status(&waiting, T0 + wait + 6).unwrap(), Some(TestStatus::Arrived));

    // An address of a domain no help names: every help is shown.
    let other = ask(&addr("parent@example.jp"), T0);
    assert_eq!(f.app.test_status(&other, T0 + wait).unwrap(), Some(TestStatus::Unconfirmed(None)));
    // Daemons and our own domain get no test mail.
    let out = f.app.request_test(Asker::Visitor { addr: &addr("postmaster@docomo.ne.jp"), client: [3; 32] }, T0).unwrap();
    assert!(matches!(out, TestOutcome::NoReply(_)), "{out:?}");
}

#[test]
fn a_subscriber_tests_the_registered_address_from_the_manage_link() {
    use crate::reception::{Asker, TestOutcome};
    let f = fixture();
    let a = addr("parent@ezweb.ne.jp");
    f.app.request_link(&a, Channel::Mail, None, T0).unwrap();
    let claims = f.app.verify(&f.token(T0, "/r/"), Purpose::Register, T0).unwrap();
    f.app.complete_registration(&claims, &[1], &Preferences::default(), T0).unwrap();
    let manage = f.app.verify(&f.token(T0, "/m/"), Purpose::Manage, T0).unwrap();
    let out = f.app.request_test(Asker::Subscriber { manage: &manage }, T0 + 1).unwrap();
    assert!(matches!(out, TestOutcome::Queued { .. }), "{out:?}");
    let mails = f.take(T0 + 1);
    assert_eq!((mails.len(), mails[0].recipient.as_str()), (1, "parent@ezweb.ne.jp"));
    let forged = mamoru_core::token::Claims { subject: manage.subject + 1, ..manage };
    assert_eq!(f.app.request_test(Asker::Subscriber { manage: &forged }, T0 + 500).unwrap(), TestOutcome::LinkUnusable);
}

#[test]
fn a_confirmation_counts_once_per_copy_whoever_opens_it() {
    use mamoru_store::confirm::Confirmed;
    let f = fixture();
    let a = addr("parent@ezweb.ne.jp");
    f.app.request_link(&a, Channel::Mail, None, T0).unwrap();
    let claims = f.app.verify(&f.token(T0, "/r/"), Purpose::Register, T0).unwrap();
    f.app.complete_registration(&claims, &[3], &Preferences::default(), T0).unwrap();
    f.take(T0);
    let author = f.admin("chuo", &[]);
    let mut draft = alert::draft(&f.app.cfg, "不審者", "", vec![1, 3], "本文").unwrap();
    draft.ask_confirm = true;
    let DraftOutcome::Created { alert, .. } = f.app.draft(&author, &draft, Source::Web, false, T0).unwrap() else { panic!() };
    f.take(T0);
    f.app.publish(Publisher::Author { admin: &author, alert }, T0 + 1).unwrap();
    let copy = &f.take(T0 + 1)[0];
    let r = copy.alert.unwrap();
    let bytes = f.app.alert_copy(r.alert_id, r.subscriber_id, &copy.recipient, r.link_nonce).unwrap().unwrap();
    let body = mailparse::parse_mail(&bytes).unwrap().get_body().unwrap();
    let at = body.find("/k/").expect("a 確認しました link");
    let token: String = body[at + 3..].chars().take(51).collect();
    let c = f.app.verify(&token, Purpose::Confirm, T0 + 2).unwrap();
    assert_eq!(f.app.confirm_view(&c).unwrap().as_deref(), Some("不審者"));
    assert_eq!(f.app.confirm(&c, T0 + 3).unwrap(), Confirmed::Counted);
    assert_eq!(f.app.confirm(&c, T0 + 4).unwrap(), Confirmed::AlreadyCounted);
    f.app.store.mark_sent(copy.id, T0 + 2).unwrap();
    let table = f.app.confirm_table(alert).unwrap();
    assert_eq!((table.len(), table[0].district, table[0].carrier, table[0].delivered, table[0].confirmed), (1, 3, "au", 1, 1));
}

#[test]
fn a_followup_needs_a_standing_published_report_in_the_admins_districts() {
    let f = fixture();
    let author = f.admin("chuo", &[]);
    let showa = f.admin("showa", &[3]);
    let draft = alert::draft(&f.app.cfg, "不審者", "", vec![1], "本文").unwrap();
    let DraftOutcome::Created { alert: report, .. } = f.app.draft(&author, &draft, Source::Web, false, T0).unwrap() else { panic!() };
    let follow = |admin, id, kind, text: &str| f.app.draft_followup(admin, id, kind, text, Source::Cli, T0 + 10).unwrap();
    let no_such = |id: AlertId| DraftOutcome::Refused(FormatError::NoSuchAlert(id.to_string()));
    assert_eq!(follow(&author, report, FollowupKind::Update, "続報"), no_such(report), "a draft has no follow-ups");
    assert_eq!(follow(&author, AlertId::new(999), FollowupKind::Update, "続報"), no_such(AlertId::new(999)));
    f.app.publish(Publisher::Author { admin: &author, alert: report }, T0 + 5).unwrap();
    assert_eq!(follow(&author, report, FollowupKind::Update, " \n"), DraftOutcome::Refused(FormatError::EmptyText));
    assert_eq!(follow(&showa, report, FollowupKind::Update, "続報"), DraftOutcome::Refused(FormatError::DistrictsNotAllowed(vec![1])));
    let DraftOutcome::Created { alert: retraction, .. } = follow(&author, report, FollowupKind::Retracted, "誤りでした") else { panic!() };
    // A follow-up of the follow-up continues the same report.
    let DraftOutcome::Created { alert: second, .. } = follow(&author, retraction, FollowupKind::Update, "x") else { panic!() };
    assert_eq!(f.app.store.alert(second).unwrap().unwrap().followup_of, Some(report));
    f.app.publish(Publisher::Author { admin: &author, alert: retraction }, T0 + 20).unwrap();
    assert_eq!(follow(&author, report, FollowupKind::Resolved, "x"), DraftOutcome::Refused(FormatError::Retracted(report.get())));
    assert_eq!(f.app.publish(Publisher::Author { admin: &author, alert: second }, T0 + 30).unwrap(), Published::Unusable, "取消 is final");
}
