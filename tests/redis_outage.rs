//! The store breaker against a real outage: a test-owned `redis-server` is killed under load
//! (32 tasks calling in a loop) and restarted. Once the breaker opens, calls fail closed in
//! under 5 ms without running a body; after the restart, calls succeed again within the
//! cool-down and one probe.
//!
//! Without `redis-server` the test prints SKIPPED; `IDEMPOTENCY_REQUIRE_SERVICES=1` makes that
//! a failure.

mod redis_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idempotency::retry::{BreakerState, CircuitBreaker};
use idempotency::{Error, Fingerprint, Idempotency, Key, RedisStore, StoreError};
use redis_support::{RedisServer, manager, unique_prefix};

const SUITE: &str = "redis outage";
const TASKS: usize = 32;
/// Each task's bound on calls, whatever the timing.
const MAX_CALLS: usize = 20_000;
const COOL_DOWN: Duration = Duration::from_millis(500);
const JITTER: f64 = 0.2;
/// The store's connection and response timeout: the most one probe can take.
const TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Ok,
    Open,
    StoreDown,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    started: Instant,
    ended: Instant,
    outcome: Outcome,
}

fn outcome(result: &Result<u64, Error>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(Error::Store {
            source: StoreError::CircuitOpen(_),
            ..
        }) => Outcome::Open,
        Err(Error::Store { .. }) => Outcome::StoreDown,
        Err(other) => panic!("unexpected error: {other:?}"),
    }
}

/// Waits (up to `limit`) until `done` holds; false if it never did.
async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    done()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_at_once_while_redis_is_down_and_succeed_after_the_cool_down_and_a_probe() {
    let Some(mut server) = RedisServer::start(SUITE) else {
        return;
    };
    let connection = manager(&server.url(), TIMEOUT).await.expect("connect");
    let store = RedisStore::builder(connection)
        .prefix(unique_prefix("outage"))
        .build()
        .expect("prefix");
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(5)
        .cool_down(COOL_DOWN)
        .jitter(JITTER)
        .build()
        .expect("breaker");
    let idempotency = Idempotency::builder(store)
        .store_breaker(breaker.clone())
        .build();

    let stop = Arc::new(AtomicBool::new(false));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let successes = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let idempotency = idempotency.clone();
            let stop = Arc::clone(&stop);
            let bodies = Arc::clone(&bodies);
            let successes = Arc::clone(&successes);
            tokio::spawn(async move {
                let mut samples = Vec::new();
                for call in 0..MAX_CALLS {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let input = (task, call);
                    let key = Key::derive("outage::charge", 1, &input).expect("key derives");
                    let fingerprint = Fingerprint::of(&input).expect("fingerprint");
                    let bodies = Arc::clone(&bodies);
                    let started = Instant::now();
                    let result: Result<u64, Error> = idempotency
                        .run(key, fingerprint, || async move {
                            bodies.lock().expect("bodies lock").push(Instant::now());
                            Ok(call as u64)
                        })
                        .await;
                    let ended = Instant::now();
                    let outcome = outcome(&result);
                    if outcome == Outcome::Ok {
                        successes.fetch_add(1, Ordering::SeqCst);
                    }
                    samples.push(Sample {
                        started,
                        ended,
                        outcome,
                    });
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                samples
            })
        })
        .collect();

    // Up and under load.
    assert!(
        wait_until(Duration::from_secs(10), || successes.load(Ordering::SeqCst)
            >= 500)
        .await,
        "calls succeed while Redis is up"
    );
    let kill_begun = Instant::now();
    tokio::task::block_in_place(|| server.kill());
    assert!(
        wait_until(Duration::from_secs(10), || breaker.state()
            != BreakerState::Closed)
        .await,
        "the breaker opens during the outage"
    );
    let opened = Instant::now();
    // The outage goes on over two cool-downs: probes fail and reopen it.
    tokio::time::sleep(COOL_DOWN * 3).await;
    let restart_begun = Instant::now();
    tokio::task::block_in_place(|| server.restart());
    let restarted = Instant::now();
    let before = successes.load(Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(10), || successes.load(Ordering::SeqCst)
            > before + 100)
        .await,
        "calls succeed again after the restart"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::SeqCst);
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.expect("task"));
    }

    // During the outage (after the kill's reply window, before the restart) no call succeeded
    // and no body ran: the store could not be asked.
    let during = |at: Instant| at > opened && at < restart_begun;
    let ran = bodies
        .lock()
        .expect("bodies lock")
        .iter()
        .filter(|at| during(**at))
        .count();
    assert_eq!(ran, 0, "no body runs while the store is down");
    let succeeded = samples
        .iter()
        .filter(|s| s.started > kill_begun && s.ended < restart_begun && s.outcome == Outcome::Ok)
        .count();
    assert_eq!(succeeded, 0, "no call succeeds while the store is down");

    // Refused by the open breaker: each at once.
    let mut refused: Vec<Duration> = samples
        .iter()
        .filter(|s| s.outcome == Outcome::Open)
        .map(|s| s.ended - s.started)
        .collect();
    refused.sort();
    assert!(refused.len() > 100, "{} calls refused", refused.len());
    let slowest = *refused.last().expect("at least one refusal");
    let median = refused[refused.len() / 2];
    let store_down: Vec<Duration> = samples
        .iter()
        .filter(|s| s.outcome == Outcome::StoreDown)
        .map(|s| s.ended - s.started)
        .collect();
    assert!(
        slowest < Duration::from_millis(5),
        "an open breaker refused a call in {slowest:?} (median {median:?})"
    );

    // Back within the cool-down and one probe after the restart — or, when a probe that was
    // in flight across the restart still failed (its reconnection began while the server was
    // down), after that probe ended.
    let last_failure = samples
        .iter()
        .filter(|s| s.outcome == Outcome::StoreDown)
        .map(|s| s.ended)
        .max()
        .expect("calls failed on the store before the breaker opened");
    let back_from = restarted.max(last_failure);
    let first_success = samples
        .iter()
        .filter(|s| s.started >= restarted && s.outcome == Outcome::Ok)
        .map(|s| s.ended)
        .min()
        .expect("a success after the restart");
    let back_after = first_success - back_from;
    let bound = COOL_DOWN.mul_f64(1.0 + JITTER) + TIMEOUT;
    println!(
        "{} calls; {} refused by the open breaker (median {median:?}, slowest {slowest:?}); \
         {} failed on the store (slowest {:?}); first success {:?} after the restart, \
         {back_after:?} after the later of the restart and the last failed probe (bound {bound:?})",
        samples.len(),
        refused.len(),
        store_down.len(),
        store_down.iter().max(),
        first_success - restarted,
    );
    let mut timeline: Vec<String> = samples
        .iter()
        .filter(|s| s.outcome == Outcome::StoreDown)
        .map(|s| {
            let at = |t: Instant| {
                if t >= restarted {
                    format!("+{:?}", t - restarted)
                } else {
                    format!("-{:?}", restarted - t)
                }
            };
            format!("{}..{}", at(s.started), at(s.ended))
        })
        .collect();
    timeline.sort();
    assert!(
        back_after <= bound,
        "calls succeeded {back_after:?} after the store was back, over the cool-down and one \
         probe ({bound:?}); store failures relative to the restart: {timeline:?}"
    );
}
