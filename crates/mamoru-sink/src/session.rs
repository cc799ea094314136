//! One SMTP session, sans-I/O: a line in, a step out. The server feeds it
//! lines (CRLF included) and does what the step says.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::policy::{Delivery, DotVerdict, Policy, RcptVerdict};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write this reply (complete, with CRLF) and go on.
    Reply(String),
    /// Write this reply and close.
    Close(String),
    /// Close without a reply (a connection reset after the final dot).
    Drop,
    /// Nothing to write (a data line).
    Nothing,
    /// Write this reply, then run the TLS handshake (STARTTLS) and call
    /// [`Session::tls_started`].
    StartTls(String),
}

/// Where an AUTH exchange stands.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum AuthStep {
    #[default]
    Idle,
    /// `AUTH PLAIN` without an initial response: the next line is it.
    Plain,
    /// `AUTH LOGIN`: the next line is the user name.
    LoginUser,
    /// `AUTH LOGIN`: the next line is the password of this user.
    LoginPassword(String),
}

/// What a session offers besides plain SMTP.
#[derive(Debug, Default, Clone)]
pub struct Offers {
    /// STARTTLS is announced (the server has a certificate).
    pub starttls: bool,
    /// Accounts for AUTH PLAIN/LOGIN, (user, password). With any, MAIL
    /// needs AUTH first; with STARTTLS too, AUTH needs TLS first (as
    /// Postfix's `smtpd_tls_auth_only`).
    pub accounts: Vec<(String, String)>,
    /// MAIL needs TLS first (`530 5.7.0 Must issue a STARTTLS command
    /// first`, RFC 3207 §4), as Postfix's `smtpd_tls_security_level =
    /// encrypt`.
    pub require_tls: bool,
}

#[derive(Debug, Default)]
pub struct Session {
    hostname: String,
    mail: bool,
    /// Recipients of this transaction, as (local part, domain).
    rcpts: Vec<(String, String)>,
    in_data: bool,
    in_headers: bool,
    message_id: String,
    /// The domain this connection is counted against, after its first RCPT.
    bound: Option<String>,
    offers: Offers,
    tls: bool,
    user: Option<String>,
    auth: AuthStep,
}

impl Session {
    pub fn new(hostname: &str) -> Self {
        Self { hostname: hostname.to_string(), ..Self::default() }
    }

    /// A session offering STARTTLS and/or AUTH.
    pub fn with_offers(hostname: &str, offers: Offers) -> Self {
        Self { hostname: hostname.to_string(), offers, ..Self::default() }
    }

    /// The TLS handshake after STARTTLS succeeded: the session starts over
    /// (RFC 3207 §4.2: the client must EHLO again).
    pub fn tls_started(&mut self) {
        self.reset();
        self.tls = true;
        self.user = None;
        self.auth = AuthStep::Idle;
    }

    /// Is the session encrypted?
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The user that authenticated, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    fn auth_offered(&self) -> bool {
        !self.offers.accounts.is_empty() && (self.tls || !self.offers.starttls)
    }

    fn ehlo(&self) -> String {
        let mut r = format!("250-{}\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n", self.hostname);
        if self.offers.starttls && !self.tls {
            r.push_str("250-STARTTLS\r\n");
        }
        if self.auth_offered() {
            r.push_str("250-AUTH PLAIN LOGIN\r\n");
        }
        r.push_str("250 SIZE 52428800\r\n");
        r
    }

    pub fn greeting(&self) -> String {
        format!("220 {} ESMTP mamoru-sink\r\n", self.hostname)
    }

    /// The domain the connection counts against, for [`Policy::closed`].
    pub fn bound(&self) -> Option<&str> {
        self.bound.as_deref()
    }

    /// The connection stops counting against its domain (once).
    pub fn unbind(&mut self) -> Option<String> {
        self.bound.take()
    }

