//! One SMTP session, sans-I/O: a line in, a step out. The server feeds it
//! lines (CRLF included) and does what the step says.

use crate::policy::{DotVerdict, Policy, RcptVerdict};

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
}

impl Session {
    pub fn new(hostname: &str) -> Self {
        Self { hostname: hostname.to_string(), ..Self::default() }
    }

    pub fn greeting(&self) -> String {
        format!("220 {} ESMTP mamoru-sink\r\n", self.hostname)
    }

    /// The domain the connection counts against, for [`Policy::closed`].
    pub fn bound(&self) -> Option<&str> {
        self.bound.as_deref()
    }

    pub fn line(&mut self, line: &[u8], policy: &mut Policy, now: f64) -> Step {
        if self.in_data {
            return self.data_line(line, policy, now);
        }
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        let upper = text.to_ascii_uppercase();
        let verb = upper.split_whitespace().next().unwrap_or("");
        match verb {
            "EHLO" => Step::Reply(format!("250-{}\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 52428800\r\n", self.hostname)),
            "HELO" => Step::Reply(format!("250 {}\r\n", self.hostname)),
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
}
