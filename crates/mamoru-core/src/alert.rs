//! Alerts: the post format admins write, and the alert mail parents get.
//!
//! The format, forgiving of what phones type:
//!
//! ```text
//! Subject: 不審な男性の声かけ
//!
//! 種別: 不審者情報          (optional; one of `[alerts] kinds`)
//! 地区: 中央, 昭和          (names, 1–10, ①–⑩, or 全地区)
//! 本日15時ごろ、…           (the rest is the text)
//! ```
//!
//! Full-width colons, commas and spaces are accepted anywhere; a district may
//! be named with or without its trailing 地区. Parsing and rendering are pure:
//! text in, values or bytes out.

use mail_builder::MessageBuilder;
use mail_builder::headers::raw::Raw;

use crate::{AlertId, SubscriberId, UnixTime};
use crate::address::EmailAddress;
use crate::config::Config;
use crate::links::{SubscriberLinks, subscriber_links};
use crate::mail::{self, MailKind, OutgoingMail};
use crate::token::{Nonce, TokenKey};

/// Longest title accepted, in characters; phones show about this much.
pub const MAX_TITLE_CHARS: usize = 60;
/// Longest text accepted, in characters.
pub const MAX_TEXT_CHARS: usize = 4000;
/// Body lines are wrapped at this many characters for phone screens.
pub const WRAP_CHARS: usize = 36;

/// A post that parsed: what an admin asked to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertDraft {
    pub title: String,
    /// Empty when no `種別:` line was given.
    pub kind: String,
    /// Sorted, distinct district ids.
    pub districts: Vec<u32>,
    pub text: String,
    /// The copies carry a 確認しました link (a `確認: する` line, the
    /// panel's checkbox, `mamoru alert post --confirm`): confirmations are
    /// counted per district and carrier, never per reader.
    pub ask_confirm: bool,
    /// When it happened, as the `発生:` line said; unknown by default.
    pub occurred: Occurred,
    /// 緊急 (a `緊急: はい` line, the panel's checkbox, `mamoru alert post
    /// --urgent`): delivered at once to subscribers inside their quiet
    /// hours too, and marked so in the subject.
    pub urgent: bool,
}

/// When an incident happened. Unknown unless the post says so: never
/// silently the post time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Occurred {
    /// Unix time; 0 for unknown.
    pub at: UnixTime,
    /// [`Occurred::APPROX`] and [`Occurred::DAY_ONLY`].
    pub flags: i64,
}

impl Occurred {
    /// `ごろ`: the time is approximate.
    pub const APPROX: i64 = 1;
    /// Only the day was given.
    pub const DAY_ONLY: i64 = 2;

    pub fn is_known(&self) -> bool {
        self.at != 0
    }

    /// `12月1日 13:25ごろ`, `12月1日ごろ`, or `不明`.
    pub fn label(&self) -> String {
        if !self.is_known() {
            return "不明".into();
        }
        let c = crate::jst::civil(self.at);
        let approx = if self.flags & Self::APPROX != 0 { "ごろ" } else { "" };
        if self.flags & Self::DAY_ONLY != 0 {
            format!("{}月{}日{approx}", c.month, c.day)
        } else {
            format!("{}月{}日 {:02}:{:02}{approx}", c.month, c.day, c.hour, c.minute)
        }
    }
}

/// The line a copy shows: 「12月1日 13:25ごろ発生・14:02配信」 (the day of
/// publication only when it is not the incident's), or 「発生日時不明・14:02配信」.
pub fn timing_line(occurred: &Occurred, published_at: UnixTime) -> String {
    let p = crate::jst::civil(published_at);
    if !occurred.is_known() {
        return format!("発生日時不明・{}配信", crate::jst::month_day_time(published_at));
    }
    let o = crate::jst::civil(occurred.at);
    let published = if (o.year, o.month, o.day) == (p.year, p.month, p.day) {
        crate::jst::time_of_day(published_at)
    } else {
        crate::jst::month_day_time(published_at)
    };
    format!("{}発生・{published}配信", occurred.label())
}

/// The value of a `発生:` line (or the panel's field, `--occurred`):
/// `12/1 13:25ごろ`, `12月1日 13時25分`, `2026/12/1 9:05`, `12/1`, `不明`;
/// full-width digits accepted. Without a year, the latest such date not
/// after a day past `now`. A date that does not exist, or one more than a
/// day in the future, is refused.
pub fn parse_occurred(value: &str, now: UnixTime) -> Result<Occurred, FormatError> {
    let v = normalize_width(value);
    let v = v.trim();
    let bad = || FormatError::BadOccurred(v.chars().take(30).collect());
    if v.is_empty() || v == "不明" {
        return Ok(Occurred::default());
    }
    let (v, approx) = match v.strip_suffix("ごろ").or_else(|| v.strip_suffix("頃")) {
        Some(rest) => (rest.trim(), true),
        None => (v, false),
    };
    // Numbers in order; the separators say nothing we need.
    let mut nums: Vec<u32> = vec![];
    let mut cur = String::new();
    for c in v.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            cur.push(c);
        } else {
            if !cur.is_empty() {
                nums.push(cur.parse().map_err(|_| bad())?);
                cur.clear();
            }
            if !matches!(c, '/' | '-' | ':' | ' ' | '月' | '日' | '時' | '分' | '年' | '.') {
                return Err(bad());
            }
        }
    }
    let (year, rest) = match nums.first() {
        Some(y) if *y >= 1000 => (Some(i64::from(*y)), &nums[1..]),
        _ => (None, &nums[..]),
    };
    let (month, day, hour, minute, day_only) = match rest {
        [m, d] => (*m, *d, 0, 0, true),
        [m, d, h] => (*m, *d, *h, 0, false),
        [m, d, h, mi] => (*m, *d, *h, *mi, false),
        _ => return Err(bad()),
    };
    let flags = i64::from(approx) * Occurred::APPROX + i64::from(day_only) * Occurred::DAY_ONLY;
    let this_year = crate::jst::civil(now).year;
    let at = match year {
        Some(y) => crate::jst::unix(y, month, day, hour, minute).ok_or_else(bad)?,
        None => match crate::jst::unix(this_year, month, day, hour, minute) {
            Some(t) if t <= now + 86_400 => t,
            // 12/31 written on 1/1: last year's.
            _ => crate::jst::unix(this_year - 1, month, day, hour, minute).ok_or_else(bad)?,
        },
    };
    if at > now + 86_400 {
        return Err(bad());
    }
    Ok(Occurred { at, flags })
}

