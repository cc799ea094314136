//! What to do with one message in a watched IMAP mailbox, without a server:
//! its size (`RFC822.SIZE`), then its bytes in, a [`Disposition`] out.
//!
//! IMAP keeps no envelope. The recipient comes from the header the final
//! MTA adds (`[[ingest.imap]] envelope_header`) and the sender from
//! `Return-Path`, in both cases the topmost instance: the final MTA
//! prepends its own above whatever the sender wrote. The message then takes
//! the very path an LMTP delivery takes ([`Deliver`]), and its outcome
//! decides the folder.

use mamoru_core::config::EnvelopeHeader;

use crate::{Deliver, Outcome};

/// What happens to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// The store committed what it caused: move it to the processed folder.
    Processed,
    /// Deliberately not acted upon (the reason is logged): to the dropped folder.
    Dropped(String),
    /// Its handler crashed: to the quarantine folder.
    Quarantined,
    /// Not now (store busy, quarantine impossible): leave it, back off.
    Transient(String),
}

/// Before fetching a message: its body is fetched only if its size fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Fetch,
    Drop(Disposition),
}

/// The drop reasons of this module (the others are the classifier's).
pub const TOO_BIG: &str = "too-big";
pub const NO_ENVELOPE: &str = "no-envelope-header";
pub const NOT_OURS: &str = "not-our-address";

/// Decides from `RFC822.SIZE` alone whether the body is worth fetching: a
/// message over `max_message_bytes` is dropped without being read. A server
/// that sent no size gets the message fetched and measured after.
pub fn before_fetch(size: Option<u32>, max_message_bytes: u64) -> Step {
    match size {
        Some(n) if u64::from(n) > max_message_bytes => Step::Drop(Disposition::Dropped(TOO_BIG.into())),
        _ => Step::Fetch,
    }
}

/// The envelope a message's trusted headers give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `Return-Path` without brackets; empty for the null sender `<>`.
    pub sender: String,
    pub recipient: String,
}

/// Reads the envelope from the header section (at most `max_header_bytes`;
/// a longer or unparsable section, or one without both headers, gives
/// `None`).
pub fn envelope(which: EnvelopeHeader, message: &[u8], max_header_bytes: usize) -> Option<Envelope> {
    let head = header_section(message, max_header_bytes)?;
    let (headers, _) = mailparse::parse_headers(head).ok()?;
    let first = |name: &str| headers.iter().find(|h| h.get_key_ref().eq_ignore_ascii_case(name)).map(|h| h.get_value());
    let recipient = address_of(&first(which.name())?)?;
    let sender = first("Return-Path")?;
    let sender = sender.trim();
    let sender = if sender == "<>" { String::new() } else { address_of(sender)? };
    Some(Envelope { sender, recipient })
}

/// `<a@b>` or `a@b`, with white space around: the bare address, if it is
/// one (one `@`, nothing that could not be in an envelope address).
fn address_of(value: &str) -> Option<String> {
    let v = value.trim();
    let v = v.strip_prefix('<').and_then(|v| v.strip_suffix('>')).unwrap_or(v).trim();
    let ok = v.matches('@').count() == 1
        && !v.starts_with('@')
        && !v.ends_with('@')
        && !v.contains(|c: char| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | '"'));
    ok.then(|| v.to_string())
}

/// The header section, the blank line excluded, if it ends within `max`
/// bytes (a message that is all header counts whole).
fn header_section(message: &[u8], max: usize) -> Option<&[u8]> {
    let window = &message[..message.len().min(max + 4)];
    let end = window.windows(2).position(|w| w == b"\n\n").map(|i| i + 1).or_else(|| {
        window.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 2)
    });
    match end {
        Some(e) if e <= max => Some(&message[..e]),
        None if message.len() <= max => Some(message),
        _ => None,
    }
}

