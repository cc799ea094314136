//! The DNS half of the `mx` transport: which hosts to try, in which order,
//! for a recipient domain (RFC 5321 §5.1, RFC 7505 null MX).
//!
//! The rules are pure ([`mx_hosts`]) or generic over a [`Lookup`]
//! ([`destinations`]), so they are tested with an injected answer table;
//! [`DnsResolver`] is the real lookup (hickory, tokio). One resolver is
//! shared by every worker of every pool, so its cache (records kept for
//! their TTL) serves them all.
//!
//! - MX hosts are tried by preference, lowest first; hosts of equal
//!   preference in an order rotated by a random `spin` per connection, so
//!   connections spread over a carrier's equal MX hosts (RFC 5321 §5.1).
//! - No MX record (the name exists): the domain itself is the one host, the
//!   "implicit MX".
//! - A null MX (`0 .`, RFC 7505) or NXDOMAIN: the domain takes no mail, a
//!   permanent failure for the recipient.
//! - SERVFAIL, a timeout, no answer: temporary, the message waits.
//!
//! Queries are fully qualified (a trailing dot), so a resolv.conf `search`
//! list never turns a recipient domain into a question about another name.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::{NoRecords, ProtoError, ProtoErrorKind};
use hickory_resolver::{Name, TokioResolver};

/// Addresses tried per message at most, over all MX hosts (Postfix's
/// `smtp_mx_address_limit` is 5 too).
pub const MAX_ADDRESSES: usize = 5;

/// Why a DNS question has no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// NXDOMAIN: the name does not exist.
    NoSuchDomain,
    /// The name exists but has no record of the type asked (NOERROR, empty).
    NoRecords,
    /// SERVFAIL, REFUSED, a timeout, no server reachable: ask again later.
    Temporary(String),
}

/// A DNS lookup, as the transport needs it.
pub trait Lookup: Send + Sync {
    /// The MX records of `domain`: (preference, exchange). The exchange has
    /// no trailing dot; the root (the null MX's `.`) is the empty string.
    fn mx(&self, domain: &str) -> impl Future<Output = Result<Vec<(u16, String)>, DnsError>> + Send;
    /// The A and AAAA addresses of `host`.
    fn addresses(&self, host: &str) -> impl Future<Output = Result<Vec<IpAddr>, DnsError>> + Send;
}

/// No host to hand the message to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// The domain takes no mail (null MX) or does not exist: fail the message.
    Permanent(String),
    /// DNS could not answer now: try again later.
    Temporary(String),
}

/// One address to try: the MX host's name (for the log and TLS SNI) and
/// one of its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub ip: IpAddr,
}

/// The hosts to try for `domain`, in order, given the answer to its MX
/// question. Each group of equal preference is rotated left by `spin`.
pub fn mx_hosts(domain: &str, answer: Result<Vec<(u16, String)>, DnsError>, spin: usize) -> Result<Vec<String>, NoRoute> {
    match answer {
        Ok(records) if !records.is_empty() => {
            let mut usable: Vec<(u16, String)> =
                records.into_iter().filter(|(_, host)| !host.is_empty() && host != ".").collect();
            if usable.is_empty() {
                // RFC 7505: "0 ." alone says the domain accepts no mail.
                return Err(NoRoute::Permanent(format!("{domain} accepts no mail (null MX, RFC 7505)")));
            }
            // Stable: equal preferences keep the resolver's order.
            usable.sort_by_key(|(pref, _)| *pref);
            let mut ranked: Vec<(u16, String)> = Vec::with_capacity(usable.len());
            for (pref, host) in usable {
                let host = host.to_ascii_lowercase();
                if !ranked.iter().any(|(_, h)| *h == host) {
                    ranked.push((pref, host));
                }
            }
            let mut hosts = Vec::with_capacity(ranked.len());
            for group in ranked.chunk_by(|a, b| a.0 == b.0) {
                let mut names: Vec<String> = group.iter().map(|(_, h)| h.clone()).collect();
                let n = names.len();
                names.rotate_left(spin % n);
                hosts.extend(names);
            }
            Ok(hosts)
        }
        // RFC 5321 §5.1: no MX, so the domain itself is the host.
        Ok(_) | Err(DnsError::NoRecords) => Ok(vec![domain.to_ascii_lowercase()]),
        Err(DnsError::NoSuchDomain) => Err(NoRoute::Permanent(format!("{domain}: no such domain (NXDOMAIN)"))),
        Err(DnsError::Temporary(e)) => Err(NoRoute::Temporary(format!("MX lookup for {domain} failed: {e}"))),
    }
}

