//! LMTP (RFC 2033) without I/O: bytes in, replies and requests out.
//!
//! Three pieces, each usable and tested on its own:
//! - [`parse_command`]: one command line (without its line ending) to a [`Command`].
//! - [`DataReader`]: the DATA body; dot-unstuffing, the `CRLF.CRLF`
//!   terminator (bare LF tolerated), the size limit.
//! - [`Session`]: the conversation. The server pushes the bytes it read with
//!   [`Session::push_input`] and asks [`Session::next_event`] what to do next:
//!   write a reply, ask the deliverer about a recipient, deliver a message, or
//!   read more. Pipelined commands are simply lines waiting in the buffer.
//!
//! The session never blocks and never looks at a clock; the server owns the
//! socket, the timeouts and the blocking calls into [`crate::Deliver`].

use crate::Outcome;

/// Longest command line accepted, line ending included: RFC 5321's 512 octets
/// (§4.5.3.1.4) plus room for the ESMTP parameters we announce (SIZE, BODY).
pub const MAX_COMMAND_LINE: usize = 512 + 128;

/// Syntax errors and unrecognised commands tolerated before the session is
/// closed, so a confused or hostile peer cannot keep a connection forever.
pub const MAX_ERRORS: u32 = 20;

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Lhlo(String),
    /// `address` is empty for the null sender `<>`.
    MailFrom { address: String, size: Option<u64>, body8bitmime: bool },
    RcptTo(String),
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    /// A verb we do not implement (HELO and EHLO included: LMTP uses LHLO).
    Unknown,
    /// A known verb with bad arguments; the reply says what is wrong.
    Syntax(SyntaxError),
}

/// What is wrong with a command's arguments. Each maps to one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntaxError {
    /// Not UTF-8, or a control character in the line.
    BadBytes,
    /// LHLO without a domain.
    LhloDomain,
    /// `FROM:<...>` / `TO:<...>` missing or malformed.
    Path,
    /// The null path `<>` as a recipient.
    NullRecipient,
    /// A parameter value that does not parse (`SIZE=abc`).
    ParamValue,
    /// A parameter we do not support (`BODY=BINARYMIME`, `NOTIFY=`, ...).
    UnsupportedParam,
    /// Arguments after a verb that takes none.
    UnexpectedArgs,
}

impl SyntaxError {
    fn reply(self) -> &'static str {
        match self {
            SyntaxError::BadBytes => "501 5.5.2 syntax error: invalid characters",
            SyntaxError::LhloDomain => "501 5.5.4 LHLO requires a domain",
            SyntaxError::Path => "501 5.5.4 syntax error in mailbox path",
            SyntaxError::NullRecipient => "501 5.1.3 null recipient not allowed",
            SyntaxError::ParamValue => "501 5.5.4 invalid parameter value",
            SyntaxError::UnsupportedParam => "555 5.5.4 unsupported parameter",
            SyntaxError::UnexpectedArgs => "501 5.5.4 this command takes no arguments",
        }
    }
}

/// Parses one command line. `line` may still carry its `\r\n` or `\n`.
pub fn parse_command(line: &[u8]) -> Command {
    let line = strip_line_ending(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Command::Syntax(SyntaxError::BadBytes);
    };
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Command::Syntax(SyntaxError::BadBytes);
    }
    let (verb, rest) = match line.find([' ', '\t']) {
        Some(i) => (&line[..i], line[i..].trim()),
        None => (line, ""),
    };
    let no_args = |cmd: Command| if rest.is_empty() { cmd } else { Command::Syntax(SyntaxError::UnexpectedArgs) };
    match verb.to_ascii_uppercase().as_str() {
        "LHLO" => match rest.split_whitespace().next() {
            Some(domain) => Command::Lhlo(domain.to_owned()),
            None => Command::Syntax(SyntaxError::LhloDomain),
        },
        "MAIL" => parse_mail(rest).unwrap_or_else(Command::Syntax),
        "RCPT" => parse_rcpt(rest).unwrap_or_else(Command::Syntax),
        "DATA" => no_args(Command::Data),
        "RSET" => no_args(Command::Rset),
        "QUIT" => no_args(Command::Quit),
        // NOOP and VRFY may carry an argument, which we ignore.
        "NOOP" => Command::Noop,
        "VRFY" => Command::Vrfy,
        _ => Command::Unknown,
    }
}

fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Strips a case-insensitive keyword such as `FROM:` and the optional space
/// some clients put after the colon.
fn strip_keyword<'a>(rest: &'a str, keyword: &str) -> Option<&'a str> {
    let head = rest.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword).then(|| rest[keyword.len()..].trim_start())
}

/// Splits `<path> params...` into the address inside the brackets and the
/// parameter text. A source route (`<@a,@b:user@c>`) is dropped, as RFC 5321
/// §4.1.1.3 allows.
fn split_path(s: &str) -> Result<(&str, &str), SyntaxError> {
    let inner = s.strip_prefix('<').ok_or(SyntaxError::Path)?;
    let end = inner.find('>').ok_or(SyntaxError::Path)?;
    let (mut addr, params) = (&inner[..end], &inner[end + 1..]);
    if !params.is_empty() && !params.starts_with([' ', '\t']) {
        return Err(SyntaxError::Path);
    }
    if addr.starts_with('@') {
        addr = addr.split_once(':').ok_or(SyntaxError::Path)?.1;
    }
    if addr.contains(['<', ' ', '\t']) {
        return Err(SyntaxError::Path);
    }
    Ok((addr, params.trim()))
}

fn parse_mail(rest: &str) -> Result<Command, SyntaxError> {
    let (address, params) = split_path(strip_keyword(rest, "FROM:").ok_or(SyntaxError::Path)?)?;
    let (mut size, mut body8bitmime) = (None, false);
    for param in params.split_whitespace() {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        if key.eq_ignore_ascii_case("SIZE") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(SyntaxError::ParamValue);
            }
            size = Some(value.parse().map_err(|_| SyntaxError::ParamValue)?);
        } else if key.eq_ignore_ascii_case("BODY") {
            if value.eq_ignore_ascii_case("8BITMIME") {
                body8bitmime = true;
            } else if value.eq_ignore_ascii_case("7BIT") {
                body8bitmime = false;
            } else {
                return Err(SyntaxError::UnsupportedParam);
            }
        } else {
            return Err(SyntaxError::UnsupportedParam);
        }
    }
    Ok(Command::MailFrom { address: address.to_owned(), size, body8bitmime })
}

fn parse_rcpt(rest: &str) -> Result<Command, SyntaxError> {
    let (address, params) = split_path(strip_keyword(rest, "TO:").ok_or(SyntaxError::Path)?)?;
    if address.is_empty() {
        return Err(SyntaxError::NullRecipient);
    }
    if !params.is_empty() {
        return Err(SyntaxError::UnsupportedParam);
    }
    Ok(Command::RcptTo(address.to_owned()))
}

// ---------------------------------------------------------------------------
// Command lines
// ---------------------------------------------------------------------------

/// One line taken from the input buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, line ending included.
    Complete(Vec<u8>),
    /// A line longer than the limit; its bytes were discarded up to and
    /// including its line ending.
    TooLong,
}

/// Splits buffered input into command lines without letting one line grow
/// without bound.
#[derive(Debug)]
pub struct LineReader {
    max: usize,
    /// Inside an overlong line whose end has not arrived yet.
    discarding: bool,
}

impl LineReader {
    pub fn new(max: usize) -> Self {
        Self { max, discarding: false }
    }

    /// Takes the next line from the front of `buf`, or `None` when `buf`
    /// holds no complete line yet (an overlong prefix is dropped meanwhile).
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> Option<Line> {
        match buf.iter().position(|&b| b == b'\n') {
            Some(lf) => {
                let line: Vec<u8> = buf.drain(..=lf).collect();
                if std::mem::take(&mut self.discarding) || line.len() > self.max {
                    Some(Line::TooLong)
                } else {
                    Some(Line::Complete(line))
                }
            }
            None => {
                if buf.len() > self.max {
                    self.discarding = true;
                    buf.clear();
                }
                None
            }
        }
    }
}

// ---------------------------------------------------------------------------
// DATA
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataState {
    /// At the start of a line (right after DATA, or after a line ending).
    LineStart,
    /// A line started with `.`.
    Dot,
    /// A line started with `.\r`.
    DotCr,
    /// Inside a line.
    Mid,
    /// Inside a line, just after a `\r`.
    Cr,
}

/// Progress of [`DataReader::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProgress {
    /// All input was consumed and the terminator has not been seen yet.
    NeedMore,
    /// The terminator ended at `input[consumed - 1]`; the rest of the input
    /// belongs to the next (pipelined) command.
    Done { consumed: usize },
}

