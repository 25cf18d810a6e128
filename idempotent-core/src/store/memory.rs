//! The in-process store on [moka]: the default store.
//!
//! Records are split by state. Completed records live in a moka cache bounded by the byte
//! size of their outputs, with per-record expiry and **LRU** eviction (moka's default TinyLFU
//! admission could refuse a fresh record and let its body run twice). In-progress records live
//! beside it in a sharded map that is never evicted, so capacity pressure can never let two
//! callers run the same body at once. Every transition of a key happens under that key's
//! shard lock; a replay reads the cache without taking it.
//!
//! # At capacity
//!
//! When the completed outputs weigh more than `max_capacity_bytes`, the least recently used
//! completed records are dropped before their TTL; a retry of a dropped key runs its body
//! again. Size the capacity for `ttl × completion rate × output size`, and watch
//! [`MemoryStore::evicted_before_expiry`]. An output larger than the whole capacity is refused
//! with [`StoreError::TooLarge`].
//!
//! A memory store is per process: use Redis or SQL when several processes serve one key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use crate::error::StoreError;
use crate::key::{Fingerprint, Key};
use crate::record::{Claim, Record, Token};
use crate::store::Store;

const SHARDS: usize = 64;
/// Bytes a completed record costs besides its output (key, token, times, cache bookkeeping).
const RECORD_OVERHEAD: usize = 192;
/// An abandoned in-progress record (its owner hung or leaked) is dropped this long after its
/// lease passed, when its shard is swept.
const ABANDONED_GRACE: Duration = Duration::from_secs(60);
const SWEEP_ABOVE: usize = 1024;

#[derive(Debug)]
struct Pending {
    token: Token,
    fingerprint: Fingerprint,
    lease_until: Instant,
}

#[derive(Debug)]
struct Done {
    token: Token,
    fingerprint: Fingerprint,
    output: Bytes,
    expires_at: Instant,
}

impl Done {
    fn live(&self, now: Instant) -> bool {
        self.expires_at > now
    }
}

/// Keys hash by their SHA-256 digest (see `Key`'s `Hash`), which is already uniformly random:
/// its first eight bytes are a good hash, and far cheaper than running SipHash over 32 bytes.
#[derive(Clone, Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
}

impl std::hash::BuildHasher for DigestHasher {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

struct PerRecordExpiry;

impl moka::Expiry<Key, Arc<Done>> for PerRecordExpiry {
    fn expire_after_create(&self, _key: &Key, done: &Arc<Done>, now: Instant) -> Option<Duration> {
        Some(done.expires_at.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _key: &Key,
        done: &Arc<Done>,
        now: Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(done.expires_at.saturating_duration_since(now))
    }
}

/// Builds a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    max_capacity_bytes: u64,
}

impl MemoryStoreBuilder {
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
            .weigher(|key: &Key, done: &Arc<Done>| weight(key, done.output.len()))
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(PerRecordExpiry)
            .eviction_listener(move |_key, _done, cause| {
                if cause == RemovalCause::Size {
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
            }),
        }
    }
}

fn weight(key: &Key, output_len: usize) -> u32 {
    u32::try_from(output_len + key.namespace().len() + RECORD_OVERHEAD).unwrap_or(u32::MAX)
}

