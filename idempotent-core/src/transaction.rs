//! Transactional mode: the claim and the completed record are written in the caller's
//! transaction, beside the body's own writes.

use std::marker::PhantomData;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::Transaction;
use tokio::time::Instant;

use crate::error::{Error, StoreOp};
use crate::key::{Fingerprint, Key};
use crate::metrics::{self, Counter};
use crate::output::{OutputMode, OutputsAndErrors, OutputsOnly};
use crate::protocol::{
    self, CallOptions, Caller, Next, Outcome, Refusal, Request, Settings, call_option_setters,
};
use crate::record::Token;
use crate::store::sql::{SqlDialect, SqlStore};
use crate::store::{ClaimRequest, Store};
use crate::trace::event;

/// One call in the caller's transaction: the claim, the body's writes and the completed
/// record commit together, or roll back together.
///
/// * **Replay** (a completed record with this fingerprint): its output, decoded; the body
///   does not run and nothing is written.
/// * **First execution**: the claim is inserted in the transaction, the body runs with it,
///   and its `Ok` output is written into the claimed row in the same transaction. Until the
///   caller commits, no one else sees the record: a concurrent duplicate's claim waits on the
///   row lock and then replays the output (or, if the transaction rolled back, runs the body
///   itself); a duplicate on the pool waits only up to a bound (PostgreSQL: the store's
///   [`lock_timeout`](crate::store::sql::SqlStoreBuilder::lock_timeout)), then finds it in progress. A
///   crash before the commit leaves neither the body's writes nor the record.
/// * **`Err`** (not stored): the claim is deleted again in the transaction and the error
///   returned; roll the transaction back (dropping it does) so the body's writes go too.
/// * A record in progress under another owner (a call on the pool with the same key, or a
///   transaction that committed its claim without finishing it): on PostgreSQL, wait for it
///   and replay its output, or reject, per [`InProgressPolicy`](crate::InProgressPolicy); on MySQL and SQLite,
///   [`Error::InProgress`] at once, whatever the policy, because the claim's insert already
///   holds a lock the owner needs to complete (InnoDB's shared lock on the duplicate row,
///   SQLite's write lock) until the transaction ends. **Roll the transaction back (dropping it
///   does) before retrying**: until then the owner's `complete` waits for it. See
///   [transactional and pool calls on one key](crate::store::sql#transactional-and-pool-calls-on-one-key).
///
/// Under PostgreSQL's `REPEATABLE READ` or `SERIALIZABLE`, a duplicate whose transaction began
/// before the first call's commit fails with a serialization error (`could not serialize
/// access due to concurrent update`) instead of waiting and replaying; retry the transaction,
/// as those isolation levels require anyway, and the retry replays. `READ COMMITTED` (the
/// default) waits and replays.
///
/// Run it with a closure ([`run`](Self::run)), or in two steps ([`claim`](Self::claim), then
/// [`Owner::finish`]) when the body borrows from its surroundings — which is what
/// `#[idempotent(transaction = tx, store = …)]` expands to.
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idempotent_core::BoxError> {
/// use idempotent_core::store::sql::sqlx::{self, SqlitePool};
/// use idempotent_core::store::sql::SqliteStore;
/// use idempotent_core::transaction::Claimed;
/// use idempotent_core::{BoxError, Fingerprint, Key};
///
/// let pool = SqlitePool::connect("sqlite::memory:").await?;
/// sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, sku TEXT)").execute(&pool).await?;
/// let store = SqliteStore::new(pool.clone());
/// store.migrate().await?;
///
/// // The client retries: the order is inserted once, and every attempt gets its id.
/// for _attempt in 0..3 {
///     let key = Key::derive("shop::order", 1, &"client-order-7")?;
///     let fingerprint = Fingerprint::of(&"sku-1")?;
///     let mut tx = pool.begin().await?;
///     let order_id: Result<i64, BoxError> =
///         match store.in_transaction(key, fingerprint).claim(&mut tx).await? {
///             Claimed::Replayed(order_id) => order_id,
///             Claimed::Owned(owner) => {
///                 let inserted = sqlx::query_scalar("INSERT INTO orders (sku) VALUES ('sku-1') RETURNING id")
///                     .fetch_one(&mut *tx)
///                     .await
///                     .map_err(BoxError::from);
///                 owner.finish(&mut tx, inserted).await
///             }
///         };
///     tx.commit().await?;
///     assert_eq!(order_id?, 1);
/// }
/// let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&pool).await?;
/// assert_eq!(orders, 1);
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
#[derive(Debug)]
#[must_use = "a call does nothing until `claim` or `run` is awaited"]
pub struct InTransaction<'s, DB: SqlDialect, M = OutputsOnly> {
    store: &'s SqlStore<DB>,
    request: Request<M>,
    /// `false` only under [`test_util::without_deduplication`](crate::test_util): nothing is
    /// claimed or recorded, the body runs.
    records: bool,
}

