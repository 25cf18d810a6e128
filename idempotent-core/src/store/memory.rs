//! The in-process store on [moka]: the default store.
//!
//! Records are split by state. Completed records live in a moka cache bounded by the byte
//! size of their outputs, with **LRU** eviction (moka's default TinyLFU admission could refuse
//! a fresh record and let its body run twice). In-progress records live beside it in a sharded
//! map that is never evicted, so capacity pressure can never let two callers run the same body
//! at once. Every transition of a key happens under that key's shard lock; a replay reads the
//! cache without taking it.
//!
//! # Expiry
//!
//! A completed record expires `ttl` after it was completed, checked whenever it is read. On
//! Linux and Android the clock is the kernel's coarse monotonic clock
//! (`CLOCK_MONOTONIC_COARSE`), which reads in a few nanoseconds where the precise clock, and
//! moka's own per-entry expiry, cost a replay several times that; it lags by up to one kernel
//! tick (1–10 ms). Elsewhere it is `std::time::Instant`. Every record lives 20 ms longer than
//! its `ttl`, so it never expires early, and on Linux at most about 30 ms late. An expired
//! record is never replayed. Its memory is reclaimed by a sweep that runs at most every 30 s
//! (started by a claim of a free key or a completion, in a blocking task), by capacity
//! pressure, or when its key is completed again; until then it counts against the capacity.
//!
//! # Kept values
//!
//! An executor that can replay a typed value (`#[idempotent]` on a free function whose output
//! type is `Clone`) completes with [`Store::complete_keeping`]. The record then decodes its
//! output once, on its first replay, keeps the value, and every replay clones it instead of
//! decoding again. Such a record weighs twice its encoded output.
//!
//! # At capacity
//!
//! When the completed outputs weigh more than `max_capacity_bytes`, the least recently used
//! completed records are dropped before their TTL; a retry of a dropped key runs its body
//! again. Size the capacity for `ttl × completion rate × output size` (twice the output size
//! for kept values), and watch [`MemoryStore::evicted_before_expiry`]. The weight is the
//! encoded size: a kept value of many small strings takes more memory than that (each
//! string's own allocation), so the capacity bounds memory only roughly for such outputs. An output larger than the whole capacity is refused
//! with [`StoreError::TooLarge`].
//!
//! A memory store is per process: use Redis or SQL when several processes serve one key.

use std::any::Any;
use std::collections::HashMap;
use std::sync::OnceLock;
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
use crate::record::{Claim, ClaimNow, HeldRecord, Keep, Record, Token};
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

struct Done {
    token: Token,
    fingerprint: Fingerprint,
    output: Bytes,
    /// When the record expires, by [`clock`] (`ttl` + [`EXPIRY_MARGIN`] after it was
    /// completed).
    expires: u64,
    /// When it expires by the precise clock, as `get` reports it.
    expires_at: Instant,
    /// How to decode the typed output the executor asked to keep (`complete_keeping`).
    keep: Option<Keep>,
    /// That value, decoded on the first replay; replays clone it instead of decoding `output`.
    kept: OnceLock<Option<Box<dyn Any + Send + Sync>>>,
}

impl Done {
    fn live(&self, now: u64) -> bool {
        self.expires > now
    }

    /// What the record weighs: a kept value is counted as large as its encoded output.
    fn weight(&self, key: &Key) -> u32 {
        let kept = if self.keep.is_some() {
            self.output.len()
        } else {
            0
        };
        weight(key, self.output.len().saturating_add(kept))
    }
}

impl HeldRecord for Done {
    fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    fn output(&self) -> &Bytes {
        &self.output
    }

