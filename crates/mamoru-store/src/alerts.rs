//! Alerts: drafts from admins' posts, the publish token, and the fan-out —
//! one copy per distinct active subscriber of the union of the districts,
//! queued in `alert_queue` in the same transaction that consumes the token
//! (`queue` makes each an outbox row when a relay claims it).

use mamoru_core::alert::FollowupKind;
use mamoru_core::mail::OutgoingMail;
use mamoru_core::token::{Claims, Nonce, Purpose};
use mamoru_core::{EmailAddress, UnixTime};
use crate::db::{Conn, OptionalExt, Row};
use crate::params;

use crate::admins::{AdminId, split_ids};
use crate::states::{AlertState, OutboxState};
use crate::{OutboxId, Result, Store, StoreError, SubscriberId, audit};

/// Alert row id.
pub use mamoru_core::AlertId;

/// Outbox priority of alerts and of the admin mail about them: ahead of
/// registration mail (10), so a queue of sign-ups never delays an alert.
pub const ALERT_PRIORITY: i64 = 100;

/// A post to record as a draft.
#[derive(Debug, Clone)]
pub struct NewAlert<'a> {
    pub admin: AdminId,
    /// `mail`, `web` or `cli`.
    pub source: &'a str,
    /// The Message-ID of a mailed post (or a digest): a second delivery of
    /// the same key records nothing. Empty for web and CLI posts.
    pub source_key: &'a str,
    pub kind: &'a str,
    pub title: &'a str,
    pub text: &'a str,
    pub districts: &'a [u32],
    pub is_test: bool,
    /// The first report a follow-up continues (`None`: a first report). Its
    /// recipients are the report's, not the districts' subscribers.
    pub followup_of: Option<AlertId>,
    /// A follow-up's kind (`None`: a first report).
    pub followup_kind: Option<FollowupKind>,
    /// When the incident happened (0: unknown).
    pub occurred_at: UnixTime,
    /// 1 = approximate (ごろ), 2 = the day only.
    pub occurred_flags: i64,
    /// 緊急: delivered inside quiet hours too.
    pub urgent: bool,
    /// Copies carry a 確認しました link.
    pub ask_confirm: bool,
}

impl<'a> NewAlert<'a> {
    /// A first report by `admin` from `source` with nothing in it yet: the
    /// base the callers fill with struct-update syntax.
    pub fn new(admin: AdminId, source: &'a str) -> Self {
        NewAlert {
            admin,
            source,
            source_key: "",
            kind: "",
            title: "",
            text: "",
            districts: &[],
            is_test: false,
            followup_of: None,
            followup_kind: None,
            occurred_at: 0,
            occurred_flags: 0,
            urgent: false,
            ask_confirm: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drafted {
    /// The draft and its preview mail are queued.
    Created { alert: AlertId, outbox: OutboxId },
    /// This source key was seen before: nothing was recorded.
    Duplicate,
}

/// An alert as the pages and the fan-out see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRow {
    pub id: AlertId,
    pub admin: AdminId,
    pub admin_login: String,
    pub source: String,
    pub kind: String,
    pub title: String,
    pub text: String,
    pub districts: Vec<u32>,
    pub is_test: bool,
    /// `draft`, `published` or `rejected`.
    pub state: AlertState,
    pub created_at: UnixTime,
    pub published_at: UnixTime,
    pub recipients: i64,
    /// The first report this follow-up continues (`None`: a first report).
    pub followup_of: Option<AlertId>,
    /// A follow-up's kind (`None`: a first report).
    pub followup_kind: Option<FollowupKind>,
    /// A first report's state: `None` while open, else the kind of its
    /// latest published follow-up.
    pub incident_state: Option<FollowupKind>,
    /// When that follow-up was published (0: none yet).
    pub updated_at: UnixTime,
    /// When the incident happened (0: unknown).
    pub occurred_at: UnixTime,
    pub occurred_flags: i64,
    pub urgent: bool,
    /// A follow-up's report's publication time (0 for a first report).
    pub report_published_at: UnixTime,
    /// Copies carry a 確認しました link.
    pub ask_confirm: bool,
}

/// What authorises a publication.
#[derive(Debug, Clone, Copy)]
pub enum PublishAuth<'a> {
    /// The one-time link of a preview mail (consumed by the publication).
    Token(&'a Claims),
    /// An admin signed in to the panel, or an operator on the machine.
    Direct(AlertId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    Published { alert: AlertId, recipients: usize },
    /// The token was used or revoked, the alert is not a draft any more, or
    /// its admin was disabled; or a follow-up's report was retracted
    /// meanwhile.
    Unusable,
    /// The incident is older than `[alerts] stale_incident_secs` and the
    /// publisher did not confirm it: nothing changed (the link still works).
    StaleIncident,
}

const ALERT_COLUMNS: &str = "a.id, a.admin_id, ad.login, a.source, a.kind, a.title, a.text, a.districts, a.is_test, a.state,
     a.created_at, a.published_at, a.recipients, a.followup_of, a.followup_kind, a.incident_state, a.updated_at,
     a.occurred_at, a.occurred_flags, a.urgent, a.ask_confirm,
     COALESCE((SELECT r.published_at FROM alerts r WHERE r.id = a.followup_of AND a.followup_of <> 0), 0)";

/// A follow-up kind as the database keeps it: its name, or empty for none.
/// Any other text is an error, never a silent "none".
fn kind_column(r: &Row, i: usize) -> Result<Option<FollowupKind>> {
    let text: String = r.get(i)?;
    if text.is_empty() {
        return Ok(None);
    }
    FollowupKind::parse(&text).map(Some).ok_or_else(|| StoreError::Column(format!("unknown follow-up kind {text:?}")))
}

fn alert_row(r: &Row) -> Result<AlertRow> {
    Ok(AlertRow {
        id: r.get(0)?,
        admin: r.get(1)?,
        admin_login: r.get(2)?,
        source: r.get(3)?,
        kind: r.get(4)?,
        title: r.get(5)?,
        text: r.get(6)?,
        districts: split_ids(&r.get::<String>(7)?),
        is_test: r.get::<i64>(8)? != 0,
        state: r.get(9)?,
        created_at: r.get(10)?,
        published_at: r.get(11)?,
        recipients: r.get(12)?,
        followup_of: Some(AlertId::new(r.get(13)?)).filter(|id| id.get() != 0),
        followup_kind: kind_column(r, 14)?,
        incident_state: kind_column(r, 15)?,
        updated_at: r.get(16)?,
        occurred_at: r.get(17)?,
        occurred_flags: r.get(18)?,
        urgent: r.get::<i64>(19)? != 0,
        ask_confirm: r.get::<i64>(20)? != 0,
        report_published_at: r.get(21)?,
    })
}

/// `1,3,5` for an `IN (...)` list. District ids are integers, so this is
/// not an injection path; it avoids one statement per district.
fn id_list(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// Distinct active subscribers of `districts`, per domain.
/// The outbox rows of a report that a retraction ended before they were
/// sent: `expired` (a final state the relay never claims) with this reason.
pub const RETRACTED_REASON: &str = "retracted before delivery";

/// The outbox rows of alert `?1`. `alert_id <> 0` is the condition of
/// `outbox_by_alert`, a partial index: written out, it lets both engines use
/// that index for a parameter they cannot see.
pub(crate) const ALERT_ROWS: &str = "alert_id <> 0 AND alert_id = ?1";

/// The subscribers a follow-up of `report` goes to: those with a copy of the
/// report that was not stopped by its retraction, still active — whatever
/// districts they chose since. A subscriber who deleted the registration
/// has no subscriber row any more.
const FOLLOWUP_RECIPIENTS: &str = "s.status = 'active' AND (EXISTS (SELECT 1 FROM outbox o
         WHERE o.alert_id <> 0 AND o.alert_id = ?R AND o.subscriber_id = s.id AND NOT (o.state = 'expired' AND o.last_error = ?X))
      OR EXISTS (SELECT 1 FROM alert_queue q WHERE q.alert_id = ?R AND q.domain = s.domain AND q.subscriber_id = s.id))";

fn followup_where(report: AlertId) -> String {
    FOLLOWUP_RECIPIENTS.replace("?R", &report.to_string()).replace("?X", &format!("'{RETRACTED_REASON}'"))
}

/// The subscribers an alert goes to: a first report's, of its districts; a
/// follow-up's, the report's recipients (see [`FOLLOWUP_RECIPIENTS`]).
fn recipients_where(districts: &[u32], report: Option<AlertId>) -> String {
    match report {
        Some(report) => followup_where(report),
        None => format!(
            "s.status = 'active' AND EXISTS (SELECT 1 FROM subscriber_districts d
                 WHERE d.subscriber_id = s.id AND d.district_id IN ({}))",
            id_list(districts)
        ),
    }
}

/// The subscriber `s` turned the alert's kind (`kind`) off, and the alert is
/// a first report (`followup` = 0): a follow-up goes to the report's
/// recipients whatever they chose since. The arguments are placeholders.
///
/// The follow-up test sits inside the `EXISTS`, not beside it: a bare
/// `NOT EXISTS` over the subscriber is what PostgreSQL turns into an anti
/// join, so the fan-out reads `subscriber_kinds_off` once instead of probing
/// it per recipient in a subplan. With `followup = 0 AND EXISTS …` it kept
/// the subplan, and with it a nested loop over the subscribers' primary key
/// and a sort of every recipient (docs/benchmarks.md, fan-out on
/// PostgreSQL). SQLite reads both forms alike.
fn kind_off(kind: &str, followup: &str) -> String {
    format!("(EXISTS (SELECT 1 FROM subscriber_kinds_off k WHERE k.subscriber_id = s.id AND k.kind = {kind} AND {followup} = 0))")
}

/// Seconds a copy to subscriber `s` waits for the end of their quiet hours:
/// 0 for a 緊急 alert (`urgent` <> 0) or outside the window. `minute` is the
/// minute of the day in Japan time, `second` the seconds into it; the
/// window `[quiet_start, quiet_end)` wraps past midnight when start > end.
fn quiet_wait(minute: &str, second: &str, urgent: &str) -> String {
    format!(
        "(CASE WHEN {urgent} = 0 AND s.quiet_start >= 0 AND s.quiet_start <> s.quiet_end
              AND ((s.quiet_start < s.quiet_end AND {minute} >= s.quiet_start AND {minute} < s.quiet_end)
                OR (s.quiet_start > s.quiet_end AND ({minute} >= s.quiet_start OR {minute} < s.quiet_end)))
          THEN ((s.quiet_end - {minute} + 1440) % 1440) * 60 - {second} ELSE 0 END)"
    )
}

