//! Transactional mode: the claim and the completed record are written in the caller's
//! transaction, beside the body's own writes.

use std::marker::PhantomData;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::Transaction;
use tokio::time::Instant;

use super::{SqlDialect, SqlStore};
use crate::error::{CodecOp, Error, StoreOp};
use crate::executor::{DropErrors, InProgressPolicy, OutputMode, StoreErrors};
use crate::key::{Fingerprint, Key};
use crate::record::{Claim, Token};
use crate::trace::event;

// The executor's defaults, so that a call reads the same with and without a transaction.
const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
const DEFAULT_LEASE: Duration = Duration::from_secs(30);
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const POLL_FIRST: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(250);

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
///   [`lock_timeout`](super::SqlStoreBuilder::lock_timeout)), then finds it in progress. A
///   crash before the commit leaves neither the body's writes nor the record.
/// * **`Err`** (not stored): the claim is deleted again in the transaction and the error
///   returned; roll the transaction back (dropping it does) so the body's writes go too.
/// * A record in progress under another owner (a call on the pool with the same key, or a
///   transaction that committed its claim without finishing it): on PostgreSQL, wait for it
///   and replay its output, or reject, per [`InProgressPolicy`]; on MySQL and SQLite,
///   [`Error::InProgress`] at once, whatever the policy, because the claim's insert already
///   holds a lock the owner needs to complete (InnoDB's shared lock on the duplicate row,
///   SQLite's write lock) until the transaction ends. **Roll the transaction back (dropping it
///   does) before retrying**: until then the owner's `complete` waits for it. See
///   [transactional and pool calls on one key](super#transactional-and-pool-calls-on-one-key).
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
/// use idempotent_core::store::sql::{Claimed, SqliteStore};
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
pub struct InTransaction<'s, DB: SqlDialect, M = DropErrors> {
    store: &'s SqlStore<DB>,
    key: Key,
    fingerprint: Fingerprint,
    ttl: Duration,
    lease: Duration,
    wait_timeout: Duration,
    on_in_progress: InProgressPolicy,
    mode: PhantomData<M>,
}

/// What [`InTransaction::claim`] found.
#[derive(Debug)]
pub enum Claimed<'s, DB: SqlDialect, T, E, M = DropErrors> {
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
pub struct Owner<'s, DB: SqlDialect, M = DropErrors> {
    store: &'s SqlStore<DB>,
    key: Key,
    token: Token,
    ttl: Duration,
    mode: PhantomData<M>,
}

impl<'s, DB: SqlDialect> InTransaction<'s, DB> {
    pub(super) fn new(store: &'s SqlStore<DB>, key: Key, fingerprint: Fingerprint) -> Self {
        InTransaction {
            store,
            key,
            fingerprint,
            ttl: DEFAULT_TTL,
            lease: DEFAULT_LEASE,
            wait_timeout: DEFAULT_WAIT,
            on_in_progress: InProgressPolicy::Wait,
            mode: PhantomData,
        }
    }
}

impl<'s, DB: SqlDialect, M> InTransaction<'s, DB, M> {
    /// How long the output is replayed (default 24 h).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long the claim holds if the transaction commits without completing it (default
    /// 30 s). Inside the transaction the row lock, not the lease, keeps duplicates out.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long to wait for a record in progress under another owner (default 30 s).
    /// PostgreSQL only: on MySQL and SQLite such a claim answers [`Error::InProgress`] at once
    /// (see [`InTransaction`]).
    pub fn wait_timeout(mut self, wait: Duration) -> Self {
        self.wait_timeout = wait;
        self
    }

    /// What to do when the key is in progress under another owner. PostgreSQL only: on MySQL
    /// and SQLite such a claim answers [`Error::InProgress`] at once (see [`InTransaction`]).
    pub fn on_in_progress(mut self, policy: InProgressPolicy) -> Self {
        self.on_in_progress = policy;
        self
    }