    fn kept(&self) -> Option<&(dyn Any + Send + Sync)> {
        let keep = self.keep?;
        self.kept
            .get_or_init(|| keep.value(&self.output))
            .as_deref()
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

/// The clock completed records expire by (see the module docs), as a count that only grows:
/// the coarse monotonic clock on Linux and Android, `Instant` elsewhere.
mod clock {
    use std::time::Duration;

    /// Now. The coarse clock is read without updating `coarsetime`'s shared "recent" value,
    /// so concurrent replays write no shared memory.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(super) fn now() -> u64 {
        coarsetime::Instant::now_without_cache_update().as_u64()
    }

    /// `span` in the clock's units.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(super) fn units(span: Duration) -> u64 {
        coarsetime::Duration::from(span).as_u64()
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    static START: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(super) fn now() -> u64 {
        units(START.elapsed())
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(super) fn units(span: Duration) -> u64 {
        u64::try_from(span.as_nanos()).unwrap_or(u64::MAX)
    }
}

use clock::now as coarse_now;

/// Added to every record's TTL: more than one tick of the coarse clock, so that the clock's lag
/// at completion can never make a record expire before its `ttl`.
const EXPIRY_MARGIN: Duration = Duration::from_millis(20);

/// The longest TTL or lease kept exactly (longer ones last this long: 68 years, which no clock
/// here overflows).
const LONGEST_TTL: Duration = Duration::from_secs(1 << 31);

/// How often expired records are swept out (at most; a sweep runs on a completing call).
const SWEEP_EVERY: Duration = Duration::from_secs(30);

fn coarse_expiry(now: u64, ttl: Duration) -> u64 {
    now.saturating_add(clock::units(
        ttl.min(LONGEST_TTL).saturating_add(EXPIRY_MARGIN),
    ))
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
            }),
        }
    }
}

fn weight(key: &Key, output_len: usize) -> u32 {
    u32::try_from(output_len.saturating_add(key.namespace().len() + RECORD_OVERHEAD))
        .unwrap_or(u32::MAX)
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
    /// When the next sweep of expired records is due, by [`clock`].
    next_sweep: AtomicU64,
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
    /// inserts slightly. Sweeps out expired records first, like
    /// [`weighted_size`](Self::weighted_size).
    pub fn evicted_before_expiry(&self) -> u64 {
        sweep_expired(&self.inner);
        self.inner.completed.run_pending_tasks();
        self.inner.evicted.load(Ordering::Relaxed)
    }

    /// The summed weight of live completed records (outputs plus overhead), in bytes. It
    /// sweeps out the expired ones first, which visits every record: call it for metrics now
    /// and then, not on every request.
    pub fn weighted_size(&self) -> u64 {
        sweep_expired(&self.inner);
        self.inner.completed.run_pending_tasks();
        self.inner.completed.weighted_size()
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, HashMap<Key, Pending>> {
        shard_of(&self.inner, key)
    }

    fn live_completed(&self, key: &Key) -> Option<Arc<Done>> {
        self.inner
            .completed
            .get(key)
            .filter(|done| done.live(coarse_now()))
    }

    /// Starts a sweep when one is due: in a blocking task when a Tokio runtime runs this call,
    /// else here.
    fn sweep_if_due(&self) {
        let now = coarse_now();
        let due = self.inner.next_sweep.load(Ordering::Relaxed);
        if now < due {
            return;
        }
        let next = coarse_expiry(now, SWEEP_EVERY);
        if self
            .inner
            .next_sweep
            .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // Another call took this sweep.
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let inner = Arc::clone(&self.inner);
                drop(runtime.spawn_blocking(move || sweep_expired(&inner)));
            }
            Err(_) => sweep_expired(&self.inner),
        }
    }
}

/// Removes the completed records that have expired. Each is removed under its key's shard lock
/// after checking again that it is still the expired one: a key completed anew in the meantime
/// keeps its new record (every insert happens under that lock too).
fn sweep_expired(inner: &Inner) {
    let now = coarse_now();
    let expired: Vec<Arc<Key>> = inner
        .completed
        .iter()
        .filter(|(_, done)| !done.live(now))
        .map(|(key, _)| key)
        .collect();
    for key in expired {
        let _pending = shard_of(inner, &key);
        if inner
            .completed
            .get(&*key)
            .is_some_and(|done| !done.live(now))
        {
            inner.completed.invalidate(&*key);
        }
    }
}

