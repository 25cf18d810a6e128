//! A store that forwards to another and counts every call it forwards (marks included), for
//! the suites that count round trips. It answers no `claim_now`, so every claim is counted.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency::store::{ListRequest, MarkPage};
use idempotency::{
    Claim, ClaimRequest, Completion, Key, MarkSwap, Record, Store, StoreError, Token, async_trait,
};

#[derive(Debug)]
pub(crate) struct Counted {
    pub(crate) inner: Arc<dyn Store>,
    pub(crate) calls: AtomicUsize,
}

impl Counted {
    /// The calls since the last `take`.
    pub(crate) fn take(&self) -> usize {
        self.calls.swap(0, Ordering::SeqCst)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Store for Counted {
    async fn claim(&self, key: &Key, request: ClaimRequest) -> Result<Claim, StoreError> {
        self.count();
        self.inner.claim(key, request).await
    }

    async fn complete(&self, key: &Key, completion: Completion) -> Result<(), StoreError> {
        self.count();
        self.inner.complete(key, completion).await
    }

    async fn release(&self, key: &Key, token: &Token) -> Result<(), StoreError> {
        self.count();
        self.inner.release(key, token).await
    }

    async fn renew(&self, key: &Key, token: &Token, lease: Duration) -> Result<(), StoreError> {
        self.count();
        self.inner.renew(key, token, lease).await
    }

    async fn get(&self, key: &Key) -> Result<Option<Record>, StoreError> {
        self.count();
        self.inner.get(key).await
    }

    async fn remove(&self, key: &Key) -> Result<bool, StoreError> {
        self.count();
        self.inner.remove(key).await
    }

    fn max_output_bytes(&self) -> usize {
        self.inner.max_output_bytes()
    }

    async fn load_mark(&self, key: &Key) -> Result<Option<idempotency::Bytes>, StoreError> {
        self.count();
        self.inner.load_mark(key).await
    }

    async fn swap_mark(&self, key: &Key, swap: MarkSwap<'_>) -> Result<bool, StoreError> {
        self.count();
        self.inner.swap_mark(key, swap).await
    }

    async fn list_marks(&self, request: ListRequest) -> Result<MarkPage, StoreError> {
        self.count();
        self.inner.list_marks(request).await
    }
}
