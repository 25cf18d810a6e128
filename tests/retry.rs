//! The retry policy: exponential backoff with full jitter, its bounds, its classifier, and
//! the client key reused across attempts. Deterministic: a manual clock and seeded jitter.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use idempotency::retry::{
    Clock, IdempotencyKey, ManualClock, RandomSource, RetryPolicy, Retryable, SeededRandom,
};
use idempotency::{Digest, Error, Key, StoreError};

/// Every sleep is exactly its bound.
#[derive(Debug)]
struct Ceiling;
impl RandomSource for Ceiling {
    fn next_u64(&self) -> u64 {
        u64::MAX
    }
}

#[derive(Debug, PartialEq)]
enum Failure {
    Transient,
    Permanent,
}

impl Retryable for Failure {
    fn is_retryable(&self) -> bool {
        *self == Failure::Transient
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test]
async fn backoff_doubles_up_to_the_cap() {
    let clock = ManualClock::new();
    let policy = RetryPolicy::new()
        .max_attempts(7)
        .initial_delay(ms(10))
        .max_delay(ms(100))
        .no_max_elapsed()
        .clock(clock.clone())
        .random(Ceiling);
    let mut attempts = 0;
    let result: Result<(), Failure> = policy
        .retry(|| {
            attempts += 1;
            async { Err(Failure::Transient) }
        })
        .await;
    assert_eq!(result, Err(Failure::Transient));
    assert_eq!(attempts, 7);
    assert_eq!(
        clock.sleeps(),
        vec![ms(10), ms(20), ms(40), ms(80), ms(100), ms(100)]
    );
}

#[tokio::test]
async fn jitter_is_uniform_below_each_bound_and_repeatable_for_a_seed() {
    let policy = |seed| {
        RetryPolicy::new()
            .initial_delay(ms(100))
            .max_delay(ms(1600))
            .random(SeededRandom::new(seed))
    };
    let (a, b, c) = (policy(1), policy(1), policy(2));
    let mut differs = false;
    for retry in 1..=6 {
        let bound = a.delay_bound(retry);
        let samples: Vec<Duration> = (0..4000).map(|_| a.delay(retry)).collect();
        let again: Vec<Duration> = (0..4000).map(|_| b.delay(retry)).collect();
        let other: Vec<Duration> = (0..4000).map(|_| c.delay(retry)).collect();
        assert_eq!(samples, again, "same seed, same delays");
        differs |= samples != other;
        assert!(samples.iter().all(|delay| *delay <= bound));
        // Full jitter: the whole range is used, mean near half the bound.
        let mean = samples.iter().sum::<Duration>() / 4000;
        let (low, high) = (bound * 45 / 100, bound * 55 / 100);
        assert!(
            mean > low && mean < high,
            "mean {mean:?} for bound {bound:?}"
        );
        assert!(samples.iter().any(|delay| *delay < bound / 20));
        assert!(samples.iter().any(|delay| *delay > bound * 19 / 20));
    }
    assert!(differs, "another seed gives other delays");
}

#[tokio::test]
async fn a_permanent_error_is_not_retried() {
    let clock = ManualClock::new();
    let policy = RetryPolicy::new().max_attempts(10).clock(clock.clone());
    let mut attempts = 0;
    let result: Result<(), Failure> = policy
        .retry(|| {
            attempts += 1;
            async { Err(Failure::Permanent) }
        })
        .await;
    assert_eq!(result, Err(Failure::Permanent));
    assert_eq!(attempts, 1);
    assert!(clock.sleeps().is_empty());
}

#[tokio::test]
async fn success_after_transient_failures_returns_the_value() {
    let clock = ManualClock::new();
    let policy = RetryPolicy::new().max_attempts(10).clock(clock.clone());
    let mut attempts = 0;
    let result = policy
        .retry(|| {
            attempts += 1;
            let outcome = if attempts < 4 {
                Err(Failure::Transient)
            } else {
                Ok(attempts)
            };
            async move { outcome }
        })
        .await;
    assert_eq!(result, Ok(4));
    assert_eq!(clock.sleeps().len(), 3);
}

#[tokio::test]
async fn max_elapsed_stops_before_a_sleep_that_would_end_past_it() {
    let clock = ManualClock::new();
    let policy = RetryPolicy::new()
        .max_attempts(100)
        .initial_delay(Duration::from_secs(1))
        .max_delay(Duration::from_secs(60))
        .max_elapsed(Duration::from_secs(10))
        .clock(clock.clone())
        .random(Ceiling);
    let mut attempts = 0;
    let attempt_clock = clock.clone();
    let result: Result<(), Failure> = policy
        .retry(|| {
            attempts += 1;
            attempt_clock.advance(Duration::from_millis(500)); // each attempt takes 0.5 s
            async { Err(Failure::Transient) }
        })
        .await;
    assert_eq!(result, Err(Failure::Transient));
    // Attempts end at 0.5, 2.0, 4.5 and 9.0 s (after sleeps of 1, 2 and 4 s); a sleep of 8 s
    // would end at 17 s, past the 10 s limit.
    assert_eq!(attempts, 4);
    assert_eq!(
        clock.sleeps(),
        vec![
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(4)
        ]
    );
    assert_eq!(clock.elapsed(), Duration::from_secs(9));
}

#[tokio::test]
async fn a_custom_classifier_decides_what_is_retried() {
    let clock = ManualClock::new();
    let policy = RetryPolicy::new().max_attempts(3).clock(clock.clone());
    let mut attempts = 0;
    let result: Result<(), &str> = policy
        .retry_if(
            |error: &&str| error.starts_with("503"),
            || {
                attempts += 1;
                async { Err("503 service unavailable") }
            },
        )
        .await;
    assert!(result.is_err());
    assert_eq!(attempts, 3);
}

#[tokio::test]
async fn the_tokio_clock_really_waits_and_paused_time_skips_it() {
    tokio::time::pause();
    let policy = RetryPolicy::new()
        .max_attempts(3)
        .initial_delay(Duration::from_secs(60))
        .max_delay(Duration::from_secs(60))
        .max_elapsed(Duration::from_secs(3600))
        .random(Ceiling);
    let start = tokio::time::Instant::now();
    let result: Result<(), Failure> = policy.retry(|| async { Err(Failure::Transient) }).await;
    assert!(result.is_err());
    // Two sleeps at the bound, on tokio's (paused, auto-advancing) clock, whose timer wheel
    // rounds each sleep up to the next millisecond.
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(120) && waited < Duration::from_secs(121));
}

