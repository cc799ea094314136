//! The LMTP conversation without I/O: bytes in, replies and requests out.
//!
//! The server pushes the bytes it read with [`Session::push_input`] and asks
//! [`Session::next_event`] what to do next: write a reply, ask the deliverer
//! about a recipient, deliver a message, or read more. Pipelined commands
//! are simply lines waiting in the buffer. Lines are cut and parsed by
//! [`super::command`], DATA bodies read by [`super::data`].
//!
//! The session never blocks and never looks at a clock; the server owns the
//! socket, the timeouts and the blocking calls into [`crate::Deliver`].

use std::borrow::Cow;
use std::fmt;

use super::command::{Command, Line, LineReader, MAX_COMMAND_LINE, SyntaxError, parse_command};
use super::data::{DataBody, DataProgress, DataReader};
use crate::Outcome;

/// Syntax errors and unrecognised commands tolerated before the session is
/// closed, so a confused or hostile peer cannot keep a connection forever.
pub const MAX_ERRORS: u32 = 20;

/// Limits the session enforces and announces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: u64,
    pub max_recipients: usize,
}

/// A complete message and its envelope, ready for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Without brackets; empty for the null sender.
    pub sender: String,
    /// Accepted recipients, in RCPT order, duplicates kept: each one gets its
    /// own reply (RFC 2033 §4.2).
    pub recipients: Vec<String>,
    pub message: Vec<u8>,
}

/// What the server should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Send this text (one or more complete reply lines). The server may
    /// hold replies until it needs input, which is what PIPELINING wants.
    Reply(String),
    /// Ask [`crate::Deliver::accepts_recipient`], then answer with
    /// [`Session::recipient_checked`] before calling `next_event` again.
    CheckRecipient(String),
    /// Deliver to each recipient in order, then answer with
    /// [`Session::delivered`] before calling `next_event` again.
    Deliver(Transaction),
    /// Every buffered byte is used: flush replies and read more.
    NeedInput,
    /// Send this final reply and close the connection.
    Close(String),
}

/// An RFC 3463 enhanced status code, `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Status(u8, u16, u16);

/// One single-line reply: the code, the enhanced status code we announce
/// (ENHANCEDSTATUSCODES; the greeting and 354 carry none) and the text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    code: u16,
    status: Option<Status>,
    text: Cow<'static, str>,
}

impl Reply {
    const fn fixed(code: u16, status: Status, text: &'static str) -> Self {
        Self { code, status: Some(status), text: Cow::Borrowed(text) }
    }

    fn new(code: u16, status: Option<Status>, text: String) -> Self {
        Self { code, status, text: Cow::Owned(text) }
    }

    /// The reply for one recipient: its address in brackets, then `text`.
    fn recipient(code: u16, status: Status, rcpt: &str, text: &str) -> Self {
        Self::new(code, Some(status), format!("<{rcpt}> {text}"))
    }

    fn event(self) -> Event {
        Event::Reply(self.to_string())
    }

    fn close(self) -> Event {
        Event::Close(self.to_string())
    }
}

/// The wire form, line ending included.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(Status(class, subject, detail)) => {
                write!(f, "{} {class}.{subject}.{detail} {}\r\n", self.code, self.text)
            }
            None => write!(f, "{} {}\r\n", self.code, self.text),
        }
    }
}

const OK: Reply = Reply::fixed(250, Status(2, 0, 0), "OK");
const MAIL_OK: Reply = Reply::fixed(250, Status(2, 1, 0), "OK");
const VRFY: Reply = Reply::fixed(252, Status(2, 5, 0), "cannot VRFY user, but will accept message for delivery");
const START_DATA: Reply =
    Reply { code: 354, status: None, text: Cow::Borrowed("start mail input; end with <CRLF>.<CRLF>") };
