//! Connection limits of a listener: a total cap (so one flooded listener
//! cannot take the file descriptors another needs) and a cap per client, an
//! IP address or an IPv6 /64 (one host usually holds a whole /64).
//!
//! A connection holds a [`ConnectionPermit`] for its lifetime; dropping the
//! permit gives the slot back. Acquiring never waits: a listener over its cap
//! refuses the connection at once instead of queueing it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The part of an address a client is counted by: an IPv4 address (an
/// IPv4-mapped IPv6 address is its IPv4 address), or an IPv6 /64.
pub fn client_prefix(ip: IpAddr) -> ClientPrefix {
    match ip {
        IpAddr::V4(v4) => ClientPrefix::V4(v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => ClientPrefix::V4(v4.octets()),
            None => {
                let mut p = [0u8; 8];
                p.copy_from_slice(&v6.octets()[..8]);
                ClientPrefix::V6(p)
            }
        },
    }
}

/// See [`client_prefix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientPrefix {
    V4([u8; 4]),
    V6([u8; 8]),
}

impl ClientPrefix {
    /// The prefix's bytes (4 for IPv4, 8 for an IPv6 /64).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            ClientPrefix::V4(b) => b,
            ClientPrefix::V6(b) => b,
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds its total cap of connections.
    Total,
    /// This client holds its cap of connections.
    Client,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_client: HashMap<ClientPrefix, usize>,
}

/// The counters of one listener. Share it as `Arc<ConnectionLimits>`.
#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_client: usize,
    counts: Mutex<Counts>,
}

impl ConnectionLimits {
    /// At most `max_total` connections, and at most `max_per_client` from
    /// one client.
    pub fn new(max_total: usize, max_per_client: usize) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_client, counts: Mutex::new(Counts::default()) })
    }

    pub fn max_total(&self) -> usize {
        self.max_total
    }

    pub fn max_per_client(&self) -> usize {
        self.max_per_client
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counters stay consistent even if a holder panicked: every
        // critical section is a plain increment or decrement.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for a connection from `ip`. With `per_client` false
    /// only the total cap applies (a trusted proxy that carries many
    /// clients' connections under its one address).
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr, per_client: bool) -> Result<ConnectionPermit, Refused> {
        let mut c = self.lock();
        if c.total >= self.max_total {
            return Err(Refused::Total);
        }
        let client = per_client.then(|| client_prefix(ip));
        if let Some(key) = client {
            let n = c.per_client.entry(key).or_insert(0);
            if *n >= self.max_per_client {
                return Err(Refused::Client);
            }
            *n += 1;
        }
        c.total += 1;
        Ok(ConnectionPermit { limits: Arc::clone(self), client })
    }
}

/// One open connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    client: Option<ClientPrefix>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut c = self.limits.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(key) = self.client {
            if let Some(n) = c.per_client.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    c.per_client.remove(&key);
                }
            }
        }
    }
}

/// Keeps a flood of refused connections from flooding the log too: at most
/// one line per `every`, counting the refusals in between.
#[derive(Debug)]
pub struct RefusalLog {
    every: Duration,
    last: Option<Instant>,
    refused: u64,
}

impl RefusalLog {
    pub fn new(every: Duration) -> Self {
        Self { every, last: None, refused: 0 }
    }

    /// Notes one refusal at `now`; `Some(n)` when a line is due, `n` the
    /// refusals since the last line (this one included).
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        self.refused += 1;
        if self.last.is_some_and(|t| now.saturating_duration_since(t) < self.every) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.refused))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn per_client_cap_counts_ipv6_by_64_and_mapped_ipv4_as_ipv4() {
        let l = ConnectionLimits::new(100, 2);
        let a = l.try_acquire(ip("2001:db8:1:2::1"), true).expect("first");
        let _b = l.try_acquire(ip("2001:db8:1:2:ffff::9"), true).expect("second of the /64");
        assert_eq!(l.try_acquire(ip("2001:db8:1:2::77"), true).unwrap_err(), Refused::Client);
        // Another /64 is another client.
        let _c = l.try_acquire(ip("2001:db8:1:3::1"), true).expect("other /64");
        let _d = l.try_acquire(ip("192.0.2.1"), true).expect("v4");
        let _e = l.try_acquire(ip("::ffff:192.0.2.1"), true).expect("mapped = same v4");
        assert_eq!(l.try_acquire(ip("192.0.2.1"), true).unwrap_err(), Refused::Client);
        drop(a);
        let _f = l.try_acquire(ip("2001:db8:1:2::77"), true).expect("slot freed");
        assert_eq!(l.open(), 5);
    }

    #[test]
    fn total_cap_holds_and_drop_frees() {
        let l = ConnectionLimits::new(3, 10);
        let mut held: Vec<_> = (1..=3).map(|i| l.try_acquire(ip(&format!("10.0.0.{i}")), true).expect("under cap")).collect();
        assert_eq!(l.try_acquire(ip("10.0.0.9"), true).unwrap_err(), Refused::Total);
        assert_eq!(l.try_acquire(ip("127.0.0.1"), false).unwrap_err(), Refused::Total);
        held.pop();
        assert_eq!(l.open(), 2);
        let _p = l.try_acquire(ip("10.0.0.9"), true).expect("freed slot");
    }

    #[test]
    fn exempt_connections_skip_only_the_client_cap() {
        let l = ConnectionLimits::new(5, 1);
        let _a = l.try_acquire(ip("127.0.0.1"), true).expect("first");
        assert_eq!(l.try_acquire(ip("127.0.0.1"), true).unwrap_err(), Refused::Client);
        let held: Vec<_> = (0..4).map(|_| l.try_acquire(ip("127.0.0.1"), false).expect("proxy")).collect();
        assert_eq!(l.try_acquire(ip("127.0.0.1"), false).unwrap_err(), Refused::Total);
        drop(held);
        // Exempt permits never touched the client's count.
        assert_eq!(l.try_acquire(ip("127.0.0.1"), true).unwrap_err(), Refused::Client);
    }

    #[test]
    fn refusal_log_writes_one_line_per_interval() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(Duration::from_secs(10));
        assert_eq!(log.note(t0), Some(1));
        assert_eq!(log.note(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.note(t0 + Duration::from_secs(2)), None);
        assert_eq!(log.note(t0 + Duration::from_secs(10)), Some(3));
    }
}
