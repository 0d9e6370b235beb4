//! A tiny seeded generator (xorshift64*) for fault decisions: one seed gives the same
//! sequence of drops, delays and duplicates on every run, with no dependency.

/// xorshift64* (Vigna): fast, 64-bit state, good enough to pick which packets to hurt.
#[derive(Clone, Debug)]
pub struct XorShift {
    state: u64,
}

impl XorShift {
    /// A generator from `seed`; seed 0 (a fixed point of xorshift) is mapped to a constant.
    pub fn new(seed: u64) -> XorShift {
        XorShift {
            state: if seed == 0 {
                0x9E37_79B9_7F4A_7C15
            } else {
                seed
            },
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `pct` percent (clamped to 0..=100).
    pub fn chance_pct(&mut self, pct: f64) -> bool {
        if pct <= 0.0 {
            return false;
        }
        // 53 random bits as a fraction in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit * 100.0 < pct
    }

    /// A derived generator, so each proxy has its own stream from one seed.
    pub fn fork(&mut self, salt: u64) -> XorShift {
        XorShift::new(self.next_u64() ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = XorShift::new(42);
        let mut b = XorShift::new(42);
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(XorShift::new(43).next_u64(), xs[0]);
    }

    #[test]
    fn chance_is_roughly_the_percentage() {
        let mut r = XorShift::new(7);
        let hits = (0..100_000).filter(|_| r.chance_pct(20.0)).count();
        assert!((18_000..22_000).contains(&hits), "{hits}");
        assert!(!(0..1000).any(|_| r.chance_pct(0.0)));
        assert!((0..1000).all(|_| r.chance_pct(100.0)));
    }
}
