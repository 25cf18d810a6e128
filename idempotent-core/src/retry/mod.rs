//! Retrying with exponential backoff and full jitter, a client-side idempotency key reused
//! across the attempts, and a [`CircuitBreaker`] that stops calling a dependency that keeps
//! failing.
//!
//! A retry is only safe when the operation is idempotent: pair [`RetryPolicy`] with an
//! [`IdempotencyKey`] the server deduplicates on ([`RetryPolicy::retry_with_key`]), with a
//! version check ([`retry_on_conflict`](crate::versioning::retry_on_conflict)), or with an
//! `#[idempotent]` function.
//!
//! ```
//! use std::time::Duration;
//! use idempotent_core::retry::RetryPolicy;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let policy = RetryPolicy::new()
//!     .max_attempts(5)
//!     .initial_delay(Duration::from_millis(20))
//!     .max_delay(Duration::from_secs(1))
//!     .max_elapsed(Duration::from_secs(10));
//!
//! let mut calls = 0;
//! let answer = policy
//!     .retry_if(
//!         |error: &std::io::Error| error.kind() == std::io::ErrorKind::ConnectionReset,
//!         || {
//!             calls += 1;
//!             let outcome = if calls < 3 {
//!                 Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
//!             } else {
//!                 Ok("pong")
//!             };
//!             async move { outcome }
//!         },
//!     )
//!     .await;
//! assert_eq!(answer.unwrap(), "pong");
//! assert_eq!(calls, 3);
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, StoreError};

mod breaker;
mod clock;
mod key;
mod random;

pub use crate::error::CircuitOpen;
pub use breaker::{
    BreakerConfigError, BreakerState, CircuitBreaker, CircuitBreakerBuilder, CircuitError, Permit,
};
pub use clock::{Clock, ManualClock, Sleep, TokioClock};
pub use key::IdempotencyKey;
pub use random::{RandomSource, SeededRandom, ThreadRandom};

/// Decides whether an error is worth another attempt.
///
/// Implemented for this crate's errors; implement it for your own error type to use
/// [`RetryPolicy::retry`] and [`RetryPolicy::retry_with_key`], or pass a closure to
/// [`RetryPolicy::retry_if`].
///
/// ```
/// use idempotent_core::retry::Retryable;
///
/// #[derive(Debug)]
/// enum GatewayError { Timeout, Declined }
///
/// impl Retryable for GatewayError {
///     fn is_retryable(&self) -> bool {
///         matches!(self, GatewayError::Timeout) // a decline will not change on retry
///     }
/// }
/// assert!(GatewayError::Timeout.is_retryable());
/// assert!(!GatewayError::Declined.is_retryable());
/// ```
pub trait Retryable {
    /// `true` when the same call may succeed if made again later.
    fn is_retryable(&self) -> bool;
}

impl Retryable for Error {
    /// [`Error::is_retryable`]: a key in progress elsewhere, or a store that is unreachable,
    /// timed out or failed.
    fn is_retryable(&self) -> bool {
        Error::is_retryable(self)
    }
}

impl Retryable for StoreError {
    /// Unreachable, timed out or failed; not a lost lease, a corrupt record, a size limit or
    /// an open breaker.
    fn is_retryable(&self) -> bool {
        self.is_transient()
    }
}

impl Retryable for std::io::Error {
    /// Connection refused, reset, aborted or not connected, a broken pipe, a timeout, an
    /// interrupted or would-block call.
    fn is_retryable(&self) -> bool {
        use std::io::ErrorKind;
        matches!(
            self.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::NotConnected
                | ErrorKind::BrokenPipe
                | ErrorKind::TimedOut
                | ErrorKind::Interrupted
                | ErrorKind::WouldBlock
        )
    }
}