/// What is wrong with a post; each names the problem for the reply mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    EmptyTitle,
    TitleTooLong,
    MissingDistricts,
    UnknownDistricts(Vec<String>),
    UnknownKind(String),
    EmptyText,
    TextTooLong,
    /// The admin may only post to some districts.
    DistrictsNotAllowed(Vec<u32>),
    /// The mail could not be read: nested too deep, too many parts, huge
    /// headers or broken MIME. Nothing of it was parsed.
    Unreadable,
    /// A follow-up names an alert number that is not a published first
    /// report (or is not a number).
    NoSuchAlert(String),
    /// A follow-up of a report that was retracted: 取消 is final.
    Retracted(i64),
    /// A `発生:` value that is not a date (and time) we read.
    BadOccurred(String),
}

impl FormatError {
    /// One Japanese sentence for the reply to the admin.
    pub fn explain(&self, cfg: &Config) -> String {
        match self {
            Self::EmptyTitle => "件名（タイトル）がありません。件名に見出しを書いてください。".into(),
            Self::TitleTooLong => format!("件名が長すぎます（{MAX_TITLE_CHARS}文字まで）。"),
            Self::MissingDistricts => "「地区:」の行がありません。本文の1行目に「地区: 中央, 昭和」のように書いてください。".into(),
            Self::UnknownDistricts(names) => format!("次の地区がわかりません: {}", names.join("、")),
            Self::UnknownKind(k) => format!("種別「{k}」は使えません。使える種別: {}", cfg.alerts.kinds.join("、")),
            Self::EmptyText => "本文がありません。".into(),
            Self::TextTooLong => format!("本文が長すぎます（{MAX_TEXT_CHARS}文字まで）。"),
            Self::Unreadable => "メールの形式を読み取れませんでした（入れ子や添付が多すぎるか、形式が壊れています）。本文だけのテキストメールで送り直してください。".into(),
            Self::NoSuchAlert(n) => format!("お知らせ番号「{n}」の配信済みのお知らせが見つかりません。配信履歴の番号を書いてください。"),
            Self::BadOccurred(v) => format!("「発生: {v}」を読み取れません。「発生: 12/1 13:25ごろ」「発生: 不明」のように書いてください。"),
            Self::Retracted(n) => format!("お知らせ{n}番は取り消し済みです。続報は送れません。"),
            Self::DistrictsNotAllowed(ids) => {
                let names: Vec<&str> = ids.iter().filter_map(|id| cfg.district(*id)).map(|d| d.name.as_str()).collect();
                format!("次の地区には配信できません（担当外）: {}", names.join("、"))
            }
        }
    }
}

/// Full-width ASCII (U+FF01–FF5E) to ASCII and the ideographic space to a
/// space, so `地区：１，３` reads like `地区:1,3`.
pub fn normalize_width(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{3000}' => ' ',
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            _ => c,
        })
        .collect()
}

/// Parses a post's decoded subject and text: the `地区:` and `種別:` lines
/// at the top, then the text; checked as [`draft`] checks a post.
/// A `発生:` line gives the incident's time (read as [`parse_occurred`]
/// reads it, relative to `now`).
pub fn parse_post(cfg: &Config, subject: &str, text: &str, now: UnixTime) -> Result<AlertDraft, FormatError> {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines = text.lines().peekable();
    let mut districts: Option<Vec<u32>> = None;
    let mut kind = String::new();
    let mut occurred = Occurred::default();
    let mut ask_confirm = false;
    let mut urgent = false;
    // The title is checked first: an empty subject is the first thing to say.
    check_title(subject)?;
    // Header lines come first, in any order; blank lines before them are
    // skipped (some phones start the body with one).
    while let Some(line) = lines.peek() {
        let norm = normalize_width(line);
        let norm = norm.trim();
        if norm.is_empty() && districts.is_none() && kind.is_empty() && !occurred.is_known() {
            lines.next();
            continue;
        }
        if let Some(v) = field(norm, "地区") {
            districts = Some(parse_districts(cfg, v)?);
        } else if let Some(v) = field(norm, "種別") {
            kind = kind_named(cfg, v)?;
        } else if let Some(v) = field(norm, "発生") {
            occurred = parse_occurred(v, now)?;
        } else if let Some(v) = field(norm, "確認") {
            ask_confirm = yes(v);
        } else if let Some(v) = field(norm, "緊急") {
            urgent = yes(v);
        } else {
            break;
        }
        lines.next();
    }
    let districts = districts.ok_or(FormatError::MissingDistricts)?;
    let rest: Vec<&str> = lines.map(|l| l.trim_end()).collect();
    let d = draft(cfg, subject, &kind, districts, &rest.join("\n"))?;
    Ok(AlertDraft { occurred, ask_confirm, urgent, ..d })
}

/// A header line's yes: `確認: する`, `緊急: はい`.
fn yes(v: &str) -> bool {
    matches!(v.trim(), "する" | "あり" | "要" | "はい")
}

/// What a follow-up says about its first report: 続報 (more news), 解決
/// (resolved: the person was identified, it was a misunderstanding) or 取消
/// (retracted: sent in error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowupKind {
    Update,
    Resolved,
    Retracted,
}

impl FollowupKind {
    pub const ALL: [Self; 3] = [Self::Update, Self::Resolved, Self::Retracted];

    /// The stored and command-line name: `update`, `resolved`, `retracted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Update => "update",
            Self::Resolved => "resolved",
            Self::Retracted => "retracted",
        }
    }

    /// The inverse of [`FollowupKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// `続報`, `解決`, `取消`: the word of the post line and of the subject.
    pub fn label(self) -> &'static str {
        match self {
            Self::Update => "続報",
            Self::Resolved => "解決",
            Self::Retracted => "取消",
        }
    }

    /// The subject prefix: `【続報】`.
    pub fn mark(self) -> String {
        format!("【{}】", self.label())
    }
}

/// A mailed follow-up: the first report it names and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowupPost {
    pub kind: FollowupKind,
    /// The number of the first report, as written (the alert id in the
    /// panel's history, `mamoru alert show`, and the preview's subject).
    pub of: i64,
    pub text: String,
}

