//! 受信テスト: a parent asks for a test mail to an address (the top page)
//! or to their registered address (the manage page); the mail's
//! 届きました link marks the test arrived; the page where they asked
//! watches it through a second token.
//!
//! A test row holds no address and no subscriber: only the recipient's
//! domain (which carrier's help to show), its two nonces and its times. The
//! mail is an ordinary outbox row, sealed and unattached (`subscriber_id`
//! 0). Rows go at their expiry ([`Store::purge_reception`]).
//!
//! Limits, as for registration mail and in the same atomic upserts: the
//! mailbox's cooldown and daily cap (scope `reception-mailbox`, a keyed
//! hash of the mailbox under its own context, apart from the registration
//! limits so a parent whose 登録受付 did not come can test at once), the
//! client's hourly budget for the top page (`reception-web-client`) and one
//! global hourly budget (`reception-global`).

use mamoru_core::mail::OutgoingMail;
use mamoru_core::seal::BlindIndex;
use mamoru_core::token::{Claims, Nonce};
use mamoru_core::{EmailAddress, OutboxId, UnixTime};
use crate::db::OptionalExt;
use crate::params;

use crate::{Limited, Result, Store, audit, take_hourly, take_mailbox_slot};

const MAILBOX_SCOPE: &str = "reception-mailbox";

/// The limits of 受信テスト mails.
#[derive(Debug, Clone, Copy)]
pub struct ReceptionLimits {
    pub cooldown_secs: i64,
    pub daily_cap: i64,
    pub global_hourly_cap: i64,
    /// Per clock hour and client address (the top page's form).
    pub client_hourly_cap: i64,
}

impl From<&mamoru_core::config::LimitsConfig> for ReceptionLimits {
    fn from(c: &mamoru_core::config::LimitsConfig) -> Self {
        Self {
            cooldown_secs: c.reception_cooldown_secs,
            daily_cap: c.reception_daily_cap,
            global_hourly_cap: c.reception_global_hourly_cap,
            client_hourly_cap: c.register_web_client_hourly_cap,
        }
    }
}

pub use mamoru_core::TestId;

/// The two nonces of a new test: the 届きました link's (mailed) and the
/// waiting page's (shown to whoever asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestNonces {
    pub arrived: Nonce,
    pub waiting: Nonce,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestRequest {
    /// The test mail is queued.
    Queued { test: TestId, waiting: Nonce, outbox: OutboxId },
    /// A limit refused it; nothing was recorded.
    Limited(Limited),
}

/// What the waiting page and the 届きました page show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestView {
    pub test: TestId,
    pub domain: String,
    pub created_at: UnixTime,
    /// 0 until the 届きました link was posted.
    pub arrived_at: UnixTime,
}

impl Store {
    /// Queues a test mail to `addr`: takes a slot of each limit, records
    /// the test and queues the mail `render` builds from the test id and
    /// its nonces, in one transaction. `client` is the asking client's
    /// keyed hash (the top page), `None` for a registered subscriber's own
    /// address (the manage page, whose link came through that mailbox).
    pub fn request_reception_test(
        &self,
        addr: &EmailAddress,
        client: Option<&BlindIndex>,
        now: UnixTime,
        limits: &ReceptionLimits,
        expires_at: UnixTime,
        mut render: impl FnMut(TestId, TestNonces) -> OutgoingMail,
    ) -> Result<TestRequest> {
        let mailbox = self.sealer.keyed_index(MAILBOX_SCOPE, mamoru_core::mailbox::mailbox_key(addr).as_bytes());
        self.serially(|| {
            let tx = self.begin()?;
            let hour = now.div_euclid(3600);
            if let Some(client) = client {
                if !take_hourly(&tx, "reception-web-client", client, hour, now, limits.client_hourly_cap)? {
                    return Ok(TestRequest::Limited(Limited::ClientHourlyCap));
                }
            }
            if let Some(limited) = take_mailbox_slot(&tx, MAILBOX_SCOPE, &mailbox, now, limits.cooldown_secs, limits.daily_cap)? {
                return Ok(TestRequest::Limited(limited));
            }
            if !take_hourly(&tx, "reception-global", &[], hour, now, limits.global_hourly_cap)? {
                return Ok(TestRequest::Limited(Limited::GlobalHourlyCap));
            }
            let mut nonces = TestNonces { arrived: [0; 8], waiting: [0; 8] };
            self.sealer.random(&mut nonces.arrived)?;
            self.sealer.random(&mut nonces.waiting)?;
            let test: TestId = tx.query_row(
                "INSERT INTO reception_tests (arrived_nonce, waiting_nonce, domain, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
                params![&nonces.arrived[..], &nonces.waiting[..], addr.domain().to_ascii_lowercase(), now, expires_at],
                |r| r.get(0),
            )?;
            let mail = render(test, nonces);
            let outbox = self.insert_outbox(&tx, &mail, None, 10, now, expires_at)?;
            audit(&tx, now, "web", "reception-test-requested", &format!("test={test} addr={}", addr.masked()))?;
            tx.commit()?;
            Ok(TestRequest::Queued { test, waiting: nonces.waiting, outbox })
        })
    }

