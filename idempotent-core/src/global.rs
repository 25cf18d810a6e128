//! The process-wide default executor, used by `#[idempotent]` without `executor = …`.

use std::sync::OnceLock;

use crate::error::Error;
use crate::executor::Idempotency;
use crate::store::Store;

static DEFAULT: OnceLock<Idempotency> = OnceLock::new();

/// Makes `idempotency` the process default. Call it once at start-up, before the first
/// idempotent call; later calls fail with [`Error::DefaultStoreAlreadySet`].
pub fn set_default(idempotency: Idempotency) -> Result<(), Error> {
    DEFAULT
        .set(idempotency)
        .map_err(|_| Error::DefaultStoreAlreadySet)
}

/// Makes `store` the process default store (with the default settings). Call it once at
/// start-up, before the first idempotent call.
///
/// ```
/// use idempotent_core::{default_idempotency, set_default_store, MemoryStore};
///
/// let store = MemoryStore::builder().max_capacity_bytes(8 << 20).build();
/// set_default_store(store).unwrap();
/// assert!(default_idempotency().is_ok());
/// assert!(set_default_store(MemoryStore::new()).is_err()); // once only
/// ```
pub fn set_default_store(store: impl Store) -> Result<(), Error> {
    set_default(Idempotency::new(store))
}

/// The process default executor: the one set at start-up, else an in-process
/// [`MemoryStore`](crate::MemoryStore) created on first use (feature `memory`), else
/// [`Error::NoDefaultStore`].
pub fn default_idempotency() -> Result<&'static Idempotency, Error> {
    #[cfg(feature = "memory")]
    {
        Ok(DEFAULT.get_or_init(|| Idempotency::new(crate::store::memory::MemoryStore::new())))
    }
    #[cfg(not(feature = "memory"))]
    {
        DEFAULT.get().ok_or(Error::NoDefaultStore)
    }
}

/// [`Idempotency::shutdown`] of the process default executor, if one was set or used: waits up
/// to `timeout` for calls in flight and outputs recorded in the background. Call it at
/// the end of a graceful shutdown, before the runtime ends.
pub async fn shutdown_default(
    timeout: std::time::Duration,
) -> Result<(), crate::executor::ShutdownTimedOut> {
    match DEFAULT.get() {
        Some(idempotency) => idempotency.shutdown(timeout).await,
        None => Ok(()),
    }
}
