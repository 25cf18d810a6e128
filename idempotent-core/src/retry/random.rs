//! Where a retry policy draws its jitter.

use std::fmt;
use std::sync::{Mutex, PoisonError};

use rand::{Rng as _, SeedableRng as _};

/// Where a [`RetryPolicy`](super::RetryPolicy) draws its jitter: uniformly random 64-bit words.
///
/// [`ThreadRandom`] is the default; [`SeededRandom`] repeats the same sequence for a seed.
pub trait RandomSource: fmt::Debug + Send + Sync + 'static {
    /// The next uniformly distributed word.
    fn next_u64(&self) -> u64;
}

/// The thread-local generator of `rand`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadRandom;

impl RandomSource for ThreadRandom {
    fn next_u64(&self) -> u64 {
        rand::rng().random()
    }
}

/// A seeded generator: the same seed gives the same delays, for tests and simulations.
///
/// ```
/// use idempotent_core::retry::{RandomSource, SeededRandom};
///
/// let a = SeededRandom::new(7);
/// let b = SeededRandom::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// ```
#[derive(Debug)]
pub struct SeededRandom(Mutex<rand::rngs::StdRng>);

impl SeededRandom {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> SeededRandom {
        SeededRandom(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)))
    }
}

impl RandomSource for SeededRandom {
    fn next_u64(&self) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .random()
    }
}
