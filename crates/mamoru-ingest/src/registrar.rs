//! The [`Deliver`] implementation behind both entry points (the pipe command
//! and LMTP): classify a message and, for a registration request, record it
//! in the store and queue the 登録受付 mail.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;

use mamoru_app::App;
use mamoru_app::metrics::Entry;
use mamoru_app::registration::LinkOutcome;
use mamoru_core::{EmailAddress, UnixTime};
use mamoru_store::Channel;

use crate::bounce;
use crate::classify::{self, Classification, Envelope, Rules};
use crate::{Deliver, Outcome};

/// Largest header section the classifier looks at; anything bigger is junk.
pub const MAX_HEADER_BYTES: usize = Rules::DEFAULT_MAX_HEADER_BYTES;

/// The [`Outcome::Dropped`] reason of a message whose handler panicked and
/// that was kept in `DATA_DIR/quarantine/` (IMAP moves it to its quarantine
/// folder).
pub const QUARANTINED: &str = "quarantined";

pub struct Registrar {
    app: Arc<App>,
    clock: fn() -> UnixTime,
    classifier: Classifier,
    /// Which entry point hands the messages, for the inbound metrics.
    entry: Entry,
}

/// The classification function; a parameter so tests can make it fail.
pub type Classifier = fn(&Rules<'_>, &Envelope<'_>, &[u8]) -> Classification;

impl Registrar {
    /// The use cases mail leads to; a queued mail wakes the relay through
    /// [`App::wake`].
    pub fn new(app: Arc<App>) -> Self {
        Self { app, clock: mamoru_core::now, classifier: classify::classify, entry: Entry::Lmtp }
    }

    /// Names the entry point in the inbound metrics (LMTP unless told).
    pub fn with_entry(mut self, entry: Entry) -> Self {
        self.entry = entry;
        self
    }

    /// Counts one inbound mail by how it was classified: LMTP in the
    /// process's metrics, the pipe and IMAP in the store (their process may
    /// not be `mamoru serve`), in a transaction of its own right after the
    /// one that decided the outcome. Not inside it: a dropped mail has no
    /// transaction, and threading the counter through every use case's
    /// would tie them to the metrics. A crash between the two loses one
    /// count, never doubles one; a count that fails is logged and changes
    /// nothing else (the message is handled: retrying it for a metric would
    /// handle it twice).
    fn counted(&self, class: &'static str, outcome: Outcome) -> Outcome {
        let class = if matches!(outcome, Outcome::Transient(_)) { "transient" } else { class };
        if !self.entry.counted_in_store() {
            self.app.metrics().inbound(self.entry, class);
        } else if let Err(e) = self.app.store.count(mamoru_store::counters::INBOUND, &[self.entry.as_str(), class]) {
            self.app.metrics().store_error("ingest", matches!(e, mamoru_store::StoreError::Busy));
            tracing::warn!(error = %e, entry = self.entry.as_str(), class, "inbound mail not counted");
        }
        outcome
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
        let cfg = &self.app.cfg;
        Rules { domain: &cfg.domain, register_local: &cfg.ingest.register_local, max_header_bytes: MAX_HEADER_BYTES }
    }

    fn register(&self, reply_to: &EmailAddress, recipient: &str) -> Outcome {
        match self.app.request_link(reply_to, Channel::Mail, Some(recipient), (self.clock)()) {
            Ok(LinkOutcome::Queued { .. }) => Outcome::Stored,
            Ok(LinkOutcome::Limited(limit)) => Outcome::Dropped(format!("rate limit: {}", limit.as_str())),
            Ok(LinkOutcome::NoReply(why)) => Outcome::Dropped(format!("no reply: {why:?}")),
            Err(e) => {
                if let mamoru_app::Error::Store(s) = &e {
                    self.app.metrics().store_error("ingest", matches!(s, mamoru_store::StoreError::Busy));
                }
                crate::transient(&e)
            }
        }
    }

