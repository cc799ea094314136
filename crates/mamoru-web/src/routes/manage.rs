//! `/m/{token}` (manage: change districts or delete) and `/u/{token}`
//! (one-click unsubscribe, RFC 8058). GET and HEAD show a page and change
//! nothing; POST acts. Tokens are purpose-bound: a manage link cannot be used
//! at `/u/` nor a registration link at either.

use hyper::HeaderMap;
use hyper::StatusCode;
use hyper::body::Incoming;
use mamoru_core::mail;
use mamoru_core::token::{Claims, Purpose, TokenError};
use mamoru_core::UnixTime;
use mamoru_store::manage::{Grant, ManageOutcome};

use super::{App, Resp};
use crate::form::{self, DistrictsError};
use crate::pages;
use crate::pages::manage::Suspension;

impl App {
    /// Verifies a manage/unsubscribe token's signature and expiry.
    fn verify_for(&self, token: &str, purpose: Purpose, now: UnixTime) -> Result<Claims, Resp> {
        match self.web.tokens.verify(token, purpose, now) {
            Ok(claims) => Ok(claims),
            Err(TokenError::Expired) => Err(self.page(StatusCode::GONE, &self.pages.manage_gone)),
            Err(TokenError::Malformed | TokenError::BadSignature | TokenError::WrongPurpose) => {
                Err(self.page(StatusCode::BAD_REQUEST, &self.pages.link_invalid))
            }
        }
    }

    /// `GET /m/{token}`: the manage page. `GET /u/{token}`: the confirm page.
    pub(super) async fn self_service_show(&self, token: &str, purpose: Purpose) -> Resp {
        let now = mamoru_core::now();
        let claims = match self.verify_for(token, purpose, now) {
            Ok(claims) => claims,
            Err(resp) => return resp,
        };
        match crate::blocking(&self.web, "read a registration to manage", move |w| w.store.manage_view(&claims, now)).await {
            Ok(Some(view)) => {
                let cfg = &self.web.cfg;
                let page = match purpose {
                    Purpose::Unsubscribe => pages::manage::unsubscribe_confirm(cfg, token),
                    _ => {
                        let suspension = match (view.suspended, view.grant) {
                            (false, _) => Suspension::None,
                            (true, Grant::OneTime) => Suspension::ResumesOnSave,
                            (true, Grant::Footer) => Suspension::NeedsFreshLink,
                        };
                        pages::manage::manage(cfg, token, &view.districts, suspension, None)
                    }
                };
                self.html(StatusCode::OK, page)
            }
            Ok(None) => self.page(StatusCode::GONE, &self.pages.manage_gone),
            Err(crate::Busy) => self.busy(),
        }
    }

    /// `POST /m/{token}`: `action=update` with `district` fields, or
    /// `action=delete`.
    pub(super) async fn manage_post(&self, token: &str, headers: &HeaderMap, body: Incoming) -> Resp {
        let now = mamoru_core::now();
        let claims = match self.verify_for(token, Purpose::Manage, now) {
            Ok(claims) => claims,
            Err(resp) => return resp,
        };
        let body = match self.read_body(headers, body).await {
            Ok(body) => body,
            Err(resp) => return resp,
        };
        let cfg = &self.web.cfg;
        match form::value(&body, "action").as_deref() {
            Some("delete") => self.delete(claims, now, true).await,
            Some("update") => {
                let ids = match form::districts(&body, cfg) {
                    Ok(ids) if !ids.is_empty() => ids,
                    Ok(_) | Err(DistrictsError::Unknown) => {
                        let page =
                            pages::manage::manage(cfg, token, &[], Suspension::None, Some("地区を1つ以上選んでください。"));
                        return self.html(StatusCode::BAD_REQUEST, page);
                    }
                };
                self.change(claims, ids, now).await
            }
            _ => self.page(StatusCode::BAD_REQUEST, &self.pages.bad_request),
        }
    }

    /// `POST /u/{token}`: RFC 8058 one-click. Mail clients post
    /// `List-Unsubscribe=One-Click` without cookies or any other state; the
    /// confirm page's button posts the same. Any POST to a valid link stops
    /// delivery at once: the registration and its queued mail are deleted.
    pub(super) async fn unsubscribe_post(&self, token: &str, headers: &HeaderMap, body: Incoming) -> Resp {
        let now = mamoru_core::now();
        let claims = match self.verify_for(token, Purpose::Unsubscribe, now) {
            Ok(claims) => claims,
            Err(resp) => return resp,
        };
        if let Err(resp) = self.read_body(headers, body).await {
            return resp;
        }
        self.delete(claims, now, false).await
    }

    async fn change(&self, claims: Claims, ids: Vec<u32>, now: UnixTime) -> Resp {
        let Some(random) = self.message_random() else { return self.busy() };
        let chosen = ids.clone();
        let result = crate::blocking(&self.web, "change districts", move |web| {
            let cfg = &web.cfg;
            web.store.change_districts(&claims, &chosen, now, now + cfg.relay.max_age_secs, |addr| {
                let districts: Vec<_> = cfg.districts.iter().filter(|d| chosen.contains(&d.id)).collect();
                mail::districts_changed(cfg, addr, &districts, now, mail::message_id(&random, cfg))
            })
        })
        .await;
        match result {
            Ok(ManageOutcome::Done { subscriber, .. }) => {
                tracing::debug!(subscriber, districts = ?ids, "web: districts changed");
                self.web.queued.notify_one();
                let cfg = &self.web.cfg;
                let districts: Vec<_> = cfg.districts.iter().filter(|d| ids.contains(&d.id)).collect();
                self.html(StatusCode::OK, pages::manage::changed(cfg, &districts))
            }
            Ok(ManageOutcome::TokenUnusable) => self.page(StatusCode::GONE, &self.pages.manage_gone),
            Err(crate::Busy) => self.busy(),
        }
    }

    /// Deletes the registration; `goodbye` queues the 登録削除 mail (the
    /// manage page), which one-click unsubscribe does not send.
    async fn delete(&self, claims: Claims, now: UnixTime, goodbye: bool) -> Resp {
        let Some(random) = self.message_random() else { return self.busy() };
        let result = crate::blocking(&self.web, "delete a registration", move |web| {
            let cfg = &web.cfg;
            web.store.delete_registration(&claims, now, now + cfg.relay.max_age_secs, |addr| {
                goodbye.then(|| mail::registration_deleted(cfg, addr, now, mail::message_id(&random, cfg)))
            })
        })
        .await;
        match result {
            Ok(ManageOutcome::Done { subscriber, outbox }) => {
                tracing::info!(subscriber, "web: registration deleted");
                if outbox.is_some() {
                    self.web.queued.notify_one();
                }
                self.page(StatusCode::OK, &self.pages.deleted)
            }
            Ok(ManageOutcome::TokenUnusable) => self.page(StatusCode::GONE, &self.pages.manage_gone),
            Err(crate::Busy) => self.busy(),
        }
    }
}