    /// The test a live token names, if its nonce is the one of `arrived`
    /// (the mailed link) or of the waiting page. Changes nothing.
    pub fn reception_test(&self, claims: &Claims, arrived: bool, now: UnixTime) -> Result<Option<TestView>> {
        let Some(test) = TestId::from_subject(claims.subject) else { return Ok(None) };
        let column = if arrived { "arrived_nonce" } else { "waiting_nonce" };
        let conn = self.conn()?;
        let view = conn
            .query_row(
                &format!(
                    "SELECT id, domain, created_at, arrived_at FROM reception_tests
                     WHERE id = ?1 AND {column} = ?2 AND expires_at > ?3"
                ),
                params![test, &claims.nonce[..], now],
                |r| Ok(TestView { test: r.get(0)?, domain: r.get(1)?, created_at: r.get(2)?, arrived_at: r.get(3)? }),
            )
            .optional()?;
        Ok(view)
    }

    /// The 届きました link was posted: marks the test arrived (the first
    /// time; later posts change nothing) and returns it.
    pub fn mark_test_arrived(&self, claims: &Claims, now: UnixTime) -> Result<Option<TestView>> {
        let Some(test) = TestId::from_subject(claims.subject) else { return Ok(None) };
        let conn = self.conn()?;
        conn.execute(
            "UPDATE reception_tests SET arrived_at = ?1
             WHERE id = ?2 AND arrived_nonce = ?3 AND expires_at > ?1 AND arrived_at = 0",
            params![now, test, &claims.nonce[..]],
        )?;
        drop(conn);
        self.reception_test(claims, true, now)
    }

    /// The registered address a live manage link (one-time or footer)
    /// opens, for a test sent to the subscriber's own address. Changes
    /// nothing (a one-time link stays usable for its change).
    pub fn managed_address(&self, claims: &Claims, now: UnixTime) -> Result<Option<EmailAddress>> {
        let conn = self.conn()?;
        let Some((subscriber, _)) = crate::manage::grant(&conn, claims, now)? else { return Ok(None) };
        let sealed: Vec<u8> = conn.query_row("SELECT addr_sealed FROM subscribers WHERE id = ?1", params![subscriber], |r| r.get(0))?;
        Ok(Some(self.sealer.open_address(&sealed)?))
    }

