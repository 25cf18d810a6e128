//! At most once on the in-process store: the shared scenarios (`at_most_once_support`), and the
//! paths that need no server — shutdown, panics, an output whose `Serialize` panics, and what
//! `is_retryable` says once the body ran.

mod at_most_once_support;
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency::{
    Claim, Error, Fingerprint, Idempotency, InProgressPolicy, Inspection, Key, MemoryStore,
    NotStored, Record, Store, StoreError, StoreOp, Token, async_trait,
};
use idempotency::{ClaimRequest, Completion};
use serde::{Deserialize, Serialize};

async fn open(_: Option<String>) -> Option<(Arc<dyn Store>, String)> {
    Some((Arc::new(MemoryStore::new()), String::new()))
}

at_most_once_support::at_most_once_suite!(open, cross_process = false);

fn key(what: &str) -> (Key, Fingerprint) {
    (
        Key::derive("at_most_once::memory", 1, &what).expect("key"),
        Fingerprint::of(&what).expect("fingerprint"),
    )
}

/// A store whose `complete` takes `delay` (a slow network), fails, or refuses outputs over
/// `refuse_over` bytes as too large (without saying so in `max_output_bytes`).
#[derive(Debug)]
struct SlowComplete {
    inner: MemoryStore,
    delay: Duration,
    fail: bool,
    refuse_over: usize,
    /// This many `complete`s fail as unavailable before they go through.
    fail_first: AtomicUsize,
}

#[async_trait]
impl Store for SlowComplete {
    async fn claim(&self, key: &Key, request: ClaimRequest) -> Result<Claim, StoreError> {
        self.inner.claim(key, request).await
    }
    async fn complete(&self, key: &Key, completion: Completion) -> Result<(), StoreError> {
        tokio::time::sleep(self.delay).await;
        if self.fail {
            return Err(StoreError::Backend("the store broke".into()));
        }
        let failing = self
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            });
        if failing.is_ok() {
            return Err(StoreError::Timeout(Duration::from_millis(1)));
        }
        if completion.output.len() > self.refuse_over {
            return Err(StoreError::TooLarge {
                size: completion.output.len(),
                limit: self.refuse_over,
            });
        }
        self.inner.complete(key, completion).await
    }
    async fn release(&self, key: &Key, token: &Token) -> Result<(), StoreError> {
        self.inner.release(key, token).await
    }
    async fn renew(&self, key: &Key, token: &Token, lease: Duration) -> Result<(), StoreError> {
        self.inner.renew(key, token, lease).await
    }
    async fn get(&self, key: &Key) -> Result<Option<Record>, StoreError> {
        self.inner.get(key).await
    }
    async fn remove(&self, key: &Key) -> Result<bool, StoreError> {
        self.inner.remove(key).await
    }
}

/// A call cancelled right after its body returned, its output on the way to a slow store:
/// `shutdown` waits for the background completion before the runtime ends, and the retry (in
/// a new runtime, as after a restart) replays. Without `shutdown` the runtime drops it.
#[test]
fn shutdown_waits_for_background_completions() {
    for shut_down in [true, false] {
        let memory = MemoryStore::new();
        let store: Arc<dyn Store> = Arc::new(SlowComplete {
            inner: memory.clone(),
            delay: Duration::from_millis(300),
            fail: false,
            refuse_over: usize::MAX,
            fail_first: AtomicUsize::new(0),
        });
        let what = format!("shutdown-{shut_down}");
        let (key, fingerprint) = key(&what);
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        runtime.block_on(async {
            let idempotency = Idempotency::new(Arc::clone(&store));
            let returned = Arc::new(tokio::sync::Notify::new());
            let call = {
                let (idempotency, key, returned) =
                    (idempotency.clone(), key.clone(), Arc::clone(&returned));
                tokio::spawn(async move {
                    idempotency
                        .run(key, fingerprint, || async move {
                            returned.notify_one();
                            Ok::<_, Error>("charged".to_owned())
                        })
                        .await
                })
            };
            returned.notified().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            call.abort();
            let _ = call.await;
            if shut_down {
                idempotency
                    .shutdown(Duration::from_secs(5))
                    .await
                    .expect("every background completion ends in time");
            }
        });
        drop(runtime);
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let record = runtime.block_on(memory.get(&key)).expect("get");
        if shut_down {
            assert!(
                matches!(record, Some(Record::Completed { .. })),
                "after shutdown the output is recorded: {record:?}"
            );
            let retry: Result<String, Error> = runtime.block_on(
                Idempotency::new(memory.clone()).run(key, fingerprint, || async {
                    Ok("charged twice".to_owned())
                }),
            );
            assert_eq!(retry.expect("a replay"), "charged");
        } else {
            assert!(
                matches!(record, Some(Record::InProgress { .. })),
                "without shutdown the runtime dropped the completion: {record:?}"
            );
        }
    }
}

