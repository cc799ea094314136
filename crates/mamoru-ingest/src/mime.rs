//! Bounded MIME parsing: every inbound message that ingest parses as MIME
//! goes through [`parse`], never straight to `mailparse::parse_mail`.
//!
//! `mailparse::parse_mail` recurses once per nested multipart, so a few
//! hundred kilobytes of `multipart` inside `multipart` overflow a thread's
//! stack, which aborts the whole process (a stack overflow is not a panic and
//! cannot be caught). Its boundary search is also a naive substring search
//! per nesting level. [`prescan`] walks the same structure first, without
//! recursion (an explicit work list) and without building anything: it
//! splits parts exactly as mailparse does (the same header parser, the same
//! `Content-Type` reading, the same "boundary at the start of a line" rule),
//! so the depth and the part count it measures are the ones mailparse would
//! reach, and it stops as soon as one bound is passed. Only a message within
//! every bound of [`Limits`] is handed to mailparse.
//!
//! The scan itself is linear in the message per nesting level: boundaries
//! are only compared at line starts, and a part whose header section has no
//! end is a leaf (its body is empty).

use mailparse::{MailHeaderMap as _, ParsedMail};

/// The bounds a message must stay within to be parsed at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Nesting levels of multipart (the message itself is level 1). Real mail
    /// has at most 4 (mixed > related > alternative > text).
    pub max_depth: usize,
    /// Parts in the whole tree, the message itself included.
    pub max_parts: usize,
    /// Bytes of any one header section (the message's or a part's), not
    /// counting the blank line that ends it.
    pub max_header_bytes: usize,
    /// Characters of a multipart boundary (RFC 2046 allows 70).
    pub max_boundary_len: usize,
    /// Byte comparisons mailparse's boundary search may make, over all
    /// multipart parts (see [`prescan`]).
    pub max_search_cost: usize,
}

impl Limits {
    /// 256 Mi comparisons is a fraction of a second; a 10 MB message with an
    /// attachment two levels down costs about 20 Mi.
    pub const DEFAULT: Limits =
        Limits { max_depth: 8, max_parts: 256, max_header_bytes: 64 * 1024, max_boundary_len: 70, max_search_cost: 256 << 20 };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a message was not parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TooComplex {
    #[error("multipart nesting deeper than {0} levels")]
    Depth(usize),
    #[error("more than {0} MIME parts")]
    Parts(usize),
    #[error("a header section larger than {0} bytes")]
    HeaderBytes(usize),
    #[error("a multipart boundary longer than {0} characters")]
    Boundary(usize),
    #[error("a boundary search costlier than {0} comparisons")]
    SearchCost(usize),
}

impl TooComplex {
    /// A stable kebab-case name for logs and the audit log.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Depth(_) => "mime-too-deep",
            Self::Parts(_) => "mime-too-many-parts",
            Self::HeaderBytes(_) => "mime-headers-too-large",
            Self::Boundary(_) => "mime-boundary-too-long",
            Self::SearchCost(_) => "mime-search-too-costly",
        }
    }
}

/// What [`prescan`] measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub depth: usize,
    pub parts: usize,
}

/// Why [`parse`] returned no message.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    TooComplex(#[from] TooComplex),
    #[error("unparsable message: {0}")]
    Unparsable(#[from] mailparse::MailParseError),
}

/// Checks the bounds, then parses. The only way ingest parses MIME.
pub fn parse<'a>(raw: &'a [u8], limits: &Limits) -> Result<ParsedMail<'a>, ParseError> {
    prescan(raw, limits)?;
    Ok(mailparse::parse_mail(raw)?)
}

/// One part still to look at: its byte range in the message and its depth.
/// (Inside a `multipart/digest` a part without `Content-Type` defaults to
/// `message/rfc822`, which mailparse does not descend into either: a leaf.)
struct Pending {
    start: usize,
    end: usize,
    depth: usize,
}

