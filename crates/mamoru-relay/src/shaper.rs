//! The learned limits of one carrier pool, pure: every method takes the
//! time (seconds on the caller's clock), so tests drive it with a fake
//! clock. [`Shaper`] admits each message at the learned pace (a token
//! bucket) and reacts to "too fast"; [`SessionCap`] grants sessions under
//! the learned connection cap and reacts to "too many sessions"; [`drift`]
//! says where stored limits stand when a relay starts again.
//!
//! The rules (marks, approach, firm levels, probing, drift) and their
//! invariant are told once, in docs/ARCHITECTURE.md, `mamoru-relay`,
//! "Learning the carriers' limits"; the constants below are their numbers.

use std::collections::VecDeque;

use mamoru_core::rate::TokenBucket;

/// First pause after a throttle, in seconds.
pub const PAUSE_MIN_SECS: f64 = 1.0;
/// Longest pause.
pub const PAUSE_MAX_SECS: f64 = 60.0;
/// The rate never drops below this fraction of the configured rate.
pub const MIN_RATE_FRACTION: f64 = 0.1;
/// Share of the configured rate regained per second after a pause.
pub const RECOVERY_PER_SEC: f64 = 0.1;
/// After a push-back the pace climbs back to this share of its mark, and
/// stays there once the mark is firm (pushed back twice).
pub const KNEE: f64 = 0.9;
/// A mark pushed back once is approached again, one probe step per clean
/// period, up to this share of it: just under the level, never at it.
pub const APPROACH: f64 = 0.975;
/// Each upward probe of the pace raises it by this share.
pub const PROBE_STEP: f64 = 0.05;
/// Two pace push-backs within this share of each other are "near the same level".
pub const NEAR: f64 = 0.15;
/// The delivered rate is measured over this many seconds.
const WINDOW_SECS: f64 = 3.0;
/// Shorter measurements than this are not trusted.
const WINDOW_MIN_SECS: f64 = 0.5;
/// Success times kept at most (a bound for unlimited pools).
const WINDOW_MAX: usize = 4096;
/// Jitter spread of pauses.
const JITTER: f64 = 0.2;

/// How the learned limits move (`[relay] learn_probe_secs`,
/// `learn_drift_secs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Learning {
    /// Seconds without a push-back before a limit probes one step upward.
    pub probe_secs: f64,
    /// Seconds after the last push-back near a mark during which the pool
    /// stays below it; then the mark is forgotten.
    pub drift_secs: f64,
}

impl Default for Learning {
    fn default() -> Self {
        Self { probe_secs: 60.0, drift_secs: 86_400.0 }
    }
}

/// Where a carrier pushed back: the level, how often near it, and when last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mark {
    pub level: f64,
    pub hits: u32,
    pub at: f64,
}

impl Mark {
    /// The drift period since the last push-back near this level has not
    /// passed: the pool stays below it.
    pub fn holds(&self, now: f64, learning: &Learning) -> bool {
        now - self.at < learning.drift_secs
    }

    /// Pushed back twice or more near this level: the carrier's limit is
    /// here, and the pool holds at [`KNEE`] of it. A level that pushed back
    /// once may have been a fluke (a burst after a stall, a session the
    /// carrier had not seen end), so the pool approaches it again.
    pub fn is_firm(&self) -> bool {
        self.hits >= 2
    }

    /// The highest pace the pool probes to while this mark holds: [`KNEE`]
    /// of a firm mark, [`APPROACH`] of one pushed back once; both below it.
    pub fn hold_level(&self) -> f64 {
        self.level * if self.is_firm() { KNEE } else { APPROACH }
    }
}

/// One pool's learned limits as kept across restarts, with times on the
/// caller's clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Saved {
    pub cap: u32,
    pub pace: f64,
    pub sessions_mark: Option<Mark>,
    pub pace_mark: Option<Mark>,
    /// When these values were current (last written).
    pub at: f64,
}

