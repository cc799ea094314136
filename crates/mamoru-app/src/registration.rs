//! Registration, from the first empty mail to the last click.
//!
//! 1. [`App::request_link`]: an empty mail to `ans@` or the PC form asks for
//!    a link. A new address gets 登録受付 with a registration link; one that
//!    is already registered gets 登録内容の変更 with a one-time manage link.
//!    Both channels share the per-mailbox limits; each spends its own
//!    global budget (the form also a per-client one).
//! 2. [`App::registration_view`] / [`App::complete_registration`]: the link's
//!    page shows the districts; saving them consumes the token and queues
//!    登録完了.
//! 3. [`App::manage_view`], [`App::change_districts`],
//!    [`App::delete_registration`]: the manage page (`/m/`, one-time or
//!    footer link) and one-click unsubscribe (`/u/`).
//!
//! Tokens are verified here ([`App::verify`]) so every adapter reads them
//! alike; what a failed verification looks like is the adapter's business.

use mamoru_core::config::District;
use mamoru_core::mailbox::{self, NoReply};
use mamoru_core::token::{Claims, Purpose, TokenError};
use mamoru_core::{EmailAddress, UnixTime, links, mail};
use mamoru_store::manage::{LinkMail, LinkRequest, ManageOutcome, ManageView};
use mamoru_store::{Channel, Completion, Limited, OutboxId, Preferences, RegistrationLimits, RegistrationView, SubscriberId};

use crate::{App, Error};

/// What asking for a link led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutcome {
    /// The mail is queued.
    Queued { kind: LinkMail, subscriber: SubscriberId, outbox: OutboxId },
    /// A limit refused it; nothing was queued.
    Limited(Limited),
    /// The address never gets a reply (a daemon, a role mailbox, our own
    /// domain); nothing was recorded.
    NoReply(NoReply),
}

impl App {
    /// Checks a link's signature, purpose and expiry (not whether it was
    /// used: the store answers that).
    pub fn verify(&self, token: &str, purpose: Purpose, now: UnixTime) -> Result<Claims, TokenError> {
        self.tokens.verify(token, purpose, now)
    }

    /// The configured districts among `ids`, in configuration order.
    pub fn districts(&self, ids: &[u32]) -> Vec<&District> {
        self.cfg.districts.iter().filter(|d| ids.contains(&d.id)).collect()
    }

    /// An empty mail to `ans@` (`recipient` may be a district's own address,
    /// `ans+chuo@`, which pre-selects it) or the PC form asks for a link to
    /// `addr`.
    pub fn request_link(&self, addr: &EmailAddress, channel: Channel, recipient: Option<&str>, now: UnixTime) -> Result<LinkOutcome, Error> {
        let cfg = &*self.cfg;
        if let Some(why) = mailbox::no_reply(addr, &cfg.domain) {
            tracing::debug!(to = %addr.masked(), reason = ?why, "no link mail to this address");
            return Ok(LinkOutcome::NoReply(why));
        }
        let limits = RegistrationLimits::from(&cfg.limits);
        let expires_at = now + cfg.tokens.register_ttl_secs;
        let random = self.random12()?;
        let preselect = recipient.and_then(|r| cfg.district_of_recipient(r)).map(|d| d.id);
        let result = self.store.request_link(addr, &channel, now, &limits, expires_at, preselect, |kind, subscriber, nonce| {
            let claims = Claims { purpose: kind.purpose(), subject: subscriber.subject(), nonce, expires_at };
            let token = self.tokens.sign(&claims);
            let id = mail::message_id(&random, cfg);
            match kind {
                LinkMail::Register => mail::registration_received(cfg, addr, &token, now, id),
                LinkMail::Manage => mail::manage_link(cfg, addr, &token, now, id),
            }
        })?;
        let via = match channel {
            Channel::Mail => "mail",
            Channel::Web { .. } => "form",
        };
        Ok(match result {
            LinkRequest::Queued { kind, subscriber, outbox } => {
                let what = match kind {
                    LinkMail::Manage => "manage link requested; 登録内容の変更 queued",
                    LinkMail::Register => "registration requested; 登録受付 queued",
                };
                tracing::info!(subscriber = subscriber.get(), outbox = outbox.get(), via, to = %addr.masked(), "{what}");
                // Counted by the store with the commit (the pipe command is
                // another process): `mamoru_store::counters`.
                self.queued();
                LinkOutcome::Queued { kind, subscriber, outbox }
            }
            LinkRequest::Limited(limit) => {
                tracing::info!(limit = limit.as_str(), via, to = %addr.masked(), "link request refused by a rate limit");
                self.metrics.rate_limited(limit.as_str());
                LinkOutcome::Limited(limit)
            }
        })
    }

