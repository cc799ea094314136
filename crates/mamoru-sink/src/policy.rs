//! What the emulated carriers allow, and what they saw. Pure: the time is a
//! parameter (seconds since the sink started).

use std::collections::{BTreeMap, HashMap};

use mamoru_core::rate::TokenBucket;
use serde::Serialize;

/// One carrier domain's limits.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainLimit {
    pub max_connections: u32,
    /// Messages per second (0 = no limit).
    pub rate: f64,
    pub burst: u32,
}

impl DomainLimit {
    /// `CONNS/RATE[/BURST]`, e.g. `4/20` or `2/10/5`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('/');
        let max_connections = it.next()?.trim().parse().ok()?;
        let rate: f64 = it.next()?.trim().parse().ok()?;
        let burst = match it.next() {
            Some(b) => b.trim().parse().ok()?,
            None => 5,
        };
        if it.next().is_some() || !rate.is_finite() || rate < 0.0 {
            return None;
        }
        Some(Self { max_connections, rate, burst })
    }
}

/// A window during which a domain answers every RCPT with 421.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleWindow {
    pub domain: String,
    pub from: f64,
    pub to: f64,
}

/// From `at` seconds on, `domain` has `limit` (a carrier that tightens or
/// loosens its connection cap and pace during the day).
#[derive(Debug, Clone, PartialEq)]
pub struct LimitChange {
    pub at: f64,
    pub domain: String,
    pub limit: DomainLimit,
}

impl LimitChange {
    /// `DOMAIN@SECS=CONNS/RATE[/BURST]`.
    pub fn parse(s: &str) -> Option<Self> {
        let (head, spec) = s.split_once('=')?;
        let (domain, at) = head.split_once('@')?;
        let at: f64 = at.trim().parse().ok()?;
        if !at.is_finite() || at < 0.0 || domain.is_empty() {
            return None;
        }
        Some(Self { at, domain: domain.to_ascii_lowercase(), limit: DomainLimit::parse(spec)? })
    }
}

#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    pub limits: BTreeMap<String, DomainLimit>,
    /// Share of recipients (by a hash of the address, so the same address
    /// always gets the same answer) that are unknown users.
    pub unknown_fraction: f64,
    pub throttle_windows: Vec<ThrottleWindow>,
    /// Sessions open at once at most, over every domain; one more is
    /// answered `421 4.7.0` at the greeting and closed.
    pub greeting_cap: Option<u32>,
    /// Domains that answer a message over their rate with `451 4.7.1`
    /// (the session goes on) instead of `421 4.7.0` and a close.
    pub pace_451: Vec<String>,
    /// Limit changes on a timer, applied in time order.
    pub changes: Vec<LimitChange>,
}

/// The answer to a RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptVerdict {
    Accept,
    /// 421 and close: over the connection cap or the rate, or a window.
    Throttle(&'static str),
    Unknown,
    /// A fault asked for by the local part (`fail451…`, `fail452…`,
    /// `echo550…`, `echo452…`).
    Fail(String),
}

/// The answer to the final dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DotVerdict {
    Accept,
    Fail552,
    /// Drop the connection without a reply (the message counts as received).
    Reset,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DomainStats {
    pub accepted: u64,
    pub unknown: u64,
    pub throttled_connections: u64,
    pub throttled_rate: u64,
    pub throttled_window: u64,
    pub failed_on_demand: u64,
    pub resets: u64,
    pub connections_now: u32,
    pub max_connections_seen: u32,
    /// Accepted messages per second since the start (index = second).
    pub per_second: Vec<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub domains: BTreeMap<String, DomainStats>,
    /// Sessions refused at the greeting ([`PolicyConfig::greeting_cap`]).
    pub throttled_greeting: u64,
    pub sessions: u64,
    /// Sessions not yet ended (any domain, bound or not).
    pub sessions_open: u64,
    /// Set on the last write, after shutdown, once no session was open:
    /// these counts are final.
    pub stopped: bool,
    /// Accepted messages with a Message-ID seen more than once.
    pub duplicates: u64,
    pub accepted: u64,
    /// AUTH attempts refused (wrong user or password).
    pub auth_failures: u64,
    /// TLS handshakes after STARTTLS that failed (on demand or not).
    pub tls_failures: u64,
}

/// How one received message came: over TLS or not, and which user had
/// authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message_id: String,
    pub domain: String,
    pub tls: bool,
    pub user: Option<String>,
}