const NEED_LHLO: Reply = Reply::fixed(503, Status(5, 5, 1), "send LHLO first");
const NESTED_MAIL: Reply = Reply::fixed(503, Status(5, 5, 1), "nested MAIL command");
const NEED_MAIL: Reply = Reply::fixed(503, Status(5, 5, 1), "need MAIL before RCPT");
const NO_RECIPIENTS: Reply = Reply::fixed(503, Status(5, 5, 1), "no valid recipients");
const TOO_MANY_RECIPIENTS: Reply = Reply::fixed(452, Status(4, 5, 3), "too many recipients");
const TOO_BIG: &str = "message size exceeds fixed limit";
const TOO_BIG_STATUS: Status = Status(5, 3, 4);
const UNRECOGNIZED: Reply = Reply::fixed(500, Status(5, 5, 1), "command unrecognized");
const LINE_TOO_LONG: Reply = Reply::fixed(500, Status(5, 5, 2), "line too long");
const SHUTTING_DOWN: Reply = Reply::fixed(421, Status(4, 3, 2), "shutting down");
const INTERNAL_ERROR: Reply = Reply::fixed(421, Status(4, 3, 0), "internal error");
const NO_RECIPIENT_PENDING: Reply = Reply::fixed(451, Status(4, 3, 0), "internal error: no recipient pending");
const NO_TRANSACTION: Reply = Reply::fixed(451, Status(4, 3, 0), "internal error: no transaction");
const TEMPORARY: (u16, Status, &str) = (451, Status(4, 3, 0), "temporary failure, try again later");

/// The reply to a command whose arguments are wrong.
fn syntax_reply(error: SyntaxError) -> Reply {
    let (code, status, text) = match error {
        SyntaxError::BadBytes => (501, Status(5, 5, 2), "syntax error: invalid characters"),
        SyntaxError::LhloDomain => (501, Status(5, 5, 4), "LHLO requires a domain"),
        SyntaxError::Path => (501, Status(5, 5, 4), "syntax error in mailbox path"),
        SyntaxError::NullRecipient => (501, Status(5, 1, 3), "null recipient not allowed"),
        SyntaxError::ParamValue => (501, Status(5, 5, 4), "invalid parameter value"),
        SyntaxError::UnsupportedParam => (555, Status(5, 5, 4), "unsupported parameter"),
        SyntaxError::UnexpectedArgs => (501, Status(5, 5, 4), "this command takes no arguments"),
    };
    Reply::fixed(code, status, text)
}

fn temporary_failure(rcpt: &str) -> Reply {
    let (code, status, text) = TEMPORARY;
    Reply::recipient(code, status, rcpt, text)
}

#[derive(Debug)]
struct Envelope {
    sender: String,
    recipients: Vec<String>,
}

#[derive(Debug)]
enum State {
    /// Before LHLO.
    Greeting,
    /// After LHLO, no transaction.
    Ready,
    /// After MAIL (and maybe RCPTs).
    Mail(Envelope),
    /// After a 354.
    Data(Envelope, DataReader),
    Closed,
}

#[derive(Debug)]
enum Pending {
    Recipient(String),
    Delivery(Vec<String>),
}

/// One LMTP conversation, from the greeting to QUIT.
#[derive(Debug)]
pub struct Session {
    hostname: String,
    limits: Limits,
    state: State,
    pending: Option<Pending>,
    input: Vec<u8>,
    lines: LineReader,
    errors: u32,
    shutting_down: bool,
}

impl Session {
    pub fn new(hostname: impl Into<String>, limits: Limits) -> Self {
        Self {
            hostname: hostname.into(),
            limits,
            state: State::Greeting,
            pending: None,
            input: Vec::new(),
            lines: LineReader::new(MAX_COMMAND_LINE),
            errors: 0,
            shutting_down: false,
        }
    }

    /// The 220 banner, sent once on connect.
    pub fn greeting(&self) -> String {
        Reply::new(220, None, format!("{} LMTP ready", self.hostname)).to_string()
    }

    /// The reply for a connection that was idle too long.
    pub fn timeout_reply(&self) -> String {
        Reply::new(421, Some(Status(4, 4, 2)), format!("{} idle timeout, closing connection", self.hostname))
            .to_string()
    }

