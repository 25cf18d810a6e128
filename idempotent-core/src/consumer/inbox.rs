//! The SQL inbox: the processed-mark of a message is written in the handler's own
//! transaction, so the handler's writes and the mark commit together or not at all.
//!
//! [`Consumer`] marks a message after its handler returned; a consumer that
//! dies between its effect and the mark runs the effect again on redelivery. When the effect
//! is a write to the same database, the inbox closes that gap: a crash before the commit
//! leaves neither the effect nor the mark, and the redelivery runs the handler once more
//! against a clean slate; after the commit every redelivery finds the mark and is skipped.
//!
//! The mark is the [SQL store](crate::store::sql)'s completed record, written with its
//! transactional mode ([`SqlStore::in_transaction`]); expired marks (older than the window)
//! are purged like any record (`purge_expired`, `spawn_sweeper`). A concurrent delivery of the
//! same message waits on the first one's uncommitted mark, then is skipped (or, if the first
//! rolled back, handled).
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use idempotent_core::consumer::{inbox::Inbox, Outcome};
//! use idempotent_core::store::sql::{sqlx::{self, SqlitePool}, SqliteStore};
//! use idempotent_core::Error;
//!
//! let pool = SqlitePool::connect("sqlite::memory:").await?;
//! sqlx::query("CREATE TABLE ledger (event_id TEXT, cents INTEGER)").execute(&pool).await?;
//! let store = SqliteStore::new(pool.clone());
//! store.migrate().await?;
//! let inbox = Inbox::new(store, "ledger.book-payments");
//!
//! // "evt-1" is delivered twice: booked once.
//! for event_id in ["evt-1", "evt-1"] {
//!     let mut tx = pool.begin().await?;
//!     let outcome = inbox
//!         .handle(&mut tx, event_id, |tx| Box::pin(async move {
//!             sqlx::query("INSERT INTO ledger VALUES (?, 1999)")
//!                 .bind(event_id)
//!                 .execute(&mut **tx)
//!                 .await
//!                 .map_err(|e| Error::InvalidOption { option: "sql", problem: "insert failed" })?;
//!             Ok::<_, Error>(())
//!         }))
//!         .await?;
//!     tx.commit().await?; // the booking and the mark, together
//!     // then acknowledge the delivery, whatever the outcome
//!     let _ack = outcome.is_duplicate();
//! }
//! let booked: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger").fetch_one(&pool).await?;
//! assert_eq!(booked, 1);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Transaction;

use super::{Consumer, Outcome};
use crate::error::Error;
use crate::key::{Fingerprint, Key, Namespace};
use crate::protocol::{CallOptions, call_option_setters, defaults};
use crate::store::sql::{SqlDialect, SqlStore};
use crate::transaction::{Claimed, InTransaction, Owner};

/// What [`Inbox::receive`] found for a delivery.
#[derive(Debug)]
pub enum Received<'s, DB: SqlDialect, T> {
    /// The message was processed and committed within the window: acknowledge it, skip the
    /// handler. Carries what the handler returned the first time.
    Duplicate(T),
    /// The message is new: run the handler in the transaction, then
    /// [`Owner::finish`] with its result in the same transaction, and commit.
    New(Owner<'s, DB>),
}

/// An idempotent consumer whose processed-marks live in the SQL store and are written in the
/// handler's transaction. Keys are the same as [`Consumer`]'s for the same name and id.
/// Cheap to clone.
///
/// Per-delivery options are [`CallOptions`], set one by one or as one value: the `ttl` is the
/// [`window`](Self::window); the `lease` is how long a mark in progress *outside* a
/// transaction holds; `wait_timeout` and `on_in_progress` apply to a mark in progress outside
/// a transaction on PostgreSQL (MySQL and SQLite answer in progress at once, see
/// [`InTransaction`]).
#[derive(Debug)]
pub struct Inbox<DB: SqlDialect> {
    store: SqlStore<DB>,
    name: Namespace,
    options: CallOptions,
}

impl<DB: SqlDialect> Clone for Inbox<DB> {
    fn clone(&self) -> Self {
        Inbox {
            store: self.store.clone(),
            name: self.name.clone(),
            options: self.options,
        }
    }
}

impl<DB: SqlDialect> Inbox<DB> {
    /// An inbox named `name` over `store` (migrated), remembering processed ids for 24 hours.
    pub fn new(store: SqlStore<DB>, name: impl Into<Namespace>) -> Inbox<DB> {
        Inbox {
            store,
            name: name.into(),
            options: CallOptions::new().ttl(defaults::DEDUP_WINDOW),
        }
    }

    call_option_setters!(window, options);

    /// The store.
    pub fn store(&self) -> &SqlStore<DB> {
        &self.store
    }

    /// The key a message id is remembered under (the same as a [`Consumer`] of this name).
    pub fn key<I: Serialize + ?Sized>(&self, id: &I) -> Result<Key, Error> {
        key_of(&self.name, id)
    }

    fn call<I: Serialize + ?Sized>(&self, id: &I) -> Result<InTransaction<'_, DB>, Error> {
        let key = self.key(id)?;
        let fingerprint = Fingerprint::from_digest(*key.digest());
        Ok(self
            .store
            .in_transaction(key, fingerprint)
            .options(self.options))
    }

    /// First step of a delivery, in `tx`: is message `id` new or a duplicate? For a new one,
    /// write the effects in `tx`, pass the handler's result to [`Owner::finish`] (which writes
    /// the mark in `tx`), then commit. Use it when the handler borrows from its surroundings;
    /// [`handle`](Self::handle) does the steps for a closure.
    pub async fn receive<'s, I, T>(
        &'s self,
        tx: &mut Transaction<'_, DB>,
        id: &I,
    ) -> Result<Received<'s, DB, T>, Error>
    where
        I: Serialize + ?Sized,
        T: Serialize + DeserializeOwned,
    {
        match self.call(id)?.claim::<T, Error>(tx).await? {
            Claimed::Replayed(output) => output.map(Received::Duplicate),
            Claimed::Owned(owner) => Ok(Received::New(owner)),
        }
    }

    /// Runs `handler` with `tx` unless message `id` was processed within the window, and
    /// writes the processed-mark in `tx`. The caller commits `tx`, then acknowledges the
    /// delivery; on `Err`, roll back (dropping `tx` does) and let the broker redeliver.
    pub async fn handle<'t, I, T, E, F>(
        &self,
        tx: &mut Transaction<'t, DB>,
        id: &I,
        handler: F,
    ) -> Result<Outcome<T>, E>
    where
        I: Serialize + ?Sized,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: for<'c> FnOnce(&'c mut Transaction<'t, DB>) -> BoxFuture<'c, Result<T, E>>,
    {
        let owner = match self.receive::<I, T>(&mut *tx, id).await? {
            Received::Duplicate(output) => return Ok(Outcome::Duplicate(output)),
            Received::New(owner) => owner,
        };
        // Outbox messages the handler adds get ids derived from the message's key.
        let result = owner.scope(handler(&mut *tx)).await;
        owner.finish(tx, result).await.map(Outcome::Processed)
    }
}

pub(super) fn key_of<I: Serialize + ?Sized>(name: &Namespace, id: &I) -> Result<Key, Error> {
    Consumer::key_in(name, id)
}