#[tokio::test]
async fn one_client_key_is_reused_across_attempts() {
    let clock = ManualClock::new();
    let policy = RetryPolicy::new().max_attempts(4).clock(clock.clone());
    let seen = Mutex::new(Vec::new());
    let result: Result<IdempotencyKey, std::io::Error> = policy
        .retry_with_key(|key| {
            let mut seen = seen.lock().unwrap();
            seen.push(key);
            let outcome = if seen.len() < 4 {
                Err(std::io::Error::from(std::io::ErrorKind::TimedOut))
            } else {
                Ok(key)
            };
            async move { outcome }
        })
        .await;
    let key = result.unwrap();
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|sent| *sent == key));
    assert_eq!(key.as_uuid().get_version_num(), 7);

    // Another request gets another key; keys are time-ordered.
    let next = policy
        .retry_with_key(|key| async move { Ok::<_, std::io::Error>(key) })
        .await
        .unwrap();
    assert_ne!(next, key);
    assert!(next > key);
    let many: HashSet<IdempotencyKey> = (0..1000).map(|_| IdempotencyKey::new()).collect();
    assert_eq!(many.len(), 1000);
}

#[test]
fn the_crates_errors_classify_themselves() {
    let key = Key::new("retry::classify", 1, Digest::of_bytes(b"k"));
    let in_progress = Error::InProgress {
        key: key.clone(),
        retry_after: Duration::from_secs(1),
    };
    assert!(Retryable::is_retryable(&in_progress));
    assert!(!Retryable::is_retryable(&Error::KeyReused { key }));
    assert!(StoreError::Timeout(Duration::from_secs(1)).is_retryable());
    assert!(!StoreError::LeaseLost.is_retryable());
    assert!(std::io::Error::from(std::io::ErrorKind::ConnectionReset).is_retryable());
    assert!(!std::io::Error::from(std::io::ErrorKind::PermissionDenied).is_retryable());
}

#[test]
fn the_manual_clock_moves_only_when_told() {
    let clock = ManualClock::new();
    let start = clock.now();
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(clock.now(), start);
    clock.advance(Duration::from_secs(3));
    assert_eq!(clock.now() - start, Duration::from_secs(3));
}
