//! The mails mamoru sends, rendered to RFC 5322 bytes.
//!
//! Rendering is pure: the caller passes the time and a unique Message-ID, so
//! a queued row is byte-for-byte stable and a duplicate delivery is identical.
//! mail-builder does the MIME work (RFC 2047 subject, transfer encoding, line
//! length); the text is written with short lines for phone screens.

use mail_builder::MessageBuilder;
use mail_builder::headers::raw::Raw;

use crate::UnixTime;
use crate::address::EmailAddress;
use crate::config::{Config, District};
use crate::links::Route;

/// What kind of mail a queued message is; stored with the outbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailKind {
    /// 登録受付: the reply to an empty mail, with the registration link.
    RegistrationReceived,
    /// 登録完了: confirmation after districts were chosen.
    RegistrationCompleted,
    /// 登録内容の変更: the one-time manage link for an address already registered.
    ManageLink,
    /// 変更完了: confirmation after the districts were changed.
    DistrictsChanged,
    /// 登録削除: confirmation after the registration was deleted.
    RegistrationDeleted,
    /// An alert (or a テスト配信) to one subscriber.
    Alert,
    /// To an admin: the preview of a posted alert with its publish link.
    AlertPreview,
    /// To an admin: why a post was refused.
    AlertRejected,
    /// 受信テスト: a test mail with a one-time 届きました link.
    ReceptionTest,
}

impl MailKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RegistrationReceived => "registration_received",
            Self::RegistrationCompleted => "registration_completed",
            Self::ManageLink => "manage_link",
            Self::DistrictsChanged => "districts_changed",
            Self::RegistrationDeleted => "registration_deleted",
            Self::Alert => "alert",
            Self::AlertPreview => "alert_preview",
            Self::AlertRejected => "alert_rejected",
            Self::ReceptionTest => "reception_test",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "registration_received" => Some(Self::RegistrationReceived),
            "registration_completed" => Some(Self::RegistrationCompleted),
            "manage_link" => Some(Self::ManageLink),
            "districts_changed" => Some(Self::DistrictsChanged),
            "registration_deleted" => Some(Self::RegistrationDeleted),
            "alert" => Some(Self::Alert),
            "alert_preview" => Some(Self::AlertPreview),
            "alert_rejected" => Some(Self::AlertRejected),
            "reception_test" => Some(Self::ReceptionTest),
            _ => None,
        }
    }
}

/// A rendered message ready for the outbox.
#[derive(Debug, Clone)]
pub struct OutgoingMail {
    pub kind: MailKind,
    /// Envelope sender (MAIL FROM).
    pub sender: String,
    /// Envelope and header recipient.
    pub to: EmailAddress,
    /// Without angle brackets.
    pub message_id: String,
    pub bytes: Vec<u8>,
}

/// A Message-ID on our domain from caller-supplied randomness.
pub fn message_id(random: &[u8; 12], cfg: &Config) -> String {
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}@{}", cfg.domain)
}

/// 登録受付: sent in reply to an empty mail or the PC form.
pub fn registration_received(cfg: &Config, to: &EmailAddress, token: &str, now: UnixTime, message_id: String) -> OutgoingMail {
    let hours = (cfg.tokens.register_ttl_secs + 3599) / 3600;
    let name = &cfg.service_name;
    let body = format!(
        "{name}への登録を受け付けました。\n\
         \n\
         下のリンクを開いて、情報を受け取りたい\n\
         地区を選び「登録する」を押してください。\n\
         \n\
         {url}\n\
         \n\
         このリンクは{hours}時間有効で、一度だけ\n\
         使えます。期限が切れたときは、もう一度\n\
         空メールを次のアドレスへ送ってください。\n\
         {ans}\n\
         \n\
         お心当たりのない場合は、このメールを\n\
         破棄してください。登録はされません。\n\
         \n\
         お知らせが迷惑メールにされないよう、\n\
         受信設定の方法をご覧ください。\n\
         {help}\n\
         {footer}",
        url = Route::Register(token).url(cfg),
        ans = cfg.register_address(),
        help = help_url(cfg, to),
        footer = footer(cfg),
    );
    render(cfg, MailKind::RegistrationReceived, to, &format!("【{name}】登録受付"), &body, "auto-replied", now, message_id)
}

