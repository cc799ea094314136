//! Carrier pools: which recipient domains belong to which mobile carrier, and
//! how fast the relay may send to each.
//!
//! The carriers publish no numbers, so the built-in limits are conservative
//! guesses; `[carriers.NAME]` tables override them key by key. A table for a
//! new name creates a pool; a domain listed in a table leaves the built-in
//! pool that had it. Every domain not listed anywhere goes to the pool named
//! [`DEFAULT_POOL`].

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::config::Transport;

/// The pool for every domain no other pool lists.
pub const DEFAULT_POOL: &str = "default";

/// Never more than 100 RCPT per session.
pub const MAX_MESSAGES_PER_CONNECTION: u32 = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct CarrierConfig {
    /// Recipient domains of this pool, lower case, exact match.
    pub domains: Vec<String>,
    /// Open SMTP connections at most.
    pub max_connections: u32,
    /// Messages sent over one connection before it is closed and reopened.
    pub messages_per_connection: u32,
    /// Messages per second at most (token bucket); 0 = no limit.
    pub rate_per_second: f64,
    /// Messages that may go at once after an idle period (bucket size).
    pub burst: u32,
    /// Where this pool's mail goes; `None` (an empty string in the file) =
    /// the relay's `transport`.
    pub route: Option<Transport>,
    /// The charset of this pool's mail as it leaves: UTF-8, or ISO-2022-JP
    /// for carriers whose older handsets show nothing else.
    pub charset: Charset,
}

/// `[carriers.NAME] charset`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Charset {
    #[default]
    #[serde(rename = "utf-8")]
    Utf8,
    #[serde(rename = "iso-2022-jp")]
    Iso2022Jp,
}

/// A `[carriers.NAME]` table as written: each key optional, falling back to
/// the built-in pool of that name (or [`CarrierConfig::fallback`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CarrierPatch {
    domains: Option<Vec<String>>,
    max_connections: Option<u32>,
    messages_per_connection: Option<u32>,
    rate_per_second: Option<f64>,
    burst: Option<u32>,
    #[serde(default, deserialize_with = "some_route")]
    route: Option<Option<Transport>>,
    charset: Option<Charset>,
}

impl CarrierConfig {
    /// The values a new pool without a built-in counterpart starts from.
    pub fn fallback() -> Self {
        Self {
            domains: Vec::new(),
            max_connections: 2,
            messages_per_connection: 50,
            rate_per_second: 5.0,
            burst: 5,
            route: None,
            charset: Charset::Utf8,
        }
    }

    fn carrier(domains: &[&str]) -> Self {
        // docomo and SoftBank are known to block senders that open many
        // connections or send dozens of messages at once; 2 connections at
        // 10 msg/s is what small senders report getting through unthrottled.
        Self {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            max_connections: 2,
            messages_per_connection: 50,
            rate_per_second: 10.0,
            burst: 5,
            route: None,
            charset: Charset::Utf8,
        }
    }
}

/// The built-in pools.
pub fn default_carriers() -> BTreeMap<String, CarrierConfig> {
    let mut m = BTreeMap::new();
    m.insert("docomo".to_string(), CarrierConfig::carrier(&["docomo.ne.jp"]));
    m.insert("au".to_string(), CarrierConfig::carrier(&["ezweb.ne.jp", "au.com", "biz.au.com", "uqmobile.jp"]));
    m.insert("softbank".to_string(), CarrierConfig::carrier(&["softbank.ne.jp", "i.softbank.jp", "disney.ne.jp"]));
    m.insert("ymobile".to_string(), CarrierConfig::carrier(&["ymobile.ne.jp", "yahoo.ne.jp"]));
    m.insert(
        DEFAULT_POOL.to_string(),
        CarrierConfig {
            domains: Vec::new(),
            max_connections: 4,
            messages_per_connection: MAX_MESSAGES_PER_CONNECTION,
            rate_per_second: 0.0,
            burst: 10,
            route: None,
            charset: Charset::Utf8,
        },
    );
    m
}

/// A `route` key that is present: `Some` of the route it names.
fn some_route<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Transport>>, D::Error> {
    crate::config::route(d).map(Some)
}

/// Deserializes `[carriers.*]` as overrides of [`default_carriers`].
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, CarrierConfig>, D::Error> {
    let patches: BTreeMap<String, CarrierPatch> = BTreeMap::deserialize(d)?;
    Ok(merge(default_carriers(), patches))
}