    /// Keeps a message that crashed the classifier for a human to look at,
    /// so the MTA does not retry it forever. Returns where it was written.
    fn quarantine(&self, message: &[u8]) -> std::io::Result<PathBuf> {
        let dir = self.app.cfg.data_dir.join("quarantine");
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let mut rand = [0u8; 6];
        self.app.store.sealer().random(&mut rand).map_err(std::io::Error::other)?;
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
        let app = &*self.app;
        if bounce::is_bounce_recipient(&app.cfg.domain, recipient) {
            return self.counted("bounce", bounce::handle(app, recipient, message, (self.clock)()));
        }
        if !crate::alert_post::is_alert_recipient(&app.cfg, recipient) {
            return self.deliver_registration(sender, recipient, message);
        }
        let poster = crate::alert_post::AlertPoster { app, clock: self.clock };
        let outcome = match catch_unwind(AssertUnwindSafe(|| poster.deliver(sender, sasl_username, message))) {
            Ok(o) => o,
            Err(_) => match self.quarantine(message) {
                Ok(path) => {
                    tracing::error!(path = %path.display(), "alert post handling panicked; message quarantined");
                    Outcome::Dropped(QUARANTINED.into())
                }
                Err(e) => Outcome::Transient(format!("quarantine failed: {e}")),
            },
        };
        self.counted("alert_post", outcome)
    }
}