/// A mailed post whose first non-blank line is `続報: 12`, `解決: 12` or
/// `取消: 12` (full-width forms accepted) is a follow-up of alert 12; the
/// rest is its text and the subject is not used (the follow-up keeps the
/// report's title, kind and districts). `None`: not a follow-up, read it
/// with [`parse_post`].
pub fn parse_followup(text: &str) -> Option<Result<FollowupPost, FormatError>> {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines = text.lines().skip_while(|l| normalize_width(l).trim().is_empty());
    let first = normalize_width(lines.next()?);
    let first = first.trim();
    let (kind, value) = FollowupKind::ALL.into_iter().find_map(|k| field(first, k.label()).map(|v| (k, v.trim())))?;
    let value = value.trim_start_matches('#').trim_start_matches('番').trim();
    let Ok(of) = value.trim_end_matches('番').trim().parse::<i64>() else {
        return Some(Err(FormatError::NoSuchAlert(value.chars().take(20).collect())));
    };
    let rest: Vec<&str> = lines.map(str::trim_end).collect();
    Some(followup_text(&rest.join("\n")).map(|text| FollowupPost { kind, of, text }))
}

/// How a preview's Message-ID starts: `preview.{alert}.{random}@{domain}`.
pub const PREVIEW_ID_PREFIX: &str = "preview.";

/// The alert whose preview a reply answers: the last `<preview.N.…@domain>`
/// among the Message-IDs of its `In-Reply-To` and `References` (our own
/// domain only).
pub fn replied_preview(message_ids: &str, domain: &str) -> Option<i64> {
    message_ids
        .split(|c: char| c == '<' || c == '>' || c.is_whitespace() || c == ',')
        .filter(|id| !id.is_empty())
        .filter_map(|id| {
            let (local, host) = id.rsplit_once('@')?;
            if !host.eq_ignore_ascii_case(domain) {
                return None;
            }
            let (n, _) = local.strip_prefix(PREVIEW_ID_PREFIX)?.split_once('.')?;
            n.parse::<i64>().ok().filter(|n| *n > 0)
        })
        .next_back()
}

/// The follow-up a reply to a preview says: a first line `続報`, `解決` or
/// `取消` (alone, or with a colon) chooses the kind, 続報 otherwise; the
/// quoted preview below it (lines starting with `>`, and everything from a
/// mail app's "original message" or "wrote:" line on) is not part of it.
pub fn reply_followup(text: &str) -> Result<(FollowupKind, String), FormatError> {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut own: Vec<&str> = vec![];
    for line in text.lines() {
        let norm = normalize_width(line);
        let t = norm.trim();
        let quote_head = (t.starts_with("--") && (t.contains("Original") || t.contains("元のメッセージ") || t.contains("転送")))
            || t.ends_with("wrote:")
            || t.ends_with("書きました:")
            || t.ends_with("書きました：");
        if quote_head {
            break;
        }
        if !t.starts_with('>') {
            own.push(line);
        }
    }
    let first = own.iter().position(|l| !normalize_width(l).trim().is_empty());
    let (kind, rest) = match first {
        Some(i) => {
            let norm = normalize_width(own[i]);
            let word = norm.trim().trim_end_matches([':', '：']).trim();
            match FollowupKind::ALL.into_iter().find(|k| k.label() == word) {
                Some(k) => (k, &own[i + 1..]),
                None => (FollowupKind::Update, &own[i..]),
            }
        }
        None => (FollowupKind::Update, &own[..]),
    };
    Ok((kind, followup_text(&rest.join("\n"))?))
}

/// An alert's text, a report's or a follow-up's: line ends normalized,
/// trailing blanks and blank edge lines dropped, not empty, not too long.
pub fn followup_text(text: &str) -> Result<String, FormatError> {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    let body = lines.join("\n").trim_matches('\n').to_string();
    if body.trim().is_empty() {
        return Err(FormatError::EmptyText);
    }
    if body.chars().count() > MAX_TEXT_CHARS {
        return Err(FormatError::TextTooLong);
    }
    Ok(body)
}

/// A post given as its parts (the admin panel's form, `mamoru alert post`):
/// the same checks as a mailed post. `kind` is empty for none; `districts`
/// are ids.
pub fn draft(cfg: &Config, title: &str, kind: &str, mut districts: Vec<u32>, text: &str) -> Result<AlertDraft, FormatError> {
    let title = check_title(title)?;
    let kind = if kind.trim().is_empty() { String::new() } else { kind_named(cfg, kind)? };
    let unknown: Vec<String> = districts.iter().filter(|id| cfg.district(**id).is_none()).map(u32::to_string).collect();
    if !unknown.is_empty() {
        return Err(FormatError::UnknownDistricts(unknown));
    }
    if districts.is_empty() {
        return Err(FormatError::MissingDistricts);
    }
    districts.sort_unstable();
    districts.dedup();
    let body = followup_text(text)?;
    Ok(AlertDraft { title, kind, districts, text: body, occurred: Occurred::default(), ask_confirm: false, urgent: false })
}

fn check_title(subject: &str) -> Result<String, FormatError> {
    let title = one_line(subject);
    if title.is_empty() {
        return Err(FormatError::EmptyTitle);
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(FormatError::TitleTooLong);
    }
    Ok(title)
}

/// The configured kind a `種別:` value names (full-width forms accepted).
fn kind_named(cfg: &Config, value: &str) -> Result<String, FormatError> {
    let v = normalize_width(value);
    let v = v.trim();
    cfg.alerts.kinds.iter().find(|k| normalize_width(k) == v).cloned().ok_or_else(|| FormatError::UnknownKind(v.to_string()))
}

/// `NAME: value` with optional spaces around the (already normalised) colon.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?.trim_start();
    rest.strip_prefix(':')
}

