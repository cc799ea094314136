//! 確認しました: a reader of an alert that asks for confirmation presses
//! the link in their copy; mamoru counts it per alert, district and carrier
//! and never records who (see `mamoru_store::confirm`).
//!
//! [`App::confirm_view`] is the link's GET (a mail scanner changes nothing),
//! [`App::confirm`] its POST.

use mamoru_core::UnixTime;
use mamoru_core::alert::ConfirmKey;
use mamoru_core::token::Claims;
use mamoru_store::confirm::{ConfirmRow, Confirmed};

use crate::{App, Error};

impl App {
    /// The title of the alert a live 確認しました link confirms, if it
    /// still asks. Changes nothing.
    pub fn confirm_view(&self, claims: &Claims) -> Result<Option<String>, Error> {
        Ok(self.store.confirm_open(&ConfirmKey::from_subject(claims.subject))?)
    }

    /// Counts the copy's confirmation once.
    pub fn confirm(&self, claims: &Claims, now: UnixTime) -> Result<Confirmed, Error> {
        let key = ConfirmKey::from_subject(claims.subject);
        let done = self.store.confirm_copy(&key, &claims.nonce, claims.expires_at, now)?;
        if done == Confirmed::Counted {
            tracing::info!(alert = key.alert.get(), district = key.district, carrier = key.carrier_name(), "alert confirmation counted");
        }
        Ok(done)
    }

    /// Confirmed / delivered per district and carrier, for the panel.
    pub fn confirm_table(&self, alert: mamoru_core::AlertId) -> Result<Vec<ConfirmRow>, Error> {
        Ok(self.store.confirm_table(alert)?)
    }
}
