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
//! `Idempotency` values used directly (`Idempotency::call`) are never switched.
//!
//! * **Spawned tasks.** The switch is a Tokio task-local value, so a task spawned with
//!   `tokio::spawn` inside the scope runs outside it. Spawn with [`spawn`] instead, or wrap the
//!   task's future in [`carry`] (for a `JoinSet`, `spawn_local` or another spawner): the task
//!   then sees the same switch, and the same store, as the test.
//! * **Transactional functions** (`#[idempotent(transaction = tx, store = …)]`) record in the
//!   caller's SQL transaction, which the test passes in. Under [`without_deduplication`] they
//!   claim and record nothing and run their body every time; under [`isolated`] and [`with`]
//!   they record in that transaction as in production (roll it back at the end of the test to
//!   leave nothing behind).
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
    static EXECUTOR: Switch;
}

/// What a test switched to.
#[derive(Clone, Copy)]
struct Switch {
    idempotency: &'static Idempotency,
    /// `false` under [`without_deduplication`]: transactional functions record nothing either.
    /// Read only where a SQL store (and so transactional mode) is built.
    #[cfg_attr(
        not(any(feature = "postgres", feature = "mysql", feature = "sqlite")),
        allow(dead_code)
    )]
    deduplicates: bool,
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
    switch(Idempotency::new(PassThrough), false, test).await
}

/// Runs `test` with `idempotency` for every `#[idempotent]` call made inside it.
pub async fn with<F: Future>(idempotency: Idempotency, test: F) -> F::Output {
    switch(idempotency, true, test).await
}

async fn switch<F: Future>(idempotency: Idempotency, deduplicates: bool, test: F) -> F::Output {
    // Leaked: the macro's calls borrow their executor for `'static`. One small value per
    // test, in test builds only.
    let idempotency: &'static Idempotency = Box::leak(Box::new(idempotency));
    let switch = Switch {
        idempotency,
        deduplicates,
    };
    EXECUTOR.scope(switch, test).await
}

/// `future`, under the switch of the task that calls this (if any): for a task spawned by
/// other means than [`spawn`], such as a `JoinSet`.
///
/// ```
/// use idempotent_core::test_util;
/// # async fn charge(order: u32) -> u32 { order }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// test_util::isolated(async {
///     let mut tasks = tokio::task::JoinSet::new();
///     for order in 0..3 {
///         tasks.spawn(test_util::carry(charge(order)));
///     }
///     while let Some(done) = tasks.join_next().await {
///         done.unwrap();
///     }
/// })
/// .await;
/// # }
/// ```
pub fn carry<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let switch = EXECUTOR.try_with(|switch| *switch).ok();
    async move {
        match switch {
            Some(switch) => EXECUTOR.scope(switch, future).await,
            None => future.await,
        }
    }
}

/// `tokio::spawn`, with the task under the switch of the task that spawns it (if any).
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(carry(future))
}

/// The executor a test switched to, if the current task runs inside one.
#[inline]
pub(crate) fn switched() -> Option<&'static Idempotency> {
    EXECUTOR.try_with(|switch| switch.idempotency).ok()
}

/// Whether calls deduplicate: `false` inside [`without_deduplication`] only.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) fn deduplicates() -> bool {
    EXECUTOR
        .try_with(|switch| switch.deduplicates)
        .unwrap_or(true)
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
