//! `Authentication-Results` (RFC 8601) header values, parsed. Pure.
//!
//! Hand-written: mail-auth only *writes* this header (its ARC parser reads
//! nothing of `ARC-Authentication-Results` but `i=`), and no well-kept crate
//! parses it. Splitting on `;` and spaces is wrong both ways: a comment
//! (`(2048-bit key; unprotected)`, as OpenDKIM writes) or a quoted reason
//! may hold `;` and `dkim=pass` text. So the value is tokenised first, with
//! comments (nested, with quoted-pairs) dropped as white space and quoted
//! strings kept as one value, and only then read as
//! `authserv-id [version] ; method=result [reason=…] ptype.property=value … ; …`.
//!
//! One pass over the input, no recursion (comment nesting is a counter), so
//! time and memory are linear in the header.

/// One parsed header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthResults {
    /// As written (compare case-insensitively).
    pub authserv_id: String,
    pub results: Vec<ResInfo>,
}

/// One `method=result …` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResInfo {
    /// Lower-cased, without a `/version`.
    pub method: String,
    /// Lower-cased.
    pub result: String,
    pub reason: Option<String>,
    /// `(ptype.property, value)`, the name lower-cased, e.g. `("header.d", "city.example")`.
    pub props: Vec<(String, String)>,
}

