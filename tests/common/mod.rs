//! Shared test support: a store that records every call, and error types.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency::{Bytes, Claim, ClaimNow, Key, Record, Store, StoreError, Token, async_trait};
use idempotency::{ClaimRequest, Completion, MarkSwap};

/// Counts the calls a store receives, by operation (each is one round trip on a remote store).
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) claim: AtomicUsize,
    pub(crate) complete: AtomicUsize,
    pub(crate) release: AtomicUsize,
    pub(crate) renew: AtomicUsize,
    pub(crate) get: AtomicUsize,
    pub(crate) remove: AtomicUsize,
    pub(crate) load_mark: AtomicUsize,
    pub(crate) swap_mark: AtomicUsize,
}

impl Counts {
    /// `(claim, complete, release)` so far.
    pub(crate) fn snapshot(&self) -> (usize, usize, usize) {
        (
            self.claim.load(Ordering::SeqCst),
            self.complete.load(Ordering::SeqCst),
            self.release.load(Ordering::SeqCst),
        )
    }

    /// Every call so far.
    pub(crate) fn total(&self) -> usize {
        [
            &self.claim,
            &self.complete,
            &self.release,
            &self.renew,
            &self.get,
            &self.remove,
            &self.load_mark,
            &self.swap_mark,
        ]
        .iter()
        .map(|count| count.load(Ordering::SeqCst))
        .sum()
    }
}

/// Wraps a store and counts what passes through.
#[derive(Debug)]
pub(crate) struct Recording<S> {
    pub(crate) inner: S,
    pub(crate) counts: Arc<Counts>,
}

impl<S> Recording<S> {
    pub(crate) fn new(inner: S) -> (Self, Arc<Counts>) {
        let counts = Arc::new(Counts::default());
        (
            Recording {
                inner,
                counts: Arc::clone(&counts),
            },
            counts,
        )
    }
}

#[async_trait]
impl<S: Store> Store for Recording<S> {
    async fn claim(&self, key: &Key, request: ClaimRequest) -> Result<Claim, StoreError> {
        self.counts.claim.fetch_add(1, Ordering::SeqCst);
        self.inner.claim(key, request).await
    }

    // Forwarded (and counted as a claim), so that tests over a memory store run its real
    // path: the executor asks `claim_now` first.
    fn claim_now(&self, key: &Key, request: ClaimRequest) -> Option<Result<ClaimNow, StoreError>> {
        let answer = self.inner.claim_now(key, request)?;
        self.counts.claim.fetch_add(1, Ordering::SeqCst);
        Some(answer)
    }

    async fn complete(&self, key: &Key, completion: Completion) -> Result<(), StoreError> {
        self.counts.complete.fetch_add(1, Ordering::SeqCst);
        self.inner.complete(key, completion).await
    }

    async fn release(&self, key: &Key, token: &Token) -> Result<(), StoreError> {
        self.counts.release.fetch_add(1, Ordering::SeqCst);
        self.inner.release(key, token).await
    }

    async fn renew(&self, key: &Key, token: &Token, lease: Duration) -> Result<(), StoreError> {
        self.counts.renew.fetch_add(1, Ordering::SeqCst);
        self.inner.renew(key, token, lease).await
    }

    async fn get(&self, key: &Key) -> Result<Option<Record>, StoreError> {
        self.counts.get.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }

    async fn remove(&self, key: &Key) -> Result<bool, StoreError> {
        self.counts.remove.fetch_add(1, Ordering::SeqCst);
        self.inner.remove(key).await
    }

    async fn load_mark(&self, key: &Key) -> Result<Option<Bytes>, StoreError> {
        self.counts.load_mark.fetch_add(1, Ordering::SeqCst);
        self.inner.load_mark(key).await
    }

    async fn swap_mark(&self, key: &Key, swap: MarkSwap<'_>) -> Result<bool, StoreError> {
        self.counts.swap_mark.fetch_add(1, Ordering::SeqCst);
        self.inner.swap_mark(key, swap).await
    }
}

/// A store whose every call fails with the error its function makes.
#[derive(Debug)]
pub(crate) struct Failing(pub(crate) fn() -> StoreError);

/// A store whose server is down: every call fails as unreachable.
pub(crate) const DOWN: Failing = Failing(refused);

fn refused() -> StoreError {
    StoreError::unavailable(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused",
    ))
}

#[async_trait]
impl Store for Failing {
    async fn claim(&self, _: &Key, _: ClaimRequest) -> Result<Claim, StoreError> {
        Err((self.0)())
    }
    async fn complete(&self, _: &Key, _: Completion) -> Result<(), StoreError> {
        Err((self.0)())
    }
    async fn release(&self, _: &Key, _: &Token) -> Result<(), StoreError> {
        Err((self.0)())
    }
    async fn renew(&self, _: &Key, _: &Token, _: Duration) -> Result<(), StoreError> {
        Err((self.0)())
    }
    async fn get(&self, _: &Key) -> Result<Option<Record>, StoreError> {
        Err((self.0)())
    }
    async fn remove(&self, _: &Key) -> Result<bool, StoreError> {
        Err((self.0)())
    }
}

/// The application error of the tests' idempotent functions.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppError {
    #[error(transparent)]
    Idempotency(#[from] idempotency::Error),
    #[error("gateway failed: {0}")]
    Gateway(String),
}

impl AppError {
    pub(crate) fn idempotency(&self) -> Option<&idempotency::Error> {
        match self {
            AppError::Idempotency(error) => Some(error),
            AppError::Gateway(_) => None,
        }
    }
}

/// Leaks a value for `'static` use by spawned tasks (tests only).
pub(crate) fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}