/// The minute of the day and the seconds into it, in Japan time.
fn japan_minute(now: UnixTime) -> (i64, i64) {
    let local = now + mamoru_core::jst::OFFSET;
    (local.rem_euclid(86_400) / 60, local.rem_euclid(60))
}

/// Who an alert would reach if published now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audience {
    /// Recipients per address domain: those who take the alert's kind.
    pub domains: Vec<(String, i64)>,
    pub reach: Reach,
}

pub use mamoru_core::alert::Reach;

fn audience(conn: &Conn<'_>, districts: &[u32], report: Option<AlertId>, kind: &str, urgent: bool, now: UnixTime) -> Result<Audience> {
    let sql = format!(
        "SELECT domain, CAST(SUM(CASE WHEN off THEN 0 ELSE 1 END) AS BIGINT),
                CAST(SUM(CASE WHEN NOT off AND wait > 0 THEN 1 ELSE 0 END) AS BIGINT),
                CAST(SUM(CASE WHEN off THEN 1 ELSE 0 END) AS BIGINT)
         FROM (SELECT s.domain AS domain, {} AS off, {} AS wait FROM subscribers s WHERE {}) AS a
         GROUP BY domain ORDER BY domain",
        kind_off("?1", "?2"),
        quiet_wait("?3", "?4", "?5"),
        recipients_where(districts, report)
    );
    let (minute, second) = japan_minute(now);
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(
        params![kind, i64::from(report.is_some()), minute, second, i64::from(urgent)],
        |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?, r.get::<i64>(2)?, r.get::<i64>(3)?)),
    )?;
    let mut out = Audience::default();
    for row in rows {
        let (domain, takes, waits, off) = row?;
        if takes > 0 {
            out.domains.push((domain, takes));
        }
        out.reach.now += takes - waits;
        out.reach.later += waits;
        out.reach.kind_off += off;
    }
    Ok(out)
}

impl Store {
    /// Who an alert to `districts` (or a follow-up of `report`) of `kind`
    /// would reach if published at `now`, per domain and by preference.
    pub fn audience(&self, districts: &[u32], report: Option<AlertId>, kind: &str, urgent: bool, now: UnixTime) -> Result<Audience> {
        audience(&self.conn()?, districts, report, kind, urgent, now)
    }

