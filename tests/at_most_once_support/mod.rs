//! At most once on every path, written once and run against every store: an output that
//! cannot be stored, a slow body whose lease is renewed (duplicates from other tasks, another
//! executor and other OS processes), renewal stopped by `max_run`, and a hung owner of this
//! process taken over under both policies.
//!
//! A test file opens its store with an `open(locator)` function: `None` makes a fresh store
//! and returns it with a locator (a prefix, a table) from which a child process opens the same
//! store, `Some(locator)` opens that one. It then expands [`at_most_once_suite!`].

#![allow(dead_code)]

pub(crate) mod linearizability;
pub(crate) mod proxy;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idempotency::consumer::Consumer;
use idempotency::{
    Claim, Error, Fingerprint, Idempotency, InProgressPolicy, Key, NotStored, Record, Store,
    StoreError, Token, async_trait,
};
use idempotency::{ClaimRequest, Completion};
use serde::{Deserialize, Serialize};

/// The environment a child process reads: the store's locator, the key's seed, and when to
/// call (milliseconds since the Unix epoch).
pub(crate) const CHILD_LOCATOR: &str = "AT_MOST_ONCE_LOCATOR";
pub(crate) const CHILD_SEED: &str = "AT_MOST_ONCE_SEED";
pub(crate) const CHILD_AT: &str = "AT_MOST_ONCE_AT";
/// The line a child prints when its body ran, and the prefix of its result line.
pub(crate) const CHILD_RAN: &str = "AT_MOST_ONCE_CHILD ran";
pub(crate) const CHILD_RESULT: &str = "AT_MOST_ONCE_CHILD result=";

const LEASE: Duration = Duration::from_millis(300);
const SLOW_BODY: Duration = Duration::from_millis(1500);
/// When the duplicates come, after the owner started.
const DUPLICATES_AT: [u64; 3] = [500, 900, 1300];

fn unique(what: &str) -> String {
    format!("{what}-{}-{}", std::process::id(), Token::random())
}

fn key_of(seed: &str) -> (Key, Fingerprint) {
    (
        Key::derive("at_most_once::renewal", 1, &seed).expect("key"),
        Fingerprint::of(&seed).expect("fingerprint"),
    )
}

fn unix_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970");
    u64::try_from(since.as_millis()).expect("milliseconds fit u64")
}

/// Counts the renewals a store receives.
#[derive(Debug)]
pub(crate) struct CountingRenewals {
    inner: Arc<dyn Store>,
    renewals: Arc<AtomicUsize>,
}

#[async_trait]
impl Store for CountingRenewals {
    async fn claim(&self, key: &Key, request: ClaimRequest) -> Result<Claim, StoreError> {
        self.inner.claim(key, request).await
    }
    async fn complete(&self, key: &Key, completion: Completion) -> Result<(), StoreError> {
        self.inner.complete(key, completion).await
    }
    async fn release(&self, key: &Key, token: &Token) -> Result<(), StoreError> {
        self.inner.release(key, token).await
    }
    async fn renew(&self, key: &Key, token: &Token, lease: Duration) -> Result<(), StoreError> {
        self.renewals.fetch_add(1, Ordering::SeqCst);
        self.inner.renew(key, token, lease).await
    }
    async fn get(&self, key: &Key) -> Result<Option<Record>, StoreError> {
        self.inner.get(key).await
    }
    async fn remove(&self, key: &Key) -> Result<bool, StoreError> {
        self.inner.remove(key).await
    }
    fn max_output_bytes(&self) -> usize {
        self.inner.max_output_bytes()
    }
}

/// An output whose `Serialize` fails.
#[derive(Debug, Deserialize)]
pub(crate) struct Refuses;

impl Serialize for Refuses {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this output refuses to be encoded",
        ))
    }
}

fn assert_not_stored<T: std::fmt::Debug>(result: &Result<T, Error>, what: &str) -> NotStored {
    match result {
        Err(Error::OutputNotStored { reason, .. }) => reason.clone(),
        other => panic!("{what}: expected OutputNotStored, got {other:?}"),
    }
}

