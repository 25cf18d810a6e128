//! A switch for users' unit tests (feature `test-util`): run `#[idempotent]` functions with a
//! fresh in-memory store per test, or with no deduplication at all, without changing the
//! annotated code.
//!
//! ```toml
//! [dev-dependencies]
//! idempotency = { version = "0.2", features = ["test-util"] }
//! ```
//!
//! ```
//! use idempotent_core::test_util;
//! # async fn charge(order: &str) -> u32 { 1 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Every `#[idempotent]` call made inside sees a store of its own: tests do not share
//! // records, and nothing needs Redis or a database.
//! test_util::isolated(async {
//!     charge("order-1").await;
//! })
//! .await;
//!
//! // Every body runs, every time: nothing is stored or replayed.
//! test_util::without_deduplication(async {
//!     charge("order-1").await;
//! })
//! .await;
//! # }
//! ```
//!
//! Inside the future given to [`isolated`] or [`without_deduplication`], every `#[idempotent]`
//! call (with the default store or a `store = …` of its own) uses the test's executor instead.
//! The switch is a Tokio task-local value: tasks spawned inside the future are not covered
//! unless they are wrapped too. `Idempotency` values used directly (`Idempotency::call`) are
//! never switched.
//!
//! # Kept out of production builds
//!
//! Nothing here is read from the environment. The switch exists only in builds with the
//! `test-util` feature, which belongs in `[dev-dependencies]`: Cargo's feature resolver (the
//! default since edition 2021) does not enable a dev-dependency's features in `cargo build`
//! or `cargo run` of the package, so a production binary has no switch to turn on, and
//! `#[idempotent]` calls there never look for one.

use std::future::Future;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::executor::Idempotency;
use crate::key::Key;
use crate::record::{Claim, Record, Token};
use crate::store::{ClaimRequest, Completion, Store};

tokio::task_local! {
    static EXECUTOR: &'static Idempotency;
}

/// Runs `test` with a fresh in-memory store for every `#[idempotent]` call made inside it
/// (feature `memory`): calls deduplicate among themselves, as in production, and never see
/// another test's records.
#[cfg(feature = "memory")]
pub async fn isolated<F: Future>(test: F) -> F::Output {
    with(
        Idempotency::new(crate::store::memory::MemoryStore::new()),
        test,
    )
    .await
}

/// Runs `test` with no deduplication for every `#[idempotent]` call made inside it: each
/// call runs its body, and nothing is stored or replayed. (Calls of one key that run *at the
/// same time* in the scope still share the first one's run: the executor coalesces them in
/// process whatever its store.)
pub async fn without_deduplication<F: Future>(test: F) -> F::Output {
    with(Idempotency::new(PassThrough), test).await
}

/// Runs `test` with `idempotency` for every `#[idempotent]` call made inside it.
pub async fn with<F: Future>(idempotency: Idempotency, test: F) -> F::Output {
    // Leaked: the macro's calls borrow their executor for `'static`. One small value per
    // test, in test builds only.
    let idempotency: &'static Idempotency = Box::leak(Box::new(idempotency));
    EXECUTOR.scope(idempotency, test).await
}

/// The executor a test switched to, if the current task runs inside one.
#[inline]
pub(crate) fn switched() -> Option<&'static Idempotency> {
    EXECUTOR.try_with(|idempotency| *idempotency).ok()
}

/// A store that deduplicates nothing: every claim is granted, nothing is kept.
#[derive(Debug, Clone, Copy)]
struct PassThrough;

#[async_trait]
impl Store for PassThrough {
    async fn claim(&self, _: &Key, _: ClaimRequest) -> Result<Claim, StoreError> {
        Ok(Claim::Acquired {
            token: Token::random(),
            took_over: false,
        })
    }

    async fn complete(&self, _: &Key, _: Completion) -> Result<(), StoreError> {
        Ok(())
    }

    async fn release(&self, _: &Key, _: &Token) -> Result<(), StoreError> {
        Ok(())
    }

    async fn renew(&self, _: &Key, _: &Token, _: std::time::Duration) -> Result<(), StoreError> {
        Ok(())
    }

    async fn get(&self, _: &Key) -> Result<Option<Record>, StoreError> {
        Ok(None)
    }

    async fn remove(&self, _: &Key) -> Result<bool, StoreError> {
        Ok(false)
    }
}
