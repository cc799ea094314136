//! The [`Deliver`] implementation behind both entry points (the pipe command
//! and LMTP): classify a message and, for a registration request, record it
//! in the store and queue the 登録受付 mail.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;

use mamoru_core::token::{Claims, TokenKey};
use mamoru_core::{Config, EmailAddress, UnixTime, mail};
use mamoru_store::manage::{LinkMail, LinkRequest};
use mamoru_store::{Channel, RegistrationLimits, Store};

use crate::bounce;
use crate::classify::{self, Classification, Envelope, Rules};
use crate::{Deliver, Outcome};

/// Largest header section the classifier looks at; anything bigger is junk.
const MAX_HEADER_BYTES: usize = Rules::DEFAULT_MAX_HEADER_BYTES;

pub struct Registrar {
    cfg: Arc<Config>,
    store: Arc<Store>,
    tokens: TokenKey,
    clock: fn() -> UnixTime,
    classifier: Classifier,
    on_queued: Box<dyn Fn() + Send + Sync>,
}

/// The classification function; a parameter so tests can make it fail.
pub type Classifier = fn(&Rules<'_>, &Envelope<'_>, &[u8]) -> Classification;

impl Registrar {
    pub fn new(cfg: Arc<Config>, store: Arc<Store>, tokens: TokenKey) -> Self {
        Self { cfg, store, tokens, clock: mamoru_core::now, classifier: classify::classify, on_queued: Box::new(|| {}) }
    }

    /// Called after a mail was queued (the relay in the same process wakes up).
    pub fn on_queued(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_queued = Box::new(f);
        self
    }

    /// Replaces the clock, for tests.
    pub fn with_clock(mut self, clock: fn() -> UnixTime) -> Self {
        self.clock = clock;
        self
    }

    /// Replaces the classifier, for tests of the panic path.
    pub fn with_classifier(mut self, classifier: Classifier) -> Self {
        self.classifier = classifier;
        self
    }

    fn rules(&self) -> Rules<'_> {
        Rules { domain: &self.cfg.domain, register_local: &self.cfg.ingest.register_local, max_header_bytes: MAX_HEADER_BYTES }
    }

    fn register(&self, reply_to: &EmailAddress, recipient: &str) -> Outcome {
        let now = (self.clock)();
        let cfg = &self.cfg;
        let limits = RegistrationLimits::from(&cfg.limits);
        let expires_at = now + cfg.tokens.register_ttl_secs;
        let mut random = [0u8; 12];
        if let Err(e) = self.store.sealer().random(&mut random) {
            return Outcome::Transient(e.to_string());
        }
        // `ans+chuo@` pre-selects that district on the registration page.
        let preselect = cfg.district_of_recipient(recipient).map(|d| d.id);
        // An address already registered gets a manage link (登録内容の変更)
        // instead of a second registration.
        // The mail path spends its own global budget, apart from the PC form's.
        let channel = Channel::Mail;
        let result = self.store.request_link(reply_to, &channel, now, &limits, expires_at, preselect, |kind, subscriber, nonce| {
            let claims = Claims { purpose: kind.purpose(), subject: subscriber as u64, nonce, expires_at };
            let token = self.tokens.sign(&claims);
            let id = mail::message_id(&random, cfg);
            match kind {
                LinkMail::Register => mail::registration_received(cfg, reply_to, &token, now, id),
                LinkMail::Manage => mail::manage_link(cfg, reply_to, &token, now, id),
            }
        });
        match result {
            Ok(LinkRequest::Queued { kind, subscriber, outbox }) => {
                let what = if kind == LinkMail::Manage { "manage link requested; 登録内容の変更 queued" } else { "registration requested; 登録受付 queued" };
                tracing::info!(subscriber, outbox, to = %reply_to.masked(), "{what}");
                (self.on_queued)();
                Outcome::Stored
            }
            Ok(LinkRequest::Limited(limit)) => {
                tracing::info!(limit = limit.as_str(), to = %reply_to.masked(), "registration request dropped by rate limit");
                Outcome::Dropped(format!("rate limit: {}", limit.as_str()))
            }
            Err(e) => {
                tracing::warn!(error = %e, "store unavailable; asking the MTA to retry");
                Outcome::Transient(e.to_string())
            }
        }
    }

    /// Keeps a message that crashed the classifier for a human to look at,
    /// so the MTA does not retry it forever. Returns where it was written.
    fn quarantine(&self, message: &[u8]) -> std::io::Result<PathBuf> {
        let dir = self.cfg.data_dir.join("quarantine");
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let mut rand = [0u8; 6];
        self.store.sealer().random(&mut rand).map_err(std::io::Error::other)?;
        let name: String = rand.iter().map(|b| format!("{b:02x}")).collect();
        let path = dir.join(format!("{}-{name}.eml", (self.clock)()));
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        f.write_all(message)?;
        f.sync_all()?;
        Ok(path)
    }
}