/// An output over `max_output_bytes`, one that cannot be encoded, and the same through a
/// `Consumer`: the body runs once, the first call gets its result, retries the typed error.
pub(crate) async fn unstorable_outputs_run_once(store: Arc<dyn Store>) {
    let idempotency = Idempotency::builder(Arc::clone(&store))
        .max_output_bytes(64)
        .build();
    let runs = AtomicUsize::new(0);
    let (key, fingerprint) = key_of(&unique("too-large"));
    let mut results = Vec::new();
    for _ in 0..3 {
        let result: Result<String, Error> = idempotency
            .run(key.clone(), fingerprint, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok("x".repeat(1000))
            })
            .await;
        results.push(result);
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the body ran more than once"
    );
    assert_eq!(
        results[0].as_ref().map(String::len).ok(),
        Some(1000),
        "the first call gets its own result: {:?}",
        results[0].as_ref().map(String::len)
    );
    for retry in &results[1..] {
        let reason = assert_not_stored(retry, "a retry of an oversized output");
        assert!(
            matches!(reason, NotStored::TooLarge { size, limit: 64 } if size > 1000),
            "{reason:?}"
        );
    }
    let message = results[1].as_ref().expect_err("an error").to_string();
    assert!(
        message.contains("not stored") && message.contains("64"),
        "{message}"
    );
    assert!(!results[1].as_ref().expect_err("an error").is_retryable());

    // An output whose `Serialize` fails.
    let (key, fingerprint) = key_of(&unique("unencodable"));
    let runs = AtomicUsize::new(0);
    for attempt in 0..2 {
        let result: Result<Refuses, Error> = idempotency
            .run(key.clone(), fingerprint, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(Refuses)
            })
            .await;
        if attempt == 0 {
            assert!(result.is_ok(), "the first call gets its result: {result:?}");
        } else {
            let reason = assert_not_stored(&result, "a retry of an unencodable output");
            assert!(
                matches!(&reason, NotStored::Unencodable { detail } if detail.contains("refuses")),
                "{reason:?}"
            );
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // Through a consumer.
    let consumer = Consumer::new(idempotency.clone(), unique("at_most_once.consumer"));
    let handled = AtomicUsize::new(0);
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let outcome: Result<_, Error> = consumer
            .handle(&"message-1", || async {
                handled.fetch_add(1, Ordering::SeqCst);
                Ok("y".repeat(500))
            })
            .await;
        outcomes.push(outcome.map(|outcome| outcome.into_inner()));
    }
    assert_eq!(handled.load(Ordering::SeqCst), 1, "the handler ran twice");
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    for retry in &outcomes[1..] {
        assert_not_stored(retry, "a redelivery of an oversized output");
    }
}

/// One duplicate's call with the renewal scenario's key: its body returns "duplicate".
async fn duplicate(idempotency: Idempotency, seed: String, ran: Arc<AtomicUsize>) -> String {
    let (key, fingerprint) = key_of(&seed);
    let result: Result<String, Error> = idempotency
        .run(key, fingerprint, || async move {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok("duplicate".to_owned())
        })
        .await;
    match result {
        Ok(output) => output,
        Err(error) => format!("error: {error}"),
    }
}

/// Starts a child process that calls with the key of a seed at a time (Unix milliseconds) and
/// answers its output, or "ran" when its body ran.
pub(crate) type SpawnChild = dyn Fn(&str, u64) -> tokio::task::JoinHandle<String> + Sync;

