//! `/k/{token}`: 確認しました (see `mamoru_app::confirm`).

use hyper::body::Incoming;
use hyper::{HeaderMap, StatusCode};
use mamoru_core::token::{Claims, Purpose};
use mamoru_store::confirm::Confirmed;

use super::{App, Resp};
use crate::pages::confirm;

impl App {
    fn confirm_claims(&self, token: &str) -> Result<Claims, Box<Resp>> {
        let now = mamoru_core::now();
        self.web.app.verify(token, Purpose::Confirm, now).map_err(|_| Box::new(self.html(StatusCode::GONE, confirm::closed(&self.web.app.cfg))))
    }

    /// `GET /k/{token}`: the button. Changes nothing.
    pub(super) async fn confirm_show(&self, token: &str) -> Resp {
        let claims = match self.confirm_claims(token) {
            Ok(c) => c,
            Err(resp) => return *resp,
        };
        match self.run("read an alert to confirm", move |app| app.confirm_view(&claims)).await {
            Ok(Some(title)) => self.html(StatusCode::OK, confirm::confirm(&self.web.app.cfg, token, &title)),
            Ok(None) => self.html(StatusCode::GONE, confirm::closed(&self.web.app.cfg)),
            Err(resp) => resp,
        }
    }

    /// `POST /k/{token}`: counts the copy once.
    pub(super) async fn confirm_post(&self, token: &str, headers: &HeaderMap, body: Incoming) -> Resp {
        let claims = match self.confirm_claims(token) {
            Ok(c) => c,
            Err(resp) => return *resp,
        };
        if let Err(resp) = self.read_body(headers, body).await {
            return resp;
        }
        let now = mamoru_core::now();
        match self.run("count a confirmation", move |app| app.confirm(&claims, now)).await {
            Ok(Confirmed::Counted | Confirmed::AlreadyCounted) => self.html(StatusCode::OK, confirm::confirmed(&self.web.app.cfg)),
            Ok(Confirmed::Closed) => self.html(StatusCode::GONE, confirm::closed(&self.web.app.cfg)),
            Err(resp) => resp,
        }
    }
}
