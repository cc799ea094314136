//! Alert copies rendered at send time.
//!
//! Publishing an alert queues one row per subscriber without content
//! (`Store::publish_alert`), so the publishing transaction stays small. The
//! claim returns such a row with a [`mamoru_store::AlertRef`]; the feeder
//! renders it here, right after the claim and before DKIM and VERP, with the
//! hook the binary gives ([`RenderAlert`]) and the alert row, read once per
//! alert and kept.
//!
//! **Invariant:** the hook is a pure function of the alert row (whose
//! `published_at` is the time it uses), the subscriber, the address and the
//! footer-link nonce, so a row sent twice (a retry, or a lease run out after
//! a crash) is byte-identical before DKIM.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mamoru_core::token::Nonce;
use mamoru_core::{EmailAddress, UnixTime};
use mamoru_store::alerts::{AlertId, AlertRow};
use mamoru_store::relay::OutcomeRecord;
use mamoru_store::{QueuedMail, Store, SubscriberId};

/// Renders one subscriber's copy of an alert to RFC 5322 bytes: alert row,
/// subscriber id, address, footer-link nonce. An empty result means the
/// message could not be rendered.
pub type RenderAlert = Arc<dyn Fn(&AlertRow, SubscriberId, &EmailAddress, Nonce) -> Vec<u8> + Send + Sync>;

/// Alert rows kept at most; alerts are few, and a full cache is simply
/// emptied.
const CACHE_MAX: usize = 64;

/// How long a row waits when its alert cannot be read right now.
const RETRY_SECS: i64 = 5;

pub(crate) struct Splicer {
    render: Option<RenderAlert>,
    alerts: Mutex<HashMap<AlertId, Arc<AlertRow>>>,
}

impl Splicer {
    pub(crate) fn new(render: Option<RenderAlert>) -> Self {
        Self { render, alerts: Mutex::new(HashMap::new()) }
    }

    /// Renders the alert rows of a claimed batch in place. Rows that cannot
    /// be rendered are taken out, with the outcome to record for them.
    /// Blocking: may read alert rows from the store.
    pub(crate) fn splice(&self, store: &Store, batch: Vec<QueuedMail>, now: UnixTime) -> (Vec<QueuedMail>, Vec<(i64, OutcomeRecord)>) {
        let mut ready = Vec::with_capacity(batch.len());
        let mut dropped = Vec::new();
        for mut mail in batch {
            let Some(a) = mail.alert else {
                ready.push(mail);
                continue;
            };
            let Some(render) = &self.render else {
                tracing::error!(outbox = mail.id, alert = a.alert_id, "alert row but no alert renderer configured");
                dropped.push((mail.id, OutcomeRecord::Failed { reason: "no alert renderer configured".into() }));
                continue;
            };
            let row = match self.alert(store, a.alert_id) {
                Ok(Some(row)) => row,
                Ok(None) => {
                    tracing::error!(outbox = mail.id, alert = a.alert_id, "the row's alert does not exist");
                    dropped.push((mail.id, OutcomeRecord::Failed { reason: format!("alert {} not found", a.alert_id) }));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(outbox = mail.id, alert = a.alert_id, error = %e, "cannot read the alert; retrying");
                    let reason = format!("cannot read alert {}: {e}", a.alert_id);
                    dropped.push((mail.id, OutcomeRecord::Retry { at: now.saturating_add(RETRY_SECS), reason }));
                    continue;
                }
            };
            mail.content = render(&row, a.subscriber_id, &mail.recipient, a.link_nonce);
            if mail.content.is_empty() {
                tracing::error!(outbox = mail.id, alert = a.alert_id, "cannot render the alert");
                dropped.push((mail.id, OutcomeRecord::Failed { reason: "cannot render the alert".into() }));
                continue;
            }
            ready.push(mail);
        }
        (ready, dropped)
    }

    fn alert(&self, store: &Store, id: AlertId) -> mamoru_store::Result<Option<Arc<AlertRow>>> {
        if let Some(row) = self.cache().get(&id) {
            return Ok(Some(Arc::clone(row)));
        }
        // Read outside the lock; two feeders may both read, harmlessly.
        let Some(row) = store.alert(id)? else { return Ok(None) };
        let row = Arc::new(row);
        let mut cache = self.cache();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(id, Arc::clone(&row));
        Ok(Some(row))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<AlertId, Arc<AlertRow>>> {
        // A map of immutable rows cannot be left torn by a panic.
        self.alerts.lock().unwrap_or_else(|p| p.into_inner())
    }
}