impl Deliver for Registrar {
    fn accepts_recipient(&self, recipient: &str) -> bool {
        classify::is_register_recipient(&self.rules(), recipient)
            || bounce::is_bounce_recipient(&self.app.cfg.domain, recipient)
            || crate::alert_post::is_alert_recipient(&self.app.cfg, recipient)
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
            Ok(Classification::Register { reply_to }) => self.counted("registration", self.register(&reply_to, recipient)),
            Ok(Classification::Drop(reason)) => {
                let from = EmailAddress::parse(sender).map(|a| a.masked()).unwrap_or_else(|_| "<unparsable>".into());
                tracing::info!(reason = reason.as_str(), from = %from, "inbound mail dropped without reply");
                self.counted(reason.as_str(), Outcome::Dropped(reason.as_str().to_string()))
            }
            Err(_) => self.counted("quarantined", match self.quarantine(message) {
                Ok(path) => {
                    tracing::error!(path = %path.display(), "classifier panicked; message quarantined");
                    Outcome::Dropped(QUARANTINED.into())
                }
                Err(e) => {
                    tracing::error!(error = %e, "classifier panicked and quarantine failed");
                    Outcome::Transient(format!("quarantine failed: {e}"))
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn registrar(dir: &std::path::Path) -> Registrar {
        let mut cfg = mamoru_core::Config::default();
        cfg.domain = "mamoru.test".into();
        cfg.data_dir = dir.to_path_buf();
        let keys = mamoru_store::keys::load_or_create(dir).unwrap();
        let store = mamoru_store::Store::open(dir, &keys, Duration::from_millis(100)).unwrap();
        Registrar::new(Arc::new(App::new(Arc::new(cfg), Arc::new(store), keys.token_key())))
    }

    /// Whether the relay was woken since the last look.
    fn woken(r: &Registrar) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async { tokio::time::timeout(Duration::from_millis(5), r.app.wake().notified()).await.is_ok() })
    }

    const MAIL: &[u8] = b"From: p@docomo.ne.jp\r\nSubject: \r\n\r\n";

    #[test]
    fn registers_drops_and_notifies() {
        let dir = tempfile::tempdir().unwrap();
        let r = registrar(dir.path());
        assert!(r.accepts_recipient("ans@mamoru.test") && r.accepts_recipient("<ANS+chuo@Mamoru.Test>"));
        assert!(!r.accepts_recipient("info@mamoru.test") && !r.accepts_recipient("ans@other.test"));
        assert!(!woken(&r));
        assert_eq!(r.deliver("p@docomo.ne.jp", "ans@mamoru.test", MAIL), Outcome::Stored);
        assert!(woken(&r), "a queued mail wakes the relay");
        assert_eq!(r.deliver("p@docomo.ne.jp", "ans@mamoru.test", MAIL), Outcome::Dropped("rate limit: cooldown".into()));
        assert_eq!(r.deliver("", "ans@mamoru.test", MAIL), Outcome::Dropped("null-sender".into()));
        assert!(!woken(&r), "nothing queued, nobody woken");
    }

    #[test]
    fn every_inbound_mail_is_counted_by_entry_and_class() {
        let dir = tempfile::tempdir().unwrap();
        let r = registrar(dir.path()).with_entry(Entry::Pipe);
        r.deliver("p@docomo.ne.jp", "ans@mamoru.test", MAIL);
        r.deliver("p@docomo.ne.jp", "ans@mamoru.test", MAIL);
        r.deliver("", "ans@mamoru.test", MAIL);
        // The pipe counts in the store, where the serving process reads it.
        let stored: Vec<(String, String, u64)> =
            r.app.store.counters().expect("counters").into_iter().map(|c| (c.name, c.labels, c.value)).collect();
        for row in [("inbound", "pipe,null-sender", 1), ("inbound", "pipe,registration", 2), ("registrations_requested", "mail,register", 1)] {
            assert!(stored.contains(&(row.0.into(), row.1.into(), row.2)), "{row:?} missing from {stored:?}");
        }
        let text = r.app.metrics().encode();
        assert!(!text.contains("entry=\"pipe\""), "not in memory too:\n{text}");
        assert!(text.lines().any(|l| l == "mamoru_rate_limit_refusals_total{limit=\"cooldown\"} 1"), "{text}");
        // As the snapshot copies them: every stored row is taken, no address.
        for (name, labels, value) in &stored {
            assert!(r.app.metrics().stored(name, labels, *value), "{name} {labels}");
        }
        let text = r.app.metrics().encode();
        for line in [
            "mamoru_inbound_mails_total{entry=\"pipe\",class=\"registration\"} 2",
            "mamoru_inbound_mails_total{entry=\"pipe\",class=\"null-sender\"} 1",
            "mamoru_registrations_requested_total{channel=\"mail\",kind=\"register\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        assert!(!text.contains('@'), "no address in the metrics:\n{text}");
    }

    #[test]
    fn imap_mail_is_counted_in_the_store_as_its_own_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = registrar(dir.path()).with_entry(Entry::Imap);
        r.deliver("p@docomo.ne.jp", "ans@mamoru.test", MAIL);
        r.deliver("p@docomo.ne.jp", "ans@mamoru.test", b"From: p@docomo.ne.jp\r\nAuto-Submitted: auto-replied\r\n\r\n");
        let inbound: Vec<(String, u64)> = r
            .app
            .store
            .counters()
            .expect("counters")
            .into_iter()
            .filter(|c| c.name == "inbound")
            .map(|c| (c.labels, c.value))
            .collect();
        assert_eq!(inbound, [("imap,auto-submitted".to_string(), 1), ("imap,registration".to_string(), 1)]);
    }

    #[test]
    fn lmtp_counts_in_memory_and_every_drop_reason_is_a_known_class() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = registrar(dir.path());
        r.deliver("", "ans@mamoru.test", MAIL);
        assert!(r.app.store.counters().expect("counters").iter().all(|c| c.name != "inbound"));
        let text = r.app.metrics().encode();
        assert!(text.lines().any(|l| l == "mamoru_inbound_mails_total{entry=\"lmtp\",class=\"null-sender\"} 1"), "{text}");
        use classify::DropReason::*;
        for reason in [
            NullSender,
            MailerDaemon,
            AutoSubmitted,
            Precedence,
            MailingList,
            OwnDomain,
            InvalidSender,
            UnknownRecipient,
            HeadersTooLarge,
            MimeTooComplex,
        ] {
            assert!(mamoru_app::metrics::INBOUND_CLASSES.contains(&reason.as_str()), "{reason:?}");
        }
    }

    #[test]
    fn a_classifier_panic_quarantines_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let r = registrar(dir.path()).with_classifier(|_, _, _| panic!("parser bug"));
        assert_eq!(r.deliver("p@docomo.ne.jp", "ans@mamoru.test", MAIL), Outcome::Dropped(QUARANTINED.into()));
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