pub struct Policy {
    cfg: PolicyConfig,
    /// Sessions admitted at the greeting and not yet ended.
    greeted: u32,
    /// Changes of `cfg.changes` already applied.
    applied: usize,
    buckets: HashMap<String, TokenBucket>,
    stats: Stats,
    /// Message-IDs accepted, with counts.
    seen: HashMap<String, u32>,
    /// Message-IDs already reset once (the retry is accepted).
    reset_once: HashMap<String, ()>,
    /// Lines for the message log not yet written: `MILLIS DOMAIN MESSAGE-ID`.
    log: Vec<String>,
    /// Every received message, in order.
    deliveries: Vec<Delivery>,
}

impl Policy {
    pub fn new(mut cfg: PolicyConfig) -> Self {
        let buckets =
            cfg.limits.iter().map(|(d, l)| (d.clone(), TokenBucket::new(l.rate, l.burst, 0.0))).collect();
        cfg.changes.sort_by(|a, b| a.at.total_cmp(&b.at));
        cfg.pace_451.iter_mut().for_each(|d| *d = d.to_ascii_lowercase());
        Self { cfg, greeted: 0, applied: 0, buckets, stats: Stats::default(), seen: HashMap::new(), reset_once: HashMap::new(), log: Vec::new(), deliveries: Vec::new() }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn seen(&self) -> &HashMap<String, u32> {
        &self.seen
    }

    /// Does `domain` have limits (and so count connections)?
    pub fn is_limited(&self, domain: &str) -> bool {
        self.cfg.limits.contains_key(&domain.to_ascii_lowercase())
    }

    pub fn session_opened(&mut self) {
        self.stats.sessions += 1;
        self.stats.sessions_open += 1;
    }

    /// A session has ended, however it ended.
    pub fn session_ended(&mut self) {
        self.stats.sessions_open = self.stats.sessions_open.saturating_sub(1);
    }

    /// Marks the counts final (see [`Stats::stopped`]).
    pub fn stop(&mut self) {
        self.stats.stopped = self.stats.sessions_open == 0;
    }

    fn domain(&mut self, domain: &str) -> &mut DomainStats {
        self.stats.domains.entry(domain.to_string()).or_default()
    }

    /// Applies the limit changes due by `now`.
    fn apply_changes(&mut self, now: f64) {
        while let Some(c) = self.cfg.changes.get(self.applied).filter(|c| c.at <= now).cloned() {
            self.applied += 1;
            match self.buckets.get_mut(&c.domain) {
                Some(b) => b.set_rate(c.limit.rate, now),
                None => {
                    self.buckets.insert(c.domain.clone(), TokenBucket::new(c.limit.rate, c.limit.burst, now));
                }
            }
            self.cfg.limits.insert(c.domain, c.limit);
        }
    }

    /// A session is greeted: `None` admits it (call [`Policy::ungreet`]
    /// when it ends), `Some(reply)` refuses it over the greeting cap.
    pub fn greet(&mut self, now: f64) -> Option<&'static str> {
        self.apply_changes(now);
        if self.cfg.greeting_cap.is_some_and(|cap| self.greeted >= cap) {
            self.stats.throttled_greeting += 1;
            return Some("421 4.7.0 Too many connections, try again later\r\n");
        }
        self.greeted += 1;
        None
    }

    /// An admitted session ended.
    pub fn ungreet(&mut self) {
        self.greeted = self.greeted.saturating_sub(1);
    }