    pub fn line(&mut self, line: &[u8], policy: &mut Policy, now: f64) -> Step {
        if self.in_data {
            return self.data_line(line, policy, now);
        }
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        if self.auth != AuthStep::Idle {
            return self.auth_line(text, policy);
        }
        let upper = text.to_ascii_uppercase();
        let verb = upper.split_whitespace().next().unwrap_or("");
        match verb {
            "EHLO" => Step::Reply(self.ehlo()),
            "HELO" => Step::Reply(format!("250 {}\r\n", self.hostname)),
            "STARTTLS" if self.offers.starttls && !self.tls => Step::StartTls("220 2.0.0 Ready to start TLS\r\n".into()),
            "STARTTLS" => Step::Reply("502 5.5.1 STARTTLS not available\r\n".into()),
            "AUTH" => self.auth_command(text, policy),
            "MAIL" if self.offers.require_tls && !self.tls => {
                Step::Reply("530 5.7.0 Must issue a STARTTLS command first\r\n".into())
            }
            "MAIL" if !self.offers.accounts.is_empty() && self.user.is_none() => {
                Step::Reply("530 5.7.0 Authentication required\r\n".into())
            }
            "MAIL" => {
                self.reset();
                self.mail = true;
                Step::Reply("250 2.1.0 Ok\r\n".into())
            }
            "RCPT" => self.rcpt(text, policy, now),
            "DATA" if self.mail && !self.rcpts.is_empty() => {
                self.in_data = true;
                self.in_headers = true;
                Step::Reply("354 End data with <CR><LF>.<CR><LF>\r\n".into())
            }
            "DATA" => Step::Reply("503 5.5.1 Error: need RCPT command\r\n".into()),
            "RSET" => {
                self.reset();
                Step::Reply("250 2.0.0 Ok\r\n".into())
            }
            "NOOP" => Step::Reply("250 2.0.0 Ok\r\n".into()),
            "QUIT" => Step::Close("221 2.0.0 Bye\r\n".into()),
            _ => Step::Reply("502 5.5.2 Error: command not recognized\r\n".into()),
        }
    }

    fn auth_command(&mut self, text: &str, policy: &mut Policy) -> Step {
        if self.offers.accounts.is_empty() {
            return Step::Reply("502 5.5.1 AUTH not available\r\n".into());
        }
        if !self.auth_offered() {
            return Step::Reply("538 5.7.11 Encryption required for requested authentication mechanism\r\n".into());
        }
        if self.user.is_some() {
            return Step::Reply("503 5.5.1 Already authenticated\r\n".into());
        }
        let mut words = text.split_whitespace().skip(1);
        let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
        let initial = words.next();
        match (mechanism.as_str(), initial) {
            ("PLAIN", Some(response)) => self.plain(response, policy),
            ("PLAIN", None) => {
                self.auth = AuthStep::Plain;
                Step::Reply("334 \r\n".into())
            }
            ("LOGIN", Some(user)) => match decode(user) {
                Some(user) => {
                    self.auth = AuthStep::LoginPassword(user);
                    Step::Reply(format!("334 {}\r\n", B64.encode("Password:")))
                }
                None => Step::Reply("501 5.5.2 Cannot decode response\r\n".into()),
            },
            ("LOGIN", None) => {
                self.auth = AuthStep::LoginUser;
                Step::Reply(format!("334 {}\r\n", B64.encode("Username:")))
            }
            _ => Step::Reply("504 5.5.4 Unrecognized authentication type\r\n".into()),
        }
    }

    fn auth_line(&mut self, text: &str, policy: &mut Policy) -> Step {
        let step = std::mem::take(&mut self.auth);
        if text.trim() == "*" {
            return Step::Reply("501 5.7.0 Authentication cancelled\r\n".into());
        }
        match step {
            AuthStep::Idle => Step::Reply("503 5.5.1 No AUTH in progress\r\n".into()),
            AuthStep::Plain => self.plain(text.trim(), policy),
            AuthStep::LoginUser => match decode(text.trim()) {
                Some(user) => {
                    self.auth = AuthStep::LoginPassword(user);
                    Step::Reply(format!("334 {}\r\n", B64.encode("Password:")))
                }
                None => Step::Reply("501 5.5.2 Cannot decode response\r\n".into()),
            },
            AuthStep::LoginPassword(user) => match decode(text.trim()) {
                Some(password) => self.check(user, &password, policy),
                None => Step::Reply("501 5.5.2 Cannot decode response\r\n".into()),
            },
        }
    }