/// 登録完了: sent once districts are saved. `manage_url` is the
/// subscriber's long-lived manage link (`links::subscriber_links`), so a
/// parent who picked the wrong district fixes it from this mail at once.
pub fn registration_completed(
    cfg: &Config,
    to: &EmailAddress,
    districts: &[&District],
    manage_url: &str,
    now: UnixTime,
    message_id: String,
) -> OutgoingMail {
    let name = &cfg.service_name;
    let list: String = districts.iter().map(|d| format!("・{}\n", d.name)).collect();
    let body = format!(
        "{name}への登録が完了しました。\n\
         \n\
         受け取る地区:\n\
         {list}\
         \n\
         地区の変更や登録の削除は、\n\
         下のリンクからできます。\n\
         このメールは消さずに残してください。\n\
         \n\
         {manage_url}\n\
         \n\
         リンクがなくなったときは、空メールを\n\
         次のアドレスへ送ってください。\n\
         {ans}\n\
         {footer}",
        ans = cfg.register_address(),
        footer = footer(cfg),
    );
    render(cfg, MailKind::RegistrationCompleted, to, &format!("【{name}】登録完了"), &body, "auto-generated", now, message_id)
}

/// 登録内容の変更: an empty mail from an address that is already registered
/// gets a one-time link to change districts or delete the registration.
pub fn manage_link(cfg: &Config, to: &EmailAddress, token: &str, now: UnixTime, message_id: String) -> OutgoingMail {
    let hours = (cfg.tokens.register_ttl_secs + 3599) / 3600;
    let name = &cfg.service_name;
    let body = format!(
        "このアドレスは{name}に登録済みです。\n\
         \n\
         受け取る地区の変更や、登録の削除は\n\
         下のリンクからできます。\n\
         \n\
         {url}\n\
         \n\
         このリンクは{hours}時間有効で、一度だけ\n\
         使えます。\n\
         \n\
         お心当たりのない場合は、このメールを\n\
         破棄してください。登録は変わりません。\n\
         {footer}",
        url = Route::Manage(token).url(cfg),
        footer = footer(cfg),
    );
    render(cfg, MailKind::ManageLink, to, &format!("【{name}】登録内容の変更"), &body, "auto-replied", now, message_id)
}

/// 変更完了: sent after the districts were changed on the manage page.
pub fn districts_changed(cfg: &Config, to: &EmailAddress, districts: &[&District], now: UnixTime, message_id: String) -> OutgoingMail {
    let name = &cfg.service_name;
    let list: String = districts.iter().map(|d| format!("・{}\n", d.name)).collect();
    let body = format!(
        "受け取る地区を変更しました。\n\
         \n\
         受け取る地区:\n\
         {list}\
         \n\
         お心当たりのない場合は、空メールを\n\
         次のアドレスへ送って確かめてください。\n\
         {ans}\n\
         {footer}",
        ans = cfg.register_address(),
        footer = footer(cfg),
    );
    render(cfg, MailKind::DistrictsChanged, to, &format!("【{name}】変更完了"), &body, "auto-generated", now, message_id)
}

/// 登録削除: sent after the registration was deleted on the manage page.
pub fn registration_deleted(cfg: &Config, to: &EmailAddress, now: UnixTime, message_id: String) -> OutgoingMail {
    let name = &cfg.service_name;
    let body = format!(
        "{name}の登録を削除しました。\n\
         このアドレスは、もう保存していません。\n\
         お知らせのメールも届かなくなります。\n\
         \n\
         また受け取るときは、空メールを\n\
         次のアドレスへ送ってください。\n\
         {ans}\n\
         {footer}",
        ans = cfg.register_address(),
        footer = footer(cfg),
    );
    render(cfg, MailKind::RegistrationDeleted, to, &format!("【{name}】登録削除"), &body, "auto-generated", now, message_id)
}