    /// Bytes read from the client.
    pub fn push_input(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// Is a mail transaction under way (MAIL given, DATA being read, or a
    /// delivery in progress)? Shutdown waits for it.
    pub fn in_transaction(&self) -> bool {
        self.pending.is_some() || matches!(self.state, State::Mail(_) | State::Data(..))
    }

    /// Is the session reading a DATA body?
    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data(..))
    }

    /// The server is stopping. Returns the final reply when the session is
    /// idle and should be closed now; otherwise the transaction in flight
    /// runs to its end and the next command after it gets 421.
    pub fn shutdown(&mut self) -> Option<String> {
        self.shutting_down = true;
        if self.in_transaction() || matches!(self.state, State::Closed) {
            None
        } else {
            self.state = State::Closed;
            Some(SHUTTING_DOWN.to_string())
        }
    }

    /// Answer to [`Event::CheckRecipient`].
    pub fn recipient_checked(&mut self, accepted: bool) -> String {
        let Some(Pending::Recipient(rcpt)) = self.pending.take() else {
            return NO_RECIPIENT_PENDING.to_string();
        };
        if !accepted {
            return Reply::new(550, Some(Status(5, 1, 1)), format!("<{rcpt}>: recipient unknown")).to_string();
        }
        match &mut self.state {
            State::Mail(env) => {
                let reply = Reply::recipient(250, Status(2, 1, 5), &rcpt, "OK").to_string();
                env.recipients.push(rcpt);
                reply
            }
            _ => NO_TRANSACTION.to_string(),
        }
    }

    /// Answer to [`Event::CheckRecipient`] when the check itself failed (the
    /// deliverer panicked): the recipient gets a temporary failure, so the
    /// MTA retries instead of bouncing.
    pub fn recipient_check_failed(&mut self) -> String {
        match self.pending.take() {
            Some(Pending::Recipient(rcpt)) => temporary_failure(&rcpt).to_string(),
            _ => NO_RECIPIENT_PENDING.to_string(),
        }
    }

    /// Answer to [`Event::Deliver`]: one outcome per recipient, in order.
    /// Returns one reply line per recipient. A missing outcome (the
    /// deliverer failed before answering) counts as transient.
    pub fn delivered(&mut self, outcomes: &[Outcome]) -> String {
        let Some(Pending::Delivery(recipients)) = self.pending.take() else {
            return String::new();
        };
        let transient = Outcome::Transient("no outcome".to_owned());
        recipients
            .iter()
            .enumerate()
            .map(|(i, rcpt)| delivery_reply(rcpt, outcomes.get(i).unwrap_or(&transient)))
            .collect()
    }

    /// Works through buffered input until there is something to do.
    pub fn next_event(&mut self) -> Event {
        if self.pending.is_some() {
            // The server skipped an answer; closing is the only safe move.
            self.state = State::Closed;
            return INTERNAL_ERROR.close();
        }
        match &mut self.state {
            State::Closed => return Event::Close(String::new()),
            State::Data(_, reader) => {
                return match reader.feed(&self.input) {
                    DataProgress::NeedMore => {
                        self.input.clear();
                        Event::NeedInput
                    }
                    DataProgress::Done { consumed } => {
                        self.input.drain(..consumed);
                        self.end_of_data()
                    }
                };
            }
            _ => {}
        }
        match self.lines.next_line(&mut self.input) {
            None => Event::NeedInput,
            Some(Line::Complete(line)) => self.command(parse_command(&line)),
            Some(Line::TooLong) => self.error(LINE_TOO_LONG),
        }
    }

    /// Counts a bad command: its reply, or the closing 421 once the peer
    /// has made [`MAX_ERRORS`] of them.
    fn error(&mut self, reply: Reply) -> Event {
        self.errors += 1;
        if self.errors < MAX_ERRORS {
            return reply.event();
        }
        self.state = State::Closed;
        Reply::new(421, Some(Status(4, 7, 0)), format!("{} too many errors, closing connection", self.hostname)).close()
    }

    fn end_of_data(&mut self) -> Event {
        let State::Data(env, reader) = std::mem::replace(&mut self.state, State::Ready) else {
            return INTERNAL_ERROR.close();
        };
        match reader.finish() {
            DataBody::Complete(message) => {
                self.pending = Some(Pending::Delivery(env.recipients.clone()));
                Event::Deliver(Transaction { sender: env.sender, recipients: env.recipients, message })
            }
            DataBody::TooBig { .. } => Event::Reply(
                env.recipients.iter().map(|rcpt| Reply::recipient(552, TOO_BIG_STATUS, rcpt, TOO_BIG).to_string()).collect(),
            ),
        }
    }

    /// The multi-line answer to LHLO: our name, then the extensions.
    fn lhlo_reply(&self) -> String {
        format!(
            "250-{}\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SIZE {}\r\n",
            self.hostname, self.limits.max_message_bytes
        )
    }

    /// Handles one command.
    fn command(&mut self, command: Command) -> Event {
        if self.shutting_down && !self.in_transaction() && command != Command::Quit {
            self.state = State::Closed;
            return SHUTTING_DOWN.close();
        }
        match command {
            Command::Lhlo(_) => {
                self.state = State::Ready;
                Event::Reply(self.lhlo_reply())
            }
            Command::MailFrom { address, size, .. } => match self.state {
                State::Greeting => NEED_LHLO.event(),
                State::Mail(_) => NESTED_MAIL.event(),
                _ if size.is_some_and(|s| s > self.limits.max_message_bytes) => {
                    Reply::fixed(552, TOO_BIG_STATUS, TOO_BIG).event()
                }
                _ => {
                    self.state = State::Mail(Envelope { sender: address, recipients: Vec::new() });
                    MAIL_OK.event()
                }
            },
            Command::RcptTo(address) => match &self.state {
                State::Mail(env) if env.recipients.len() >= self.limits.max_recipients => TOO_MANY_RECIPIENTS.event(),
                State::Mail(_) => {
                    self.pending = Some(Pending::Recipient(address.clone()));
                    Event::CheckRecipient(address)
                }
                _ => NEED_MAIL.event(),
            },
            Command::Data => match std::mem::replace(&mut self.state, State::Closed) {
                State::Mail(env) if !env.recipients.is_empty() => {
                    self.state = State::Data(env, DataReader::new(self.limits.max_message_bytes));
                    START_DATA.event()
                }
                other => {
                    self.state = other;
                    NO_RECIPIENTS.event()
                }
            },
            Command::Rset => {
                if !matches!(self.state, State::Greeting) {
                    self.state = State::Ready;
                }
                OK.event()
            }
            Command::Noop => OK.event(),
            Command::Vrfy => VRFY.event(),
            Command::Quit => {
                self.state = State::Closed;
                Reply::new(221, Some(Status(2, 0, 0)), format!("{} closing connection", self.hostname)).close()
            }
            Command::Unknown => self.error(UNRECOGNIZED),
            Command::Syntax(e) => self.error(syntax_reply(e)),
        }
    }
}

