//! Which mailbox an address reaches, and which addresses never get a reply.
//!
//! Both are rules about addresses that several entry points share (the mail
//! path in ingest and the PC form in web), so they live here, once.
//!
//! [`mailbox_key`] is the form the per-address anti-abuse limits count by:
//! one Gmail inbox answers to `taro.yamada+1@gmail.com`,
//! `TaroYamada+2@googlemail.com` and a thousand more spellings, and a limit
//! keyed by the spelling lets a forger send that inbox a thousand 登録受付
//! mails. The key is used only for limits; the registered address stays
//! exactly as typed, because that is where the mail goes. Merging two
//! spellings that are in truth two mailboxes only makes a limit stricter,
//! never opens a hole, so the rules lean towards merging where a provider's
//! behaviour is documented, and leave unknown domains alone (lower-cased).
//!
//! [`no_reply`] is the rule that keeps mamoru from answering daemons, role
//! mailboxes and itself: a reply to any of those is backscatter or the start
//! of a mail loop.

use crate::EmailAddress;

/// How a provider reads the local part of its addresses.
struct Provider {
    /// The domains of the provider that share one namespace of mailboxes.
    domains: &'static [&'static str],
    /// The domain the key uses for all of them.
    canonical: &'static str,
    /// Dots in the local part are ignored (`t.aro` is `taro`).
    ignore_dots: bool,
    /// Everything from the first `+` on is a tag the provider ignores.
    plus_tags: bool,
}

/// Providers whose address rules are documented. Every other domain,
/// including the Japanese carriers (docomo, au, SoftBank: no `+` tags, and a
/// dot is significant — `taro.yamada@` and `taroyamada@` are two people),
/// keys as the lower-cased address.
const PROVIDERS: &[Provider] = &[
    Provider { domains: &["gmail.com", "googlemail.com"], canonical: "gmail.com", ignore_dots: true, plus_tags: true },
    // iCloud: the three domains name one account namespace; `+` tags since 2023.
    Provider { domains: &["icloud.com", "me.com", "mac.com"], canonical: "icloud.com", ignore_dots: false, plus_tags: true },
    Provider { domains: &["outlook.com"], canonical: "outlook.com", ignore_dots: false, plus_tags: true },
    Provider { domains: &["outlook.jp"], canonical: "outlook.jp", ignore_dots: false, plus_tags: true },
    Provider { domains: &["hotmail.com"], canonical: "hotmail.com", ignore_dots: false, plus_tags: true },
    Provider { domains: &["hotmail.co.jp"], canonical: "hotmail.co.jp", ignore_dots: false, plus_tags: true },
    Provider { domains: &["live.com"], canonical: "live.com", ignore_dots: false, plus_tags: true },
    Provider { domains: &["live.jp"], canonical: "live.jp", ignore_dots: false, plus_tags: true },
    Provider { domains: &["msn.com"], canonical: "msn.com", ignore_dots: false, plus_tags: true },
    Provider { domains: &["fastmail.com"], canonical: "fastmail.com", ignore_dots: false, plus_tags: true },
    Provider { domains: &["fastmail.fm"], canonical: "fastmail.fm", ignore_dots: false, plus_tags: true },
    Provider { domains: &["proton.me", "protonmail.com", "pm.me"], canonical: "proton.me", ignore_dots: false, plus_tags: true },
];

/// The mailbox `addr` reaches, as the per-address limits count it: the
/// domain always lower-cased, the local part lower-cased (every provider
/// mamoru's parents use delivers case-insensitively), and, for the
/// providers in the table above, `+tags` and (Gmail) dots removed and alias
/// domains merged. Pure and total: any [`EmailAddress`] has a key.
pub fn mailbox_key(addr: &EmailAddress) -> String {
    let domain = addr.domain().trim_end_matches('.').to_ascii_lowercase();
    let mut local = addr.local_part().to_ascii_lowercase();
    let Some(p) = PROVIDERS.iter().find(|p| p.domains.contains(&domain.as_str())) else {
        return format!("{local}@{domain}");
    };
    if p.plus_tags {
        if let Some(plus) = local.find('+') {
            local.truncate(plus);
        }
    }
    if p.ignore_dots {
        local.retain(|c| c != '.');
    }
    format!("{local}@{}", p.canonical)
}

/// Why an address gets no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoReply {
    /// A mail system or role mailbox: `MAILER-DAEMON`, `postmaster`,
    /// `double-bounce`, `no-reply`, in any case and punctuation.
    Daemon,
    /// Our own domain or a subdomain of it: a reply would loop.
    OwnDomain,
}

/// Does `addr` never get a reply from a service on `our_domain`? The one
/// rule both the mail path and the PC form apply before anything is queued.
pub fn no_reply(addr: &EmailAddress, our_domain: &str) -> Option<NoReply> {
    if is_daemon_local(addr.local_part()) {
        Some(NoReply::Daemon)
    } else if is_own_domain(our_domain, addr.domain()) {
        Some(NoReply::OwnDomain)
    } else {
        None
    }
}

/// `MAILER-DAEMON`, `mailer_daemon`, `MailerDaemon`, `postmaster`,
/// `Post.Master+x`, `no-reply`, `donotreply`, ...: the local part with its
/// `+tag`, dashes, underscores and dots removed, case-insensitively. Takes a
/// bare string because MTAs also send as `MAILER-DAEMON` without a domain,
/// which is not an [`EmailAddress`].
pub fn is_daemon_local(local: &str) -> bool {
    let base = local.split('+').next().unwrap_or(local);
    let squashed: String =
        base.chars().filter(|c| !matches!(c, '-' | '_' | '.')).map(|c| c.to_ascii_lowercase()).collect();
    matches!(squashed.as_str(), "mailerdaemon" | "postmaster" | "doublebounce" | "noreply" | "donotreply")
}

