//! A token bucket, pure: the caller passes the time, so tests control the
//! clock. Used by the relay to pace each carrier pool and by the carrier
//! emulator (`mamoru-sink`) to play a carrier's limit.

/// Tokens refill at `rate` per second up to `burst`; each message takes one.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    /// Time of the last refill, in seconds on the caller's clock.
    last: f64,
}

impl TokenBucket {
    /// A full bucket at time `now`. A rate of zero or less means "no limit".
    pub fn new(rate: f64, burst: u32, now: f64) -> Self {
        let burst = f64::from(burst.max(1));
        Self { rate, burst, tokens: burst, last: now }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Changes the refill rate from `now` on (tokens already earned stay).
    pub fn set_rate(&mut self, rate: f64, now: f64) {
        self.refill(now);
        self.rate = rate;
    }

    /// Empties the bucket, so nothing goes out in a burst after a pause.
    pub fn drain(&mut self, now: f64) {
        self.refill(now);
        self.tokens = self.tokens.min(0.0);
    }

    fn refill(&mut self, now: f64) {
        if now > self.last {
            if self.rate > 0.0 {
                self.tokens = (self.tokens + (now - self.last) * self.rate).min(self.burst);
            }
            self.last = now;
        }
    }

    /// Takes a token if one is there; otherwise says how many seconds until
    /// one will be.
    pub fn take(&mut self, now: f64) -> Result<(), f64> {
        if self.rate <= 0.0 || !self.rate.is_finite() {
            return Ok(());
        }
        self.refill(now);
        // The epsilon absorbs rounding: waiting exactly the returned time
        // must yield a token, or a caller could spin on ever tinier waits.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - self.tokens) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let mut b = TokenBucket::new(10.0, 3, 100.0);
        assert!(b.take(100.0).is_ok());
        assert!(b.take(100.0).is_ok());
        assert!(b.take(100.0).is_ok());
        let wait = b.take(100.0).expect_err("empty");
        assert!((wait - 0.1).abs() < 1e-9, "{wait}");
        assert!(b.take(100.05).is_err());
        assert!(b.take(100.1).is_ok());
        // A long idle refills only up to the burst.
        for _ in 0..3 {
            assert!(b.take(1000.0).is_ok());
        }
        assert!(b.take(1000.0).is_err());
    }

    #[test]
    fn over_a_long_run_the_rate_holds() {
        let mut b = TokenBucket::new(20.0, 1, 0.0);
        let mut now = 0.0;
        let mut sent = 0;
        while now < 10.0 {
            match b.take(now) {
                Ok(()) => sent += 1,
                Err(wait) => now += wait,
            }
        }
        assert!((200..=202).contains(&sent), "{sent}");
    }

    #[test]
    fn drain_and_set_rate() {
        let mut b = TokenBucket::new(10.0, 5, 0.0);
        b.drain(0.0);
        assert!(b.take(0.0).is_err());
        b.set_rate(1.0, 0.0);
        assert!((b.take(0.0).expect_err("empty") - 1.0).abs() < 1e-9);
        // No limit.
        let mut free = TokenBucket::new(0.0, 1, 0.0);
        for _ in 0..1000 {
            assert!(free.take(0.0).is_ok());
        }
    }
}
