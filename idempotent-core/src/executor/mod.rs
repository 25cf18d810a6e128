//! The executor: claim, run once, store, replay — the [protocol](crate::protocol)'s loop
//! around a [`Store`].
//!
//! * `config.rs` — [`IdempotencyBuilder`]: the executor's defaults and limits;
//! * `call.rs` — [`Call`]: one call's options and its first step, a replay included;
//! * `execute.rs` — the rest of a call: claim, wait for a duplicate, or own;
//! * `owner.rs` — the owner: run the body, record its outcome, the guard for a dropped call;
//! * `lease.rs` — the owner's lease renewal while its body runs;
//! * `background.rs` — completions left to the background, and the executor's shutdown;
//! * `flight.rs` — in-process coalescing of duplicates;
//! * `gate.rs` — the store breaker in front of every claim.

mod background;
mod call;
mod config;
mod execute;
mod flight;
mod gate;
mod inspect;
mod lease;
mod local;
pub(crate) mod obtained;
mod owner;

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::key::{Fingerprint, Key};
use crate::protocol::Settings;
use crate::retry::CircuitBreaker;
use crate::store::Store;

/// A call's body, called once when the call owns its key: a closure that returns the future
/// of its result (what every entry point takes as `F: FnOnce() -> Fut`).
pub(crate) trait Body<T, E> {
    /// The body's future.
    type Run: Future<Output = Result<T, E>>;

    /// Calls the closure.
    fn run(self) -> Self::Run;
}

impl<T, E, F, Fut> Body<T, E> for F
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    type Run = Fut;

    fn run(self) -> Fut {
        self()
    }
}

tokio::task_local! {
    /// The key and token of the call whose body runs in this task: a multi-step body's
    /// [journal](crate::steps) is fenced by the token.
    static OWNER: (Key, crate::record::Token);
}

/// The token of the owner of `key` whose body runs in this task, if any.
pub(crate) fn owner_token(key: &Key) -> Option<crate::record::Token> {
    OWNER
        .try_with(|(owned, token)| (owned == key).then_some(*token))
        .ok()
        .flatten()
}

pub use background::ShutdownTimedOut;
pub use call::Call;
pub(crate) use call::start_prepared;
pub use config::IdempotencyBuilder;
pub use inspect::{Inspection, StoredOutcome};
pub use obtained::{How, Obtained};

/// Makes calls idempotent over a [`Store`]: the macro-free API that `#[idempotent]` expands to.
///
/// Cheap to clone; clones share the store and the in-process coalescing of duplicates, so
/// create one per store and share it.
///
/// ```
/// use idempotent_core::{Error, Fingerprint, Idempotency, Key, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let idempotency = Idempotency::new(MemoryStore::new());
/// let request = ("order-42", 1999u64);
/// let key = Key::derive("shop::charge", 1, &request.0).unwrap();
/// let fingerprint = Fingerprint::of(&request).unwrap();
///
/// let first: Result<String, Error> = idempotency
///     .run(key.clone(), fingerprint, || async { Ok("receipt-1".to_string()) })
///     .await;
/// let retry: Result<String, Error> = idempotency
///     .run(key, fingerprint, || async { Ok("receipt-2".to_string()) })
///     .await;
/// assert_eq!(first?, retry?); // the retry got the first call's result back
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Idempotency {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    /// Asked before every claim, when set.
    breaker: Option<CircuitBreaker>,
    settings: Settings,
    flights: flight::Flights,
    background: Arc<background::Background>,
    /// Completed records of a remote store kept in this process (off unless configured).
    local: Option<local::LocalCache>,
}

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("store", &self.inner.store)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Idempotency {
    /// An executor over `store` with the [defaults](crate::defaults): `ttl` 24 h, `lease`
    /// 30 s, wait up to 30 s for a duplicate in progress, fail closed, outputs up to 1 MiB
    /// (or the store's lower limit).
    pub fn new(store: impl Store) -> Idempotency {
        Idempotency::builder(store).build()
    }

    /// An executor over a shared store.
    pub fn from_shared(store: Arc<dyn Store>) -> Idempotency {
        IdempotencyBuilder::new(store).build()
    }

    /// Configure the defaults before building.
    pub fn builder(store: impl Store) -> IdempotencyBuilder {
        IdempotencyBuilder::new(Arc::new(store))
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The largest output envelope a call stores: the executor's
    /// [`max_output_bytes`](IdempotencyBuilder::max_output_bytes) or the store's
    /// [`Store::max_output_bytes`], the lower.
    pub fn max_output_bytes(&self) -> usize {
        self.inner.settings.max_output_bytes
    }

    /// Runs `body` at most once for `key` (with the executor's defaults) and returns its
    /// output, or replays the output stored by an earlier call with the same key and
    /// fingerprint. `Err` outputs are not stored: the claim is released so a retry runs again.
    pub async fn run<T, E, F, Fut>(
        &self,
        key: Key,
        fingerprint: Fingerprint,
        body: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call(key, fingerprint).run(body).await
    }

    /// Waits up to `timeout` for every call of this executor still running its body or
    /// recording its output, and for the outputs left to the background (calls cancelled after
    /// their body returned; a store that kept failing `complete`).
    ///
    /// Call it when the server has stopped taking requests (after axum's graceful shutdown,
    /// say), before the runtime ends: a runtime that ends drops its tasks, and a retry of a
    /// call whose output was lost runs its body again once its lease passes. Leases stay
    /// renewed while bodies run (up to `max_run`): a process that goes on after `shutdown`
    /// keeps its keys, one that exits lets them go when their leases pass. Calls made after
    /// it still run normally.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_core::{Idempotency, MemoryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let idempotency = Idempotency::new(MemoryStore::new());
    /// // … serve until a shutdown signal …
    /// idempotency.shutdown(Duration::from_secs(10)).await.expect("every output recorded");
    /// # }
    /// ```
    pub async fn shutdown(&self, timeout: std::time::Duration) -> Result<(), ShutdownTimedOut> {
        self.inner.background.shutdown(timeout).await
    }

    /// A call whose options can be set one by one, or as one
    /// [`CallOptions`](crate::CallOptions), before [`Call::run`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_core::{Error, Fingerprint, Idempotency, InProgressPolicy, Key, MemoryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let idempotency = Idempotency::new(MemoryStore::new());
    /// let key = Key::derive("stock::reserve", 1, &"sku-1").unwrap();
    /// let fingerprint = Fingerprint::of(&("sku-1", 3)).unwrap();
    /// let out: Result<u32, Error> = idempotency
    ///     .call(key, fingerprint)
    ///     .ttl(Duration::from_secs(3600))
    ///     .lease(Duration::from_secs(5))
    ///     .on_in_progress(InProgressPolicy::Reject)
    ///     .run(|| async { Ok(3) })
    ///     .await;
    /// assert_eq!(out.unwrap(), 3);
    /// # }
    /// ```
    #[inline]
    pub fn call(&self, key: Key, fingerprint: Fingerprint) -> Call<'_> {
        Call::new(self, key, fingerprint)
    }
}