/// The body of a finished DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataBody {
    /// Dot-unstuffed, every line ending normalised to CRLF.
    Complete(Vec<u8>),
    /// Over the limit; `size` is how large it was, the bytes are gone.
    TooBig { size: u64 },
}

/// Accumulates a DATA body: undoes dot-stuffing, finds the terminating
/// `CRLF.CRLF` across any read boundary, accepts bare LF as a line ending
/// (clients do send it) and normalises line endings to CRLF. Past the size
/// limit it keeps reading to the terminator but stops storing, so the
/// connection stays in step and can answer 552.
#[derive(Debug)]
pub struct DataReader {
    state: DataState,
    body: Vec<u8>,
    size: u64,
    max: u64,
    done: bool,
}

impl DataReader {
    pub fn new(max: u64) -> Self {
        Self { state: DataState::LineStart, body: Vec::new(), size: 0, max, done: false }
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.size <= self.max {
            self.body.extend_from_slice(bytes);
        } else if !self.body.is_empty() {
            self.body = Vec::new();
        }
    }

    /// Is the body already over the limit?
    pub fn too_big(&self) -> bool {
        self.size > self.max
    }

    /// Consumes input up to and including the terminator.
    pub fn feed(&mut self, input: &[u8]) -> DataProgress {
        if self.done {
            return DataProgress::Done { consumed: 0 };
        }
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            match self.state {
                DataState::LineStart => match b {
                    b'.' => self.state = DataState::Dot,
                    _ => self.mid(b),
                },
                DataState::Dot => match b {
                    b'\r' => self.state = DataState::DotCr,
                    b'\n' => return self.finish_at(i),
                    // Dot-stuffing: the leading dot is dropped, the rest kept.
                    _ => self.mid(b),
                },
                DataState::DotCr => match b {
                    b'\n' => return self.finish_at(i),
                    _ => {
                        self.state = DataState::Mid;
                        self.cr_then(b);
                    }
                },
                DataState::Mid => {
                    // Fast path: copy the run of ordinary bytes at once.
                    let start = i - 1;
                    let run = input[start..].iter().position(|&c| c == b'\r' || c == b'\n').unwrap_or(input.len() - start);
                    if run > 0 {
                        self.emit(&input[start..start + run]);
                        i = start + run;
                    } else {
                        self.mid(b);
                    }
                }
                DataState::Cr => self.cr_then(b),
            }
        }
        DataProgress::NeedMore
    }

    fn finish_at(&mut self, consumed: usize) -> DataProgress {
        self.done = true;
        DataProgress::Done { consumed }
    }

    /// A byte inside a line (or the first byte of a line that is not a dot).
    fn mid(&mut self, b: u8) {
        match b {
            b'\r' => self.state = DataState::Cr,
            b'\n' => {
                self.emit(b"\r\n");
                self.state = DataState::LineStart;
            }
            _ => {
                self.emit(&[b]);
                self.state = DataState::Mid;
            }
        }
    }

    /// The byte after a pending `\r`.
    fn cr_then(&mut self, b: u8) {
        match b {
            b'\n' => {
                self.emit(b"\r\n");
                self.state = DataState::LineStart;
            }
            // A bare CR is kept as it came; the next one may end the line.
            b'\r' => {
                self.emit(b"\r");
                self.state = DataState::Cr;
            }
            _ => {
                self.emit(&[b'\r', b]);
                self.state = DataState::Mid;
            }
        }
    }

    /// The body, once [`DataReader::feed`] returned `Done`.
    pub fn finish(self) -> DataBody {
        if self.too_big() { DataBody::TooBig { size: self.size } } else { DataBody::Complete(self.body) }
    }
}