/// Handles one fetched message: size, envelope, then `deliver` — the
/// same [`Deliver`] that LMTP hands its messages to — and maps its outcome.
/// `size` is what `RFC822.SIZE` said (the bytes may still be longer).
pub fn process<D: Deliver + ?Sized>(
    deliver: &D,
    which: EnvelopeHeader,
    max_message_bytes: u64,
    max_header_bytes: usize,
    size: Option<u32>,
    message: &[u8],
) -> Disposition {
    if let Step::Drop(d) = before_fetch(size, max_message_bytes) {
        return d;
    }
    if message.len() as u64 > max_message_bytes {
        return Disposition::Dropped(TOO_BIG.into());
    }
    let Some(env) = envelope(which, message, max_header_bytes) else {
        return Disposition::Dropped(NO_ENVELOPE.into());
    };
    if !deliver.accepts_recipient(&env.recipient) {
        return Disposition::Dropped(NOT_OURS.into());
    }
    match deliver.deliver(&env.sender, &env.recipient, message) {
        Outcome::Stored => Disposition::Processed,
        Outcome::Dropped(why) if why == crate::registrar::QUARANTINED => Disposition::Quarantined,
        Outcome::Dropped(why) => Disposition::Dropped(why),
        Outcome::Transient(why) => Disposition::Transient(why),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use mamoru_app::App;

    use super::*;
    use crate::Registrar;

    const MAX: u64 = 10 * 1024 * 1024;
    const HDR: usize = 64 * 1024;

    fn registrar(dir: &Path) -> Registrar {
        let cfg = mamoru_core::Config { domain: "mamoru.test".into(), data_dir: dir.to_path_buf(), ..Default::default() };
        let keys = mamoru_store::keys::load_or_create(dir).unwrap();
        let store = mamoru_store::Store::open(dir, &keys, Duration::from_millis(100)).unwrap();
        Registrar::new(Arc::new(App::new(Arc::new(cfg), Arc::new(store), keys.token_key())))
    }

    /// An empty mail as the provider's MTA left it in the mailbox.
    const EMPTY: &[u8] = b"Return-Path: <p@docomo.ne.jp>\r\nDelivered-To: ans@mamoru.test\r\n\
        X-Original-To: ans+chuo@mamoru.test\r\nFrom: p@docomo.ne.jp\r\nTo: ans@mamoru.test\r\nSubject: \r\n\r\n";

    fn run(r: &Registrar, which: EnvelopeHeader, m: &[u8]) -> Disposition {
        process(r, which, MAX, HDR, Some(m.len() as u32), m)
    }

    #[test]
    fn a_registration_is_processed_and_a_repeat_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let r = registrar(dir.path());
        assert_eq!(run(&r, EnvelopeHeader::DeliveredTo, EMPTY), Disposition::Processed);
        // The same message again (a rescan after UIDVALIDITY changed, a
        // crash before the move): the cooldown answers, no second reply.
        assert_eq!(run(&r, EnvelopeHeader::DeliveredTo, EMPTY), Disposition::Dropped("rate limit: cooldown".into()));
        assert_eq!(run(&r, EnvelopeHeader::XOriginalTo, EMPTY), Disposition::Dropped("rate limit: cooldown".into()));
    }

    #[test]
    fn the_envelope_comes_from_the_topmost_trusted_headers() {
        let env = envelope(EnvelopeHeader::XOriginalTo, EMPTY, HDR).unwrap();
        assert_eq!(env, Envelope { sender: "p@docomo.ne.jp".into(), recipient: "ans+chuo@mamoru.test".into() });
        // A sender's own Delivered-To sits below the one the MTA prepended.
        let forged = b"Return-Path: <>\nDelivered-To: <bounce+1-x@mamoru.test>\nDelivered-To: ans@mamoru.test\nReturn-Path: <a@b.c>\n\nbody";
        let env = envelope(EnvelopeHeader::DeliveredTo, forged, HDR).unwrap();
        assert_eq!(env, Envelope { sender: String::new(), recipient: "bounce+1-x@mamoru.test".into() });
        // Folded and spaced values.
        let folded = b"Delivered-To:\r\n  ans@mamoru.test \r\nReturn-Path:  < p@x.jp >\r\n\r\n";
        assert_eq!(envelope(EnvelopeHeader::DeliveredTo, folded, HDR).unwrap().sender, "p@x.jp");
    }

    #[test]
    fn without_the_envelope_headers_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let r = registrar(dir.path());
        for m in [
            &b"From: p@docomo.ne.jp\r\nSubject: \r\n\r\n"[..],
            b"Return-Path: <p@docomo.ne.jp>\r\nFrom: p@docomo.ne.jp\r\n\r\n",
            b"Delivered-To: ans@mamoru.test\r\nFrom: p@docomo.ne.jp\r\n\r\n",
            b"Return-Path: <p@docomo.ne.jp>\r\nDelivered-To: not an address\r\n\r\n",
            b"Return-Path: p@@docomo.ne.jp\r\nDelivered-To: ans@mamoru.test\r\n\r\n",
            b"",
        ] {
            assert_eq!(run(&r, EnvelopeHeader::DeliveredTo, m), Disposition::Dropped(NO_ENVELOPE.into()), "{m:?}");
        }
        // The message has Delivered-To but the configured header is absent.
        let only_delivered = b"Return-Path: <p@docomo.ne.jp>\r\nDelivered-To: ans@mamoru.test\r\n\r\n";
        assert_eq!(run(&r, EnvelopeHeader::XOriginalTo, only_delivered), Disposition::Dropped(NO_ENVELOPE.into()));
    }

    #[test]
    fn a_header_section_over_the_bound_is_no_envelope() {
        let mut m = b"Return-Path: <p@docomo.ne.jp>\r\nDelivered-To: ans@mamoru.test\r\n".to_vec();
        while m.len() <= 200 {
            m.extend_from_slice(b"X-Pad: 0123456789\r\n");
        }
        m.extend_from_slice(b"\r\n");
        assert!(envelope(EnvelopeHeader::DeliveredTo, &m, 200).is_none());
        assert!(envelope(EnvelopeHeader::DeliveredTo, &m, 1000).is_some());
    }

    #[test]
    fn mail_for_someone_else_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let r = registrar(dir.path());
        let m = b"Return-Path: <p@docomo.ne.jp>\r\nDelivered-To: info@mamoru.test\r\n\r\n";
        assert_eq!(run(&r, EnvelopeHeader::DeliveredTo, m), Disposition::Dropped(NOT_OURS.into()));
    }

    #[test]
    fn junk_is_dropped_with_the_classifiers_reason() {
        let dir = tempfile::tempdir().unwrap();
        let r = registrar(dir.path());
        let m = b"Return-Path: <>\r\nDelivered-To: ans@mamoru.test\r\nFrom: p@docomo.ne.jp\r\n\r\n";
        assert_eq!(run(&r, EnvelopeHeader::DeliveredTo, m), Disposition::Dropped("null-sender".into()));
    }

    #[test]
    fn too_big_is_decided_from_the_size_before_the_body() {
        assert_eq!(before_fetch(Some(1025), 1024), Step::Drop(Disposition::Dropped(TOO_BIG.into())));
        assert_eq!(before_fetch(Some(1024), 1024), Step::Fetch);
        assert_eq!(before_fetch(None, 1024), Step::Fetch);
        let dir = tempfile::tempdir().unwrap();
        let r = registrar(dir.path());
        // No bytes at all: the size alone decides.
        assert_eq!(process(&r, EnvelopeHeader::DeliveredTo, 1024, HDR, Some(10 << 20), b""), Disposition::Dropped(TOO_BIG.into()));
        // A server that gave no size: the bytes are measured.
        let mut big = EMPTY.to_vec();
        big.resize(2048, b'x');
        assert_eq!(process(&r, EnvelopeHeader::DeliveredTo, 1024, HDR, None, &big), Disposition::Dropped(TOO_BIG.into()));
        assert_eq!(process(&r, EnvelopeHeader::DeliveredTo, 1024, HDR, None, EMPTY), Disposition::Processed);
    }

    #[test]
    fn a_handler_crash_is_quarantined_or_transient() {
        let dir = tempfile::tempdir().unwrap();
        let r = registrar(dir.path()).with_classifier(|_, _, _| panic!("parser bug"));
        assert_eq!(run(&r, EnvelopeHeader::DeliveredTo, EMPTY), Disposition::Quarantined);
        // Nowhere to keep the copy: leave the message, retry later.
        std::fs::remove_dir_all(dir.path().join("quarantine")).unwrap();
        std::fs::write(dir.path().join("quarantine"), b"a file where the directory should be").unwrap();
        assert!(matches!(run(&r, EnvelopeHeader::DeliveredTo, EMPTY), Disposition::Transient(_)));
    }

    #[test]
    fn a_bounce_and_a_forged_bounce_take_the_lmtp_path() {
        let dir = tempfile::tempdir().unwrap();
        let r = registrar(dir.path());
        // A VERP tag that does not verify: the bounce handler's logged drop.
        let m = b"Return-Path: <>\r\nDelivered-To: bounce+1-AAAAAAAA@mamoru.test\r\nFrom: MAILER-DAEMON@x.jp\r\n\r\n";
        assert_eq!(run(&r, EnvelopeHeader::DeliveredTo, m), Disposition::Dropped("forged-bounce".into()));
    }
}