fn shard_of<'a>(inner: &'a Inner, key: &Key) -> MutexGuard<'a, HashMap<Key, Pending>> {
    let index = usize::from(key.digest().as_bytes()[0]) % SHARDS;
    // A poisoned shard only means a panic elsewhere while holding it; the map itself is
    // always left consistent (every critical section is a single map operation).
    inner.pending[index]
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    /// The whole claim: it needs no I/O, so `claim_now` and `claim` both answer with it. A
    /// completed record is lent as it is held.
    fn claim_here(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<ClaimNow, StoreError> {
        // Replays take no lock and read only the coarse clock: a live completed record only
        // leaves by expiry, capacity or `remove`.
        if let Some(done) = self.inner.completed.get(key) {
            if done.live(coarse_now()) {
                return Ok(ClaimNow::Held(done));
            }
        }
        let now = Instant::now();
        let mut pending = self.shard(key);
        let took_over = match pending.get(key) {
            Some(owner) if owner.lease_until > now => {
                return Ok(ClaimNow::Claim(Claim::InProgress {
                    fingerprint: owner.fingerprint,
                    lease_remaining: owner.lease_until - now,
                }));
            }
            Some(_) => true,
            None => {
                // Completed between the lock-free read and the lock, or expired: an expired
                // record goes now (under the lock, as every write of the key), not at the
                // next sweep.
                match self.inner.completed.get(key) {
                    Some(done) if done.live(coarse_now()) => return Ok(ClaimNow::Held(done)),
                    Some(_) => self.inner.completed.invalidate(key),
                    None => {}
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
                lease_until: now + lease.min(LONGEST_TTL),
            },
        );
        drop(pending);
        self.sweep_if_due();
        Ok(ClaimNow::Claim(Claim::Acquired { token, took_over }))
    }

    /// `complete`, keeping `kept` beside the output.
    fn complete_here(
        &self,
        key: &Key,
        token: &Token,
        output: Bytes,
        ttl: Duration,
        keep: Option<Keep>,
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
            return match self.live_completed(key) {
                Some(done) if done.token == *token => Ok(()),
                _ => Err(StoreError::LeaseLost),
            };
        }
        let Some(owner) = pending.remove(key) else {
            return Err(StoreError::LeaseLost);
        };
        let mut done = Done {
            token: *token,
            fingerprint: owner.fingerprint,
            keep,
            kept: OnceLock::new(),
            output,
            expires: coarse_expiry(coarse_now(), ttl),
            expires_at: Instant::now() + ttl.min(LONGEST_TTL) + EXPIRY_MARGIN,
        };
        // A record the kept value would push past the whole capacity keeps only its bytes.
        if u64::from(done.weight(key)) > self.inner.max_capacity_bytes {
            done.keep = None;
        }
        self.inner.completed.insert(key.clone(), Arc::new(done));
        drop(pending);
        self.sweep_if_due();
        Ok(())
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
            .map(ClaimNow::into_claim)
    }

    fn claim_now(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Option<Result<ClaimNow, StoreError>> {
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
        self.complete_here(key, token, output, ttl, None)
    }

    async fn complete_keeping(
        &self,
        key: &Key,
        token: &Token,
        _fingerprint: &Fingerprint,
        output: Bytes,
        ttl: Duration,
        keep: Keep,
    ) -> Result<(), StoreError> {
        self.complete_here(key, token, output, ttl, Some(keep))
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
                owner.lease_until = Instant::now() + lease.min(LONGEST_TTL);
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
        Ok(self.live_completed(key).map(|done| Record::Completed {
            token: done.token,
            fingerprint: done.fingerprint,
            output: done.output.clone(),
            expires_at: wall_clock(done.expires_at, now),
        }))
    }

    async fn remove(&self, key: &Key) -> Result<bool, StoreError> {
        let mut pending = self.shard(key);
        let was_pending = pending.remove(key).is_some();
        // An expired record not yet swept out is gone already, as far as callers can tell.
        let was_completed = self
            .inner
            .completed
            .remove(key)
            .is_some_and(|done| done.live(coarse_now()));
        Ok(was_pending || was_completed)
    }
}