fn one_line(s: &str) -> String {
    let s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The district list of a `地区:` line.
pub fn parse_districts(cfg: &Config, value: &str) -> Result<Vec<u32>, FormatError> {
    let value = normalize_width(value);
    let mut ids = Vec::new();
    let mut unknown = Vec::new();
    for token in value.split([',', '、', '，', ' ', '\t', '/']).map(str::trim).filter(|t| !t.is_empty()) {
        if token == "全地区" || token == "全域" {
            ids.extend(cfg.districts.iter().map(|d| d.id));
            continue;
        }
        // `①⑩` written without a separator: each circled number is one district.
        if token.chars().count() > 1 && token.chars().all(|c| ('\u{2460}'..='\u{2473}').contains(&c)) {
            for c in token.chars() {
                match district_id(cfg, &c.to_string()) {
                    Some(id) => ids.push(id),
                    None => unknown.push(c.to_string()),
                }
            }
            continue;
        }
        match district_id(cfg, token) {
            Some(id) => ids.push(id),
            None => unknown.push(token.to_string()),
        }
    }
    if !unknown.is_empty() {
        return Err(FormatError::UnknownDistricts(unknown));
    }
    if ids.is_empty() {
        return Err(FormatError::MissingDistricts);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The configured district `token` names: its id, a circled number (①),
/// its name, or its name without 地区 (`中央` for 中央地区). Shared by
/// posts and subscriber imports, so a district is written the same way in
/// both.
pub fn district_id(cfg: &Config, token: &str) -> Option<u32> {
    let by_id = |id: u32| cfg.district(id).map(|d| d.id);
    if let Ok(n) = token.parse::<u32>() {
        return by_id(n);
    }
    // ① is U+2460; ⑳ is U+2473.
    let mut chars = token.chars();
    if let (Some(c @ '\u{2460}'..='\u{2473}'), None) = (chars.next(), chars.next()) {
        return by_id(c as u32 - 0x2460 + 1);
    }
    let bare = |name: &str| normalize_width(name.strip_suffix("地区").unwrap_or(name));
    let token_bare = bare(token);
    cfg.districts.iter().find(|d| normalize_width(&d.name) == token || bare(&d.name) == token_bare).map(|d| d.id)
}

/// `中央地区、昭和地区`, or `全地区` when every district is chosen.
pub fn district_label(cfg: &Config, ids: &[u32]) -> String {
    if cfg.districts.iter().all(|d| ids.contains(&d.id)) {
        return "全地区".into();
    }
    let names: Vec<&str> = cfg.districts.iter().filter(|d| ids.contains(&d.id)).map(|d| d.name.as_str()).collect();
    names.join("、")
}

/// The alert as parents see it, without the personal footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertContent {
    pub subject: String,
    /// Wrapped, LF line ends.
    pub body: String,
}

/// The subject mark of a 緊急 alert.
pub const URGENT_MARK: &str = "【緊急】";

const TEST_LINE: &str = "これはテスト配信です。\n届いた時刻の確認にお使いください。\n\n";

/// Subject `【守るネット】[KIND] TITLE（DISTRICTS）` and the wrapped text,
/// under the line of when it happened and when it was published
/// (`published_at`; a preview shows its own time).
pub fn content(cfg: &Config, draft: &AlertDraft, is_test: bool, published_at: UnixTime) -> AlertContent {
    let name = &cfg.service_name;
    let test = if is_test { "【テスト配信】" } else { "" };
    let urgent = if draft.urgent { URGENT_MARK } else { "" };
    let kind = if draft.kind.is_empty() { String::new() } else { format!("[{}] ", draft.kind) };
    let subject = format!("【{name}】{test}{urgent}{kind}{}（{}）", draft.title, district_label(cfg, &draft.districts));
    let mut body = String::new();
    if is_test {
        body.push_str(TEST_LINE);
    }
    if draft.urgent {
        body.push_str("■緊急のお知らせです（受け取らない時間帯の方にもすぐお送りしています）\n");
    }
    if !draft.kind.is_empty() {
        body.push_str(&format!("■{}\n", draft.kind));
    }
    body.push_str(&format!("■地区: {}\n", district_label(cfg, &draft.districts)));
    body.push_str(&format!("■{}\n\n", timing_line(&draft.occurred, published_at)));
    body.push_str(&wrap(&draft.text, WRAP_CHARS));
    body.push('\n');
    AlertContent { subject, body }
}

/// The report a follow-up continues, for its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Followup {
    pub kind: FollowupKind,
    /// When the first report was published.
    pub original_published_at: UnixTime,
}

/// A follow-up as parents see it: the report's subject behind `【続報】`
/// (`【解決】`, `【取消】`), so phones file it with the report, and a first
/// line naming the report it continues.
pub fn followup_content(cfg: &Config, draft: &AlertDraft, is_test: bool, f: &Followup, published_at: UnixTime) -> AlertContent {
    let report = content(cfg, draft, is_test, published_at);
    let about = match f.kind {
        FollowupKind::Update => "の続報です。",
        FollowupKind::Resolved => "は解決しました。",
        FollowupKind::Retracted => "を取り消します。",
    };
    let head = format!("{}\n{}配信のお知らせ{about}\n\n", f.kind.mark(), crate::jst::month_day_time(f.original_published_at));
    // The report's body starts with the test line, if any; the follow-up's
    // line goes after it.
    let body = match report.body.strip_prefix(TEST_LINE) {
        Some(rest) => format!("{TEST_LINE}{head}{rest}"),
        None => format!("{head}{}", report.body),
    };
    AlertContent { subject: format!("{}{}", f.kind.mark(), report.subject), body }
}

/// Wraps each line at `width` characters. URLs and other unbroken ASCII runs
/// are never split (a broken link is worse than a long line).
pub fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut count = 0;
        let mut word = String::new();
        let flush_word = |out: &mut String, count: &mut usize, word: &mut String| {
            let n = word.chars().count();
            if *count > 0 && *count + n > width {
                out.push('\n');
                *count = 0;
            }
            out.push_str(word);
            *count += n;
            word.clear();
        };
        for c in line.chars() {
            if c.is_ascii_graphic() {
                word.push(c);
                continue;
            }
            flush_word(&mut out, &mut count, &mut word);
            if count >= width {
                out.push('\n');
                count = 0;
            }
            if count == 0 && c == ' ' {
                continue;
            }
            out.push(c);
            count += 1;
        }
        flush_word(&mut out, &mut count, &mut word);
        out.push('\n');
    }
    out.trim_end_matches('\n').to_string()
}

/// The personal footer: change districts, stop.
pub fn footer(cfg: &Config, links: &SubscriberLinks) -> String {
    format!(
        "\n--\n{name}\n受け取る地区の変更・配信停止:\n{manage}\n配信停止（すぐに止める）:\n{unsubscribe}\n",
        name = cfg.service_name,
        manage = links.manage,
        unsubscribe = links.unsubscribe,
    )
}

/// One subscriber's alert mail. `List-Unsubscribe` is the personal
/// one-click link (RFC 8058).
/// `in_reply_to`: the Message-ID of the copy a follow-up continues (then
/// also its `References`), so phones thread it under the report.
pub fn render(
    cfg: &Config,
    content: &AlertContent,
    to: &EmailAddress,
    links: &SubscriberLinks,
    now: UnixTime,
    message_id: String,
    in_reply_to: Option<&str>,
) -> OutgoingMail {
    let from = cfg.register_address();
    let body = format!("{}{}", content.body, footer(cfg, links));
    let mut builder = MessageBuilder::new();
    if let Some(parent) = in_reply_to {
        builder = builder.in_reply_to(parent).references(parent);
    }
    let bytes = builder
        .from((cfg.service_name.as_str(), from.as_str()))
        .to(to.as_str())
        .subject(content.subject.as_str())
        .date(now)
        .message_id(message_id.as_str())
        .header("Auto-Submitted", Raw::new("auto-generated"))
        .header("List-Id", Raw::new(format!("<alerts.{}>", cfg.domain)))
        .header("List-Unsubscribe", Raw::new(format!("<{}>", links.unsubscribe)))
        .header("List-Unsubscribe-Post", Raw::new("List-Unsubscribe=One-Click"))
        .text_body(body.replace('\n', "\r\n"))
        .write_to_vec()
        .unwrap_or_default();
    OutgoingMail { kind: MailKind::Alert, sender: from, to: to.clone(), message_id, bytes }
}