impl ResInfo {
    /// The first value of `name` (`header.d`), case-insensitive.
    pub fn prop(&self, name: &str) -> Option<&str> {
        self.props.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ArError {
    #[error("unterminated comment")]
    UnterminatedComment,
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    #[error("no authserv-id")]
    NoAuthservId,
    #[error("malformed result statement")]
    Malformed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Semi,
    Eq,
    /// A run of other characters (`header.d`, `@city.example`, `dkim/1`).
    Word(String),
    /// A quoted string, unquoted.
    Quoted(String),
}

/// Tokens of a header value; CFWS separates tokens and is dropped.
fn tokenize(value: &str) -> Result<Vec<Token>, ArError> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut chars = value.chars();
    let flush = |word: &mut String, out: &mut Vec<Token>| {
        if !word.is_empty() {
            out.push(Token::Word(std::mem::take(word)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '(' => {
                flush(&mut word, &mut out);
                let mut depth = 1usize;
                while depth > 0 {
                    match chars.next().ok_or(ArError::UnterminatedComment)? {
                        '\\' => {
                            chars.next().ok_or(ArError::UnterminatedComment)?;
                        }
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                }
            }
            '"' => {
                flush(&mut word, &mut out);
                let mut s = String::new();
                loop {
                    match chars.next().ok_or(ArError::UnterminatedQuote)? {
                        '\\' => s.push(chars.next().ok_or(ArError::UnterminatedQuote)?),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                out.push(Token::Quoted(s));
            }
            ';' => {
                flush(&mut word, &mut out);
                out.push(Token::Semi);
            }
            '=' => {
                flush(&mut word, &mut out);
                out.push(Token::Eq);
            }
            c if c.is_whitespace() => flush(&mut word, &mut out),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut out);
    Ok(out)
}

/// Parses the value of one `Authentication-Results` header (unfolded or
/// not). Never panics. Any syntax error refuses the whole header: a
/// result that cannot be read unambiguously is not a result.
pub fn parse(value: &str) -> Result<AuthResults, ArError> {
    let tokens = tokenize(value)?;
    let mut it = tokens.into_iter().peekable();
    let authserv_id = match it.next() {
        Some(Token::Word(w)) | Some(Token::Quoted(w)) if !w.is_empty() => w,
        _ => return Err(ArError::NoAuthservId),
    };
    // `spf=pass …` first (some MTAs write no authserv-id) is not an id.
    if it.peek() == Some(&Token::Eq) {
        return Err(ArError::NoAuthservId);
    }
    // An optional version number.
    if let Some(Token::Word(w)) = it.peek() {
        if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) {
            it.next();
        }
    }
    let mut results = Vec::new();
    // The rest is a list of `;`-separated statements.
    let mut statements: Vec<Vec<Token>> = Vec::new();
    for t in it {
        match t {
            Token::Semi => statements.push(Vec::new()),
            t => statements.last_mut().ok_or(ArError::Malformed)?.push(t),
        }
    }
    for st in statements {
        let mut st = st.into_iter();
        let method = match st.next() {
            // A trailing `;`, as some MTAs write, ends nothing.
            None => continue,
            Some(Token::Word(w)) => w,
            Some(_) => return Err(ArError::Malformed),
        };
        let Some(Token::Eq) = st.next() else {
            if method.eq_ignore_ascii_case("none") {
                continue;
            }
            return Err(ArError::Malformed);
        };
        let Some(Token::Word(result)) = st.next() else { return Err(ArError::Malformed) };
        let method = method.split('/').next().unwrap_or("").trim().to_ascii_lowercase();
        if method.is_empty() {
            return Err(ArError::Malformed);
        }
        let mut info = ResInfo { method, result: result.to_ascii_lowercase(), reason: None, props: Vec::new() };
        // Then `name=value` pairs: `reason=…`, `ptype.property=…`, and
        // extensions (`action=none`) which are kept as they are.
        loop {
            let name = match st.next() {
                None => break,
                Some(Token::Word(w)) => w.to_ascii_lowercase(),
                Some(_) => return Err(ArError::Malformed),
            };
            let Some(Token::Eq) = st.next() else { return Err(ArError::Malformed) };
            let value = match st.next() {
                Some(Token::Word(w)) | Some(Token::Quoted(w)) => w,
                _ => return Err(ArError::Malformed),
            };
            if name == "reason" && info.reason.is_none() {
                info.reason = Some(value);
            } else {
                info.props.push((name, value));
            }
        }
        results.push(info);
    }
    Ok(AuthResults { authserv_id, results })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(v: &str) -> AuthResults {
        parse(v).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    #[test]
    fn opendkim_with_a_semicolon_in_its_comment() {
        let r = one(
            "mx.example; dkim=pass (2048-bit key; unprotected) header.d=city.example header.i=@city.example header.b=abcd",
        );
        assert_eq!(r.authserv_id, "mx.example");
        assert_eq!(r.results.len(), 1);
        let d = &r.results[0];
        assert_eq!((d.method.as_str(), d.result.as_str()), ("dkim", "pass"));
        assert_eq!(d.prop("header.d"), Some("city.example"));
        assert_eq!(d.prop("header.i"), Some("@city.example"));
        assert_eq!(d.prop("header.b"), Some("abcd"));
        // Folded, with a trailing semicolon, as OpenDKIM also writes.
        let r = one("mx.example;\r\n\tdkim=pass (1024-bit key; secure) header.d=city.example\r\n\theader.s=sel header.b=\"Xy/+1\";");
        assert_eq!(r.results[0].prop("header.b"), Some("Xy/+1"));
    }

    #[test]
    fn postfix_with_opendmarc_and_spf() {
        let r = one("mx.example; dmarc=pass (p=none dis=none) header.from=city.example");
        assert_eq!((r.results[0].method.as_str(), r.results[0].prop("header.from")), ("dmarc", Some("city.example")));
        let r = one("mx.example 1; spf=pass (mailfrom) smtp.mailfrom=staff@city.example (client-ip=192.0.2.1; helo=mail.city.example; envelope-from=staff@city.example; receiver=<UNKNOWN>)");
        assert_eq!(r.results[0].prop("smtp.mailfrom"), Some("staff@city.example"));
        assert_eq!(one("mx.example; none").results, vec![]);
    }

    #[test]
    fn gmail_style() {
        let r = one(
            "mx.google.com;\r\n       dkim=pass header.i=@city.example header.s=20230601 header.b=Ab1CdEf2;\r\n       \
             spf=pass (google.com: domain of staff@city.example designates 2001:db8::1 as permitted sender) smtp.mailfrom=staff@city.example;\r\n       \
             dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=city.example",
        );
        let methods: Vec<_> = r.results.iter().map(|x| (x.method.as_str(), x.result.as_str())).collect();
        assert_eq!(methods, [("dkim", "pass"), ("spf", "pass"), ("dmarc", "pass")]);
    }

    #[test]
    fn microsoft_style_has_no_authserv_id() {
        let v = "spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=city.example; dkim=pass (signature was verified) header.d=city.example;dmarc=pass action=none header.from=city.example;compauth=pass reason=100";
        assert_eq!(parse(v), Err(ArError::NoAuthservId));
        // With one, its extensions are kept and the reason read.
        let r = one(&format!("mx.example; {v}"));
        assert_eq!(r.results.len(), 4);
        assert_eq!(r.results[2].prop("action"), Some("none"));
        assert_eq!(r.results[3].reason.as_deref(), Some("100"));
    }

    #[test]
    fn text_inside_comments_and_quotes_is_not_a_result() {
        let r = one("mx.example; dkim=fail reason=\"bad sig; dkim=pass header.d=evil.example\" header.d=city.example");
        assert_eq!(r.results.len(), 1);
        assert_eq!(r.results[0].result, "fail");
        assert_eq!(r.results[0].reason.as_deref(), Some("bad sig; dkim=pass header.d=evil.example"));
        let r = one("mx.example; dkim=fail (was: dkim=pass header.d=city.example; (nested) \\) still) header.d=city.example");
        assert_eq!((r.results.len(), r.results[0].result.as_str()), (1, "fail"));
        let r = one("mx.example (dkim=pass; header.d=city.example); dkim=none");
        assert_eq!(r.results[0].result, "none");
    }

    #[test]
    fn broken_headers_are_refused() {
        assert_eq!(parse(""), Err(ArError::NoAuthservId));
        assert_eq!(parse("; dkim=pass"), Err(ArError::NoAuthservId));
        assert_eq!(parse("mx.example; dkim=pass (unclosed header.d=city.example"), Err(ArError::UnterminatedComment));
        assert_eq!(parse("mx.example; dkim=fail reason=\"x dkim=pass"), Err(ArError::UnterminatedQuote));
        assert_eq!(parse("mx.example; dkim=pass header.d city.example"), Err(ArError::Malformed));
        assert_eq!(parse("mx.example; dkim pass"), Err(ArError::Malformed));
        assert_eq!(parse("mx.example dkim=pass"), Err(ArError::Malformed));
        assert_eq!(parse("mx.example; =pass"), Err(ArError::Malformed));
    }

    #[test]
    fn random_input_never_panics_and_stays_linear() {
        let alphabet: Vec<char> = "();=\"\\ \t\r\n.@/abcdkimpass1ー".chars().collect();
        let mut next = crate::test_rng::xorshift(0xdead_beef_cafe_f00d);
        for _ in 0..20_000 {
            let len = (next() % 60) as usize;
            let s: String = (0..len).map(|_| alphabet[(next() as usize) % alphabet.len()]).collect();
            let _ = parse(&s);
        }
        let deep = format!("mx.example; dkim=pass {}x{} header.d=city.example", "(".repeat(100_000), ")".repeat(100_000));
        let t = std::time::Instant::now();
        assert_eq!(one(&deep).results[0].prop("header.d"), Some("city.example"));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }
}
