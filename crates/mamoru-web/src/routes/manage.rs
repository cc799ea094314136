//! `/m/{token}` (manage: change districts or delete) and `/u/{token}`
//! (one-click unsubscribe, RFC 8058). GET and HEAD show a page and change
//! nothing; POST acts. Tokens are purpose-bound: a manage link cannot be used
//! at `/u/` nor a registration link at either.

use hyper::HeaderMap;
use hyper::StatusCode;
use hyper::body::Incoming;
use mamoru_core::token::{Claims, Purpose};
use mamoru_core::UnixTime;
use mamoru_store::Preferences;
use mamoru_store::manage::{Grant, ManageOutcome};

use super::{App, Resp};
use crate::form::{self, DistrictsError};
use crate::pages;
use crate::pages::manage::Suspension;

impl App {
    /// `GET /m/{token}`: the manage page. `GET /u/{token}`: the confirm page.
    pub(super) async fn self_service_show(&self, token: &str, purpose: Purpose) -> Resp {
        let now = mamoru_core::now();
        let claims = match self.verify(token, purpose, now) {
            Ok(claims) => claims,
            Err(resp) => return *resp,
        };
        match self.run("read a registration to manage", move |app| app.manage_view(&claims, now)).await {
            Ok(Some(view)) => {
                let cfg = &self.web.app.cfg;
                let page = match purpose {
                    Purpose::Unsubscribe => pages::manage::unsubscribe_confirm(cfg, token),
                    _ => {
                        let suspension = match (view.suspended, view.grant) {
                            (false, _) => Suspension::None,
                            (true, Grant::OneTime) => Suspension::ResumesOnSave,
                            (true, Grant::Footer) => Suspension::NeedsFreshLink,
                        };
                        pages::manage::manage(cfg, token, &view.districts, &view.prefs, suspension, None)
                    }
                };
                self.html(StatusCode::OK, page)
            }
            Ok(None) => self.page(StatusCode::GONE, &self.pages.manage_gone),
            Err(resp) => resp,
        }
    }

    /// `POST /m/{token}`: `action=update` with `district` fields,
    /// `action=delete`, or `action=test` (a 受信テスト to the registered
    /// address; changes nothing of the registration).
    pub(super) async fn manage_post(&self, token: &str, headers: &HeaderMap, body: Incoming) -> Resp {
        let now = mamoru_core::now();
        let claims = match self.verify(token, Purpose::Manage, now) {
            Ok(claims) => claims,
            Err(resp) => return *resp,
        };
        let body = match self.read_body(headers, body).await {
            Ok(body) => body,
            Err(resp) => return resp,
        };
        let cfg = &self.web.app.cfg;
        match form::value(&body, "action").as_deref() {
            Some("delete") => self.delete(claims, now, true).await,
            Some("test") => self.test_for_subscriber(claims, now).await,
            Some("update") => {
                let posted = form::districts(&body, cfg).unwrap_or_default();
                let refuse = |prefs: &Preferences, text: &str| {
                    self.html(StatusCode::BAD_REQUEST, pages::manage::manage(cfg, token, &posted, prefs, Suspension::None, Some(text)))
                };
                let prefs = match form::preferences(&body, cfg) {
                    Ok(prefs) => prefs,
                    Err(e) => return refuse(&form::preferences_as_posted(&body, cfg), e.message()),
                };
                let ids = match form::districts(&body, cfg) {
                    Ok(ids) if !ids.is_empty() => ids,
                    Ok(_) | Err(DistrictsError::Unknown) => return refuse(&prefs, "地区を1つ以上選んでください。"),
                };
                self.change(claims, ids, prefs, now).await
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
        let claims = match self.verify(token, Purpose::Unsubscribe, now) {
            Ok(claims) => claims,
            Err(resp) => return *resp,
        };
        if let Err(resp) = self.read_body(headers, body).await {
            return resp;
        }
        self.delete(claims, now, false).await
    }

    async fn change(&self, claims: Claims, ids: Vec<u32>, prefs: Preferences, now: UnixTime) -> Resp {
        let (chosen, saved) = (ids.clone(), prefs.clone());
        match self.run("change districts", move |app| app.change_districts(&claims, &chosen, &saved, now)).await {
            Ok(ManageOutcome::Done { .. }) => {
                self.html(StatusCode::OK, pages::manage::changed(&self.web.app.cfg, &self.web.app.districts(&ids), &prefs))
            }
            Ok(ManageOutcome::TokenUnusable) => self.page(StatusCode::GONE, &self.pages.manage_gone),
            Err(resp) => resp,
        }
    }

    /// Deletes the registration; `goodbye` queues the 登録削除 mail (the
    /// manage page), which one-click unsubscribe does not send.
    async fn delete(&self, claims: Claims, now: UnixTime, goodbye: bool) -> Resp {
        match self.run("delete a registration", move |app| app.delete_registration(&claims, goodbye, now)).await {
            Ok(ManageOutcome::Done { .. }) => self.page(StatusCode::OK, &self.pages.deleted),
            Ok(ManageOutcome::TokenUnusable) => self.page(StatusCode::GONE, &self.pages.manage_gone),
            Err(resp) => resp,
        }
    }
}
