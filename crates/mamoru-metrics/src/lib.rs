//! mamoru's Prometheus metrics: one [`Metrics`] per process, shared by the
//! parts that record (the use cases, ingest, web, relay) and encoded by the
//! metrics listener of `mamoru serve` in the Prometheus text format.
//!
//! Everything is recorded where it happens (counters, histograms) or from
//! the relay's once-a-second pool snapshot (queue shape and pool gauges):
//! encoding a scrape reads memory only, never the database. Events that may
//! happen in another process (the pipe command, IMAP ingest, `mamoru alert
//! post`) are counted in the store instead, and the same snapshot copies
//! those counters here ([`Metrics::stored`]): such a series has that one
//! source, never memory too, so nothing is counted twice.
//!
//! **Invariant:** no label value is ever an address, a token, a path that
//! holds a token or an admin ID. Every label is a pool name from the
//! configuration, or one word of a closed set chosen by the code (a
//! [`RouteClass`], a [`Delivery`], an [`Entry`], a limit's name, an HTTP
//! status, a reply class such as `4xx`); the recording methods take those
//! types, not free text.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the HTTP latency histogram.
const HTTP_BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Upper bounds (seconds) of the publish → last copy histogram.
const ALERT_BUCKETS: [f64; 14] =
    [1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14_400.0];

type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutboxLabels {
    pool: String,
    state: &'static str,
    age: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    pool: String,
    outcome: &'static str,
    reply_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PushBackLabels {
    pool: String,
    signal: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InboundLabels {
    entry: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    channel: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    component: &'static str,
    kind: &'static str,
}

/// The outcome of one delivery attempt, as the relay decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The next hop accepted the message.
    Sent,
    /// A temporary failure of this message alone; it is retried later.
    Deferred,
    /// A permanent failure (5xx, unknown user).
    Failed,
    /// The carrier pushed back on the pace; the pool paused.
    Throttled,
    /// The carrier refused the session; the message goes again.
    SessionRefused,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Sent => "sent",
            Delivery::Deferred => "deferred",
            Delivery::Failed => "failed",
            Delivery::Throttled => "throttled",
            Delivery::SessionRefused => "session_refused",
        }
    }
}

/// How a message came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `mamoru ingest`, run by the MTA per message.
    Pipe,
    /// LMTP to `mamoru serve`.
    Lmtp,
    /// A watched IMAP mailbox (`mamoru serve` or `ingest --imap-once`).
    Imap,
}

impl Entry {
    pub fn as_str(self) -> &'static str {
        match self {
            Entry::Pipe => "pipe",
            Entry::Lmtp => "lmtp",
            Entry::Imap => "imap",
        }
    }

    /// Whether this entry point's mails are counted in the store rather than
    /// in memory: the pipe command is a process per message, and IMAP
    /// mailboxes are also drained by `ingest --imap-once`. Only `mamoru
    /// serve` speaks LMTP.
    pub fn counted_in_store(self) -> bool {
        !matches!(self, Entry::Lmtp)
    }
}

/// Every class of inbound mail: what ingest made of it (`registration`,
/// `bounce`, `alert_post`), a drop reason, or `quarantined` / `transient`.
/// A class read back from the store is exposed only if it is one of these.
pub const INBOUND_CLASSES: [&str; 15] = [
    "registration",
    "bounce",
    "alert_post",
    "quarantined",
    "transient",
    "null-sender",
    "mailer-daemon",
    "auto-submitted",
    "precedence",
    "mailing-list",
    "own-domain",
    "invalid-sender",
    "unknown-recipient",
    "headers-too-large",
    "mime-too-complex",
];

