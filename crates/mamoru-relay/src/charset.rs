//! A pool's `charset = "iso-2022-jp"`: the message re-encoded, right before
//! signing, for older feature phones (ガラケー) that show UTF-8 mail as
//! garbage. Everything mamoru renders is one `text/plain` part in UTF-8;
//! here the body becomes ISO-2022-JP (RFC 1468) with `7bit` transfer
//! encoding, and the Subject and the display names of From/To/Reply-To
//! become `=?ISO-2022-JP?B?...?=` encoded words (RFC 2047), each one
//! self-contained (it starts and ends in ASCII) and at most 75 characters.
//!
//! Hand-written because no crate does this conversion: mail-builder writes
//! UTF-8 only, and encoding_rs (which does the JIS X 0208 mapping here) works
//! on text, not on messages. mailparse reads the message.
//!
//! A message that does not convert exactly (a character outside JIS X 0208,
//! such as an emoji or 髙; one the encoder would replace by another, such as
//! half-width ｶﾀｶﾅ or U+2212 −; or anything but a single text/plain part) is
//! sent unchanged in UTF-8: a readable alert in the wrong charset for a few
//! old phones beats a silently altered one. "Exactly" is checked, not
//! assumed: each converted text is decoded again and compared (`encode`).

use encoding_rs::ISO_2022_JP;
use mailparse::{MailAddr, MailHeaderMap as _};

/// Why a message stays UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unconvertible {
    #[error("not a parsable message: {0}")]
    Parse(String),
    #[error("not a single text/plain part")]
    NotPlainText,
    /// A line of the header section is neither a field (a name and a
    /// colon) nor the continuation of one.
    #[error("a header line is not a field")]
    NotAField,
    #[error("a character has no ISO-2022-JP form")]
    Unmappable,
    /// The encoder would write another character than the one given (a
    /// half-width katakana as full-width, U+2212 as U+FF0D).
    #[error("a character would read back as another one")]
    Altered,
    #[error("a line would exceed 998 bytes")]
    LongLine,
}

/// Bytes of ISO-2022-JP text per encoded word: `=?ISO-2022-JP?B?` and `?=`
/// take 18 of the 75 characters, leaving 57 for base64, that is 42 bytes.
const WORD_BYTES: usize = 42;

/// `text` in ISO-2022-JP, only if it reads back exactly.
///
/// Every piece of text this module converts (each body line, the Subject,
/// each display name) goes through here, and here only. The encoder alone
/// is not enough: the WHATWG mapping encoding_rs implements writes
/// half-width katakana as their full-width forms and U+2212 MINUS SIGN as
/// U+FF0D without reporting an error, and it writes the IBM extension kanji
/// (髙, 﨑) on rows 89–92, which are not JIS X 0208 and which the phones this
/// conversion is for do not have. So the result is decoded again and
/// compared with the input, and every two-byte character must lie on the
/// JIS X 0208 rows 1–84 (row 13, NEC's ①–⑳ and Ⅰ–Ⅹ, is one of them and
/// Japanese phones show it).
fn encode(text: &str) -> Result<Vec<u8>, Unconvertible> {
    let (bytes, _, had_errors) = ISO_2022_JP.encode(text);
    if had_errors {
        return Err(Unconvertible::Unmappable);
    }
    if !on_jis_x0208_rows(&bytes) {
        return Err(Unconvertible::Unmappable);
    }
    let (back, had_errors) = ISO_2022_JP.decode_without_bom_handling(&bytes);
    if had_errors || back != text {
        return Err(Unconvertible::Altered);
    }
    Ok(bytes.into_owned())
}