/// The in-process store: atomic, fenced, lease takeover, per-record TTL, bounded by bytes
/// with LRU eviction. See the [module docs](self) for what happens at capacity.
///
/// Cloning is cheap and clones share the records.
///
/// ```
/// use idempotent_core::{Idempotency, MemoryStore};
///
/// let store = MemoryStore::builder().max_capacity_bytes(256 << 20).build();
/// let idempotency = Idempotency::new(store);
/// # let _ = idempotency;
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    completed: Cache<Key, Arc<Done>, DigestHasher>,
    pending: Box<[Mutex<HashMap<Key, Pending>>]>,
    max_capacity_bytes: u64,
    evicted: Arc<AtomicU64>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_capacity_bytes", &self.inner.max_capacity_bytes)
            .field("completed", &self.inner.completed.entry_count())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// A store with the default capacity (64 MiB of outputs).
    pub fn new() -> MemoryStore {
        MemoryStore::builder().build()
    }

    /// Configure capacity.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            max_capacity_bytes: 64 << 20,
        }
    }

    /// How many completed records were dropped for capacity before their TTL passed (each
    /// one lets a later retry run its body again). Moka evicts in batches, so this trails the
    /// inserts slightly.
    pub fn evicted_before_expiry(&self) -> u64 {
        self.inner.completed.run_pending_tasks();
        self.inner.evicted.load(Ordering::Relaxed)
    }

    /// The summed weight of completed records (outputs plus overhead), in bytes.
    pub fn weighted_size(&self) -> u64 {
        self.inner.completed.run_pending_tasks();
        self.inner.completed.weighted_size()
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, HashMap<Key, Pending>> {
        let index = usize::from(key.digest().as_bytes()[0]) % SHARDS;
        // A poisoned shard only means a panic elsewhere while holding it; the map itself is
        // always left consistent (every critical section is a single map operation).
        self.inner.pending[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn live_completed(&self, key: &Key, now: Instant) -> Option<Arc<Done>> {
        self.inner.completed.get(key).filter(|done| done.live(now))
    }
}

fn wall_clock(at: Instant, now: Instant) -> SystemTime {
    let wall = SystemTime::now();
    match at.checked_duration_since(now) {
        Some(ahead) => wall + ahead,
        None => wall - now.duration_since(at),
    }
}

fn sweep(pending: &mut HashMap<Key, Pending>, now: Instant) {
    if pending.len() > SWEEP_ABOVE {
        pending.retain(|_, p| p.lease_until + ABANDONED_GRACE > now);
    }
}

fn owns(pending: &HashMap<Key, Pending>, key: &Key, token: &Token) -> bool {
    pending.get(key).is_some_and(|p| p.token == *token)
}

impl MemoryStore {
    /// The whole claim: it needs no I/O, so `claim_now` and `claim` both answer with it.
    fn claim_here(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        // Replays take no lock and read no clock of ours: a live completed record only leaves
        // by expiry or `remove`, and moka's `get` never returns a record past its expiry
        // (which `PerRecordExpiry` sets to the record's `expires_at`).
        if let Some(done) = self.inner.completed.get(key) {
            return Ok(Claim::Completed {
                fingerprint: done.fingerprint,
                output: done.output.clone(),
            });
        }
        let now = Instant::now();
        let mut pending = self.shard(key);
        let took_over = match pending.get(key) {
            Some(owner) if owner.lease_until > now => {
                return Ok(Claim::InProgress {
                    fingerprint: owner.fingerprint,
                    lease_remaining: owner.lease_until - now,
                });
            }
            Some(_) => true,
            None => {
                // Completed between the lock-free read and the lock.
                if let Some(done) = self.live_completed(key, now) {
                    return Ok(Claim::Completed {
                        fingerprint: done.fingerprint,
                        output: done.output.clone(),
                    });
                }
                false
            }
        };
        sweep(&mut pending, now);
        let token = Token::random();
        pending.insert(
            key.clone(),
            Pending {
                token,
                fingerprint: *fingerprint,
                lease_until: now + lease,
            },
        );
        Ok(Claim::Acquired { token, took_over })
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.claim_here(key, fingerprint, lease)
    }

    fn claim_now(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Option<Result<Claim, StoreError>> {
        Some(self.claim_here(key, fingerprint, lease))
    }

    async fn complete(
        &self,
        key: &Key,
        token: &Token,
        _fingerprint: &Fingerprint,
        output: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let size = u64::from(weight(key, output.len()));
        if size > self.inner.max_capacity_bytes {
            return Err(StoreError::TooLarge {
                size: output.len(),
                limit: usize::try_from(self.inner.max_capacity_bytes).unwrap_or(usize::MAX),
            });
        }
        let mut pending = self.shard(key);
        if !owns(&pending, key, token) {
            let now = Instant::now();
            return match self.live_completed(key, now) {
                Some(done) if done.token == *token => Ok(()),
                _ => Err(StoreError::LeaseLost),
            };
        }
        let Some(owner) = pending.remove(key) else {
            return Err(StoreError::LeaseLost);
        };
        self.inner.completed.insert(
            key.clone(),
            Arc::new(Done {
                token: *token,
                fingerprint: owner.fingerprint,
                output,
                expires_at: Instant::now() + ttl,
            }),
        );
        Ok(())
    }

    async fn release(&self, key: &Key, token: &Token) -> Result<(), StoreError> {
        let mut pending = self.shard(key);
        if !owns(&pending, key, token) {
            return Err(StoreError::LeaseLost);
        }
        pending.remove(key);
        Ok(())
    }

    async fn renew(&self, key: &Key, token: &Token, lease: Duration) -> Result<(), StoreError> {
        let mut pending = self.shard(key);
        match pending.get_mut(key) {
            Some(owner) if owner.token == *token => {
                owner.lease_until = Instant::now() + lease;
                Ok(())
            }
            _ => Err(StoreError::LeaseLost),
        }
    }

    async fn get(&self, key: &Key) -> Result<Option<Record>, StoreError> {
        let pending = self.shard(key);
        let now = Instant::now();
        if let Some(owner) = pending.get(key) {
            return Ok(Some(Record::InProgress {
                token: owner.token,
                fingerprint: owner.fingerprint,
                lease_until: wall_clock(owner.lease_until, now),
            }));
        }
        Ok(self.live_completed(key, now).map(|done| Record::Completed {
            token: done.token,
            fingerprint: done.fingerprint,
            output: done.output.clone(),
            expires_at: wall_clock(done.expires_at, now),
        }))
    }

    async fn remove(&self, key: &Key) -> Result<bool, StoreError> {
        let mut pending = self.shard(key);
        let was_pending = pending.remove(key).is_some();
        let was_completed = self.inner.completed.remove(key).is_some();
        Ok(was_pending || was_completed)
    }
}
