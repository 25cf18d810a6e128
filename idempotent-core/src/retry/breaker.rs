//! [`CircuitBreaker`]: closed → open → half-open, shared by clones.

use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{Clock, RandomSource, Retryable, ThreadRandom, TokioClock};
use crate::error::CircuitOpen;
use window::Window;

mod window;

/// Where a [`CircuitBreaker`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls are refused until the cool-down ends (the first call after it makes the breaker
    /// half-open).
    Open,
    /// Probes go through; their outcome closes or opens the breaker.
    HalfOpen,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// The error of a call through [`CircuitBreaker::call`]: refused by the breaker, or the call's
/// own error.
#[derive(Debug, thiserror::Error)]
pub enum CircuitError<E> {
    /// The breaker refused the call; it was not made.
    #[error(transparent)]
    Open(CircuitOpen),
    /// The call was made and failed.
    #[error(transparent)]
    Failed(E),
}

impl<E> From<CircuitOpen> for CircuitError<E> {
    fn from(open: CircuitOpen) -> Self {
        CircuitError::Open(open)
    }
}

impl<E: Retryable> Retryable for CircuitError<E> {
    /// An open breaker is not retried ([`RetryPolicy`](super::RetryPolicy) stops at once);
    /// a failed call is retried when its error is.
    fn is_retryable(&self) -> bool {
        match self {
            CircuitError::Open(_) => false,
            CircuitError::Failed(error) => error.is_retryable(),
        }
    }
}

/// A configuration [`CircuitBreakerBuilder::build`] refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BreakerConfigError {
    /// Neither rule is set: the breaker could never open.
    #[error(
        "the breaker has no rule to open on: set consecutive_failures(n > 0) or failure_ratio(..)"
    )]
    NoRule,
    /// The failure ratio is not in `(0, 1]`.
    #[error("the failure ratio must be in (0, 1], got {0}")]
    Ratio(f64),
    /// The ratio's window is zero.
    #[error("the failure ratio's window must be longer than zero")]
    ZeroWindow,
    /// The jitter is not in `[0, 1]`.
    #[error("the cool-down jitter must be a fraction in [0, 1], got {0}")]
    Jitter(f64),
    /// No probe would be let through when half-open.
    #[error("half_open_probes must be at least 1")]
    ZeroProbes,
}

/// The failure-ratio rule.
#[derive(Debug, Clone, Copy)]
struct RatioRule {
    ratio: f64,
    min_calls: u32,
    window: Duration,
}

#[derive(Debug, Clone)]
struct Config {
    /// 0: the rule is off.
    consecutive: u32,
    ratio: Option<RatioRule>,
    cool_down: Duration,
    jitter: f64,
    probes: u32,
}

/// Configures a [`CircuitBreaker`]; see [`CircuitBreaker::builder`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerBuilder {
    config: Config,
    clock: Arc<dyn Clock>,
    random: Arc<dyn RandomSource>,
}

