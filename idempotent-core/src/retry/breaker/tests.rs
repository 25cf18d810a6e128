use std::io::{Error as IoError, ErrorKind};

use super::*;
use crate::retry::{ManualClock, RetryPolicy, SeededRandom};

fn refused() -> IoError {
    IoError::from(ErrorKind::ConnectionRefused)
}

fn breaker(clock: &ManualClock) -> CircuitBreakerBuilder {
    CircuitBreaker::builder()
        .consecutive_failures(3)
        .cool_down(Duration::from_secs(10))
        .jitter(0.0)
        .clock(clock.clone())
}

fn fail(breaker: &CircuitBreaker, times: usize) {
    for _ in 0..times {
        breaker.permit().expect("closed").failure();
    }
}

#[test]
fn opens_after_consecutive_failures_and_refuses_until_the_cool_down_ends() {
    let clock = ManualClock::new();
    let breaker = breaker(&clock).build().unwrap();
    fail(&breaker, 2);
    assert_eq!(breaker.state(), BreakerState::Closed);
    fail(&breaker, 1);
    assert_eq!(breaker.state(), BreakerState::Open);

    let open = breaker.permit().unwrap_err();
    assert_eq!(open.retry_after(), Duration::from_secs(10));
    clock.advance(Duration::from_secs(4));
    assert_eq!(
        breaker.permit().unwrap_err().retry_after(),
        Duration::from_secs(6)
    );
    clock.advance(Duration::from_secs(6));
    let probe = breaker.permit().expect("a probe after the cool-down");
    assert!(probe.is_probe());
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    // One probe at a time: the others are refused, with nothing to wait for but the probe.
    assert_eq!(breaker.permit().unwrap_err().retry_after(), Duration::ZERO);
    probe.success();
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert!(!breaker.permit().unwrap().is_probe());
}