/// Lease 300 ms, a body of 1.5 s, duplicates at 500, 900 and 1300 ms from other tasks of this
/// executor, from a second executor on the same store and (`child`) from other OS processes:
/// the body runs once, the lease is renewed, and every duplicate gets the first call's output.
pub(crate) async fn renewal_keeps_a_slow_body(store: Arc<dyn Store>, child: Option<&SpawnChild>) {
    let renewals = Arc::new(AtomicUsize::new(0));
    let counted: Arc<dyn Store> = Arc::new(CountingRenewals {
        inner: Arc::clone(&store),
        renewals: Arc::clone(&renewals),
    });
    let executor = || {
        Idempotency::builder(Arc::clone(&counted))
            .lease(LEASE)
            .build()
    };
    let (owner, other) = (executor(), executor());
    let seed = unique("renewal");
    let runs = Arc::new(AtomicUsize::new(0));
    let start = unix_ms();
    let first = {
        let (key, fingerprint) = key_of(&seed);
        let runs = Arc::clone(&runs);
        let owner = owner.clone();
        tokio::spawn(async move {
            owner
                .run(key, fingerprint, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(SLOW_BODY).await;
                    Ok::<_, Error>("first".to_owned())
                })
                .await
        })
    };
    let mut duplicates = Vec::new();
    for at in DUPLICATES_AT {
        for idempotency in [owner.clone(), other.clone()] {
            let (seed, runs) = (seed.clone(), Arc::clone(&runs));
            duplicates.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(at)).await;
                duplicate(idempotency, seed, runs).await
            }));
        }
        if let Some(child) = child {
            duplicates.push(child(&seed, start + at));
        }
    }
    let first = first.await.expect("the owner's task");
    assert_eq!(first.as_deref().ok(), Some("first"), "{first:?}");
    for duplicate in duplicates {
        let output = duplicate.await.expect("a duplicate's task");
        assert_eq!(output, "first", "a duplicate did not get the first output");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the body ran twice");
    // Every 100 ms for 1.5 s: at most 15, and enough to have kept the lease.
    let renewed = renewals.load(Ordering::SeqCst);
    assert!((4..=15).contains(&renewed), "{renewed} renewals");
}

/// The child process's side of [`renewal_keeps_a_slow_body`]: call at the given time, print
/// whether the body ran and what the call returned.
pub(crate) async fn child_duplicate(store: Arc<dyn Store>) {
    let seed = std::env::var(CHILD_SEED).expect("the key's seed");
    let at: u64 = std::env::var(CHILD_AT)
        .expect("when to call")
        .parse()
        .expect("milliseconds");
    tokio::time::sleep(Duration::from_millis(at.saturating_sub(unix_ms()))).await;
    let ran = Arc::new(AtomicUsize::new(0));
    let idempotency = Idempotency::builder(store).lease(LEASE).build();
    let output = duplicate(idempotency, seed, Arc::clone(&ran)).await;
    if ran.load(Ordering::SeqCst) > 0 {
        println!("{CHILD_RAN}");
    }
    println!("{CHILD_RESULT}{output}");
}

/// Runs the ignored test `entry` of this test binary as a child process that calls at `at`
/// and returns its result line ("ran" when its body ran).
pub(crate) fn spawn_child(
    entry: &'static str,
    locator: String,
    seed: &str,
    at: u64,
) -> tokio::task::JoinHandle<String> {
    let seed = seed.to_owned();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(std::env::current_exe().expect("the test binary"))
            .args([entry, "--exact", "--ignored", "--nocapture"])
            .env(CHILD_LOCATOR, locator)
            .env(CHILD_SEED, seed)
            .env(CHILD_AT, at.to_string())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("the child process runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        if stdout.contains(CHILD_RAN) {
            return "ran".to_owned();
        }
        stdout
            .lines()
            .find_map(|line| {
                line.find(CHILD_RESULT)
                    .map(|at| line[at + CHILD_RESULT.len()..].to_owned())
            })
            .unwrap_or_else(|| {
                format!(
                    "no result line; stdout: {stdout}; stderr: {}",
                    String::from_utf8_lossy(&output.stderr)
                )
            })
    })
}