/// The Message-ID of an alert's mail to one subscriber: stable per alert and
/// subscriber, so a duplicate delivery is recognisably the same message. The
/// store writes the same value in SQL when it queues the row.
pub fn alert_message_id(domain: &str, alert: AlertId, subscriber: SubscriberId) -> String {
    format!("alert.{alert}.{subscriber}@{domain}")
}

/// Who one copy of an alert is for.
#[derive(Debug, Clone, Copy)]
pub struct AlertRecipient<'a> {
    pub subscriber: SubscriberId,
    pub address: &'a EmailAddress,
    /// The subscriber's footer-link nonce (`mamoru_core::links`).
    pub link_nonce: Nonce,
    /// For an alert that asks for confirmation: the district its
    /// 確認しました link counts under (the lowest of the alert's districts
    /// the subscriber has).
    pub confirm_district: Option<u32>,
}

/// One subscriber's copy of a published alert, with the personal footer
/// links and `List-Unsubscribe`. The relay renders it when it sends the row.
/// Everything that varies is an input, and `published_at` is both the Date
/// and the issue time of the links, so rendering the same row twice (a
/// retry, or a resend after a crash) gives the same bytes.
/// `followup_of`: the report a follow-up continues; the copy answers the
/// subscriber's copy of it (`In-Reply-To` / `References`).
pub fn render_for_subscriber(
    cfg: &Config,
    tokens: &TokenKey,
    alert: AlertId,
    followup_of: Option<AlertId>,
    content: &AlertContent,
    published_at: UnixTime,
    to: &AlertRecipient<'_>,
) -> OutgoingMail {
    let links = subscriber_links(cfg, tokens, to.subscriber, to.link_nonce, published_at);
    let id = alert_message_id(&cfg.domain, alert, to.subscriber);
    let parent = followup_of.map(|of| alert_message_id(&cfg.domain, of, to.subscriber));
    let parent = parent.as_deref();
    match to.confirm_district {
        None => render(cfg, content, to.address, &links, published_at, id, parent),
        Some(district) => {
            let key = ConfirmKey { alert, district, carrier: carrier_code(to.address.domain()) };
            let nonce = crate::links::copy_nonce(tokens, alert, to.subscriber, &to.link_nonce);
            let url = crate::links::confirm_url(cfg, tokens, key, nonce, published_at + cfg.alerts.confirm_ttl_secs);
            let body = format!("{}\n\n読んだら、下のリンクを開いて\n「確認しました」を押してください。\n{url}", content.body);
            let with_link = AlertContent { body, ..content.clone() };
            render(cfg, &with_link, to.address, &links, published_at, id, parent)
        }
    }
}

/// The carriers admins see counts for, in their order; [`carrier_of`]
/// maps a domain to one of them.
pub const CARRIERS: [&str; 5] = ["docomo", "au", "SoftBank", "Y!mobile", "その他"];

/// The position of a domain's carrier in [`CARRIERS`]: the carrier part of
/// a 確認しました link's counting key.
pub fn carrier_code(domain: &str) -> u16 {
    let c = carrier_of(domain);
    CARRIERS.iter().position(|n| *n == c).unwrap_or(CARRIERS.len() - 1) as u16
}

/// What one 確認しました confirmation counts under: the alert, a district
/// and a carrier ([`carrier_code`]), packed into a token's subject. It
/// names no reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfirmKey {
    pub alert: AlertId,
    pub district: u32,
    pub carrier: u16,
}

impl ConfirmKey {
    /// `alert` in the high 32 bits, the district in the next 16, the
    /// carrier in the low 16.
    pub fn subject(&self) -> u64 {
        ((self.alert.get() as u64 & 0xFFFF_FFFF) << 32) | ((u64::from(self.district) & 0xFFFF) << 16) | u64::from(self.carrier)
    }

    pub fn from_subject(s: u64) -> Self {
        ConfirmKey { alert: AlertId::new((s >> 32) as i64), district: ((s >> 16) & 0xFFFF) as u32, carrier: (s & 0xFFFF) as u16 }
    }

    /// The carrier's name, as [`CARRIERS`] has it.
    pub fn carrier_name(&self) -> &'static str {
        CARRIERS.get(usize::from(self.carrier)).copied().unwrap_or("その他")
    }
}

/// Recipient counts of a preview, per carrier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CarrierCounts(pub Vec<(&'static str, i64)>);

/// The carrier a domain belongs to, for counts shown to admins.
pub fn carrier_of(domain: &str) -> &'static str {
    match domain.to_ascii_lowercase().as_str() {
        "docomo.ne.jp" => "docomo",
        "ezweb.ne.jp" | "au.com" | "biz.au.com" | "uqmobile.jp" => "au",
        "softbank.ne.jp" | "i.softbank.jp" | "disney.ne.jp" => "SoftBank",
        "ymobile.ne.jp" | "yahoo.ne.jp" => "Y!mobile",
        _ => "その他",
    }
}

impl CarrierCounts {
    /// Groups `(domain, count)` rows by carrier, in a fixed order.
    pub fn from_domains(rows: &[(String, i64)]) -> Self {
        let mut out: Vec<(&'static str, i64)> = CARRIERS.iter().map(|c| (*c, 0)).collect();
        for (domain, n) in rows {
            let c = carrier_of(domain);
            if let Some(slot) = out.iter_mut().find(|(k, _)| *k == c) {
                slot.1 += n;
            }
        }
        Self(out)
    }

    pub fn total(&self) -> i64 {
        self.0.iter().map(|(_, n)| n).sum()
    }
}

/// What the preview mail shows besides the alert itself.
pub struct PreviewInfo<'a> {
    /// The alert's number, which a follow-up post names.
    pub number: i64,
    pub counts: &'a CarrierCounts,
    /// Who gets it now, who after their quiet hours, who not at all.
    pub reach: &'a Reach,
    /// The copies carry a 確認しました link.
    pub ask_confirm: bool,
    pub publish_url: &'a str,
    /// Attachments dropped from the post.
    pub dropped_attachments: usize,
    pub is_test: bool,
}