/// The reply after DATA for one recipient. `Dropped` is a deliberate drop and
/// is acknowledged like a commit, so the MTA neither retries nor bounces.
pub fn delivery_reply(recipient: &str, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Stored | Outcome::Dropped(_) => Reply::recipient(250, Status(2, 0, 0), recipient, "OK").to_string(),
        Outcome::Transient(_) => temporary_failure(recipient).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a session over `input` with a recipient check and a delivery
    /// function; returns the whole transcript the server would have sent.
    struct Harness {
        session: Session,
        out: String,
        delivered: Vec<Transaction>,
        closed: bool,
    }

    impl Harness {
        fn new(limits: Limits) -> Self {
            let session = Session::new("lmtp.test", limits);
            let out = session.greeting();
            Self { session, out, delivered: Vec::new(), closed: false }
        }

        fn default() -> Self {
            Self::new(Limits { max_message_bytes: 100, max_recipients: 3 })
        }

        /// Recipients whose local part starts with "no" are unknown; those
        /// starting with "tmp" fail transiently.
        fn send(&mut self, input: &[u8]) -> String {
            let start = self.out.len();
            self.session.push_input(input);
            loop {
                match self.session.next_event() {
                    Event::Reply(r) => self.out.push_str(&r),
                    Event::CheckRecipient(rcpt) => {
                        let r = self.session.recipient_checked(!rcpt.starts_with("no"));
                        self.out.push_str(&r);
                    }
                    Event::Deliver(t) => {
                        let outcomes: Vec<Outcome> = t
                            .recipients
                            .iter()
                            .map(|r| if r.starts_with("tmp") { Outcome::Transient("t".into()) } else { Outcome::Stored })
                            .collect();
                        self.delivered.push(t);
                        let r = self.session.delivered(&outcomes);
                        self.out.push_str(&r);
                    }
                    Event::NeedInput => break,
                    Event::Close(r) => {
                        self.out.push_str(&r);
                        self.closed = true;
                        break;
                    }
                }
            }
            self.out[start..].to_owned()
        }
    }

    fn codes(transcript: &str) -> Vec<&str> {
        transcript.lines().map(|l| &l[..3]).collect()
    }

    #[test]
    fn full_transaction_with_per_recipient_replies() {
        let mut h = Harness::default();
        assert_eq!(h.out, "220 lmtp.test LMTP ready\r\n");
        let lhlo = h.send(b"LHLO client\r\n");
        assert_eq!(
            lhlo,
            "250-lmtp.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SIZE 100\r\n"
        );
        assert_eq!(h.send(b"MAIL FROM:<a@b.example>\r\n"), "250 2.1.0 OK\r\n");
        assert_eq!(h.send(b"RCPT TO:<ok@m.example>\r\n"), "250 2.1.5 <ok@m.example> OK\r\n");
        assert_eq!(h.send(b"RCPT TO:<no@m.example>\r\n"), "550 5.1.1 <no@m.example>: recipient unknown\r\n");
        assert_eq!(h.send(b"RCPT TO:<tmp@m.example>\r\n"), "250 2.1.5 <tmp@m.example> OK\r\n");
        assert!(h.session.in_transaction());
        assert!(h.send(b"DATA\r\n").starts_with("354 "));
        assert!(h.session.in_data());
        assert_eq!(h.send(b"Subject: hi\r\n\r\nbody\r\n"), "");
        assert_eq!(
            h.send(b".\r\n"),
            "250 2.0.0 <ok@m.example> OK\r\n451 4.3.0 <tmp@m.example> temporary failure, try again later\r\n"
        );
        assert!(!h.session.in_transaction());
        assert_eq!(
            h.delivered,
            vec![Transaction {
                sender: "a@b.example".into(),
                recipients: vec!["ok@m.example".into(), "tmp@m.example".into()],
                message: b"Subject: hi\r\n\r\nbody\r\n".to_vec(),
            }]
        );
        assert_eq!(h.send(b"QUIT\r\n"), "221 2.0.0 lmtp.test closing connection\r\n");
        assert!(h.closed);
    }

    #[test]
    fn pipelined_commands_in_one_read() {
        let mut h = Harness::default();
        let out = h.send(
            b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@m>\r\nRCPT TO:<no@m>\r\nRCPT TO:<b@m>\r\nDATA\r\nx\r\n.\r\nRSET\r\nQUIT\r\n",
        );
        assert_eq!(
            codes(&out),
            // LHLO's five lines, MAIL, three RCPTs, 354, two deliveries, RSET, QUIT.
            ["250", "250", "250", "250", "250", "250", "250", "550", "250", "354", "250", "250", "250", "221"]
        );
        assert_eq!(h.delivered[0].sender, "");
        assert_eq!(h.delivered[0].recipients, ["a@m", "b@m"]);
        assert!(h.closed);
    }

    #[test]
    fn pipelined_input_split_at_every_byte() {
        let input: &[u8] = b"LHLO c\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a@m>\r\nDATA\r\n..dot\r\n.\r\nQUIT\r\n";
        let mut whole = Harness::default();
        whole.send(input);
        for split in 0..=input.len() {
            let mut h = Harness::default();
            h.send(&input[..split]);
            h.send(&input[split..]);
            assert_eq!(h.out, whole.out, "split at {split}");
            assert_eq!(h.delivered, whole.delivered);
        }
        assert_eq!(whole.delivered[0].message, b".dot\r\n");
    }

    #[test]
    fn order_errors() {
        let mut h = Harness::default();
        assert_eq!(h.send(b"MAIL FROM:<a@b>\r\n"), "503 5.5.1 send LHLO first\r\n");
        assert_eq!(h.send(b"RCPT TO:<a@b>\r\n"), "503 5.5.1 need MAIL before RCPT\r\n");
        assert_eq!(h.send(b"DATA\r\n"), "503 5.5.1 no valid recipients\r\n");
        h.send(b"LHLO c\r\n");
        assert_eq!(h.send(b"DATA\r\n"), "503 5.5.1 no valid recipients\r\n");
        h.send(b"MAIL FROM:<a@b>\r\n");
        assert_eq!(h.send(b"MAIL FROM:<a@b>\r\n"), "503 5.5.1 nested MAIL command\r\n");
        h.send(b"RCPT TO:<no@m>\r\n");
        assert_eq!(h.send(b"DATA\r\n"), "503 5.5.1 no valid recipients\r\n");
        // RSET ends the transaction; RCPT needs a new MAIL.
        assert_eq!(h.send(b"RSET\r\n"), "250 2.0.0 OK\r\n");
        assert_eq!(h.send(b"RCPT TO:<a@m>\r\n"), "503 5.5.1 need MAIL before RCPT\r\n");
        assert!(h.send(b"VRFY x\r\n").starts_with("252 2.5.0"));
        assert_eq!(h.send(b"HELO x\r\n"), "500 5.5.1 command unrecognized\r\n");
        assert_eq!(h.send(b"MAIL FROM:<a@b> SIZE=x\r\n"), "501 5.5.4 invalid parameter value\r\n");
        assert!(!h.closed);
    }

    #[test]
    fn size_limits() {
        let mut h = Harness::default();
        h.send(b"LHLO c\r\n");
        assert_eq!(h.send(b"MAIL FROM:<a@b> SIZE=101\r\n"), "552 5.3.4 message size exceeds fixed limit\r\n");
        assert_eq!(h.send(b"MAIL FROM:<a@b> SIZE=100\r\n"), "250 2.1.0 OK\r\n");
        h.send(b"RCPT TO:<a@m>\r\nRCPT TO:<b@m>\r\nDATA\r\n");
        let big = [vec![b'x'; 200], b"\r\n.\r\nNOOP\r\n".to_vec()].concat();
        assert_eq!(
            h.send(&big),
            "552 5.3.4 <a@m> message size exceeds fixed limit\r\n552 5.3.4 <b@m> message size exceeds fixed limit\r\n250 2.0.0 OK\r\n"
        );
        assert!(h.delivered.is_empty());
        assert!(!h.session.in_transaction());
    }

    #[test]
    fn too_many_recipients() {
        let mut h = Harness::default();
        h.send(b"LHLO c\r\nMAIL FROM:<>\r\n");
        let out = h.send(b"RCPT TO:<a@m>\r\nRCPT TO:<b@m>\r\nRCPT TO:<c@m>\r\nRCPT TO:<d@m>\r\n");
        assert_eq!(codes(&out), ["250", "250", "250", "452"]);
        assert!(out.ends_with("452 4.5.3 too many recipients\r\n"));
        // Rejected recipients do not count against the limit.
        let mut h = Harness::default();
        h.send(b"LHLO c\r\nMAIL FROM:<>\r\n");
        let out = h.send(b"RCPT TO:<no1@m>\r\nRCPT TO:<no2@m>\r\nRCPT TO:<a@m>\r\nRCPT TO:<b@m>\r\nRCPT TO:<c@m>\r\n");
        assert_eq!(codes(&out), ["550", "550", "250", "250", "250"]);
    }

    #[test]
    fn overlong_line_gets_500_and_the_session_continues() {
        let mut h = Harness::default();
        let long = [b"MAIL FROM:<".to_vec(), vec![b'a'; 1000], b"@b>\r\nNOOP\r\n".to_vec()].concat();
        assert_eq!(h.send(&long), "500 5.5.2 line too long\r\n250 2.0.0 OK\r\n");
    }

    #[test]
    fn too_many_errors_close_the_session() {
        let mut h = Harness::default();
        let out = h.send(&b"BOGUS\r\n".repeat(MAX_ERRORS as usize + 5));
        assert_eq!(out.lines().count(), MAX_ERRORS as usize);
        assert!(out.ends_with("421 4.7.0 lmtp.test too many errors, closing connection\r\n"));
        assert!(h.closed);
    }

    #[test]
    fn shutdown_when_idle_closes_at_once() {
        let mut h = Harness::default();
        h.send(b"LHLO c\r\n");
        assert_eq!(h.session.shutdown().as_deref(), Some("421 4.3.2 shutting down\r\n"));
        assert_eq!(h.session.next_event(), Event::Close(String::new()));
    }

    #[test]
    fn shutdown_lets_the_transaction_finish() {
        let mut h = Harness::default();
        h.send(b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@m>\r\nDATA\r\npart");
        assert_eq!(h.session.shutdown(), None);
        let out = h.send(b" of the body\r\n.\r\nNOOP\r\n");
        assert_eq!(out, "250 2.0.0 <a@m> OK\r\n421 4.3.2 shutting down\r\n");
        assert!(h.closed);
        assert_eq!(h.delivered[0].message, b"part of the body\r\n");
        // QUIT right after the transaction still gets its 221.
        let mut h = Harness::default();
        h.send(b"LHLO c\r\nMAIL FROM:<>\r\n");
        assert_eq!(h.session.shutdown(), None);
        let out = h.send(b"RCPT TO:<a@m>\r\nRSET\r\nQUIT\r\n");
        assert_eq!(codes(&out), ["250", "250", "221"]);
    }

    #[test]
    fn missing_outcomes_are_transient() {
        let mut s = Session::new("h", Limits { max_message_bytes: 100, max_recipients: 10 });
        s.push_input(b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@m>\r\n");
        assert!(matches!(s.next_event(), Event::Reply(_)));
        assert!(matches!(s.next_event(), Event::Reply(_)));
        assert_eq!(s.next_event(), Event::CheckRecipient("a@m".into()));
        s.recipient_checked(true);
        s.push_input(b"DATA\r\n.\r\n");
        assert!(matches!(s.next_event(), Event::Reply(_)));
        assert!(matches!(s.next_event(), Event::Deliver(_)));
        assert_eq!(s.delivered(&[]), "451 4.3.0 <a@m> temporary failure, try again later\r\n");
    }

    #[test]
    fn skipping_an_answer_closes() {
        let mut s = Session::new("h", Limits { max_message_bytes: 100, max_recipients: 10 });
        s.push_input(b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@m>\r\n");
        s.next_event();
        s.next_event();
        assert_eq!(s.next_event(), Event::CheckRecipient("a@m".into()));
        assert!(matches!(s.next_event(), Event::Close(r) if r.starts_with("421")));
    }

    #[test]
    fn failed_recipient_check_is_temporary() {
        let mut s = Session::new("h", Limits { max_message_bytes: 100, max_recipients: 10 });
        s.push_input(b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@m>\r\nDATA\r\n");
        s.next_event();
        s.next_event();
        assert_eq!(s.next_event(), Event::CheckRecipient("a@m".into()));
        assert_eq!(s.recipient_check_failed(), "451 4.3.0 <a@m> temporary failure, try again later\r\n");
        assert_eq!(s.next_event(), Event::Reply("503 5.5.1 no valid recipients\r\n".into()));
    }

    #[test]
    fn enhanced_codes_agree_with_reply_codes() {
        let syntax = [
            SyntaxError::BadBytes,
            SyntaxError::LhloDomain,
            SyntaxError::Path,
            SyntaxError::NullRecipient,
            SyntaxError::ParamValue,
            SyntaxError::UnsupportedParam,
            SyntaxError::UnexpectedArgs,
        ]
        .map(syntax_reply);
        let fixed = [
            OK,
            MAIL_OK,
            VRFY,
            NEED_LHLO,
            NESTED_MAIL,
            NEED_MAIL,
            NO_RECIPIENTS,
            TOO_MANY_RECIPIENTS,
            UNRECOGNIZED,
            LINE_TOO_LONG,
            SHUTTING_DOWN,
            INTERNAL_ERROR,
            NO_RECIPIENT_PENDING,
            NO_TRANSACTION,
            temporary_failure("a@m"),
        ];
        for reply in syntax.iter().chain(&fixed) {
            let Some(Status(class, ..)) = reply.status else { panic!("{reply} has no enhanced code") };
            assert_eq!(u16::from(class), reply.code / 100, "{reply}");
        }
        assert_eq!(syntax_reply(SyntaxError::UnsupportedParam).to_string(), "555 5.5.4 unsupported parameter\r\n");
        assert_eq!(START_DATA.to_string(), "354 start mail input; end with <CRLF>.<CRLF>\r\n");
    }

    #[test]
    fn dropped_is_acknowledged() {
        assert_eq!(delivery_reply("a@m", &Outcome::Dropped("junk".into())), "250 2.0.0 <a@m> OK\r\n");
        assert_eq!(delivery_reply("a@m", &Outcome::Stored), "250 2.0.0 <a@m> OK\r\n");
    }
}
