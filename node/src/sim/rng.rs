//! A tiny seeded random source for the simulator (xorshift64*).
//!
//! The simulator must replay the same traffic for the same seed, so it owns its
//! generator instead of reaching for a process-wide one. Statistical quality only
//! needs to be good enough to spread ring delays and talk times.

/// Seeded xorshift64* generator; the same seed always yields the same sequence.
#[derive(Debug, Clone)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator for `seed`. Zero is a fixed point of xorshift, so it is mapped
    /// to another constant rather than rejected.
    pub fn new(seed: u64) -> Self {
        let state = splitmix64(seed);
        Self {
            state: if state == 0 {
                0x9E37_79B9_7F4A_7C15
            } else {
                state
            },
        }
    }

    /// A child generator with its own stream, so each phone or call draws
    /// independently of how many draws its siblings made.
    pub fn fork(&mut self, stream: u64) -> SimRng {
        SimRng::new(self.next_u64() ^ splitmix64(stream))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi` (returns `lo` when the range is empty or inverted).
    pub fn range_u64(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.next_u64() % span,
            // lo..=hi covers every u64.
            None => self.next_u64(),
        }
    }

    /// Uniform in `[0, 1)`.
    pub fn unit_f64(&mut self) -> f64 {
        // 53 high bits give every representable step of an f64 mantissa.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p` (clamped to `[0, 1]`).
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit_f64() < p.clamp(0.0, 1.0)
    }

    /// Exponentially distributed with the given mean; used for Poisson arrivals.
    pub fn exp_f64(&mut self, mean: f64) -> f64 {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        -mean * (1.0 - self.unit_f64()).ln()
    }
}

/// Scrambles a seed so that neighbouring seeds start far apart.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = SimRng::new(42);
        let mut b = SimRng::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(SimRng::new(1).next_u64(), SimRng::new(2).next_u64());
    }

    #[test]
    fn zero_seed_is_usable() {
        let mut r = SimRng::new(0);
        let first = r.next_u64();
        assert_ne!(first, r.next_u64());
    }

    #[test]
    fn range_stays_inside_bounds() {
        let mut r = SimRng::new(7);
        for _ in 0..10_000 {
            let v = r.range_u64(8, 25);
            assert!((8..=25).contains(&v));
        }
        assert_eq!(r.range_u64(5, 5), 5);
        assert_eq!(r.range_u64(9, 3), 9);
        let _ = r.range_u64(0, u64::MAX);
    }

    #[test]
    fn unit_and_exp_are_sane() {
        let mut r = SimRng::new(3);
        let n = 20_000;
        let mut sum = 0.0;
        for _ in 0..n {
            let u = r.unit_f64();
            assert!((0.0..1.0).contains(&u));
            sum += r.exp_f64(2.0);
        }
        let mean = sum / n as f64;
        assert!((1.8..2.2).contains(&mean), "mean {mean}");
    }
}
