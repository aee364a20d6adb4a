//! Seeded deterministic randomness: one splitmix64 generator for every test, simulation and
//! benchmark that draws random choices, so that a printed seed replays a run.
//!
//! The output sequence is part of the contract: the seeds recorded for the simulations
//! (`tests/sim.rs`, `tests/sim_roles.rs`), the torture suite, the crash test and the bad-peer
//! test replay only while [`Rng::new`] and [`Rng::from_state`] produce the same numbers for
//! the same inputs. The unit tests below pin them.

/// The splitmix64 increment (the golden ratio in 64 bits).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Multiplier spreading a seed over the state before its salt is mixed in ([`Rng::new`]).
const SEED_MIX: u64 = 0xA076_1D64_78BD_642F;

/// splitmix64: small, fast, good enough to drive a simulation; every draw is a function of
/// the starting state and the draws before it.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The generator of `seed` in a suite that salts its seeds with `salt` (each simulation
    /// has its own constant, so that equal seeds of two suites do not draw alike).
    pub fn new(seed: u64, salt: u64) -> Rng {
        Rng(seed.wrapping_mul(SEED_MIX) ^ salt)
    }

    /// The generator whose state starts at `state`, unsalted: the plain splitmix64 stream of
    /// `state` (the torture suite, the crash test and the bad-peer test seed it this way).
    pub fn from_state(state: u64) -> Rng {
        Rng(state)
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0, without drawing).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `lo..=hi`, as a `usize`.
    pub fn usize(&mut self, lo: usize, hi: usize) -> usize {
        self.range(lo as u64, hi as u64) as usize
    }

    /// True with probability `p` (one draw).
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64) < p * (1u64 << 53) as f64
    }

    /// True with probability `percent` / 100: `below(100) < percent` (one draw).
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// `len` random bytes, one draw each (its low byte).
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// A uniformly chosen element of `from`; `None` (without drawing) when it is empty.
    pub fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        if from.is_empty() {
            None
        } else {
            Some(from[self.below(from.len() as u64) as usize])
        }
    }
}

/// A fresh seed for a run that was given none: from the operating system, else the clock.
/// Print it, so that the run can be replayed.
pub fn random_seed() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers the generators gave before they were shared (computed with the copies in
    /// `tests/sim_support`, `tests/torture_support`, `tests/crash.rs`, `tests/bad_peers.rs`).
    #[test]
    fn salted_sequence_is_the_simulations_one() {
        let mut r = Rng::new(336, 0xE703_7ED1_A0B4_28DB);
        let got: Vec<u64> = (0..4).map(|_| r.next()).collect();
        assert_eq!(
            got,
            [
                0x437a_4945_dd19_b49d,
                0x79c3_b1e4_1316_7e0b,
                0xeee4_8476_6976_c98f,
                0x744f_dfbc_48cc_66dc,
            ]
        );
    }

    #[test]
    fn every_draw_is_the_simulations_one() {
        let mut r = Rng::new(2101, 0);
        assert_eq!(r.below(1000), 662);
        assert_eq!(r.range(10, 20), 20);
        assert_eq!(r.usize(3, 9), 9);
        assert!(r.chance(0.5));
        assert!(!r.chance(0.01));
        assert_eq!(r.bytes(5), [22, 102, 40, 246, 4]);
        assert_eq!(r.pick(&[1u8, 2, 3, 4, 5]), Some(1));
        assert_eq!(r.pick::<u8>(&[]), None);
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn unsalted_sequence_is_plain_splitmix64() {
        assert_eq!(Rng::from_state(0).next(), 0xe220_a839_7b1d_cdaf);
        let mut r = Rng::from_state(0x5eed);
        let got: Vec<u64> = (0..3).map(|_| r.next()).collect();
        assert_eq!(
            got,
            [
                0x09f1_fd9d_03f0_a9b4,
                0x5532_7416_1bbf_8475,
                0x5d5b_ca46_96b3_43b3,
            ]
        );
        let mut r = Rng::from_state(7);
        assert_eq!(r.bytes(4), [215, 28, 2, 203]);
        assert!(!r.percent(30));
    }

    #[test]
    fn clones_draw_alike() {
        let mut a = Rng::new(42, 1);
        a.next();
        let mut b = a.clone();
        assert_eq!(a.next(), b.next());
    }
}