    /// RFC 4616: `authzid NUL authcid NUL password`.
    fn plain(&mut self, response: &str, policy: &mut Policy) -> Step {
        let Some(decoded) = decode(response) else {
            return Step::Reply("501 5.5.2 Cannot decode response\r\n".into());
        };
        let mut parts = decoded.split('\0');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(_authzid), Some(user), Some(password), None) => self.check(user.to_string(), password, policy),
            _ => Step::Reply("501 5.5.2 Malformed PLAIN response\r\n".into()),
        }
    }

    fn check(&mut self, user: String, password: &str, policy: &mut Policy) -> Step {
        if self.offers.accounts.iter().any(|(u, p)| *u == user && p == password) {
            self.user = Some(user);
            Step::Reply("235 2.7.0 Authentication successful\r\n".into())
        } else {
            policy.auth_failed();
            Step::Reply("535 5.7.8 Authentication credentials invalid\r\n".into())
        }
    }

    fn reset(&mut self) {
        self.mail = false;
        self.rcpts.clear();
        self.in_data = false;
        self.message_id.clear();
    }

    fn rcpt(&mut self, text: &str, policy: &mut Policy, now: f64) -> Step {
        if !self.mail {
            return Step::Reply("503 5.5.1 Error: need MAIL command\r\n".into());
        }
        let Some(addr) = text.find('<').and_then(|a| text[a + 1..].find('>').map(|b| &text[a + 1..a + 1 + b])) else {
            return Step::Reply("501 5.1.3 Bad recipient address syntax\r\n".into());
        };
        let Some((local, domain)) = addr.rsplit_once('@') else {
            return Step::Reply("501 5.1.3 Bad recipient address syntax\r\n".into());
        };
        let limited = policy.is_limited(domain);
        if limited && self.bound.as_deref().is_some_and(|b| !b.eq_ignore_ascii_case(domain)) {
            // A carrier takes only its own domains: a connection counted
            // against one carrier cannot carry mail for another. Unlimited
            // domains mix freely, as on a smarthost.
            return Step::Reply("550 5.7.1 Relay access denied\r\n".into());
        }
        let (verdict, bound) = policy.rcpt(local, domain, self.bound.is_some() || !limited, now);
        if limited && bound && self.bound.is_none() {
            self.bound = Some(domain.to_ascii_lowercase());
        }
        match verdict {
            RcptVerdict::Accept => {
                self.rcpts.push((local.to_string(), domain.to_string()));
                Step::Reply("250 2.1.5 Ok\r\n".into())
            }
            RcptVerdict::Throttle(reply) => Step::Close(format!("{reply}\r\n")),
            RcptVerdict::Unknown => Step::Reply(format!("550 5.1.1 <{addr}>: Recipient address rejected: User unknown\r\n")),
            RcptVerdict::Fail(reply) => Step::Reply(format!("{reply}\r\n")),
        }
    }

    fn data_line(&mut self, line: &[u8], policy: &mut Policy, now: f64) -> Step {
        if line == b".\r\n" || line == b".\n" {
            self.in_data = false;
            let (local, domain) = self.rcpts.first().cloned().unwrap_or_default();
            let mid = std::mem::take(&mut self.message_id);
            let verdict = policy.dot(&local, &domain, &mid, now);
            if verdict != DotVerdict::Fail552 {
                policy.delivered(Delivery {
                    message_id: mid,
                    domain: domain.to_ascii_lowercase(),
                    tls: self.tls,
                    user: self.user.clone(),
                });
            }
            self.mail = false;
            self.rcpts.clear();
            return match verdict {
                DotVerdict::Accept => Step::Reply("250 2.0.0 Ok: queued\r\n".into()),
                DotVerdict::Fail552 => Step::Reply("552 5.3.4 Message too big for system\r\n".into()),
                DotVerdict::Reset => Step::Drop,
            };
        }
        if self.in_headers {
            let text = String::from_utf8_lossy(line);
            let t = text.trim_end_matches(['\r', '\n']);
            if t.is_empty() {
                self.in_headers = false;
            } else if t.len() > 11 && t[..11].eq_ignore_ascii_case("message-id:") {
                self.message_id = t[11..].trim().trim_start_matches('<').trim_end_matches('>').to_string();
            }
        }
        Step::Nothing
    }
}