/// To the admin's registered address: the alert exactly as parents will see
/// it, who gets it, and the one-time publish link.
pub fn preview(cfg: &Config, content: &AlertContent, to: &EmailAddress, info: &PreviewInfo<'_>, now: UnixTime, message_id: String) -> OutgoingMail {
    let minutes = cfg.alerts.publish_ttl_secs / 60;
    let mut body = String::from("配信の確認です。まだ送信されていません。\n\n");
    body.push_str(&format!("配信先: {}件\n", info.counts.total()));
    for (carrier, n) in &info.counts.0 {
        body.push_str(&format!("・{carrier}: {n}件\n"));
    }
    for line in info.reach.lines() {
        body.push_str(&line);
        body.push('\n');
    }
    if info.ask_confirm {
        body.push_str("「確認しました」リンクを付けます（地区・キャリア別の数だけを数えます）。\n");
    }
    if info.dropped_attachments > 0 {
        body.push_str(&format!("\n添付ファイル{}件は配信されません（本文のみ配信します）。\n", info.dropped_attachments));
    }
    body.push_str(&format!(
        "\n内容を確かめて、次のページの「配信する」を押すと配信します（{minutes}分有効・1回限り）:\n{}\n",
        info.publish_url
    ));
    body.push_str("\n心当たりのない場合は何もしないでください。配信されません。\n");
    body.push_str(&format!(
        "\nお知らせ番号: {n}\n配信後に続報・解決・取消を送るときは、本文の1行目に「続報: {n}」「解決: {n}」「取消: {n}」と書いて投稿してください。\n",
        n = info.number
    ));
    body.push_str("\n===== 配信される内容 =====\n");
    body.push_str(&format!("件名: {}\n\n", content.subject));
    body.push_str(&content.body);
    body.push_str("\n--\n（ここに各受信者の登録変更・配信停止リンクが入ります）\n");
    let title = if info.is_test { "テスト配信の確認" } else { "配信の確認" };
    admin_mail(cfg, MailKind::AlertPreview, to, &format!("【{}】{title}: {}", cfg.service_name, content.subject), &body, now, message_id)
}

/// Who an alert would reach if published now, by the subscribers'
/// preferences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reach {
    /// At once.
    pub now: i64,
    /// When their quiet hours end.
    pub later: i64,
    /// Not at all: they turned the alert's kind off.
    pub kind_off: i64,
}

impl Reach {
    /// The preview's lines about it; none when everyone gets it at once.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![];
        if self.later > 0 {
            out.push(format!("うち、すぐ届く方 {}件・受け取らない時間帯が終わってから届く方 {}件", self.now, self.later));
        }
        if self.kind_off > 0 {
            out.push(format!("この種別を受け取らない設定の方 {}件には届きません", self.kind_off));
        }
        out
    }
}

/// To the admin's registered address: why a post was refused, with the
/// valid districts.
pub fn rejected(cfg: &Config, errors: &[FormatError], subject: &str, to: &EmailAddress, now: UnixTime, message_id: String) -> OutgoingMail {
    let mut body = String::from("投稿を受け付けられませんでした。何も配信していません。\n\n");
    for e in errors {
        body.push_str(&format!("・{}\n", e.explain(cfg)));
    }
    body.push_str("\n使える地区（名前か番号、または 全地区）:\n");
    for d in &cfg.districts {
        body.push_str(&format!("{} {}\n", d.id, d.name));
    }
    body.push_str("\n書き方:\n件名: 見出し\n本文1行目: 地区: 中央, 昭和\n（任意の行: 種別: 不審者情報 ／ 発生: 12/1 13:25ごろ ／ 緊急: はい ／ 確認: する）\n2行目から: お知らせの本文\n");
    let shown = one_line(subject);
    admin_mail(cfg, MailKind::AlertRejected, to, &format!("【{}】投稿エラー: {shown}", cfg.service_name), &body, now, message_id)
}