/// The class of a web route: its first path segment, never the rest (which
/// may hold a token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// `/`.
    Index,
    /// `/style.css` and other fixed files.
    Static,
    /// `POST /register`, the PC form.
    Register,
    /// `/r/TOKEN`, the registration page.
    Registration,
    /// `/m/TOKEN`.
    Manage,
    /// `/u/TOKEN`.
    Unsubscribe,
    /// `/d/`, the district handouts.
    Districts,
    /// `/p/TOKEN`, the publish link.
    Publish,
    /// `/alerts`, page and feeds.
    Archive,
    /// `/admin`.
    Admin,
    /// Anything else (404s).
    Other,
}

impl RouteClass {
    /// The class of a request path.
    pub fn of(path: &str) -> Self {
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        match first {
            "" => RouteClass::Index,
            "style.css" | "favicon.ico" | "robots.txt" => RouteClass::Static,
            "register" => RouteClass::Register,
            "r" => RouteClass::Registration,
            "m" => RouteClass::Manage,
            "u" => RouteClass::Unsubscribe,
            "d" => RouteClass::Districts,
            "p" => RouteClass::Publish,
            "alerts" => RouteClass::Archive,
            "admin" => RouteClass::Admin,
            _ => RouteClass::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Index => "index",
            RouteClass::Static => "static",
            RouteClass::Register => "register",
            RouteClass::Registration => "registration",
            RouteClass::Manage => "manage",
            RouteClass::Unsubscribe => "unsubscribe",
            RouteClass::Districts => "districts",
            RouteClass::Publish => "publish",
            RouteClass::Archive => "archive",
            RouteClass::Admin => "admin",
            RouteClass::Other => "other",
        }
    }
}

/// The class of an SMTP reply code: `2xx`, `4xx`, `5xx`, or `none` (no
/// reply: a refused or reset connection, a timeout, the file transport).
pub fn reply_class(code: Option<u16>) -> &'static str {
    match code {
        Some(200..=299) => "2xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "none",
    }
}

/// A pool's live values, from the relay's snapshot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolGauges {
    /// Messages per second the shaper admits now (0 = no limit).
    pub pace: f64,
    /// The configured `rate_per_second` (0 = no limit).
    pub pace_ceiling: f64,
    /// The learned connection cap.
    pub connection_cap: i64,
    /// The configured `max_connections`.
    pub max_connections: i64,
    /// Connections open now.
    pub connections: i64,
    /// Seconds until the pool resumes; 0 when it is not paused.
    pub paused_secs: f64,
}