// ---------------------------------------------------------------------------
// Session
// ---------------------------------------------------------------------------

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
        format!("220 {} LMTP ready\r\n", self.hostname)
    }

    /// The reply for a connection that was idle too long.
    pub fn timeout_reply(&self) -> String {
        format!("421 4.4.2 {} idle timeout, closing connection\r\n", self.hostname)
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
            Some("421 4.3.2 shutting down\r\n".to_owned())
        }
    }

    /// Answer to [`Event::CheckRecipient`].
    pub fn recipient_checked(&mut self, accepted: bool) -> String {
        let Some(Pending::Recipient(rcpt)) = self.pending.take() else {
            return "451 4.3.0 internal error: no recipient pending\r\n".to_owned();
        };
        if !accepted {
            return format!("550 5.1.1 <{rcpt}>: recipient unknown\r\n");
        }
        match &mut self.state {
            State::Mail(env) => {
                let reply = format!("250 2.1.5 <{rcpt}> OK\r\n");
                env.recipients.push(rcpt);
                reply
            }
            _ => "451 4.3.0 internal error: no transaction\r\n".to_owned(),
        }
    }

    /// Answer to [`Event::CheckRecipient`] when the check itself failed (the
    /// deliverer panicked): the recipient gets a temporary failure, so the
    /// MTA retries instead of bouncing.
    pub fn recipient_check_failed(&mut self) -> String {
        match self.pending.take() {
            Some(Pending::Recipient(rcpt)) => format!("451 4.3.0 <{rcpt}> temporary failure, try again later\r\n"),
            _ => "451 4.3.0 internal error: no recipient pending\r\n".to_owned(),
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
            return Event::Close("421 4.3.0 internal error\r\n".to_owned());
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
            Some(Line::TooLong) => {
                self.count_error().unwrap_or_else(|| Event::Reply("500 5.5.2 line too long\r\n".to_owned()))
            }
        }
    }

    fn count_error(&mut self) -> Option<Event> {
        self.errors += 1;
        (self.errors >= MAX_ERRORS).then(|| {
            self.state = State::Closed;
            Event::Close(format!("421 4.7.0 {} too many errors, closing connection\r\n", self.hostname))
        })
    }

    fn end_of_data(&mut self) -> Event {
        let State::Data(env, reader) = std::mem::replace(&mut self.state, State::Ready) else {
            return Event::Close("421 4.3.0 internal error\r\n".to_owned());
        };
        match reader.finish() {
            DataBody::Complete(message) => {
                self.pending = Some(Pending::Delivery(env.recipients.clone()));
                Event::Deliver(Transaction { sender: env.sender, recipients: env.recipients, message })
            }
            DataBody::TooBig { .. } => Event::Reply(
                env.recipients
                    .iter()
                    .map(|rcpt| format!("552 5.3.4 <{rcpt}> message size exceeds fixed limit\r\n"))
                    .collect(),
            ),
        }
    }

    /// Handles one command.
    fn command(&mut self, command: Command) -> Event {
        let reply = |s: &str| Event::Reply(format!("{s}\r\n"));
        if self.shutting_down && !self.in_transaction() && command != Command::Quit {
            self.state = State::Closed;
            return Event::Close("421 4.3.2 shutting down\r\n".to_owned());
        }
        match command {
            Command::Lhlo(_) => {
                self.state = State::Ready;
                Event::Reply(format!(
                    "250-{}\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SIZE {}\r\n",
                    self.hostname, self.limits.max_message_bytes
                ))
            }
            Command::MailFrom { address, size, .. } => match self.state {
                State::Greeting => reply("503 5.5.1 send LHLO first"),
                State::Mail(_) => reply("503 5.5.1 nested MAIL command"),
                _ if size.is_some_and(|s| s > self.limits.max_message_bytes) => {
                    reply("552 5.3.4 message size exceeds fixed limit")
                }
                _ => {
                    self.state = State::Mail(Envelope { sender: address, recipients: Vec::new() });
                    reply("250 2.1.0 OK")
                }
            },
            Command::RcptTo(address) => match &self.state {
                State::Mail(env) if env.recipients.len() >= self.limits.max_recipients => {
                    reply("452 4.5.3 too many recipients")
                }
                State::Mail(_) => {
                    self.pending = Some(Pending::Recipient(address.clone()));
                    Event::CheckRecipient(address)
                }
                _ => reply("503 5.5.1 need MAIL before RCPT"),
            },
            Command::Data => match std::mem::replace(&mut self.state, State::Closed) {
                State::Mail(env) if !env.recipients.is_empty() => {
                    self.state = State::Data(env, DataReader::new(self.limits.max_message_bytes));
                    reply("354 start mail input; end with <CRLF>.<CRLF>")
                }
                other => {
                    self.state = other;
                    reply("503 5.5.1 no valid recipients")
                }
            },
            Command::Rset => {
                if !matches!(self.state, State::Greeting) {
                    self.state = State::Ready;
                }
                reply("250 2.0.0 OK")
            }
            Command::Noop => reply("250 2.0.0 OK"),
            Command::Vrfy => reply("252 2.5.0 cannot VRFY user, but will accept message for delivery"),
            Command::Quit => {
                self.state = State::Closed;
                Event::Close(format!("221 2.0.0 {} closing connection\r\n", self.hostname))
            }
            Command::Unknown => self.count_error().unwrap_or_else(|| reply("500 5.5.1 command unrecognized")),
            Command::Syntax(e) => self.count_error().unwrap_or_else(|| reply(e.reply())),
        }
    }
}

