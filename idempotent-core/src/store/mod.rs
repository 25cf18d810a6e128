//! The [`Store`] contract and its backends (one module a backend, each behind its feature).

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::StoreError;
use crate::key::Key;
use crate::record::{Claim, ClaimNow, Record, Token};

pub(crate) mod listing;
mod request;
pub use listing::{
    Cursor, ListRequest, ListedNamespace, ListedRecord, ListedState, Listing, MarkPage,
    NamespaceStats, Purged, StoreStats,
};
pub use request::{ClaimRequest, Completion, MarkSwap};

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub mod memory;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite")))
)]
pub mod sql;

/// Where records live. One record per [`Key`]; its states and transitions:
///
/// ```text
///  (none) --claim--> InProgress{token, lease_until, fingerprint}
///  InProgress --complete(token)--> Completed{output, fingerprint, expires_at}
///  InProgress --release(token)---> (none)            body failed (not stored) or panicked
///  InProgress --lease passes-----> claimable again   crashed worker; the next claim takes over
///  Completed  --ttl passes-------> (none)
/// ```
///
/// Every method is one round trip to a remote store. The executor compares fingerprints and
/// encodes outputs; a store only keeps bytes, tokens and times, atomically.
///
/// Run the public [conformance suite](crate::conformance) in your store's tests: it checks
/// every clause below, including the concurrent ones.
///
/// # Write your own store
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::{Duration, Instant, SystemTime};
///
/// use idempotent_core::{async_trait, Claim, ClaimRequest, Completion, Key, Record, Store, StoreError, Token};
///
/// /// A toy store: one mutex over a map (no eviction of expired records).
/// #[derive(Debug, Default)]
/// struct MapStore(Mutex<HashMap<Key, (Record, Instant)>>);
///
/// fn owned_by(map: &HashMap<Key, (Record, Instant)>, key: &Key, token: &Token) -> bool {
///     matches!(map.get(key), Some((Record::InProgress { token: t, .. }, _)) if t == token)
/// }
///
/// #[async_trait]
/// impl Store for MapStore {
///     async fn claim(&self, key: &Key, request: ClaimRequest) -> Result<Claim, StoreError> {
///         let mut map = self.0.lock().unwrap();
///         let now = Instant::now();
///         let mut took_over = false;
///         match map.get(key) {
///             Some((Record::Completed { fingerprint, output, expires_at, .. }, until)) if *until > now => {
///                 let (fingerprint, output, expires_at) = (*fingerprint, output.clone(), Some(*expires_at));
///                 return Ok(Claim::Completed { fingerprint, output, expires_at });
///             }
///             Some((Record::InProgress { fingerprint, .. }, until)) if *until > now => {
///                 return Ok(Claim::InProgress { fingerprint: *fingerprint, lease_remaining: *until - now });
///             }
///             Some((Record::InProgress { .. }, _)) => took_over = true,
///             _ => {}
///         }
///         let token = Token::random();
///         let ClaimRequest { fingerprint, lease } = request;
///         let record = Record::InProgress { token, fingerprint, lease_until: SystemTime::now() + lease };
///         map.insert(key.clone(), (record, now + lease));
///         Ok(Claim::Acquired { token, took_over })
///     }
///
///     async fn complete(&self, key: &Key, completion: Completion) -> Result<(), StoreError> {
///         let Completion { token, fingerprint, output, ttl, .. } = completion;
///         let mut map = self.0.lock().unwrap();
///         if let Some((Record::Completed { token: done_by, .. }, _)) = map.get(key) {
///             return if *done_by == token { Ok(()) } else { Err(StoreError::LeaseLost) };
///         }
///         if !owned_by(&map, key, &token) {
///             return Err(StoreError::LeaseLost);
///         }
///         let record = Record::Completed { token, fingerprint, output, expires_at: SystemTime::now() + ttl };
///         map.insert(key.clone(), (record, Instant::now() + ttl));
///         Ok(())
///     }
///
///     async fn release(&self, key: &Key, token: &Token) -> Result<(), StoreError> {
///         let mut map = self.0.lock().unwrap();
///         if !owned_by(&map, key, token) {
///             return Err(StoreError::LeaseLost);
///         }
///         map.remove(key);
///         Ok(())
///     }
///
///     async fn renew(&self, key: &Key, token: &Token, lease: Duration) -> Result<(), StoreError> {
///         let mut map = self.0.lock().unwrap();
///         if !owned_by(&map, key, token) {
///             return Err(StoreError::LeaseLost);
///         }
///         if let Some((Record::InProgress { lease_until, .. }, until)) = map.get_mut(key) {
///             *lease_until = SystemTime::now() + lease;
///             *until = Instant::now() + lease;
///         }
///         Ok(())
///     }
///
///     async fn get(&self, key: &Key) -> Result<Option<Record>, StoreError> {
///         let map = self.0.lock().unwrap();
///         Ok(map.get(key).filter(|(_, until)| *until > Instant::now()).map(|(record, _)| record.clone()))
///     }
///
///     async fn remove(&self, key: &Key) -> Result<bool, StoreError> {
///         Ok(self.0.lock().unwrap().remove(key).is_some())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// idempotent_core::conformance::run_all(&MapStore::default()).await;
/// # }
/// ```
#[async_trait]
pub trait Store: Debug + Send + Sync + 'static {
    /// Atomically claims `key`, in one round trip.
    ///
    /// * No record, an expired completed record, or an in-progress record whose lease has
    ///   passed: create `InProgress { token: fresh random token, fingerprint, lease_until:
    ///   now + lease }` and return [`Claim::Acquired`] (`took_over` set in the last case, by a
    ///   store that can tell: one whose in-progress records leave by themselves when their lease
    ///   passes, as on Redis, sees a free key and reports `false`).
    /// * A live completed record: return [`Claim::Completed`] with its fingerprint and output,
    ///   unchanged.
    /// * A live in-progress record: return [`Claim::InProgress`] with its fingerprint and the
    ///   time left on its lease, unchanged.
    ///
    /// The store does not compare fingerprints; the executor does. Among any number of
    /// concurrent claims of one free key, across processes, exactly one is `Acquired`.
    async fn claim(&self, key: &Key, request: ClaimRequest) -> Result<Claim, StoreError>;

    /// [`claim`](Store::claim), answered at once by a store that needs no I/O for it (one
    /// that keeps its records in this process), or `None` to have the executor await
    /// [`claim`](Store::claim) instead.
    ///
    /// Same contract as `claim` when it answers; a live completed record may be lent as
    /// [`ClaimNow::Held`] instead of copied into [`Claim::Completed`]. The executor asks this
    /// first, so an in-process store replays without allocating a future. The default is
    /// `None`, which every remote store keeps; a wrapper that counts or observes claims should
    /// keep it too, so that every claim goes through `claim`.
    fn claim_now(&self, key: &Key, request: ClaimRequest) -> Option<Result<ClaimNow, StoreError>> {
        let _ = (key, request);
        None
    }

    /// Turns the record owned by `completion.token` into `Completed { output, fingerprint,
    /// expires_at: now + ttl }`.
    ///
    /// Fenced: succeeds only while the record is in progress under the token (a lease that
    /// passed without a takeover still counts as owned). If the record is already completed
    /// by this same token it returns `Ok` without changing it (a retried complete whose first
    /// answer was lost). Otherwise [`StoreError::LeaseLost`], and nothing changes.
    ///
    /// `completion.fingerprint` is the one the owner claimed with. A store whose in-progress
    /// records leave by themselves when their lease passes (Redis: the record's own expiry)
    /// has nothing left to read it from when a late owner completes, yet that owner still owns
    /// the key if nobody claimed it since; it writes the completed record from the completion.
    /// Other stores may ignore it. So may they [`completion.keep`](Completion::keep), unless
    /// they lend records through [`claim_now`](Store::claim_now).
    async fn complete(&self, key: &Key, completion: Completion) -> Result<(), StoreError>;

    /// Deletes the record owned by `token`, so the next claim runs the body again.
    ///
    /// Fenced like [`complete`](Store::complete): [`StoreError::LeaseLost`] and no change when
    /// `token` does not own an in-progress record.
    async fn release(&self, key: &Key, token: &Token) -> Result<(), StoreError>;

    /// Extends the lease of the record owned by `token` to `now + lease`, for a body that
    /// runs long. Fenced like [`complete`](Store::complete).
    async fn renew(&self, key: &Key, token: &Token, lease: Duration) -> Result<(), StoreError>;

    /// Reads the record, if there is a live one (expired completed records read as `None`;
    /// in-progress records are returned even when their lease has passed, until a claim takes
    /// them over or the store drops them).
    async fn get(&self, key: &Key) -> Result<Option<Record>, StoreError>;

    /// Deletes the record whatever its state; `true` if there was one. For operators and
    /// tests: removing an in-progress record lets a duplicate run.
    async fn remove(&self, key: &Key) -> Result<bool, StoreError>;

    /// The largest output (the envelope's bytes, as `complete` receives them) this store
    /// accepts; `complete` refuses a larger one with [`StoreError::TooLarge`]. The executor
    /// takes the lower of this and its own limit, so a caller learns it up front instead of by
    /// a failed write. Default: no limit of the store's own.
    fn max_output_bytes(&self) -> usize {
        usize::MAX
    }

    /// Reads the **mark** under `key`: a small value (under 64 bytes) apart from the records,
    /// which [producer-sequence deduplication](crate::consumer::sequence) keeps, one per
    /// producer (its high-water mark and the lease of the message in flight), and which a
    /// [`ProducerSequence`](crate::consumer::sequence::ProducerSequence) keeps for its last
    /// sequence number. `None` when there is none or it expired.
    ///
    /// Optional: the default answers [`StoreError::Unsupported`]. Every store in this crate
    /// keeps marks.
    async fn load_mark(&self, key: &Key) -> Result<Option<Bytes>, StoreError> {
        let _ = key;
        Err(StoreError::Unsupported(
            "marks (producer-sequence deduplication)",
        ))
    }

    /// Replaces the mark under `key` with `swap.new` (kept for `swap.ttl`) if it still holds
    /// `swap.expected` (`None`: there is none), atomically; `Ok(false)`, and no change, when it
    /// holds anything else. A compare-and-set on the whole value: the value carries its
    /// owner's token, so a swap by an owner that lost its lease is refused.
    async fn swap_mark(&self, key: &Key, swap: MarkSwap<'_>) -> Result<bool, StoreError> {
        let _ = (key, swap);
        Err(StoreError::Unsupported(
            "marks (producer-sequence deduplication)",
        ))
    }

    /// One page of the marks of one namespace and version (the request's namespace filter;
    /// a request without one is refused), their values only. The
    /// [completer](crate::steps::Completer) finds abandoned multi-step calls by the journals
    /// they left, which are marks.
    ///
    /// Optional: the default answers [`StoreError::Unsupported`]. The memory store lists its
    /// marks; SQL stores by their `namespace` column; Redis by `SCAN` over the namespace's key
    /// prefix (not on a Redis Cluster).
    async fn list_marks(&self, request: ListRequest) -> Result<MarkPage, StoreError> {
        let _ = request;
        Err(StoreError::Unsupported(
            "listing marks (the steps completer)",
        ))
    }

    /// One page of records, for operators: those of one namespace or all, without their
    /// outputs ([`Listing`]). Pages follow the store's own order (row id, `SCAN`); a record
    /// written or removed while pages are read may be missed or, on Redis, listed twice.
    ///
    /// Optional: the default answers [`StoreError::Unsupported`]. The SQL stores list by
    /// their `namespace` column, Redis by `SCAN` over the namespace's key prefix (not on a
    /// Redis Cluster); the memory store does not list.
    async fn list(&self, request: ListRequest) -> Result<Listing, StoreError> {
        let _ = request;
        Err(StoreError::Unsupported("listing records"))
    }

    /// Counts of records by namespace and state, for operators. A store that counts by
    /// scanning (Redis) reads at most `max_records` keys and says whether it saw them all.
    ///
    /// Optional: the default answers [`StoreError::Unsupported`] (as the memory store does).
    async fn stats(&self, max_records: u64) -> Result<StoreStats, StoreError> {
        let _ = max_records;
        Err(StoreError::Unsupported("counting records"))
    }

    /// Deletes up to `limit` expired records (completed past their TTL, abandoned claims past
    /// their purge time), for stores that do not drop them themselves.
    ///
    /// Optional: the default answers [`StoreError::Unsupported`]. SQL stores delete
    /// ([`Purged::Deleted`]); Redis and the memory store answer [`Purged::ExpiresItself`].
    async fn purge_expired(&self, limit: u32) -> Result<Purged, StoreError> {
        let _ = limit;
        Err(StoreError::Unsupported("purging expired records"))
    }
}