/// `theirs` is `ours` or a subdomain of it (`bounce.mamoru.test`),
/// case-insensitively and without a trailing root dot.
pub fn is_own_domain(ours: &str, theirs: &str) -> bool {
    let ours = ours.trim_end_matches('.');
    let theirs = theirs.trim_end_matches('.');
    if ours.is_empty() {
        return false;
    }
    if ours.eq_ignore_ascii_case(theirs) {
        return true;
    }
    // `theirs` ends with `.ours`; compared as bytes so no slicing can land
    // inside a multi-byte character.
    let (t, o) = (theirs.as_bytes(), ours.as_bytes());
    t.len() > o.len() && t[t.len() - o.len() - 1] == b'.' && t[t.len() - o.len()..].eq_ignore_ascii_case(o)
}

/// Senders and what [`no_reply`] says of them with our domain
/// `mamoru.test`. Every entry point that queues a reply runs this table in
/// its tests, so the rule cannot drift between them.
pub const NO_REPLY_EXAMPLES: &[(&str, Option<NoReply>)] = &[
    ("MAILER-DAEMON@mx.example.jp", Some(NoReply::Daemon)),
    ("mailer-daemon@docomo.ne.jp", Some(NoReply::Daemon)),
    ("Mailer_Daemon@x.jp", Some(NoReply::Daemon)),
    ("postmaster@ezweb.ne.jp", Some(NoReply::Daemon)),
    ("PostMaster+x@x.jp", Some(NoReply::Daemon)),
    ("double-bounce@x.jp", Some(NoReply::Daemon)),
    ("no-reply@example.jp", Some(NoReply::Daemon)),
    ("NoReply@example.jp", Some(NoReply::Daemon)),
    ("do_not_reply@example.jp", Some(NoReply::Daemon)),
    ("ans@mamoru.test", Some(NoReply::OwnDomain)),
    ("bounce+x@MAMORU.TEST", Some(NoReply::OwnDomain)),
    ("a@mx.mamoru.test", Some(NoReply::OwnDomain)),
    ("a@notmamoru.test", None),
    ("mailer@x.jp", None),
    ("postmaster.taro@docomo.ne.jp", None),
    ("taro..yamada@docomo.ne.jp", None),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn key(a: &str) -> String {
        mailbox_key(&EmailAddress::parse(a).unwrap_or_else(|e| panic!("{a}: {e}")))
    }

    #[test]
    fn one_key_per_mailbox() {
        for (spellings, want) in [
            (
                &[
                    "taroyamada@gmail.com",
                    "taro.yamada@gmail.com",
                    "T.a.r.o.Yamada+1@gmail.com",
                    "taroyamada+x.y@GoogleMail.com",
                    "TAROYAMADA@GMAIL.COM",
                ][..],
                "taroyamada@gmail.com",
            ),
            (&["hanako@icloud.com", "Hanako+school@me.com", "hanako@mac.com"], "hanako@icloud.com"),
            (&["ken.s@outlook.com", "Ken.S+pta@outlook.com"], "ken.s@outlook.com"),
            (&["ken+a@hotmail.co.jp", "KEN@hotmail.co.jp"], "ken@hotmail.co.jp"),
            (&["mika+x@fastmail.com"], "mika@fastmail.com"),
            (&["yu+x@pm.me", "yu@protonmail.com"], "yu@proton.me"),
            // Carriers: no tags, dots significant, only case folded.
            (&["taro.yamada@docomo.ne.jp", "Taro.Yamada@DOCOMO.ne.jp"], "taro.yamada@docomo.ne.jp"),
            (&["a+b@ezweb.ne.jp"], "a+b@ezweb.ne.jp"),
            (&["hanako.@au.com"], "hanako.@au.com"),
            (&["x+y.z@i.softbank.jp"], "x+y.z@i.softbank.jp"),
            // Yahoo's `-` keywords need a setting per account: left alone.
            (&["taro-news@yahoo.co.jp"], "taro-news@yahoo.co.jp"),
            (&["Taro+x@example.jp"], "taro+x@example.jp"),
        ] {
            for s in spellings {
                assert_eq!(key(s), want, "{s}");
            }
        }
    }

    #[test]
    fn distinct_mailboxes_stay_distinct() {
        for (a, b) in [
            ("taro.yamada@docomo.ne.jp", "taroyamada@docomo.ne.jp"),
            ("taro@gmail.com", "taro@outlook.com"),
            ("taro@outlook.com", "taro@hotmail.com"),
            ("ta.ro@outlook.com", "taro@outlook.com"),
            ("taro@gmail.com.evil.jp", "taro@gmail.com"),
        ] {
            assert_ne!(key(a), key(b), "{a} vs {b}");
        }
    }

    #[test]
    fn no_reply_table() {
        for (s, want) in NO_REPLY_EXAMPLES {
            let a = EmailAddress::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(no_reply(&a, "mamoru.test"), *want, "{s}");
        }
        assert!(is_daemon_local("MAILER-DAEMON"));
        assert!(!is_own_domain("", "x.jp"));
        assert!(is_own_domain("mamoru.test.", "MAMORU.test"));
    }
}
