//! Adaptive shaping of one carrier pool, pure: every method takes the time
//! (seconds on the caller's clock), so tests drive it with a fake clock.
//!
//! - A token bucket at the pool's current rate admits each message.
//! - A throttle signal (421 or other 4xx, a refused or reset connection)
//!   halves the current rate (never below [`MIN_RATE_FRACTION`] of the
//!   configured one), empties the bucket, and pauses the pool for a delay that
//!   doubles with each consecutive throttle, with ±20 % jitter so pools and
//!   relays do not come back in step.
//! - After the pause the rate climbs back linearly, by [`RECOVERY_PER_SEC`]
//!   of the configured rate per second, to the configured rate.
//! - A pool without a configured rate (0 = no limit) only pauses.

use mamoru_core::rate::TokenBucket;

/// First pause after a throttle, in seconds.
pub const PAUSE_MIN_SECS: f64 = 1.0;
/// Longest pause.
pub const PAUSE_MAX_SECS: f64 = 60.0;
/// The rate never drops below this fraction of the configured rate.
pub const MIN_RATE_FRACTION: f64 = 0.1;
/// Share of the configured rate regained per second after a pause.
pub const RECOVERY_PER_SEC: f64 = 0.1;
/// Jitter spread of pauses.
const JITTER: f64 = 0.2;

#[derive(Debug, Clone)]
pub struct Shaper {
    configured: f64,
    bucket: TokenBucket,
    /// Rate right after the last throttle; recovery starts from here.
    cut_to: f64,
    paused_until: f64,
    streak: u32,
    throttles: u64,
    /// Empty the bucket at the first admission after a pause, so nothing
    /// goes out in a burst when the pool resumes.
    drain_on_resume: bool,
}

impl Shaper {
    /// `rate` of 0 means no limit.
    pub fn new(rate: f64, burst: u32, now: f64) -> Self {
        Self { configured: rate, bucket: TokenBucket::new(rate, burst, now), cut_to: rate, paused_until: now, streak: 0, throttles: 0, drain_on_resume: false }
    }

    /// The rate the pool may send at `now` (0 = no limit).
    pub fn rate_now(&self, now: f64) -> f64 {
        if self.configured <= 0.0 {
            return 0.0;
        }
        let since = (now - self.paused_until).max(0.0);
        (self.cut_to + self.configured * RECOVERY_PER_SEC * since).min(self.configured)
    }

    /// Until when the pool is paused (may be in the past).
    pub fn paused_until(&self) -> f64 {
        self.paused_until
    }

    /// Throttle signals seen so far.
    pub fn throttles(&self) -> u64 {
        self.throttles
    }

    /// May one message go now? Otherwise, how many seconds to wait.
    pub fn admit(&mut self, now: f64) -> Result<(), f64> {
        if now < self.paused_until {
            return Err(self.paused_until - now);
        }
        let rate = self.rate_now(now);
        if rate != self.bucket.rate() {
            self.bucket.set_rate(rate, now);
        }
        if self.drain_on_resume {
            self.bucket.drain(now);
            self.drain_on_resume = false;
        }
        self.bucket.take(now)
    }

    /// A message was accepted: the throttle streak is over.
    pub fn on_success(&mut self) {
        self.streak = 0;
    }

    /// The carrier pushed back. Returns the pause in seconds. `jitter` is in
    /// [-1, 1].
    pub fn on_throttle(&mut self, now: f64, jitter: f64) -> f64 {
        self.throttles += 1;
        // Several connections of one pool often see the same push-back at
        // once; only the first one within a pause counts towards the streak.
        if now < self.paused_until {
            return self.paused_until - now;
        }
        let current = self.rate_now(now);
        self.cut_to = (current * 0.5).max(self.configured * MIN_RATE_FRACTION);
        let doublings = self.streak.min(16);
        self.streak = self.streak.saturating_add(1);
        let base = (PAUSE_MIN_SECS * f64::from(1u32 << doublings)).min(PAUSE_MAX_SECS);
        let jitter = if jitter.is_finite() { jitter.clamp(-1.0, 1.0) } else { 0.0 };
        let pause = (base * (1.0 + JITTER * jitter)).min(PAUSE_MAX_SECS);
        self.paused_until = now + pause;
        self.drain_on_resume = true;
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends as fast as admitted from `from` to `to`, returns the count.
    fn drain(s: &mut Shaper, from: f64, to: f64) -> u32 {
        let (mut now, mut n) = (from, 0);
        while now < to {
            match s.admit(now) {
                Ok(()) => {
                    n += 1;
                    s.on_success();
                }
                Err(wait) => now += wait,
            }
        }
        n
    }

    #[test]
    fn holds_the_configured_rate() {
        let mut s = Shaper::new(20.0, 1, 0.0);
        let n = drain(&mut s, 0.0, 10.0);
        assert!((199..=202).contains(&n), "{n}");
    }

    #[test]
    fn throttle_pauses_cuts_and_recovers() {
        let mut s = Shaper::new(20.0, 5, 0.0);
        assert!(s.admit(0.0).is_ok());
        let pause = s.on_throttle(1.0, 0.0);
        assert_eq!(pause, 1.0);
        assert!((s.admit(1.5).expect_err("paused") - 0.5).abs() < 1e-9);
        // Right after the pause the rate is half, then climbs 2/s per second.
        assert!((s.rate_now(2.0) - 10.0).abs() < 1e-9);
        assert!((s.rate_now(4.5) - 15.0).abs() < 1e-9);
        assert!((s.rate_now(100.0) - 20.0).abs() < 1e-9);
        // No burst right after the pause: the bucket was emptied.
        assert!(s.admit(2.0).is_err());
    }

    #[test]
    fn consecutive_throttles_double_the_pause_and_success_resets() {
        let mut s = Shaper::new(10.0, 1, 0.0);
        let mut now = 0.0;
        let mut pauses = Vec::new();
        for _ in 0..8 {
            let p = s.on_throttle(now, 0.0);
            pauses.push(p);
            now += p;
        }
        assert_eq!(pauses, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]);
        // The rate floor holds.
        assert!((s.rate_now(now) - 1.0).abs() < 1e-9);
        s.on_success();
        assert_eq!(s.on_throttle(now, 0.0), 1.0);
        // Jitter moves pauses by at most a fifth, and only within the ceiling.
        assert_eq!(Shaper::new(1.0, 1, 0.0).on_throttle(0.0, 1.0), 1.2);
        assert_eq!(Shaper::new(1.0, 1, 0.0).on_throttle(0.0, -1.0), 0.8);
    }

    #[test]
    fn throttles_during_a_pause_do_not_stack() {
        let mut s = Shaper::new(10.0, 1, 0.0);
        assert_eq!(s.on_throttle(0.0, 0.0), 1.0);
        assert_eq!(s.on_throttle(0.5, 0.0), 0.5);
        assert_eq!(s.on_throttle(1.0, 0.0), 2.0);
        assert_eq!(s.throttles(), 3);
    }

    #[test]
    fn unlimited_pools_only_pause() {
        let mut s = Shaper::new(0.0, 1, 0.0);
        assert_eq!(drain(&mut s, 0.0, 0.0), 0);
        for _ in 0..1000 {
            assert!(s.admit(0.0).is_ok());
        }
        s.on_throttle(0.0, 0.0);
        assert!(s.admit(0.5).is_err());
        assert!(s.admit(1.0).is_ok());
        assert_eq!(s.rate_now(1.0), 0.0);
    }
}