/// 受信テスト: the test mail a parent asked for, with its one-time
/// 届きました link (`/t/`).
pub fn reception_test(cfg: &Config, to: &EmailAddress, token: &str, now: UnixTime, message_id: String) -> OutgoingMail {
    let name = &cfg.service_name;
    let body = format!(
        "{name}の受信テストです。\n\
         \n\
         このメールが届いていれば、お知らせも\n\
         受け取れます。下のリンクを開き、\n\
         「届きました」を押してください。\n\
         \n\
         {url}\n\
         \n\
         お心当たりのない場合は、このメールを\n\
         破棄してください。何も登録されません。\n\
         {footer}",
        url = Route::Arrived(token).url(cfg),
        footer = footer(cfg),
    );
    render(cfg, MailKind::ReceptionTest, to, &format!("【{name}】受信テスト"), &body, "auto-generated", now, message_id)
}

/// The help page for the carrier of `to` (`/help/docomo`), or the list
/// of every help page when its domain names none.
pub fn help_url(cfg: &Config, to: &EmailAddress) -> String {
    match crate::help::Carrier::of_domain(to.domain()) {
        Some(c) => format!("{}/help/{}", cfg.base_url(), c.slug()),
        None => format!("{}/help/", cfg.base_url()),
    }
}

fn footer(cfg: &Config) -> String {
    format!("\n--\n{}\n{}/\n", cfg.service_name, cfg.base_url())
}

/// A plain-text mail from the registration address.
#[allow(clippy::too_many_arguments)]
fn render(
    cfg: &Config,
    kind: MailKind,
    to: &EmailAddress,
    subject: &str,
    body: &str,
    auto_submitted: &'static str,
    now: UnixTime,
    message_id: String,
) -> OutgoingMail {
    render_from(cfg, cfg.register_address(), kind, to, subject, body, auto_submitted, now, message_id)
}

