//! Self-service: the 登録内容の変更 mail for an address that is already
//! registered, the manage page (change districts, delete) and the one-click
//! unsubscribe (RFC 8058).
//!
//! Two kinds of token open the manage page, and the store tells them apart
//! by their nonce:
//! - a one-time token from a 登録内容の変更 mail: its nonce is in `tokens`,
//!   consumed in the transaction of the change it authorises;
//! - a footer link of an alert (`mamoru_core::links`): its nonce is the
//!   subscriber's `link_nonce`, long-lived, and revoked when the registration
//!   is deleted (the row, and so the nonce, is gone; a new registration of the
//!   same address gets a fresh nonce).
//!
//! Deletion purges the address everywhere: the subscriber row (sealed
//! address and blind index), its districts, tokens and rate-limit counter,
//! its queued outbox rows; finished outbox rows keep their statistics
//! (domain, state) but lose their sealed recipient and content.

use mamoru_core::mail::OutgoingMail;
use mamoru_core::token::{Claims, Nonce, Purpose};
use mamoru_core::{EmailAddress, UnixTime};
use crate::db::{Conn, OptionalExt};
use crate::params;

use crate::states::SubscriberStatus;
use crate::{
    Channel, Limited, MAILBOX_SCOPE, OutboxId, RegistrationLimits, Result, Store, SubscriberId, audit, districts_of,
    take_registration_slot,
};

/// Which link an empty mail to `ans@` earns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMail {
    /// 登録受付: a new (or still unconfirmed) address.
    Register,
    /// 登録内容の変更: an address that is already registered (active or
    /// suspended) gets a one-time manage link instead of a second registration.
    Manage,
}