impl CircuitBreakerBuilder {
    /// Open after `failures` failures in a row (default 5; `0` turns the rule off).
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.config.consecutive = failures;
        self
    }

    /// Also open when, over the last `window`, at least `min_calls` calls were made and the
    /// share of them that failed is `ratio` or more (off by default). The window rolls in ten
    /// steps of `window / 10`. With this rule every call takes a lock to be counted; the
    /// consecutive rule alone counts a success with one atomic read.
    pub fn failure_ratio(mut self, ratio: f64, min_calls: u32, window: Duration) -> Self {
        self.config.ratio = Some(RatioRule {
            ratio,
            min_calls,
            window,
        });
        self
    }

    /// How long the breaker stays open before it lets a probe through (default 5 s).
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.config.cool_down = cool_down;
        self
    }

    /// Lengthen each cool-down by a random share of it, up to `fraction` (default 0.2: a 5 s
    /// cool-down lasts 5 to 6 s), so that clients that opened together do not probe together.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.config.jitter = fraction;
        self
    }

    /// How many probes go through when half-open, and must all succeed to close it (default 1).
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.config.probes = probes;
        self
    }

    /// The clock the cool-down and the window are read on (default [`TokioClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The source of the cool-down's jitter (default [`ThreadRandom`]).
    pub fn random(mut self, random: impl RandomSource) -> Self {
        self.random = Arc::new(random);
        self
    }

    /// The breaker, closed; or what is wrong with the configuration.
    pub fn build(self) -> Result<CircuitBreaker, BreakerConfigError> {
        let config = self.config;
        if let Some(rule) = config.ratio {
            if !(rule.ratio > 0.0 && rule.ratio <= 1.0) {
                return Err(BreakerConfigError::Ratio(rule.ratio));
            }
            if rule.window.is_zero() {
                return Err(BreakerConfigError::ZeroWindow);
            }
        } else if config.consecutive == 0 {
            return Err(BreakerConfigError::NoRule);
        }
        if !(0.0..=1.0).contains(&config.jitter) {
            return Err(BreakerConfigError::Jitter(config.jitter));
        }
        if config.probes == 0 {
            return Err(BreakerConfigError::ZeroProbes);
        }
        let now = self.clock.now();
        let window = config
            .ratio
            .map(|rule| Window::new(rule.window, now))
            .unwrap_or_else(|| Window::new(Duration::from_secs(1), now));
        Ok(CircuitBreaker {
            shared: Arc::new(Shared {
                config,
                clock: self.clock,
                random: self.random,
                state: AtomicU8::new(CLOSED),
                consecutive: AtomicU32::new(0),
                slow: Mutex::new(Slow {
                    state: BreakerState::Closed,
                    generation: 0,
                    open_until: now,
                    probes_out: 0,
                    probes_passed: 0,
                    window,
                }),
            }),
        })
    }
}

/// A circuit breaker: after repeated failures, stop calling a dependency for a cool-down, then
/// let a probe through.
///
/// * **Closed** — calls go through; failures are counted. It opens after `consecutive_failures`
///   failures in a row, or when the failure ratio over a rolling window reaches the configured
///   ratio (with at least `min_calls` calls in the window).
/// * **Open** — calls are refused at once with [`CircuitOpen`], without being made, for the
///   cool-down (lengthened by a random jitter so that a fleet of clients does not probe in
///   lockstep).
/// * **Half-open** — after the cool-down, up to `half_open_probes` calls go through as probes.
///   When that many have succeeded the breaker closes; a probe that fails opens it again for a
///   fresh cool-down. Others are refused meanwhile.
///
/// A failure is an error its classifier counts: by default an error that is
/// [`Retryable`] (the dependency is unreachable or overloaded). Any other error — a declined
/// payment, a validation error — means the dependency answered, and counts as a success.
///
/// Clones share one state: make one per dependency and share it. Wrap a call with
/// [`call`](Self::call), or take a [`Permit`] and report its outcome. It composes with
/// [`RetryPolicy`](super::RetryPolicy): an open breaker's [`CircuitError::Open`] is not
/// retryable, so the retries stop at once.
///
/// ```
/// use std::time::Duration;
/// use idempotent_core::retry::{BreakerState, CircuitBreaker, CircuitError, ManualClock, RetryPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let clock = ManualClock::new();
/// let breaker = CircuitBreaker::builder()
///     .consecutive_failures(3)
///     .cool_down(Duration::from_secs(10))
///     .jitter(0.0)
///     .clock(clock.clone())
///     .build()
///     .unwrap();
/// let policy = RetryPolicy::new().max_attempts(10).clock(clock.clone());
///
/// let mut made = 0;
/// let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// let outcome: Result<(), _> = policy
///     .retry(|| {
///         made += 1;
///         breaker.call(|| async { Err(refused()) })
///     })
///     .await;
/// // Three calls were made and failed; the fourth attempt was refused, and ended the retries.
/// assert!(matches!(outcome, Err(CircuitError::Open(_))));
/// assert_eq!((made, breaker.state()), (4, BreakerState::Open));
///
/// clock.advance(Duration::from_secs(10)); // the cool-down: one probe goes through
/// let probe: Result<&str, CircuitError<std::io::Error>> = breaker.call(|| async { Ok("up") }).await;
/// assert_eq!(probe.unwrap(), "up");
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker::new()
    }
}

