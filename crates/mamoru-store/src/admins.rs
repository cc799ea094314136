//! Admin accounts: who may post alerts, where their previews go, and their
//! password hashes (argon2id PHC strings from `mamoru_core::password`; this
//! module only stores them).

use mamoru_core::{EmailAddress, UnixTime};
use crate::db::OptionalExt;
use crate::params;

use crate::states::AdminStatus;
use crate::{Result, Store, audit};

/// Admin row id.
pub use mamoru_core::AdminId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub id: AdminId,
    /// The login ID of the web panel; also accepted as the SASL username.
    pub login: String,
    /// Registered address: previews and publish links go here, never to the
    /// From of a post.
    pub email: EmailAddress,
    /// Districts the admin may post to; empty means every district.
    pub districts: Vec<u32>,
    pub active: bool,
}

/// Is `login` a well-formed admin ID: 1–64 ASCII letters, digits, `.`,
/// `_` or `-` (it appears in the audit log and as a SASL username).
pub fn valid_login(login: &str) -> bool {
    !login.is_empty() && login.len() <= 64 && login.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Admin {
    /// May this admin add and disable admins? Only one not limited to some
    /// districts: a school's PTA officer manages no accounts.
    pub fn can_manage_admins(&self) -> bool {
        self.districts.is_empty()
    }

    /// Of `wanted`, the districts this admin may not post to.
    pub fn forbidden(&self, wanted: &[u32]) -> Vec<u32> {
        if self.districts.is_empty() {
            return vec![];
        }
        wanted.iter().copied().filter(|d| !self.districts.contains(d)).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAdded {
    Added(AdminId),
    LoginTaken,
}

fn join_ids(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

pub(crate) fn split_ids(s: &str) -> Vec<u32> {
    s.split(',').filter_map(|p| p.trim().parse().ok()).collect()
}

impl Store {
    /// Adds an admin. `actor` is who did it, for the audit log.
    pub fn add_admin(
        &self,
        login: &str,
        email: &EmailAddress,
        password_hash: &str,
        districts: &[u32],
        actor: &str,
        now: UnixTime,
    ) -> Result<AdminAdded> {
        self.serially(|| {
            let tx = self.begin()?;
            let taken: Option<AdminId> = tx.query_row("SELECT id FROM admins WHERE login = ?1", params![login], |r| r.get(0)).optional()?;
            if taken.is_some() {
                return Ok(AdminAdded::LoginTaken);
            }
            let id = tx.query_row(
                "INSERT INTO admins (login, email_index, email_sealed, password_hash, districts, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) RETURNING id",
                params![login, &self.sealer.index(email)[..], self.sealer.seal_address(email)?, password_hash, join_ids(districts), now],
                |r| r.get::<AdminId>(0),
            )?;
            audit(&tx, now, actor, "admin-added", &format!("admin={login} email={} districts={}", email.masked(), join_ids(districts)))?;
            tx.commit()?;
            Ok(AdminAdded::Added(id))
        })
    }

    /// Every admin, by login.
    pub fn list_admins(&self) -> Result<Vec<Admin>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT id, login, email_sealed, districts, status FROM admins ORDER BY login")?;
        let rows = stmt.query_map(params![], |r| {
            Ok((r.get::<AdminId>(0)?, r.get::<String>(1)?, r.get::<Vec<u8>>(2)?, r.get::<String>(3)?, r.get::<AdminStatus>(4)?))
        })?;
        let mut out = vec![];
        for row in rows {
            let (id, login, sealed, districts, status) = row?;
            out.push(Admin { id, login, email: self.sealer.open_address(&sealed)?, districts: split_ids(&districts), active: status == AdminStatus::Active });
        }
        Ok(out)
    }

    /// Disables an admin: no more posts, no more logins. `false` if unknown.
    pub fn disable_admin(&self, login: &str, actor: &str, now: UnixTime) -> Result<bool> {
        self.serially(|| {
            let tx = self.begin()?;
            let n = tx.execute("UPDATE admins SET status = 'disabled', updated_at = ?1 WHERE login = ?2", params![now, login])?;
            if n == 1 {
                audit(&tx, now, actor, "admin-disabled", &format!("admin={login}"))?;
            }
            tx.commit()?;
            Ok(n == 1)
        })
    }

    /// Enables a disabled admin again. `false` if unknown or already active.
    pub fn enable_admin(&self, login: &str, actor: &str, now: UnixTime) -> Result<bool> {
        self.serially(|| {
            let tx = self.begin()?;
            let n = tx.execute(
                "UPDATE admins SET status = 'active', updated_at = ?1 WHERE login = ?2 AND status <> 'active'",
                params![now, login],
            )?;
            if n == 1 {
                audit(&tx, now, actor, "admin-enabled", &format!("admin={login}"))?;
            }
            tx.commit()?;
            Ok(n == 1)
        })
    }

    /// Sets an admin's password hash and ends every session of that admin
    /// except `keep` (the session that made the change, if any): a password
    /// changed because it leaked also locks out whoever used it. `false` if
    /// the login is unknown.
    pub fn set_admin_password(&self, login: &str, password_hash: &str, keep: Option<&[u8; 32]>, actor: &str, now: UnixTime) -> Result<bool> {
        self.serially(|| {
            let tx = self.begin()?;
            let id: Option<AdminId> = tx.query_row("SELECT id FROM admins WHERE login = ?1", params![login], |r| r.get(0)).optional()?;
            let Some(id) = id else { return Ok(false) };
            tx.execute("UPDATE admins SET password_hash = ?1, updated_at = ?2 WHERE id = ?3", params![password_hash, now, id])?;
            let ended = tx.execute(
                "DELETE FROM admin_sessions WHERE admin_id = ?1 AND id_hash IS NOT ?2",
                params![id, keep.map(|k| &k[..])],
            )?;
            audit(&tx, now, actor, "admin-password-changed", &format!("admin={login} sessions_ended={ended}"))?;
            tx.commit()?;
            Ok(true)
        })
    }

    /// The admin whose registered address is `email`, active or not.
    pub fn find_admin_by_email(&self, email: &EmailAddress) -> Result<Option<Admin>> {
        let index = self.sealer.index(email);
        let conn = self.conn()?;
        let row: Option<(AdminId, String, Vec<u8>, String, AdminStatus)> = conn
            .query_row(
                "SELECT id, login, email_sealed, districts, status FROM admins WHERE email_index = ?1 ORDER BY status = 'active' DESC, id LIMIT 1",
                params![&index[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let Some((id, login, sealed, districts, status)) = row else { return Ok(None) };
        Ok(Some(Admin { id, login, email: self.sealer.open_address(&sealed)?, districts: split_ids(&districts), active: status == AdminStatus::Active }))
    }

    /// The admin with this login and its password hash, for a login check.
    pub fn admin_credentials(&self, login: &str) -> Result<Option<(Admin, String)>> {
        let conn = self.conn()?;
        let row: Option<(AdminId, String, Vec<u8>, String, AdminStatus, String)> = conn
            .query_row(
                "SELECT id, login, email_sealed, districts, status, password_hash FROM admins WHERE login = ?1",
                params![login],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .optional()?;
        let Some((id, login, sealed, districts, status, hash)) = row else { return Ok(None) };
        let admin = Admin { id, login, email: self.sealer.open_address(&sealed)?, districts: split_ids(&districts), active: status == AdminStatus::Active };
        Ok(Some((admin, hash)))
    }
}

/// At most this many login attempts per login ID per window (a successful
/// login clears the ID's count).
pub const LOGIN_FAILURES_MAX: i64 = 5;
/// At most this many login attempts per client (IP address, or IPv6 /64)
/// per window, whatever the IDs tried: one client guessing across many IDs
/// is stopped too. A successful login gives its attempt back.
pub const LOGIN_FAILURES_PER_CLIENT_MAX: i64 = 20;
/// The window of [`LOGIN_FAILURES_MAX`] and [`LOGIN_FAILURES_PER_CLIENT_MAX`],
/// in seconds, from a key's first attempt.
pub const LOGIN_WINDOW_SECS: i64 = 900;

const LOGIN_SCOPE: &str = "admin-login";
const LOGIN_CLIENT_SCOPE: &str = "admin-login-client";

impl Store {
    /// Reserves one login attempt for this login ID and this client (a keyed
    /// hash of its address, see `Sealer::keyed_index`), before the password
    /// is checked. `false`: either is locked out, nothing was counted, and
    /// the password must not be checked.
    ///
    /// Each counter is one `INSERT … ON CONFLICT DO UPDATE … WHERE count <
    /// max` statement and both are in one transaction: however many
    /// attempts arrive at once, at most the limit of them get a slot, and a
    /// refused attempt rolls back the counter it already took. Unknown IDs
    /// count too, so probing costs the same.
    pub fn take_login_attempt(&self, login: &str, client: &[u8], now: UnixTime) -> Result<bool> {
        // Concurrent logins meet on the same two rows: on PostgreSQL one
        // of them may be aborted to keep the result serial; it is run again.
        self.serially(|| self.take_login_attempt_once(login, client, now))
    }

    fn take_login_attempt_once(&self, login: &str, client: &[u8], now: UnixTime) -> Result<bool> {
        let tx = self.begin()?;
        // A window opens at the first attempt and lasts LOGIN_WINDOW_SECS:
        // windows aligned to the clock would hand a second budget to an
        // attack that runs across a boundary. (`window_start` held a window
        // number before; such a row simply opens a new window.)
        for (scope, key, max) in [(LOGIN_SCOPE, login.as_bytes(), LOGIN_FAILURES_MAX), (LOGIN_CLIENT_SCOPE, client, LOGIN_FAILURES_PER_CLIENT_MAX)] {
            let taken = tx.execute(
                "INSERT INTO rate_limits (scope, key, window_start, count, last_at) VALUES (?1, ?2, ?3, 1, ?3)
                 ON CONFLICT (scope, key) DO UPDATE SET
                     count = CASE WHEN excluded.window_start - rate_limits.window_start < ?5 THEN rate_limits.count + 1 ELSE 1 END,
                     window_start = CASE WHEN excluded.window_start - rate_limits.window_start < ?5 THEN rate_limits.window_start ELSE excluded.window_start END,
                     last_at = excluded.last_at
                 WHERE excluded.window_start - rate_limits.window_start >= ?5 OR rate_limits.count < ?4",
                params![scope, key, now, max, LOGIN_WINDOW_SECS],
            )?;
            if taken == 0 {
                // Dropping the transaction rolls back the other counter.
                return Ok(false);
            }
        }
        tx.commit()?;
        Ok(true)
    }

    /// After a successful login (or password check) with an attempt from
    /// [`Store::take_login_attempt`]: the ID's count is cleared and the
    /// client's attempt given back.
    pub fn login_attempt_succeeded(&self, login: &str, client: &[u8], now: UnixTime) -> Result<()> {
        self.serially(|| {
            let tx = self.begin()?;
            tx.execute("DELETE FROM rate_limits WHERE scope = ?1 AND key = ?2", params![LOGIN_SCOPE, login.as_bytes()])?;
            tx.execute(
                "UPDATE rate_limits SET count = count - 1 WHERE scope = ?1 AND key = ?2 AND ?3 - window_start < ?4 AND count > 0",
                params![LOGIN_CLIENT_SCOPE, client, now, LOGIN_WINDOW_SECS],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Writes a failed login to the audit log (the attempt was counted
    /// when it was taken).
    pub fn record_login_failure(&self, login: &str, now: UnixTime) -> Result<()> {
        let conn = self.conn()?;
        let shown: String = login.chars().filter(char::is_ascii_graphic).take(64).collect();
        audit(&conn, now, "web", "admin-login-failed", &format!("login={shown}"))?;
        Ok(())
    }

    /// Records a session after a successful login.
    pub fn create_session(&self, admin: &Admin, id_hash: &[u8; 32], csrf: &str, now: UnixTime) -> Result<()> {
        self.serially(|| {
            let tx = self.begin()?;
            tx.execute(
                "INSERT INTO admin_sessions (id_hash, admin_id, csrf, created_at, last_seen) VALUES (?1, ?2, ?3, ?4, ?4)",
                params![&id_hash[..], admin.id, csrf, now],
            )?;
            audit(&tx, now, &format!("admin:{}", admin.login), "admin-login", "")?;
            tx.commit()?;
            Ok(())
        })
    }

    /// The live session with this id hash: its admin (still active) and CSRF
    /// token. Idle sessions (no request for `idle_secs`) are gone. A live
    /// session's last-seen time slides forward.
    pub fn session(&self, id_hash: &[u8; 32], now: UnixTime, idle_secs: i64) -> Result<Option<(Admin, String)>> {
        let conn = self.conn()?;
        conn.execute("DELETE FROM admin_sessions WHERE last_seen <= ?1", params![now - idle_secs])?;
        let row: Option<(AdminId, String, Vec<u8>, String, String)> = conn
            .query_row(
                "SELECT a.id, a.login, a.email_sealed, a.districts, s.csrf FROM admin_sessions s JOIN admins a ON a.id = s.admin_id
                 WHERE s.id_hash = ?1 AND a.status = 'active'",
                params![&id_hash[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let Some((id, login, sealed, districts, csrf)) = row else { return Ok(None) };
        conn.execute("UPDATE admin_sessions SET last_seen = ?1 WHERE id_hash = ?2", params![now, &id_hash[..]])?;
        let admin = Admin { id, login, email: self.sealer.open_address(&sealed)?, districts: split_ids(&districts), active: true };
        Ok(Some((admin, csrf)))
    }

    /// Ends a session (logout).
    pub fn delete_session(&self, id_hash: &[u8; 32], actor: &str, now: UnixTime) -> Result<()> {
        let conn = self.conn()?;
        conn.execute("DELETE FROM admin_sessions WHERE id_hash = ?1", params![&id_hash[..]])?;
        audit(&conn, now, actor, "admin-logout", "")?;
        Ok(())
    }

    /// Active subscribers per district and domain (a subscriber of two
    /// districts counts in both).
    pub fn subscriber_counts(&self) -> Result<Vec<(u32, String, i64)>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT d.district_id, s.domain, COUNT(*) FROM subscriber_districts d JOIN subscribers s ON s.id = d.subscriber_id
             WHERE s.status = 'active' GROUP BY d.district_id, s.domain ORDER BY d.district_id, s.domain",
        )?;
        let rows = stmt.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_>>()
    }

    /// The latest audit log entries: (at, actor, action, detail).
    pub fn audit_log(&self, limit: usize) -> Result<Vec<(UnixTime, String, String, String)>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT at, actor, action, detail FROM audit_log ORDER BY id DESC LIMIT ?1")?;
        let rows = stmt.query_map(params![limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect::<Result<_>>()
    }
}
