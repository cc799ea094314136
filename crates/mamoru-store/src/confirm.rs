//! 確認しました: read counts that track nobody.
//!
//! An alert that asks for confirmation gives every copy a link whose token
//! carries the counting key (alert, district, carrier) and the copy's nonce
//! (`mamoru_core::links::copy_nonce`, a keyed hash of alert, subscriber and
//! footer nonce: the same for every send of one copy). A POST of the link
//! counts the copy once:
//!
//! - `confirm_seen` holds (alert, copy nonce) of each copy counted, so a
//!   second click, the forwarded mail (same link) or a second device count
//!   nothing; a GET (a mail scanner) never counts.
//! - `confirm_counts` holds the numbers per alert, district and carrier.
//!
//! Nothing here names a subscriber. A copy nonce can be matched to one only
//! by recomputing every subscriber's nonce with the token key; so the
//! seen-set is deleted when the alert's confirmation window ends
//! (`[alerts] confirm_ttl_secs`, the tokens' expiry), and from then on the
//! database holds only counts ([`Store::purge_confirmations`]).

use mamoru_core::UnixTime;
use mamoru_core::alert::{CARRIERS, ConfirmKey, carrier_of};
use mamoru_core::token::Nonce;
use crate::db::OptionalExt;
use crate::params;

use crate::alerts::{ALERT_ROWS, AlertId};
use crate::{Result, Store, SubscriberId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// This copy was counted now.
    Counted,
    /// This copy had been counted before; nothing changed.
    AlreadyCounted,
    /// The alert does not exist, does not ask, or its window is over.
    Closed,
}

/// One row of an alert's confirmation table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmRow {
    /// 0: copies of subscribers who since left every district of the alert.
    pub district: u32,
    pub carrier: &'static str,
    /// Copies the next hop accepted.
    pub delivered: i64,
    pub confirmed: i64,
}

impl Store {
    /// The district a copy's 確認しました link counts under, as the
    /// publication fixed it (0 when the row is gone).
    pub fn confirm_district(&self, alert: AlertId, subscriber: SubscriberId) -> Result<u32> {
        let conn = self.conn()?;
        let d: Option<u32> = conn
            .query_row(
                &format!("SELECT confirm_district FROM outbox WHERE {ALERT_ROWS} AND subscriber_id = ?2"),
                params![alert, subscriber],
                |r| r.get(0),
            )
            .optional()?;
        Ok(d.unwrap_or(0))
    }

    /// Whether a live confirmation link names an alert that asks for it.
    /// Changes nothing (the GET of the link).
    pub fn confirm_open(&self, key: &ConfirmKey) -> Result<Option<String>> {
        let conn = self.conn()?;
        conn
            .query_row(
                "SELECT title FROM alerts WHERE id = ?1 AND state = 'published' AND ask_confirm = 1",
                params![key.alert],
                |r| r.get(0),
            )
            .optional()
    }

    /// Counts one copy's confirmation, once. `expires_at` is the end of
    /// the alert's window (the token's expiry), when the seen-set row goes.
    pub fn confirm_copy(&self, key: &ConfirmKey, copy: &Nonce, expires_at: UnixTime, now: UnixTime) -> Result<Confirmed> {
        self.serially(|| {
            let tx = self.begin()?;
            tx.execute("DELETE FROM confirm_seen WHERE expires_at <= ?1", params![now])?;
            let open: Option<i64> = tx
                .query_row("SELECT 1 FROM alerts WHERE id = ?1 AND state = 'published' AND ask_confirm = 1", params![key.alert], |r| r.get(0))
                .optional()?;
            if open.is_none() || expires_at <= now {
                return Ok(Confirmed::Closed);
            }
            let fresh = tx.execute(
                "INSERT INTO confirm_seen (alert_id, copy, expires_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![key.alert, &copy[..], expires_at],
            )?;
            if fresh == 0 {
                return Ok(Confirmed::AlreadyCounted);
            }
            tx.execute(
                "INSERT INTO confirm_counts (alert_id, district_id, carrier, confirmed) VALUES (?1, ?2, ?3, 1)
                 ON CONFLICT (alert_id, district_id, carrier) DO UPDATE SET confirmed = confirm_counts.confirmed + 1",
                params![key.alert, key.district, key.carrier_name()],
            )?;
            tx.commit()?;
            Ok(Confirmed::Counted)
        })
    }

    /// Deletes the seen-set rows of every confirmation window that ended:
    /// afterwards only the counts remain. Returns how many rows went.
    pub fn purge_confirmations(&self, now: UnixTime) -> Result<usize> {
        self.conn()?.execute("DELETE FROM confirm_seen WHERE expires_at <= ?1", params![now])
    }