/// A plain-text mail from `from` (also the envelope sender), with the
/// service name as display name; `body` uses `\n` line ends.
#[allow(clippy::too_many_arguments)]
pub(crate) fn render_from(
    cfg: &Config,
    from: String,
    kind: MailKind,
    to: &EmailAddress,
    subject: &str,
    body: &str,
    auto_submitted: &'static str,
    now: UnixTime,
    message_id: String,
) -> OutgoingMail {
    let bytes = MessageBuilder::new()
        .from((cfg.service_name.as_str(), from.as_str()))
        .to(to.as_str())
        .subject(subject)
        .date(now)
        .message_id(message_id.as_str())
        .header("Auto-Submitted", Raw::new(auto_submitted))
        .text_body(body.replace('\n', "\r\n"))
        .write_to_vec()
        .unwrap_or_default();
    OutgoingMail { kind, sender: from, to: to.clone(), message_id, bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_and_body(bytes: &[u8]) -> (String, String) {
        let msg = mailparse::parse_mail(bytes).unwrap();
        let heads = msg.headers.iter().map(|h| format!("{}: {}\n", h.get_key(), h.get_value())).collect();
        (heads, msg.get_body().unwrap())
    }

    #[test]
    fn registration_received_is_well_formed() {
        let cfg = Config::default();
        let to = EmailAddress::parse("taro..y.@docomo.ne.jp").unwrap();
        let m = registration_received(&cfg, &to, "TOKEN", 1_700_000_000, message_id(&[0xab; 12], &cfg));
        assert!(m.bytes.is_ascii(), "7-bit clean on the wire");
        assert!(m.bytes.split(|&b| b == b'\n').all(|l| l.len() <= 998));
        assert!(!m.bytes.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'), "CRLF only");
        let (h, body) = headers_and_body(&m.bytes);
        assert!(h.contains("Subject: 【守るネット】登録受付\n"), "{h}");
        assert!(h.contains("To: <taro..y.@docomo.ne.jp>") || h.contains("To: taro..y.@docomo.ne.jp"), "{h}");
        assert!(h.contains("Message-ID: <abababababababababababab@localhost>"), "{h}");
        assert!(h.contains("Auto-Submitted: auto-replied"), "{h}");
        assert!(h.contains("Date: "), "{h}");
        assert!(body.contains("http://127.0.0.1:8080/r/TOKEN"), "{body}");
        assert!(body.contains("24時間"), "{body}");
        assert!(body.contains("http://127.0.0.1:8080/help/docomo"), "{body}");
        for line in body.lines() {
            assert!(line.chars().count() <= 40, "long line for a phone: {line}");
        }
    }

    #[test]
    fn self_service_mails_are_short_lined_and_carry_their_link() {
        let cfg = Config::default();
        let to = EmailAddress::parse("a.@ezweb.ne.jp").unwrap();
        let m = manage_link(&cfg, &to, "TOKEN", 1_700_000_000, message_id(&[2; 12], &cfg));
        let (h, body) = headers_and_body(&m.bytes);
        assert!(h.contains("Subject: 【守るネット】登録内容の変更\n"), "{h}");
        assert!(body.contains("http://127.0.0.1:8080/m/TOKEN"), "{body}");
        let c = districts_changed(&cfg, &to, &[&cfg.districts[1]], 1_700_000_000, message_id(&[3; 12], &cfg));
        let d = registration_deleted(&cfg, &to, 1_700_000_000, message_id(&[4; 12], &cfg));
        assert!(headers_and_body(&c.bytes).0.contains("変更完了"));
        assert!(headers_and_body(&c.bytes).1.contains("・天応・吉浦地区"));
        assert!(headers_and_body(&d.bytes).0.contains("登録削除"));
        for mail in [&m, &c, &d] {
            assert!(mail.bytes.is_ascii());
            assert_eq!(MailKind::parse(mail.kind.as_str()), Some(mail.kind));
            for line in headers_and_body(&mail.bytes).1.lines() {
                assert!(line.chars().count() <= 40, "long line for a phone: {line}");
            }
        }
    }

    #[test]
    fn the_reception_test_carries_its_link() {
        let cfg = Config::default();
        let to = EmailAddress::parse("a@ezweb.ne.jp").unwrap();
        let m = reception_test(&cfg, &to, "TOKEN", 1_700_000_000, message_id(&[5; 12], &cfg));
        let (h, body) = headers_and_body(&m.bytes);
        assert!(h.contains("Subject: 【守るネット】受信テスト\n"), "{h}");
        assert!(body.contains("http://127.0.0.1:8080/t/TOKEN"), "{body}");
        assert_eq!(MailKind::parse(m.kind.as_str()), Some(MailKind::ReceptionTest));
        for line in body.lines() {
            assert!(line.chars().count() <= 40, "long line for a phone: {line}");
        }
        assert_eq!(help_url(&cfg, &EmailAddress::parse("b@example.jp").unwrap()), "http://127.0.0.1:8080/help/");
    }

    #[test]
    fn registration_completed_lists_districts() {
        let cfg = Config::default();
        let to = EmailAddress::parse("a@ezweb.ne.jp").unwrap();
        let ds = [&cfg.districts[0], &cfg.districts[2]];
        let m = registration_completed(&cfg, &to, &ds, "http://127.0.0.1:8080/m/TOKEN", 1_700_000_000, message_id(&[1; 12], &cfg));
        let (h, body) = headers_and_body(&m.bytes);
        assert!(h.contains("Subject: 【守るネット】登録完了\n"), "{h}");
        assert!(body.contains("http://127.0.0.1:8080/m/TOKEN"), "{body}");
        for line in body.lines() {
            assert!(line.chars().count() <= 40, "long line for a phone: {line}");
        }
        assert!(body.contains("・中央地区") && body.contains("・昭和地区") && !body.contains("郷原"), "{body}");
    }
}