/// `shutdown` that cannot finish in time says how many completions are left.
#[tokio::test]
async fn shutdown_reports_what_it_left() {
    let store = SlowComplete {
        inner: MemoryStore::new(),
        delay: Duration::from_secs(2),
        fail: false,
        refuse_over: usize::MAX,
        fail_first: AtomicUsize::new(0),
    };
    let idempotency = Idempotency::new(store);
    let (key, fingerprint) = key("shutdown-timeout");
    let call = {
        let idempotency = idempotency.clone();
        tokio::spawn(async move {
            idempotency
                .run(key, fingerprint, || async { Ok::<_, Error>(1u8) })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    call.abort();
    let _ = call.await;
    let left = idempotency.shutdown(Duration::from_millis(50)).await;
    assert_eq!(left.expect_err("timed out").pending, 1);
    idempotency
        .shutdown(Duration::from_secs(5))
        .await
        .expect("done after the store answered");
}

/// A panic in the body's synchronous part (before its future exists) releases the claim,
/// like a panic while it runs: a retry runs the body.
#[tokio::test]
async fn a_panic_before_the_body_future_releases_the_claim() {
    let idempotency = Idempotency::builder(MemoryStore::new())
        .on_in_progress(InProgressPolicy::Reject)
        .build();
    let (key, fingerprint) = key("sync-panic");
    let panicked = {
        let (idempotency, key) = (idempotency.clone(), key.clone());
        tokio::spawn(async move {
            let _: Result<u8, Error> = idempotency
                .run(
                    key,
                    fingerprint,
                    || -> std::future::Ready<Result<u8, Error>> {
                        panic!("the body panicked before returning its future")
                    },
                )
                .await;
        })
        .await
    };
    assert!(panicked.expect_err("the panic resumes").is_panic());
    let retry: Result<u8, Error> = idempotency.run(key, fingerprint, || async { Ok(7) }).await;
    assert_eq!(retry.expect("the retry runs"), 7);
}

/// An output whose `Serialize` panics: the body had returned, so the record says it ran
/// (retries get `OutputNotStored`) before the panic goes on.
#[tokio::test]
async fn a_panicking_serialize_is_recorded_before_the_panic_resumes() {
    #[derive(Debug, Deserialize)]
    struct Panics;
    impl Serialize for Panics {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            panic!("Serialize panicked")
        }
    }
    let idempotency = Idempotency::new(MemoryStore::new());
    let (key, fingerprint) = key("serialize-panic");
    let runs = Arc::new(AtomicUsize::new(0));
    let panicked = {
        let (idempotency, key, runs) = (idempotency.clone(), key.clone(), Arc::clone(&runs));
        tokio::spawn(async move {
            let _: Result<Panics, Error> = idempotency
                .run(key, fingerprint, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok(Panics)
                })
                .await;
        })
        .await
    };
    assert!(panicked.expect_err("the panic resumes").is_panic());
    let retry: Result<Panics, Error> = idempotency
        .run(key, fingerprint, || async {
            panic!("the body must not run again")
        })
        .await;
    assert!(
        matches!(
            &retry,
            Err(Error::OutputNotStored { reason: NotStored::Unencodable { detail }, .. })
                if detail.contains("panicked")
        ),
        "{retry:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A failed `complete` is not retryable: the body ran, and a generic retry loop would run it
/// again once the lease passes.
#[tokio::test]
async fn a_failed_complete_is_not_retryable() {
    let idempotency = Idempotency::new(SlowComplete {
        inner: MemoryStore::new(),
        delay: Duration::ZERO,
        fail: true,
        refuse_over: usize::MAX,
        fail_first: AtomicUsize::new(0),
    });
    let (key, fingerprint) = key("complete-fails");
    let result: Result<u8, Error> = idempotency.run(key, fingerprint, || async { Ok(1) }).await;
    let error = result.expect_err("complete failed");
    assert!(
        matches!(
            error,
            Error::Store {
                op: StoreOp::Complete,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.is_retryable(), "{error}");
}

/// A renewed lease moves the flight's lease too: a duplicate of this process under `reject`
/// past the first lease still gets `InProgress` (asking the store), never a second run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_owner_of_this_process_is_not_taken_over() {
    let idempotency = Idempotency::builder(MemoryStore::new())
        .lease(Duration::from_millis(200))
        .on_in_progress(InProgressPolicy::Reject)
        .build();
    let (key, fingerprint) = key("renewed-flight");
    let owner = {
        let (idempotency, key) = (idempotency.clone(), key.clone());
        tokio::spawn(async move {
            idempotency
                .run(key, fingerprint, || async {
                    tokio::time::sleep(Duration::from_millis(900)).await;
                    Ok::<_, Error>(1u8)
                })
                .await
        })
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let duplicate: Result<u8, Error> = idempotency
            .run(key.clone(), fingerprint, || async {
                panic!("a second execution")
            })
            .await;
        assert!(
            matches!(duplicate, Err(Error::InProgress { .. })),
            "{duplicate:?}"
        );
    }
    assert_eq!(owner.await.expect("owner").expect("owner's output"), 1);
}

/// A store that refuses the output as too large at `complete` (its limit unknown to the
/// executor): the not-stored record goes in its place, and the body does not run again.
#[tokio::test]
async fn an_output_the_store_refuses_is_recorded_as_not_stored() {
    let idempotency = Idempotency::new(SlowComplete {
        inner: MemoryStore::new(),
        delay: Duration::ZERO,
        fail: false,
        refuse_over: 100,
        fail_first: AtomicUsize::new(0),
    });
    let (key, fingerprint) = key("store-refuses");
    let runs = AtomicUsize::new(0);
    let mut results = Vec::new();
    for _ in 0..2 {
        let result: Result<String, Error> = idempotency
            .run(key.clone(), fingerprint, || async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok("z".repeat(500))
            })
            .await;
        results.push(result);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(results[0].as_ref().map(String::len).ok(), Some(500));
    assert!(
        matches!(
            &results[1],
            Err(Error::OutputNotStored {
                reason: NotStored::TooLarge { limit: 100, .. },
                ..
            })
        ),
        "{:?}",
        results[1]
    );
}

/// A store that says `complete` succeeded when it was refused (a zombie's write "accepted"):
/// the linearizability check finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_linearizability_check_finds_a_store_that_lies_about_fencing() {
    #[derive(Debug)]
    struct Lies(MemoryStore);
    #[async_trait]
    impl Store for Lies {
        async fn claim(&self, key: &Key, request: ClaimRequest) -> Result<Claim, StoreError> {
            self.0.claim(key, request).await
        }
        async fn complete(&self, key: &Key, completion: Completion) -> Result<(), StoreError> {
            match self.0.complete(key, completion).await {
                Err(StoreError::LeaseLost) => Ok(()),
                other => other,
            }
        }
        async fn release(&self, key: &Key, token: &Token) -> Result<(), StoreError> {
            self.0.release(key, token).await
        }
        async fn renew(&self, key: &Key, token: &Token, lease: Duration) -> Result<(), StoreError> {
            self.0.renew(key, token, lease).await
        }
        async fn get(&self, key: &Key) -> Result<Option<Record>, StoreError> {
            self.0.get(key).await
        }
        async fn remove(&self, key: &Key) -> Result<bool, StoreError> {
            self.0.remove(key).await
        }
    }
    // A zombie's complete needs a release, another claim and the stale token's complete in
    // that order on one key.
    // Fixed seeds, so the test cannot pass on one machine and fail on the next: it stops at
    // the first that catches the lie (in practice one of the first few).
    let first = 1;
    let mut caught = None;
    for seed in first..first + 100 {
        let store: Arc<dyn Store> = Arc::new(Lies(MemoryStore::new()));
        let run = tokio::spawn(at_most_once_support::linearizability::check(
            store, seed, 32, 4, 10, false,
        ));
        if let Err(failure) = run.await {
            let panic = failure.into_panic();
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| format!("{panic:?}"));
            caught = Some((seed, message));
            break;
        }
    }
    let Some((seed, message)) = caught else {
        panic!(
            "seeds {first}..{}: a store that accepts a zombie's complete must fail the check",
            first + 100
        );
    };
    // The failure names the seed and prints a minimal history before the whole one: the
    // zombie's accepted complete is in it, and it is shorter.
    println!("seed {seed}: {message}");
    let (minimal, whole) = message
        .split_once("The whole history:")
        .expect("the whole history is printed");
    assert!(message.contains(&format!("LINEARIZABILITY_SEED={seed}")));
    let minimal = minimal
        .split_once("Minimal history")
        .expect("a minimal history is printed")
        .1;
    assert!(minimal.contains("Complete"), "{minimal}");
    assert!(
        minimal.lines().count() < whole.lines().count(),
        "the minimal history is shorter:\n{minimal}\nthan\n{whole}"
    );
}

/// A store that fails every `complete` for a while after the body returned: the call gets the
/// store error, the output is recorded in the background with the lease renewed meanwhile, so
/// a duplicate waiting on another executor never takes the key over; it gets the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_fails_complete_for_a_while_never_lets_a_duplicate_run() {
    let store: Arc<dyn Store> = Arc::new(SlowComplete {
        inner: MemoryStore::new(),
        delay: Duration::ZERO,
        fail: false,
        refuse_over: usize::MAX,
        // 3 in the call, then ~1.2 s of attempts in the background.
        fail_first: AtomicUsize::new(12),
    });
    let executor = || {
        Idempotency::builder(Arc::clone(&store))
            .lease(Duration::from_millis(300))
            .build()
    };
    let (owner, other) = (executor(), executor());
    let (key, fingerprint) = key("complete-fails-for-a-while");
    let runs = Arc::new(AtomicUsize::new(0));
    let first: Result<String, Error> = {
        let runs = Arc::clone(&runs);
        owner
            .run(key.clone(), fingerprint, || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok("charged".to_owned())
            })
            .await
    };
    assert!(
        matches!(
            first,
            Err(Error::Store {
                op: StoreOp::Complete,
                ..
            })
        ),
        "{first:?}"
    );
    let duplicate: Result<String, Error> = {
        let runs = Arc::clone(&runs);
        other
            .run(key, fingerprint, || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok("charged twice".to_owned())
            })
            .await
    };
    assert_eq!(duplicate.expect("the replay"), "charged");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the body ran twice");
    owner
        .shutdown(Duration::from_secs(5))
        .await
        .expect("nothing left");
}

