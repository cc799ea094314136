//! Alert copies rendered at send time.
//!
//! Publishing an alert queues one copy per subscriber without content
//! (`Store::publish_alert`), so the publishing transaction stays small. The
//! claim makes each an outbox row and returns it with a [`mamoru_store::AlertRef`]; the feeder
//! renders it here, right after the claim and before DKIM and VERP, with
//! [`mamoru_app::App::alert_copy`] (which reads each alert once and keeps
//! it), so a row sent twice is byte-identical before DKIM.

use std::sync::Arc;

use mamoru_app::App;
use mamoru_core::UnixTime;
use mamoru_store::{OutboxId, QueuedMail};
use mamoru_store::relay::OutcomeRecord;

/// How long a row waits when its alert cannot be read right now.
const RETRY_SECS: i64 = 5;

pub(crate) struct Splicer {
    app: Arc<App>,
}

impl Splicer {
    pub(crate) fn new(app: Arc<App>) -> Self {
        Self { app }
    }

    /// Renders the alert rows of a claimed batch in place. Rows that cannot
    /// be rendered are taken out, with the outcome to record for them.
    /// Blocking: may read alert rows from the store.
    pub(crate) fn splice(&self, batch: Vec<QueuedMail>, now: UnixTime) -> (Vec<QueuedMail>, Vec<(OutboxId, OutcomeRecord)>) {
        let mut ready = Vec::with_capacity(batch.len());
        let mut dropped = Vec::new();
        for mut mail in batch {
            let Some(a) = mail.alert else {
                ready.push(mail);
                continue;
            };
            match self.app.alert_copy(a.alert_id, a.subscriber_id, &mail.recipient, a.link_nonce) {
                Ok(Some(content)) => {
                    mail.content = content;
                    ready.push(mail);
                }
                Ok(None) => {
                    tracing::error!(outbox = mail.id.get(), alert = a.alert_id.get(), "the row's alert does not exist");
                    dropped.push((mail.id, OutcomeRecord::Failed { reason: format!("alert {} not found", a.alert_id) }));
                }
                Err(e) => {
                    tracing::warn!(outbox = mail.id.get(), alert = a.alert_id.get(), error = %e, "cannot read the alert; retrying");
                    let reason = format!("cannot read alert {}: {e}", a.alert_id);
                    dropped.push((mail.id, OutcomeRecord::Retry { at: now.saturating_add(RETRY_SECS), reason }));
                }
            }
        }
        (ready, dropped)
    }
}