/// Where saved learned limits stand at `now`, under the ceilings the pool
/// has now (`pace_ceiling` 0 = no limit). A limit whose mark still holds
/// stays where it was learned; once the drift period after its last
/// push-back has passed, the mark is forgotten and the limit climbs one
/// step per `probe_secs` since then (or since it was saved, if later), as a
/// running pool would have probed. Pure.
pub fn drift(saved: Saved, cap_ceiling: u32, pace_ceiling: f64, learning: &Learning, now: f64) -> Saved {
    let cap_ceiling = cap_ceiling.max(1);
    let probe = learning.probe_secs.max(1.0);
    // Clean probe periods since `start`.
    let steps = |mark: Option<Mark>| -> (Option<Mark>, f64) {
        match mark {
            Some(m) if m.holds(now, learning) => (Some(m), 0.0),
            Some(m) => (None, ((now - (m.at + learning.drift_secs).max(saved.at)) / probe).floor().max(0.0)),
            None => (None, ((now - saved.at) / probe).floor().max(0.0)),
        }
    };
    let (sessions_mark, cap_steps) = steps(saved.sessions_mark);
    let cap = (f64::from(saved.cap.max(1)) + cap_steps).min(f64::from(cap_ceiling)) as u32;
    let (pace_mark, pace_steps) = steps(saved.pace_mark);
    let pace = if pace_ceiling <= 0.0 {
        0.0
    } else if saved.pace <= 0.0 {
        pace_ceiling
    } else {
        // Bounded: past this many steps every pace is at its ceiling.
        let factor = (1.0 + PROBE_STEP).powf(pace_steps.min(10_000.0));
        (saved.pace.max(pace_ceiling * MIN_RATE_FRACTION) * factor).min(pace_ceiling)
    };
    Saved { cap, pace, sessions_mark, pace_mark, at: now }
}

#[derive(Debug, Clone)]
pub struct Shaper {
    configured: f64,
    learning: Learning,
    bucket: TokenBucket,
    /// The learned pace: the rate the pool climbs back to (≤ configured).
    target: f64,
    /// Rate right after the last throttle; recovery starts from here.
    cut_to: f64,
    paused_until: f64,
    /// The last push-back or upward probe: the clean period counts from here.
    last_change: f64,
    /// When the learned pace last changed: a push-back a whole probe period
    /// later came at a level the pool had held cleanly.
    level_since: f64,
    mark: Option<Mark>,
    /// Times of recent accepted messages, for the delivered rate.
    recent: VecDeque<f64>,
    streak: u32,
    throttles: u64,
    /// Empty the bucket at the first admission after a pause, so nothing
    /// goes out in a burst when the pool resumes.
    drain_on_resume: bool,
    /// The learned pace last reported by [`Shaper::pace_changed`].
    reported: f64,
}

impl Shaper {
    /// `rate` of 0 means no limit.
    pub fn new(rate: f64, burst: u32, now: f64) -> Self {
        Self::learning(rate, burst, Learning::default(), now)
    }

    pub fn learning(rate: f64, burst: u32, learning: Learning, now: f64) -> Self {
        Self {
            configured: rate,
            learning,
            bucket: TokenBucket::new(rate, burst, now),
            target: rate,
            cut_to: rate,
            paused_until: now,
            last_change: now,
            level_since: now,
            mark: None,
            recent: VecDeque::new(),
            streak: 0,
            throttles: 0,
            drain_on_resume: false,
            reported: rate,
        }
    }

    /// Starts from limits learned before (see [`drift`]): the learned pace
    /// (kept under the ceiling) and its mark. The bucket starts empty, as
    /// after a pause: the carrier may still be counting what the previous
    /// relay sent a moment ago, and a burst at start would push back.
    pub fn restore(&mut self, pace: f64, mark: Option<Mark>, now: f64) {
        if self.configured <= 0.0 {
            return;
        }
        self.drain_on_resume = true;
        let floor = self.configured * MIN_RATE_FRACTION;
        self.target = pace.clamp(floor, self.configured);
        self.cut_to = self.target;
        self.reported = self.target;
        self.mark = mark;
        self.last_change = now;
        self.level_since = now;
        self.bucket.set_rate(self.target, now);
    }

    /// The rate the pool may send at `now` (0 = no limit).
    pub fn rate_now(&self, now: f64) -> f64 {
        if self.configured <= 0.0 {
            return 0.0;
        }
        let since = (now - self.paused_until).max(0.0);
        (self.cut_to + self.configured * RECOVERY_PER_SEC * since).min(self.target)
    }

    /// The learned pace (the configured rate until a push-back; 0 = no limit).
    pub fn learned_pace(&self) -> f64 {
        self.target
    }

    /// The configured rate: the ceiling of the learned pace.
    pub fn ceiling(&self) -> f64 {
        self.configured
    }

    /// The last push-back's mark, if any.
    pub fn mark(&self) -> Option<Mark> {
        self.mark
    }

    /// Until when the pool is paused (may be in the past).
    pub fn paused_until(&self) -> f64 {
        self.paused_until
    }

    /// Throttle signals seen so far.
    pub fn throttles(&self) -> u64 {
        self.throttles
    }

    /// The learned pace, once each time it changed since the last call.
    pub fn pace_changed(&mut self) -> Option<f64> {
        (self.target != self.reported).then(|| {
            self.reported = self.target;
            self.target
        })
    }