/// Measures the MIME tree mailparse would build from `raw`, stopping at the
/// first bound passed. Pure and non-recursive; never panics.
///
/// A part whose headers mailparse cannot parse makes `parse_mail` fail as a
/// whole; here it counts as a leaf and the scan goes on, so the scan visits
/// at least every part mailparse would.
///
/// mailparse finds boundaries with a naive substring search: over each
/// multipart body once, one comparison per byte, and up to the delimiter's
/// length at each `-` (the delimiter starts with `--`). Megabytes of dashes
/// under a few levels of 70-character boundaries cost seconds, so that
/// bound (bytes + dashes × delimiter length, summed over multipart parts)
/// is checked too.
pub fn prescan(raw: &[u8], limits: &Limits) -> Result<Shape, TooComplex> {
    let mut shape = Shape { depth: 0, parts: 0 };
    let mut cost = 0usize;
    let mut work = vec![Pending { start: 0, end: raw.len(), depth: 1 }];
    while let Some(part) = work.pop() {
        shape.parts += 1;
        if shape.parts > limits.max_parts {
            return Err(TooComplex::Parts(limits.max_parts));
        }
        if part.depth > limits.max_depth {
            return Err(TooComplex::Depth(limits.max_depth));
        }
        shape.depth = shape.depth.max(part.depth);
        let data = &raw[part.start..part.end];
        let Ok((headers, ix_body)) = mailparse::parse_headers(data) else { continue };
        // `ix_body` counts the blank line (one or two bytes) that ends the section.
        if ix_body.saturating_sub(2) > limits.max_header_bytes {
            return Err(TooComplex::HeaderBytes(limits.max_header_bytes));
        }
        // Exactly what parse_mail reads: the first Content-Type.
        let Some(ctype) = headers.get_first_value("Content-Type").map(|v| mailparse::parse_content_type(&v)) else { continue };
        let Some(boundary) = ctype.params.get("boundary") else { continue };
        if !ctype.mimetype.starts_with("multipart/") || data.len() <= ix_body {
            continue;
        }
        if boundary.chars().count() > limits.max_boundary_len {
            return Err(TooComplex::Boundary(limits.max_boundary_len));
        }
        let key = format!("--{boundary}");
        let key = key.as_bytes();
        let body = &data[ix_body..];
        let dashes = body.iter().filter(|&&c| c == b'-').count();
        cost = cost.saturating_add(body.len()).saturating_add(dashes.saturating_mul(key.len().saturating_sub(1)));
        if cost > limits.max_search_cost {
            return Err(TooComplex::SearchCost(limits.max_search_cost));
        }
        // The split of mailparse's parse_mail_recursive, by index.
        let Some(first) = find_line_prefix(data, ix_body, key) else { continue };
        let mut boundary_end = first + key.len();
        let mut children = Vec::new();
        while let Some(part_start) = find_byte(data, boundary_end, b'\n').map(|v| v + 1) {
            let next = find_line_prefix(data, part_start, key);
            let part_end = next.map_or(data.len(), |x| strip_trailing_crlf(data, part_start, x));
            if shape.parts + work.len() + children.len() >= limits.max_parts {
                return Err(TooComplex::Parts(limits.max_parts));
            }
            children.push(Pending { start: part.start + part_start, end: part.start + part_end, depth: part.depth + 1 });
            boundary_end = next.map_or(data.len(), |x| x + key.len());
            if boundary_end + 2 > data.len() || (data[boundary_end] == b'-' && data[boundary_end + 1] == b'-') {
                break;
            }
        }
        // Depth-first, in order, like the recursion it stands for.
        work.extend(children.into_iter().rev());
    }
    Ok(shape)
}

/// The first `i >= start` where `key` begins and `i` is `start` or follows
/// a `\n` (mailparse's `find_from_u8_line_prefix`), comparing only at line
/// starts.
fn find_line_prefix(hay: &[u8], start: usize, key: &[u8]) -> Option<usize> {
    let mut i = start;
    loop {
        if hay.get(i..).is_some_and(|rest| rest.starts_with(key)) {
            return Some(i);
        }
        i = find_byte(hay, i, b'\n')? + 1;
    }
}

fn find_byte(hay: &[u8], start: usize, byte: u8) -> Option<usize> {
    hay.get(start..)?.iter().position(|&b| b == byte).map(|p| start + p)
}

