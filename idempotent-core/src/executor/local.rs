//! The local replay cache ([`IdempotencyBuilder::local_cache`]): completed records of a remote
//! store kept in this process, so that a key replayed again here needs no round trip.
//!
//! A completed record never changes until it expires, so a copy is as good as the store's
//! until then: an entry is served until 1 s before the record's own expiry or `local_ttl` after it was
//! cached, whichever comes first. Only completed records are cached (an owner's own output,
//! once stored, or a claim's answer that carried its expiry); a claim in progress never is. The
//! fingerprint is still compared on every hit (a mismatch is a key reuse, as from the store).
//! `forget` through this executor drops the entry; a record removed through another process
//! may still replay here until the entry's `local_ttl` passes.
//!
//! [`IdempotencyBuilder::local_cache`]: super::IdempotencyBuilder::local_cache

#[cfg(feature = "memory")]
mod cache {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant, SystemTime};

    use bytes::Bytes;
    use moka::sync::Cache;

    use crate::key::{Fingerprint, Key};

    /// A cached completed record.
    #[derive(Debug)]
    pub(in crate::executor) struct Entry {
        fingerprint: Fingerprint,
        output: Bytes,
        /// When the record expires in the store (a copy is never served past it).
        expires_at: SystemTime,
        /// The typed value the output decodes to, kept by the first hit of a call that can
        /// replay one (`#[idempotent]` with a `Clone` output), so later hits clone it.
        kept: std::sync::OnceLock<Option<Box<dyn std::any::Any + Send + Sync>>>,
    }

    /// Bytes an entry costs beside its output: the key, the entry, moka's bookkeeping.
    const OVERHEAD: usize = 192;

    /// An entry stops being served this long before its record's expiry: the expiry a claim
    /// answers is read after a round trip (SQL) or by the server's clock (Redis), and an
    /// owner's is counted from after its `complete`, so each may be a little late.
    const EXPIRY_MARGIN: Duration = Duration::from_secs(1);

    impl Entry {
        /// The stored fingerprint, output and expiry.
        pub(in crate::executor) fn parts(&self) -> (&Fingerprint, &Bytes, SystemTime) {
            (&self.fingerprint, &self.output, self.expires_at)
        }

        /// The typed value of the output, decoded by `keep` on the first ask.
        pub(in crate::executor) fn kept(
            &self,
            keep: crate::kept::Keep,
        ) -> Option<&(dyn std::any::Any + Send + Sync)> {
            self.kept
                .get_or_init(|| keep.value(&self.output))
                .as_deref()
        }
    }

    /// Each entry's time to live: until its record's expiry, at most `local_ttl`.
    struct UntilExpiry {
        local_ttl: Duration,
    }

    impl moka::Expiry<Key, Arc<Entry>> for UntilExpiry {
        fn expire_after_create(
            &self,
            _key: &Key,
            entry: &Arc<Entry>,
            _created_at: Instant,
        ) -> Option<Duration> {
            let left = entry
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            Some(left.min(self.local_ttl))
        }
    }

    /// The cache: moka, weighed by bytes.
    pub(in crate::executor) struct LocalCache {
        cache: Cache<Key, Arc<Entry>>,
        /// Counts `forget`s: a record read before one is not cached after it (a call racing
        /// the forget would otherwise put the forgotten record back).
        forgets: AtomicU64,
    }

    impl LocalCache {
        pub(in crate::executor) fn new(capacity_bytes: u64, local_ttl: Duration) -> LocalCache {
            let cache = Cache::builder()
                .max_capacity(capacity_bytes)
                .weigher(|key: &Key, entry: &Arc<Entry>| {
                    let bytes = entry.output.len() + key.namespace().len() + OVERHEAD;
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .expire_after(UntilExpiry { local_ttl })
                .build();
            LocalCache {
                cache,
                forgets: AtomicU64::new(0),
            }
        }

        pub(in crate::executor) fn get(&self, key: &Key) -> Option<Arc<Entry>> {
            let entry = self.cache.get(key)?;
            // moka's expiry is checked on its own clock; the record's is the wall clock's.
            if entry.expires_at <= SystemTime::now() {
                self.cache.invalidate(key);
                return None;
            }
            Some(entry)
        }

        /// What to pass to [`remember`](Self::remember) for a record read from now on.
        pub(in crate::executor) fn generation(&self) -> u64 {
            self.forgets.load(Ordering::Acquire)
        }

        /// Keeps a completed record read (or written) at `generation`, unless a `forget`
        /// came since.
        pub(in crate::executor) fn remember(
            &self,
            key: &Key,
            fingerprint: Fingerprint,
            output: Bytes,
            expires_at: SystemTime,
            generation: u64,
        ) {
            let Some(expires_at) = expires_at.checked_sub(EXPIRY_MARGIN) else {
                return;
            };
            if expires_at <= SystemTime::now() || self.generation() != generation {
                return;
            }
            let entry = Entry {
                fingerprint,
                output,
                expires_at,
                kept: std::sync::OnceLock::new(),
            };
            self.cache.insert(key.clone(), Arc::new(entry));
            // A forget that came during the insert: drop what it may have missed.
            if self.generation() != generation {
                self.cache.invalidate(key);
            }
        }

        /// Drops `key`'s entry, and keeps records read before this from being cached.
        pub(in crate::executor) fn forget(&self, key: &Key) {
            self.forgets.fetch_add(1, Ordering::AcqRel);
            self.cache.invalidate(key);
        }
    }
}

#[cfg(feature = "memory")]
pub(super) use cache::LocalCache;
#[cfg(not(feature = "memory"))]
pub(super) use stub::LocalCache;

/// Without the `memory` feature (moka) there is no local cache: types with no values, so the
/// executor's `Option<LocalCache>` is always `None` and its uses compile away.
#[cfg(not(feature = "memory"))]
mod stub {
    use std::sync::Arc;
    use std::time::SystemTime;

    use bytes::Bytes;

    use crate::key::{Fingerprint, Key};

    pub(in crate::executor) enum Entry {}

    impl Entry {
        pub(in crate::executor) fn parts(&self) -> (&Fingerprint, &Bytes, SystemTime) {
            match *self {}
        }

        pub(in crate::executor) fn kept(
            &self,
            _keep: crate::kept::Keep,
        ) -> Option<&(dyn std::any::Any + Send + Sync)> {
            match *self {}
        }
    }

    pub(in crate::executor) enum LocalCache {}

    impl LocalCache {
        pub(in crate::executor) fn get(&self, _key: &Key) -> Option<Arc<Entry>> {
            match *self {}
        }

        pub(in crate::executor) fn generation(&self) -> u64 {
            match *self {}
        }

        pub(in crate::executor) fn remember(
            &self,
            _key: &Key,
            _fingerprint: Fingerprint,
            _output: Bytes,
            _expires_at: SystemTime,
            _generation: u64,
        ) {
            match *self {}
        }

        pub(in crate::executor) fn forget(&self, _key: &Key) {
            match *self {}
        }
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;

    use super::LocalCache;
    use crate::key::{Digest, Fingerprint, Key};

    fn parts() -> (Key, Fingerprint, Bytes) {
        let key = Key::new("local", 1, Digest::of_bytes(b"k"));
        (
            key,
            Fingerprint::from_bytes([1; 32]),
            Bytes::from_static(b"out"),
        )
    }

    #[test]
    fn a_record_read_before_a_forget_is_not_cached_after_it() {
        let cache = LocalCache::new(1 << 20, Duration::from_secs(60));
        let (key, fingerprint, output) = parts();
        let later = SystemTime::now() + Duration::from_secs(3600);
        let read_at = cache.generation();
        cache.forget(&key); // the forget lands while the claim's answer is on its way
        cache.remember(&key, fingerprint, output.clone(), later, read_at);
        assert!(cache.get(&key).is_none(), "the forgotten record came back");
        cache.remember(&key, fingerprint, output, later, cache.generation());
        assert!(
            cache.get(&key).is_some(),
            "a record read after the forget is kept"
        );
    }

    #[test]
    fn entries_stop_before_their_records_expiry() {
        let cache = LocalCache::new(1 << 20, Duration::from_secs(60));
        let (key, fingerprint, output) = parts();
        // Expiring within the margin: not worth keeping.
        let soon = SystemTime::now() + Duration::from_millis(500);
        cache.remember(&key, fingerprint, output.clone(), soon, cache.generation());
        assert!(cache.get(&key).is_none());
        let later = SystemTime::now() + Duration::from_secs(3600);
        cache.remember(&key, fingerprint, output, later, cache.generation());
        let entry = cache.get(&key).expect("kept");
        assert!(
            entry.parts().2 < later,
            "served until a margin before the expiry"
        );
    }
}
