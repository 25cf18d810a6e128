//! The executor's configuration: its call defaults and its own limits.

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "memory")]
use super::local::LocalCache;
use super::{Idempotency, Inner, flight::Flights};
use crate::protocol::{CallOptions, Settings, call_option_setters};
use crate::retry::CircuitBreaker;
use crate::store::Store;

/// Configures an [`Idempotency`]: the defaults of its calls ([`CallOptions`], set one by one
/// or as one value) and the executor's own settings.
#[derive(Debug)]
pub struct IdempotencyBuilder {
    store: Arc<dyn Store>,
    breaker: Option<CircuitBreaker>,
    settings: Settings,
    /// `local_cache`: capacity in bytes and the longest time an entry is served.
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    local: Option<(u64, Duration)>,
}

impl IdempotencyBuilder {
    pub(super) fn new(store: Arc<dyn Store>) -> IdempotencyBuilder {
        IdempotencyBuilder {
            store,
            breaker: None,
            settings: Settings::DEFAULT,
            local: None,
        }
    }

    fn apply(&mut self, options: CallOptions) {
        self.settings = self.settings.with(options);
    }

    call_option_setters!();

    /// Run the body anyway when the store cannot be reached to claim the key — it is
    /// unavailable or does not answer in time (default `false`: fail closed with
    /// [`Error::Store`](crate::Error::Store)). Any other store error still fails the call.
    /// Opting in trades at-most-once for availability during a store outage.
    pub fn fail_open(mut self, fail_open: bool) -> Self {
        self.settings.fail_open = fail_open;
        self
    }

    /// Put `breaker` in front of the store (default: none). Every claim asks it first; while
    /// it is open — after the store failed to answer claims repeatedly (unreachable, timed
    /// out, failing) — calls fail closed **at once** with [`Error::Store`](crate::Error::Store)
    /// whose cause is [`StoreError::CircuitOpen`](crate::StoreError::CircuitOpen), instead of
    /// each waiting out the store's timeout; the body does not run. After the cool-down a
    /// probe claim goes to the store, and closes the breaker when the store answers.
    ///
    /// Only claims are gated and counted: completions, releases and lease renewals of bodies
    /// already running always go to the store. With [`fail_open`](Self::fail_open), an open
    /// breaker counts as an outage: the body runs unclaimed.
    ///
    /// Off by default: an open breaker refuses calls the store might have answered (a blip of
    /// five failures costs a cool-down of refusals), a trade the service should choose. For a
    /// remote store, [`CircuitBreaker::new`] (5 failures in a row, 5 s cool-down) is a sound
    /// start. Share one breaker between executors over the same store.
    pub fn store_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Keep completed records of a remote store (Redis, SQL) in this process too, up to
    /// `capacity_bytes` (outputs and keys, least recently used first out), so that a key
    /// replayed again in this process answers with **no round trip**. Off by default.
    ///
    /// What is cached and for how long:
    ///
    /// * only completed records: this executor's own outputs once stored, and records a claim
    ///   found completed; a key in progress is never cached;
    /// * each entry is served until 1 s before its record's own expiry (a margin for the
    ///   round trip and the server's clock), and at most `local_ttl` after it
    ///   was cached;
    /// * the fingerprint is compared on every hit: other arguments are a key reuse, as from
    ///   the store;
    /// * [`forget`](Idempotency::forget) through this executor drops the entry.
    ///
    /// The one window of staleness: a record removed through **another** process (its
    /// executor's `forget`, the `idempotency forget` command, a `DEL`) still replays here for
    /// up to `local_ttl`; keep it short where support staff clear keys for retries. Calls in
    /// the caller's SQL transaction (transactional mode) do not use the cache.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_core::{Idempotency, MemoryStore};
    /// # let store = MemoryStore::new();
    /// let idempotency = Idempotency::builder(store) // a RedisStore or SqlStore, typically
    ///     .local_cache(64 << 20, Duration::from_secs(60))
    ///     .build();
    /// # let _ = idempotency;
    /// ```
    #[cfg(feature = "memory")]
    #[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
    pub fn local_cache(mut self, capacity_bytes: u64, local_ttl: Duration) -> Self {
        self.local = Some((capacity_bytes, local_ttl));
        self
    }

    /// Largest encoded output stored (default [`MAX_OUTPUT_BYTES`](crate::defaults::MAX_OUTPUT_BYTES), 1 MiB; the
    /// store's own [`Store::max_output_bytes`] when lower). The body of a call whose output is
    /// larger has run: the call returns its result, and its record says that the output was
    /// not stored, so retries get [`Error::OutputNotStored`](crate::Error::OutputNotStored)
    /// and the body does not run again within `ttl`.
    pub fn max_output_bytes(mut self, limit: usize) -> Self {
        self.settings.max_output_bytes = limit;
        self
    }

    /// The executor.
    pub fn build(self) -> Idempotency {
        let mut settings = self.settings;
        settings.max_output_bytes = settings.max_output_bytes.min(self.store.max_output_bytes());
        Idempotency {
            inner: Arc::new(Inner {
                store: self.store,
                breaker: self.breaker,
                settings,
                flights: Flights::default(),
                background: Default::default(),
                #[cfg(feature = "memory")]
                local: self
                    .local
                    .map(|(capacity, local_ttl)| LocalCache::new(capacity, local_ttl)),
                #[cfg(not(feature = "memory"))]
                local: None,
            }),
        }
    }
}