/// `shutdown` waits for a call whose body is still running, not only for the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_calls_in_flight() {
    let idempotency = Idempotency::new(MemoryStore::new());
    let (key, fingerprint) = key("shutdown-in-flight");
    let inspected = key.clone();
    let call = {
        let idempotency = idempotency.clone();
        tokio::spawn(async move {
            idempotency
                .run(key, fingerprint, || async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, Error>(1u8)
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = std::time::Instant::now();
    idempotency
        .shutdown(Duration::from_secs(5))
        .await
        .expect("the call ends in time");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "shutdown returned while the call ran"
    );
    // The body has ended and its output is stored when shutdown returns; the spawned task
    // itself may still be handing its result back, so it is awaited, not asserted finished.
    let record = idempotency.inspect(&inspected).await.expect("inspect");
    assert!(
        matches!(record, Some(Inspection::Completed { .. })),
        "shutdown returned before the call completed: {record:?}"
    );
    let output = tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .expect("the call returns once its record is complete");
    assert_eq!(output.expect("task").expect("output"), 1);
}

/// A failing seed replays exactly: on a current-thread runtime over the in-process store, two
/// runs of one seed produce the same histories, operation for operation.
#[test]
fn a_linearizability_seed_replays_exactly_in_process() {
    let seed = at_most_once_support::linearizability::seed();
    let shape = || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(at_most_once_support::linearizability::check_with_shape(
            Arc::new(MemoryStore::new()),
            seed,
            8,
            4,
            10,
            false,
        ))
    };
    let (first, second) = (shape(), shape());
    assert!(first.1.lines().count() == 8 * 4 * 10, "{}", first.1);
    assert_eq!(
        first, second,
        "seed {seed} did not replay the same histories"
    );
}