/// What [`InTransaction::claim`] found.
#[derive(Debug)]
pub enum Claimed<'s, DB: SqlDialect, T, E, M = OutputsOnly> {
    /// The key was completed by an earlier call with the same inputs: its result, replayed
    /// (an `Err` only under `store_errors`). Nothing was written.
    Replayed(Result<T, E>),
    /// The caller owns the key in its transaction: run the body, then
    /// [`Owner::finish`] in the same transaction.
    Owned(Owner<'s, DB, M>),
}

/// The owner of a key claimed in a transaction. Finish with [`finish`](Self::finish) in
/// the same transaction; dropping it instead leaves the claim to the transaction's fate (a
/// rollback removes it).
#[derive(Debug)]
#[must_use = "record the body's result with `Owner::finish`, in the same transaction"]
pub struct Owner<'s, DB: SqlDialect, M = OutputsOnly> {
    store: &'s SqlStore<DB>,
    key: Key,
    token: Token,
    ttl: Duration,
    max_output_bytes: usize,
    /// Whether the claim was written (see [`InTransaction`]'s field).
    records: bool,
    mode: PhantomData<M>,
}

impl<DB: SqlDialect> SqlStore<DB> {
    /// A call whose claim and completed record go into the caller's transaction: see
    /// [`InTransaction`]. It starts from the [defaults](crate::defaults), and stores outputs
    /// up to the store's [`max_output_bytes`](SqlStore::max_output_bytes).
    pub fn in_transaction(&self, key: Key, fingerprint: Fingerprint) -> InTransaction<'_, DB> {
        let mut settings = Settings::DEFAULT;
        settings.max_output_bytes = Store::max_output_bytes(self);
        InTransaction {
            store: self,
            request: Request::new(key, fingerprint, settings),
            records: true,
        }
    }
}

impl<'s, DB: SqlDialect, M> InTransaction<'s, DB, M> {
    fn apply(&mut self, options: CallOptions) {
        self.request.apply(options);
    }

    // Inside the transaction the row lock, not the lease, keeps duplicates out: the lease
    // counts only if the transaction commits without completing the claim. `wait_timeout` and
    // `on_in_progress` apply on PostgreSQL only: on MySQL and SQLite a claim that finds the key
    // in progress answers `Error::InProgress` at once (see `InTransaction`).
    call_option_setters!();

    /// Store `Err` outputs too and replay them (the error type must be serializable).
    pub fn store_errors(self) -> InTransaction<'s, DB, OutputsAndErrors> {
        InTransaction {
            store: self.store,
            request: self.request.store_errors(),
            records: self.records,
        }
    }

    /// The key.
    pub fn key(&self) -> &Key {
        &self.request.key
    }

    /// The call without deduplication: [`test_util::without_deduplication`](crate::test_util).
    #[cfg(feature = "test-util")]
    pub(crate) fn unrecorded(mut self) -> Self {
        self.records = false;
        self
    }

    /// Claims the key in `tx` (one statement on PostgreSQL; see the
    /// [round trips](crate::store::sql#round-trips)): a replay, or ownership until
    /// [`Owner::finish`].
    pub async fn claim<T, E>(
        self,
        tx: &mut Transaction<'_, DB>,
    ) -> Result<Claimed<'s, DB, T, E, M>, Error>
    where
        M: OutputMode<T, E>,
    {
        let store = self.store;
        let Request {
            key,
            fingerprint,
            settings,
            ..
        } = self.request;
        settings.check()?;
        if !self.records {
            return Ok(Claimed::Owned(Owner {
                store,
                key,
                token: Token::random(),
                ttl: settings.ttl,
                max_output_bytes: settings.max_output_bytes,
                records: false,
                mode: PhantomData,
            }));
        }
        let mut caller = Caller::in_transaction(&settings, store.waits_in_transaction());
        let mut waited = false;
        loop {
            let request = ClaimRequest::new(fingerprint, settings.lease);
            let claim = store.claim_in(&mut **tx, &key, request, true);
            let claim = metrics::store_call(StoreOp::Claim, &key, claim).await;
            let next = match claim {
                Ok(claim) => caller.on_claim(claim, &fingerprint, Instant::now),
                Err(error) => Next::Fail(Refusal::Store(error)),
            };
            match next {
                Next::Own { token, .. } => {
                    metrics::count(Counter::Executions, &key);
                    event!(debug, key = %key, "execute (in the caller's transaction)");
                    return Ok(Claimed::Owned(Owner {
                        store,
                        key,
                        token,
                        ttl: settings.ttl,
                        max_output_bytes: settings.max_output_bytes,
                        records: true,
                        mode: PhantomData,
                    }));
                }
                Next::Replay { output, .. } => {
                    metrics::count(Counter::Replays, &key);
                    event!(debug, key = %key, "replay (in the caller's transaction)");
                    let result = protocol::decode_stored::<M, T, E>(key, &output)?;
                    return Ok(Claimed::Replayed(result));
                }
                // Waiting here keeps the transaction's locks: the caller waits only where the
                // claim took none that the owner needs (see `Caller::in_transaction`).
                Next::Poll(nap) => {
                    if !std::mem::replace(&mut waited, true) {
                        metrics::count(Counter::Waits, &key);
                    }
                    tokio::time::sleep(nap).await;
                }
                Next::Fail(refusal) => return Err(refusal.into_error(key)),
            }
        }
    }

    /// Claims the key in `tx`, runs `body` with `tx` when the caller owns it, and records its
    /// result in `tx`; the caller commits. The body is a closure returning a boxed future
    /// (as in sqlx's `Connection::transaction`); when it needs to borrow from its
    /// surroundings, use [`claim`](Self::claim) and [`Owner::finish`] instead.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use idempotent_core::store::sql::{sqlx::{self, SqlitePool}, SqliteStore};
    /// use idempotent_core::{Error, Fingerprint, Key};
    ///
    /// let pool = SqlitePool::connect("sqlite::memory:").await?;
    /// sqlx::query("CREATE TABLE ledger (entry TEXT)").execute(&pool).await?;
    /// let store = SqliteStore::new(pool.clone());
    /// store.migrate().await?;
    ///
    /// let key = Key::derive("ledger::post", 1, &"entry-1")?;
    /// let fingerprint = Fingerprint::of(&"entry-1")?;
    /// let mut tx = pool.begin().await?;
    /// let posted: Result<u64, Error> = store
    ///     .in_transaction(key, fingerprint)
    ///     .run(&mut tx, |tx| Box::pin(async move {
    ///         let done = sqlx::query("INSERT INTO ledger VALUES ('entry-1')").execute(&mut **tx).await;
    ///         Ok(done.map(|done| done.rows_affected()).unwrap_or(0))
    ///     }))
    ///     .await;
    /// tx.commit().await?;
    /// assert_eq!(posted?, 1);
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub async fn run<'t, T, E, F>(self, tx: &mut Transaction<'t, DB>, body: F) -> Result<T, E>
    where
        M: OutputMode<T, E>,
        E: From<Error>,
        F: for<'c> FnOnce(&'c mut Transaction<'t, DB>) -> BoxFuture<'c, Result<T, E>>,
    {
        let owner = match self.claim(&mut *tx).await {
            Ok(Claimed::Replayed(result)) => return result,
            Ok(Claimed::Owned(owner)) => owner,
            Err(error) => return Err(error.into()),
        };
        let result = owner.scope(body(&mut *tx)).await;
        owner.finish(tx, result).await
    }
}