    /// The first RCPT of a connection binds it to `domain` for the cap.
    /// `bound` says whether this connection is already counted.
    pub fn rcpt(&mut self, local: &str, domain: &str, bound: bool, now: f64) -> (RcptVerdict, bool) {
        self.apply_changes(now);
        let domain = domain.to_ascii_lowercase();
        let local_lower = local.to_ascii_lowercase();
        let cap = self.cfg.limits.get(&domain).map(|l| l.max_connections);
        let mut bound_now = bound;
        if !bound {
            let d = self.domain(&domain);
            if cap.is_some_and(|c| d.connections_now >= c) {
                d.throttled_connections += 1;
                return (RcptVerdict::Throttle("421 4.7.0 Too many connections"), false);
            }
            d.connections_now += 1;
            d.max_connections_seen = d.max_connections_seen.max(d.connections_now);
            bound_now = true;
        }
        if self.cfg.throttle_windows.iter().any(|w| w.domain == domain && now >= w.from && now < w.to) {
            self.domain(&domain).throttled_window += 1;
            return (RcptVerdict::Throttle("421 4.7.0 Temporarily rejected, try again later"), bound_now);
        }
        if local_lower.starts_with("fail451") {
            self.domain(&domain).failed_on_demand += 1;
            return (RcptVerdict::Fail("451 4.3.0 Temporary failure".into()), bound_now);
        }
        if local_lower.starts_with("fail452") {
            self.domain(&domain).failed_on_demand += 1;
            return (RcptVerdict::Fail("452 4.2.2 Mailbox full".into()), bound_now);
        }
        // Carriers that echo the recipient's local part alone, in another
        // case, as some do.
        if local_lower.starts_with("echo550") {
            self.domain(&domain).failed_on_demand += 1;
            return (RcptVerdict::Fail(format!("550 5.1.1 User unknown: {}", local.to_ascii_uppercase())), bound_now);
        }
        if local_lower.starts_with("echo452") {
            self.domain(&domain).failed_on_demand += 1;
            let reply = format!("452 4.2.2 Mailbox of {} is over quota", local.to_ascii_uppercase());
            return (RcptVerdict::Fail(reply), bound_now);
        }
        if local_lower.starts_with("unknown") || self.hash_unknown(&local_lower, &domain) {
            self.domain(&domain).unknown += 1;
            return (RcptVerdict::Unknown, bound_now);
        }
        if let Some(b) = self.buckets.get_mut(&domain) {
            if b.take(now).is_err() {
                self.domain(&domain).throttled_rate += 1;
                if self.cfg.pace_451.contains(&domain) {
                    return (RcptVerdict::Fail("451 4.7.1 Too many messages, slow down".into()), bound_now);
                }
                return (RcptVerdict::Throttle("421 4.7.0 Too many messages, slow down"), bound_now);
            }
        }
        (RcptVerdict::Accept, bound_now)
    }

    fn hash_unknown(&self, local: &str, domain: &str) -> bool {
        if self.cfg.unknown_fraction <= 0.0 {
            return false;
        }
        // FNV-1a: stable across runs, so a retried address gets the same answer.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in local.bytes().chain([b'@']).chain(domain.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % 10_000) as f64 / 10_000.0 < self.cfg.unknown_fraction
    }

    /// The final dot of a message to `local@domain` with `message_id`.
    pub fn dot(&mut self, local: &str, domain: &str, message_id: &str, now: f64) -> DotVerdict {
        let domain = domain.to_ascii_lowercase();
        let local = local.to_ascii_lowercase();
        if local.starts_with("fail552") {
            self.domain(&domain).failed_on_demand += 1;
            return DotVerdict::Fail552;
        }
        let reset = local.starts_with("reset") && self.reset_once.insert(message_id.to_string(), ()).is_none();
        let count = self.seen.entry(message_id.to_string()).or_insert(0);
        *count += 1;
        if *count > 1 {
            self.stats.duplicates += 1;
        }
        self.stats.accepted += 1;
        self.log.push(format!("{} {domain} {message_id}", (now * 1000.0) as u64));
        let second = now.max(0.0) as usize;
        let d = self.domain(&domain);
        d.accepted += 1;
        if d.per_second.len() <= second {
            d.per_second.resize(second + 1, 0);
        }
        d.per_second[second] += 1;
        if reset {
            d.resets += 1;
            DotVerdict::Reset
        } else {
            DotVerdict::Accept
        }
    }

    /// A message was received (accepted, or reset after the dot).
    pub fn delivered(&mut self, d: Delivery) {
        self.deliveries.push(d);
    }

    pub fn deliveries(&self) -> &[Delivery] {
        &self.deliveries
    }

    pub fn auth_failed(&mut self) {
        self.stats.auth_failures += 1;
    }

    pub fn tls_failed(&mut self) {
        self.stats.tls_failures += 1;
    }