impl CircuitBreaker {
    /// A breaker with the defaults: opens after 5 consecutive failures, 5 s cool-down with up to
    /// 20 % jitter, one probe.
    pub fn new() -> CircuitBreaker {
        CircuitBreaker::builder()
            .build()
            .expect("the defaults are a valid configuration")
    }

    /// Configure one.
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder {
            config: Config {
                consecutive: 5,
                ratio: None,
                cool_down: Duration::from_secs(5),
                jitter: 0.2,
                probes: 1,
            },
            clock: Arc::new(TokioClock),
            random: Arc::new(ThreadRandom),
        }
    }

    /// Where it stands. `Open` until a call after the cool-down makes it half-open.
    pub fn state(&self) -> BreakerState {
        match self.shared.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Asks to make a call: a [`Permit`] to report the call's outcome on, or [`CircuitOpen`]
    /// (do not make the call). A permit dropped without a report counts for nothing (a probe's
    /// place is given back).
    #[inline]
    pub fn permit(&self) -> Result<Permit<'_>, CircuitOpen> {
        let kind = self.shared.admit()?;
        Ok(Permit {
            shared: &self.shared,
            kind,
        })
    }

    /// Makes the call unless the breaker refuses it; an error that is
    /// [`Retryable`] counts as a failure, any other as a success.
    pub async fn call<T, E, F, Fut>(&self, attempt: F) -> Result<T, CircuitError<E>>
    where
        E: Retryable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_if(E::is_retryable, attempt).await
    }

    /// Like [`call`](Self::call), with `is_failure` deciding which errors count as failures.
    pub async fn call_if<T, E, C, F, Fut>(
        &self,
        is_failure: C,
        attempt: F,
    ) -> Result<T, CircuitError<E>>
    where
        C: FnOnce(&E) -> bool,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.permit()?;
        match attempt().await {
            Ok(value) => {
                permit.success();
                Ok(value)
            }
            Err(error) => {
                if is_failure(&error) {
                    permit.failure();
                } else {
                    permit.success();
                }
                Err(CircuitError::Failed(error))
            }
        }
    }
}

/// Leave to make one call; report its outcome with [`success`](Self::success) or
/// [`failure`](Self::failure). Dropped without a report, it counts for nothing.
#[derive(Debug)]
#[must_use = "report the call's outcome on the permit"]
pub struct Permit<'a> {
    shared: &'a Shared,
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Made while closed.
    Closed,
    /// A probe of the half-open breaker of this generation.
    Probe(u64),
    /// Reported.
    Done,
}

impl Permit<'_> {
    /// Whether this call is a half-open breaker's probe.
    pub fn is_probe(&self) -> bool {
        matches!(self.kind, Kind::Probe(_))
    }

    /// The call succeeded (or failed in a way that says the dependency is up).
    #[inline]
    pub fn success(mut self) {
        let kind = std::mem::replace(&mut self.kind, Kind::Done);
        self.shared.succeeded(kind);
    }

    /// The call failed in a way that counts against the dependency.
    pub fn failure(mut self) {
        let kind = std::mem::replace(&mut self.kind, Kind::Done);
        self.shared.failed(kind);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Kind::Probe(generation) = self.kind {
            let mut slow = self.shared.lock();
            if slow.generation == generation && slow.state == BreakerState::HalfOpen {
                slow.probes_out = slow.probes_out.saturating_sub(1);
            }
        }
    }
}

#[derive(Debug)]
struct Shared {
    config: Config,
    clock: Arc<dyn Clock>,
    random: Arc<dyn RandomSource>,
    /// A copy of `slow.state`, written under its lock, read without it.
    state: AtomicU8,
    /// Failures in a row while closed.
    consecutive: AtomicU32,
    slow: Mutex<Slow>,
}