impl<DB: SqlDialect, M> Owner<'_, DB, M> {
    /// The key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The claim's token.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// Runs `body` as this call: the messages it adds to an
    /// [`Outbox`](crate::outbox::Outbox) get ids derived from the key (`{key}/0`, `{key}/1`,
    /// …), the same on every run of the body. [`run`](InTransaction::run) and
    /// `#[idempotent(transaction = …)]` run their body so.
    pub async fn scope<F: std::future::Future>(&self, body: F) -> F::Output {
        crate::outbox::lineage::scope(&self.key, body).await
    }

    /// Records the body's `result` in `tx` (one statement) and returns it: `Ok` outputs are
    /// stored as the completed record; an `Err` (unless stored) deletes the claim instead. An
    /// output that cannot be encoded, or one over the store's limit, is returned, and the
    /// record says it was not stored: retries get
    /// [`Error::OutputNotStored`].
    pub async fn finish<T, E>(
        self,
        tx: &mut Transaction<'_, DB>,
        result: Result<T, E>,
    ) -> Result<T, E>
    where
        M: OutputMode<T, E>,
        E: From<Error>,
    {
        if !self.records {
            return result;
        }
        let encoded = match protocol::outcome::<M, T, E>(&result, self.max_output_bytes) {
            Outcome::Store(encoded) => encoded,
            Outcome::Release => {
                self.release(tx).await;
                return result;
            }
            // The body's effects commit with this record: it says the body ran, so a retry
            // gets `Error::OutputNotStored` instead of running it again.
            Outcome::NotStored(reason) => {
                event!(warn, key = %self.key, reason = %reason, "the output cannot be stored; recording that the body ran");
                protocol::not_stored(&reason, self.max_output_bytes)
            }
        };
        match self
            .store
            .complete_in(&mut **tx, &self.key, &self.token, &encoded, self.ttl)
            .await
        {
            Ok(()) => result,
            Err(error) => Err(Error::from_store(StoreOp::Complete, &self.key, error).into()),
        }
    }

    /// Deletes the claim in `tx`. A failure is left to the transaction: on PostgreSQL a failed
    /// statement of the body aborts the transaction (this delete fails too), and its rollback
    /// removes the claim anyway.
    async fn release(&self, tx: &mut Transaction<'_, DB>) {
        if let Err(error) = self
            .store
            .release_in(&mut **tx, &self.key, &self.token)
            .await
        {
            event!(debug, key = %self.key, error = %error, "could not delete the claim in the transaction; its rollback will");
            let _ = error;
        }
    }
}
