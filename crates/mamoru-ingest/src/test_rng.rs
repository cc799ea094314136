//! The deterministic random numbers of the parsers' never-panics tests:
//! the same series on every run, so a failure reproduces.

/// xorshift64, seeded; each call of the returned closure is the next number.
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}