    /// May one message go now? Otherwise, how many seconds to wait.
    pub fn admit(&mut self, now: f64) -> Result<(), f64> {
        if now < self.paused_until {
            return Err(self.paused_until - now);
        }
        self.probe(now);
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

    /// After a clean period at the learned pace, one step up, unless a
    /// mark still holds it below.
    fn probe(&mut self, now: f64) {
        if self.configured <= 0.0 || self.target >= self.configured || now - self.last_change < self.learning.probe_secs {
            return;
        }
        if self.rate_now(now) < self.target {
            // Still climbing back: not a clean period at the pace yet.
            return;
        }
        let limit = match self.mark {
            Some(m) if m.holds(now, &self.learning) => m.hold_level(),
            _ => self.configured,
        };
        if self.target < limit {
            self.target = (self.target * (1.0 + PROBE_STEP)).min(limit).min(self.configured);
            self.level_since = now;
        }
        self.last_change = now;
    }

    /// The carrier answered a message without pushing back: it accepted
    /// it, or refused it for good (an unknown user). The throttle streak is
    /// over, and the message counts towards the delivered rate: it took
    /// one of the shaper's admissions as much as an accepted one did, so
    /// the rate a push-back marks is in the shaper's own units.
    pub fn on_success(&mut self, now: f64) {
        self.streak = 0;
        self.recent.push_back(now);
        while self.recent.len() > WINDOW_MAX || self.recent.front().is_some_and(|&t| t <= now - WINDOW_SECS) {
            self.recent.pop_front();
        }
    }

    /// The rate delivered over the last seconds since the last pause, if
    /// measured long enough to mean something.
    fn delivered_rate(&self, now: f64) -> Option<f64> {
        let from = (now - WINDOW_SECS).max(self.paused_until);
        let mut times = self.recent.iter().filter(|&&t| t > from && t <= now);
        let first = *times.next()?;
        let n = 1 + times.count();
        // Measured from the first message in the window: an idle stretch
        // before it says nothing about the carrier. `now` is when the next
        // message went (the one pushed back), so the span holds `n`
        // intervals, not `n - 1`: counting one less would mark a pool
        // sending evenly at r at r·(n-1)/n, a quarter low for four messages.
        let span = now - first;
        if n < 4 || span < WINDOW_MIN_SECS {
            return None;
        }
        Some(n as f64 / span)
    }

    /// The carrier refused the pool's only session (or every session, with
    /// the cap at 1): too many sessions, counted over more than this pool
    /// (another sender, or sessions the carrier has not seen end yet). The
    /// pool pauses as after a push-back, with the same doubling pauses, but
    /// its learned pace and mark stay: nothing said it went too fast.
    /// Returns the pause in seconds; `jitter` is in [-1, 1].
    pub fn on_refused_alone(&mut self, now: f64, jitter: f64) -> f64 {
        self.throttles += 1;
        if now < self.paused_until {
            return self.paused_until - now;
        }
        self.pause(now, jitter)
    }

    fn pause(&mut self, now: f64, jitter: f64) -> f64 {
        let doublings = self.streak.min(16);
        self.streak = self.streak.saturating_add(1);
        let base = (PAUSE_MIN_SECS * f64::from(1u32 << doublings)).min(PAUSE_MAX_SECS);
        let jitter = if jitter.is_finite() { jitter.clamp(-1.0, 1.0) } else { 0.0 };
        let pause = (base * (1.0 + JITTER * jitter)).min(PAUSE_MAX_SECS);
        self.paused_until = now + pause;
        self.drain_on_resume = true;
        pause
    }

    /// The carrier pushed back on the pace. Returns the pause in seconds.
    /// `jitter` is in [-1, 1].
    pub fn on_throttle(&mut self, now: f64, jitter: f64) -> f64 {
        self.throttles += 1;
        // Several connections of one pool often see the same push-back at
        // once; only the first one within a pause counts towards the streak.
        if now < self.paused_until {
            return self.paused_until - now;
        }
        let current = self.rate_now(now);
        if self.configured > 0.0 {
            let floor = self.configured * MIN_RATE_FRACTION;
            let level = self.delivered_rate(now).map_or(current, |d| d.min(current)).max(floor);
            // A carrier with a real limit pushes back soon after the pool
            // goes over it. A push-back at a pace the pool had held for a
            // whole clean probe period says nothing more than "stay below
            // this level": it starts a new mark, approached again, rather
            // than confirming the old one and ratcheting the pool down a
            // tenth at each such fluke.
            let held = now - self.level_since >= self.learning.probe_secs;
            self.mark = Some(match self.mark {
                Some(m) if !held && (level - m.level).abs() <= NEAR * m.level => {
                    Mark { level: level.min(m.level), hits: m.hits.saturating_add(1), at: now }
                }
                _ => Mark { level, hits: 1, at: now },
            });
            self.target = (level * KNEE).max(floor).min(self.configured);
            self.cut_to = (current * 0.5).max(floor).min(self.target);
            self.level_since = now;
        }
        self.last_change = now;
        self.pause(now, jitter)
    }
}

/// The learned connection cap of one pool and the sessions it grants.
/// Pure: time is a parameter.
#[derive(Debug, Clone)]
pub struct SessionCap {
    ceiling: u32,
    learning: Learning,
    cap: u32,
    /// Sessions granted (a worker holds one from taking a message until it
    /// closes its connection).
    held: u32,
    last_change: f64,
    /// The session count that was refused.
    mark: Option<Mark>,
    refusals: u64,
    reported: u32,
}

impl SessionCap {
    pub fn new(ceiling: u32, learning: Learning, now: f64) -> Self {
        let ceiling = ceiling.max(1);
        Self { ceiling, learning, cap: ceiling, held: 0, last_change: now, mark: None, refusals: 0, reported: ceiling }
    }