/// Every metric of the process, registered once in one [`Registry`].
pub struct Metrics {
    registry: Registry,
    outbox_rows: Family<OutboxLabels, Gauge>,
    outbox_oldest: Family<PoolLabels, Gauge>,
    deliveries: Family<DeliveryLabels, Counter>,
    push_backs: Family<PushBackLabels, Counter>,
    provoked_421: Family<PoolLabels, Counter>,
    pool_pace: Family<PoolLabels, FloatGauge>,
    pool_pace_ceiling: Family<PoolLabels, FloatGauge>,
    pool_connection_cap: Family<PoolLabels, Gauge>,
    pool_max_connections: Family<PoolLabels, Gauge>,
    pool_connections: Family<PoolLabels, Gauge>,
    pool_paused: Family<PoolLabels, Gauge>,
    pool_pause_remaining: Family<PoolLabels, FloatGauge>,
    inbound: Family<InboundLabels, Counter>,
    registrations_requested: Family<RequestLabels, Counter>,
    registrations_completed: Counter,
    rate_limited: Family<LimitLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily<RouteLabels>,
    alerts_published: Counter,
    alert_delivery: Histogram,
    store_errors: Family<StoreLabels, Counter>,
    store_retries: Family<StoreLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mamoru");
        let m = Self {
            registry: Registry::default(),
            outbox_rows: Family::default(),
            outbox_oldest: Family::default(),
            deliveries: Family::default(),
            push_backs: Family::default(),
            provoked_421: Family::default(),
            pool_pace: Family::default(),
            pool_pace_ceiling: Family::default(),
            pool_connection_cap: Family::default(),
            pool_max_connections: Family::default(),
            pool_connections: Family::default(),
            pool_paused: Family::default(),
            pool_pause_remaining: Family::default(),
            inbound: Family::default(),
            registrations_requested: Family::default(),
            registrations_completed: Counter::default(),
            rate_limited: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(|| Histogram::new(HTTP_BUCKETS)),
            alerts_published: Counter::default(),
            alert_delivery: Histogram::new(ALERT_BUCKETS),
            store_errors: Family::default(),
            store_retries: Family::default(),
        };
        let r = &mut registry;
        r.register("outbox_rows", "Outbox rows waiting (queued) or in flight (sending), by pool and age since queued", m.outbox_rows.clone());
        r.register_with_unit("outbox_oldest_age", "Age of the oldest waiting or in-flight outbox row of a pool (0 when none)", Unit::Seconds, m.outbox_oldest.clone());
        r.register("relay_deliveries", "Delivery attempts by pool, outcome and class of the carrier's reply", m.deliveries.clone());
        r.register("relay_push_backs", "Carrier push-backs by pool and signal (pace: too fast; sessions: too many sessions)", m.push_backs.clone());
        r.register("relay_provoked_421", "421 replies the relay's sending provoked, by pool", m.provoked_421.clone());
        r.register("pool_pace", "Messages per second the pool's shaper admits now (0 = no limit)", m.pool_pace.clone());
        r.register("pool_pace_ceiling", "The pool's configured rate_per_second (0 = no limit)", m.pool_pace_ceiling.clone());
        r.register("pool_connection_cap", "The pool's learned connection cap", m.pool_connection_cap.clone());
        r.register("pool_max_connections", "The pool's configured max_connections", m.pool_max_connections.clone());
        r.register("pool_connections", "SMTP connections the pool has open", m.pool_connections.clone());
        r.register("pool_paused", "1 while the pool is paused after a push-back, else 0", m.pool_paused.clone());
        r.register_with_unit("pool_pause_remaining", "Time until the pool resumes (0 when not paused)", Unit::Seconds, m.pool_pause_remaining.clone());
        r.register("inbound_mails", "Inbound mails by entry point and classification", m.inbound.clone());
        r.register("registrations_requested", "Link mails queued (登録受付 or 登録内容の変更), by channel and kind", m.registrations_requested.clone());
        r.register("registrations_completed", "Registrations completed (districts chosen, 登録完了 queued)", m.registrations_completed.clone());
        r.register("rate_limit_refusals", "Requests refused by a rate limit, by limit", m.rate_limited.clone());
        r.register("http_requests", "HTTP requests by route class and status", m.http_requests.clone());
        r.register_with_unit("http_request_duration", "HTTP request latency by route class", Unit::Seconds, m.http_duration.clone());
        r.register("alerts_published", "Alerts published", m.alerts_published.clone());
        r.register_with_unit(
            "alert_delivery",
            "Time from an alert's publication to its last copy delivered or given up",
            Unit::Seconds,
            m.alert_delivery.clone(),
        );
        r.register("store_errors", "Store operations that failed, by component and kind (busy: the database stayed locked)", m.store_errors.clone());
        r.register("store_retries", "Store operations retried after a failure, by component and kind", m.store_retries.clone());
        // Series that alerting rules compare over time exist from the start
        // at 0, so the first request is an increase and not a new series.
        for channel in ["mail", "form"] {
            for kind in ["register", "manage"] {
                let _ = m.registrations_requested.get_or_create(&RequestLabels { channel, kind });
            }
        }
        Self { registry, ..m }
    }

    /// The whole registry in the Prometheus text exposition format (0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// One delivery attempt of `pool`, with the carrier's reply code if
    /// there was a reply.
    pub fn delivery(&self, pool: &str, outcome: Delivery, code: Option<u16>) {
        let labels = DeliveryLabels { pool: pool.to_string(), outcome: outcome.as_str(), reply_class: reply_class(code) };
        self.deliveries.get_or_create(&labels).inc();
    }

    /// A push-back of `pool`'s carrier; `signal` is `pace` or `sessions`.
    pub fn push_back(&self, pool: &str, signal: &'static str, code: Option<u16>) {
        self.push_backs.get_or_create(&PushBackLabels { pool: pool.to_string(), signal }).inc();
        if code == Some(421) {
            self.provoked_421.get_or_create(&PoolLabels { pool: pool.to_string() }).inc();
        }
    }

    /// The live values of `pool`, from the relay's snapshot.
    pub fn pool(&self, pool: &str, g: PoolGauges) {
        let l = PoolLabels { pool: pool.to_string() };
        self.pool_pace.get_or_create(&l).set(g.pace);
        self.pool_pace_ceiling.get_or_create(&l).set(g.pace_ceiling);
        self.pool_connection_cap.get_or_create(&l).set(g.connection_cap);
        self.pool_max_connections.get_or_create(&l).set(g.max_connections);
        self.pool_connections.get_or_create(&l).set(g.connections);
        self.pool_paused.get_or_create(&l).set(i64::from(g.paused_secs > 0.0));
        self.pool_pause_remaining.get_or_create(&l).set(g.paused_secs.max(0.0));
    }

    /// Outbox rows of `pool` in `state` (`queued` or `sending`) within one
    /// age bucket (`age`, e.g. `5m-10m`), from the relay's snapshot.
    pub fn outbox_rows(&self, pool: &str, state: &'static str, age: &'static str, rows: i64) {
        self.outbox_rows.get_or_create(&OutboxLabels { pool: pool.to_string(), state, age }).set(rows);
    }

    /// The age in seconds of `pool`'s oldest waiting or in-flight row.
    pub fn outbox_oldest(&self, pool: &str, secs: i64) {
        self.outbox_oldest.get_or_create(&PoolLabels { pool: pool.to_string() }).set(secs.max(0));
    }

    /// An inbound mail by LMTP and how it was classified (`registration`,
    /// `bounce`, `alert_post`, or a drop reason such as `auto-submitted`).
    /// The other entry points count in the store ([`Entry::counted_in_store`]).
    pub fn inbound(&self, entry: Entry, class: &'static str) {
        debug_assert!(!entry.counted_in_store(), "{} mails are counted in the store", entry.as_str());
        self.inbound.get_or_create(&InboundLabels { entry: entry.as_str(), class }).inc();
    }

    /// The value of a counter kept in the store (name and `,`-joined labels
    /// as the store has them), from the relay's snapshot: the series is
    /// raised to it, never lowered, so it stays monotonic within the process
    /// (a value below what was exposed, as after restoring an older backup,
    /// changes nothing until it is passed again). A name or a label value
    /// outside the closed sets is ignored; returns whether it was taken.
    pub fn stored(&self, name: &str, labels: &str, value: u64) -> bool {
        fn raise(c: &Counter, to: u64) {
            let was = c.get();
            if to > was {
                c.inc_by(to - was);
            }
        }
        fn pick(set: &[&'static str], v: &str) -> Option<&'static str> {
            set.iter().copied().find(|s| *s == v)
        }
        let mut parts = labels.split(',');
        let (a, b, rest) = (parts.next().unwrap_or(""), parts.next(), parts.next());
        match (name, b, rest) {
            ("inbound", Some(b), None) => {
                let entry = [Entry::Pipe, Entry::Imap].into_iter().find(|e| e.as_str() == a);
                match (entry, pick(&INBOUND_CLASSES, b)) {
                    (Some(e), Some(class)) => raise(&self.inbound.get_or_create(&InboundLabels { entry: e.as_str(), class }), value),
                    _ => return false,
                }
            }
            ("registrations_requested", Some(b), None) => match (pick(&["mail", "form"], a), pick(&["register", "manage"], b)) {
                (Some(channel), Some(kind)) => raise(&self.registrations_requested.get_or_create(&RequestLabels { channel, kind }), value),
                _ => return false,
            },
            ("alerts_published", None, None) if a.is_empty() => raise(&self.alerts_published, value),
            _ => return false,
        }
        true
    }

    pub fn registration_completed(&self) {
        self.registrations_completed.inc();
    }

    /// A request refused by the limit named `limit`.
    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited.get_or_create(&LimitLabels { limit }).inc();
    }

    /// One answered HTTP request and how long it took.
    pub fn http(&self, route: RouteClass, status: u16, secs: f64) {
        self.http_requests.get_or_create(&HttpLabels { route: route.as_str(), status }).inc();
        self.http_duration.get_or_create(&RouteLabels { route: route.as_str() }).observe(secs);
    }

    /// An alert's last copy was delivered (or given up) `secs` after it was
    /// published.
    pub fn alert_delivered(&self, secs: f64) {
        self.alert_delivery.observe(secs.max(0.0));
    }

    /// A store operation of `component` failed; `busy` when the database
    /// stayed locked past the busy timeout.
    pub fn store_error(&self, component: &'static str, busy: bool) {
        self.store_errors.get_or_create(&StoreLabels { component, kind: if busy { "busy" } else { "other" } }).inc();
    }

    /// A store operation of `component` is tried again after a failure.
    pub fn store_retry(&self, component: &'static str, busy: bool) {
        self.store_retries.get_or_create(&StoreLabels { component, kind: if busy { "busy" } else { "other" } }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_classes_never_keep_the_rest_of_the_path() {
        for (path, class) in [
            ("/", RouteClass::Index),
            ("/style.css", RouteClass::Static),
            ("/register", RouteClass::Register),
            ("/r/AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUm", RouteClass::Registration),
            ("/m/x", RouteClass::Manage),
            ("/u/x", RouteClass::Unsubscribe),
            ("/d/3", RouteClass::Districts),
            ("/p/x", RouteClass::Publish),
            ("/alerts/feed.atom", RouteClass::Archive),
            ("/admin/login", RouteClass::Admin),
            ("/p***@docomo.ne.jp", RouteClass::Other),
            ("//", RouteClass::Index),
        ] {
            assert_eq!(RouteClass::of(path), class, "{path}");
        }
    }

    #[test]
    fn reply_classes() {
        assert_eq!(reply_class(Some(250)), "2xx");
        assert_eq!(reply_class(Some(421)), "4xx");
        assert_eq!(reply_class(Some(550)), "5xx");
        assert_eq!(reply_class(None), "none");
        assert_eq!(reply_class(Some(999)), "none");
    }

    #[test]
    fn the_text_format_names_every_family_with_its_labels() {
        let m = Metrics::new();
        m.delivery("docomo", Delivery::Sent, Some(250));
        m.delivery("docomo", Delivery::Throttled, Some(421));
        m.push_back("docomo", "pace", Some(421));
        m.push_back("au", "sessions", Some(450));
        m.pool("docomo", PoolGauges { pace: 2.5, pace_ceiling: 5.0, connection_cap: 2, max_connections: 4, connections: 1, paused_secs: 3.0 });
        m.outbox_rows("docomo", "queued", "0-5m", 7);
        m.outbox_oldest("docomo", 42);
        m.inbound(Entry::Lmtp, "registration");
        assert!(m.stored("inbound", "pipe,registration", 3));
        assert!(m.stored("registrations_requested", "mail,register", 1));
        m.registration_completed();
        m.rate_limited("cooldown");
        m.http(RouteClass::Registration, 200, 0.003);
        assert!(m.stored("alerts_published", "", 1));
        m.alert_delivered(12.0);
        m.store_error("web", true);
        m.store_retry("relay", false);
        let text = m.encode();
        for line in [
            "# TYPE mamoru_relay_deliveries_total counter",
            "mamoru_relay_deliveries_total{pool=\"docomo\",outcome=\"sent\",reply_class=\"2xx\"} 1",
            "mamoru_relay_deliveries_total{pool=\"docomo\",outcome=\"throttled\",reply_class=\"4xx\"} 1",
            "mamoru_relay_push_backs_total{pool=\"au\",signal=\"sessions\"} 1",
            "mamoru_relay_provoked_421_total{pool=\"docomo\"} 1",
            "mamoru_pool_pace{pool=\"docomo\"} 2.5",
            "mamoru_pool_connection_cap{pool=\"docomo\"} 2",
            "mamoru_pool_paused{pool=\"docomo\"} 1",
            "mamoru_pool_pause_remaining_seconds{pool=\"docomo\"} 3.0",
            "mamoru_outbox_rows{pool=\"docomo\",state=\"queued\",age=\"0-5m\"} 7",
            "mamoru_outbox_oldest_age_seconds{pool=\"docomo\"} 42",
            "mamoru_inbound_mails_total{entry=\"lmtp\",class=\"registration\"} 1",
            "mamoru_inbound_mails_total{entry=\"pipe\",class=\"registration\"} 3",
            "mamoru_registrations_requested_total{channel=\"mail\",kind=\"register\"} 1",
            "mamoru_registrations_completed_total 1",
            "mamoru_rate_limit_refusals_total{limit=\"cooldown\"} 1",
            "mamoru_http_requests_total{route=\"registration\",status=\"200\"} 1",
            "mamoru_http_request_duration_seconds_count{route=\"registration\"} 1",
            "mamoru_alerts_published_total 1",
            "mamoru_alert_delivery_seconds_bucket{le=\"30\"} 1",
            "mamoru_store_errors_total{component=\"web\",kind=\"busy\"} 1",
            "mamoru_store_retries_total{component=\"relay\",kind=\"other\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        // The provoked-421 counter counts 421s only.
        assert!(!text.contains("mamoru_relay_provoked_421_total{pool=\"au\"}"));
        // Requests the rules compare over an hour start at 0.
        assert!(text.lines().any(|l| l == "mamoru_registrations_requested_total{channel=\"form\",kind=\"register\"} 0"), "{text}");
    }

    #[test]
    fn stored_counters_never_go_backwards_and_unknown_labels_are_ignored() {
        let m = Metrics::new();
        let line = |m: &Metrics| {
            m.encode().lines().find(|l| l.starts_with("mamoru_inbound_mails_total{entry=\"pipe\",class=\"bounce\"}")).map(str::to_string)
        };
        assert!(m.stored("inbound", "pipe,bounce", 5));
        assert_eq!(line(&m).as_deref(), Some("mamoru_inbound_mails_total{entry=\"pipe\",class=\"bounce\"} 5"));
        // A lower value (an older backup restored) leaves the series alone.
        assert!(m.stored("inbound", "pipe,bounce", 2));
        assert_eq!(line(&m).as_deref(), Some("mamoru_inbound_mails_total{entry=\"pipe\",class=\"bounce\"} 5"));
        assert!(m.stored("inbound", "pipe,bounce", 7));
        assert_eq!(line(&m).as_deref(), Some("mamoru_inbound_mails_total{entry=\"pipe\",class=\"bounce\"} 7"));
        // Outside the closed sets: nothing is created.
        for (name, labels) in [
            ("inbound", "pipe,p@docomo.ne.jp"),
            ("inbound", "lmtp,registration"),
            ("inbound", "pipe,registration,x"),
            ("registrations_requested", "mail,other"),
            ("alerts_published", "x"),
            ("something_newer", ""),
        ] {
            assert!(!m.stored(name, labels, 1), "{name} {labels}");
        }
        let text = m.encode();
        assert!(!text.contains('@') && !text.contains("other") && !text.contains("lmtp"), "{text}");
    }
}