/// The addresses to try for `domain`, in order (at most [`MAX_ADDRESSES`]);
/// `spin` as for [`mx_hosts`].
pub async fn destinations<L: Lookup>(lookup: &L, domain: &str, spin: usize) -> Result<Vec<Destination>, NoRoute> {
    let answer = lookup.mx(domain).await;
    let implicit = matches!(&answer, Ok(r) if r.is_empty()) || answer == Err(DnsError::NoRecords);
    let hosts = mx_hosts(domain, answer, spin)?;
    let mut out = Vec::new();
    let mut temporary = None;
    for host in &hosts {
        match lookup.addresses(host).await {
            Ok(ips) => out.extend(ips.into_iter().map(|ip| Destination { host: host.clone(), ip })),
            // An MX host without addresses is skipped; the next may do.
            Err(DnsError::NoSuchDomain | DnsError::NoRecords) => {}
            Err(DnsError::Temporary(e)) => {
                temporary.get_or_insert(format!("address lookup for {host} failed: {e}"));
            }
        }
        if out.len() >= MAX_ADDRESSES {
            break;
        }
    }
    out.truncate(MAX_ADDRESSES);
    if !out.is_empty() {
        return Ok(out);
    }
    Err(match temporary {
        Some(reason) => NoRoute::Temporary(reason),
        // The domain exists but has neither MX nor address records.
        None if implicit => NoRoute::Permanent(format!("{domain} has no MX and no address records")),
        // Every MX host lacks addresses: a broken zone, often fixed soon.
        None => NoRoute::Temporary(format!("no MX host of {domain} has an address ({})", hosts.join(", "))),
    })
}

/// The system's resolver, or one DNS server, through hickory on tokio.
pub struct DnsResolver(TokioResolver);

impl DnsResolver {
    /// `server`: the one DNS server to ask; `None` = /etc/resolv.conf.
    pub fn new(server: Option<SocketAddr>) -> Result<Self, String> {
        let builder = match server {
            Some(addr) => {
                let servers = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), servers),
                    TokioConnectionProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?,
        };
        Ok(Self(builder.build()))
    }
}

fn fqdn(name: &str) -> Result<Name, DnsError> {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .map_err(|e| DnsError::Temporary(format!("bad name {name:?}: {e}")))
}

fn dns_error(e: ProtoError) -> DnsError {
    match e.kind() {
        ProtoErrorKind::NoRecordsFound(NoRecords { response_code: ResponseCode::NXDomain, .. }) => DnsError::NoSuchDomain,
        ProtoErrorKind::NoRecordsFound(NoRecords { response_code: ResponseCode::NoError, .. }) => DnsError::NoRecords,
        ProtoErrorKind::NoRecordsFound(NoRecords { response_code, .. }) => DnsError::Temporary(response_code.to_string()),
        _ => DnsError::Temporary(e.to_string()),
    }
}

