//! `mamoru subscribers import|export`: moving a list in or out (a council
//! switching from another service, or keeping an offline copy).

use mamoru_core::mail::OutgoingMail;
use mamoru_core::token::{Nonce, Purpose};
use mamoru_core::{EmailAddress, UnixTime};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::{Result, Store, SubscriberId, audit, districts_of};

/// What importing one address did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imported {
    /// Subscribed silently: active with the given districts.
    Added(SubscriberId),
    /// A pending registration with the districts pre-selected, and a 登録受付
    /// mail queued: the address owner confirms (or ignores it, and the
    /// registration is purged after 72 h).
    Invited(SubscriberId),
    /// The address is already registered (any status): left as it is.
    AlreadyRegistered,
}

/// One exported subscriber, decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRow {
    pub address: EmailAddress,
    pub status: String,
    pub districts: Vec<u32>,
    pub created_at: UnixTime,
    pub confirmed_at: UnixTime,
}

/// How a new subscriber enters.
pub enum ImportMode<F: FnOnce(SubscriberId, Nonce) -> OutgoingMail> {
    /// Active at once.
    Silent,
    /// Pending, with a 登録受付 mail whose token expires at the given time.
    Invite { token_expires_at: UnixTime, render: F },
}

impl Store {
    /// Imports one address with `districts` (configured ids, checked by the
    /// caller). Not rate limited: the operator vouches for the list.
    pub fn import_subscriber<F: FnOnce(SubscriberId, Nonce) -> OutgoingMail>(
        &self,
        addr: &EmailAddress,
        districts: &[u32],
        now: UnixTime,
        mode: ImportMode<F>,
    ) -> Result<Imported> {
        let index = self.sealer.index(addr);
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing: Option<i64> =
            tx.query_row("SELECT id FROM subscribers WHERE addr_index = ?1", [&index[..]], |r| r.get(0)).optional()?;
        if existing.is_some() {
            return Ok(Imported::AlreadyRegistered);
        }
        let (status, confirmed_at) = match mode {
            ImportMode::Silent => ("active", now),
            ImportMode::Invite { .. } => ("pending", 0),
        };
        tx.execute(
            "INSERT INTO subscribers (addr_index, addr_sealed, domain, status, created_at, confirmed_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5)",
            params![&index[..], self.sealer.seal_address(addr)?, addr.domain(), status, now, confirmed_at],
        )?;
        let subscriber = tx.last_insert_rowid();
        {
            let mut ins = tx.prepare("INSERT INTO subscriber_districts (subscriber_id, district_id) VALUES (?1, ?2)")?;
            for d in districts {
                ins.execute(params![subscriber, d])?;
            }
        }
        let imported = match mode {
            ImportMode::Silent => {
                let mut link_nonce: Nonce = [0; 8];
                self.sealer.random(&mut link_nonce)?;
                tx.execute("UPDATE subscribers SET link_nonce = ?1 WHERE id = ?2", params![&link_nonce[..], subscriber])?;
                Imported::Added(subscriber)
            }
            ImportMode::Invite { token_expires_at, render } => {
                let nonce = self.issue_token(&tx, Purpose::Register, subscriber, token_expires_at)?;
                let mail = render(subscriber, nonce);
                self.insert_outbox(&tx, &mail, subscriber, 0, now, token_expires_at)?;
                Imported::Invited(subscriber)
            }
        };
        audit(&tx, now, "cli", "subscriber-imported", &format!("subscriber={subscriber} addr={} status={status}", addr.masked()))?;
        tx.commit()?;
        Ok(imported)
    }

    /// Every confirmed subscriber (active or suspended), decrypted, by id.
    pub fn export_subscribers(&self) -> Result<Vec<ExportRow>> {
        let conn = self.conn();
        let rows: Vec<(i64, Vec<u8>, String, i64, i64)> = {
            let mut st = conn.prepare(
                "SELECT id, addr_sealed, status, created_at, confirmed_at FROM subscribers
                 WHERE status IN ('active', 'suspended') ORDER BY id",
            )?;
            let it = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
            it.collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (id, sealed, status, created_at, confirmed_at) in rows {
            out.push(ExportRow {
                address: self.sealer.open_address(&sealed)?,
                status,
                districts: districts_of(&conn, id)?,
                created_at,
                confirmed_at,
            });
        }
        Ok(out)
    }
}