impl Registrar {
    /// Like [`Deliver::deliver`], with the SASL login the front MTA passes
    /// for an authenticated submission (the pipe command's `--sasl-username`).
    /// Mail to the alert address goes to [`crate::alert_post`].
    pub fn deliver_authenticated(&self, sender: &str, recipient: &str, sasl_username: Option<&str>, message: &[u8]) -> Outcome {
        // Bounces to the VERP address go to their own handler (crate::bounce).
        if bounce::is_bounce_recipient(&self.cfg.domain, recipient) {
            let ctx = bounce::Context { cfg: &self.cfg, store: &self.store, tokens: &self.tokens, now: (self.clock)() };
            return bounce::handle(&ctx, recipient, message);
        }
        if !crate::alert_post::is_alert_recipient(&self.cfg, recipient) {
            return self.deliver_registration(sender, recipient, message);
        }
        let poster = crate::alert_post::AlertPoster { cfg: &self.cfg, store: &self.store, tokens: &self.tokens, clock: self.clock };
        let outcome = match catch_unwind(AssertUnwindSafe(|| poster.deliver(sender, sasl_username, message))) {
            Ok(o) => o,
            Err(_) => match self.quarantine(message) {
                Ok(path) => {
                    tracing::error!(path = %path.display(), "alert post handling panicked; message quarantined");
                    Outcome::Dropped("quarantined".into())
                }
                Err(e) => Outcome::Transient(format!("quarantine failed: {e}")),
            },
        };
        if outcome == Outcome::Stored {
            (self.on_queued)();
        }
        outcome
    }
}

impl Deliver for Registrar {
    fn accepts_recipient(&self, recipient: &str) -> bool {
        classify::is_register_recipient(&self.rules(), recipient)
            || bounce::is_bounce_recipient(&self.cfg.domain, recipient)
            || crate::alert_post::is_alert_recipient(&self.cfg, recipient)
    }

    /// LMTP carries no SASL login: an alert post by LMTP must be DKIM-authenticated.
    fn deliver(&self, sender: &str, recipient: &str, message: &[u8]) -> Outcome {
        self.deliver_authenticated(sender, recipient, None, message)
    }
}

impl Registrar {
    fn deliver_registration(&self, sender: &str, recipient: &str, message: &[u8]) -> Outcome {
        let env = Envelope { sender, recipient };
        let rules = self.rules();
        let class = catch_unwind(AssertUnwindSafe(|| (self.classifier)(&rules, &env, message)));
        match class {
            Ok(Classification::Register { reply_to }) => self.register(&reply_to, recipient),
            Ok(Classification::Drop(reason)) => {
                let from = EmailAddress::parse(sender).map(|a| a.masked()).unwrap_or_else(|_| "<unparsable>".into());
                tracing::info!(reason = reason.as_str(), from = %from, "inbound mail dropped without reply");
                Outcome::Dropped(reason.as_str().to_string())
            }
            Err(_) => match self.quarantine(message) {
                Ok(path) => {
                    tracing::error!(path = %path.display(), "classifier panicked; message quarantined");
                    Outcome::Dropped("quarantined".into())
                }
                Err(e) => {
                    tracing::error!(error = %e, "classifier panicked and quarantine failed");
                    Outcome::Transient(format!("quarantine failed: {e}"))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn registrar(dir: &std::path::Path) -> Registrar {
        let mut cfg = Config::default();
        cfg.domain = "mamoru.test".into();
        cfg.data_dir = dir.to_path_buf();
        let keys = mamoru_store::keys::load_or_create(dir).unwrap();
        let store = Store::open(dir, &keys, Duration::from_millis(100)).unwrap();
        Registrar::new(Arc::new(cfg), Arc::new(store), keys.token_key())
    }

    const MAIL: &[u8] = b"From: p@docomo.ne.jp\r\nSubject: \r\n\r\n";

    #[test]
    fn registers_drops_and_notifies() {
        let dir = tempfile::tempdir().unwrap();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let h = hits.clone();
        let r = registrar(dir.path()).on_queued(move || {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        assert!(r.accepts_recipient("ans@mamoru.test") && r.accepts_recipient("<ANS+chuo@Mamoru.Test>"));
        assert!(!r.accepts_recipient("info@mamoru.test") && !r.accepts_recipient("ans@other.test"));
        assert_eq!(r.deliver("p@docomo.ne.jp", "ans@mamoru.test", MAIL), Outcome::Stored);
        assert_eq!(r.deliver("p@docomo.ne.jp", "ans@mamoru.test", MAIL), Outcome::Dropped("rate limit: cooldown".into()));
        assert_eq!(r.deliver("", "ans@mamoru.test", MAIL), Outcome::Dropped("null-sender".into()));
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_classifier_panic_quarantines_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let r = registrar(dir.path()).with_classifier(|_, _, _| panic!("parser bug"));
        assert_eq!(r.deliver("p@docomo.ne.jp", "ans@mamoru.test", MAIL), Outcome::Dropped("quarantined".into()));
        let files: Vec<_> = fs::read_dir(dir.path().join("quarantine")).unwrap().collect();
        assert_eq!(files.len(), 1);
        let path = files.into_iter().next().unwrap().unwrap().path();
        assert_eq!(fs::read(&path).unwrap(), MAIL);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_panic_with_nowhere_to_quarantine_is_transient() {
        let dir = tempfile::tempdir().unwrap();
        let r = registrar(dir.path()).with_classifier(|_, _, _| panic!("parser bug"));
        fs::write(dir.path().join("quarantine"), b"a file where the directory should be").unwrap();
        assert!(matches!(r.deliver("p@docomo.ne.jp", "ans@mamoru.test", MAIL), Outcome::Transient(_)));
    }
}