/// mailparse's `strip_trailing_crlf`: the line break before a boundary
/// belongs to the boundary.
fn strip_trailing_crlf(data: &[u8], start: usize, mut ix: usize) -> usize {
    if ix > start && data[ix - 1] == b'\n' {
        ix -= 1;
        if ix > start && data[ix - 1] == b'\r' {
            ix -= 1;
        }
    }
    ix
}

/// A message of `depth` multiparts nested in each other, with `siblings`
/// text parts beside the innermost text part: the shape of the stack
/// overflow attack, for tests here and in the binary's end-to-end tests.
#[doc(hidden)]
pub fn nested_message(depth: usize, siblings: usize) -> Vec<u8> {
    let mut out = String::from("From: a@example.jp\r\nTo: x@example.jp\r\nSubject: nested\r\nMIME-Version: 1.0\r\n");
    for level in 0..depth {
        out.push_str(&format!("Content-Type: multipart/mixed; boundary=\"b{level}z\"\r\n\r\n--b{level}z\r\n"));
    }
    for _ in 0..siblings {
        out.push_str(&format!("Content-Type: text/plain\r\n\r\nx\r\n--b{}z\r\n", depth.saturating_sub(1)));
    }
    out.push_str("Content-Type: text/plain\r\n\r\ninnermost\r\n");
    for level in (0..depth).rev() {
        out.push_str(&format!("--b{level}z--\r\n"));
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// mailparse's own depth, measured by walking its tree (only for
    /// messages shallow enough to parse).
    fn mailparse_shape(raw: &[u8]) -> Option<Shape> {
        let m = mailparse::parse_mail(raw).ok()?;
        let mut shape = Shape { depth: 0, parts: 0 };
        let mut stack = vec![(&m, 1)];
        while let Some((p, d)) = stack.pop() {
            shape.parts += 1;
            shape.depth = shape.depth.max(d);
            stack.extend(p.subparts.iter().map(|s| (s, d + 1)));
        }
        Some(shape)
    }

    #[test]
    fn the_scan_measures_what_mailparse_builds() {
        let big = Limits { max_depth: 1000, max_parts: 100_000, ..Limits::DEFAULT };
        let cases: Vec<Vec<u8>> = vec![
            b"Subject: plain\r\n\r\nbody".to_vec(),
            b"Content-Type: multipart/alternative; boundary=x\n\n--x\nContent-Type: text/plain\n\na\n--x\nContent-Type: text/html\n\n<p>b\n--x--\n".to_vec(),
            // A boundary that is only a prefix of a line still splits (mailparse's rule).
            b"Content-Type: multipart/mixed; boundary=x\n\n--xy\n\na\n--x\n\nb\n".to_vec(),
            // No terminating boundary; a part without a blank line.
            b"Content-Type: multipart/mixed; boundary=\"q\"\r\n\r\npreamble\r\n--q\r\nX: y\r\n--q\r\n\r\nlast".to_vec(),
            // Digest, and a boundary at the very start of the body.
            b"Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: a\n\n--d--".to_vec(),
            nested_message(5, 3),
            nested_message(1, 0),
            nested_message(30, 30),
        ];
        for raw in &cases {
            let crlf = String::from_utf8_lossy(raw).replace("\r\n", "\n").replace('\n', "\r\n").into_bytes();
            for raw in [raw.clone(), crlf] {
                assert_eq!(prescan(&raw, &big).ok(), mailparse_shape(&raw), "{}", String::from_utf8_lossy(&raw));
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused_before_mailparse_sees_it() {
        assert_eq!(prescan(&nested_message(7, 0), &Limits::DEFAULT), Ok(Shape { depth: 8, parts: 8 }));
        assert_eq!(prescan(&nested_message(8, 0), &Limits::DEFAULT), Err(TooComplex::Depth(8)));
        // The attack: a few thousand levels in a few hundred kilobytes (and
        // far more), refused quickly and without recursion.
        for depth in [3_000, 45_000] {
            let raw = nested_message(depth, 0);
            let t = std::time::Instant::now();
            assert_eq!(prescan(&raw, &Limits::DEFAULT), Err(TooComplex::Depth(8)));
            assert!(matches!(parse(&raw, &Limits::DEFAULT), Err(ParseError::TooComplex(TooComplex::Depth(8)))));
            assert!(t.elapsed() < std::time::Duration::from_secs(2), "{depth}: {:?}", t.elapsed());
        }
    }

    #[test]
    fn parts_headers_and_boundaries_are_bounded() {
        assert_eq!(prescan(&nested_message(1, 250), &Limits::DEFAULT).map(|s| s.parts), Ok(252));
        assert_eq!(prescan(&nested_message(1, 255), &Limits::DEFAULT), Err(TooComplex::Parts(256)));
        // Many parts at one level stop the split early, not after it.
        assert_eq!(prescan(&nested_message(1, 200_000), &Limits::DEFAULT), Err(TooComplex::Parts(256)));
        let big_header = format!("X-Pad: {}\r\n\r\nbody", "a".repeat(70_000));
        assert_eq!(prescan(big_header.as_bytes(), &Limits::DEFAULT), Err(TooComplex::HeaderBytes(65536)));
        let part_header = format!("Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nX-Pad: {}\r\n\r\nbody\r\n--x--", "a".repeat(70_000));
        assert_eq!(prescan(part_header.as_bytes(), &Limits::DEFAULT), Err(TooComplex::HeaderBytes(65536)));
        let b = "b".repeat(71);
        let long = format!("Content-Type: multipart/mixed; boundary={b}\r\n\r\n--{b}\r\n\r\nx\r\n--{b}--");
        assert_eq!(prescan(long.as_bytes(), &Limits::DEFAULT), Err(TooComplex::Boundary(70)));
        // Megabytes of dashes under long boundaries: seconds in mailparse.
        let b = format!("{}x", "-".repeat(66));
        let mut dashes = String::from("From: a@x.jp\r\n");
        for level in 0..7 {
            dashes.push_str(&format!("Content-Type: multipart/mixed; boundary=\"{b}{level}\"\r\n\r\n--{b}{level}\r\n"));
        }
        dashes.push_str(&format!("Content-Type: text/plain\r\n\r\n{}", "-".repeat(9_000_000)));
        let t = std::time::Instant::now();
        assert_eq!(prescan(dashes.as_bytes(), &Limits::DEFAULT), Err(TooComplex::SearchCost(256 << 20)));
        assert!(t.elapsed() < std::time::Duration::from_secs(1), "{:?}", t.elapsed());
        // The same size of base64 two levels down is fine.
        let b64 = format!(
            "Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n\r\n{}\r\n--b--\r\n--a--\r\n",
            "QUJD\r\n".repeat(1_500_000)
        );
        assert_eq!(prescan(b64.as_bytes(), &Limits::DEFAULT).map(|s| s.depth), Ok(3));
        // Headers without an end make a leaf, not an error.
        assert!(prescan(b"A: b\r\nC: d", &Limits::DEFAULT).is_ok());
        assert!(prescan(b"", &Limits::DEFAULT).is_ok());
    }

    #[test]
    fn mutated_messages_never_panic() {
        let base = nested_message(4, 2);
        let mut next = crate::test_rng::xorshift(0x2545_f491_4f6c_dd1d);
        let interesting = [b'\r', b'\n', b'-', b'"', b';', b':', b' ', 0xff];
        for _ in 0..3000 {
            let mut raw = base.clone();
            for _ in 0..(next() % 10) {
                let pos = (next() as usize) % (raw.len() + 1);
                if next() % 3 == 0 && pos < raw.len() {
                    raw.remove(pos);
                } else {
                    raw.insert(pos, interesting[(next() as usize) % interesting.len()]);
                }
            }
            let cut = (next() as usize) % (raw.len() + 1);
            let raw = &raw[..cut.max(raw.len() / 2)];
            let big = Limits { max_depth: 100, ..Limits::DEFAULT };
            match prescan(raw, &big) {
                Ok(shape) => assert_eq!(mailparse_shape(raw).map_or(shape, |s| s), shape),
                Err(e) => panic!("{e}"),
            }
        }
    }
}