    /// Deletes expired tests and the reception limits' windows that ran
    /// out (keyed hashes of addresses, kept no longer than they count).
    pub fn purge_reception(&self, now: UnixTime) -> Result<usize> {
        let tx = self.begin()?;
        let n = tx.execute("DELETE FROM reception_tests WHERE expires_at <= ?1", params![now])?;
        tx.execute(
            "DELETE FROM rate_limits WHERE scope IN ('reception-mailbox', 'reception-web-client', 'reception-global')
             AND last_at < ?1",
            params![now - 2 * 86_400],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// Tests of the last `since` seconds per recipient domain: (domain,
    /// asked, arrived), most asked first.
    pub fn reception_stats(&self, since: UnixTime) -> Result<Vec<(String, i64, i64)>> {
        let conn = self.conn()?;
        let mut st = conn.prepare(
            "SELECT domain, COUNT(*), CAST(SUM(CASE WHEN arrived_at > 0 THEN 1 ELSE 0 END) AS BIGINT) FROM reception_tests WHERE created_at >= ?1
             GROUP BY domain ORDER BY COUNT(*) DESC, domain",
        )?;
        let rows = st.query_map(params![since], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_>>()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mamoru_core::Config;
    use mamoru_core::mail;
    use mamoru_core::token::Purpose;

    use super::*;
    use crate::keys;

    const T0: UnixTime = 1_800_000_000;
    const LIMITS: ReceptionLimits = ReceptionLimits { cooldown_secs: 120, daily_cap: 3, global_hourly_cap: 100, client_hourly_cap: 10 };

    struct F {
        _dir: tempfile::TempDir,
        store: Store,
        cfg: Config,
    }

    fn f() -> F {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys::load_or_create(dir.path()).unwrap();
        let store = Store::open_for_test(dir.path(), &keys, Duration::from_millis(200)).unwrap();
        F { _dir: dir, store, cfg: Config::default() }
    }

    impl F {
        fn ask(&self, a: &str, now: UnixTime) -> std::result::Result<(Claims, Claims), Limited> {
            let a = EmailAddress::parse(a).unwrap();
            let mut got = None;
            let r = self
                .store
                .request_reception_test(&a, Some(&[1; 32]), now, &LIMITS, now + 3600, |test, n| {
                    let c = |purpose, nonce| Claims { purpose, subject: test.subject(), nonce, expires_at: now + 3600 };
                    got = Some((c(Purpose::Arrived, n.arrived), c(Purpose::Waiting, n.waiting)));
                    mail::reception_test(&self.cfg, &a, "T", now, format!("t{test}@x"))
                })
                .unwrap();
            match r {
                TestRequest::Queued { .. } => Ok(got.unwrap()),
                TestRequest::Limited(l) => Err(l),
            }
        }

        fn count(&self, sql: &str) -> i64 {
            self.store.conn().unwrap().query_row(sql, params![], |r| r.get(0)).unwrap()
        }
    }

    #[test]
    fn a_test_arrives_once_and_is_watched_by_its_own_token() {
        let f = f();
        let (arrived, waiting) = f.ask("Parent@DoCoMo.ne.jp", T0).unwrap();
        let v = f.store.reception_test(&waiting, false, T0 + 1).unwrap().unwrap();
        assert_eq!((v.domain.as_str(), v.arrived_at), ("docomo.ne.jp", 0));
        // The waiting page's token cannot confirm, the mailed one can.
        assert_eq!(f.store.mark_test_arrived(&Claims { nonce: waiting.nonce, ..arrived.clone() }, T0 + 2).unwrap(), None);
        assert_eq!(f.store.reception_test(&waiting, true, T0 + 2).unwrap(), None);
        assert_eq!(f.store.mark_test_arrived(&arrived, T0 + 3).unwrap().unwrap().arrived_at, T0 + 3);
        assert_eq!(f.store.mark_test_arrived(&arrived, T0 + 9).unwrap().unwrap().arrived_at, T0 + 3, "first time only");
        assert_eq!(f.store.reception_test(&waiting, false, T0 + 10).unwrap().unwrap().arrived_at, T0 + 3);
        // Nothing of the address is kept with the test; the mail is sealed and unattached.
        assert_eq!(f.count("SELECT COUNT(*) FROM outbox WHERE subscriber_id = 0 AND kind = 'reception_test'"), 1);
        assert_eq!(f.store.reception_stats(T0).unwrap(), vec![("docomo.ne.jp".to_string(), 1, 1)]);
        // Expired: gone, and purged.
        assert_eq!(f.store.reception_test(&waiting, false, T0 + 3600).unwrap(), None);
        assert_eq!(f.store.purge_reception(T0 + 3600).unwrap(), 1);
        assert_eq!(f.count("SELECT COUNT(*) FROM reception_tests"), 0);
    }

    #[test]
    fn tests_are_limited_per_mailbox_per_client_and_in_all() {
        let f = f();
        assert!(f.ask("a.b@gmail.com", T0).is_ok());
        // Another spelling of the same mailbox within the cooldown.
        assert_eq!(f.ask("ab+x@gmail.com", T0 + 10).unwrap_err(), Limited::Cooldown);
        assert!(f.ask("ab@gmail.com", T0 + 121).is_ok());
        assert!(f.ask("ab@gmail.com", T0 + 242).is_ok());
        assert_eq!(f.ask("ab@gmail.com", T0 + 400).unwrap_err(), Limited::DailyCap);
        // A refused request recorded nothing.
        assert_eq!(f.count("SELECT COUNT(*) FROM reception_tests"), 3);
        // The client's hourly budget (10 in all, 4 taken: the refused ones
        // rolled back theirs).
        let hour = (T0 / 3600 + 1) * 3600;
        for i in 0..10 {
            assert!(f.ask(&format!("p{i}@ezweb.ne.jp"), hour + i).is_ok(), "{i}");
        }
        assert_eq!(f.ask("p10@ezweb.ne.jp", hour + 20).unwrap_err(), Limited::ClientHourlyCap);
        // Registration limits are apart: a test does not spend them.
        assert_eq!(f.count("SELECT COUNT(*) FROM rate_limits WHERE scope LIKE 'register-%'"), 0);
        // The windows go once they ran out.
        f.store.purge_reception(hour + 3 * 86_400).unwrap();
        assert_eq!(f.count("SELECT COUNT(*) FROM rate_limits"), 0);
    }
}
