#![doc = include_str!("docs.md")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use moka::sync::Cache;

use crate::error::StoreError;
use crate::key::Key;
use crate::record::{Claim, ClaimNow, Record, Token};
use crate::store::listing::marks_need_a_namespace;
use crate::store::{ClaimRequest, Completion, Store};
use crate::store::{Cursor, ListRequest, MarkPage, MarkSwap, Purged};

mod builder;
mod mark;
mod record;

pub use builder::MemoryStoreBuilder;
use record::{Done, EXPIRY_MARGIN, LONGEST_TTL, Pending, coarse_expiry, coarse_now, weight};

const SHARDS: usize = 64;
/// An abandoned in-progress record (its owner hung or leaked) is dropped this long after its
/// lease passed, when its shard is swept.
const ABANDONED_GRACE: Duration = Duration::from_secs(60);
const SWEEP_ABOVE: usize = 1024;

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

/// How often expired records are swept out (at most; a sweep runs on a completing call).
const SWEEP_EVERY: Duration = Duration::from_secs(30);

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
    marks: mark::Marks,
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
        MemoryStoreBuilder::new()
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

    /// How many marks (one per producer of a
    /// [`SequencedConsumer`](crate::consumer::sequence::SequencedConsumer), one per
    /// [`ProducerSequence`](crate::consumer::sequence::ProducerSequence)) are live.
    pub fn mark_count(&self) -> usize {
        self.inner.marks.count()
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
    fn claim_here(&self, key: &Key, request: ClaimRequest) -> Result<ClaimNow, StoreError> {
        let ClaimRequest { fingerprint, lease } = request;
        // Replays take no lock and read only the coarse clock: a live completed record only
        // leaves by expiry, capacity or `remove`.
        if let Some(done) = self.inner.completed.get(key)
            && done.live(coarse_now())
        {
            return Ok(ClaimNow::Held(done));
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
                fingerprint,
                lease_until: now + lease.min(LONGEST_TTL),
            },
        );
        drop(pending);
        self.sweep_if_due();
        Ok(ClaimNow::Claim(Claim::Acquired { token, took_over }))
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim(&self, key: &Key, request: ClaimRequest) -> Result<Claim, StoreError> {
        self.claim_here(key, request).map(ClaimNow::into_claim)
    }

    fn claim_now(&self, key: &Key, request: ClaimRequest) -> Option<Result<ClaimNow, StoreError>> {
        Some(self.claim_here(key, request))
    }

    async fn complete(&self, key: &Key, completion: Completion) -> Result<(), StoreError> {
        let Completion {
            token,
            output,
            ttl,
            keep,
            ..
        } = completion;
        let size = u64::from(weight(key, output.len()));
        if size > self.inner.max_capacity_bytes {
            return Err(StoreError::TooLarge {
                size: output.len(),
                limit: usize::try_from(self.inner.max_capacity_bytes).unwrap_or(usize::MAX),
            });
        }
        let mut pending = self.shard(key);
        if !owns(&pending, key, &token) {
            return match self.live_completed(key) {
                Some(done) if done.token == token => Ok(()),
                _ => Err(StoreError::LeaseLost),
            };
        }
        let Some(owner) = pending.remove(key) else {
            return Err(StoreError::LeaseLost);
        };
        let mut done = Done {
            token,
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

    async fn load_mark(&self, key: &Key) -> Result<Option<Bytes>, StoreError> {
        Ok(self.inner.marks.load(key))
    }

    async fn swap_mark(&self, key: &Key, swap: MarkSwap<'_>) -> Result<bool, StoreError> {
        Ok(self
            .inner
            .marks
            .swap(key, swap.expected, swap.new, swap.ttl))
    }

    async fn list_marks(&self, request: ListRequest) -> Result<MarkPage, StoreError> {
        let namespace = request
            .namespace_filter()
            .ok_or_else(marks_need_a_namespace)?;
        let after = request.cursor().map(Cursor::as_str);
        let (values, next) = self
            .inner
            .marks
            .list(namespace, after, request.page_limit() as usize);
        Ok(MarkPage {
            values,
            next: next.map(Cursor::from),
        })
    }

    async fn purge_expired(&self, _limit: u32) -> Result<Purged, StoreError> {
        Ok(Purged::ExpiresItself)
    }
}
