//! A seeded RNG whose whole state is four words, saved in checkpoints so that a resumed
//! run shuffles and drops out exactly as an uninterrupted one would.
//!
//! xoshiro256** (Blackman & Vigna), seeded through splitmix64. Written here rather than
//! taken from a crate so that the state format and the shuffle algorithm are ours and
//! cannot change under a dependency upgrade.

/// The saved form of a [`TrainRng`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RngState {
    pub s: [u64; 4],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainRng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl TrainRng {
    pub fn from_seed(seed: u64) -> Self {
        let mut x = seed;
        TrainRng {
            s: [
                splitmix64(&mut x),
                splitmix64(&mut x),
                splitmix64(&mut x),
                splitmix64(&mut x),
            ],
        }
    }

    pub fn state(&self) -> RngState {
        RngState { s: self.s }
    }

    /// Restores a saved state. The all-zero state (a fixed point of xoshiro, never
    /// produced by seeding) is replaced by the seed-0 state rather than yielding zeros forever.
    pub fn from_state(state: RngState) -> Self {
        if state.s == [0; 4] {
            return TrainRng::from_seed(0);
        }
        TrainRng { s: state.s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 24 random bits (e.g. for dropout masks).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` without modulo bias (Lemire's method). `n` must be > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "TrainRng::below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// Lets `rand`'s distributions use it too.
impl rand::RngCore for TrainRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        TrainRng::next_u64(self)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = TrainRng::next_u64(self).to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_xoshiro256starstar_reference_output() {
        // Reference: the C implementation seeded with s = {1, 2, 3, 4}.
        let mut rng = TrainRng::from_state(RngState { s: [1, 2, 3, 4] });
        let got: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(got, vec![11520, 0, 1509978240]);
    }

    #[test]
    fn saved_state_resumes_the_same_stream() {
        let mut a = TrainRng::from_seed(42);
        let mut items: Vec<u32> = (0..50).collect();
        a.shuffle(&mut items);
        let json = serde_json::to_string(&a.state()).unwrap();
        let mut b = TrainRng::from_state(serde_json::from_str(&json).unwrap());
        let xs: Vec<u64> = (0..10).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..10).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let mut items: Vec<u32> = (0..100).collect();
        TrainRng::from_seed(7).shuffle(&mut items);
        let mut again: Vec<u32> = (0..100).collect();
        TrainRng::from_seed(7).shuffle(&mut again);
        assert_eq!(items, again);
        assert_ne!(items, (0..100).collect::<Vec<_>>());
        items.sort();
        assert_eq!(items, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn uniform_values_stay_in_range() {
        let mut rng = TrainRng::from_seed(1);
        for _ in 0..10_000 {
            let (f, d, k) = (rng.next_f32(), rng.next_f64(), rng.below(3));
            assert!((0.0..1.0).contains(&f) && (0.0..1.0).contains(&d) && k < 3);
        }
    }

    proptest::proptest! {
        #[test]
        fn below_is_always_in_range(seed: u64, n in 1u64..u64::MAX) {
            let mut rng = TrainRng::from_seed(seed);
            proptest::prop_assert!(rng.below(n) < n);
        }
    }
}