    /// Records a draft, issues its publish token and queues the preview mail
    /// `render` builds from the alert id, the token nonce and who it would
    /// reach — one transaction. A known `source_key` records
    /// nothing.
    pub fn draft_alert(
        &self,
        a: &NewAlert<'_>,
        now: UnixTime,
        publish_expires_at: UnixTime,
        mut render: impl FnMut(AlertId, Nonce, &Audience) -> OutgoingMail,
    ) -> Result<Drafted> {
        self.serially(|| {
            let tx = self.begin()?;
            let inserted: Option<AlertId> = tx.query_row(
                "INSERT INTO alerts (admin_id, source, source_key, kind, title, text, districts, is_test, created_at,
                                     followup_of, followup_kind, occurred_at, occurred_flags, urgent, ask_confirm)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
                 ON CONFLICT (source_key) WHERE source_key <> '' DO NOTHING RETURNING id",
                params![
                    a.admin,
                    a.source,
                    a.source_key,
                    a.kind,
                    a.title,
                    a.text,
                    id_list(a.districts),
                    a.is_test as i64,
                    now,
                    a.followup_of.map_or(0, AlertId::get),
                    a.followup_kind.map_or("", FollowupKind::as_str),
                    a.occurred_at,
                    a.occurred_flags,
                    a.urgent as i64,
                    a.ask_confirm as i64
                ],
                |r| r.get(0),
            ).optional()?;
            let Some(alert) = inserted else { return Ok(Drafted::Duplicate) };
            let nonce = self.issue_token(&tx, Purpose::Publish, alert.get(), publish_expires_at)?;
            let counts = audience(&tx, a.districts, a.followup_of, a.kind, a.urgent, now)?;
            let mail = render(alert, nonce, &counts);
            // The preview is useless once its link has expired.
            let outbox = self.insert_outbox(&tx, &mail, None, ALERT_PRIORITY, now, publish_expires_at)?;
            audit(
                &tx,
                now,
                &format!("admin:{}", a.admin),
                "alert-drafted",
                &format!("alert={alert} source={} districts={} test={}", a.source, id_list(a.districts), a.is_test),
            )?;
            tx.commit()?;
            Ok(Drafted::Created { alert, outbox })
        })
    }

    /// Records a refused post (so a redelivery is not answered twice) and
    /// queues the explanation `mail` to the admin. `false`: seen before,
    /// nothing queued.
    #[allow(clippy::too_many_arguments)]
    pub fn reject_post(&self, admin: AdminId, source_key: &str, title: &str, reason: &str, mail: &OutgoingMail, now: UnixTime, expires_at: UnixTime) -> Result<bool> {
        self.serially(|| {
            let tx = self.begin()?;
            let inserted: Option<AlertId> = tx
                .query_row(
                    "INSERT INTO alerts (admin_id, source, source_key, title, text, districts, state, created_at)
                     VALUES (?1, 'mail', ?2, ?3, '', '', 'rejected', ?4)
                     ON CONFLICT (source_key) WHERE source_key <> '' DO NOTHING RETURNING id",
                    params![admin, source_key, title, now],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(alert) = inserted else { return Ok(false) };
            self.insert_outbox(&tx, &mail.clone(), None, ALERT_PRIORITY, now, expires_at)?;
            audit(&tx, now, &format!("admin:{admin}"), "alert-rejected", &format!("alert={alert} reason={reason}"))?;
            tx.commit()?;
            Ok(true)
        })
    }

    /// One alert by id.
    pub fn alert(&self, id: AlertId) -> Result<Option<AlertRow>> {
        let conn = self.conn()?;
        let sql = format!("SELECT {ALERT_COLUMNS} FROM alerts a JOIN admins ad ON ad.id = a.admin_id WHERE a.id = ?1");
        conn.query_row(&sql, params![id], alert_row).optional()
    }

    /// For the GET of a publish link: the draft, if the token is still
    /// unused and the admin still active. Changes nothing.
    pub fn publish_view(&self, claims: &Claims, now: UnixTime) -> Result<Option<AlertRow>> {
        let conn = self.conn()?;
        let sql = format!(
            "SELECT {ALERT_COLUMNS} FROM alerts a JOIN admins ad ON ad.id = a.admin_id
             JOIN tokens t ON t.subject_id = a.id AND t.purpose = ?2
             WHERE a.id = ?1 AND t.nonce = ?3 AND t.used_at = 0 AND t.expires_at > ?4
               AND a.state = 'draft' AND ad.status = 'active'"
        );
        conn
            .query_row(&sql, params![claims.subject as i64, Purpose::Publish.as_str(), &claims.nonce[..], now], alert_row)
            .optional()
    }

    /// Publishes a draft: consumes the token (if that is the authority),
    /// marks the alert published, and queues one copy per distinct active
    /// subscriber of its districts in `alert_queue` — one transaction, so an
    /// alert goes to everyone or to no one, and only once.
    ///
    /// A copy holds neither content, address, sender nor Message-ID: it is
    /// the alert id, the subscriber's domain and id, and its times. A claim
    /// makes it an outbox row (`queue::claim`). The alert keeps `sender` and
    /// `mail_domain`; the claim gives each copy the
    /// Message-ID `alert.{alert}.{subscriber}@{mail_domain}` and the
    /// subscriber's sealed address and footer-link nonce. The relay renders
    /// each copy when it sends it (`QueuedMail::alert`), with the alert's
    /// `published_at` as its time, so a resend is identical. Publishing
    /// therefore opens no address, renders and seals nothing, and writes a
    /// small row per recipient.
    #[allow(clippy::too_many_arguments)]
    pub fn publish_alert(
        &self,
        auth: PublishAuth<'_>,
        actor: &str,
        now: UnixTime,
        expires_at: UnixTime,
        sender: &str,
        mail_domain: &str,
    ) -> Result<Published> {
        self.serially(|| {
            // READ COMMITTED on PostgreSQL: the recipients are one statement
            // (one snapshot), and every other step is a statement guarded by
            // the state of the row it changes (the token unused, the alert a
            // draft, the report open, a copy still queued), which PostgreSQL
            // re-checks against the newest version after waiting for its lock;
            // so a second publisher of the alert finds it published and changes
            // nothing. Under SERIALIZABLE the walk over every subscriber took
            // predicate locks on the whole table, for a few percent of the
            // time of a publish to a million, and exposed a statement of
            // seconds to aborts for what others wrote meanwhile.
            let tx = self.begin_rows()?;
            let id = match auth {
                PublishAuth::Token(claims) => {
                    if !crate::consume_token(&tx, claims, Purpose::Publish, now)? {
                        return Ok(Published::Unusable);
                    }
                    match AlertId::from_subject(claims.subject) {
                        Some(id) => id,
                        None => return Ok(Published::Unusable),
                    }
                }
                PublishAuth::Direct(id) => id,
            };
            let marked = tx.execute(
                "UPDATE alerts SET state = 'published', published_at = ?1
                 WHERE id = ?2 AND state = 'draft' AND admin_id IN (SELECT id FROM admins WHERE status = 'active')",
                params![now, id],
            )?;
            if marked != 1 {
                return Ok(Published::Unusable);
            }
            let (districts, is_test, report, followup_kind, kind, urgent, ask_confirm): (String, i64, i64, Option<FollowupKind>, String, i64, i64) =
                tx.query_row(
                    "SELECT districts, is_test, followup_of, followup_kind, kind, urgent, ask_confirm FROM alerts WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, kind_column(r, 3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
                )?;
            let ids = id_list(&split_ids(&districts));
            // The district a copy's 確認しました link counts under, fixed now so
            // the copy renders the same every time.
            let confirm_district = if ask_confirm != 0 {
                format!(
                    "(SELECT MIN(d.district_id) FROM subscriber_districts d WHERE d.subscriber_id = s.id AND d.district_id IN ({ids}))"
                )
            } else {
                "0".to_string()
            };
            let report = Some(AlertId::new(report)).filter(|r| r.get() != 0);
            if let Some(report) = report {
                // A follow-up: the report must still stand (a retraction is final).
                let open = tx.execute(
                    "UPDATE alerts SET incident_state = ?1, updated_at = ?2
                     WHERE id = ?3 AND state = 'published' AND followup_of = 0 AND incident_state <> 'retracted'",
                    params![followup_kind.map_or("", FollowupKind::as_str), now, report],
                )?;
                if open != 1 {
                    return Ok(Published::Unusable);
                }
                if followup_kind == Some(FollowupKind::Retracted) {
                    // Stop what was not sent yet first (of the report and of its
                    // earlier follow-ups): those copies are never delivered, and
                    // their subscribers get no retraction either.
                    let stopped = tx.execute(
                        "UPDATE outbox SET state = 'expired', done_at = ?1, last_error = ?2, lease_until = 0
                         WHERE state = 'queued' AND alert_id <> 0
                           AND alert_id IN (SELECT CAST(?3 AS BIGINT) UNION ALL SELECT id FROM alerts WHERE followup_of = ?3)",
                        params![now, RETRACTED_REASON, report],
                    )? + crate::queue::settle(
                        &tx,
                        "alert_id IN (SELECT CAST(?7 AS BIGINT) UNION ALL SELECT id FROM alerts WHERE followup_of = ?7)",
                        params![report],
                        OutboxState::Expired,
                        RETRACTED_REASON,
                        now,
                    )?;
                    audit(&tx, now, actor, "alert-retracted", &format!("alert={report} stopped={stopped}"))?;
                }
            }
            let recipients = recipients_where(&split_ids(&districts), report);
            // One statement: the engine walks the subscribers and writes the rows
            // without a round trip through Rust per recipient. A copy holds
            // neither content nor address nor sender nor Message-ID: the relay
            // renders the content from the alert, and the claim reads the
            // address, sealed at registration, from the subscriber's row and
            // builds the rest from the alert's `sender` and `mail_domain`
            // (`attach_alerts`). Bytes not copied are bytes not written at the
            // publish, which is the moment that has to be fast (and one place
            // less holding an address).
            //
            // Preferences are part of the same statement. Kinds: a first report
            // skips subscribers who turned its kind off (a follow-up goes to the
            // report's recipients whatever they chose since). Quiet hours: unless
            // the alert is 緊急, a row of a subscriber inside their quiet window
            // waits until the window ends (`next_attempt_at`), and its expiry
            // counts from then.
            tx.execute("UPDATE alerts SET sender = ?1, mail_domain = ?2 WHERE id = ?3", params![sender, mail_domain, id])?;
            let delay = quiet_wait("?4", "?5", "?6");
            let kind_off = kind_off("?7", "?8");
            let insert = format!(
                "INSERT INTO alert_queue (alert_id, domain, subscriber_id, due_at, expires_at, created_at, confirm_district)
                 SELECT ?1, s.domain, s.id, ?2 + {delay}, ?3 + {delay}, ?2, {confirm_district}
                 FROM subscribers s
                 WHERE {recipients}
                   AND NOT {kind_off}"
            );
            let (minute, second) = japan_minute(now);
            let count = tx.execute(
                &insert,
                params![id, now, expires_at, minute, second, urgent, kind, i64::from(report.is_some())],
            )?;
            tx.execute("UPDATE alerts SET recipients = ?1 WHERE id = ?2", params![count as i64, id])?;
            audit(&tx, now, actor, "alert-published", &format!("alert={id} recipients={count} test={}", is_test != 0))?;
            // Counted with the commit, whoever publishes (link, panel, CLI).
            crate::counters::bump(&tx, crate::counters::ALERTS_PUBLISHED, &[])?;
            tx.commit()?;
            Ok(Published::Published { alert: id, recipients: count })
        })
    }

    /// Latest alerts, newest first (drafts and refused posts included).
    pub fn recent_alerts(&self, limit: usize) -> Result<Vec<AlertRow>> {
        let conn = self.conn()?;
        let sql = format!("SELECT {ALERT_COLUMNS} FROM alerts a JOIN admins ad ON ad.id = a.admin_id ORDER BY a.id DESC LIMIT ?1");
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params![limit as i64], alert_row)?;
        rows.collect::<Result<_>>()
    }

    /// The published follow-ups of `reports`, oldest first.
    pub fn followups_of(&self, reports: &[AlertId]) -> Result<Vec<AlertRow>> {
        if reports.is_empty() {
            return Ok(vec![]);
        }
        let conn = self.conn()?;
        let ids = reports.iter().map(|id| id.get().to_string()).collect::<Vec<_>>().join(",");
        let sql = format!(
            "SELECT {ALERT_COLUMNS} FROM alerts a JOIN admins ad ON ad.id = a.admin_id
             WHERE a.followup_of IN ({ids}) AND a.state = 'published' ORDER BY a.published_at, a.id"
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params![], alert_row)?;
        rows.collect::<Result<_>>()
    }

    /// The public archive: published first reports (never テスト配信) since
    /// `since`, newest first, optionally only those for `district`; each
    /// incident once, its follow-ups in [`Store::followups_of`].
    pub fn archive(&self, district: Option<u32>, since: UnixTime, limit: usize) -> Result<Vec<AlertRow>> {
        let conn = self.conn()?;
        let sql = format!(
            "SELECT {ALERT_COLUMNS} FROM alerts a JOIN admins ad ON ad.id = a.admin_id
             WHERE a.state = 'published' AND a.is_test = 0 AND a.followup_of = 0 AND a.published_at >= ?1
               AND (CAST(?2 AS BIGINT) = 0 OR ',' || a.districts || ',' LIKE '%,' || CAST(?2 AS BIGINT) || ',%')
             ORDER BY a.published_at DESC, a.id DESC LIMIT ?3"
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params![since, district.unwrap_or(0), limit as i64], alert_row)?;
        rows.collect::<Result<_>>()
    }

    /// Delivery progress of an alert: `(domain, state, count)`; rows a
    /// retraction stopped count as `cancelled`.
    pub fn alert_progress(&self, id: AlertId) -> Result<Vec<(String, String, i64)>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT domain, st, COUNT(*) FROM (
                 SELECT domain, CASE WHEN state = 'expired' AND last_error = ?2 THEN 'cancelled' ELSE state END AS st
                 FROM outbox WHERE {ALERT_ROWS}
                 UNION ALL SELECT domain, 'queued' FROM alert_queue WHERE alert_id = ?1
             ) AS p GROUP BY domain, st ORDER BY domain, st"
        ))?;
        let rows = stmt.query_map(params![id, RETRACTED_REASON], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_>>()
    }
}

