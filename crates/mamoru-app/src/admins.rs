//! Admins: add one, disable or enable one, set or change a password. The
//! same rules for the panel and the command line; the adapters only word
//! the refusals (Japanese on the panel, English on the terminal).
//!
//! Who acts is an [`Actor`]: an admin of the panel may manage admins only
//! when responsible for every district; the operator at the machine (the
//! CLI) always may. The audit log names the actor.
//!
//! Password hashing (argon2id) is deliberately expensive; the panel bounds
//! how many run at once before it calls these (that is load control, not a
//! rule of the flow).

use mamoru_core::{AdminId, EmailAddress, UnixTime, password};
use mamoru_store::admins::{Admin, AdminAdded, valid_login};

use crate::{App, Error};

/// Who manages admins.
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    /// Logged in to the panel.
    Admin(&'a Admin),
    /// At the machine (`mamoru admin`).
    Operator,
}

impl Actor<'_> {
    fn audit_name(&self) -> String {
        match self {
            Actor::Admin(a) => format!("admin:{}", a.login),
            Actor::Operator => "cli".to_string(),
        }
    }

    fn may_manage_admins(&self) -> bool {
        match self {
            Actor::Admin(a) => a.can_manage_admins(),
            Actor::Operator => true,
        }
    }
}

/// A request to add an admin, as typed in a form or on the command line.
#[derive(Debug, Clone, Copy)]
pub struct NewAdmin<'a> {
    pub login: &'a str,
    pub email: &'a str,
    pub password: &'a str,
    /// Empty: every district (and the right to manage admins).
    pub districts: &'a [u32],
}

/// Why a request about admins was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Only an admin of every district manages admins.
    NotAllowed,
    /// Not 1–64 of letters, digits, `.`, `_`, `-`.
    BadLogin,
    BadEmail,
    /// No district has this id.
    UnknownDistrict(u32),
    /// Too short, or holds a line break or another control character.
    WeakPassword,
    LoginTaken,
    /// No admin (or, to enable, no disabled admin) has this login.
    NoSuchAdmin,
    /// An admin cannot disable themselves (the panel would lock them out).
    Yourself,
    /// The current password given to change one's own was wrong, or the
    /// login limits refused another guess.
    WrongPassword,
}

impl App {
    /// Adds an admin.
    pub fn add_admin(&self, by: Actor<'_>, new: &NewAdmin<'_>, now: UnixTime) -> Result<Result<AdminId, Refusal>, Error> {
        if !by.may_manage_admins() {
            return Ok(Err(Refusal::NotAllowed));
        }
        if !valid_login(new.login) {
            return Ok(Err(Refusal::BadLogin));
        }
        let Ok(email) = EmailAddress::parse(new.email.trim()) else { return Ok(Err(Refusal::BadEmail)) };
        if let Some(&d) = new.districts.iter().find(|&&d| self.cfg.district(d).is_none()) {
            return Ok(Err(Refusal::UnknownDistrict(d)));
        }
        let Some(hash) = self.hash_password(new.password)? else { return Ok(Err(Refusal::WeakPassword)) };
        let actor = by.audit_name();
        Ok(match self.store.add_admin(new.login, &email, &hash, new.districts, &actor, now)? {
            AdminAdded::Added(id) => {
                tracing::info!(admin = new.login, by = actor, "admin added");
                Ok(id)
            }
            AdminAdded::LoginTaken => Err(Refusal::LoginTaken),
        })
    }

    /// Disables (no more posts, no more logins, open sessions end) or
    /// enables an admin.
    pub fn set_admin_active(&self, by: Actor<'_>, login: &str, enable: bool, now: UnixTime) -> Result<Result<(), Refusal>, Error> {
        if !by.may_manage_admins() {
            return Ok(Err(Refusal::NotAllowed));
        }
        if let (false, Actor::Admin(me)) = (enable, by) {
            if me.login == login {
                return Ok(Err(Refusal::Yourself));
            }
        }
        let actor = by.audit_name();
        let changed = if enable { self.store.enable_admin(login, &actor, now)? } else { self.store.disable_admin(login, &actor, now)? };
        if !changed {
            return Ok(Err(Refusal::NoSuchAdmin));
        }
        tracing::info!(admin = login, by = actor, enable, "admin enabled or disabled");
        Ok(Ok(()))
    }

    /// Sets an admin's password at the machine; every web session of that
    /// admin ends.
    pub fn reset_admin_password(&self, login: &str, new: &str, now: UnixTime) -> Result<Result<(), Refusal>, Error> {
        if self.store.admin_credentials(login)?.is_none() {
            return Ok(Err(Refusal::NoSuchAdmin));
        }
        let Some(hash) = self.hash_password(new)? else { return Ok(Err(Refusal::WeakPassword)) };
        if !self.store.set_admin_password(login, &hash, None, &Actor::Operator.audit_name(), now)? {
            return Ok(Err(Refusal::NoSuchAdmin));
        }
        tracing::info!(admin = login, "admin password set at the machine");
        Ok(Ok(()))
    }

    /// An admin changes their own password from the panel, giving the
    /// current one again: a session left open on a shared PC cannot take
    /// the account over. The guess counts like a login attempt (the same
    /// per-ID and per-client limits, `client` being the keyed hash of the
    /// client address). Other sessions end; `session` stays.
    pub fn change_own_password(
        &self,
        me: &Admin,
        current: &str,
        new: &str,
        session: &[u8; 32],
        client: &[u8; 32],
        now: UnixTime,
    ) -> Result<Result<(), Refusal>, Error> {
        if password::check_new(new).is_err() {
            return Ok(Err(Refusal::WeakPassword));
        }
        if !self.store.take_login_attempt(&me.login, client, now)? {
            self.metrics.rate_limited("admin-login");
            return Ok(Err(Refusal::WrongPassword));
        }
        let Some((_, stored)) = self.store.admin_credentials(&me.login)? else { return Ok(Err(Refusal::NoSuchAdmin)) };
        if !password::verify(current, &stored) {
            self.store.record_login_failure(&me.login, now)?;
            return Ok(Err(Refusal::WrongPassword));
        }
        self.store.login_attempt_succeeded(&me.login, client, now)?;
        let Some(hash) = self.hash_password(new)? else { return Ok(Err(Refusal::WeakPassword)) };
        if !self.store.set_admin_password(&me.login, &hash, Some(session), &Actor::Admin(me).audit_name(), now)? {
            return Ok(Err(Refusal::NoSuchAdmin));
        }
        tracing::info!(admin = %me.login, "admin changed their password");
        Ok(Ok(()))
    }

    /// The argon2id hash of an acceptable new password; `None` if the
    /// password is refused.
    fn hash_password(&self, pw: &str) -> Result<Option<String>, Error> {
        if password::check_new(pw).is_err() {
            return Ok(None);
        }
        let mut salt = [0u8; 16];
        self.store.sealer().random(&mut salt).map_err(|e| Error::Store(e.into()))?;
        // check_new passed, so hashing fails only if argon2 itself does.
        Ok(password::hash(pw, &salt).ok())
    }
}