#[test]
fn a_success_in_between_resets_the_count() {
    let clock = ManualClock::new();
    let breaker = breaker(&clock).build().unwrap();
    for _ in 0..5 {
        fail(&breaker, 2);
        breaker.permit().unwrap().success();
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[test]
fn a_failed_probe_opens_it_again_for_a_fresh_cool_down() {
    let clock = ManualClock::new();
    let breaker = breaker(&clock).build().unwrap();
    fail(&breaker, 3);
    clock.advance(Duration::from_secs(10));
    breaker.permit().unwrap().failure();
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(
        breaker.permit().unwrap_err().retry_after(),
        Duration::from_secs(10)
    );
}

#[test]
fn a_probe_dropped_without_a_report_gives_its_place_back() {
    let clock = ManualClock::new();
    let breaker = breaker(&clock).build().unwrap();
    fail(&breaker, 3);
    clock.advance(Duration::from_secs(10));
    drop(breaker.permit().unwrap());
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    let probe = breaker.permit().expect("the place was given back");
    probe.success();
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[test]
fn a_probe_of_an_earlier_spell_does_not_count() {
    let clock = ManualClock::new();
    let breaker = breaker(&clock).half_open_probes(2).build().unwrap();
    fail(&breaker, 3);
    clock.advance(Duration::from_secs(10));
    let late = breaker.permit().unwrap();
    breaker.permit().unwrap().failure(); // opens again
    clock.advance(Duration::from_secs(10));
    let first = breaker.permit().unwrap();
    late.success(); // from the earlier half-open spell: ignored
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    first.success();
    assert_eq!(
        breaker.state(),
        BreakerState::HalfOpen,
        "2 probes must pass"
    );
    breaker.permit().unwrap().success();
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[test]
fn calls_made_before_it_opened_do_not_count_after() {
    let clock = ManualClock::new();
    let breaker = breaker(&clock).build().unwrap();
    let slow = breaker.permit().unwrap();
    fail(&breaker, 3);
    slow.failure();
    clock.advance(Duration::from_secs(10));
    breaker.permit().unwrap().success();
    assert_eq!(breaker.state(), BreakerState::Closed);
    fail(&breaker, 2);
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "the count restarted at 0"
    );
}

#[test]
fn the_ratio_rule_needs_its_minimum_of_calls_and_forgets_old_ones() {
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(0)
        .failure_ratio(0.5, 10, Duration::from_secs(10))
        .jitter(0.0)
        .clock(clock.clone())
        .build()
        .unwrap();
    // 4 failures of 8 calls: half, but under the minimum of 10 calls.
    for _ in 0..4 {
        breaker.permit().unwrap().success();
        breaker.permit().unwrap().failure();
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
    // They age out of the window; 9 successes and 1 failure: 10 %.
    clock.advance(Duration::from_secs(11));
    for _ in 0..9 {
        breaker.permit().unwrap().success();
    }
    breaker.permit().unwrap().failure();
    assert_eq!(breaker.state(), BreakerState::Closed);
    // 7 failures more: 8 of 17 calls failed, under half; the 8th makes it 9 of 18, half.
    for _ in 0..7 {
        breaker.permit().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
    breaker.permit().unwrap().failure();
    assert_eq!(breaker.state(), BreakerState::Open);
}

#[test]
fn the_window_rolls_step_by_step() {
    let start = Instant::now();
    let mut window = Window::new(Duration::from_secs(10), start);
    window.record(start, true);
    window.record(start + Duration::from_secs(5), false);
    assert_eq!(
        window.record(start + Duration::from_millis(9_999), false),
        (3, 1)
    );
    // The first step (0-1 s) has left the window; the 5 s one is still in it.
    assert_eq!(
        window.record(start + Duration::from_secs(10), false),
        (3, 0)
    );
    assert_eq!(window.record(start + Duration::from_secs(60), true), (1, 1));
}

#[test]
fn the_cool_down_is_lengthened_by_at_most_its_jitter() {
    let clock = ManualClock::new();
    let breaker = breaker(&clock)
        .jitter(0.5)
        .random(SeededRandom::new(7))
        .build()
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..20 {
        fail(&breaker, 3);
        let wait = breaker.permit().unwrap_err().retry_after();
        assert!(wait >= Duration::from_secs(10) && wait <= Duration::from_secs(15));
        seen.push(wait);
        clock.advance(wait);
        breaker.permit().unwrap().success();
    }
    seen.dedup();
    assert!(seen.len() > 10, "jitter varies the cool-down: {seen:?}");
}

#[tokio::test]
async fn errors_that_are_not_retryable_say_the_dependency_is_up() {
    let clock = ManualClock::new();
    let breaker = breaker(&clock).build().unwrap();
    for _ in 0..10 {
        let declined: Result<(), CircuitError<IoError>> = breaker
            .call(|| async { Err(IoError::from(ErrorKind::InvalidInput)) })
            .await;
        assert!(matches!(declined, Err(CircuitError::Failed(_))));
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
    for _ in 0..3 {
        let _: Result<(), _> = breaker.call(|| async { Err(refused()) }).await;
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    let mut made = false;
    let refused_call: Result<(), CircuitError<IoError>> = breaker
        .call(|| {
            made = true;
            async { Ok(()) }
        })
        .await;
    assert!(matches!(refused_call, Err(CircuitError::Open(_))));
    assert!(!made, "an open breaker does not make the call");
}

#[tokio::test]
async fn an_open_breaker_ends_a_retry_policy_at_once() {
    let clock = ManualClock::new();
    let breaker = breaker(&clock).build().unwrap();
    let policy = RetryPolicy::new()
        .max_attempts(20)
        .no_max_elapsed()
        .clock(clock.clone());
    let mut made = 0;
    let outcome: Result<(), CircuitError<IoError>> = policy
        .retry(|| {
            made += 1;
            breaker.call(|| async { Err(refused()) })
        })
        .await;
    assert!(matches!(outcome, Err(CircuitError::Open(_))));
    assert_eq!(
        made, 4,
        "three failures open it; the fourth attempt is refused"
    );
    assert_eq!(clock.sleeps().len(), 3);
}

#[test]
fn a_configuration_that_cannot_work_is_refused() {
    let refused = |builder: CircuitBreakerBuilder| builder.build().unwrap_err();
    let base = CircuitBreaker::builder;
    assert_eq!(
        refused(base().consecutive_failures(0)),
        BreakerConfigError::NoRule
    );
    for ratio in [0.0, -1.0, 1.5, f64::NAN] {
        let error = refused(base().failure_ratio(ratio, 1, Duration::from_secs(1)));
        assert!(matches!(error, BreakerConfigError::Ratio(_)), "{ratio}");
    }
    assert_eq!(
        refused(base().failure_ratio(0.5, 1, Duration::ZERO)),
        BreakerConfigError::ZeroWindow
    );
    assert!(matches!(
        refused(base().jitter(2.0)),
        BreakerConfigError::Jitter(_)
    ));
    assert_eq!(
        refused(base().half_open_probes(0)),
        BreakerConfigError::ZeroProbes
    );
    assert!(
        refused(base().jitter(-0.1))
            .to_string()
            .contains("fraction in [0, 1]")
    );
}

#[test]
fn a_huge_cool_down_saturates() {
    let clock = ManualClock::new();
    let breaker = breaker(&clock)
        .cool_down(Duration::MAX)
        .jitter(1.0)
        .build()
        .unwrap();
    fail(&breaker, 3);
    assert!(breaker.permit().unwrap_err().retry_after() > Duration::from_secs(1_000_000));
}
