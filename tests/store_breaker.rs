//! The executor's store breaker (`IdempotencyBuilder::store_breaker`) over a store whose
//! claims can be switched off: it opens after repeated failed claims, then refuses calls
//! without asking the store and without running their bodies; a probe after the cool-down
//! closes it; completions of bodies already running still reach the store.
//! (Against a real Redis killed under load: `tests/redis_server.rs`.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::Recording;
use idempotency::retry::{BreakerState, CircuitBreaker, ManualClock};
use idempotency::{
    Claim, ClaimNow, ClaimRequest, Completion, Error, Fingerprint, Idempotency, Key, MemoryStore,
    Record, Store, StoreError, StoreOp, Token, async_trait,
};

/// A memory store whose claims fail as unreachable while `down` is set (its other operations
/// always work, so a completion can be told apart from a claim).
#[derive(Debug)]
struct Switchable {
    inner: MemoryStore,
    down: Arc<AtomicBool>,
}

impl Switchable {
    fn refused(&self) -> Option<StoreError> {
        self.down.load(Ordering::SeqCst).then(|| {
            StoreError::unavailable(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
        })
    }
}

#[async_trait]
impl Store for Switchable {
    async fn claim(&self, key: &Key, request: ClaimRequest) -> Result<Claim, StoreError> {
        match self.refused() {
            Some(error) => Err(error),
            None => self.inner.claim(key, request).await,
        }
    }
    fn claim_now(&self, key: &Key, request: ClaimRequest) -> Option<Result<ClaimNow, StoreError>> {
        match self.refused() {
            Some(error) => Some(Err(error)),
            None => self.inner.claim_now(key, request),
        }
    }
    async fn complete(&self, key: &Key, completion: Completion) -> Result<(), StoreError> {
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

struct Setup {
    idempotency: Idempotency,
    breaker: CircuitBreaker,
    clock: ManualClock,
    down: Arc<AtomicBool>,
    counts: Arc<common::Counts>,
    bodies: Arc<AtomicUsize>,
}

fn setup(
    configure: impl FnOnce(idempotency::IdempotencyBuilder) -> idempotency::IdempotencyBuilder,
) -> Setup {
    let down = Arc::new(AtomicBool::new(false));
    let (store, counts) = Recording::new(Switchable {
        inner: MemoryStore::new(),
        down: Arc::clone(&down),
    });
    let clock = ManualClock::new();
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(3)
        .cool_down(Duration::from_secs(5))
        .jitter(0.0)
        .clock(clock.clone())
        .build()
        .expect("a valid breaker");
    let idempotency = configure(Idempotency::builder(store).store_breaker(breaker.clone())).build();
    Setup {
        idempotency,
        breaker,
        clock,
        down,
        counts,
        bodies: Arc::new(AtomicUsize::new(0)),
    }
}

fn key(name: &str) -> (Key, Fingerprint) {
    (
        Key::derive("breaker::test", 1, &name).expect("key derives"),
        Fingerprint::of(&name).expect("fingerprint"),
    )
}

impl Setup {
    async fn call(&self, name: &str) -> Result<u32, Error> {
        let (key, fingerprint) = key(name);
        let bodies = Arc::clone(&self.bodies);
        self.idempotency
            .run(key, fingerprint, || async move {
                bodies.fetch_add(1, Ordering::SeqCst);
                Ok(7)
            })
            .await
    }

    fn claims(&self) -> usize {
        self.counts.claim.load(Ordering::SeqCst)
    }
}

fn circuit_open(error: &Error) -> bool {
    matches!(
        error,
        Error::Store {
            op: StoreOp::Claim,
            source: StoreError::CircuitOpen(_),
            ..
        }
    )
}

#[tokio::test]
async fn an_open_breaker_refuses_calls_without_asking_the_store_and_a_probe_closes_it() {
    let setup = setup(|builder| builder);
    setup.down.store(true, Ordering::SeqCst);
    for n in 0..3 {
        let error = setup.call(&format!("down-{n}")).await.unwrap_err();
        assert!(
            matches!(
                error,
                Error::Store {
                    source: StoreError::Unavailable(_),
                    ..
                }
            ),
            "{error:?}"
        );
    }
    assert_eq!(setup.breaker.state(), BreakerState::Open);
    assert_eq!(setup.claims(), 3);

    // Open: refused at once, the store not asked, no body run, and not retryable.
    for n in 0..50 {
        let error = setup.call(&format!("open-{n}")).await.unwrap_err();
        assert!(circuit_open(&error), "{error:?}");
        assert!(!error.is_retryable());
        let cause = std::error::Error::source(&error).map(ToString::to_string);
        assert!(
            cause
                .as_deref()
                .is_some_and(|cause| cause.contains("circuit breaker is open")),
            "{cause:?}"
        );
    }
    assert_eq!(setup.claims(), 3, "the store was not asked while open");
    assert_eq!(setup.bodies.load(Ordering::SeqCst), 0);

    // The store is back; within the cool-down calls are still refused.
    setup.down.store(false, Ordering::SeqCst);
    setup.clock.advance(Duration::from_secs(4));
    assert!(circuit_open(&setup.call("early").await.unwrap_err()));
    // After it: the first call is the probe; it closes the breaker and runs.
    setup.clock.advance(Duration::from_secs(1));
    assert_eq!(setup.call("probe").await.expect("probe call succeeds"), 7);
    assert_eq!(setup.breaker.state(), BreakerState::Closed);
    assert_eq!(
        setup
            .call("after")
            .await
            .expect("call after close succeeds"),
        7
    );
    assert_eq!(
        setup
            .call("after")
            .await
            .expect("call after close succeeds"),
        7,
        "replayed"
    );
    assert_eq!(setup.bodies.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_failing_probe_keeps_it_open() {
    let setup = setup(|builder| builder);
    setup.down.store(true, Ordering::SeqCst);
    for n in 0..3 {
        let _ = setup.call(&format!("down-{n}")).await;
    }
    setup.clock.advance(Duration::from_secs(5));
    let probe = setup.call("probe").await.unwrap_err();
    assert!(
        matches!(
            probe,
            Error::Store {
                source: StoreError::Unavailable(_),
                ..
            }
        ),
        "{probe:?}"
    );
    assert_eq!(setup.claims(), 4, "one probe went to the store");
    assert!(circuit_open(&setup.call("next").await.unwrap_err()));
    assert_eq!(setup.claims(), 4);
    assert_eq!(setup.bodies.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_body_already_running_records_its_output_while_the_breaker_is_open() {
    let setup = Arc::new(setup(|builder| builder));
    let gate = Arc::new(tokio::sync::Notify::new());
    let running = {
        let setup = Arc::clone(&setup);
        let gate = Arc::clone(&gate);
        tokio::spawn(async move {
            let (key, fingerprint) = key("long");
            setup
                .idempotency
                .run(key, fingerprint, || async move {
                    gate.notified().await;
                    Ok::<_, Error>(11u32)
                })
                .await
        })
    };
    tokio::task::yield_now().await;
    while setup.claims() == 0 {
        tokio::task::yield_now().await;
    }
    setup.down.store(true, Ordering::SeqCst);
    for n in 0..3 {
        let _ = setup.call(&format!("down-{n}")).await;
    }
    assert_eq!(setup.breaker.state(), BreakerState::Open);
    gate.notify_one();
    assert_eq!(
        running
            .await
            .expect("task joins")
            .expect("running call succeeds"),
        11
    );
    assert_eq!(setup.counts.complete.load(Ordering::SeqCst), 1);
    let (key, _) = key("long");
    let record = setup
        .idempotency
        .store()
        .get(&key)
        .await
        .expect("store answers");
    assert!(
        matches!(record, Some(Record::Completed { .. })),
        "{record:?}"
    );
}

#[tokio::test]
async fn with_fail_open_an_open_breaker_runs_the_body_unclaimed() {
    let setup = setup(|builder| builder.fail_open(true));
    setup.down.store(true, Ordering::SeqCst);
    for n in 0..5 {
        assert_eq!(
            setup
                .call(&format!("down-{n}"))
                .await
                .expect("fail-open call runs"),
            7
        );
    }
    assert_eq!(setup.breaker.state(), BreakerState::Open);
    assert_eq!(setup.claims(), 3);
    assert_eq!(setup.bodies.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn answers_that_are_not_outages_do_not_open_it() {
    let setup = setup(|builder| builder);
    let (key, fingerprint) = key("reused");
    let _: u32 = setup
        .idempotency
        .run(key.clone(), fingerprint, || async { Ok::<_, Error>(1) })
        .await
        .expect("first call runs");
    for _ in 0..10 {
        let other = Fingerprint::of(&"other input").expect("fingerprint");
        let error = setup
            .idempotency
            .run(key.clone(), other, || async { Ok::<u32, Error>(2) })
            .await
            .unwrap_err();
        assert!(matches!(error, Error::KeyReused { .. }), "{error:?}");
    }
    assert_eq!(setup.breaker.state(), BreakerState::Closed);
}
