use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use super::record::{Done, coarse_expiry, coarse_now};
use super::{DigestHasher, Inner, MemoryStore, SHARDS, SWEEP_EVERY};
use crate::key::Key;

/// The capacity of [`MemoryStore::new`]: 64 MiB of outputs.
const DEFAULT_MAX_CAPACITY_BYTES: u64 = 64 << 20;

/// Builds a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    max_capacity_bytes: u64,
}

impl MemoryStoreBuilder {
    /// The defaults (what [`MemoryStore::builder`] starts from).
    pub(super) fn new() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            max_capacity_bytes: DEFAULT_MAX_CAPACITY_BYTES,
        }
    }

    /// Upper bound on the summed size of completed outputs (plus a fixed overhead a record).
    /// Default 64 MiB.
    pub fn max_capacity_bytes(mut self, bytes: u64) -> Self {
        self.max_capacity_bytes = bytes.max(1);
        self
    }

    /// The store.
    pub fn build(self) -> MemoryStore {
        let evicted = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&evicted);
        let completed = Cache::builder()
            .max_capacity(self.max_capacity_bytes)
            .weigher(|key: &Key, done: &Arc<Done>| done.weight(key))
            .eviction_policy(EvictionPolicy::lru())
            .eviction_listener(move |_key, done: Arc<Done>, cause| {
                // Only live records count: an expired one leaving for capacity costs nothing.
                if cause == RemovalCause::Size && done.live(coarse_now()) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build_with_hasher(DigestHasher::default());
        MemoryStore {
            inner: Arc::new(Inner {
                completed,
                pending: (0..SHARDS).map(|_| Mutex::default()).collect(),
                max_capacity_bytes: self.max_capacity_bytes,
                evicted,
                next_sweep: AtomicU64::new(coarse_expiry(coarse_now(), SWEEP_EVERY)),
                marks: super::mark::Marks::default(),
            }),
        }
    }
}