#[derive(Debug)]
struct Slow {
    state: BreakerState,
    /// Changes with every transition, so that a probe of an earlier half-open spell is not
    /// counted in a later one.
    generation: u64,
    open_until: Instant,
    probes_out: u32,
    probes_passed: u32,
    window: Window,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slow> {
        self.slow.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[inline]
    fn admit(&self) -> Result<Kind, CircuitOpen> {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Ok(Kind::Closed);
        }
        let mut slow = self.lock();
        match slow.state {
            BreakerState::Closed => return Ok(Kind::Closed),
            BreakerState::Open => {
                let now = self.clock.now();
                if now < slow.open_until {
                    return Err(CircuitOpen {
                        retry_after: slow.open_until - now,
                    });
                }
                self.move_to(&mut slow, BreakerState::HalfOpen);
            }
            BreakerState::HalfOpen => {}
        }
        if slow.probes_out < self.config.probes {
            slow.probes_out += 1;
            Ok(Kind::Probe(slow.generation))
        } else {
            Err(CircuitOpen {
                retry_after: Duration::ZERO,
            })
        }
    }

    #[inline]
    fn succeeded(&self, kind: Kind) {
        match kind {
            Kind::Closed => {
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
                if self.config.ratio.is_some() {
                    let now = self.clock.now();
                    let mut slow = self.lock();
                    if slow.state == BreakerState::Closed {
                        slow.window.record(now, false);
                    }
                }
            }
            Kind::Probe(generation) => {
                let mut slow = self.lock();
                if slow.generation == generation && slow.state == BreakerState::HalfOpen {
                    slow.probes_out = slow.probes_out.saturating_sub(1);
                    slow.probes_passed += 1;
                    if slow.probes_passed >= self.config.probes {
                        self.move_to(&mut slow, BreakerState::Closed);
                    }
                }
            }
            Kind::Done => {}
        }
    }

    fn failed(&self, kind: Kind) {
        match kind {
            Kind::Closed => {
                let now = self.clock.now();
                let mut slow = self.lock();
                if slow.state != BreakerState::Closed {
                    return; // a call made before the breaker opened
                }
                let in_a_row = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                let by_count = self.config.consecutive != 0 && in_a_row >= self.config.consecutive;
                let by_ratio = self.config.ratio.is_some_and(|rule| {
                    let (calls, failures) = slow.window.record(now, true);
                    calls >= rule.min_calls && f64::from(failures) >= rule.ratio * f64::from(calls)
                });
                if by_count || by_ratio {
                    self.move_to(&mut slow, BreakerState::Open);
                }
            }
            Kind::Probe(generation) => {
                let mut slow = self.lock();
                if slow.generation == generation && slow.state == BreakerState::HalfOpen {
                    self.move_to(&mut slow, BreakerState::Open);
                }
            }
            Kind::Done => {}
        }
    }

    /// Every transition: a new generation, counters reset, the cool-down drawn when opening.
    fn move_to(&self, slow: &mut Slow, state: BreakerState) {
        let now = self.clock.now();
        slow.state = state;
        slow.generation += 1;
        slow.probes_out = 0;
        slow.probes_passed = 0;
        let code = match state {
            BreakerState::Closed => {
                self.consecutive.store(0, Ordering::Relaxed);
                slow.window.clear(now);
                CLOSED
            }
            BreakerState::Open => {
                let cool_down = self.cool_down();
                slow.open_until = now
                    .checked_add(cool_down)
                    .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
                OPEN
            }
            BreakerState::HalfOpen => HALF_OPEN,
        };
        self.state.store(code, Ordering::Release);
    }

    /// The cool-down, lengthened by up to `jitter` of itself.
    fn cool_down(&self) -> Duration {
        let base = self.config.cool_down;
        let share = self.random.next_u64() as f64 / (u64::MAX as f64 + 1.0);
        let extra = Duration::try_from_secs_f64(base.as_secs_f64() * self.config.jitter * share)
            .unwrap_or(Duration::MAX);
        base.saturating_add(extra)
    }
}

#[cfg(test)]
mod tests;
