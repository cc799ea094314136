//! When to try a deferred message again.
//!
//! The schedule is a pure function of the attempt count; the randomness is a
//! parameter so tests pin it, and [`random_jitter`] supplies it in production.

use ring::rand::{SecureRandom, SystemRandom};

/// How far the jitter may move a delay: ±20 %, so many rows deferred by the
/// same outage do not all come back in the same second.
pub const JITTER_SPREAD: f64 = 0.2;

/// The delay in seconds before the next attempt, after `attempts` attempts
/// (counting the one that just failed, so the first retry passes 1).
///
/// The delay starts at `base_secs`, doubles with each attempt up to
/// `max_secs`, and is then moved by `jitter` (from -1.0 to 1.0) times
/// [`JITTER_SPREAD`]. The result is at least one second and never above
/// `max_secs`: the ceiling stays a ceiling, so at the top of the schedule the
/// jitter only spreads delays downwards.
pub fn retry_delay(attempts: i64, base_secs: i64, max_secs: i64, jitter: f64) -> i64 {
    let max_secs = max_secs.max(1);
    let doublings = attempts.saturating_sub(1).clamp(0, 62) as u32;
    let delay = base_secs.max(1).saturating_mul(1_i64 << doublings).min(max_secs);
    let jitter = if jitter.is_finite() { jitter.clamp(-1.0, 1.0) } else { 0.0 };
    let jittered = (delay as f64 * (1.0 + JITTER_SPREAD * jitter)).round() as i64;
    jittered.clamp(1, max_secs)
}

/// A uniformly distributed jitter in [-1.0, 1.0] from the system's random
/// source; 0.0 in the unlikely case that the source fails (a missing jitter
/// only makes retries less spread, never wrong).
pub fn random_jitter() -> f64 {
    let mut bytes = [0u8; 4];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.0;
    }
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX) * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_base_to_the_ceiling() {
        let schedule: Vec<i64> = (1..=9).map(|a| retry_delay(a, 30, 3600, 0.0)).collect();
        assert_eq!(schedule, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
    }

    #[test]
    fn jitter_moves_the_delay_by_at_most_a_fifth() {
        assert_eq!(retry_delay(1, 100, 3600, -1.0), 80);
        assert_eq!(retry_delay(1, 100, 3600, 1.0), 120);
        assert_eq!(retry_delay(2, 100, 3600, 0.5), 220);
        // Out-of-range or broken jitter is clamped, not trusted.
        assert_eq!(retry_delay(1, 100, 3600, 7.0), 120);
        assert_eq!(retry_delay(1, 100, 3600, f64::NAN), 100);
    }

    #[test]
    fn the_ceiling_holds_with_jitter() {
        assert_eq!(retry_delay(20, 30, 3600, 1.0), 3600);
        assert_eq!(retry_delay(20, 30, 3600, -1.0), 2880);
    }

    #[test]
    fn never_less_than_a_second_and_no_overflow() {
        assert_eq!(retry_delay(1, 1, 3600, -1.0), 1);
        assert_eq!(retry_delay(0, 1, 3600, 0.0), 1);
        assert_eq!(retry_delay(i64::MAX, 30, 3600, 0.0), 3600);
        assert_eq!(retry_delay(i64::MIN, 30, 3600, 0.0), 30);
        assert_eq!(retry_delay(100, i64::MAX, i64::MAX, 1.0), i64::MAX);
    }

    #[test]
    fn random_jitter_stays_in_range() {
        for _ in 0..1000 {
            let j = random_jitter();
            assert!((-1.0..=1.0).contains(&j), "{j}");
        }
    }
}