fn admin_mail(cfg: &Config, kind: MailKind, to: &EmailAddress, subject: &str, body: &str, now: UnixTime, message_id: String) -> OutgoingMail {
    mail::render_from(cfg, cfg.alert_address(), kind, to, subject, body, "auto-replied", now, message_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixTime = 1_800_000_000;

    fn cfg() -> Config {
        Config::default()
    }

    #[test]
    fn names_numbers_circled_and_all() {
        let c = cfg();
        let p = |s| parse_districts(&c, s);
        assert_eq!(p("中央, 昭和"), Ok(vec![1, 3]));
        assert_eq!(p("中央地区、昭和地区"), Ok(vec![1, 3]));
        assert_eq!(p("１，３"), Ok(vec![1, 3]));
        assert_eq!(p("①　⑩"), Ok(vec![1, 10]));
        assert_eq!(p("①⑩"), Ok(vec![1, 10]));
        assert_eq!(p("天応・吉浦"), Ok(vec![2]));
        assert_eq!(p("3 3 昭和"), Ok(vec![3]));
        assert_eq!(p("全地区").map(|v| v.len()), Ok(10));
        assert_eq!(p("中央, 東京, 11"), Err(FormatError::UnknownDistricts(vec!["東京".into(), "11".into()])));
        assert_eq!(p(" , "), Err(FormatError::MissingDistricts));
    }

    #[test]
    fn a_reply_to_a_preview_is_a_follow_up_without_the_quote() {
        let ids = "<a@phone.example> <preview.12.00ff@mamoru.test>\r\n <preview.7.aa@other.test>";
        assert_eq!(replied_preview(ids, "mamoru.test"), Some(12));
        assert_eq!(replied_preview("<preview.x.1@mamoru.test> <12@mamoru.test>", "mamoru.test"), None);
        assert_eq!(replied_preview("", "mamoru.test"), None);
        let body = "解決\r\n人違いでした。\r\n\r\n> 配信の確認です。\r\n> 地区: 中央\r\n";
        assert_eq!(reply_followup(body), Ok((FollowupKind::Resolved, "人違いでした。".into())));
        let body = "男は北へ立ち去りました。\n\n-----Original Message-----\n配信の確認です。\n";
        assert_eq!(reply_followup(body), Ok((FollowupKind::Update, "男は北へ立ち去りました。".into())));
        let body = "取消：\n誤って送りました。\n2026年12月1日 14:02 守るネット <alert@mamoru.test> のメッセージ:\n";
        assert_eq!(reply_followup(body).map(|r| r.0), Ok(FollowupKind::Retracted));
        assert_eq!(reply_followup("> 引用だけ\n"), Err(FormatError::EmptyText));
    }

    #[test]
    fn an_urgent_post_is_marked_in_the_subject_and_the_body() {
        let c = cfg();
        let d = parse_post(&c, "刃物を持った男", "緊急：はい\n地区: 中央\n駅前で目撃されました。", NOW).unwrap();
        assert!(d.urgent && !d.ask_confirm);
        let mail = content(&c, &d, false, NOW);
        assert!(mail.subject.contains("【緊急】刃物を持った男"), "{}", mail.subject);
        assert!(mail.body.starts_with("■緊急"), "{}", mail.body);
        let calm = parse_post(&c, "刃物を持った男", "緊急: いいえ\n地区: 中央\n駅前。", NOW).unwrap();
        assert!(!calm.urgent && !content(&c, &calm, false, NOW).subject.contains("緊急"));
    }

    #[test]
    fn the_preview_says_who_waits_and_who_gets_nothing() {
        assert!(Reach { now: 5, later: 0, kind_off: 0 }.lines().is_empty(), "everyone at once: nothing to add");
        let lines = Reach { now: 5, later: 2, kind_off: 3 }.lines();
        assert!(lines[0].contains("すぐ届く方 5件") && lines[0].contains("終わってから届く方 2件"), "{lines:?}");
        assert!(lines[1].contains("3件には届きません"), "{lines:?}");
    }

    #[test]
    fn full_width_colon_kind_and_text() {
        let c = cfg();
        let d = parse_post(&c, "不審な男性", "\n種別：不審者情報\n地区：中央　昭和\n本日15時ごろ\n\n以上\n\n", NOW).unwrap();
        assert_eq!(d, AlertDraft { title: "不審な男性".into(), kind: "不審者情報".into(), districts: vec![1, 3], text: "本日15時ごろ\n\n以上".into(), occurred: Occurred::default(), ask_confirm: false, urgent: false });
        assert_eq!(parse_post(&c, "", "地区: 1\nx", NOW), Err(FormatError::EmptyTitle));
        assert_eq!(parse_post(&c, "t", "本文だけ", NOW), Err(FormatError::MissingDistricts));
        assert_eq!(parse_post(&c, "t", "地区: 1\n", NOW), Err(FormatError::EmptyText));
        assert_eq!(parse_post(&c, "t", "種別: 宣伝\n地区: 1\nx", NOW), Err(FormatError::UnknownKind("宣伝".into())));
    }

    #[test]
    fn wrap_keeps_urls_whole() {
        let w = wrap(&format!("{}https://example.jp/{}", "あ".repeat(30), "x".repeat(50)), 36);
        let lines: Vec<&str> = w.lines().collect();
        assert_eq!(lines[0], "あ".repeat(30));
        assert!(lines[1].starts_with("https://example.jp/"));
        assert!(wrap(&"い".repeat(80), 36).lines().all(|l| l.chars().count() <= 36));
    }

    #[test]
    fn alert_mail_has_list_headers_and_footer() {
        let c = cfg();
        let d = parse_post(&c, "声かけ", "地区: 1, 3\n本文", NOW).unwrap();
        let content = content(&c, &d, false, NOW);
        assert_eq!(content.subject, "【守るネット】声かけ（中央地区、昭和地区）");
        let links = SubscriberLinks { manage: "http://x/m/M".into(), unsubscribe: "http://x/u/U".into() };
        let to = EmailAddress::parse("a..b.@docomo.ne.jp").unwrap();
        let m = render(&c, &content, &to, &links, 1_800_000_000, "id@localhost".into(), None);
        assert!(m.bytes.is_ascii());
        let msg = mailparse::parse_mail(&m.bytes).unwrap();
        let h = |k: &str| msg.headers.iter().find(|x| x.get_key().eq_ignore_ascii_case(k)).map(|x| x.get_value()).unwrap();
        assert_eq!(h("List-Unsubscribe"), "<http://x/u/U>");
        assert_eq!(h("List-Unsubscribe-Post"), "List-Unsubscribe=One-Click");
        assert_eq!(h("List-Id"), "<alerts.localhost>");
        assert_eq!(h("Auto-Submitted"), "auto-generated");
        assert_eq!(h("Subject"), content.subject);
        let body = msg.get_body().unwrap();
        assert!(body.contains("本文") && body.contains("http://x/m/M") && body.contains("http://x/u/U"), "{body}");
    }

    #[test]
    fn a_subscriber_copy_is_stable_and_personal() {
        let c = Config { domain: "mamoru.test".into(), ..cfg() };
        let d = parse_post(&c, "声かけ", "地区: 1\n本文", NOW).unwrap();
        let content = content(&c, &d, false, NOW);
        let key = TokenKey::new(&[5; 32]);
        let to = EmailAddress::parse("a..b.@docomo.ne.jp").unwrap();
        let r = AlertRecipient { subscriber: SubscriberId::new(42), address: &to, link_nonce: [7; 8], confirm_district: None };
        let m = render_for_subscriber(&c, &key, AlertId::new(9), None, &content, 1_800_000_000, &r);
        assert_eq!(m.message_id, "alert.9.42@mamoru.test");
        assert_eq!(m.bytes, render_for_subscriber(&c, &key, AlertId::new(9), None, &content, 1_800_000_000, &r).bytes, "same row, same bytes");
        let links = subscriber_links(&c, &key, SubscriberId::new(42), [7; 8], 1_800_000_000);
        let msg = mailparse::parse_mail(&m.bytes).unwrap();
        let h = |k: &str| msg.headers.iter().find(|x| x.get_key().eq_ignore_ascii_case(k)).map(|x| x.get_value()).unwrap();
        assert_eq!(h("To"), "<a..b.@docomo.ne.jp>");
        assert_eq!(h("List-Unsubscribe"), format!("<{}>", links.unsubscribe));
        assert!(msg.get_body().unwrap().contains(&links.manage));
        let other = EmailAddress::parse("c@ezweb.ne.jp").unwrap();
        let r2 = AlertRecipient { subscriber: SubscriberId::new(43), address: &other, link_nonce: [8; 8], confirm_district: None };
        assert_ne!(render_for_subscriber(&c, &key, AlertId::new(9), None, &content, 1_800_000_000, &r2).bytes, m.bytes);
    }

    #[test]
    fn a_copy_that_asks_for_confirmation_carries_its_counting_link() {
        let c = Config { domain: "mamoru.test".into(), ..cfg() };
        let d = parse_post(&c, "声かけ", "確認: する\n地区: 1, 3\n本文", NOW).unwrap();
        assert!(d.ask_confirm && d.text == "本文", "{d:?}");
        assert!(!parse_post(&c, "声かけ", "地区: 1\n確認: しない\n本文", NOW).unwrap().ask_confirm);
        let content = content(&c, &d, false, NOW);
        let key = TokenKey::new(&[5; 32]);
        let to = EmailAddress::parse("p@ezweb.ne.jp").unwrap();
        let r = AlertRecipient { subscriber: SubscriberId::new(42), address: &to, link_nonce: [7; 8], confirm_district: Some(3) };
        let m = render_for_subscriber(&c, &key, AlertId::new(9), None, &content, 1_800_000_000, &r);
        assert_eq!(m.bytes, render_for_subscriber(&c, &key, AlertId::new(9), None, &content, 1_800_000_000, &r).bytes, "same row, same bytes");
        let body = mailparse::parse_mail(&m.bytes).unwrap().get_body().unwrap();
        let at = body.find("/k/").expect("a confirmation link");
        let token: String = body[at + 3..].chars().take(51).collect();
        let claims = key.verify(&token, crate::token::Purpose::Confirm, 1_800_000_000).unwrap();
        let k = ConfirmKey::from_subject(claims.subject);
        assert_eq!((k.alert, k.district, k.carrier_name()), (AlertId::new(9), 3, "au"));
        assert_eq!(claims.expires_at, 1_800_000_000 + c.alerts.confirm_ttl_secs);
        assert!(body.contains("確認しました"));
    }

    #[test]
    fn a_followup_line_names_the_report() {
        let f = |t| parse_followup(t);
        assert_eq!(f("地区: 1\n本文"), None, "a first report");
        assert_eq!(
            f("\n続報：１２\n男は立ち去りました。\n"),
            Some(Ok(FollowupPost { kind: FollowupKind::Update, of: 12, text: "男は立ち去りました。".into() }))
        );
        assert_eq!(f("解決: 3番\n保護者の方でした。").unwrap().unwrap().kind, FollowupKind::Resolved);
        assert_eq!(f("取消: #3\n誤って配信しました。").unwrap().unwrap().of, 3);
        assert_eq!(f("続報: 中央\nx"), Some(Err(FormatError::NoSuchAlert("中央".into()))));
        assert_eq!(f("続報: 3\n \n"), Some(Err(FormatError::EmptyText)));
    }

    #[test]
    fn a_followup_threads_under_the_subscribers_copy_of_the_report() {
        let c = Config { domain: "mamoru.test".into(), ..cfg() };
        let d = parse_post(&c, "声かけ", "地区: 1\n男は立ち去りました。", NOW).unwrap();
        let published = crate::jst::unix(2026, 12, 1, 14, 2).unwrap();
        let content = followup_content(&c, &d, false, &Followup { kind: FollowupKind::Resolved, original_published_at: published }, published + 600);
        assert_eq!(content.subject, "【解決】【守るネット】声かけ（中央地区）");
        assert!(content.body.starts_with("【解決】\n12月1日 14:02配信のお知らせは解決しました。\n\n■地区: 中央地区"), "{}", content.body);
        let test = followup_content(&c, &d, true, &Followup { kind: FollowupKind::Update, original_published_at: published }, published + 600);
        assert!(test.body.starts_with("これはテスト配信です。\n届いた時刻の確認にお使いください。\n\n【続報】"), "{}", test.body);
        let key = TokenKey::new(&[5; 32]);
        let to = EmailAddress::parse("a@docomo.ne.jp").unwrap();
        let r = AlertRecipient { subscriber: SubscriberId::new(42), address: &to, link_nonce: [7; 8], confirm_district: None };
        let m = render_for_subscriber(&c, &key, AlertId::new(10), Some(AlertId::new(9)), &content, published + 600, &r);
        let msg = mailparse::parse_mail(&m.bytes).unwrap();
        let h = |k: &str| msg.headers.iter().find(|x| x.get_key().eq_ignore_ascii_case(k)).map(|x| x.get_value());
        assert_eq!(h("Message-ID").as_deref(), Some("<alert.10.42@mamoru.test>"));
        assert_eq!(h("In-Reply-To").as_deref(), Some("<alert.9.42@mamoru.test>"));
        assert_eq!(h("References").as_deref(), Some("<alert.9.42@mamoru.test>"));
        let first = render_for_subscriber(&c, &key, AlertId::new(9), None, &content, published, &r);
        let first = mailparse::parse_mail(&first.bytes).unwrap();
        assert!(!first.headers.iter().any(|x| x.get_key().eq_ignore_ascii_case("In-Reply-To")));
    }

    #[test]
    fn the_incident_time_is_read_or_unknown_never_the_post_time() {
        let now = crate::jst::unix(2026, 12, 1, 14, 2).unwrap();
        let at = |y, m, d, h, mi| crate::jst::unix(y, m, d, h, mi).unwrap();
        let p = |v| parse_occurred(v, now);
        assert_eq!(p("12/1 13:25ごろ"), Ok(Occurred { at: at(2026, 12, 1, 13, 25), flags: Occurred::APPROX }));
        assert_eq!(p("１２月１日　１３時２５分"), Ok(Occurred { at: at(2026, 12, 1, 13, 25), flags: 0 }));
        assert_eq!(p("2025/12/31 9:05"), Ok(Occurred { at: at(2025, 12, 31, 9, 5), flags: 0 }));
        assert_eq!(p("12/31"), Ok(Occurred { at: at(2025, 12, 31, 0, 0), flags: Occurred::DAY_ONLY }), "last year's");
        assert_eq!(p("不明"), Ok(Occurred::default()));
        assert_eq!(p("2/30"), Err(FormatError::BadOccurred("2/30".into())));
        assert_eq!(p("2027/1/1"), Err(FormatError::BadOccurred("2027/1/1".into())), "the future");
        assert_eq!(p("きのう"), Err(FormatError::BadOccurred("きのう".into())));
        let d = parse_post(&cfg(), "声かけ", "発生: 12/1 13:25ごろ\n地区: 1\n本文", now).unwrap();
        assert_eq!(d.occurred.at, at(2026, 12, 1, 13, 25));
        let body = content(&cfg(), &d, false, now).body;
        assert!(body.contains("■12月1日 13:25ごろ発生・14:02配信\n"), "{body}");
        let unknown = parse_post(&cfg(), "声かけ", "地区: 1\n本文", now).unwrap();
        assert!(!unknown.occurred.is_known());
        assert!(content(&cfg(), &unknown, false, now).body.contains("■発生日時不明・12月1日 14:02配信\n"));
        let earlier = Occurred { at: at(2026, 11, 30, 18, 0), flags: 0 };
        assert_eq!(timing_line(&earlier, now), "11月30日 18:00発生・12月1日 14:02配信");
    }
}