/// How often and how patiently to retry: exponential backoff with full jitter, bounded by a
/// number of attempts and by the time elapsed since the first one.
///
/// Before retry `n` (`n = 1` after the first failure) it sleeps a uniformly random duration in
/// `[0, min(max_delay, initial_delay × 2ⁿ⁻¹)]` ("full jitter": concurrent clients that failed
/// together spread out instead of retrying in lockstep). It stops and returns the last error
/// when the error is not retryable, when `max_attempts` attempts have been made, or when the
/// next sleep would end past `max_elapsed` after the first attempt started.
///
/// Defaults: 5 attempts, 50 ms initial delay, 5 s maximum delay, 30 s maximum elapsed time,
/// the tokio clock and the thread-local random generator. Cheap to clone.
///
/// ```
/// use std::time::Duration;
/// use idempotent_core::retry::{ManualClock, RetryPolicy, SeededRandom};
///
/// // Deterministic: a manual clock (sleeps are instant and recorded) and a seeded generator.
/// let clock = ManualClock::new();
/// let policy = RetryPolicy::new()
///     .initial_delay(Duration::from_millis(100))
///     .max_delay(Duration::from_millis(400))
///     .clock(clock.clone())
///     .random(SeededRandom::new(42));
/// assert!(policy.delay_bound(1) == Duration::from_millis(100));
/// assert!(policy.delay_bound(3) == Duration::from_millis(400));
/// assert!(policy.delay_bound(30) == Duration::from_millis(400)); // capped
/// assert!(policy.delay(2) <= Duration::from_millis(200));
/// ```
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_delay: Duration,
    max_delay: Duration,
    max_elapsed: Option<Duration>,
    clock: Arc<dyn Clock>,
    random: Arc<dyn RandomSource>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new()
    }
}

