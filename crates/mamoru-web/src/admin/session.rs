//! Login, sessions and CSRF of the admin panel.
//!
//! The session cookie holds 32 random bytes, the store only their SHA-256;
//! the CSRF token is a per-session random value every POST but the login
//! carries, compared in constant time.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::StatusCode;
use hyper::header::{self, HeaderMap};
use mamoru_core::password;
use ring::digest;
use subtle::ConstantTimeEq as _;

use super::{Answer, blocking, busy, checks_busy, page, password_check, random, redirect};
use crate::{Web, form};

pub(super) const COOKIE: &str = "__Host-mamoru_admin";

/// Context of the keyed hash of a login client.
pub(super) const LOGIN_CLIENT: &str = "admin-login-client";

/// The SHA-256 of the session cookie's value, if the request has one.
pub(super) fn session_id(headers: &HeaderMap) -> Option<[u8; 32]> {
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for c in v.split(';') {
            if let Some(val) = c.trim().strip_prefix(COOKIE).and_then(|r| r.strip_prefix('=')) {
                let raw = URL_SAFE_NO_PAD.decode(val).ok()?;
                let d = digest::digest(&digest::SHA256, &raw);
                return d.as_ref().try_into().ok();
            }
        }
    }
    None
}

/// Whether a POST's `csrf` field is the session's token. Constant time in
/// the contents (subtle), so a guess learns nothing from the timing; a
/// length mismatch is refused as unequal.
pub(super) fn csrf_matches(sent: &str, expected: &str) -> bool {
    bool::from(sent.as_bytes().ct_eq(expected.as_bytes()))
}

/// The client a login attempt (or a PC-form registration) is counted
/// against: its IP address (IPv6 by /64, which one host usually holds
/// whole), as a hash keyed for `context`.
pub(crate) fn client_key(web: &Web, headers: &HeaderMap, peer: SocketAddr, context: &str) -> [u8; 32] {
    let mut ip = peer.ip();
    if web.app.cfg.web.behind_tls_proxy {
        // The proxy appends the address it saw last; anything left of it
        // came from the client and proves nothing.
        let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).next_back();
        if let Some(last) = forwarded.and_then(|v| v.rsplit(',').next()).and_then(|v| v.trim().parse::<IpAddr>().ok()) {
            ip = last;
        }
    }
    let bytes = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets()[..8].to_vec(),
        },
    };
    web.app.store.sealer().keyed_index(context, &bytes)
}

/// `POST /admin/login`.
pub(super) async fn login(web: &Arc<Web>, body: &[u8], client: [u8; 32]) -> Answer {
    let cfg = &web.app.cfg;
    let login = form::value(body, "login").unwrap_or_default().trim().to_string();
    let pw = form::value(body, "password").unwrap_or_default().to_string();
    let now = mamoru_core::now();
    let Some(permit) = password_check(web) else {
        web.app.metrics().rate_limited("password-checks");
        return checks_busy(cfg);
    };
    let l = login.clone();
    let checked = blocking(web, "check an admin login", move |w| {
        let _permit = permit;
        // The attempt is counted before the password is checked, in one
        // atomic step: concurrent guesses cannot all pass a check that
        // only later counts them.
        if !w.app.store.take_login_attempt(&l, &client, now)? {
            w.app.metrics().rate_limited("admin-login");
            return Ok::<_, mamoru_store::StoreError>(Err(true));
        }
        let creds = w.app.store.admin_credentials(&l)?;
        let hash = creds.as_ref().map_or(password::dummy_hash(), |(_, h)| h.as_str());
        let ok = password::verify(&pw, hash);
        match creds {
            Some((admin, _)) if ok && admin.active => {
                w.app.store.login_attempt_succeeded(&l, &client, now)?;
                Ok(Ok(admin))
            }
            _ => {
                w.app.store.record_login_failure(&l, now)?;
                Ok(Err(false))
            }
        }
    })
    .await;
    let admin = match checked {
        Ok(Ok(a)) => a,
        Ok(Err(blocked)) => {
            let text = if blocked {
                "ログインの失敗が続いたため、しばらくログインできません。時間をおいてお試しください。"
            } else {
                "IDまたはパスワードが違います。"
            };
            let status = if blocked { StatusCode::TOO_MANY_REQUESTS } else { StatusCode::UNAUTHORIZED };
            return page(status, super::pages::login(cfg, Some(text)));
        }
        Err(a) => return a,
    };
    let (Some(sid), Some(csrf)) = (random(web, 32), random(web, 16)) else { return busy(cfg) };
    let hash: [u8; 32] = match digest::digest(&digest::SHA256, &sid).as_ref().try_into() {
        Ok(h) => h,
        Err(_) => return busy(cfg),
    };
    let csrf: String = csrf.iter().map(|b| format!("{b:02x}")).collect();
    if let Err(a) = blocking(web, "create an admin session", move |w| w.app.store.create_session(&admin, &hash, &csrf, now)).await {
        return a;
    }
    let mut a = redirect("/admin");
    a.headers.push((
        header::SET_COOKIE,
        format!("{COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict", URL_SAFE_NO_PAD.encode(&sid)),
    ));
    a
}

/// `POST /admin/logout`: ends the session and clears the cookie.
pub(super) async fn logout(web: &Arc<Web>, sid: [u8; 32], login: &str, now: i64) -> Answer {
    let actor = format!("admin:{login}");
    let _ = blocking(web, "end an admin session", move |w| w.app.store.delete_session(&sid, &actor, now)).await;
    let mut a = redirect("/admin/login");
    a.headers.push((header::SET_COOKIE, format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")));
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_compares_whole_values() {
        assert!(csrf_matches("00ff", "00ff"));
        assert!(!csrf_matches("00fe", "00ff"));
        assert!(!csrf_matches("00f", "00ff"));
        assert!(!csrf_matches("00ff0", "00ff"));
        assert!(!csrf_matches("", "00ff"));
    }
}
