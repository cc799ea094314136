//! Alerts, from a post to every subscriber's copy.
//!
//! 1. A post arrives by mail (`mamoru_ingest::alert_post` authenticates it
//!    and parses it with [`alert::parse_post`]), from the admin panel's
//!    form or from `mamoru alert post` (both give its parts to
//!    [`alert::draft`]): the same checks for all three.
//! 2. [`App::draft`] records it as a draft, after checking the admin may
//!    post to its districts, and queues the preview mail with the one-time
//!    publish link to the admin's *registered* address. A malformed mailed
//!    post is answered once by [`App::reject`].
//! 3. [`App::publish`] (the preview's link, the panel, or the CLI) queues
//!    one copy per subscriber, without content, in one transaction (in
//!    `alert_queue`; a relay's claim makes each an outbox row).
//! 4. The relay renders each copy as it sends it ([`App::alert_copy`]).
//!
//! **Invariant:** a copy is a pure function of the alert row (whose
//! `published_at` is the time it uses), the subscriber, the address and
//! the footer-link nonce, so a row sent twice (a retry, a lease run out
//! after a crash) is byte-identical before DKIM.

use std::sync::{Arc, Mutex, MutexGuard};

use mamoru_core::alert::{self, AlertContent, AlertDraft, CarrierCounts, FollowupKind, FormatError, PreviewInfo};
use mamoru_core::links::Route;
use mamoru_core::token::{Claims, Nonce, Purpose};
use mamoru_core::{EmailAddress, UnixTime, mail};
use mamoru_store::admins::Admin;
use mamoru_store::alerts::{AlertId, AlertRow, Drafted, NewAlert, PublishAuth, Published};
use mamoru_store::states::AlertState;
use mamoru_store::{OutboxId, SubscriberId};

use crate::{App, Error};

/// Where a post came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// A mail to the alert address: `key` is its replay key (a second
    /// delivery records nothing), `attachments` the parts dropped.
    Mail { key: &'a str, attachments: usize },
    /// The admin panel.
    Web,
    /// `mamoru alert post`.
    Cli,
}

impl Source<'_> {
    /// The replay key of a mailed post; empty for the others.
    fn key(&self) -> &str {
        match self {
            Source::Mail { key, .. } => key,
            Source::Web | Source::Cli => "",
        }
    }

    fn as_str(&self) -> &'static str {
        match self {
            Source::Mail { .. } => "mail",
            Source::Web => "web",
            Source::Cli => "cli",
        }
    }
}

/// What a post led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DraftOutcome {
    /// The draft and its preview mail are queued.
    Created { alert: AlertId, outbox: OutboxId },
    /// This mailed post was seen before: nothing was recorded.
    Duplicate,
    /// The admin may not post to some of its districts.
    Refused(FormatError),
}

