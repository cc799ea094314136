//! `/d/` and `/d/{id}`: the printable district handouts (GET and HEAD only).

use hyper::StatusCode;

use super::{App, Resp};
use crate::pages;

impl App {
    pub(super) fn districts(&self, rest: &str) -> Resp {
        let cfg = &self.web.app.cfg;
        if rest.is_empty() {
            return self.html(StatusCode::OK, pages::districts::list(cfg));
        }
        match rest.parse::<u32>().ok().and_then(|id| cfg.district(id)) {
            Some(d) => self.html(StatusCode::OK, pages::districts::handout(cfg, d)),
            None => self.page(StatusCode::NOT_FOUND, &self.pages.not_found),
        }
    }
}