    /// Starts from a cap learned before (see [`drift`]), kept between 1
    /// and the ceiling, and its mark.
    pub fn restore(&mut self, cap: u32, mark: Option<Mark>, now: f64) {
        self.cap = cap.clamp(1, self.ceiling);
        self.reported = self.cap;
        self.mark = mark;
        self.last_change = now;
    }

    /// The learned cap.
    pub fn cap(&self) -> u32 {
        self.cap
    }

    /// The configured `max_connections`.
    pub fn ceiling(&self) -> u32 {
        self.ceiling
    }

    /// Sessions granted now.
    pub fn held(&self) -> u32 {
        self.held
    }

    /// Refusals seen so far.
    pub fn refusals(&self) -> u64 {
        self.refusals
    }

    /// The last refusal's mark, if any (its level is the session count
    /// that was refused).
    pub fn mark(&self) -> Option<Mark> {
        self.mark
    }

    /// The learned cap, once each time it changed since the last call.
    pub fn cap_changed(&mut self) -> Option<u32> {
        (self.cap != self.reported).then(|| {
            self.reported = self.cap;
            self.cap
        })
    }

    /// One more session, if the learned cap allows it.
    pub fn take(&mut self, now: f64) -> bool {
        self.probe(now);
        if self.held < self.cap {
            self.held += 1;
            true
        } else {
            false
        }
    }

    /// A session given back (its connection is closed).
    pub fn release(&mut self) {
        self.held = self.held.saturating_sub(1);
    }

    /// More sessions are held than the learned cap allows: one holder
    /// should give its session back.
    pub fn over(&self) -> bool {
        self.held > self.cap
    }

    /// After a clean period, one session more, unless a mark still holds
    /// the cap below it.
    fn probe(&mut self, now: f64) {
        if self.cap >= self.ceiling || now - self.last_change < self.learning.probe_secs {
            return;
        }
        let limit = match self.mark {
            Some(m) if m.holds(now, &self.learning) => (m.level as u32).saturating_sub(1).max(1),
            _ => self.ceiling,
        };
        if self.cap < limit {
            self.cap += 1;
        }
        self.last_change = now;
    }