    /// Confirmed / delivered per district and carrier for one alert,
    /// districts in id order, carriers in the order of `CARRIERS`.
    pub fn confirm_table(&self, alert: AlertId) -> Result<Vec<ConfirmRow>> {
        let conn = self.conn()?;
        let mut rows: Vec<ConfirmRow> = Vec::new();
        let mut add = |district: u32, carrier: &'static str, delivered: i64, confirmed: i64| {
            match rows.iter_mut().find(|r| r.district == district && r.carrier == carrier) {
                Some(r) => {
                    r.delivered += delivered;
                    r.confirmed += confirmed;
                }
                None => rows.push(ConfirmRow { district, carrier, delivered, confirmed }),
            }
        };
        let mut st = conn.prepare(&format!(
            "SELECT confirm_district, domain, COUNT(*) FROM outbox WHERE {ALERT_ROWS} AND state = 'sent'
             GROUP BY confirm_district, domain"
        ))?;
        let sent = st.query_map(params![alert], |r| Ok((r.get::<u32>(0)?, r.get::<String>(1)?, r.get::<i64>(2)?)))?;
        for row in sent {
            let (d, domain, n) = row?;
            add(d, carrier_of(&domain), n, 0);
        }
        let mut st = conn.prepare("SELECT district_id, carrier, confirmed FROM confirm_counts WHERE alert_id = ?1")?;
        let counted = st.query_map(params![alert], |r| Ok((r.get::<u32>(0)?, r.get::<String>(1)?, r.get::<i64>(2)?)))?;
        for row in counted {
            let (d, carrier, n) = row?;
            let carrier = CARRIERS.iter().copied().find(|c| *c == carrier).unwrap_or("その他");
            add(d, carrier, 0, n);
        }
        let order = |c: &str| CARRIERS.iter().position(|x| *x == c).unwrap_or(CARRIERS.len());
        rows.sort_by_key(|r| (r.district, order(r.carrier)));
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mamoru_core::EmailAddress;
    use mamoru_core::mail::{MailKind, OutgoingMail};

    use super::*;
    use crate::admins::AdminAdded;
    use crate::alerts::{NewAlert, PublishAuth, Published};
    use crate::keys;

    const T0: UnixTime = 1_800_000_000;

    fn addr(s: &str) -> EmailAddress {
        EmailAddress::parse(s).unwrap()
    }

    #[test]
    fn each_copy_counts_once_and_only_counts_outlive_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys::load_or_create(dir.path()).unwrap();
        let store = Store::open_for_test(dir.path(), &keys, Duration::from_millis(200)).unwrap();
        let AdminAdded::Added(admin) = store.add_admin("chuo", &addr("staff@city.test"), "h", &[], "cli", T0).unwrap() else { panic!() };
        let subs = vec![(addr("a@docomo.ne.jp"), vec![1]), (addr("b@ezweb.ne.jp"), vec![1, 3]), (addr("c@ezweb.ne.jp"), vec![3])];
        store.import_active_subscribers(&subs, "test", T0).unwrap();
        let new = NewAlert { title: "t", text: "x", districts: &[1, 3], ask_confirm: true, ..NewAlert::new(admin, "web") };
        let preview = |_, _, _: &crate::alerts::Audience| OutgoingMail {
            kind: MailKind::AlertPreview,
            sender: "ans@x".into(),
            to: addr("staff@city.test"),
            message_id: "p@x".into(),
            bytes: b"x".to_vec(),
        };
        let crate::alerts::Drafted::Created { alert, .. } = store.draft_alert(&new, T0, T0 + 60, preview).unwrap() else { panic!() };
        let Published::Published { .. } = store.publish_alert(PublishAuth::Direct(alert), "t", T0, T0 + 600, "ans@x", "x").unwrap() else {
            panic!()
        };
        // The copies went out (a link is clicked in a delivered copy).
        crate::queue::settle(&store.conn().unwrap(), "alert_id = ?7", params![alert], crate::states::OutboxState::Sent, "", T0).unwrap();
        // b has districts 1 and 3: counted under 1.
        assert_eq!(store.confirm_district(alert, SubscriberId::new(1)).unwrap(), 1);
        assert_eq!(store.confirm_district(alert, SubscriberId::new(2)).unwrap(), 1);
        assert_eq!(store.confirm_district(alert, SubscriberId::new(3)).unwrap(), 3);

        let until = T0 + 1000;
        let au1 = ConfirmKey { alert, district: 1, carrier: 1 };
        assert_eq!(store.confirm_open(&au1).unwrap().as_deref(), Some("t"));
        assert_eq!(store.confirm_copy(&au1, &[2; 8], until, T0 + 5).unwrap(), Confirmed::Counted);
        assert_eq!(store.confirm_copy(&au1, &[2; 8], until, T0 + 6).unwrap(), Confirmed::AlreadyCounted);
        assert_eq!(store.confirm_copy(&au1, &[2; 8], until, T0 + 7).unwrap(), Confirmed::AlreadyCounted);
        let table = store.confirm_table(alert).unwrap();
        assert_eq!(
            table,
            vec![
                ConfirmRow { district: 1, carrier: "docomo", delivered: 1, confirmed: 0 },
                ConfirmRow { district: 1, carrier: "au", delivered: 1, confirmed: 1 },
                ConfirmRow { district: 3, carrier: "au", delivered: 1, confirmed: 0 },
            ]
        );
        // After the window: the link is closed, the seen-set gone, the counts kept.
        assert_eq!(store.confirm_copy(&au1, &[3; 8], until, until).unwrap(), Confirmed::Closed);
        store.purge_confirmations(until).unwrap();
        let n: i64 = store.conn().unwrap().query_row("SELECT COUNT(*) FROM confirm_seen", params![], |r| r.get(0)).unwrap();
        assert_eq!(n, 0);
        assert_eq!(store.confirm_table(alert).unwrap()[1].confirmed, 1);
        // An alert that does not ask counts nothing.
        let other = ConfirmKey { alert: AlertId::new(alert.get() + 1), district: 1, carrier: 0 };
        assert_eq!(store.confirm_copy(&other, &[4; 8], until + 100, T0).unwrap(), Confirmed::Closed);
    }
}
