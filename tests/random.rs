//! Small seeded random generators for tests and benchmarks: fast, deterministic, no
//! dependencies, so that a failure reproduces from its seed.
//!
//! Two algorithms, each written once here, because streams that tests and benchmarks compare
//! across runs were generated with them and must not change:
//!
//! - [`Rng`], xorshift64* with helpers (uniform, exponential, hex, Kubernetes-like names): the
//!   synthetic cluster of [`crate::synthetic::Cluster`], which the benchmarks run on;
//! - [`XorShift64`], Marsaglia's plain xorshift64 (shifts 13, 7, 17): the fixed-schedule stream of
//!   [`crate::synthetic::stream`] and the shuffles, garbage bytes and ids of the end-to-end tests.

/// A xorshift64* pseudo-random generator: small, fast and deterministic.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (any value, zero included).
    pub fn new(seed: u64) -> Rng {
        let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
        if state == 0 {
            state = 0x2545_f491_4f6c_dd1d;
        }
        Rng(state)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponentially distributed with mean `mean_ns`, in ns.
    pub fn exp_ns(&mut self, mean_ns: f64) -> u64 {
        (-(1.0 - self.unit()).ln() * mean_ns) as u64
    }

    /// `len` random lowercase hex digits.
    pub fn hex(&mut self, len: usize) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        (0..len)
            .map(|_| char::from(DIGITS[self.below(16) as usize]))
            .collect()
    }

    /// `len` random characters as in generated Kubernetes names.
    pub fn name_suffix(&mut self, len: usize) -> String {
        const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..len)
            .map(|_| char::from(CHARS[self.below(CHARS.len() as u64) as usize]))
            .collect()
    }
}

/// Marsaglia's xorshift64 (shifts 13, 7, 17): the bare generator, its state used as given.
#[derive(Clone, Debug)]
pub struct XorShift64(u64);

impl XorShift64 {
    /// A generator starting from `state`, which must not be zero (zero stays zero forever).
    pub fn new(state: u64) -> XorShift64 {
        assert_ne!(state, 0, "xorshift64 needs a non-zero state");
        XorShift64(state)
    }

    /// The next 64 random bits (also the new state).
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `len` random lowercase hex digits, one draw each.
    pub fn hex(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from_digit((self.next_u64() % 16) as u32, 16).expect("hex digit"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift64_is_marsaglias_sequence() {
        let mut rng = XorShift64::new(1);
        assert_eq!(rng.next_u64(), 1_082_269_761);
        assert_eq!(rng.next_u64(), 1_152_992_998_833_853_505);
    }

    #[test]
    fn rng_helpers_stay_in_range() {
        let mut rng = Rng::new(0);
        for _ in 0..1_000 {
            assert!(rng.below(7) < 7);
            assert!((3..=9).contains(&rng.between(3, 9)));
            assert!((0.0..1.0).contains(&rng.unit()));
        }
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.hex(64).len(), 64);
        assert!(
            rng.name_suffix(5)
                .chars()
                .all(|c| c.is_ascii_alphanumeric())
        );
    }
}