    /// Takes the message-log lines written since the last call.
    pub fn drain_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }

    /// A connection bound to `domain` closed.
    pub fn closed(&mut self, domain: &str) {
        let d = self.domain(&domain.to_ascii_lowercase());
        d.connections_now = d.connections_now.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let mut limits = BTreeMap::new();
        limits.insert("docomo.ne.jp".to_string(), DomainLimit { max_connections: 1, rate: 2.0, burst: 1 });
        Policy::new(PolicyConfig { limits, unknown_fraction: 0.0, throttle_windows: vec![ThrottleWindow { domain: "au.com".into(), from: 5.0, to: 6.0 }], ..PolicyConfig::default() })
    }

    #[test]
    fn caps_rates_and_windows() {
        let mut p = policy();
        assert_eq!(p.rcpt("a", "docomo.ne.jp", false, 0.0), (RcptVerdict::Accept, true));
        // A second connection is over the cap.
        assert!(matches!(p.rcpt("a", "docomo.ne.jp", false, 0.0), (RcptVerdict::Throttle(_), false)));
        // Over the rate on the same connection.
        assert!(matches!(p.rcpt("a", "docomo.ne.jp", true, 0.1).0, RcptVerdict::Throttle(_)));
        assert_eq!(p.rcpt("a", "docomo.ne.jp", true, 0.5).0, RcptVerdict::Accept);
        p.closed("docomo.ne.jp");
        assert_eq!(p.rcpt("a", "docomo.ne.jp", false, 1.0).0, RcptVerdict::Accept);
        assert!(matches!(p.rcpt("a", "au.com", false, 5.5).0, RcptVerdict::Throttle(_)));
        assert_eq!(p.rcpt("a", "au.com", true, 6.0).0, RcptVerdict::Accept);
        let d = &p.stats().domains["docomo.ne.jp"];
        assert_eq!((d.throttled_connections, d.throttled_rate, d.max_connections_seen), (1, 1, 1));
    }

    #[test]
    fn greeting_cap_pace_451_and_changes_on_a_timer() {
        let mut limits = BTreeMap::new();
        limits.insert("au.com".to_string(), DomainLimit { max_connections: 4, rate: 1.0, burst: 1 });
        let mut p = Policy::new(PolicyConfig {
            limits,
            greeting_cap: Some(1),
            pace_451: vec!["AU.com".into()],
            changes: vec![LimitChange::parse("au.com@10=1/100/1").expect("change")],
            ..PolicyConfig::default()
        });
        assert_eq!(p.greet(0.0), None);
        assert!(p.greet(0.0).is_some_and(|r| r.starts_with("421 4.7.0")));
        p.ungreet();
        assert_eq!(p.greet(0.0), None);
        assert_eq!(p.stats().throttled_greeting, 1);
        // Over the pace: 451 4.7.1, and the session goes on.
        assert_eq!(p.rcpt("a", "au.com", false, 0.0).0, RcptVerdict::Accept);
        assert_eq!(p.rcpt("a", "au.com", true, 0.1).0, RcptVerdict::Fail("451 4.7.1 Too many messages, slow down".into()));
        // From 10 s on: 100/s, and one connection only.
        assert!(matches!(p.rcpt("a", "au.com", false, 10.0).0, RcptVerdict::Throttle(r) if r.contains("connections")));
        for i in 0..20 {
            assert_eq!(p.rcpt("a", "au.com", true, 10.0 + f64::from(i) * 0.02).0, RcptVerdict::Accept);
        }
        assert_eq!(LimitChange::parse("x@-1=1/1"), None);
        assert_eq!(LimitChange::parse("x=1/1"), None);
    }

    #[test]
    fn faults_on_demand_and_duplicates() {
        let mut p = policy();
        assert_eq!(p.rcpt("unknown.x", "au.com", false, 0.0).0, RcptVerdict::Unknown);
        assert!(matches!(p.rcpt("fail451", "au.com", true, 0.0).0, RcptVerdict::Fail(s) if s.starts_with("451")));
        assert_eq!(p.rcpt("Echo550.x", "au.com", true, 0.0).0, RcptVerdict::Fail("550 5.1.1 User unknown: ECHO550.X".into()));
        assert!(matches!(p.rcpt("echo452.y", "au.com", true, 0.0).0, RcptVerdict::Fail(s) if s.contains("ECHO452.Y")));
        assert_eq!(p.dot("reset1", "au.com", "m1", 0.0), DotVerdict::Reset);
        assert_eq!(p.dot("reset1", "au.com", "m1", 0.0), DotVerdict::Accept);
        assert_eq!(p.dot("fail552", "au.com", "m2", 0.0), DotVerdict::Fail552);
        assert_eq!((p.stats().accepted, p.stats().duplicates), (2, 1));
    }

    #[test]
    fn unknown_fraction_is_stable_and_close() {
        let p = Policy::new(PolicyConfig { unknown_fraction: 0.05, ..PolicyConfig::default() });
        let n = (0..10_000).filter(|i| p.hash_unknown(&format!("user{i}"), "docomo.ne.jp")).count();
        assert!((400..=600).contains(&n), "{n}");
        assert_eq!(p.hash_unknown("user1", "docomo.ne.jp"), p.hash_unknown("user1", "docomo.ne.jp"));
    }

    #[test]
    fn limits_parse() {
        assert_eq!(DomainLimit::parse("4/20"), Some(DomainLimit { max_connections: 4, rate: 20.0, burst: 5 }));
        assert_eq!(DomainLimit::parse("2/10/3"), Some(DomainLimit { max_connections: 2, rate: 10.0, burst: 3 }));
        assert_eq!(DomainLimit::parse("x"), None);
        assert_eq!(DomainLimit::parse("1/2/3/4"), None);
    }
}
