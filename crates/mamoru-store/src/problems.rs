//! Delivery problems for the admin: what waits and why, per recipient
//! domain, and the registrations that were started and never completed —
//! the numbers that say "this carrier filters our 登録受付 mail". Counts
//! only: no address, no subscriber.

use mamoru_core::UnixTime;

use crate::params;
use crate::{Result, Store};

/// Queued rows that were tried and deferred, per domain and reply code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    pub domain: String,
    /// The reply's code and enhanced code (`421 4.7.0`), or the kind of
    /// failure when there was no reply (`timeout`, `connection`, `other`).
    pub code: String,
    pub count: i64,
}

/// Registrations per domain begun in the window: how many are still
/// unconfirmed and how many were completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    pub domain: String,
    pub pending: i64,
    pub completed: i64,
}

/// The reply code a stored reason starts with, as the relay stores it
/// (`451 4.7.1 …`, already scrubbed): `NNN` and an enhanced code
/// `C.S.D` when one follows; else a word for what happened.
pub fn reply_code(reason: &str) -> String {
    let mut words = reason.split_whitespace();
    let first = words.next().unwrap_or("");
    let is_code = first.len() == 3 && first.bytes().all(|b| b.is_ascii_digit()) && matches!(first.as_bytes()[0], b'2'..=b'5');
    if !is_code {
        let lower = reason.to_ascii_lowercase();
        return if lower.contains("timed out") || lower.contains("timeout") {
            "timeout".into()
        } else if lower.contains("connect") || lower.contains("refused") || lower.contains("reset") {
            "connection".into()
        } else if lower.contains("dns") || lower.contains("mx") {
            "dns".into()
        } else {
            "other".into()
        };
    }
    match words.next() {
        Some(e) if e.split('.').count() == 3 && e.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) => {
            format!("{first} {e}")
        }
        _ => first.to_string(),
    }
}

impl Store {
    /// Rows waiting for another attempt after a deferral, per domain and
    /// reply code, most first.
    pub fn deferred(&self) -> Result<Vec<Deferred>> {
        let conn = self.conn()?;
        let mut st = conn.prepare(
            "SELECT domain, last_error, COUNT(*) FROM outbox WHERE state = 'queued' AND attempts > 0 AND last_error <> ''
             GROUP BY domain, last_error",
        )?;
        let rows = st.query_map(params![], |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?, r.get::<i64>(2)?)))?;
        let mut out: Vec<Deferred> = Vec::new();
        for row in rows {
            let (domain, reason, n) = row?;
            let code = reply_code(&reason);
            match out.iter_mut().find(|d| d.domain == domain && d.code == code) {
                Some(d) => d.count += n,
                None => out.push(Deferred { domain, code, count: n }),
            }
        }
        out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.domain.cmp(&b.domain)).then_with(|| a.code.cmp(&b.code)));
        Ok(out)
    }

    /// Registrations begun since `since`, per domain: still pending, and
    /// completed. A domain with many pending and few completed is likely
    /// filtering the 登録受付 mail.
    pub fn unfinished_registrations(&self, since: UnixTime) -> Result<Vec<Unfinished>> {
        let conn = self.conn()?;
        let mut st = conn.prepare(
            "SELECT domain, CAST(SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) AS BIGINT) AS pending,
                    CAST(SUM(CASE WHEN status <> 'pending' THEN 1 ELSE 0 END) AS BIGINT)
             FROM subscribers WHERE created_at >= ?1
             GROUP BY domain HAVING SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) > 0 ORDER BY pending DESC, domain",
        )?;
        let rows = st.query_map(params![since], |r| Ok(Unfinished { domain: r.get(0)?, pending: r.get(1)?, completed: r.get(2)? }))?;
        rows.collect::<Result<_>>()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::keys;

    #[test]
    fn reply_codes_group_what_the_carriers_said() {
        let table = [
            ("421 4.7.0 Too many connections", "421 4.7.0"),
            ("451 4.7.1 <g***@docomo.ne.jp> try later", "451 4.7.1"),
            ("452 too many recipients", "452"),
            ("connection timed out (greeting)", "timeout"),
            ("connection refused", "connection"),
            ("", "other"),
            ("4210 nope", "other"),
            ("451 4..1 x", "451"),
        ];
        for (reason, want) in table {
            assert_eq!(reply_code(reason), want, "{reason}");
        }
    }

    #[test]
    fn deferred_rows_and_unfinished_registrations_are_counted_per_domain() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys::load_or_create(dir.path()).unwrap();
        let store = Store::open_for_test(dir.path(), &keys, Duration::from_millis(200)).unwrap();
        let conn = store.conn().unwrap();
        for (i, (domain, err, attempts, state)) in [
            ("ezweb.ne.jp", "421 4.7.0 busy", 1, "queued"),
            ("ezweb.ne.jp", "421 4.7.0 later", 2, "queued"),
            ("ezweb.ne.jp", "451 4.7.1 x", 1, "queued"),
            ("docomo.ne.jp", "", 0, "queued"),
            ("docomo.ne.jp", "550 5.1.1 x", 1, "failed"),
        ]
        .into_iter()
        .enumerate()
        {
            conn.execute(
                "INSERT INTO outbox (kind, priority, subscriber_id, domain, sender, recipient_sealed, message_id, content_sealed,
                                     next_attempt_at, created_at, expires_at, attempts, last_error, state)
                 VALUES ('alert', 100, 0, ?1, 'a@x', ?6, ?2, ?6, 0, 0, 99, ?3, ?4, ?5)",
                params![domain, format!("m{i}"), attempts, err, state, Vec::<u8>::new()],
            )
            .unwrap();
        }
        for (i, (domain, status, at)) in
            [("ezweb.ne.jp", "pending", 100), ("ezweb.ne.jp", "pending", 100), ("ezweb.ne.jp", "active", 100), ("docomo.ne.jp", "active", 100), ("au.com", "pending", 1)]
                .into_iter()
                .enumerate()
        {
            conn.execute(
                "INSERT INTO subscribers (addr_index, addr_sealed, domain, status, created_at, updated_at) VALUES (?1, ?5, ?2, ?3, ?4, ?4)",
                params![vec![i as u8; 32], domain, status, at, Vec::<u8>::new()],
            )
            .unwrap();
        }
        drop(conn);
        assert_eq!(
            store.deferred().unwrap(),
            vec![
                Deferred { domain: "ezweb.ne.jp".into(), code: "421 4.7.0".into(), count: 2 },
                Deferred { domain: "ezweb.ne.jp".into(), code: "451 4.7.1".into(), count: 1 },
            ]
        );
        assert_eq!(store.unfinished_registrations(50).unwrap(), vec![Unfinished { domain: "ezweb.ne.jp".into(), pending: 2, completed: 1 }]);
    }
}