impl RetryPolicy {
    /// The default policy (see the type's documentation).
    pub fn new() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
            max_elapsed: Some(Duration::from_secs(30)),
            clock: Arc::new(TokioClock),
            random: Arc::new(ThreadRandom),
        }
    }

    /// How many attempts in all, the first one included (default 5; `0` counts as `1`).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The bound of the first sleep; each later bound doubles (default 50 ms).
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// The largest bound of a sleep (default 5 s).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Give up when the next sleep would end more than `elapsed` after the first attempt
    /// started (default 30 s).
    pub fn max_elapsed(mut self, elapsed: Duration) -> Self {
        self.max_elapsed = Some(elapsed);
        self
    }

    /// No limit on the elapsed time: only `max_attempts` bounds the retries.
    pub fn no_max_elapsed(mut self) -> Self {
        self.max_elapsed = None;
        self
    }

    /// The clock to read and sleep on (default [`TokioClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The source of jitter (default [`ThreadRandom`]).
    pub fn random(mut self, random: impl RandomSource) -> Self {
        self.random = Arc::new(random);
        self
    }

    /// The configured number of attempts.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The upper bound of the sleep before retry `retry` (`1` is the sleep after the first
    /// failure): `min(max_delay, initial_delay × 2^(retry − 1))`.
    pub fn delay_bound(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1);
        let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
        self.initial_delay
            .saturating_mul(factor)
            .min(self.max_delay)
    }

    /// A full-jitter sleep before retry `retry`: uniform in `[0, delay_bound(retry)]`.
    pub fn delay(&self, retry: u32) -> Duration {
        // Capped at ~584 years so that the product below fits in 128 bits.
        let bound = self.delay_bound(retry).as_nanos().min(u128::from(u64::MAX));
        // Scales a uniform 64-bit word onto [0, bound] without modulo bias.
        let word = u128::from(self.random.next_u64());
        let nanos = (word * (bound + 1)) >> 64;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Runs `attempt` until it succeeds, returns an error that is not [`Retryable`], or the
    /// policy's bounds are reached; the last error is returned.
    ///
    /// ```
    /// use idempotent_core::retry::{ManualClock, RetryPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let clock = ManualClock::new();
    /// let policy = RetryPolicy::new().max_attempts(3).clock(clock.clone());
    /// let refused = || async { Err::<(), _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)) };
    /// assert!(policy.retry(refused).await.is_err());
    /// assert_eq!(clock.sleeps().len(), 2); // three attempts, two sleeps
    /// # }
    /// ```
    pub async fn retry<T, E, F, Fut>(&self, attempt: F) -> Result<T, E>
    where
        E: Retryable,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.retry_if(|error: &E| error.is_retryable(), attempt)
            .await
    }

    /// Like [`retry`](Self::retry), with `classify` deciding which errors are retried.
    pub async fn retry_if<T, E, C, F, Fut>(&self, classify: C, mut attempt: F) -> Result<T, E>
    where
        C: Fn(&E) -> bool,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let started = self.clock.now();
        let mut made = 0u32;
        loop {
            made += 1;
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if made >= self.max_attempts || !classify(&error) {
                return Err(error);
            }
            let pause = self.delay(made);
            if let Some(limit) = self.max_elapsed {
                let spent = self.clock.now().saturating_duration_since(started);
                if spent.saturating_add(pause) > limit {
                    return Err(error);
                }
            }
            self.clock.sleep(pause).await;
        }
    }

    /// The client side of an idempotent API: creates **one** [`IdempotencyKey`] (UUID v7) and
    /// passes that same key to every attempt, so the server can recognise the retries of one
    /// request and run it once, whichever attempt's answer was lost.
    ///
    /// ```
    /// use std::collections::HashSet;
    /// use idempotent_core::retry::{IdempotencyKey, ManualClock, RetryPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let policy = RetryPolicy::new().clock(ManualClock::new());
    /// let mut seen = HashSet::new();
    /// let receipt = policy
    ///     .retry_with_key(|key: IdempotencyKey| {
    ///         let first = seen.insert(key); // what a server would see in `Idempotency-Key`
    ///         async move {
    ///             if first { Err(std::io::Error::from(std::io::ErrorKind::TimedOut)) } else { Ok(key) }
    ///         }
    ///     })
    ///     .await
    ///     .unwrap();
    /// assert_eq!(seen.len(), 1); // both attempts sent the same key
    /// assert_eq!(receipt.to_string().len(), 36);
    /// # }
    /// ```
    pub async fn retry_with_key<T, E, F, Fut>(&self, mut attempt: F) -> Result<T, E>
    where
        E: Retryable,
        F: FnMut(IdempotencyKey) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let key = IdempotencyKey::new();
        self.retry(|| attempt(key)).await
    }

    /// Like [`retry_with_key`](Self::retry_with_key), with `classify` deciding which errors
    /// are retried: for error types of other crates, such as an HTTP client's.
    ///
    /// ```
    /// use idempotent_core::retry::{IdempotencyKey, ManualClock, RetryPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let policy = RetryPolicy::new().max_attempts(3).clock(ManualClock::new());
    /// let mut sent = Vec::new();
    /// let answer: Result<(), &str> = policy
    ///     .retry_with_key_if(
    ///         |error: &&str| *error == "503",
    ///         |key: IdempotencyKey| {
    ///             sent.push(key);
    ///             async { Err("503") }
    ///         },
    ///     )
    ///     .await;
    /// assert!(answer.is_err());
    /// assert_eq!(sent.len(), 3);
    /// assert!(sent.iter().all(|key| *key == sent[0]));
    /// # }
    /// ```
    pub async fn retry_with_key_if<T, E, C, F, Fut>(
        &self,
        classify: C,
        mut attempt: F,
    ) -> Result<T, E>
    where
        C: Fn(&E) -> bool,
        F: FnMut(IdempotencyKey) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let key = IdempotencyKey::new();
        self.retry_if(classify, || attempt(key)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Always the largest word: every sleep is exactly its bound.
    #[derive(Debug)]
    struct Max;
    impl RandomSource for Max {
        fn next_u64(&self) -> u64 {
            u64::MAX
        }
    }

    #[test]
    fn full_jitter_spans_zero_to_the_bound() {
        #[derive(Debug)]
        struct Zero;
        impl RandomSource for Zero {
            fn next_u64(&self) -> u64 {
                0
            }
        }
        let base = RetryPolicy::new()
            .initial_delay(Duration::from_millis(10))
            .max_delay(Duration::from_secs(1));
        assert_eq!(base.clone().random(Zero).delay(4), Duration::ZERO);
        assert_eq!(base.random(Max).delay(4), Duration::from_millis(80));
    }

    #[test]
    fn bounds_saturate_instead_of_overflowing() {
        let policy = RetryPolicy::new()
            .initial_delay(Duration::from_secs(u64::MAX / 2))
            .max_delay(Duration::MAX)
            .random(Max);
        assert_eq!(policy.delay_bound(200), Duration::MAX);
        assert!(policy.delay(200) > Duration::ZERO);
    }
}