    /// Store `Err` outputs too and replay them (the error type must be serializable).
    pub fn store_errors(self) -> InTransaction<'s, DB, StoreErrors> {
        InTransaction {
            store: self.store,
            key: self.key,
            fingerprint: self.fingerprint,
            ttl: self.ttl,
            lease: self.lease,
            wait_timeout: self.wait_timeout,
            on_in_progress: self.on_in_progress,
            mode: PhantomData,
        }
    }

    /// The key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Claims the key in `tx` (one statement on PostgreSQL; see the
    /// [round trips](super#round-trips)): a replay, or ownership until
    /// [`Owner::finish`].
    pub async fn claim<T, E>(
        self,
        tx: &mut Transaction<'_, DB>,
    ) -> Result<Claimed<'s, DB, T, E, M>, Error>
    where
        M: OutputMode<T, E>,
    {
        if self.ttl.is_zero() {
            return Err(Error::InvalidOption {
                option: "ttl",
                problem: "must be greater than zero",
            });
        }
        if self.lease.is_zero() {
            return Err(Error::InvalidOption {
                option: "lease",
                problem: "must be greater than zero",
            });
        }
        let mut deadline: Option<Instant> = None;
        let mut backoff = POLL_FIRST;
        loop {
            let claim = DB::__claim(
                self.store,
                &mut **tx,
                &self.key,
                &self.fingerprint,
                self.lease,
                true,
            )
            .await
            .map_err(|error| Error::from_store(StoreOp::Claim, &self.key, error))?;
            match claim {
                Claim::Acquired { token, .. } => {
                    event!(debug, key = %self.key, "execute (in the caller's transaction)");
                    return Ok(Claimed::Owned(Owner {
                        store: self.store,
                        key: self.key,
                        token,
                        ttl: self.ttl,
                        mode: PhantomData,
                    }));
                }
                Claim::Completed {
                    fingerprint,
                    output,
                } => {
                    if fingerprint != self.fingerprint {
                        return Err(Error::KeyReused { key: self.key });
                    }
                    event!(debug, key = %self.key, "replay (in the caller's transaction)");
                    return match M::decode(&output) {
                        Ok(result) => Ok(Claimed::Replayed(result)),
                        Err(source) => Err(Error::Codec {
                            op: CodecOp::DecodeOutput,
                            key: Some(self.key),
                            source,
                        }),
                    };
                }
                Claim::InProgress {
                    fingerprint,
                    lease_remaining,
                } => {
                    if fingerprint != self.fingerprint {
                        return Err(Error::KeyReused { key: self.key });
                    }
                    let now = Instant::now();
                    let deadline = *deadline.get_or_insert(now + self.wait_timeout);
                    // Waiting here keeps the transaction's locks: only PostgreSQL's claim took
                    // none that the owner needs. A lease of zero leaves nothing to wait for: a
                    // lock wait that timed out (the owner is another transaction; PostgreSQL
                    // aborted this one) or a lease passing now (a retry takes the key over).
                    if self.on_in_progress == InProgressPolicy::Reject
                        || !DB::__WAITS_IN_TRANSACTION
                        || lease_remaining.is_zero()
                        || now >= deadline
                    {
                        return Err(Error::InProgress {
                            key: self.key,
                            retry_after: lease_remaining,
                        });
                    }
                    let nap = backoff
                        .min(deadline - now)
                        .min(lease_remaining.max(Duration::from_millis(1)));
                    tokio::time::sleep(nap).await;
                    backoff = (backoff * 2).min(POLL_MAX);
                }
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
        let result = body(&mut *tx).await;
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

    /// Records the body's `result` in `tx` (one statement) and returns it: `Ok` outputs are
    /// stored as the completed record; an `Err` (unless stored), an output that cannot be
    /// encoded, or one over the store's limit deletes the claim instead and is returned.
    pub async fn finish<T, E>(
        self,
        tx: &mut Transaction<'_, DB>,
        result: Result<T, E>,
    ) -> Result<T, E>
    where
        M: OutputMode<T, E>,
        E: From<Error>,
    {
        let encoded = match M::encode(&result) {
            None => {
                self.release(tx).await;
                return result;
            }
            Some(Err(source)) => {
                self.release(tx).await;
                return Err(Error::Codec {
                    op: CodecOp::EncodeOutput,
                    key: Some(self.key),
                    source: Box::new(source),
                }
                .into());
            }
            Some(Ok(encoded)) => encoded,
        };
        if let Err(error) = self.store.check_size(&encoded) {
            self.release(tx).await;
            return Err(Error::from_store(StoreOp::Complete, &self.key, error).into());
        }
        match DB::__complete(
            self.store,
            &mut **tx,
            &self.key,
            &self.token,
            &encoded,
            self.ttl,
        )
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
        if let Err(error) = DB::__release(self.store, &mut **tx, &self.key, &self.token).await {
            event!(debug, key = %self.key, error = %error, "could not delete the claim in the transaction; its rollback will");
            let _ = error;
        }
    }
}
