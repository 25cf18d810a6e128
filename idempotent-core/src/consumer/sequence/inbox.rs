//! Producer-sequence deduplication in the handler's SQL transaction: the producer's mark
//! moves in the same transaction as the handler's writes, so they commit together or not at
//! all.

use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::Transaction;

use super::mark::{Admission, Mark, now_ms};
use super::{Delivery, GapPolicy, RETENTION, Stamp, gap_error, mark_key};
use crate::error::{Error, StoreOp};
use crate::key::{Key, Namespace};
use crate::protocol::defaults;
use crate::store::MarkSwap;
use crate::store::sql::{SqlDialect, SqlStore};

/// A [`SequencedConsumer`](super::SequencedConsumer) whose marks move in the handler's own
/// transaction on the SQL store's database (the same marks, under the same keys, for the
/// same name). Cheap to clone.
///
/// [`handle`](Self::handle) locks the producer's mark row in the transaction first (inserting
/// an empty mark for a producer not seen before), so concurrent deliveries of one producer
/// take turns (on SQLite, the transaction takes the database's write lock), then reads it,
/// runs the handler, and writes the new mark. A
/// crash before the commit leaves neither the effect nor the mark. A gap is never waited for
/// here (the lock would keep the missing message out): [`GapPolicy::Wait`] acts as
/// [`GapPolicy::Reject`].
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use idempotent_core::consumer::sequence::{SequencedInbox, Stamp};
/// use idempotent_core::store::sql::{sqlx::{self, SqlitePool}, SqliteStore};
/// use idempotent_core::Error;
///
/// let pool = SqlitePool::connect("sqlite::memory:").await?;
/// sqlx::query("CREATE TABLE stock (moves INTEGER)").execute(&pool).await?;
/// sqlx::query("INSERT INTO stock VALUES (0)").execute(&pool).await?;
/// let store = SqliteStore::new(pool.clone());
/// store.migrate().await?;
/// let inbox = SequencedInbox::new(store, "stock.apply-moves");
///
/// // warehouse-7's message #1 is delivered twice: applied once.
/// let stamp = Stamp::new("warehouse-7", 1)?;
/// for _ in 0..2 {
///     let mut tx = pool.begin().await?;
///     inbox
///         .handle(&mut tx, &stamp, |tx| Box::pin(async move {
///             sqlx::query("UPDATE stock SET moves = moves + 1")
///                 .execute(&mut **tx)
///                 .await
///                 .map_err(|_| Error::InvalidOption { option: "sql", problem: "update failed" })?;
///             Ok::<_, Error>(())
///         }))
///         .await?;
///     tx.commit().await?; // the move and the mark, together
/// }
/// let moves: i64 = sqlx::query_scalar("SELECT moves FROM stock").fetch_one(&pool).await?;
/// assert_eq!(moves, 1);
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
#[derive(Debug)]
pub struct SequencedInbox<DB: SqlDialect> {
    store: SqlStore<DB>,
    name: Namespace,
    retention: Duration,
    gaps: GapPolicy,
}

impl<DB: SqlDialect> Clone for SequencedInbox<DB> {
    fn clone(&self) -> Self {
        SequencedInbox {
            store: self.store.clone(),
            name: self.name.clone(),
            retention: self.retention,
            gaps: self.gaps,
        }
    }
}

impl<DB: SqlDialect> SequencedInbox<DB> {
    /// An inbox named `name` over `store` (migrated): gaps rejected, marks kept 30 days.
    pub fn new(store: SqlStore<DB>, name: impl Into<Namespace>) -> SequencedInbox<DB> {
        SequencedInbox {
            store,
            name: name.into(),
            retention: RETENTION,
            gaps: GapPolicy::Reject,
        }
    }

    /// How long a mark is kept after its last change (default [`RETENTION`]).
    pub fn retention(mut self, retention: Duration) -> SequencedInbox<DB> {
        self.retention = retention.clamp(Duration::from_secs(1), defaults::LONGEST);
        self
    }

    /// What to do with a gap: `Reject` (the default; `Wait` acts as it) or `Accept`.
    pub fn on_gap(mut self, policy: GapPolicy) -> SequencedInbox<DB> {
        self.gaps = policy;
        self
    }

    /// The key `producer`'s mark is kept under.
    pub fn key(&self, producer: &str) -> Result<Key, Error> {
        mark_key(&self.name, producer)
    }

    /// Runs `handler` with `tx` if `stamp` is its producer's next message, and moves the
    /// producer's mark in `tx`. The caller commits `tx`, then acknowledges the delivery; on
    /// `Err`, roll back (dropping `tx` does) and let the broker redeliver.
    pub async fn handle<'t, T, E, F>(
        &self,
        tx: &mut Transaction<'t, DB>,
        stamp: &Stamp,
        handler: F,
    ) -> Result<Delivery<T>, E>
    where
        E: From<Error>,
        F: for<'c> FnOnce(&'c mut Transaction<'t, DB>) -> BoxFuture<'c, Result<T, E>>,
    {
        let key = self.key(stamp.producer())?;
        let key_ref = &key;
        let failed = |op| move |source| Error::from_store(op, key_ref, source);
        let store = &self.store;
        let locked = store
            .lock_mark_in(&mut **tx, &key)
            .await
            .map_err(failed(StoreOp::Claim))?;
        if !locked {
            // A producer without a mark: insert an empty one (processed 0), so that there is
            // a row to take turns on. An insert that finds another transaction's row waits
            // for it to end, then changes nothing: lock that row instead.
            let empty = Mark::default().encode();
            let inserted = store
                .swap_mark_in(&mut **tx, &key, MarkSwap::new(None, &empty, self.retention))
                .await
                .map_err(failed(StoreOp::Claim))?;
            if !inserted {
                store
                    .lock_mark_in(&mut **tx, &key)
                    .await
                    .map_err(failed(StoreOp::Claim))?;
            }
        }
        let bytes = store
            .load_mark_in(&mut **tx, &key)
            .await
            .map_err(failed(StoreOp::Get))?;
        let mark = Mark::decode(&key, bytes.as_deref())?;
        let accept = self.gaps == GapPolicy::Accept;
        let missed = match mark.admit(stamp.sequence(), now_ms(), accept) {
            Admission::Duplicate => return Ok(Delivery::Duplicate),
            Admission::Run(missed) => missed,
            // Held by a delivery outside a transaction (a `SequencedConsumer`).
            Admission::Busy(retry_after) => {
                return Err(Error::InProgress { key, retry_after }.into());
            }
            Admission::Gap { expected } => return Err(gap_error(&key, stamp, expected).into()),
        };
        let output = handler(&mut *tx).await?;
        let done = Mark {
            processed: stamp.sequence(),
            owner: None,
        };
        let swapped = store
            .swap_mark_in(
                &mut **tx,
                &key,
                MarkSwap::new(bytes.as_deref(), &done.encode(), self.retention),
            )
            .await
            .map_err(failed(StoreOp::Complete))?;
        if !swapped {
            // The row is locked by this transaction, so nothing else changed it; kept as a
            // guard (an isolation level that lets another change through): roll back, and the
            // redelivery finds the new mark.
            return Err(Error::InProgress {
                key,
                retry_after: defaults::POLL_MAX,
            }
            .into());
        }
        Ok(match missed {
            Some(missed) => Delivery::ProcessedAfterGap { output, missed },
            None => Delivery::Processed(output),
        })
    }
}
