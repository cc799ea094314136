//! LMTP command lines without I/O: bytes in, a typed [`Command`] out.
//!
//! - [`LineReader`] takes command lines off the front of the input buffer
//!   and never lets one grow past [`MAX_COMMAND_LINE`].
//! - [`parse_command`] turns one line into a [`Command`]; bad arguments are a
//!   [`Command::Syntax`] naming what is wrong, never a panic.

/// Longest command line accepted, line ending included: RFC 5321's 512 octets
/// (§4.5.3.1.4) plus room for the ESMTP parameters we announce (SIZE, BODY).
pub const MAX_COMMAND_LINE: usize = 512 + 128;

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
}