impl LinkMail {
    pub fn purpose(self) -> Purpose {
        match self {
            LinkMail::Register => Purpose::Register,
            LinkMail::Manage => Purpose::Manage,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkRequest {
    /// A mail of this kind is queued.
    Queued { kind: LinkMail, subscriber: SubscriberId, outbox: OutboxId },
    /// Nothing was queued: a limit applies.
    Limited(Limited),
}

/// How a manage or unsubscribe token was authorised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// A one-time token from a 登録内容の変更 mail.
    OneTime,
    /// A long-lived footer link (the subscriber's `link_nonce`).
    Footer,
}

/// What the manage page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManageView {
    pub subscriber: SubscriberId,
    pub districts: Vec<u32>,
    pub prefs: crate::Preferences,
    /// Suspended after bounces: gets no mail until reactivated.
    pub suspended: bool,
    pub grant: Grant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManageOutcome {
    /// Done; `outbox` is the confirmation mail, if one was queued.
    Done { subscriber: SubscriberId, outbox: Option<OutboxId> },
    /// The token was used, or the registration is gone.
    TokenUnusable,
}

impl Store {
    /// What an empty mail to `ans@` (or the PC form) gets: like
    /// [`Store::request_registration`], under the same limits, but an address
    /// that is already registered gets a one-time manage link rather than a
    /// second registration. `render` builds the mail from its kind, the
    /// subscriber and the nonce of the recorded token. `preselect` (a
    /// district's own address, `ans+chuo@`) is added to a new registration's
    /// districts, so the registration page shows it checked. `channel` says
    /// which global budget (and, for the PC form, which client's) it spends.
    #[allow(clippy::too_many_arguments)]
    pub fn request_link(
        &self,
        addr: &EmailAddress,
        channel: &Channel,
        now: UnixTime,
        limits: &RegistrationLimits,
        token_expires_at: UnixTime,
        preselect: Option<u32>,
        mut render: impl FnMut(LinkMail, SubscriberId, Nonce) -> OutgoingMail,
    ) -> Result<LinkRequest> {
        let index = self.sealer.index(addr);
        let mailbox = self.mailbox_index(addr);
        self.serially(|| {
            let tx = self.begin()?;
            if let Some(limited) = take_registration_slot(&tx, &mailbox, channel, now, limits)? {
                return Ok(LinkRequest::Limited(limited));
            }
            let existing: Option<(SubscriberId, SubscriberStatus)> = tx
                .query_row("SELECT id, status FROM subscribers WHERE addr_index = ?1", params![&index[..]], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let (subscriber, kind) = match existing {
                Some((id, SubscriberStatus::Pending)) => (id, LinkMail::Register),
                Some((id, _)) => (id, LinkMail::Manage),
                None => {
                    let id = tx.query_row(
                        "INSERT INTO subscribers (addr_index, addr_sealed, domain, status, created_at, updated_at)
                         VALUES (?1, ?2, ?3, 'pending', ?4, ?4) RETURNING id",
                        params![&index[..], self.sealer.seal_address(addr)?, addr.domain(), now],
                        |r| r.get(0),
                    )?;
                    (id, LinkMail::Register)
                }
            };
            if let (LinkMail::Register, Some(district)) = (kind, preselect) {
                tx.execute(
                    "INSERT INTO subscriber_districts (subscriber_id, district_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    params![subscriber, district],
                )?;
            }
            let nonce = self.issue_token(&tx, kind.purpose(), subscriber.get(), token_expires_at)?;
            let mail = render(kind, subscriber, nonce);
            let outbox = self.insert_outbox(&tx, &mail, Some(subscriber), 10, now, token_expires_at)?;
            let action = match kind {
                LinkMail::Register => "registration-requested",
                LinkMail::Manage => "manage-link-requested",
            };
            audit(&tx, now, "ingest", action, &format!("subscriber={subscriber} addr={}", addr.masked()))?;
            // Counted with the commit: the pipe command's requests reach the
            // serving process's metrics through this row.
            let via = match channel {
                Channel::Mail => "mail",
                Channel::Web { .. } => "form",
            };
            let label = match kind {
                LinkMail::Register => "register",
                LinkMail::Manage => "manage",
            };
            crate::counters::bump(&tx, crate::counters::REGISTRATIONS_REQUESTED, &[via, label])?;
            tx.commit()?;
            Ok(LinkRequest::Queued { kind, subscriber, outbox })
        })
    }

    /// For GET and HEAD of `/m/` and `/u/`: does the token still open a
    /// registration, and what is its current choice? Changes nothing.
    pub fn manage_view(&self, claims: &Claims, now: UnixTime) -> Result<Option<ManageView>> {
        let conn = self.conn()?;
        let Some((subscriber, grant)) = grant(&conn, claims, now)? else { return Ok(None) };
        let status: SubscriberStatus = conn.query_row("SELECT status FROM subscribers WHERE id = ?1", params![subscriber], |r| r.get(0))?;
        let districts = districts_of(&conn, subscriber)?;
        let prefs = crate::preferences_of(&conn, subscriber)?;
        Ok(Some(ManageView { subscriber, districts, prefs, suspended: status == SubscriberStatus::Suspended, grant }))
    }

    /// The manage page's POST: replaces the districts and the preferences
    /// and queues the
    /// confirmation `render` builds. A one-time token is consumed, and,
    /// having just travelled through the subscriber's mailbox, it also
    /// reactivates a suspended registration.
    pub fn change_districts(
        &self,
        claims: &Claims,
        districts: &[u32],
        prefs: &crate::Preferences,
        now: UnixTime,
        mail_expires_at: UnixTime,
        mut render: impl FnMut(&EmailAddress) -> OutgoingMail,
    ) -> Result<ManageOutcome> {
        self.serially(|| {
            let tx = self.begin()?;
            let Some((subscriber, grant)) = grant(&tx, claims, now)? else { return Ok(ManageOutcome::TokenUnusable) };
            if grant == Grant::OneTime {
                // `grant` has just checked the token in this transaction.
                if !crate::consume_token(&tx, claims, claims.purpose, now)? {
                    return Ok(ManageOutcome::TokenUnusable);
                }
                tx.execute(
                    "UPDATE subscribers SET status = 'active', bounce_score = 0, suspended_reason = '', suspended_at = 0
                     WHERE id = ?1",
                    params![subscriber],
                )?;
            }
            tx.execute("UPDATE subscribers SET updated_at = ?1 WHERE id = ?2", params![now, subscriber])?;
            tx.execute("DELETE FROM subscriber_districts WHERE subscriber_id = ?1", params![subscriber])?;
            {
                let mut ins = tx.prepare("INSERT INTO subscriber_districts (subscriber_id, district_id) VALUES (?1, ?2)")?;
                for d in districts {
                    ins.execute(params![subscriber, d])?;
                }
            }
            crate::write_preferences(&tx, subscriber, prefs)?;
            let sealed: Vec<u8> = tx.query_row("SELECT addr_sealed FROM subscribers WHERE id = ?1", params![subscriber], |r| r.get(0))?;
            let addr = self.sealer.open_address(&sealed)?;
            let mail = render(&addr);
            let outbox = self.insert_outbox(&tx, &mail, Some(subscriber), 10, now, mail_expires_at)?;
            let list: Vec<String> = districts.iter().map(u32::to_string).collect();
            audit(&tx, now, "web", "districts-changed", &format!("subscriber={subscriber} districts={}", list.join(",")))?;
            tx.commit()?;
            Ok(ManageOutcome::Done { subscriber, outbox: Some(outbox) })
        })
    }

    /// Deletes the registration a manage or unsubscribe token names, purging
    /// its address everywhere (see the module comment). `render` may build a
    /// last confirmation mail; it is queued unattached to any subscriber
    /// (`subscriber_id` 0), so nothing links it to the deleted row.
    pub fn delete_registration(
        &self,
        claims: &Claims,
        now: UnixTime,
        mail_expires_at: UnixTime,
        mut render: impl FnMut(&EmailAddress) -> Option<OutgoingMail>,
    ) -> Result<ManageOutcome> {
        self.serially(|| {
            let tx = self.begin()?;
            let Some((subscriber, _grant)) = grant(&tx, claims, now)? else { return Ok(ManageOutcome::TokenUnusable) };
            let (sealed, index): (Vec<u8>, Vec<u8>) =
                tx.query_row("SELECT addr_sealed, addr_index FROM subscribers WHERE id = ?1", params![subscriber], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            let addr = self.sealer.open_address(&sealed)?;
            purge(&tx, subscriber, &index)?;
            // The mailbox's rate-limit window goes with it (its key is a hash of
            // the address, so it is personal data too).
            tx.execute("DELETE FROM rate_limits WHERE scope = ?1 AND key = ?2", params![MAILBOX_SCOPE, &self.mailbox_index(&addr)[..]])?;
            let outbox = match render(&addr) {
                Some(mail) => Some(self.insert_outbox(&tx, &mail, None, 10, now, mail_expires_at)?),
                None => None,
            };
            let actor = if claims.purpose == Purpose::Unsubscribe { "unsubscribe" } else { "web" };
            audit(&tx, now, actor, "registration-deleted", &format!("subscriber={subscriber} addr={}", addr.masked()))?;
            tx.commit()?;
            Ok(ManageOutcome::Done { subscriber, outbox })
        })
    }

}

/// The outbox rows of subscriber `?1`, in two parts, each found through an
/// index: the copies of alerts through `outbox_by_alert (alert_id,
/// subscriber_id)`, one probe per alert, and the other rows through
/// `outbox_by_subscriber`, which holds those alone (a copy of an alert
/// costs one index entry less when it is published).
pub(crate) const OUTBOX_OF_SUBSCRIBER: [&str; 2] = [
    "alert_id <> 0 AND alert_id IN (SELECT id FROM alerts) AND subscriber_id = ?1",
    "alert_id = 0 AND subscriber_id = ?1",
];

/// Removes every trace of the address of `subscriber` (`index` is its blind
/// index). Statistics without personal data stay.
pub(crate) fn purge(tx: &Conn<'_>, subscriber: SubscriberId, index: &[u8]) -> Result<()> {
    tx.execute("DELETE FROM tokens WHERE subject_id = ?1 AND purpose IN ('register', 'manage', 'unsubscribe')", params![subscriber])?;
    crate::queue::forget_subscriber(tx, subscriber)?;
    for rows in OUTBOX_OF_SUBSCRIBER {
        tx.execute(&format!("DELETE FROM outbox WHERE {rows} AND state IN ('queued', 'sending')"), params![subscriber])?;
        tx.execute(&format!("UPDATE outbox SET recipient_sealed = ?2, content_sealed = ?2 WHERE {rows}"), params![subscriber, Vec::<u8>::new()])?;
    }
    // A window of an older version, keyed by the address as typed.
    tx.execute("DELETE FROM rate_limits WHERE scope = 'register-addr' AND key = ?1", params![index])?;
    tx.execute("DELETE FROM subscriber_districts WHERE subscriber_id = ?1", params![subscriber])?;
    tx.execute("DELETE FROM subscribers WHERE id = ?1", params![subscriber])?;
    Ok(())
}

/// Which registration a manage/unsubscribe token opens, if any. Only
/// confirmed registrations (active or suspended) can be managed.
pub(crate) fn grant(conn: &Conn<'_>, claims: &Claims, now: UnixTime) -> Result<Option<(SubscriberId, Grant)>> {
    let Some(subscriber) = SubscriberId::from_subject(claims.subject) else { return Ok(None) };
    let row: Option<(SubscriberStatus, Vec<u8>)> = conn
        .query_row("SELECT status, link_nonce FROM subscribers WHERE id = ?1", params![subscriber], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((status, link_nonce)) = row else { return Ok(None) };
    if status == SubscriberStatus::Pending {
        return Ok(None);
    }
    // A never-set link nonce is all zeros and must not match a forged token
    // with a zero nonce; the MAC makes that impossible anyway, but say so.
    if link_nonce != [0u8; 8] && link_nonce == claims.nonce {
        return Ok(Some((subscriber, Grant::Footer)));
    }
    let one_time: Option<SubscriberId> = conn
        .query_row(
            "SELECT subject_id FROM tokens
             WHERE nonce = ?1 AND purpose = ?2 AND subject_id = ?3 AND used_at = 0 AND expires_at > ?4",
            params![&claims.nonce[..], claims.purpose.as_str(), subscriber, now],
            |r| r.get(0),
        )
        .optional()?;
    Ok(one_time.map(|s| (s, Grant::OneTime)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mamoru_core::Config;
    use mamoru_core::mail;
    use mamoru_core::token::TokenKey;

    use super::*;
    use crate::bounces::{BounceClass, BounceEffect, SoftBouncePolicy};

    const P3: SoftBouncePolicy = SoftBouncePolicy { threshold: 3, window_secs: 1000 };
    use crate::{Completion, Keys, keys};

    const LIMITS: RegistrationLimits = RegistrationLimits {
        cooldown_secs: 0,
        daily_cap: 100,
        global_hourly_cap: 1000,
        web_global_hourly_cap: 1000,
        web_client_hourly_cap: 1000,
    };
    const T0: UnixTime = 1_800_000_000;

    struct F {
        _dir: tempfile::TempDir,
        store: Store,
        keys: Keys,
        cfg: Config,
    }

    fn f() -> F {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys::load_or_create(dir.path()).unwrap();
        let store = Store::open_for_test(dir.path(), &keys, Duration::from_millis(200)).unwrap();
        F { _dir: dir, store, keys, cfg: Config::default() }
    }

    impl F {
        fn tk(&self) -> TokenKey {
            self.keys.token_key()
        }

        /// An empty mail from `a`: the kind of link mailed, and its claims.
        fn ask(&self, a: &str, now: UnixTime) -> (LinkMail, Claims) {
            let a = EmailAddress::parse(a).unwrap();
            let mut claims = None;
            let r = self
                .store
                .request_link(&a, &Channel::Mail, now, &LIMITS, now + 3600, None, |kind, sid, nonce| {
                    let c = Claims { purpose: kind.purpose(), subject: sid.subject(), nonce, expires_at: now + 3600 };
                    claims = Some(c.clone());
                    let t = self.tk().sign(&c);
                    mail::manage_link(&self.cfg, &a, &t, now, format!("{sid}-{}@x", u64::from_be_bytes(nonce)))
                })
                .unwrap();
            let LinkRequest::Queued { kind, .. } = r else { panic!("limited") };
            (kind, claims.unwrap())
        }

        fn register(&self, a: &str, districts: &[u32]) -> (SubscriberId, Claims) {
            let (kind, c) = self.ask(a, T0);
            assert_eq!(kind, LinkMail::Register);
            let done = self
                .store
                .complete_registration(&c, districts, &crate::Preferences::default(), T0, T0 + 60, |to, _| {
                    mail::registration_completed(&self.cfg, to, &[], "", T0, format!("done-{}@x", c.subject))
                })
                .unwrap();
            let Completion::Completed { subscriber, .. } = done else { panic!("not completed") };
            let nonce = self.store.link_nonce(subscriber).unwrap().unwrap();
            let footer = Claims { purpose: Purpose::Manage, subject: subscriber.subject(), nonce, expires_at: T0 + 1000 };
            (subscriber, footer)
        }

        fn change(&self, c: &Claims, d: &[u32], now: UnixTime) -> ManageOutcome {
            self.change_with(c, d, &crate::Preferences::default(), now)
        }

        fn change_with(&self, c: &Claims, d: &[u32], prefs: &crate::Preferences, now: UnixTime) -> ManageOutcome {
            self.store
                .change_districts(c, d, prefs, now, now + 60, |to| mail::districts_changed(&self.cfg, to, &[], now, format!("ch-{now}@x")))
                .unwrap()
        }

        fn count(&self, sql: &str) -> i64 {
            self.store.conn().unwrap().query_row(sql, params![], |r| r.get(0)).unwrap()
        }
    }

    #[test]
    fn a_registered_address_gets_a_manage_link_and_a_pending_one_a_registration() {
        let f = f();
        assert_eq!(f.ask("a@docomo.ne.jp", T0).0, LinkMail::Register);
        assert_eq!(f.ask("a@docomo.ne.jp", T0 + 1).0, LinkMail::Register, "still pending");
        let (id, _) = f.register("b@docomo.ne.jp", &[1]);
        let (kind, c) = f.ask("b@docomo.ne.jp", T0 + 2);
        assert_eq!((kind, c.purpose, c.subject), (LinkMail::Manage, Purpose::Manage, id.subject()));
        assert_eq!(f.count("SELECT COUNT(*) FROM subscribers"), 2, "no second registration");
        // Each link mail is counted with its commit, by channel and kind.
        let counted: Vec<(String, u64)> =
            f.store.counters().expect("counters").into_iter().filter(|c| c.name == crate::counters::REGISTRATIONS_REQUESTED).map(|c| (c.labels, c.value)).collect();
        assert_eq!(counted, [("mail,manage".to_string(), 1), ("mail,register".to_string(), 3)]);
    }

    #[test]
    fn preferences_are_saved_with_the_districts_and_only_by_a_usable_link() {
        let f = f();
        let (id, footer) = f.register("p@docomo.ne.jp", &[1]);
        let none = crate::Preferences::default();
        assert_eq!(f.store.manage_view(&footer, T0 + 1).unwrap().unwrap().prefs, none, "nothing chosen: everything, any time");
        let prefs = crate::Preferences { kinds_off: vec!["不審電話情報".into()], quiet: Some((22 * 60, 7 * 60)) };
        let (_, once) = f.ask("p@docomo.ne.jp", T0 + 2);
        assert!(matches!(f.change_with(&once, &[2], &prefs, T0 + 3), ManageOutcome::Done { .. }));
        let view = f.store.manage_view(&footer, T0 + 4).unwrap().unwrap();
        assert_eq!((view.districts, view.prefs), (vec![2], prefs.clone()));
        // The used link changes neither districts nor preferences.
        assert_eq!(f.change_with(&once, &[3], &none, T0 + 5), ManageOutcome::TokenUnusable);
        assert_eq!(f.store.manage_view(&footer, T0 + 6).unwrap().unwrap().prefs, prefs);
        // A window of no length is none.
        let odd = crate::Preferences { kinds_off: vec![], quiet: Some((300, 300)) };
        assert!(matches!(f.change_with(&footer, &[2], &odd, T0 + 7), ManageOutcome::Done { .. }));
        assert_eq!(f.count(&format!("SELECT quiet_start FROM subscribers WHERE id = {id}")), -1);
        assert_eq!(f.store.manage_view(&footer, T0 + 8).unwrap().unwrap().prefs, none);
    }

    #[test]
    fn one_time_links_are_single_use_and_footer_links_last() {
        let f = f();
        let (id, footer) = f.register("b@ezweb.ne.jp", &[1]);
        let (_, once) = f.ask("b@ezweb.ne.jp", T0 + 5);
        let view = f.store.manage_view(&once, T0 + 6).unwrap().unwrap();
        assert_eq!((view.subscriber, view.districts.clone(), view.grant), (id, vec![1], Grant::OneTime));
        assert!(matches!(f.change(&once, &[2, 3], T0 + 7), ManageOutcome::Done { .. }));
        assert_eq!(f.change(&once, &[4], T0 + 8), ManageOutcome::TokenUnusable, "used");
        assert_eq!(f.store.manage_view(&once, T0 + 8).unwrap(), None);
        // The footer link works again and again.
        assert!(matches!(f.change(&footer, &[4], T0 + 9), ManageOutcome::Done { .. }));
        assert!(matches!(f.change(&footer, &[5], T0 + 10), ManageOutcome::Done { .. }));
        assert_eq!(f.store.manage_view(&footer, T0 + 11).unwrap().unwrap().districts, vec![5]);
        // An expired one-time token is refused even before it was used.
        let (_, late) = f.ask("b@ezweb.ne.jp", T0 + 20);
        assert_eq!(f.store.manage_view(&late, T0 + 20 + 3600).unwrap(), None);
    }

    #[test]
    fn one_subscriber_cannot_reach_another() {
        let f = f();
        let (a, fa) = f.register("a@docomo.ne.jp", &[1]);
        let (b, fb) = f.register("b@docomo.ne.jp", &[2]);
        // A's nonce with B's id (the MAC would stop this at the web; the
        // store must not rely on that).
        let forged = Claims { subject: b.subject(), ..fa.clone() };
        assert_eq!(f.store.manage_view(&forged, T0).unwrap(), None);
        assert_eq!(f.change(&forged, &[9], T0), ManageOutcome::TokenUnusable);
        assert_eq!(f.store.delete_registration(&forged, T0, T0 + 60, |_| None).unwrap(), ManageOutcome::TokenUnusable);
        assert_eq!(f.store.manage_view(&fb, T0).unwrap().unwrap().districts, vec![2]);
        assert_eq!(f.store.manage_view(&fa, T0).unwrap().unwrap().subscriber, a);
    }

    #[test]
    fn deletion_purges_the_address_everywhere_and_revokes_links() {
        let f = f();
        let (id, footer) = f.register("gone@docomo.ne.jp", &[1, 2]);
        let (_, once) = f.ask("gone@docomo.ne.jp", T0 + 1);
        f.store.mark_sent(OutboxId::new(1), T0 + 2).unwrap();
        let unsub = Claims { purpose: Purpose::Unsubscribe, ..footer.clone() };
        let r = f.store.delete_registration(&unsub, T0 + 3, T0 + 60, |_| None).unwrap();
        assert_eq!(r, ManageOutcome::Done { subscriber: id, outbox: None });
        assert_eq!(f.count("SELECT COUNT(*) FROM subscribers"), 0);
        assert_eq!(f.count("SELECT COUNT(*) FROM subscriber_districts"), 0);
        assert_eq!(f.count("SELECT COUNT(*) FROM tokens"), 0);
        assert_eq!(f.count("SELECT COUNT(*) FROM rate_limits WHERE scope IN ('register-addr', 'register-mailbox')"), 0);
        assert_eq!(f.count("SELECT COUNT(*) FROM outbox WHERE state IN ('queued', 'sending')"), 0);
        assert_eq!(f.count("SELECT COUNT(*) FROM outbox WHERE length(recipient_sealed) + length(content_sealed) > 0"), 0);
        assert_eq!(f.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'"), 1, "statistics stay");
        for c in [&footer, &once, &unsub] {
            assert_eq!(f.store.manage_view(c, T0 + 4).unwrap(), None);
        }
        // Registering again gives a new row and a new nonce: old links stay dead.
        let (id2, footer2) = f.register("gone@docomo.ne.jp", &[3]);
        assert_ne!(footer2.nonce, footer.nonce);
        let old = Claims { subject: id2.subject(), ..footer };
        assert_eq!(f.store.manage_view(&old, T0 + 5).unwrap(), None);
        // The goodbye mail of the manage page is queued unattached.
        let r = f
            .store
            .delete_registration(&footer2, T0 + 6, T0 + 60, |to| {
                Some(mail::registration_deleted(&f.cfg, to, T0 + 6, "bye@x".into()))
            })
            .unwrap();
        assert!(matches!(r, ManageOutcome::Done { outbox: Some(_), .. }));
        assert_eq!(f.count("SELECT COUNT(*) FROM outbox WHERE state = 'queued' AND subscriber_id = 0"), 1);
    }

    #[test]
    fn bounces_suspend_score_and_spare_the_subscriber_for_spam_blocks() {
        let f = f();
        let (a, footer) = f.register("dead@docomo.ne.jp", &[1]);
        let (b, _) = f.register("full@ezweb.ne.jp", &[1]);
        let outbox_of = |id: SubscriberId| -> Vec<OutboxId> {
            let conn = f.store.conn().unwrap();
            let mut st = conn.prepare("SELECT id FROM outbox WHERE subscriber_id = ?1 ORDER BY id").unwrap();
            st.query_map(params![id], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
        };
        let oa = outbox_of(a)[0];
        // A queued mail for A is cancelled by the suspension.
        f.ask("dead@docomo.ne.jp", T0 + 1);
        let e = f.store.record_bounce(oa, BounceClass::UnknownUser, "5.1.1", T0 + 2, P3).unwrap();
        assert_eq!(e, BounceEffect::Suspended { subscriber: a, reason: "unknown-user" });
        assert_eq!(f.count("SELECT COUNT(*) FROM outbox WHERE subscriber_id = 1 AND state = 'queued'"), 0);
        assert_eq!(f.store.record_bounce(oa, BounceClass::UnknownUser, "5.1.1", T0 + 3, P3).unwrap(), BounceEffect::Duplicate);
        assert_eq!(f.store.suspended_counts().unwrap(), vec![("unknown-user".to_string(), 1)]);
        assert!(f.store.manage_view(&footer, T0 + 4).unwrap().unwrap().suspended);

        // B: spam blocks never count; soft bounces do, up to the threshold.
        for i in 0..4 {
            f.ask("full@ezweb.ne.jp", T0 + 10 + i);
        }
        let ob = outbox_of(b);
        assert!(matches!(f.store.record_bounce(ob[0], BounceClass::BlockedAsSpam, "5.7.1", T0, P3).unwrap(), BounceEffect::CarrierBlock { .. }));
        assert_eq!(f.store.record_bounce(ob[1], BounceClass::MailboxFull, "5.2.2", T0, P3).unwrap(), BounceEffect::Scored { subscriber: b, score: 1 });
        assert_eq!(f.store.record_bounce(ob[2], BounceClass::Temporary, "4.4.1", T0, P3).unwrap(), BounceEffect::Scored { subscriber: b, score: 2 });
        assert_eq!(
            f.store.record_bounce(ob[3], BounceClass::Other, "5.3.4", T0, P3).unwrap(),
            BounceEffect::Suspended { subscriber: b, reason: "soft-bounces" }
        );
        assert_eq!(f.store.record_bounce(OutboxId::new(999), BounceClass::UnknownUser, "", T0, P3).unwrap(), BounceEffect::Unknown);
        // Soft bounces outside the window do not add up.
        let (c, _) = f.register("rarely.full@ezweb.ne.jp", &[1]);
        for i in 0..3 {
            f.ask("rarely.full@ezweb.ne.jp", T0 + 40 + i);
        }
        let oc = outbox_of(c);
        for (n, row) in oc.iter().enumerate() {
            let at = T0 + 2000 * n as i64;
            let e = f.store.record_bounce(*row, BounceClass::MailboxFull, "5.2.2", at, P3).unwrap();
            assert_eq!(e, BounceEffect::Scored { subscriber: c, score: 1 }, "bounce {n}");
        }
        let stats = f.store.bounce_stats(0).unwrap();
        assert!(stats.iter().any(|s| s.domain == "ezweb.ne.jp" && s.class == "blocked-as-spam" && s.count == 1), "{stats:?}");

        // A one-time manage link proves the mailbox works again: reactivated.
        let (_, once) = f.ask("full@ezweb.ne.jp", T0 + 30);
        assert!(matches!(f.change(&once, &[1], T0 + 31), ManageOutcome::Done { .. }));
        assert_eq!(f.count("SELECT COUNT(*) FROM subscribers WHERE id = 2 AND status = 'active' AND bounce_score = 0"), 1);
    }
}