/// `Ok` when `output` is within `limit` bytes, else the [`StoreError::TooLarge`] a store's
/// `complete` answers before it sends anything.
#[cfg(any(
    feature = "redis",
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite"
))]
pub(crate) fn fits(output: &[u8], limit: usize) -> Result<(), StoreError> {
    if output.len() > limit {
        return Err(StoreError::TooLarge {
            size: output.len(),
            limit,
        });
    }
    Ok(())
}

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        #[async_trait]
        impl<S: Store + ?Sized> Store for $ty {
            async fn claim(&self, key: &Key, request: ClaimRequest) -> Result<Claim, StoreError> {
                (**self).claim(key, request).await
            }

            fn claim_now(&self, key: &Key, request: ClaimRequest) -> Option<Result<ClaimNow, StoreError>> {
                (**self).claim_now(key, request)
            }

            async fn complete(&self, key: &Key, completion: Completion) -> Result<(), StoreError> {
                (**self).complete(key, completion).await
            }

            async fn release(&self, key: &Key, token: &Token) -> Result<(), StoreError> {
                (**self).release(key, token).await
            }

            async fn renew(&self, key: &Key, token: &Token, lease: Duration) -> Result<(), StoreError> {
                (**self).renew(key, token, lease).await
            }

            async fn get(&self, key: &Key) -> Result<Option<Record>, StoreError> {
                (**self).get(key).await
            }

            async fn remove(&self, key: &Key) -> Result<bool, StoreError> {
                (**self).remove(key).await
            }

            fn max_output_bytes(&self) -> usize {
                (**self).max_output_bytes()
            }

            async fn load_mark(&self, key: &Key) -> Result<Option<Bytes>, StoreError> {
                (**self).load_mark(key).await
            }

            async fn swap_mark(&self, key: &Key, swap: MarkSwap<'_>) -> Result<bool, StoreError> {
                (**self).swap_mark(key, swap).await
            }

            async fn list(&self, request: ListRequest) -> Result<Listing, StoreError> {
                (**self).list(request).await
            }

            async fn list_marks(&self, request: ListRequest) -> Result<MarkPage, StoreError> {
                (**self).list_marks(request).await
            }

            async fn stats(&self, max_records: u64) -> Result<StoreStats, StoreError> {
                (**self).stats(max_records).await
            }

            async fn purge_expired(&self, limit: u32) -> Result<Purged, StoreError> {
                (**self).purge_expired(limit).await
            }
        }
    )*};
}

forward_store!(Arc<S>, Box<S>);