    /// The carrier refused a session while the caller held one of the
    /// granted sessions. Lowers the cap and returns true when other
    /// sessions were open (one session too many); returns false when the
    /// refused one was alone or the cap is 1 already: then the carrier
    /// refuses the pool as such, and the caller pauses it instead.
    pub fn on_refusal(&mut self, now: f64) -> bool {
        self.refusals += 1;
        let others = self.held.saturating_sub(1);
        if others == 0 || self.cap <= 1 {
            return false;
        }
        let level = f64::from(others + 1);
        self.mark = Some(match self.mark {
            Some(m) if m.level == level => {
                Mark { level, hits: m.hits.saturating_add(1), at: now }
            }
            _ => Mark { level, hits: 1, at: now },
        });
        self.cap = (self.cap - 1).min(others).max(1);
        self.last_change = now;
        true
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
                    s.on_success(now);
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
        let mut s = Shaper::learning(20.0, 5, Learning { probe_secs: 60.0, drift_secs: 120.0 }, 0.0);
        assert!(s.admit(0.0).is_ok());
        let pause = s.on_throttle(1.0, 0.0);
        assert_eq!(pause, 1.0);
        assert!((s.admit(1.5).expect_err("paused") - 0.5).abs() < 1e-9);
        // Right after the pause the rate is half, then climbs 2/s per second.
        assert!((s.rate_now(2.0) - 10.0).abs() < 1e-9);
        assert!((s.rate_now(4.5) - 15.0).abs() < 1e-9);
        // It climbs to just under the level that pushed back, not above.
        assert!((s.rate_now(100.0) - 18.0).abs() < 1e-9);
        // No burst right after the pause: the bucket was emptied.
        assert!(s.admit(2.0).is_err());
        assert_eq!(s.pace_changed(), Some(18.0));
        assert_eq!(s.pace_changed(), None);
        // Below the mark until the drift period after the push-back has
        // passed: after a clean period one step towards it (it pushed back
        // once), never to it; then one step up per clean period, never
        // over the ceiling.
        drain(&mut s, 2.0, 60.9);
        assert!((s.learned_pace() - 18.0).abs() < 1e-9);
        drain(&mut s, 60.9, 120.9);
        assert!((s.learned_pace() - 18.9).abs() < 1e-9, "{}", s.learned_pace());
        drain(&mut s, 120.9, 121.2);
        assert!((s.learned_pace() - 18.9 * 1.05).abs() < 1e-9, "{}", s.learned_pace());
        drain(&mut s, 121.2, 400.0);
        assert_eq!(s.learned_pace(), 20.0);
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
        s.on_success(now);
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

    /// A carrier whose pace follows `table` (from this time on, this many
    /// messages per second; bucket of `burst`), and a pool sending to it as
    /// fast as its shaper admits until `until`. Returns the push-back times
    /// and the delivery times. The carrier is honest: its limit is the
    /// table's, unknown to the shaper.
    fn against(s: &mut Shaper, table: &[(f64, f64)], burst: u32, until: f64) -> (Vec<f64>, Vec<f64>) {
        against_with_flukes(s, table, burst, until, &[])
    }

    /// As [`against`], and the carrier also pushes back the first message
    /// at or after each time in `flukes`, whatever the pace: a fluke (a
    /// burst after a stall on a loaded machine, a session it had not seen
    /// end). Checks the invariant all along: never over the ceiling, and
    /// after a push-back below the level it marked until the drift period
    /// has passed.
    fn against_with_flukes(s: &mut Shaper, table: &[(f64, f64)], burst: u32, until: f64, flukes: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let limit_at = |t: f64| table.iter().rev().find(|(from, _)| *from <= t).map_or(table[0].1, |&(_, r)| r);
        let drift = s.learning.drift_secs;
        let mut carrier = TokenBucket::new(limit_at(0.0), burst, 0.0);
        let (mut now, mut pushed, mut delivered) = (0.0, Vec::new(), Vec::new());
        let mut flukes = flukes.iter().copied().peekable();
        // (time, level) of each push-back's mark.
        let mut marks: Vec<(f64, f64)> = Vec::new();
        while now < until {
            if carrier.rate() != limit_at(now) {
                carrier.set_rate(limit_at(now), now);
            }
            match s.admit(now) {
                Ok(()) if flukes.next_if(|&f| f <= now).is_none() && carrier.take(now).is_ok() => {
                    s.on_success(now);
                    delivered.push(now);
                }
                Ok(()) => {
                    pushed.push(now);
                    s.on_throttle(now, 0.0);
                    marks.push((now, s.mark().expect("a push-back marks its level").level));
                }
                Err(wait) => now += wait.max(1e-6),
            }
            let rate = s.rate_now(now);
            assert!(rate <= s.ceiling() + 1e-9, "over the ceiling at {now}");
            for &(at, level) in marks.iter().filter(|(at, _)| now - at < drift) {
                assert!(rate < level, "at {now}: {rate} not below the level {level} pushed back at {at}");
            }
        }
        (pushed, delivered)
    }

    fn count_in(times: &[f64], from: f64, to: f64) -> usize {
        times.iter().filter(|&&t| t >= from && t < to).count()
    }

    #[test]
    fn a_carrier_at_half_the_ceiling_is_learned_and_held_just_under() {
        let learning = Learning { probe_secs: 10.0, drift_secs: 86_400.0 };
        let mut s = Shaper::learning(20.0, 2, learning, 0.0);
        let (pushed, delivered) = against(&mut s, &[(0.0, 10.0)], 5, 300.0);
        // A few push-backs while it learns, then none: it settled instead
        // of climbing back into the limit again and again.
        assert!(pushed.len() <= 4, "{pushed:?}");
        assert_eq!(count_in(&pushed, 60.0, 300.0), 0, "{pushed:?}");
        let pace = s.learned_pace();
        assert!((8.5..=10.0).contains(&pace), "{pace}");
        assert!(s.mark().is_some_and(|m| m.hits >= 2), "{:?}", s.mark());
        // Just under the carrier's pace, for the whole rest of the run.
        let late = count_in(&delivered, 100.0, 300.0) as f64 / 200.0;
        assert!((8.5..=10.0).contains(&late), "{late}");
    }

    #[test]
    fn a_carrier_that_tightens_and_loosens_is_followed_within_the_drift() {
        let learning = Learning { probe_secs: 5.0, drift_secs: 60.0 };
        let mut s = Shaper::learning(20.0, 2, learning, 0.0);
        let table = [(0.0, 16.0), (100.0, 8.0), (250.0, 16.0)];
        let (pushed, delivered) = against(&mut s, &table, 5, 600.0);
        // Settled under 16, then under 8 after it tightened.
        let before = count_in(&delivered, 50.0, 100.0) as f64 / 50.0;
        assert!((13.0..=16.0).contains(&before), "{before}");
        let tight = count_in(&delivered, 150.0, 250.0) as f64 / 100.0;
        assert!((6.5..=8.0).contains(&tight), "{tight}");
        // While the mark holds (its drift period not passed since the
        // last push-back) no probe goes over it.
        let firm_since = pushed.iter().copied().rfind(|&t| t < 150.0).unwrap_or(0.0);
        assert!(firm_since > 100.0, "{pushed:?}");
        assert_eq!(count_in(&pushed, firm_since + 0.001, firm_since + 60.0), 0, "{pushed:?}");
        // Once it loosened and the mark drifted away, probing step by step
        // brings the pool back near 16; then one push-back per drift period
        // (near the old level, which holds it again).
        let end = count_in(&delivered, 550.0, 600.0) as f64 / 50.0;
        assert!((12.0..=16.0).contains(&end), "{end} {pushed:?}");
        assert!(count_in(&pushed, 400.0, 600.0) <= 3, "{pushed:?}");
    }

    #[test]
    fn a_level_pushed_back_once_is_approached_again_to_just_under_it() {
        let learning = Learning { probe_secs: 10.0, drift_secs: 1000.0 };
        let mut s = Shaper::learning(10.0, 1, learning, 0.0);
        drain(&mut s, 0.0, 5.0);
        // Pushed back at the full 10 msg/s: down to 90 % of it...
        s.on_throttle(5.0, 0.0);
        assert_eq!(s.mark().map(|m| (m.hits, m.is_firm())), Some((1, false)));
        // The level is the pace it was sending at, measured from what it
        // delivered, not a message short.
        assert!((9.9..=10.0).contains(&s.mark().expect("marked").level), "{:?}", s.mark());
        let level = s.mark().expect("marked").level;
        drain(&mut s, 5.0, 14.0);
        assert!((s.learned_pace() - KNEE * level).abs() < 1e-9, "{}", s.learned_pace());
        // ...then, after clean periods, one step at a time back towards
        // the level, to just under it and never at it.
        drain(&mut s, 14.0, 20.0);
        assert!((s.learned_pace() - KNEE * level * (1.0 + PROBE_STEP)).abs() < 1e-9, "{}", s.learned_pace());
        drain(&mut s, 20.0, 26.0);
        assert!((s.learned_pace() - APPROACH * level).abs() < 1e-9, "{} of {level}", s.learned_pace());
        drain(&mut s, 26.0, 100.0);
        assert!((s.learned_pace() - APPROACH * level).abs() < 1e-9, "{} of {level}", s.learned_pace());
        // A push-back at the level it had held for a whole clean period
        // confirms nothing: a new mark there, approached again.
        s.on_throttle(100.0, 0.0);
        let again = s.mark().expect("marked");
        assert!(!again.is_firm() && again.level < level, "{again:?}");
        drain(&mut s, 100.0, 900.0);
        assert!((s.learned_pace() - APPROACH * again.level).abs() < 1e-9, "{} of {again:?}", s.learned_pace());
    }

    #[test]
    fn two_push_backs_near_one_level_make_it_firm() {
        let learning = Learning { probe_secs: 10.0, drift_secs: 1000.0 };
        let mut s = Shaper::learning(10.0, 1, learning, 0.0);
        drain(&mut s, 0.0, 5.0);
        s.on_throttle(5.0, 0.0);
        let level = s.mark().expect("marked").level;
        // Climbing back and probing, it is pushed back again near the level.
        drain(&mut s, 5.0, 26.0);
        s.on_throttle(26.0, 0.0);
        let firm = s.mark().expect("marked");
        assert!(firm.is_firm() && firm.level <= level, "{firm:?}");
        drain(&mut s, 26.0, 900.0);
        assert!((s.learned_pace() - KNEE * firm.level).abs() < 1e-9, "{} of {firm:?}", s.learned_pace());
        // Once the drift period has passed it probes up to the ceiling.
        drain(&mut s, 900.0, 1400.0);
        assert_eq!(s.learned_pace(), 10.0);
    }

    #[test]
    fn a_fluke_at_a_level_held_cleanly_costs_a_step_not_a_tenth() {
        // An honest carrier at 10 msg/s, and three push-backs that have
        // nothing to do with the pace, a long while after the pool settled.
        let learning = Learning { probe_secs: 10.0, drift_secs: 86_400.0 };
        let mut s = Shaper::learning(20.0, 2, learning, 0.0);
        let (pushed, delivered) = against_with_flukes(&mut s, &[(0.0, 10.0)], 5, 900.0, &[200.0, 400.0, 600.0]);
        let settled = count_in(&delivered, 100.0, 200.0) as f64 / 100.0;
        assert!((8.5..=10.0).contains(&settled), "{settled} {pushed:?}");
        // Each fluke costs the pool a step under the level it came at, and
        // the pool approaches that level again; it is not ratcheted down a
        // tenth each time (three tenths would leave it near 6.6).
        let end = count_in(&delivered, 750.0, 900.0) as f64 / 150.0;
        assert!(end >= 0.9 * settled, "{end} after {settled}; {pushed:?}");
        // Besides the flukes, no push-back after it settled.
        assert_eq!(count_in(&pushed, 100.0, 900.0), 3, "{pushed:?}");
    }

    /// A carrier accepting at most `table`'s sessions at a time, and a pool
    /// of `ceiling` workers, each trying for a session every second and
    /// keeping it once open. Returns the refusals' times and the sessions
    /// open at each second.
    fn sessions_against(cap: &mut SessionCap, table: &[(f64, u32)], until: u32) -> (Vec<f64>, Vec<u32>) {
        let limit_at = |t: f64| table.iter().rev().find(|(from, _)| *from <= t).map_or(table[0].1, |&(_, n)| n);
        let (mut open, mut refused, mut seen) = (0u32, Vec::new(), Vec::new());
        for sec in 0..until {
            let now = f64::from(sec);
            // A lowered cap: holders over it give their session back.
            while cap.over() {
                cap.release();
                open -= 1;
            }
            // The carrier closes sessions over its limit (they end between
            // messages, as real ones do).
            while open > limit_at(now) {
                cap.release();
                open -= 1;
            }
            for _ in 0..cap.ceiling() {
                if cap.held() >= cap.ceiling() || !cap.take(now) {
                    break;
                }
                if open < limit_at(now) {
                    open += 1;
                } else {
                    refused.push(now);
                    cap.on_refusal(now);
                    cap.release();
                }
            }
            assert!(cap.cap() <= cap.ceiling() && cap.held() <= cap.ceiling());
            seen.push(open);
        }
        (refused, seen)
    }

    #[test]
    fn a_carrier_taking_one_session_of_two_costs_one_refusal_per_drift_period() {
        let mut cap = SessionCap::new(2, Learning { probe_secs: 60.0, drift_secs: 86_400.0 }, 0.0);
        let (refused, seen) = sessions_against(&mut cap, &[(0.0, 1)], 3600);
        // Refused once at the start, and held below the refused count.
        assert_eq!(refused, [0.0]);
        assert_eq!(cap.cap(), 1);
        assert!(cap.mark().is_some_and(|m| m.hits == 1 && m.level == 2.0), "{:?}", cap.mark());
        // The working session was never lost.
        assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
    }

    #[test]
    fn a_learned_cap_comes_back_after_the_drift_but_never_over_the_ceiling() {
        let mut cap = SessionCap::new(4, Learning { probe_secs: 10.0, drift_secs: 300.0 }, 0.0);
        let (refused, seen) = sessions_against(&mut cap, &[(0.0, 2), (200.0, 6)], 1000);
        // Learned 2 quickly, and held there until the drift period passed.
        assert!(refused.len() <= 3, "{refused:?}");
        assert_eq!(seen[100], 2);
        // Later the carrier takes 6: after the drift the pool probes up,
        // but only to its ceiling of 4.
        assert_eq!(seen[999], 4);
        assert_eq!(cap.cap(), 4);
    }

    #[test]
    fn a_refusal_of_a_lone_session_is_not_a_cap() {
        let mut cap = SessionCap::new(3, Learning::default(), 0.0);
        assert!(cap.take(0.0));
        assert!(!cap.on_refusal(0.0), "alone: the carrier refuses the pool, not one session more");
        assert_eq!(cap.cap(), 3);
        assert!(cap.take(0.0) && cap.take(0.0));
        // Two others open: the cap goes to what was open, not below 1.
        assert!(cap.on_refusal(1.0));
        assert_eq!((cap.cap(), cap.cap_changed(), cap.cap_changed()), (2, Some(2), None));
        assert!(cap.over(), "until the refused one gives its session back");
        cap.release();
        assert!(!cap.over());
        assert!(cap.on_refusal(2.0));
        assert_eq!(cap.cap(), 1);
        assert!(!cap.on_refusal(3.0), "never below 1");
        assert_eq!(cap.cap(), 1);
    }

    #[test]
    fn a_lone_refused_session_pauses_without_touching_the_pace() {
        let mut s = Shaper::new(20.0, 5, 0.0);
        assert_eq!(s.on_refused_alone(1.0, 0.0), 1.0);
        assert!(s.admit(1.5).is_err(), "paused");
        assert_eq!(s.on_refused_alone(2.0, 0.0), 2.0, "pauses double as for a push-back");
        assert_eq!((s.learned_pace(), s.mark(), s.pace_changed()), (20.0, None, None));
        assert_eq!(s.rate_now(4.0), 20.0);
        assert_eq!(s.throttles(), 2);
    }

    #[test]
    fn saved_limits_hold_during_the_drift_and_then_climb_step_by_step() {
        let learning = Learning { probe_secs: 60.0, drift_secs: 3600.0 };
        let mark = |level, at| Some(Mark { level, hits: 2, at });
        let saved = Saved { cap: 1, pace: 4.5, sessions_mark: mark(2.0, 100.0), pace_mark: mark(5.0, 1000.0), at: 1000.0 };
        // A restart an hour later minus a second: still held, marks kept.
        let d = drift(saved, 2, 10.0, &learning, 3699.0);
        assert_eq!((d.cap, d.pace, d.sessions_mark, d.pace_mark), (1, 4.5, saved.sessions_mark, saved.pace_mark));
        // The session mark's period ended at 3700, the pace mark's at 4600.
        let d = drift(saved, 2, 10.0, &learning, 4599.0);
        assert_eq!((d.cap, d.sessions_mark, d.pace, d.pace_mark), (2, None, 4.5, saved.pace_mark));
        // Three clean probe periods after the pace mark's: three steps.
        let d = drift(saved, 2, 10.0, &learning, 4600.0 + 3.0 * 60.0 + 1.0);
        assert!((d.pace - 4.5 * 1.05f64.powi(3)).abs() < 1e-9, "{d:?}");
        assert_eq!(d.pace_mark, None);
        // A day later: back at the ceilings, never above; new ceilings apply.
        let d = drift(saved, 2, 10.0, &learning, 90_000.0);
        assert_eq!((d.cap, d.pace), (2, 10.0));
        let d = drift(saved, 1, 3.0, &learning, 1001.0);
        assert_eq!((d.cap, d.pace), (1, 3.0));
        assert_eq!(drift(saved, 2, 0.0, &learning, 1001.0).pace, 0.0, "no limit");
        // Restored, a pool holds below the marks as if it had never stopped.
        let d = drift(saved, 4, 10.0, &learning, 2000.0);
        let mut s = Shaper::learning(10.0, 2, learning, 2000.0);
        s.restore(d.pace, d.pace_mark, 2000.0);
        let mut c = SessionCap::new(4, learning, 2000.0);
        c.restore(d.cap, d.sessions_mark, 2000.0);
        assert_eq!((s.learned_pace(), s.pace_changed(), c.cap(), c.cap_changed()), (4.5, None, 1, None));
        drain(&mut s, 2000.0, 4000.0);
        assert_eq!(s.learned_pace(), 4.5);
        for t in [2000.0, 2500.0, 3000.0, 3500.0] {
            assert!(c.take(t), "one session");
            assert!(!c.take(t), "only one, until the mark's period passed");
            c.release();
        }
        assert!(c.take(3800.0) && c.take(3800.0), "then one more per clean period");
    }

    #[test]
    fn a_restored_pool_starts_at_its_pace_without_a_burst() {
        let mut s = Shaper::learning(10.0, 5, Learning::default(), 0.0);
        s.restore(4.0, None, 0.0);
        // At 4 msg/s: the message at 0.25 s, the next at 0.5 s; not the
        // five of a full bucket at once.
        assert!(s.admit(0.0).is_err());
        assert_eq!(drain(&mut s, 0.0, 1.01), 4);
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