/// Whether every two-byte character of ISO-2022-JP `bytes` (after `ESC $ B`
/// or `ESC $ @`) has its first byte on rows 1–84 (0x21–0x74).
fn on_jis_x0208_rows(bytes: &[u8]) -> bool {
    let mut two_byte = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i..] {
            [0x1b, b'$', b'B' | b'@', ..] => {
                two_byte = true;
                i += 3;
            }
            [0x1b, b'(', _, ..] => {
                two_byte = false;
                i += 3;
            }
            [lead, ..] if two_byte => {
                if !(0x21..=0x74).contains(&lead) {
                    return false;
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    true
}

/// `text` as a header value: unchanged if it is printable ASCII, otherwise
/// as encoded words folded onto continuation lines.
fn header_text(text: &str) -> Result<String, Unconvertible> {
    use base64::Engine as _;
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(text.to_string());
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        let mut next = chunk.clone();
        next.push(c);
        if encode(&next)?.len() > WORD_BYTES && !chunk.is_empty() {
            words.push(std::mem::take(&mut chunk));
            chunk.push(c);
        } else {
            chunk = next;
        }
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    let encoded: Result<Vec<String>, _> = words
        .iter()
        .map(|w| encode(w).map(|b| format!("=?ISO-2022-JP?B?{}?=", base64::engine::general_purpose::STANDARD.encode(b))))
        .collect();
    Ok(encoded?.join("\r\n "))
}

/// `written` if a reader decodes it back to `text`. Encoded words next to
/// text that itself looks like an encoded word (`=?UTF-8?Q?` left literal
/// because it was malformed) can read back differently once re-encoded;
/// then the message stays in UTF-8.
fn same_when_read(text: &str, written: String) -> Result<String, Unconvertible> {
    let line = format!("Subject: {written}\r\n");
    let back = mailparse::parse_header(line.as_bytes()).map(|(h, _)| h.get_value()).map_err(|e| Unconvertible::Parse(e.to_string()))?;
    if back.trim() == text.trim() { Ok(written) } else { Err(Unconvertible::Altered) }
}

/// Whether every line of the header section of `raw` is a field (a name of
/// printable ASCII and a colon, RFC 5322 2.2) or the continuation of one.
///
/// The copy is written from the fields mailparse reads, each as `name:
/// value`. mailparse also reads a line without a colon as a field (named by
/// the whole line, with no value), where other readers see no field at all or
/// the start of the body; written back with a colon it would become a real
/// field, and a folded line below it a real value (a line `Subject` above
/// `\tby mx.example` would turn into the Subject `by mx.example:`). The
/// fields are cut here exactly as `mailparse::parse_headers` cuts them.
fn only_fields(raw: &[u8]) -> Result<(), Unconvertible> {
    let mut rest = raw;
    while !matches!(rest, [] | [b'\n', ..] | [b'\r', b'\n', ..]) {
        let (_, len) = mailparse::parse_header(rest).map_err(|e| Unconvertible::Parse(e.to_string()))?;
        let name = rest.iter().take_while(|&&b| b != b':' && (0x21..0x7f).contains(&b)).count();
        if name == 0 || rest.get(name) != Some(&b':') {
            return Err(Unconvertible::NotAField);
        }
        rest = &rest[len..];
    }
    Ok(())
}

/// Re-encodes a UTF-8 `text/plain` message as ISO-2022-JP.
pub fn to_iso2022jp(raw: &[u8]) -> Result<Vec<u8>, Unconvertible> {
    let parsed = mailparse::parse_mail(raw).map_err(|e| Unconvertible::Parse(e.to_string()))?;
    only_fields(raw)?;
    if parsed.ctype.mimetype != "text/plain" || !parsed.subparts.is_empty() {
        return Err(Unconvertible::NotPlainText);
    }
    let body = parsed.get_body().map_err(|e| Unconvertible::Parse(e.to_string()))?;
    let body = body.replace("\r\n", "\n");
    let mut out = Vec::with_capacity(raw.len());
    for h in &parsed.headers {
        let key = h.get_key();
        let value = match key.to_ascii_lowercase().as_str() {
            "content-type" => "text/plain; charset=ISO-2022-JP".to_string(),
            "content-transfer-encoding" => "7bit".to_string(),
            "subject" => same_when_read(&h.get_value(), header_text(&h.get_value())?)?,
            "from" | "to" | "reply-to" if !h.get_value().is_ascii() => {
                let list = mailparse::addrparse_header(h).map_err(|e| Unconvertible::Parse(e.to_string()))?;
                let mut parts = Vec::new();
                for a in list.iter() {
                    let MailAddr::Single(s) = a else { return Err(Unconvertible::NotPlainText) };
                    match &s.display_name {
                        Some(name) => parts.push(format!("{} <{}>", header_text(name)?, s.addr)),
                        None => parts.push(format!("<{}>", s.addr)),
                    }
                }
                parts.join(", ")
            }
            // Anything else goes as it came, folding and all.
            _ => String::from_utf8_lossy(h.get_value_raw()).into_owned(),
        };
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // A message without these headers is text/plain us-ascii by default
    // (RFC 2045), which would leave the escape sequences undecoded.
    if parsed.headers.get_first_header("Content-Type").is_none() {
        out.extend_from_slice(b"Content-Type: text/plain; charset=ISO-2022-JP\r\n");
    }
    if parsed.headers.get_first_header("Content-Transfer-Encoding").is_none() {
        out.extend_from_slice(b"Content-Transfer-Encoding: 7bit\r\n");
    }
    out.extend_from_slice(b"\r\n");
    for line in body.split('\n') {
        // Each line is encoded alone, so it ends back in ASCII (RFC 1468).
        let bytes = encode(line)?;
        if bytes.len() > 998 {
            return Err(Unconvertible::LongLine);
        }
        out.extend_from_slice(&bytes);
        out.extend_from_slice(b"\r\n");
    }
    // `split` gave a last empty piece for the body's final newline.
    if body.ends_with('\n') {
        out.truncate(out.len() - 2);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECT: &str = "【守るネット】[不審者情報] 公園で声かけ（中央地区・天応・吉浦地区）";
    const BODY: &str = "■地区: 中央地区\n\n本日15時ごろ、○○公園で児童に声をかける男性がいました。\nhttps://mamoru.example/m/AAAA\n";

    fn sample(body: &str) -> Vec<u8> {
        mail_builder::MessageBuilder::new()
            .from(("守るネット", "ans@mamoru.example"))
            .to("taro..y.@docomo.ne.jp")
            .subject(SUBJECT)
            .message_id("alert.1.2@mamoru.example")
            .header("List-Id", mail_builder::headers::raw::Raw::new("<alerts.mamoru.example>"))
            .text_body(body.replace('\n', "\r\n"))
            .write_to_vec()
            .expect("render")
    }

    #[test]
    fn converts_subject_names_and_body_and_reads_back_the_same() {
        let out = to_iso2022jp(&sample(BODY)).expect("convertible");
        assert!(out.iter().all(|&b| b < 0x80 && b != 0), "7-bit only");
        for line in out.split(|&b| b == b'\n') {
            assert!(line.len() <= 998);
        }
        let text = String::from_utf8(out.clone()).expect("ascii");
        assert!(text.contains("charset=ISO-2022-JP") && text.contains("Content-Transfer-Encoding: 7bit"), "{text}");
        let head = &text[..text.find("\r\n\r\n").expect("header end")];
        for word in head.split("=?ISO-2022-JP?B?").skip(1) {
            let b64 = &word[..word.find("?=").expect("word end")];
            assert!(b64.len() + 18 <= 75, "encoded word too long in {text}");
        }
        // An independent decoder (mailparse, with the charset crate) reads
        // back exactly what was rendered.
        let back = mailparse::parse_mail(&out).expect("parse");
        assert_eq!(back.headers.get_first_value("Subject").as_deref(), Some(SUBJECT));
        assert_eq!(back.headers.get_first_value("From").as_deref(), Some("守るネット <ans@mamoru.example>"));
        assert_eq!(back.headers.get_first_value("To").as_deref(), Some("<taro..y.@docomo.ne.jp>"));
        assert_eq!(back.headers.get_first_value("List-Id").as_deref(), Some("<alerts.mamoru.example>"));
        assert_eq!(back.get_body().expect("body").replace("\r\n", "\n"), BODY);
        // Each body line starts and ends in ASCII.
        let body = &text[text.find("\r\n\r\n").expect("body") + 4..];
        for line in body.split("\r\n").filter(|l| l.contains('\x1b')) {
            assert!(line.ends_with("\x1b(B"), "{line:?}");
        }
    }

    #[test]
    fn what_has_no_jis_form_stays_utf8() {
        assert_eq!(to_iso2022jp(&sample("髙橋さんから連絡 🚨\n")), Err(Unconvertible::Unmappable));
        let multipart = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n";
        assert_eq!(to_iso2022jp(multipart), Err(Unconvertible::NotPlainText));
    }

    /// Converts `text` as the body and as the Subject; checks that what
    /// converts reads back exactly (with mailparse's decoder) and that what
    /// does not is refused.
    fn body_and_subject(text: &str) -> Result<(), Unconvertible> {
        let body = format!("{text}\n");
        let msg = mail_builder::MessageBuilder::new()
            .from(("守るネット", "ans@mamoru.example"))
            .to("taro@docomo.ne.jp")
            .subject(text)
            .text_body(body.replace('\n', "\r\n"))
            .write_to_vec()
            .expect("render");
        let out = to_iso2022jp(&msg)?;
        let back = mailparse::parse_mail(&out).expect("parse");
        assert_eq!(back.headers.get_first_value("Subject").as_deref(), Some(text), "subject of {text:?}");
        assert_eq!(back.get_body().expect("body").replace("\r\n", "\n"), body, "body of {text:?}");
        Ok(())
    }

    #[test]
    fn converts_exactly_or_not_at_all() {
        // Read back as other characters by the WHATWG mapping.
        assert_eq!(body_and_subject("ｶﾀｶﾅで連絡"), Err(Unconvertible::Altered));
        assert_eq!(body_and_subject("気温 −3度"), Err(Unconvertible::Altered));
        assert_eq!(header_text("ｶﾀｶﾅ"), Err(Unconvertible::Altered));
        // No JIS X 0208 form, or only on the IBM extension rows.
        assert_eq!(body_and_subject("15時〜16時"), Err(Unconvertible::Unmappable));
        assert_eq!(body_and_subject("髙橋さん"), Err(Unconvertible::Unmappable));
        assert_eq!(body_and_subject("﨑"), Err(Unconvertible::Unmappable));
        assert_eq!(body_and_subject("至急 🚨"), Err(Unconvertible::Unmappable));
        // These have exact forms and convert.
        assert_eq!(body_and_subject("15時～16時 ①中央地区 Ⅱ 全角－ ＡＢＣ ¥100"), Ok(()));
        assert_eq!(body_and_subject("カタカナ ＝ 高橋"), Ok(()));
    }

    #[test]
    fn a_message_without_content_type_gets_one() {
        // No Content-Type: the body is read as the default charset, and
        // its `§` has a JIS form.
        let raw = b"From: a@mamoru.example\r\nSubject: hi\r\n\r\nSat\xa7\r\n";
        let before = mailparse::parse_mail(raw).expect("parse").get_body().expect("body");
        let out = to_iso2022jp(raw).expect("convertible");
        let back = mailparse::parse_mail(&out).expect("parse");
        assert_eq!(back.ctype.charset.to_ascii_lowercase(), "iso-2022-jp");
        assert_eq!(back.get_body().expect("body").trim_end(), before.trim_end());
    }

    #[test]
    fn a_header_line_that_is_not_a_field_leaves_the_message_in_utf8() {
        // A line without a colon is no field (RFC 5322 2.2), and readers
        // disagree on it: mailparse takes it for a field with an empty
        // value, Python's email package for the start of the body. Written
        // back with a colon, it would become a real field, and a folded line
        // below it a real value: here a Subject `by mx.example:` above the
        // message's own.
        let tail = "Subject: 不審者情報\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n本文\r\n";
        for head in [
            "From: a@mamoru.example\r\nSubject\r\n\tby mx.example\r\n",
            "From: a@mamoru.example\nSubject\n\tby mx.example\n",
            "\tX-Folded: first line\r\n",
            "Subject : not this one\r\n",
        ] {
            let raw = format!("{head}{tail}");
            assert_eq!(to_iso2022jp(raw.as_bytes()), Err(Unconvertible::NotAField), "{head:?}");
        }
        // The same message with only well-formed fields converts.
        let raw = format!("From: a@mamoru.example\r\nX-Received: by mx.example\r\n\tfolded\r\n{tail}");
        let out = to_iso2022jp(raw.as_bytes()).expect("convertible");
        let back = mailparse::parse_mail(&out).expect("parse");
        assert_eq!(back.headers.get_first_value("Subject").as_deref(), Some("不審者情報"));
        assert_eq!(back.headers.get_first_value("X-Received").as_deref(), Some("by mx.example folded"));
    }

    #[test]
    fn long_subjects_fold_into_several_words() {
        let words = header_text(&"不審者".repeat(20)).expect("convertible");
        assert!(words.matches("=?ISO-2022-JP?B?").count() >= 4, "{words}");
        assert!(words.lines().all(|l| l.trim_start().len() <= 75), "{words}");
    }
}