fn decode(b64: &str) -> Option<String> {
    B64.decode(b64.trim()).ok().and_then(|b| String::from_utf8(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyConfig;

    fn run(s: &mut Session, p: &mut Policy, lines: &[&str]) -> Vec<Step> {
        lines.iter().map(|l| s.line(format!("{l}\r\n").as_bytes(), p, 0.0)).collect()
    }

    #[test]
    fn a_transaction_and_an_unknown_user() {
        let mut p = Policy::new(PolicyConfig::default());
        let mut s = Session::new("sink.test");
        let steps = run(
            &mut s,
            &mut p,
            &["EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<unknown1@docomo.ne.jp>", "RSET", "MAIL FROM:<a@b>", "RCPT TO:<t..a.@docomo.ne.jp>", "DATA", "Message-ID: <m1@x>", "", "..body", ".", "QUIT"],
        );
        assert!(matches!(&steps[2], Step::Reply(r) if r.starts_with("550 5.1.1")));
        assert!(matches!(&steps[5], Step::Reply(r) if r.starts_with("250")));
        assert!(matches!(&steps[10], Step::Reply(r) if r.starts_with("250 2.0.0")));
        assert!(matches!(&steps[11], Step::Close(r) if r.starts_with("221")));
        assert_eq!(p.stats().accepted, 1);
        // Only domains with limits count connections.
        assert_eq!(s.bound(), None);
    }

    fn reply(step: &Step) -> &str {
        match step {
            Step::Reply(r) | Step::Close(r) | Step::StartTls(r) => r,
            Step::Drop | Step::Nothing => "",
        }
    }

    #[test]
    fn required_tls_refuses_mail_in_plain_text() {
        let mut p = Policy::new(PolicyConfig::default());
        let offers = Offers { starttls: true, require_tls: true, ..Offers::default() };
        let mut s = Session::with_offers("sink.test", offers);
        let steps = run(&mut s, &mut p, &["EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<t@au.com>", "STARTTLS"]);
        assert_eq!(reply(&steps[1]), "530 5.7.0 Must issue a STARTTLS command first\r\n");
        assert!(reply(&steps[2]).starts_with("503"), "{steps:?}");
        s.tls_started();
        let steps = run(&mut s, &mut p, &["EHLO x", "MAIL FROM:<a@b>", "RCPT TO:<t@au.com>", "DATA", "Message-ID: <m1@x>", "", "body", "."]);
        assert!(reply(&steps[1]).starts_with("250"), "{steps:?}");
        assert!(reply(&steps[7]).starts_with("250"), "{steps:?}");
        assert_eq!(p.deliveries().len(), 1);
        assert!(p.deliveries()[0].tls);
    }

    #[test]
    fn starttls_then_auth_then_mail() {
        let mut p = Policy::new(PolicyConfig::default());
        let offers = Offers { starttls: true, accounts: vec![("mamoru".into(), "s3cret".into())], require_tls: false };
        let mut s = Session::with_offers("sink.test", offers);
        let steps = run(&mut s, &mut p, &["EHLO x", "AUTH PLAIN AG1hbW9ydQBzM2NyZXQ=", "MAIL FROM:<a@b>", "STARTTLS"]);
        assert!(reply(&steps[0]).contains("STARTTLS") && !reply(&steps[0]).contains("AUTH"), "{steps:?}");
        // No AUTH before TLS, and no mail before AUTH.
        assert!(reply(&steps[1]).starts_with("538"), "{steps:?}");
        assert!(reply(&steps[2]).starts_with("530"), "{steps:?}");
        assert!(matches!(&steps[3], Step::StartTls(r) if r.starts_with("220")));
        s.tls_started();
        let pw = B64.encode("wrong");
        let steps = run(
            &mut s,
            &mut p,
            &["EHLO x", "AUTH LOGIN", "bWFtb3J1", &pw, "AUTH PLAIN", "AG1hbW9ydQBzM2NyZXQ=", "MAIL FROM:<a@b>", "RCPT TO:<t@au.com>", "DATA", "Message-ID: <m1@x>", "", "body", "."],
        );
        assert!(reply(&steps[0]).contains("AUTH PLAIN LOGIN") && !reply(&steps[0]).contains("STARTTLS"), "{steps:?}");
        assert!(reply(&steps[1]).starts_with("334 VXNlcm5hbWU6"), "{steps:?}");
        assert!(reply(&steps[3]).starts_with("535"), "{steps:?}");
        assert!(reply(&steps[4]).starts_with("334"), "{steps:?}");
        assert!(reply(&steps[5]).starts_with("235"), "{steps:?}");
        assert!(reply(&steps[12]).starts_with("250"), "{steps:?}");
        assert_eq!(p.stats().auth_failures, 1);
        assert_eq!(
            p.deliveries(),
            [Delivery { message_id: "m1@x".into(), domain: "au.com".into(), tls: true, user: Some("mamoru".into()) }]
        );
    }
}