/// Lease 300 ms, `max_run` 600 ms, a body of 2.5 s: a probe at 400 ms still finds the key in
/// progress (renewed), a duplicate at 1.4 s takes it over and runs, and the first owner's late
/// result is refused with `LeaseLost`.
pub(crate) async fn max_run_stops_renewal(store: Arc<dyn Store>) {
    let executor = || {
        Idempotency::builder(Arc::clone(&store))
            .lease(LEASE)
            .max_run(Duration::from_millis(600))
            .build()
    };
    let (owner, other) = (executor(), executor());
    let seed = unique("max-run");
    let (key, fingerprint) = key_of(&seed);
    let runs = Arc::new(AtomicUsize::new(0));
    let first = {
        let (key, runs) = (key.clone(), Arc::clone(&runs));
        tokio::spawn(async move {
            owner
                .run(key, fingerprint, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    Ok::<_, Error>("first".to_owned())
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let probe: Result<String, Error> = other
        .call(key.clone(), fingerprint)
        .on_in_progress(InProgressPolicy::Reject)
        .run(|| async { Ok("probe".to_owned()) })
        .await;
    assert!(
        matches!(probe, Err(Error::InProgress { .. })),
        "within max_run the lease holds: {probe:?}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let second = duplicate(other, seed, Arc::clone(&runs)).await;
    assert_eq!(second, "duplicate", "the hung owner was not taken over");
    let first = first.await.expect("the owner's task");
    assert!(
        matches!(first, Err(Error::LeaseLost { .. })),
        "the first owner's late result must be refused: {first:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// A body of this process that hangs (lease 300 ms, renewal stopped by `max_run` 300 ms):
/// under `reject` and under `wait`, a call of the same executor at 900 ms takes the key over
/// through the store, as a call of another process would, instead of answering `InProgress`.
pub(crate) async fn hung_owner_is_taken_over(store: Arc<dyn Store>, policy: InProgressPolicy) {
    let idempotency = Idempotency::builder(store)
        .lease(LEASE)
        .max_run(LEASE)
        .on_in_progress(policy)
        .build();
    let seed = unique("hung");
    let (key, fingerprint) = key_of(&seed);
    let hung = {
        let (idempotency, key) = (idempotency.clone(), key.clone());
        tokio::spawn(async move {
            idempotency
                .run(key, fingerprint, || async {
                    std::future::pending::<()>().await;
                    Ok::<_, Error>("never".to_owned())
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(900)).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let taken = tokio::time::timeout(
        Duration::from_secs(5),
        duplicate(idempotency, seed, Arc::clone(&runs)),
    )
    .await
    .expect("the call ends");
    assert_eq!(
        taken, "duplicate",
        "{policy:?}: the hung owner was not taken over"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    hung.abort();
}

/// The at-most-once scenarios as tests, for a store opened by `$open` (an
/// `async fn(Option<String>) -> Option<(Arc<dyn Store>, String)>`, `None` when the store's
/// server cannot be reached and services are not required). `cross_process`: the renewal
/// scenario also sends duplicates from child processes (a store other processes can reach).
macro_rules! at_most_once_suite {
    ($open:ident, cross_process = $cross:expr) => {
        mod at_most_once {
            use std::sync::Arc;

            use idempotency::InProgressPolicy;

            use super::at_most_once_support as support;

            async fn fresh() -> Option<(Arc<dyn idempotency::Store>, String)> {
                super::$open(None).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn unstorable_outputs_run_once() {
                let Some((store, _)) = fresh().await else {
                    return;
                };
                support::unstorable_outputs_run_once(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn renewal_keeps_a_slow_body() {
                let Some((store, locator)) = fresh().await else {
                    return;
                };
                let child = move |seed: &str, at: u64| {
                    support::spawn_child("at_most_once::child", locator.clone(), seed, at)
                };
                let child: Option<&support::SpawnChild> = if $cross { Some(&child) } else { None };
                support::renewal_keeps_a_slow_body(store, child).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn max_run_stops_renewal() {
                let Some((store, _)) = fresh().await else {
                    return;
                };
                support::max_run_stops_renewal(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn hung_owner_is_taken_over_under_reject() {
                let Some((store, _)) = fresh().await else {
                    return;
                };
                support::hung_owner_is_taken_over(store, InProgressPolicy::Reject).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn hung_owner_is_taken_over_under_wait() {
                let Some((store, _)) = fresh().await else {
                    return;
                };
                support::hung_owner_is_taken_over(store, InProgressPolicy::Wait).await;
            }

            /// Concurrent random operations on a few keys; each key's history has a
            /// linearization in the sequential `Store` model (seeded: the seed is printed).
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn histories_are_linearizable() {
                let Some((store, _)) = fresh().await else {
                    return;
                };
                let seed = support::linearizability::seed();
                println!("linearizability seed {seed}");
                support::linearizability::check(store, seed, 8, 4, 8, false).await;
            }

            /// A child process of `renewal_keeps_a_slow_body` (run by it, not on its own).
            #[tokio::test]
            #[ignore = "a child process of renewal_keeps_a_slow_body"]
            async fn child() {
                let locator = std::env::var(support::CHILD_LOCATOR).expect("the store's locator");
                let (store, _) = super::$open(Some(locator))
                    .await
                    .expect("the parent's store");
                support::child_duplicate(store).await;
            }
        }
    };
}
pub(crate) use at_most_once_suite;
