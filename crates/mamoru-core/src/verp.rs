//! VERP return paths: each outgoing message's envelope sender names its
//! outbox row, `bounce+{id}-{tag}@DOMAIN`, so a bounce says exactly which
//! message (and so which subscriber) failed. The tag is a truncated HMAC
//! under the token key, so a forged bounce cannot suspend anyone.

use crate::OutboxId;
use crate::token::{TokenKey, constant_time_eq};

/// Local part of the bounce address before the `+`.
pub const BOUNCE_LOCAL: &str = "bounce";

const TAG_BYTES: usize = 5;

fn tag(key: &TokenKey, id: OutboxId) -> String {
    let mut data = b"verp\0".to_vec();
    data.extend_from_slice(&id.get().to_be_bytes());
    key.mac(&data).as_ref()[..TAG_BYTES].iter().map(|b| format!("{b:02x}")).collect()
}

/// `bounce+{id}-{tag}@{domain}`.
pub fn encode(key: &TokenKey, id: OutboxId, domain: &str) -> String {
    format!("{BOUNCE_LOCAL}+{id}-{}@{domain}", tag(key, id))
}

/// The outbox id of a VERP local part (`bounce+12-0a1b2c3d4e`, case-insensitive),
/// or `None` if it is not one of ours or the tag does not verify.
pub fn decode(key: &TokenKey, local_part: &str) -> Option<OutboxId> {
    let lower = local_part.to_ascii_lowercase();
    let rest = lower.strip_prefix(BOUNCE_LOCAL)?.strip_prefix('+')?;
    let (id, got) = rest.split_once('-')?;
    if id.is_empty() || id.len() > 18 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: OutboxId = id.parse().ok()?;
    constant_time_eq(tag(key, id).as_bytes(), got.as_bytes()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_forgery() {
        let key = TokenKey::new(&[5; 32]);
        let addr = encode(&key, OutboxId::new(1234), "mamoru.test");
        let local = addr.strip_suffix("@mamoru.test").unwrap();
        assert_eq!(decode(&key, local), Some(OutboxId::new(1234)));
        assert_eq!(decode(&key, &local.to_ascii_uppercase()), Some(OutboxId::new(1234)));
        assert_eq!(decode(&key, &local.replace("1234", "1235")), None);
        assert_eq!(decode(&TokenKey::new(&[6; 32]), local), None);
        for bad in ["bounce", "bounce+", "bounce+1", "bounce+-x", "bounce+x-00", "ans+1-00", "bounce+99999999999999999999-0"] {
            assert_eq!(decode(&key, bad), None, "{bad}");
        }
    }
}
