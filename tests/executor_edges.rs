//! Executor edge cases found in review: a call cancelled after its body succeeded, a waiter
//! facing a stale local flight, `fail_open` and corrupt records.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::Failing;
use idempotency::{
    Claim, Error, Fingerprint, Idempotency, Key, MemoryStore, Record, Store, StoreError, Token,
    async_trait,
};
use idempotency::{ClaimRequest, Completion};

/// A memory store whose `complete` is slow (a loaded Redis / an exhausted SQL pool), and
/// which counts claims.
#[derive(Debug, Clone)]
struct Slow {
    inner: MemoryStore,
    complete_delay: Duration,
    claims: Arc<AtomicUsize>,
}

#[async_trait]
impl Store for Slow {
    async fn claim(&self, k: &Key, request: ClaimRequest) -> Result<Claim, StoreError> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        self.inner.claim(k, request).await
    }
    async fn complete(&self, k: &Key, completion: Completion) -> Result<(), StoreError> {
        tokio::time::sleep(self.complete_delay).await;
        self.inner.complete(k, completion).await
    }
    async fn release(&self, k: &Key, t: &Token) -> Result<(), StoreError> {
        self.inner.release(k, t).await
    }
    async fn renew(&self, k: &Key, t: &Token, l: Duration) -> Result<(), StoreError> {
        self.inner.renew(k, t, l).await
    }
    async fn get(&self, k: &Key) -> Result<Option<Record>, StoreError> {
        self.inner.get(k).await
    }
    async fn remove(&self, k: &Key) -> Result<bool, StoreError> {
        self.inner.remove(k).await
    }
}

fn slow_store(complete_delay: Duration) -> Slow {
    Slow {
        inner: MemoryStore::new(),
        complete_delay,
        claims: Arc::new(AtomicUsize::new(0)),
    }
}

/// The body charged and returned `Ok`; the caller is cancelled while `complete` is on its way
/// (an HTTP client that disconnected, a `tokio::time::timeout` around the call). The output is
/// recorded in the background, so the retry replays it instead of charging again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_after_its_body_succeeded_still_records_the_output() {
    let exec = Idempotency::new(slow_store(Duration::from_millis(300)));
    let charges = Arc::new(AtomicUsize::new(0));
    let key = Key::derive("review::charge", 1, &"order-1").unwrap();
    let fp = Fingerprint::of(&("order-1", 1999)).unwrap();

    let first = {
        let charges = Arc::clone(&charges);
        exec.run(key.clone(), fp, move || async move {
            let n = charges.fetch_add(1, Ordering::SeqCst) + 1;
            Ok::<_, Error>(format!("charge-{n}"))
        })
    };
    // The body finishes at once; the caller gives up while `complete` is still pending.
    let timed_out = tokio::time::timeout(Duration::from_millis(100), first).await;
    assert!(timed_out.is_err(), "the first call was cancelled");
    assert_eq!(
        charges.load(Ordering::SeqCst),
        1,
        "the body ran and returned Ok"
    );

    let retry = {
        let charges = Arc::clone(&charges);
        exec.run(key, fp, move || async move {
            let n = charges.fetch_add(1, Ordering::SeqCst) + 1;
            Ok::<_, Error>(format!("charge-{n}"))
        })
        .await
    };
    assert_eq!(
        charges.load(Ordering::SeqCst),
        1,
        "a successful body must not run again for the retry (retry answered {retry:?})"
    );
    assert_eq!(
        retry.unwrap(),
        "charge-1",
        "the retry replays the first output"
    );
}

/// Process 1 has a hung owner (flight F) whose lease passed; process 2 (another executor over
/// the same store) took the key over. A waiter in process 1 finds F, whose lease has passed,
/// and must poll the store with backoff rather than spin between F and the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_facing_a_stale_local_flight_polls_with_backoff() {
    let store = slow_store(Duration::ZERO);
    let claims = Arc::clone(&store.claims);
    let process1 = Idempotency::builder(store.clone())
        .lease(Duration::from_millis(100))
        .wait_timeout(Duration::from_millis(500))
        .build();
    let process2 = Idempotency::builder(store)
        .lease(Duration::from_secs(30))
        .build();
    let key = Key::derive("review::spin", 1, &"k").unwrap();
    let fp = Fingerprint::of(&"k").unwrap();

    // Process 1: a hung owner.
    let hung = {
        let (p, key) = (process1.clone(), key.clone());
        tokio::spawn(async move {
            p.run(key, fp, || async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, Error>(1u32)
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await; // its lease passed
    // Process 2 takes the key over and runs for a long time.
    let taker = {
        let key = key.clone();
        tokio::spawn(async move {
            process2
                .run(key, fp, || async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok::<_, Error>(2u32)
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = claims.load(Ordering::SeqCst);
    // A waiter in process 1: waits up to 500 ms.
    let waited: Result<u32, Error> = process1
        .run(key, fp, || async { Ok::<_, Error>(3u32) })
        .await;
    let spent = claims.load(Ordering::SeqCst) - before;
    hung.abort();
    taker.abort();
    assert!(
        matches!(waited, Err(Error::InProgress { .. })),
        "{waited:?}"
    );
    // Polling with capped backoff (2 ms doubling to 250 ms) takes ~8 claims in 500 ms.
    assert!(spent < 50, "the waiter sent {spent} claims in 500 ms");
}

/// A store that is up but holds a damaged record for every key.
const DAMAGED: Failing = Failing(|| StoreError::corrupt("not one of our records"));

/// `fail_open` is for outages: a store that answers with a corrupt record is up, and the body
/// must not run.
#[tokio::test]
async fn fail_open_does_not_run_the_body_over_a_corrupt_record() {
    let exec = Idempotency::builder(DAMAGED).fail_open(true).build();
    let runs = AtomicUsize::new(0);
    let key = Key::derive("review::corrupt", 1, &"k").unwrap();
    let fp = Fingerprint::of(&"k").unwrap();
    let out: Result<u32, Error> = exec
        .run(key, fp, || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(1)
        })
        .await;
    assert!(matches!(out, Err(Error::CorruptRecord { .. })), "{out:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}