/// Who publishes.
#[derive(Debug, Clone, Copy)]
pub enum Publisher<'a> {
    /// The one-time link of a preview mail (consumed by the publication).
    Link(&'a Claims),
    /// An admin signed in to the panel: only the author publishes a draft.
    Author { admin: &'a Admin, alert: AlertId },
    /// An operator on the machine (`mamoru alert post --yes`), for `admin`.
    Operator { admin: &'a Admin, alert: AlertId },
}

/// The alert text of a stored row, as `mamoru_core::alert` renders it.
pub fn draft_of(row: &AlertRow) -> AlertDraft {
    AlertDraft {
        title: row.title.clone(),
        kind: row.kind.clone(),
        districts: row.districts.clone(),
        text: row.text.clone(),
        occurred: alert::Occurred { at: row.occurred_at, flags: row.occurred_flags },
        ask_confirm: row.ask_confirm,
        urgent: row.urgent,
    }
}

/// A follow-up's kind and report, if the row is one.
pub fn followup_of(row: &AlertRow) -> Option<alert::Followup> {
    let kind = row.followup_kind?;
    row.followup_of.map(|_| alert::Followup { kind, original_published_at: row.report_published_at })
}

/// The subject and text of a stored alert, as parents see it: with its
/// publication time, or its drafting time while a draft.
pub fn content_of(app: &App, row: &AlertRow) -> AlertContent {
    let at = if row.published_at > 0 { row.published_at } else { row.created_at };
    match followup_of(row) {
        Some(f) => alert::followup_content(&app.cfg, &draft_of(row), row.is_test, &f, at),
        None => alert::content(&app.cfg, &draft_of(row), row.is_test, at),
    }
}

impl App {
    /// Records a post as a draft and queues its preview.
    pub fn draft(&self, admin: &Admin, draft: &AlertDraft, source: Source<'_>, is_test: bool, now: UnixTime) -> Result<DraftOutcome, Error> {
        let forbidden = admin.forbidden(&draft.districts);
        if !forbidden.is_empty() {
            return Ok(DraftOutcome::Refused(FormatError::DistrictsNotAllowed(forbidden)));
        }
        let content = alert::content(&self.cfg, draft, is_test, now);
        let new = NewAlert {
            admin: admin.id,
            source: source.as_str(),
            source_key: source.key(),
            kind: &draft.kind,
            title: &draft.title,
            text: &draft.text,
            districts: &draft.districts,
            is_test,
            occurred_at: draft.occurred.at,
            occurred_flags: draft.occurred.flags,
            ask_confirm: draft.ask_confirm,
            urgent: draft.urgent,
            ..NewAlert::new(admin.id, source.as_str())
        };
        self.record_draft(admin, &new, &content, source, now)
    }

    /// Records a follow-up (続報, 解決 or 取消) of the published first report
    /// `report` as a draft and queues its preview, like a first report. It
    /// keeps the report's title, kind, districts and test flag, and goes to
    /// the report's recipients (see [`mamoru_store::Store::publish_alert`]).
    /// The admin must be allowed the report's districts; a follow-up of a
    /// follow-up continues the same report.
    pub fn draft_followup(
        &self,
        admin: &Admin,
        report: AlertId,
        kind: FollowupKind,
        text: &str,
        source: Source<'_>,
        now: UnixTime,
    ) -> Result<DraftOutcome, Error> {
        let text = match alert::followup_text(text) {
            Ok(t) => t,
            Err(e) => return Ok(DraftOutcome::Refused(e)),
        };
        let no_such = || DraftOutcome::Refused(FormatError::NoSuchAlert(report.to_string()));
        let Some(mut row) = self.store.alert(report)? else { return Ok(no_such()) };
        if let Some(first) = row.followup_of {
            let Some(r) = self.store.alert(first)? else { return Ok(no_such()) };
            row = r;
        }
        if row.state != AlertState::Published {
            return Ok(no_such());
        }
        if row.incident_state == Some(FollowupKind::Retracted) {
            return Ok(DraftOutcome::Refused(FormatError::Retracted(row.id.get())));
        }
        let forbidden = admin.forbidden(&row.districts);
        if !forbidden.is_empty() {
            return Ok(DraftOutcome::Refused(FormatError::DistrictsNotAllowed(forbidden)));
        }
        let mut follow = row.clone();
        follow.text = text;
        let f = alert::Followup { kind, original_published_at: row.published_at };
        // A follow-up tells of the same incident: its time is the report's.
        let content = alert::followup_content(&self.cfg, &draft_of(&follow), row.is_test, &f, now);
        let new = NewAlert {
            admin: admin.id,
            source: source.as_str(),
            source_key: source.key(),
            kind: &row.kind,
            title: &row.title,
            text: &follow.text,
            districts: &row.districts,
            is_test: row.is_test,
            followup_of: Some(row.id),
            followup_kind: Some(kind),
            occurred_at: row.occurred_at,
            occurred_flags: row.occurred_flags,
            // A follow-up of a 緊急 report is as urgent.
            urgent: row.urgent,
            ..NewAlert::new(admin.id, source.as_str())
        };
        self.record_draft(admin, &new, &content, source, now)
    }

    fn record_draft(&self, admin: &Admin, new: &NewAlert<'_>, content: &AlertContent, source: Source<'_>, now: UnixTime) -> Result<DraftOutcome, Error> {
        let cfg = &*self.cfg;
        let random = self.random12()?;
        let expires_at = now + cfg.alerts.publish_ttl_secs;
        let dropped_attachments = match source {
            Source::Mail { attachments, .. } => attachments,
            Source::Web | Source::Cli => 0,
        };
        let is_test = new.is_test;
        let drafted = self.store.draft_alert(new, now, expires_at, |alert_id, nonce, audience| {
            let claims = Claims { purpose: Purpose::Publish, subject: alert_id.subject(), nonce, expires_at };
            let url = Route::Publish(&self.tokens.sign(&claims)).url(cfg);
            let counts = CarrierCounts::from_domains(&audience.domains);
            let info = PreviewInfo {
                number: alert_id.get(),
                counts: &counts,
                reach: &audience.reach,
                ask_confirm: new.ask_confirm,
                publish_url: &url,
                dropped_attachments,
                is_test,
            };
            // The alert's number is in the preview's Message-ID: a reply to the
            // preview of a published alert is a follow-up of it.
            alert::preview(cfg, content, &admin.email, &info, now, format!("{}{alert_id}.{}", alert::PREVIEW_ID_PREFIX, mail::message_id(&random, cfg)))
        })?;
        Ok(match drafted {
            Drafted::Created { alert, outbox } => {
                tracing::info!(alert = alert.get(), admin = %admin.login, source = source.as_str(), followup_of = new.followup_of.map(AlertId::get), "alert drafted; preview queued");
                self.queued();
                DraftOutcome::Created { alert, outbox }
            }
            Drafted::Duplicate => {
                tracing::info!(admin = %admin.login, "alert post redelivered; ignored");
                DraftOutcome::Duplicate
            }
        })
    }

    /// Answers an admin's mailed post that cannot become a draft, once per
    /// replay key. `false`: this post was answered before.
    pub fn reject(&self, admin: &Admin, key: &str, subject: &str, error: &FormatError, now: UnixTime) -> Result<bool, Error> {
        let cfg = &*self.cfg;
        let random = self.random12()?;
        let reply = alert::rejected(cfg, std::slice::from_ref(error), subject, &admin.email, now, mail::message_id(&random, cfg));
        let reason = format!("{error:?}").split(['(', ' ']).next().unwrap_or("format").to_string();
        let title: String = subject.chars().take(alert::MAX_TITLE_CHARS).collect();
        let answered = self.store.reject_post(admin.id, key, &title, &reason, &reply, now, now + cfg.relay.max_age_secs)?;
        if answered {
            tracing::info!(admin = %admin.login, reason, "malformed alert post answered");
            self.queued();
        }
        Ok(answered)
    }

    /// The draft a live publish link opens; `None` once it was used.
    pub fn publish_view(&self, claims: &Claims, now: UnixTime) -> Result<Option<AlertRow>, Error> {
        Ok(self.store.publish_view(claims, now)?)
    }

    /// Publishes a draft: one copy per active subscriber of its districts,
    /// without content (see [`App::alert_copy`]).
    pub fn publish(&self, by: Publisher<'_>, now: UnixTime) -> Result<Published, Error> {
        self.publish_confirmed(by, false, now)
    }

    /// [`App::publish`], with `stale_confirmed`: the publisher confirmed an
    /// incident older than `[alerts] stale_incident_secs`. Without it such
    /// an alert is not published ([`Published::StaleIncident`]).
    pub fn publish_confirmed(&self, by: Publisher<'_>, stale_confirmed: bool, now: UnixTime) -> Result<Published, Error> {
        let cfg = &*self.cfg;
        let id = match by {
            Publisher::Link(claims) => match AlertId::from_subject(claims.subject) {
                Some(id) => id,
                None => return Ok(Published::Unusable),
            },
            Publisher::Author { alert, .. } | Publisher::Operator { alert, .. } => alert,
        };
        if !stale_confirmed && self.store.alert(id)?.is_some_and(|r| self.is_stale(&r, now)) {
            return Ok(Published::StaleIncident);
        }
        let (auth, actor) = match by {
            Publisher::Link(claims) => (PublishAuth::Token(claims), format!("publish-link:alert={}", claims.subject)),
            Publisher::Author { admin, alert } => {
                match self.store.alert(alert)? {
                    Some(r) if r.admin == admin.id => {}
                    _ => return Ok(Published::Unusable),
                }
                (PublishAuth::Direct(alert), format!("admin:{}", admin.login))
            }
            Publisher::Operator { admin, alert } => (PublishAuth::Direct(alert), format!("cli:admin={}", admin.login)),
        };
        let expires_at = now + cfg.alerts.max_age_secs;
        let published = self.store.publish_alert(auth, &actor, now, expires_at, &cfg.register_address(), &cfg.domain)?;
        if let Published::Published { alert, recipients } = published {
            tracing::info!(alert = alert.get(), recipients, actor, "alert published");
            self.queued();
        }
        Ok(published)
    }

    /// Is the incident of `row` older than `[alerts] stale_incident_secs`?
    /// An unknown incident time is never stale, nor is a follow-up (news of
    /// now about an incident already published).
    pub fn is_stale(&self, row: &AlertRow, now: UnixTime) -> bool {
        row.followup_of.is_none() && row.occurred_at != 0 && now - row.occurred_at > self.cfg.alerts.stale_incident_secs
    }

    /// One subscriber's copy of a published alert, as the relay sends it.
    /// `None` when the alert does not exist (the row cannot be sent).
    pub fn alert_copy(&self, alert: AlertId, subscriber: SubscriberId, to: &EmailAddress, link_nonce: Nonce) -> Result<Option<Vec<u8>>, Error> {
        let Some((row, content)) = self.copies.get(self, alert)? else { return Ok(None) };
        let confirm_district = match row.ask_confirm {
            true => Some(self.store.confirm_district(alert, subscriber)?),
            false => None,
        };
        let recipient = alert::AlertRecipient { subscriber, address: to, link_nonce, confirm_district };
        Ok(Some(alert::render_for_subscriber(&self.cfg, &self.tokens, row.id, row.followup_of, &content, row.published_at, &recipient).bytes))
    }
}

/// Alerts kept for rendering copies; alerts are few, and a full cache is
/// simply emptied.
const CACHE_MAX: usize = 64;

type Cached = (Arc<AlertRow>, Arc<AlertContent>);

/// The published alerts whose copies are being sent: the row, read once,
/// and the text every copy shares, rendered once.
#[derive(Default)]
pub(crate) struct Copies(Mutex<Vec<(AlertId, Cached)>>);

impl Copies {
    fn get(&self, app: &App, id: AlertId) -> Result<Option<Cached>, Error> {
        if let Some((_, c)) = self.lock().iter().find(|(a, _)| *a == id) {
            return Ok(Some(c.clone()));
        }
        // Read outside the lock; two feeders may both read, harmlessly.
        let Some(row) = app.store.alert(id)? else { return Ok(None) };
        let content = Arc::new(content_of(app, &row));
        let final_row = row.state == AlertState::Published;
        let cached = (Arc::new(row), content);
        // Only a published row is final (its `published_at` is set); a
        // draft is rendered but not kept.
        if !final_row {
            return Ok(Some(cached));
        }
        let mut cache = self.lock();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.push((id, cached.clone()));
        Ok(Some(cached))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(AlertId, Cached)>> {
        // A list of immutable rows cannot be left torn by a panic.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