    /// The registration page of a live link; `None` when the link was used
    /// or its registration is gone. Changes nothing.
    pub fn registration_view(&self, claims: &Claims, now: UnixTime) -> Result<Option<RegistrationView>, Error> {
        Ok(self.store.registration_view(claims, now)?)
    }

    /// Saves the districts and preferences of a new registration, consumes
    /// its link and queues 登録完了, in one transaction.
    pub fn complete_registration(&self, claims: &Claims, districts: &[u32], prefs: &Preferences, now: UnixTime) -> Result<Completion, Error> {
        let cfg = &*self.cfg;
        let prefs = self.configured(prefs);
        let random = self.random12()?;
        let Some(subscriber) = SubscriberId::from_subject(claims.subject) else { return Ok(Completion::TokenUnusable) };
        let done = self.store.complete_registration(claims, districts, &prefs, now, now + cfg.relay.max_age_secs, |addr, link_nonce| {
            let manage = links::subscriber_links(cfg, &self.tokens, subscriber, link_nonce, now).manage;
            mail::registration_completed(cfg, addr, &self.districts(districts), &manage, now, mail::message_id(&random, cfg))
        })?;
        if let Completion::Completed { subscriber, .. } = done {
            tracing::info!(subscriber = subscriber.get(), districts = ?districts, kinds_off = prefs.kinds_off.len(), quiet = ?prefs.quiet, "registration completed");
            self.metrics.registration_completed();
            self.queued();
        }
        Ok(done)
    }

    /// The manage page of a live manage or unsubscribe link. Changes nothing.
    pub fn manage_view(&self, claims: &Claims, now: UnixTime) -> Result<Option<ManageView>, Error> {
        Ok(self.store.manage_view(claims, now)?)
    }

    /// Replaces the districts and preferences and queues 変更完了.
    pub fn change_districts(&self, claims: &Claims, districts: &[u32], prefs: &Preferences, now: UnixTime) -> Result<ManageOutcome, Error> {
        let cfg = &*self.cfg;
        let prefs = self.configured(prefs);
        let random = self.random12()?;
        let done = self.store.change_districts(claims, districts, &prefs, now, now + cfg.relay.max_age_secs, |addr| {
            mail::districts_changed(cfg, addr, &self.districts(districts), now, mail::message_id(&random, cfg))
        })?;
        if let ManageOutcome::Done { subscriber, .. } = done {
            tracing::info!(subscriber = subscriber.get(), districts = ?districts, kinds_off = prefs.kinds_off.len(), quiet = ?prefs.quiet, "districts changed");
            self.queued();
        }
        Ok(done)
    }

    /// `prefs` with only configured kinds, each once, and quiet hours only
    /// when they are a window (both ends minutes of the day, different).
    fn configured(&self, prefs: &Preferences) -> Preferences {
        let kinds_off = self.cfg.alerts.kinds.iter().filter(|k| prefs.kinds_off.contains(k)).cloned().collect();
        Preferences { kinds_off, quiet: Preferences::valid_quiet(prefs.quiet) }
    }

    /// Deletes the registration and its queued mail. `goodbye` queues the
    /// 登録削除 mail (the manage page); one-click unsubscribe sends nothing.
    pub fn delete_registration(&self, claims: &Claims, goodbye: bool, now: UnixTime) -> Result<ManageOutcome, Error> {
        let cfg = &*self.cfg;
        let random = self.random12()?;
        let done = self.store.delete_registration(claims, now, now + cfg.relay.max_age_secs, |addr| {
            goodbye.then(|| mail::registration_deleted(cfg, addr, now, mail::message_id(&random, cfg)))
        })?;
        if let ManageOutcome::Done { subscriber, outbox } = done {
            tracing::info!(subscriber = subscriber.get(), "registration deleted");
            if outbox.is_some() {
                self.queued();
            }
        }
        Ok(done)
    }
}