/// The reply after DATA for one recipient. `Dropped` is a deliberate drop and
/// is acknowledged like a commit, so the MTA neither retries nor bounces.
pub fn delivery_reply(recipient: &str, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Stored | Outcome::Dropped(_) => format!("250 2.0.0 <{recipient}> OK\r\n"),
        Outcome::Transient(_) => format!("451 4.3.0 <{recipient}> temporary failure, try again later\r\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // --- parse_command ---------------------------------------------------

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(parse_command(b"lhlo client.example\r\n"), Command::Lhlo("client.example".into()));
        assert_eq!(parse_command(b"LhLo x"), Command::Lhlo("x".into()));
        assert_eq!(parse_command(b"data\r\n"), Command::Data);
        assert_eq!(parse_command(b"Rset\n"), Command::Rset);
        assert_eq!(parse_command(b"noop anything"), Command::Noop);
        assert_eq!(parse_command(b"QUIT"), Command::Quit);
        assert_eq!(parse_command(b"vrfy someone"), Command::Vrfy);
        assert_eq!(
            parse_command(b"mail from:<a@b.example>"),
            Command::MailFrom { address: "a@b.example".into(), size: None, body8bitmime: false }
        );
        assert_eq!(parse_command(b"rcpt to:<ans@mamoru.example>"), Command::RcptTo("ans@mamoru.example".into()));
    }

    #[test]
    fn unknown_and_helo() {
        assert_eq!(parse_command(b"HELO x"), Command::Unknown);
        assert_eq!(parse_command(b"EHLO x"), Command::Unknown);
        assert_eq!(parse_command(b"STARTTLS"), Command::Unknown);
        assert_eq!(parse_command(b""), Command::Unknown);
    }

    #[test]
    fn null_sender() {
        assert_eq!(
            parse_command(b"MAIL FROM:<>\r\n"),
            Command::MailFrom { address: String::new(), size: None, body8bitmime: false }
        );
        assert_eq!(parse_command(b"RCPT TO:<>"), Command::Syntax(SyntaxError::NullRecipient));
    }

    #[test]
    fn esmtp_params() {
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b> SIZE=1234 BODY=8BITMIME"),
            Command::MailFrom { address: "a@b".into(), size: Some(1234), body8bitmime: true }
        );
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b> body=7bit size=0"),
            Command::MailFrom { address: "a@b".into(), size: Some(0), body8bitmime: false }
        );
        assert_eq!(parse_command(b"MAIL FROM:<a@b> SIZE=abc"), Command::Syntax(SyntaxError::ParamValue));
        assert_eq!(parse_command(b"MAIL FROM:<a@b> SIZE="), Command::Syntax(SyntaxError::ParamValue));
        assert_eq!(parse_command(b"MAIL FROM:<a@b> SIZE=-1"), Command::Syntax(SyntaxError::ParamValue));
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b> SIZE=99999999999999999999999"),
            Command::Syntax(SyntaxError::ParamValue)
        );
        assert_eq!(parse_command(b"MAIL FROM:<a@b> BODY=BINARYMIME"), Command::Syntax(SyntaxError::UnsupportedParam));
        assert_eq!(parse_command(b"MAIL FROM:<a@b> SMTPUTF8"), Command::Syntax(SyntaxError::UnsupportedParam));
        assert_eq!(parse_command(b"RCPT TO:<a@b> NOTIFY=NEVER"), Command::Syntax(SyntaxError::UnsupportedParam));
    }

    #[test]
    fn path_forms() {
        let mail = |a: &str| Command::MailFrom { address: a.into(), size: None, body8bitmime: false };
        // A space after the colon is common enough to tolerate.
        assert_eq!(parse_command(b"MAIL FROM: <a@b>"), mail("a@b"));
        assert_eq!(parse_command(b"RCPT TO:<@relay.example:user@c.example>"), Command::RcptTo("user@c.example".into()));
        // docomo-style local parts are passed through untouched.
        assert_eq!(parse_command(b"RCPT TO:<taro..yamada.@docomo.ne.jp>"), Command::RcptTo("taro..yamada.@docomo.ne.jp".into()));
        assert_eq!(parse_command(b"RCPT TO:<Postmaster>"), Command::RcptTo("Postmaster".into()));
        for bad in [
            &b"MAIL FROM:a@b"[..],
            b"MAIL FROM:<a@b",
            b"MAIL FROM <a@b>",
            b"MAIL TO:<a@b>",
            b"MAIL FROM:<a@b>SIZE=1",
            b"MAIL FROM:<a b@c>",
            b"MAIL FROM:<<a@b>>",
            b"RCPT TO:",
            b"RCPT",
            b"RCPT TO:<@relay.example>",
        ] {
            assert_eq!(parse_command(bad), Command::Syntax(SyntaxError::Path), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn bad_bytes_and_args() {
        assert_eq!(parse_command(b"MAIL FROM:<a\xff@b>"), Command::Syntax(SyntaxError::BadBytes));
        assert_eq!(parse_command(b"MAIL FROM:<a\0@b>"), Command::Syntax(SyntaxError::BadBytes));
        assert_eq!(parse_command(b"NOOP\rRSET"), Command::Syntax(SyntaxError::BadBytes));
        assert_eq!(parse_command(b"LHLO"), Command::Syntax(SyntaxError::LhloDomain));
        assert_eq!(parse_command(b"LHLO   "), Command::Syntax(SyntaxError::LhloDomain));
        assert_eq!(parse_command(b"DATA now"), Command::Syntax(SyntaxError::UnexpectedArgs));
        assert_eq!(parse_command(b"QUIT please"), Command::Syntax(SyntaxError::UnexpectedArgs));
    }

    // --- LineReader --------------------------------------------------------

    #[test]
    fn lines_are_split_in_order() {
        let mut r = LineReader::new(MAX_COMMAND_LINE);
        let mut buf = b"NOOP\r\nRSET\nQUI".to_vec();
        assert_eq!(r.next_line(&mut buf), Some(Line::Complete(b"NOOP\r\n".to_vec())));
        assert_eq!(r.next_line(&mut buf), Some(Line::Complete(b"RSET\n".to_vec())));
        assert_eq!(r.next_line(&mut buf), None);
        buf.extend_from_slice(b"T\r\n");
        assert_eq!(r.next_line(&mut buf), Some(Line::Complete(b"QUIT\r\n".to_vec())));
        assert!(buf.is_empty());
    }

    #[test]
    fn overlong_lines_are_discarded_in_any_split() {
        // Exactly at the limit is fine, one more byte is not.
        let ok = [vec![b'N'; MAX_COMMAND_LINE - 2], b"\r\n".to_vec()].concat();
        let mut r = LineReader::new(MAX_COMMAND_LINE);
        let mut buf = ok.clone();
        assert_eq!(r.next_line(&mut buf), Some(Line::Complete(ok)));

        let long = [vec![b'X'; 5000], b"\r\nNOOP\r\n".to_vec()].concat();
        for chunk in [1, 7, 100, 640, 641, 4096, long.len()] {
            let mut r = LineReader::new(MAX_COMMAND_LINE);
            let mut buf = Vec::new();
            let mut got = Vec::new();
            for piece in long.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(line) = r.next_line(&mut buf) {
                    got.push(line);
                }
                assert!(buf.len() <= MAX_COMMAND_LINE + chunk, "buffer bounded");
            }
            assert_eq!(got, vec![Line::TooLong, Line::Complete(b"NOOP\r\n".to_vec())], "chunk {chunk}");
        }
    }

    // --- DataReader ---------------------------------------------------------

    /// Feeds `input` in the given pieces; returns the body and the bytes
    /// consumed in total.
    fn read_data(pieces: &[&[u8]], max: u64) -> (DataBody, usize) {
        let mut r = DataReader::new(max);
        let mut consumed = 0;
        for piece in pieces {
            match r.feed(piece) {
                DataProgress::NeedMore => consumed += piece.len(),
                DataProgress::Done { consumed: n } => {
                    return (r.finish(), consumed + n);
                }
            }
        }
        panic!("terminator not found in {pieces:?}");
    }

    #[test]
    fn dot_unstuffing_and_terminator() {
        let input = b"Subject: x\r\n\r\n..leading dot\r\n..\r\nend\r\n.\r\nQUIT\r\n";
        let (body, consumed) = read_data(&[input], 1000);
        assert_eq!(body, DataBody::Complete(b"Subject: x\r\n\r\n.leading dot\r\n.\r\nend\r\n".to_vec()));
        assert_eq!(&input[consumed..], b"QUIT\r\n");
    }

    #[test]
    fn empty_body() {
        let (body, consumed) = read_data(&[b".\r\nNOOP"], 1000);
        assert_eq!(body, DataBody::Complete(Vec::new()));
        assert_eq!(consumed, 3);
    }

    #[test]
    fn bare_lf_is_tolerated_and_normalised() {
        let (body, consumed) = read_data(&[b"a\nb\r\n..c\n.\nrest"], 1000);
        assert_eq!(body, DataBody::Complete(b"a\r\nb\r\n.c\r\n".to_vec()));
        assert_eq!(consumed, 11);
        let (body, _) = read_data(&[b"a\r\n.\n"], 1000);
        assert_eq!(body, DataBody::Complete(b"a\r\n".to_vec()));
    }

    #[test]
    fn dots_that_do_not_terminate() {
        // A dot in the middle of a line, a dot line with text, a bare CR.
        let (body, _) = read_data(&[b"a.b\r\n.x\r\n. \r\nc\rd\r\r\n.\r\n"], 1000);
        assert_eq!(body, DataBody::Complete(b"a.b\r\nx\r\n \r\nc\rd\r\r\n".to_vec()));
        // `.\r` followed by something other than LF is an ordinary line.
        let (body, _) = read_data(&[b".\rz\r\n.\r\n"], 1000);
        assert_eq!(body, DataBody::Complete(b"\rz\r\n".to_vec()));
        // CRLF . CRLF must be at a line start: "x.\r\n" is not the end.
        let (body, _) = read_data(&[b"x.\r\n.\r\n"], 1000);
        assert_eq!(body, DataBody::Complete(b"x.\r\n".to_vec()));
    }

    #[test]
    fn terminator_split_at_every_byte_boundary() {
        let input: &[u8] = b"From: a@b\r\n\r\n..x\r\nline\nend.\r\n.\r\nMAIL FROM:<>\r\n";
        let (expected, expected_consumed) = read_data(&[input], 1000);
        assert_eq!(expected, DataBody::Complete(b"From: a@b\r\n\r\n.x\r\nline\r\nend.\r\n".to_vec()));
        for split in 0..=input.len() {
            let (a, b) = input.split_at(split);
            assert_eq!(read_data(&[a, b], 1000), (expected.clone(), expected_consumed), "split at {split}");
        }
        for first in 0..=input.len() {
            for second in first..=input.len() {
                let pieces = [&input[..first], &input[first..second], &input[second..]];
                assert_eq!(read_data(&pieces, 1000), (expected.clone(), expected_consumed), "{first}/{second}");
            }
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(read_data(&bytes, 1000), (expected, expected_consumed));
    }

    #[test]
    fn size_limit_keeps_reading_to_the_end() {
        let body = b"12345\r\n"; // 7 bytes once stored
        assert_eq!(read_data(&[b"12345\r\n.\r\n"], 7).0, DataBody::Complete(body.to_vec()));
        let (result, consumed) = read_data(&[b"12345\r\n", b"6789\r\n.\r\nNOOP\r\n"], 7);
        assert_eq!(result, DataBody::TooBig { size: 13 });
        assert_eq!(consumed, 16);
        // The limit counts unstuffed bytes: the stuffed dot does not count.
        assert_eq!(read_data(&[b"..1234\r\n.\r\n"], 7).0, DataBody::Complete(b".1234\r\n".to_vec()));
    }

    #[test]
    fn feed_after_done_consumes_nothing() {
        let mut r = DataReader::new(100);
        assert_eq!(r.feed(b".\r\n"), DataProgress::Done { consumed: 3 });
        assert_eq!(r.feed(b"more"), DataProgress::Done { consumed: 0 });
    }

    // --- Session ------------------------------------------------------------

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
    fn dropped_is_acknowledged() {
        assert_eq!(delivery_reply("a@m", &Outcome::Dropped("junk".into())), "250 2.0.0 <a@m> OK\r\n");
        assert_eq!(delivery_reply("a@m", &Outcome::Stored), "250 2.0.0 <a@m> OK\r\n");
    }
}