impl Lookup for DnsResolver {
    async fn mx(&self, domain: &str) -> Result<Vec<(u16, String)>, DnsError> {
        let lookup = self.0.mx_lookup(fqdn(domain)?).await.map_err(dns_error)?;
        Ok(lookup
            .iter()
            .map(|mx| {
                let host = mx.exchange().to_ascii();
                (mx.preference(), host.trim_end_matches('.').to_string())
            })
            .collect())
    }

    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let lookup = self.0.lookup_ip(fqdn(host)?).await.map_err(dns_error)?;
        Ok(lookup.iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    type MxAnswer = Result<Vec<(u16, String)>, DnsError>;

    /// Answers from a table; a name not in it is NXDOMAIN.
    #[derive(Default)]
    struct Table {
        mx: HashMap<&'static str, MxAnswer>,
        ip: HashMap<&'static str, Result<Vec<IpAddr>, DnsError>>,
    }

    impl Table {
        fn mx(mut self, domain: &'static str, records: &[(u16, &str)]) -> Self {
            self.mx.insert(domain, Ok(records.iter().map(|(p, h)| (*p, h.to_string())).collect()));
            self
        }
        fn mx_err(mut self, domain: &'static str, e: DnsError) -> Self {
            self.mx.insert(domain, Err(e));
            self
        }
        fn ip(mut self, host: &'static str, ips: &[&str]) -> Self {
            self.ip.insert(host, Ok(ips.iter().map(|s| s.parse().expect("ip")).collect()));
            self
        }
        fn ip_err(mut self, host: &'static str, e: DnsError) -> Self {
            self.ip.insert(host, Err(e));
            self
        }
    }

    impl Lookup for Table {
        async fn mx(&self, domain: &str) -> Result<Vec<(u16, String)>, DnsError> {
            self.mx.get(domain).cloned().unwrap_or(Err(DnsError::NoSuchDomain))
        }
        async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
            self.ip.get(host).cloned().unwrap_or(Err(DnsError::NoSuchDomain))
        }
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    fn hosts(d: &[Destination]) -> Vec<String> {
        d.iter().map(|d| format!("{} {}", d.host, d.ip)).collect()
    }

    #[test]
    fn mx_hosts_by_preference() {
        let t = Table::default()
            .mx("docomo.ne.jp", &[(20, "mx2.docomo.test"), (10, "MX1.docomo.test"), (20, "mx3.docomo.test"), (10, "mx1.docomo.test")])
            .ip("mx1.docomo.test", &["192.0.2.1", "2001:db8::1"])
            .ip("mx2.docomo.test", &["192.0.2.2"])
            .ip("mx3.docomo.test", &["192.0.2.3"]);
        let d = run(destinations(&t, "docomo.ne.jp", 0)).expect("route");
        // Lowest preference first, a host listed twice once, equal
        // preferences in DNS order unless spun, every address of a host in turn.
        assert_eq!(
            hosts(&d),
            ["mx1.docomo.test 192.0.2.1", "mx1.docomo.test 2001:db8::1", "mx2.docomo.test 192.0.2.2", "mx3.docomo.test 192.0.2.3"]
        );
        let spun = run(destinations(&t, "docomo.ne.jp", 3)).expect("route");
        assert_eq!(
            hosts(&spun),
            ["mx1.docomo.test 192.0.2.1", "mx1.docomo.test 2001:db8::1", "mx3.docomo.test 192.0.2.3", "mx2.docomo.test 192.0.2.2"]
        );
    }

    #[test]
    fn no_mx_falls_back_to_the_domain_itself() {
        let t = Table::default().mx("a-only.test", &[]).ip("a-only.test", &["192.0.2.9"]);
        assert_eq!(hosts(&run(destinations(&t, "a-only.test", 0)).expect("route")), ["a-only.test 192.0.2.9"]);
        let t = Table::default().mx_err("a-only.test", DnsError::NoRecords).ip("a-only.test", &["192.0.2.9"]);
        assert_eq!(hosts(&run(destinations(&t, "a-only.test", 0)).expect("route")), ["a-only.test 192.0.2.9"]);
        // Neither MX nor address: the domain takes no mail.
        let t = Table::default().mx("txt-only.test", &[]).ip_err("txt-only.test", DnsError::NoRecords);
        assert!(matches!(run(destinations(&t, "txt-only.test", 0)), Err(NoRoute::Permanent(r)) if r.contains("no MX")));
    }

    #[test]
    fn null_mx_and_nxdomain_are_permanent() {
        let t = Table::default().mx("null.test", &[(0, "")]);
        assert!(matches!(run(destinations(&t, "null.test", 0)), Err(NoRoute::Permanent(r)) if r.contains("null MX")));
        let t = Table::default().mx("null.test", &[(0, ".")]);
        assert!(matches!(run(destinations(&t, "null.test", 0)), Err(NoRoute::Permanent(_))));
        let t = Table::default();
        assert!(matches!(run(destinations(&t, "gone.test", 0)), Err(NoRoute::Permanent(r)) if r.contains("NXDOMAIN")));
    }

    #[test]
    fn servfail_and_timeouts_are_temporary() {
        let t = Table::default().mx_err("docomo.ne.jp", DnsError::Temporary("SERVFAIL".into()));
        assert!(matches!(run(destinations(&t, "docomo.ne.jp", 0)), Err(NoRoute::Temporary(r)) if r.contains("SERVFAIL")));
        // The first MX host's address lookup times out, the second answers.
        let t = Table::default()
            .mx("docomo.ne.jp", &[(10, "mx1.docomo.test"), (20, "mx2.docomo.test")])
            .ip_err("mx1.docomo.test", DnsError::Temporary("timed out".into()))
            .ip("mx2.docomo.test", &["192.0.2.2"]);
        assert_eq!(hosts(&run(destinations(&t, "docomo.ne.jp", 0)).expect("route")), ["mx2.docomo.test 192.0.2.2"]);
        // Only a timeout: try later.
        let t = Table::default()
            .mx("docomo.ne.jp", &[(10, "mx1.docomo.test")])
            .ip_err("mx1.docomo.test", DnsError::Temporary("timed out".into()));
        assert!(matches!(run(destinations(&t, "docomo.ne.jp", 0)), Err(NoRoute::Temporary(_))));
        // MX hosts without addresses: a broken zone, also later.
        let t = Table::default().mx("docomo.ne.jp", &[(10, "mx1.docomo.test")]);
        assert!(matches!(run(destinations(&t, "docomo.ne.jp", 0)), Err(NoRoute::Temporary(r)) if r.contains("no MX host")));
    }

    #[test]
    fn addresses_are_bounded() {
        let t = Table::default()
            .mx("big.test", &[(10, "a.big.test"), (20, "b.big.test")])
            .ip("a.big.test", &["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"])
            .ip("b.big.test", &["192.0.2.5", "192.0.2.6", "192.0.2.7"]);
        let d = run(destinations(&t, "big.test", 0)).expect("route");
        assert_eq!(d.len(), MAX_ADDRESSES);
        assert_eq!(d[4].ip.to_string(), "192.0.2.5");
    }
}