fn merge(mut pools: BTreeMap<String, CarrierConfig>, patches: BTreeMap<String, CarrierPatch>) -> BTreeMap<String, CarrierConfig> {
    let moved: Vec<(String, String)> = patches
        .iter()
        .flat_map(|(name, p)| p.domains.iter().flatten().map(move |d| (name.clone(), d.to_ascii_lowercase())))
        .collect();
    // A domain named in a table leaves every other pool that had it.
    for (owner, domain) in &moved {
        for (name, pool) in pools.iter_mut() {
            if name != owner {
                pool.domains.retain(|d| d != domain);
            }
        }
    }
    for (name, p) in patches {
        let pool = pools.entry(name).or_insert_with(CarrierConfig::fallback);
        if let Some(domains) = p.domains {
            pool.domains = domains.into_iter().map(|d| d.to_ascii_lowercase()).collect();
        }
        if let Some(v) = p.max_connections {
            pool.max_connections = v;
        }
        if let Some(v) = p.messages_per_connection {
            pool.messages_per_connection = v;
        }
        if let Some(v) = p.rate_per_second {
            pool.rate_per_second = v;
        }
        if let Some(v) = p.burst {
            pool.burst = v;
        }
        if let Some(v) = p.route {
            pool.route = v;
        }
        if let Some(v) = p.charset {
            pool.charset = v;
        }
    }
    pools
}

/// Checks each pool; the error is `(key, reason)`.
pub fn validate(pools: &BTreeMap<String, CarrierConfig>) -> Result<(), (String, String)> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, p) in pools {
        let key = |k: &str| format!("carriers.{name}.{k}");
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-') {
            return Err((format!("carriers.{name}"), "pool names are lower-case letters, digits, - and _".into()));
        }
        if !(1..=256).contains(&p.max_connections) {
            return Err((key("max_connections"), "must be from 1 to 256".into()));
        }
        if !(1..=MAX_MESSAGES_PER_CONNECTION).contains(&p.messages_per_connection) {
            return Err((key("messages_per_connection"), format!("must be from 1 to {MAX_MESSAGES_PER_CONNECTION}")));
        }
        if !p.rate_per_second.is_finite() || p.rate_per_second < 0.0 {
            return Err((key("rate_per_second"), "must be 0 (no limit) or positive".into()));
        }
        if p.burst == 0 {
            return Err((key("burst"), "must be 1 or more".into()));
        }
        for d in &p.domains {
            if d.is_empty() || !d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
                return Err((key("domains"), format!("{d:?} is not a domain")));
            }
            if let Some(other) = seen.insert(d, name) {
                return Err((key("domains"), format!("{d} is also in pool {other}")));
            }
        }
        if name == DEFAULT_POOL && !p.domains.is_empty() {
            return Err((key("domains"), "the default pool takes every other domain; list none".into()));
        }
    }
    Ok(())
}

/// The pool a recipient domain belongs to (pure; case-insensitive).
pub fn pool_of<'a>(pools: &'a BTreeMap<String, CarrierConfig>, domain: &str) -> &'a str {
    let domain = domain.to_ascii_lowercase();
    pools
        .iter()
        .find(|(_, p)| p.domains.contains(&domain))
        .map(|(name, _)| name.as_str())
        .unwrap_or(DEFAULT_POOL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charset_is_utf8_unless_a_pool_says_otherwise() {
        let patches: BTreeMap<String, CarrierPatch> =
            toml::from_str("[softbank]\ncharset = \"iso-2022-jp\"\n").expect("parse");
        let pools = merge(default_carriers(), patches);
        assert_eq!(pools["softbank"].charset, Charset::Iso2022Jp);
        assert_eq!(pools["docomo"].charset, Charset::Utf8);
        assert!(toml::from_str::<BTreeMap<String, CarrierPatch>>("[au]\ncharset = \"sjis\"\n").is_err());
    }

    #[test]
    fn built_in_selection() {
        let p = default_carriers();
        assert_eq!(pool_of(&p, "docomo.ne.jp"), "docomo");
        assert_eq!(pool_of(&p, "EZweb.ne.jp"), "au");
        assert_eq!(pool_of(&p, "uqmobile.jp"), "au");
        assert_eq!(pool_of(&p, "i.softbank.jp"), "softbank");
        assert_eq!(pool_of(&p, "yahoo.ne.jp"), "ymobile");
        assert_eq!(pool_of(&p, "gmail.com"), DEFAULT_POOL);
        assert_eq!(pool_of(&p, "sub.docomo.ne.jp"), DEFAULT_POOL);
        assert!(validate(&p).is_ok());
    }

    #[test]
    fn overrides_merge_and_move_domains() {
        let patches: BTreeMap<String, CarrierPatch> = toml::from_str(
            "[docomo]\nrate_per_second = 3.5\n[kddi]\ndomains = [\"EZWEB.ne.jp\"]\nmax_connections = 1\n",
        )
        .expect("toml");
        let p = merge(default_carriers(), patches);
        assert_eq!(p["docomo"].rate_per_second, 3.5);
        assert_eq!(p["docomo"].max_connections, 2);
        assert_eq!(pool_of(&p, "ezweb.ne.jp"), "kddi");
        assert_eq!(pool_of(&p, "au.com"), "au");
        assert_eq!(p["kddi"].max_connections, 1);
        assert!(validate(&p).is_ok());
    }
}