impl Store {
    /// A subscriber's delivery preferences: the configured kinds they turned
    /// off, and quiet hours as minutes of the day in Japan time `[start,
    /// end)` (wrapping past midnight when start > end), `None` for none.
    pub fn set_preferences(&self, subscriber: crate::SubscriberId, kinds_off: &[String], quiet: Option<(i64, i64)>, now: UnixTime) -> Result<()> {
        self.serially(|| {
            let tx = self.begin()?;
            crate::write_preferences(&tx, subscriber, &crate::Preferences { kinds_off: kinds_off.to_vec(), quiet })?;
            tx.execute("UPDATE subscribers SET updated_at = ?1 WHERE id = ?2", params![now, subscriber])?;
            tx.commit()?;
            Ok(())
        })
    }

    /// When the copies of an alert were delivered, per address domain:
    /// `(domain, copies sent, when the last one was)`.
    pub fn delivery_times(&self, id: AlertId) -> Result<Vec<(String, i64, UnixTime)>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT domain, COUNT(*), MAX(done_at) FROM outbox WHERE {ALERT_ROWS} AND state = 'sent' GROUP BY domain ORDER BY domain"
        ))?;
        let rows = stmt.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_>>()
    }
}

impl Store {
    /// Adds confirmed subscribers in one transaction, skipping addresses
    /// already known; for imports, tests and the fan-out benchmark. Returns
    /// how many were added.
    pub fn import_active_subscribers(&self, items: &[(EmailAddress, Vec<u32>)], actor: &str, now: UnixTime) -> Result<usize> {
        let tx = self.begin()?;
        let mut added = 0;
        for (addr, districts) in items {
            let mut nonce: Nonce = [0; 8];
            self.sealer.random(&mut nonce)?;
            let id: Option<SubscriberId> = tx
                .query_row(
                    "INSERT INTO subscribers (addr_index, addr_sealed, domain, status, created_at, confirmed_at, updated_at, link_nonce)
                     VALUES (?1, ?2, ?3, 'active', ?4, ?4, ?4, ?5) ON CONFLICT (addr_index) DO NOTHING RETURNING id",
                    params![&self.sealer.index(addr)[..], self.sealer.seal_address(addr)?, addr.domain(), now, &nonce[..]],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(id) = id else { continue };
            for d in districts {
                tx.execute("INSERT INTO subscriber_districts (subscriber_id, district_id) VALUES (?1, ?2)", params![id, d])?;
            }
            added += 1;
        }
        audit(&tx, now, actor, "subscribers-imported", &format!("count={added}"))?;
        tx.commit()?;
        Ok(added)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

use mamoru_core::SubscriberId;
    use mamoru_core::mail::{MailKind, OutgoingMail};

    use super::*;
    use crate::admins::AdminAdded;
    use crate::keys;

    const T0: UnixTime = 1_800_000_000;

    fn addr(s: &str) -> EmailAddress {
        EmailAddress::parse(s).unwrap()
    }

    fn mail(to: &EmailAddress, id: String) -> OutgoingMail {
        OutgoingMail { kind: MailKind::Alert, sender: "ans@x".into(), to: to.clone(), message_id: id, bytes: b"x".to_vec() }
    }

    fn setup() -> (tempfile::TempDir, Store, AdminId) {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys::load_or_create(dir.path()).unwrap();
        let store = Store::open_for_test(dir.path(), &keys, Duration::from_millis(200)).unwrap();
        let AdminAdded::Added(admin) = store.add_admin("chuo", &addr("staff@city.test"), "$argon2id$x", &[1, 3], "cli", T0).unwrap() else {
            panic!("added")
        };
        assert_eq!(store.add_admin("chuo", &addr("other@city.test"), "h", &[], "cli", T0).unwrap(), AdminAdded::LoginTaken);
        let subs = vec![
            (addr("a@docomo.ne.jp"), vec![1]),
            (addr("b@ezweb.ne.jp"), vec![1, 3]),
            (addr("c@docomo.ne.jp"), vec![2]),
            (addr("d@i.softbank.jp"), vec![3, 4]),
        ];
        assert_eq!(store.import_active_subscribers(&subs, "test", T0).unwrap(), 4);
        assert_eq!(store.import_active_subscribers(&subs[..1], "test", T0).unwrap(), 0);
        (dir, store, admin)
    }

    fn draft(store: &Store, admin: AdminId, key: &str, districts: &[u32]) -> (Drafted, Option<Claims>, Vec<(String, i64)>) {
        let mut claims = None;
        let mut seen = vec![];
        let a = NewAlert { admin, source: "mail", source_key: key, title: "t", text: "x", districts, ..NewAlert::new(admin, "mail") };
        let d = store
            .draft_alert(&a, T0, T0 + 3600, |id, nonce, counts| {
                claims = Some(Claims { purpose: Purpose::Publish, subject: id.subject(), nonce, expires_at: T0 + 3600 });
                seen = counts.domains.clone();
                OutgoingMail { kind: MailKind::AlertPreview, ..mail(&addr("staff@city.test"), format!("preview.{id}@x")) }
            })
            .unwrap();
        (d, claims, seen)
    }

    #[test]
    fn admins_are_found_by_address_and_disabled() {
        let (_d, store, admin) = setup();
        let a = store.find_admin_by_email(&addr("STAFF@City.Test")).unwrap().unwrap();
        assert_eq!((a.id, a.login.as_str(), a.active, a.districts.clone()), (admin, "chuo", true, vec![1, 3]));
        assert_eq!(a.forbidden(&[1, 2, 3]), vec![2]);
        assert!(store.find_admin_by_email(&addr("staff@evil.test")).unwrap().is_none());
        assert!(store.disable_admin("chuo", "cli", T0).unwrap());
        assert!(!store.disable_admin("nobody", "cli", T0).unwrap());
        assert!(!store.find_admin_by_email(&addr("staff@city.test")).unwrap().unwrap().active);
        assert_eq!(store.list_admins().unwrap().len(), 1);
    }

    #[test]
    fn publish_fans_out_once_to_the_union_of_districts() {
        let (_d, store, admin) = setup();
        let (d, claims, counts) = draft(&store, admin, "<m1@city.test>", &[1, 3]);
        assert!(matches!(d, Drafted::Created { .. }));
        assert_eq!(counts, vec![("docomo.ne.jp".to_string(), 1), ("ezweb.ne.jp".into(), 1), ("i.softbank.jp".into(), 1)]);
        assert_eq!(draft(&store, admin, "<m1@city.test>", &[1]).0, Drafted::Duplicate, "a redelivered post is a no-op");
        let claims = claims.unwrap();
        assert!(store.publish_view(&claims, T0 + 1).unwrap().is_some());
        let r = store.publish_alert(PublishAuth::Token(&claims), "admin:chuo", T0 + 1, T0 + 7200, "ans@x", "x").unwrap();
        let alert = AlertId::from_subject(claims.subject).unwrap();
        assert_eq!(r, Published::Published { alert, recipients: 3 });
        assert_eq!(store.alert(alert).unwrap().unwrap().recipients, 3);
        // The token is single use, and the alert is not a draft any more.
        assert!(store.publish_view(&claims, T0 + 2).unwrap().is_none());
        let again = store.publish_alert(PublishAuth::Token(&claims), "x", T0 + 2, T0 + 7200, "ans@x", "x").unwrap();
        assert_eq!(again, Published::Unusable);
        let direct = store.publish_alert(PublishAuth::Direct(alert), "x", T0 + 2, T0 + 7200, "ans@x", "x");
        assert_eq!(direct.unwrap(), Published::Unusable);
        let progress = store.alert_progress(alert).unwrap();
        assert_eq!(progress.iter().map(|p| p.2).sum::<i64>(), 3);
        let mine = store.claim_due(T0 + 1, 60, 10).unwrap();
        assert_eq!(mine[0].kind, MailKind::AlertPreview, "alert mail goes first");
        assert!(mine[0].alert.is_none() && !mine[0].content.is_empty());
        // Each subscriber once, content to be rendered by the relay from the
        // subscriber's own address and footer-link nonce.
        let mut to: Vec<(String, String)> = vec![];
        for m in mine.iter().filter(|m| m.kind == MailKind::Alert) {
            let a = m.alert.expect("an alert row carries its alert");
            assert_eq!((a.alert_id, m.content.len(), m.sender.as_str()), (alert, 0, "ans@x"));
            assert_eq!(m.message_id, format!("alert.{alert}.{}@x", a.subscriber_id));
            assert_eq!(Some(a.link_nonce), store.link_nonce(a.subscriber_id).unwrap());
            assert_eq!(store.find_subscriber(&m.recipient).unwrap().unwrap().id, a.subscriber_id);
            to.push((m.recipient.as_str().to_string(), m.message_id.clone()));
        }
        to.sort();
        let to: Vec<&str> = to.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(to, ["a@docomo.ne.jp", "b@ezweb.ne.jp", "d@i.softbank.jp"]);
        // The alert rows hold no content, no address (not even sealed), no
        // sender and no Message-ID: the claim above made them.
        let conn = store.conn().unwrap();
        let held: (i64, i64, i64, i64) = conn
            .query_row(
                "SELECT CAST(SUM(length(content_sealed)) AS BIGINT), CAST(SUM(length(recipient_sealed)) AS BIGINT),
                        CAST(SUM(length(sender)) AS BIGINT), CAST(SUM(length(message_id)) AS BIGINT)
                 FROM outbox WHERE alert_id = ?1",
                params![alert],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(held, (0, 0, 0, 0));
    }

    #[test]
    fn a_leased_alert_row_of_a_vanished_subscriber_is_failed() {
        let (_d, store, admin) = setup();
        let (_, claims, _) = draft(&store, admin, "k", &[1]);
        let claims = claims.unwrap();
        let r = store.publish_alert(PublishAuth::Token(&claims), "x", T0, T0 + 60, "ans@x", "x").unwrap();
        assert_eq!(r, Published::Published { alert: AlertId::from_subject(claims.subject).unwrap(), recipients: 2 });
        // A subscriber row vanishing under a queued row (deletion removes
        // both; this is the race with a claim).
        let gone = store.find_subscriber(&addr("a@docomo.ne.jp")).unwrap().unwrap().id;
        {
            let conn = store.conn().unwrap();
            conn.execute("DELETE FROM subscriber_districts WHERE subscriber_id = ?1", params![gone]).unwrap();
            conn.execute("DELETE FROM subscribers WHERE id = ?1", params![gone]).unwrap();
        }
        let claimed = store.claim_due(T0, 60, 10).unwrap();
        let alerts: Vec<_> = claimed.iter().filter(|m| m.kind == MailKind::Alert).collect();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].recipient.as_str(), "b@ezweb.ne.jp");
        let failed: (String, String) = store
            .conn()
            .unwrap()
            .query_row("SELECT state, last_error FROM outbox WHERE subscriber_id = ?1", params![gone], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!(failed, ("failed".to_string(), "the subscriber is gone".to_string()));
    }

    #[test]
    fn a_disabled_admin_cannot_publish() {
        let (_d, store, admin) = setup();
        let (_, claims, _) = draft(&store, admin, "k", &[1]);
        store.disable_admin("chuo", "cli", T0).unwrap();
        let claims = claims.unwrap();
        assert!(store.publish_view(&claims, T0).unwrap().is_none());
        let r = store.publish_alert(PublishAuth::Token(&claims), "x", T0, T0 + 60, "ans@x", "x").unwrap();
        assert_eq!(r, Published::Unusable);
        assert_eq!(store.outbox_counts().unwrap().queued, 1, "only the preview");
    }

    #[test]
    fn rejected_posts_are_answered_once() {
        let (_d, store, admin) = setup();
        let m = mail(&addr("staff@city.test"), "rej@x".into());
        assert!(store.reject_post(admin, "k2", "t", "missing-districts", &m, T0, T0 + 60).unwrap());
        let m2 = mail(&addr("staff@city.test"), "rej2@x".into());
        assert!(!store.reject_post(admin, "k2", "t", "missing-districts", &m2, T0, T0 + 60).unwrap());
        assert_eq!(store.outbox_counts().unwrap().queued, 1);
        assert_eq!(store.recent_alerts(10).unwrap()[0].state, AlertState::Rejected);
    }

    fn publish(store: &Store, id: AlertId, at: UnixTime) -> Published {
        store.publish_alert(PublishAuth::Direct(id), "test", at, at + 7200, "ans@x", "x").unwrap()
    }

    fn followup(store: &Store, admin: AdminId, report: AlertId, kind: FollowupKind) -> AlertId {
        let a = NewAlert { admin, source: "cli", title: "t", text: "f", districts: &[1], followup_of: Some(report), followup_kind: Some(kind), ..NewAlert::new(admin, "cli") };
        match store.draft_alert(&a, T0, T0 + 3600, |id, _, _| mail(&addr("staff@city.test"), format!("preview.{id}@x"))).unwrap() {
            Drafted::Created { alert, .. } => alert,
            Drafted::Duplicate => panic!("created"),
        }
    }

    fn queued_subscribers(store: &Store, alert: AlertId) -> Vec<SubscriberId> {
        let conn = store.conn().unwrap();
        let mut stmt = conn
            .prepare("SELECT subscriber_id FROM outbox WHERE alert_id = ?1 AND state = 'queued' UNION ALL SELECT subscriber_id FROM alert_queue WHERE alert_id = ?1 ORDER BY 1").unwrap();
        stmt.query_map(params![alert], |r| r.get(0)).unwrap().collect::<Result<_>>().unwrap()
    }

    #[test]
    fn a_followup_goes_to_the_reports_recipients_and_a_retraction_stops_the_rest() {
        let (_d, store, admin) = setup();
        let (_, claims, _) = draft(&store, admin, "k", &[1]);
        let report = AlertId::from_subject(claims.unwrap().subject).unwrap();
        assert_eq!(publish(&store, report, T0), Published::Published { alert: report, recipients: 2 });
        let (a, b) = (store.find_subscriber(&addr("a@docomo.ne.jp")).unwrap().unwrap().id, store.find_subscriber(&addr("b@ezweb.ne.jp")).unwrap().unwrap().id);
        // One copy goes out; then b changes districts (a follow-up still
        // reaches b) and c joins district 1 (it does not reach c).
        let first = a;
        crate::queue::settle(&store.conn().unwrap(), "alert_id = ?7 AND subscriber_id = ?8", params![report, a], OutboxState::Sent, "", T0).unwrap();
        let c = store.find_subscriber(&addr("c@docomo.ne.jp")).unwrap().unwrap().id;
        store.conn().unwrap().execute("DELETE FROM subscriber_districts WHERE subscriber_id = ?1", params![b]).unwrap();
        store.conn().unwrap().execute("INSERT INTO subscriber_districts VALUES (?1, 1)", params![c]).unwrap();
        let update = followup(&store, admin, report, FollowupKind::Update);
        assert_eq!(store.audience(&[], Some(report), "", false, T0).unwrap().domains.iter().map(|d| d.1).sum::<i64>(), 2);
        assert_eq!(publish(&store, update, T0 + 10), Published::Published { alert: update, recipients: 2 });
        assert_eq!(queued_subscribers(&store, update), vec![a, b]);
        let r = store.alert(report).unwrap().unwrap();
        assert_eq!((r.incident_state, r.updated_at), (Some(FollowupKind::Update), T0 + 10));
        // The retraction stops the report's and the update's unsent copies,
        // and goes only to whoever may have seen the report.
        let retract = followup(&store, admin, report, FollowupKind::Retracted);
        assert_eq!(publish(&store, retract, T0 + 20), Published::Published { alert: retract, recipients: 1 });
        assert_eq!(queued_subscribers(&store, retract), vec![first]);
        assert!(queued_subscribers(&store, report).is_empty() && queued_subscribers(&store, update).is_empty());
        let progress = store.alert_progress(report).unwrap();
        assert_eq!(progress.iter().map(|p| p.1.as_str()).collect::<Vec<_>>(), ["sent", "cancelled"], "{progress:?}");
        assert_eq!(store.alert(report).unwrap().unwrap().incident_state, Some(FollowupKind::Retracted));
        // 取消 is final.
        let late = followup(&store, admin, report, FollowupKind::Resolved);
        assert_eq!(publish(&store, late, T0 + 30), Published::Unusable);
        // One entry per incident in the archive.
        let archive = store.archive(None, 0, 10).unwrap();
        assert_eq!(archive.iter().map(|r| r.id).collect::<Vec<_>>(), [report]);
        let f: Vec<_> = store.followups_of(&[report]).unwrap().into_iter().map(|r| (r.id, r.followup_kind)).collect();
        assert_eq!(f, [(update, Some(FollowupKind::Update)), (retract, Some(FollowupKind::Retracted))]);
    }

    #[test]
    fn kinds_and_quiet_hours_apply_in_the_fan_out_and_urgent_ignores_quiet_hours() {
        let (_d, store, admin) = setup();
        let (a, b) = (store.find_subscriber(&addr("a@docomo.ne.jp")).unwrap().unwrap().id, store.find_subscriber(&addr("b@ezweb.ne.jp")).unwrap().unwrap().id);
        // T0 is 17:00 in Japan: a is quiet 16:40–17:10, b turned 不審者情報 off.
        let m = mamoru_core::jst::minute_of_day(T0);
        assert_eq!(m, 17 * 60);
        store.set_preferences(a, &[], Some((1000, 1030)), T0).unwrap();
        store.set_preferences(b, &["不審者情報".to_string()], None, T0).unwrap();
        let post = |kind: &str, urgent: bool| {
            let n = NewAlert { admin, source: "cli", title: "t", text: "x", districts: &[1], kind, urgent, ..NewAlert::new(admin, "cli") };
            let Drafted::Created { alert, .. } = store.draft_alert(&n, T0, T0 + 60, |id, _, _| mail(&addr("staff@city.test"), format!("p.{id}@x"))).unwrap() else {
                panic!()
            };
            assert!(matches!(publish(&store, alert, T0), Published::Published { .. }));
            let conn = store.conn().unwrap();
            let mut stmt = conn.prepare("SELECT subscriber_id, due_at, expires_at FROM alert_queue WHERE alert_id = ?1 ORDER BY 1").unwrap();
            stmt.query_map(params![alert], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().collect::<Result<Vec<(SubscriberId, i64, i64)>>>().unwrap()
        };
        // The preview's counts, from the same predicates.
        let reach = |kind: &str, urgent: bool| store.audience(&[1], None, kind, urgent, T0).unwrap().reach;
        assert_eq!(reach("不審者情報", false), Reach { now: 0, later: 1, kind_off: 1 });
        assert_eq!(reach("その他", false), Reach { now: 1, later: 1, kind_off: 0 });
        assert_eq!(reach("不審者情報", true), Reach { now: 1, later: 0, kind_off: 1 });
        assert_eq!(store.audience(&[1], None, "不審者情報", false, T0).unwrap().domains, [("docomo.ne.jp".to_string(), 1)], "b is not counted");
        let end = T0 + 10 * 60 - (T0 + mamoru_core::jst::OFFSET).rem_euclid(60);
        assert_eq!(post("不審者情報", false), [(a, end, end + 7200)], "a waits until 17:10, b gets none");
        assert_eq!(post("その他", false), [(a, end, end + 7200), (b, T0, T0 + 7200)]);
        assert_eq!(post("不審者情報", true), [(a, T0, T0 + 7200)], "緊急 goes now");
        // A window past midnight, 16:00–01:00, holds 17:00 too.
        store.set_preferences(a, &[], Some((16 * 60, 60)), T0).unwrap();
        let wait = (60 + 1440 - m) * 60 - (T0 + mamoru_core::jst::OFFSET).rem_euclid(60);
        assert_eq!(post("", false)[0], (a, T0 + wait, T0 + wait + 7200));
    }

    /// The publish runs at READ COMMITTED on PostgreSQL: two publishers of
    /// one alert at once still publish it once, because each step is a
    /// statement guarded by the row's state, which the loser re-checks
    /// after the winner's commit.
    #[test]
    fn two_publishers_of_one_alert_at_once_publish_it_once() {
        let (_d, store, admin) = setup();
        for k in 0..5 {
            let (Drafted::Created { alert, .. }, claims, _) = draft(&store, admin, &format!("k{k}"), &[1, 3]) else { panic!("drafted") };
            let claims = claims.expect("claims");
            let results: Vec<Published> = std::thread::scope(|s| {
                let by_link = s.spawn(|| store.publish_alert(PublishAuth::Token(&claims), "link", T0, T0 + 7200, "ans@x", "x").unwrap());
                let direct = s.spawn(|| store.publish_alert(PublishAuth::Direct(alert), "panel", T0, T0 + 7200, "ans@x", "x").unwrap());
                vec![by_link.join().unwrap(), direct.join().unwrap()]
            });
            let published: Vec<&Published> = results.iter().filter(|r| matches!(r, Published::Published { .. })).collect();
            assert_eq!(published.len(), 1, "{results:?}");
            assert!(results.contains(&Published::Unusable), "{results:?}");
            assert_eq!(queued_subscribers(&store, alert).len(), 3);
        }
    }


    /// The copies of the alerts published at `now` and `now + 1`, claimed:
    /// (alert, subscriber) in claim order; previews and other mail left out.
    fn copies(mails: &[crate::QueuedMail]) -> Vec<(AlertId, SubscriberId)> {
        mails.iter().filter_map(|m| m.alert.map(|a| (a.alert_id, a.subscriber_id))).collect()
    }

    /// Copies wait in `alert_queue` until a claim of their pool: the oldest
    /// alert's first, domain by domain, and a copy held for quiet hours only
    /// once they end. A claimed copy is an outbox row leased like any other.
    #[test]
    fn waiting_copies_are_claimed_per_pool_oldest_alert_first_and_when_due() {
        use crate::relay::DomainFilter;
        let (_d, store, admin) = setup();
        let id = |a: &str| store.find_subscriber(&addr(a)).unwrap().unwrap().id;
        let (a, b, c, d) = (id("a@docomo.ne.jp"), id("b@ezweb.ne.jp"), id("c@docomo.ne.jp"), id("d@i.softbank.jp"));
        // T0 is 17:00 in Japan: c is quiet until 17:10.
        store.set_preferences(c, &[], Some((1000, 1030)), T0).unwrap();
        let first = match draft(&store, admin, "k1", &[1, 2, 3]).0 {
            Drafted::Created { alert, .. } => alert,
            Drafted::Duplicate => panic!("created"),
        };
        assert_eq!(publish(&store, first, T0), Published::Published { alert: first, recipients: 4 });
        let second = followup(&store, admin, first, FollowupKind::Update);
        assert_eq!(publish(&store, second, T0 + 1), Published::Published { alert: second, recipients: 4 });
        // Two previews in the outbox, eight copies waiting.
        assert_eq!(store.outbox_counts().unwrap().queued, 10);
        let docomo = DomainFilter::Only(vec!["docomo.ne.jp".into()]);
        let mine = store.claim_due_in(T0 + 1, 3600, 10, &docomo).unwrap();
        assert_eq!(copies(&mine), [(first, a), (second, a)], "c is quiet");
        let others = store.claim_due_in(T0 + 1, 3600, 10, &DomainFilter::Except(vec!["docomo.ne.jp".into()])).unwrap();
        assert_eq!(others.iter().filter(|m| m.alert.is_none()).count(), 2, "the outbox's rows first");
        assert_eq!(copies(&others), [(first, b), (first, d), (second, b), (second, d)]);
        // The limit counts copies too, and the next claim goes on from there.
        assert!(store.claim_due_in(T0 + 2, 3600, 10, &docomo).unwrap().is_empty());
        let end = T0 + 10 * 60 - (T0 + mamoru_core::jst::OFFSET).rem_euclid(60);
        assert!(store.claim_due_in(end - 1, 3600, 10, &docomo).unwrap().is_empty());
        assert_eq!(copies(&store.claim_due_in(end, 3600, 1, &docomo).unwrap()), [(first, c)]);
        assert_eq!(copies(&store.claim_due_in(end, 3600, 1, &docomo).unwrap()), [(second, c)]);
        let conn = store.conn().unwrap();
        let left: i64 = conn.query_row("SELECT COUNT(*) FROM alert_queue", params![], |r| r.get(0)).unwrap();
        let leased: (i64, i64) = conn
            .query_row(
                "SELECT COUNT(*), CAST(SUM(attempts) AS BIGINT) FROM outbox WHERE alert_id <> 0 AND state = 'sending' AND lease_until > ?1",
                params![T0],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((left, leased), (0, (8, 8)));
        drop(conn);
        // A claimed copy that comes back (its relay died) is an outbox row's.
        let back = store.claim_due_in(end + 3600, 3600, 10, &docomo).unwrap();
        assert_eq!(copies(&back).len(), 4);
        assert!(back.iter().all(|m| m.attempts == 2));
    }

    /// What ends a waiting copy undelivered leaves it in the outbox in that
    /// state (statistics count it), except a deleted registration: its
    /// copies are gone.
    #[test]
    fn waiting_copies_expire_fail_with_a_suspension_and_go_with_a_deletion() {
        let (_d, store, admin) = setup();
        let id = |a: &str| store.find_subscriber(&addr(a)).unwrap().unwrap().id;
        let (a, b) = (id("a@docomo.ne.jp"), id("b@ezweb.ne.jp"));
        let alert = match draft(&store, admin, "k1", &[1, 2, 3]).0 {
            Drafted::Created { alert, .. } => alert,
            Drafted::Duplicate => panic!("created"),
        };
        assert_eq!(publish(&store, alert, T0), Published::Published { alert, recipients: 4 });
        store.mark_undeliverable(b, T0 + 1).unwrap();
        {
            let tx = store.begin().unwrap();
            let index: Vec<u8> = tx.query_row("SELECT addr_index FROM subscribers WHERE id = ?1", params![a], |r| r.get(0)).unwrap();
            crate::manage::purge(&tx, a, &index).unwrap();
            tx.commit().unwrap();
        }
        assert!(store.alerts_finished(&[alert]).unwrap().is_empty());
        // The preview expires first; the copies at their time, not before.
        store.expire_due(T0 + 7199).unwrap();
        assert!(store.alerts_finished(&[alert]).unwrap().is_empty());
        assert_eq!(store.expire_due(T0 + 7200).unwrap(), 2);
        assert_eq!(store.alerts_finished(&[alert]).unwrap(), [(alert, T0)]);
        let progress = store.alert_progress(alert).unwrap();
        let want = [("docomo.ne.jp", "expired", 1), ("ezweb.ne.jp", "failed", 1), ("i.softbank.jp", "expired", 1)];
        assert_eq!(progress, want.map(|(d, s, n)| (d.to_string(), s.to_string(), n)));
        let conn = store.conn().unwrap();
        let of_a: i64 = conn.query_row("SELECT COUNT(*) FROM outbox WHERE subscriber_id = ?1", params![a], |r| r.get(0)).unwrap();
        let left: i64 = conn.query_row("SELECT COUNT(*) FROM alert_queue", params![], |r| r.get(0)).unwrap();
        let reasons: Vec<String> =
            conn.query_map("SELECT last_error FROM outbox WHERE alert_id <> 0 ORDER BY domain", params![], |r| r.get(0)).unwrap();
        assert_eq!((of_a, left), (0, 0));
        assert_eq!(reasons, ["expired before delivery", "subscriber suspended", "expired before delivery"]);
    }

    /// A large alert's copies claimed chunk by chunk, as a relay's feeder
    /// takes them: never more than the limit, and every copy once.
    #[test]
    fn a_large_alerts_copies_are_claimed_at_most_a_limit_at_a_time_and_each_once() {
        use crate::relay::DomainFilter;
        let (_d, store, admin) = setup();
        let domains = ["docomo.ne.jp", "ezweb.ne.jp", "example.com"];
        let items: Vec<(EmailAddress, Vec<u32>)> = (0..3000).map(|i| (addr(&format!("p{i}@{}", domains[i % 3])), vec![5])).collect();
        assert_eq!(store.import_active_subscribers(&items, "test", T0).unwrap(), 3000);
        let alert = match draft(&store, admin, "big", &[5]).0 {
            Drafted::Created { alert, .. } => alert,
            Drafted::Duplicate => panic!("created"),
        };
        assert_eq!(publish(&store, alert, T0), Published::Published { alert, recipients: 3000 });
        let mut seen = std::collections::HashSet::new();
        for filter in [DomainFilter::Only(vec!["ezweb.ne.jp".into()]), DomainFilter::Except(vec!["ezweb.ne.jp".into()])] {
            loop {
                let claimed = store.claim_due_in(T0, 3600, 100, &filter).unwrap();
                assert!(claimed.len() <= 100, "{} rows for a limit of 100", claimed.len());
                if claimed.is_empty() {
                    break;
                }
                for m in claimed.iter().filter(|m| m.alert.is_some()) {
                    assert!(seen.insert(m.id), "row {} claimed twice", m.id);
                }
            }
        }
        assert_eq!(seen.len(), 3000);
    }

    /// On PostgreSQL a publish wakes the relays of other nodes, and a claim
    /// of its copies wakes nobody: the outbox rows it inserts are leased
    /// already. (SQLite relays poll: nothing to hear.)
    #[test]
    fn a_publish_wakes_other_nodes_and_a_claim_of_its_copies_does_not() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (_d, store, admin) = setup();
        if store.dialect() != crate::db::Dialect::Postgres {
            return;
        }
        let heard = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&heard);
        assert!(store.on_queued(move || { h.fetch_add(1, Ordering::SeqCst); }).unwrap());
        let wait_for = |n: usize| {
            let until = std::time::Instant::now() + Duration::from_secs(20);
            while heard.load(Ordering::SeqCst) < n {
                assert!(std::time::Instant::now() < until, "heard {} of {n}", heard.load(Ordering::SeqCst));
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        wait_for(1); // listening
        let alert = match draft(&store, admin, "k", &[1, 3]).0 {
            Drafted::Created { alert, .. } => alert,
            Drafted::Duplicate => panic!("created"),
        };
        wait_for(2); // the preview
        assert_eq!(publish(&store, alert, T0), Published::Published { alert, recipients: 3 });
        wait_for(3); // the copies
        let claimed = store.claim_due_in(T0, 60, 10, &crate::relay::DomainFilter::Except(vec![])).unwrap();
        assert_eq!(claimed.len(), 4);
        store.expire_due(T0 + 86_400).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(heard.load(Ordering::SeqCst), 3, "claimed and expired rows wake nobody");
    }
}
