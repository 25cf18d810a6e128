//! SQL stores on [sqlx]: PostgreSQL, MySQL / MariaDB and SQLite, one [`SqlStore`] type
//! per database ([`PostgresStore`], [`MySqlStore`], [`SqliteStore`]).
//!
//! A store keeps one row per key in one table (default `idempotency_records`), created by
//! [`SqlStore::migrate`]. Besides the [`Store`] contract it offers two things a remote
//! key-value store cannot:
//!
//! * **Transactional mode** ([`SqlStore::in_transaction`](crate::store::sql::SqlStore::in_transaction), or `#[idempotent(transaction = tx,
//!   store = …)]`): the claim and the completed record are written in the *caller's*
//!   transaction, next to the body's own writes, so the business effect and its record commit
//!   or roll back together. A crash before the commit leaves neither; the retry runs once.
//! * **Expiry by column**: every row has an `expires_at`; [`SqlStore::purge_expired`] deletes
//!   a batch of expired rows and [`SqlStore::spawn_sweeper`] does it in the background.
//!
//! # Table
//!
//! | column | type (PostgreSQL) | what |
//! |---|---|---|
//! | `id` | `BYTEA` primary key | SHA-256 of the key's text, so a key of any length fits an index |
//! | `key_text` | `TEXT` | the key, `{namespace}:{version}:{digest}`, for operators |
//! | `token` | `BYTEA` (16) | the owner's token (kept after completion: a retried `complete` is a no-op) |
//! | `fingerprint` | `BYTEA` (32) | fingerprint of the owner's call |
//! | `completed` | `BOOLEAN` | in progress (`false`) or completed |
//! | `lease_until` | `TIMESTAMPTZ` | in progress: when the key becomes claimable again |
//! | `expires_at` | `TIMESTAMPTZ`, indexed | completed: end of the TTL; in progress: end of the lease plus [`abandoned_after`](SqlStoreBuilder::abandoned_after); purged after |
//! | `output` | `BYTEA` | the stored output |
//!
//! Times come from the database's clock (PostgreSQL, MySQL) so that several application
//! servers agree on leases; SQLite, which runs in the application's process, uses the
//! process's clock. The table name is validated as an identifier and every value is a bound
//! parameter.
//!
//! # Round trips
//!
//! | call | PostgreSQL | MySQL / MariaDB | SQLite |
//! |---|---|---|---|
//! | replay | 1 | 1 | 1 |
//! | first execution | 2 (claim, complete) | 3 (read, insert, complete) | 3 (read, insert, complete) |
//! | body failed | 2 (claim, release) | 3 (read, insert, release) | 3 (read, insert, release) |
//! | with [`insert_first`](SqlStoreBuilder::insert_first): first execution / replay / body failed | — | 2 / 2 / 2 | 2 / 2 / 2 |
//! | first execution, transactional | 2 (claim, complete) | 2 (insert, complete) | 2 (insert, complete) |
//! | replay, transactional | 1 | 2 (insert refused, read) | 2 (insert refused, read) |
//!
//! PostgreSQL claims in one statement: it reads the row by primary key and, only when no live
//! record is there, calls the table's claim function (`{table}_claim`, which
//! [`migrate`](SqlStore::migrate) creates), whose `INSERT … ON CONFLICT (id) DO UPDATE`
//! creates or takes over the record; a replay is a plain read that writes and locks nothing,
//! and the server never sets up the insert for it. MySQL has no `RETURNING` for an insert that met
//! a duplicate (so it cannot hand back the stored output), and SQLite's upsert returns no row
//! when it leaves the existing one alone, so both read first (one statement for the replay,
//! the common retry) and insert only when no live record is there
//! ([`insert_first`](SqlStoreBuilder::insert_first) reverses the order when first executions
//! dominate). In transactional mode they
//! insert first instead: the insert takes the row lock that makes a concurrent duplicate wait
//! for the caller's commit, without the gap locks (MySQL) or read snapshot (SQLite) a read
//! would take first (which is also why they never wait for a key in progress on the pool: see
//! [below](#transactional-and-pool-calls-on-one-key)).
//!
//! In a race for a free or expired key (claims that meet an insert not yet visible to their
//! snapshot, such as a transactional duplicate waiting on the owner's row lock), the
//! PostgreSQL claim's `DO UPDATE` rewrites the row it keeps unchanged, under the row lock, so
//! that it still answers in one statement; uncontended claims and replays never do. A claim in
//! the caller's transaction that kept another owner's in-progress record that way holds that
//! row's lock until the transaction ends, so it answers [`Error::InProgress`] at once (roll
//! back and retry) instead of waiting for an owner that cannot complete meanwhile.
//!
//! Counts are statements; a pool with `test_before_acquire(true)` (sqlx's default) adds a
//! ping to every acquisition. Build the pool with `test_before_acquire(false)` to keep to the
//! budget (a dead connection then fails one call with [`StoreError::Unavailable`] instead).
//! sqlx also pings a connection as it goes back to the pool, in the background, off the
//! caller's path.
//!
//! # Transactional and pool calls on one key
//!
//! Calls in a transaction ([`SqlStore::in_transaction`](crate::store::sql::SqlStore::in_transaction)) and calls on the pool (the [`Store`]
//! methods, through the executor) may claim one key at the same time. No claim waits while
//! holding a lock that the key's owner needs to record its result, so an owner is never kept
//! from completing into losing its lease, and no body runs twice while a claim is live:
//!
//! * **A transaction meets the key in progress on the pool** (a call outside any transaction
//!   is running the body). On PostgreSQL the claim's read locks nothing, so it waits in the
//!   transaction for the owner's result and replays it, per
//!   [`on_in_progress`](crate::transaction::InTransaction::on_in_progress) and
//!   [`wait_timeout`](crate::transaction::InTransaction::wait_timeout) (under `REPEATABLE READ` or `SERIALIZABLE`
//!   the transaction's snapshot never shows the result: expect [`Error::InProgress`] or a
//!   serialization error, and retry the transaction). On MySQL and SQLite the claim's insert
//!   has already locked what the owner's `complete` must write: InnoDB keeps a shared lock on
//!   the duplicate row, and SQLite the database's write lock, until the transaction ends (a
//!   rollback to a savepoint releases neither). There the claim answers
//!   [`Error::InProgress`] at once, whatever the policy: **roll the transaction back (dropping
//!   it does) before retrying**, since the owner's `complete` waits until then.
//! * **The pool meets a key claimed in a transaction that has not committed.** The record is
//!   not visible yet, so the claim's insert waits for that transaction's row lock, then replays
//!   its result (or runs, if it rolled back). PostgreSQL bounds the wait by
//!   [`lock_timeout`](SqlStoreBuilder::lock_timeout) (default 1 s), MySQL by the session's
//!   `innodb_lock_wait_timeout`; a claim that gives up answers [`Claim::InProgress`] (with the
//!   caller's own fingerprint and no lease hint: the owner's are not visible before its
//!   commit), so `reject` answers [`Error::InProgress`] and `wait` claims again until its
//!   `wait_timeout`. SQLite waits up to the connection's busy timeout, then fails the claim
//!   with a store error; the body does not run.
//! * **Two transactions with one key**: the second waits on the first's row lock until it
//!   commits, then replays (or runs, if the first rolled back), on every database.
//!
//! [`Error::InProgress`]: crate::Error::InProgress

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use sha2::{Digest as _, Sha256};
use sqlx::{Database, Pool};

use crate::error::StoreError;
use crate::key::{Fingerprint, Key};
use crate::record::{Claim, Record, Token};
use crate::store::Store;

mod sweeper;

#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
mod mysql;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
mod postgres;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
mod sqlite;

pub use sqlx;
pub use sweeper::Sweeper;

/// The PostgreSQL store.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub type PostgresStore = SqlStore<sqlx::Postgres>;

/// The MySQL / MariaDB store.
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub type MySqlStore = SqlStore<sqlx::MySql>;

/// The SQLite store.
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub type SqliteStore = SqlStore<sqlx::Sqlite>;

/// The table used when none is configured.
pub const DEFAULT_TABLE: &str = "idempotency_records";
/// Largest output a store accepts unless configured otherwise (the executor's default limit).
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1 << 20;
/// How long an in-progress record whose lease passed is kept before the sweeper may purge it.
pub const DEFAULT_ABANDONED_AFTER: Duration = Duration::from_secs(60 * 60);
/// How long a PostgreSQL claim on the pool waits for a key claimed by an uncommitted
/// transaction (see [`SqlStoreBuilder::lock_timeout`]).
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest table or schema name accepted: 63 bytes (PostgreSQL's limit) minus the suffix of
/// the index name derived from it.
const MAX_IDENTIFIER: usize = 48;
/// Durations are bound as microseconds and capped at about a century, so that `now + d` stays
/// inside every database's timestamp range.
const MAX_MICROS: i64 = 100 * 365 * 24 * 60 * 60 * 1_000_000;
#[cfg(any(feature = "mysql", feature = "sqlite"))]
/// A claim that reads, then writes, retries when another caller changed the row in between;
/// this bounds the retries (each needs yet another concurrent change to fail again).
const CLAIM_ATTEMPTS: usize = 8;

/// A configuration mistake found before any statement runs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlConfigError {
    /// The table name is not a plain identifier (it is interpolated into statements, so it is
    /// checked instead of escaped).
    #[error(
        "`table` {name:?} is not a valid table name: {problem}; use `name` or `schema.name`, each 1 to {MAX_IDENTIFIER} of `a-z`, `0-9` and `_`, not starting with a digit"
    )]
    InvalidTable {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The sweeper was asked for outside a tokio runtime.
    #[error("`spawn_sweeper` needs a tokio runtime; call it from inside one")]
    NoRuntime,
}

mod sealed {
    pub trait Sealed {}
}

/// A database the SQL store runs on: `sqlx::Postgres`, `sqlx::MySql` or `sqlx::Sqlite`
/// (features `postgres`, `mysql`, `sqlite`). Sealed: the statements are written per database.
pub trait SqlDialect: Database + sealed::Sealed {
    /// Whether a claim in a transaction may wait for a key in progress outside it: only where
    /// the claim holds no lock the owner's `complete` needs (PostgreSQL). MySQL's refused
    /// insert keeps a shared lock on the row and SQLite's the write lock until the transaction
    /// ends, so there the claim answers in progress at once.
    #[doc(hidden)]
    const __WAITS_IN_TRANSACTION: bool;

    #[doc(hidden)]
    fn __statements(table: &TableName) -> Statements;

    /// The store's claim on `conn`, in the caller's transaction or on a pooled connection.
    #[doc(hidden)]
    fn __claim<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut Self::Connection,
        key: &'c Key,
        fingerprint: &'c Fingerprint,
        lease: Duration,
        in_transaction: bool,
    ) -> BoxFuture<'c, Result<Claim, StoreError>>;

    #[doc(hidden)]
    fn __complete<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut Self::Connection,
        key: &'c Key,
        token: &'c Token,
        output: &'c [u8],
        ttl: Duration,
    ) -> BoxFuture<'c, Result<(), StoreError>>;

    #[doc(hidden)]
    fn __release<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut Self::Connection,
        key: &'c Key,
        token: &'c Token,
    ) -> BoxFuture<'c, Result<(), StoreError>>;

    #[doc(hidden)]
    fn __renew<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut Self::Connection,
        key: &'c Key,
        token: &'c Token,
        lease: Duration,
    ) -> BoxFuture<'c, Result<(), StoreError>>;

    #[doc(hidden)]
    fn __get<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut Self::Connection,
        key: &'c Key,
    ) -> BoxFuture<'c, Result<Option<Record>, StoreError>>;

    #[doc(hidden)]
    fn __remove<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut Self::Connection,
        key: &'c Key,
    ) -> BoxFuture<'c, Result<bool, StoreError>>;

    #[doc(hidden)]
    fn __purge<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut Self::Connection,
        limit: u32,
    ) -> BoxFuture<'c, Result<u64, StoreError>>;

    #[doc(hidden)]
    fn __migrate<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut Self::Connection,
    ) -> BoxFuture<'c, Result<(), StoreError>>;
}

/// A validated table name, optionally schema-qualified. Not public API.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    schema: Option<String>,
    name: String,
}

impl TableName {
    fn parse(text: &str) -> Result<TableName, SqlConfigError> {
        let invalid = |problem| SqlConfigError::InvalidTable {
            name: text.to_owned(),
            problem,
        };
        let mut parts = text.split('.');
        let (schema, name) = match (parts.next(), parts.next(), parts.next()) {
            (Some(name), None, None) => (None, name),
            (Some(schema), Some(name), None) => (Some(schema), name),
            _ => return Err(invalid("it has more than one `.`")),
        };
        for part in schema.iter().chain([&name]) {
            check_identifier(part).map_err(invalid)?;
        }
        Ok(TableName {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        })
    }

    /// The schema, if the name is qualified.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub(crate) fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The unqualified table name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// `schema.name` or `name`, each part wrapped in `quote` (identifiers were checked to
    /// contain no quote characters).
    pub(crate) fn quoted(&self, quote: char) -> String {
        match &self.schema {
            Some(schema) => format!("{quote}{schema}{quote}.{quote}{}{quote}", self.name),
            None => format!("{quote}{}{quote}", self.name),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

fn check_identifier(part: &str) -> Result<(), &'static str> {
    let bytes = part.as_bytes();
    match bytes.first() {
        None => Err("a part of it is empty"),
        Some(_) if bytes.len() > MAX_IDENTIFIER => Err("a part of it is too long"),
        Some(first) if first.is_ascii_digit() => Err("a part of it starts with a digit"),
        Some(_)
            if !bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_') =>
        {
            Err("it contains a character other than `a-z`, `0-9`, `_` and one `.`")
        }
        Some(_) => Ok(()),
    }
}

/// The statements of one store, written once for its table. Not public API.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct Statements {
    pub(crate) create: Vec<String>,
    /// PostgreSQL: the whole claim. MySQL, SQLite: the read of the current row.
    pub(crate) claim: String,
    /// MySQL: the same read with a shared lock (transactional mode).
    #[cfg(feature = "mysql")]
    pub(crate) claim_locked: String,
    #[cfg(any(feature = "mysql", feature = "sqlite"))]
    pub(crate) insert: String,
    #[cfg(any(feature = "mysql", feature = "sqlite"))]
    pub(crate) take_over: String,
    pub(crate) complete: String,
    #[cfg(any(feature = "mysql", feature = "sqlite"))]
    pub(crate) completed_by: String,
    pub(crate) release: String,
    pub(crate) renew: String,
    pub(crate) get: String,
    pub(crate) remove: String,
    pub(crate) purge: String,
}

/// A store that keeps records in a SQL table, on a sqlx [`Pool`]. See the
/// [module docs](self) for the table, the round trips and transactional mode.
///
/// Cheap to clone; clones share the pool.
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use idempotent_core::store::sql::{sqlx::SqlitePool, SqliteStore};
/// use idempotent_core::{Error, Fingerprint, Idempotency, Key};
///
/// let pool = SqlitePool::connect("sqlite::memory:").await?;
/// let store = SqliteStore::builder(pool).table("idempotency").build()?;
/// store.migrate().await?;
///
/// let idempotency = Idempotency::new(store);
/// let key = Key::derive("shop::charge", 1, &"order-42")?;
/// let fingerprint = Fingerprint::of(&("order-42", 1999))?;
/// let first: Result<String, Error> =
///     idempotency.run(key.clone(), fingerprint, || async { Ok("receipt-1".into()) }).await;
/// let retry: Result<String, Error> =
///     idempotency.run(key, fingerprint, || async { Ok("receipt-2".into()) }).await;
/// assert_eq!(first?, retry?);
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
pub struct SqlStore<DB: Database> {
    inner: Arc<Shared<DB>>,
}

struct Shared<DB: Database> {
    pool: Pool<DB>,
    table: TableName,
    sql: Statements,
    max_output_bytes: usize,
    abandoned_after: Duration,
    insert_first: bool,
    lock_timeout: Duration,
}

impl<DB: Database> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        SqlStore {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<DB: Database> fmt::Debug for SqlStore<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("database", &DB::NAME)
            .field("table", &self.inner.table.to_string())
            .field("max_output_bytes", &self.inner.max_output_bytes)
            .field("abandoned_after", &self.inner.abandoned_after)
            .field("insert_first", &self.inner.insert_first)
            .field("lock_timeout", &self.inner.lock_timeout)
            .finish_non_exhaustive()
    }
}

/// Configures a [`SqlStore`].
pub struct SqlStoreBuilder<DB: Database> {
    pool: Pool<DB>,
    table: String,
    max_output_bytes: usize,
    abandoned_after: Duration,
    insert_first: bool,
    lock_timeout: Duration,
    dialect: PhantomData<DB>,
}

impl<DB: Database> fmt::Debug for SqlStoreBuilder<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStoreBuilder")
            .field("database", &DB::NAME)
            .field("table", &self.table)
            .field("max_output_bytes", &self.max_output_bytes)
            .field("abandoned_after", &self.abandoned_after)
            .field("insert_first", &self.insert_first)
            .field("lock_timeout", &self.lock_timeout)
            .finish_non_exhaustive()
    }
}

impl<DB: SqlDialect> SqlStoreBuilder<DB> {
    /// The table (default [`DEFAULT_TABLE`]), optionally as `schema.table`: lowercase ASCII
    /// letters, digits and `_`, checked by [`build`](Self::build).
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// Largest output stored (default 1 MiB); a larger one is refused with
    /// [`StoreError::TooLarge`] before any statement runs, and the executor releases the claim.
    pub fn max_output_bytes(mut self, limit: usize) -> Self {
        self.max_output_bytes = limit;
        self
    }

    /// How long past its lease an in-progress record is kept before [`SqlStore::purge_expired`]
    /// may delete it (default 1 h). Until then its owner can still complete it if no one
    /// took it over.
    pub fn abandoned_after(mut self, grace: Duration) -> Self {
        self.abandoned_after = grace;
        self
    }

    /// MySQL and SQLite: claim by inserting first instead of reading first (default `false`).
    /// A first execution then costs 2 statements instead of 3, and a replay 2 instead of 1
    /// (the refused insert, then the read); pick it when first executions dominate. On
    /// SQLite every claim then takes the write lock, if only briefly. PostgreSQL claims in one
    /// statement either way and ignores this. (In a transaction the claim always inserts
    /// first; see the [module docs](self#round-trips).)
    pub fn insert_first(mut self, insert_first: bool) -> Self {
        self.insert_first = insert_first;
        self
    }

    /// PostgreSQL: how long a claim on the pool waits for a row lock held by another
    /// transaction (a key claimed in a transaction that has not committed yet) before it
    /// answers [`Claim::InProgress`], so that `on_in_progress = reject` and the executor's
    /// `wait_timeout` apply (waiting claims again until its bound). Default
    /// [`DEFAULT_LOCK_TIMEOUT`]; set for the claim statement alone
    /// (`set_config('lock_timeout', …, true)`); [`Duration::ZERO`] leaves the session's own
    /// `lock_timeout` in force (PostgreSQL's default: no bound). Claims in the caller's
    /// transaction are not bounded by it, so transactional duplicates still wait for each
    /// other's commit.
    ///
    /// MySQL / MariaDB have no portable per-statement bound: a claim waits up to the session's
    /// `innodb_lock_wait_timeout` (50 s by default), then answers in progress; lower it on a
    /// pool of the store's own (`MySqlPoolOptions::after_connect` running
    /// `SET SESSION innodb_lock_wait_timeout = 2`). SQLite waits for the database's write lock
    /// up to the connection's busy timeout, then fails the claim with a store error. See
    /// [transactional and pool calls on one key](self#transactional-and-pool-calls-on-one-key).
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// The store, or [`SqlConfigError::InvalidTable`] for a table name that is not a plain
    /// identifier.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use idempotent_core::store::sql::{sqlx::SqlitePool, SqliteStore};
    ///
    /// let pool = SqlitePool::connect_lazy("sqlite::memory:").unwrap();
    /// let refused = SqliteStore::builder(pool).table("x; drop table x; --").build();
    /// assert!(refused.unwrap_err().to_string().contains("not a valid table name"));
    /// # }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub fn build(self) -> Result<SqlStore<DB>, SqlConfigError> {
        let table = TableName::parse(&self.table)?;
        Ok(SqlStore::with(Shared {
            sql: DB::__statements(&table),
            pool: self.pool,
            table,
            max_output_bytes: self.max_output_bytes,
            abandoned_after: self.abandoned_after,
            insert_first: self.insert_first,
            lock_timeout: self.lock_timeout,
        }))
    }
}

impl<DB: SqlDialect> SqlStore<DB> {
    /// A store on `pool`, in the default table [`DEFAULT_TABLE`]. Call
    /// [`migrate`](Self::migrate) once to create it.
    pub fn new(pool: Pool<DB>) -> SqlStore<DB> {
        let table = TableName {
            schema: None,
            name: DEFAULT_TABLE.to_owned(),
        };
        SqlStore::with(Shared {
            sql: DB::__statements(&table),
            pool,
            table,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            abandoned_after: DEFAULT_ABANDONED_AFTER,
            insert_first: false,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        })
    }

    /// Configure the table and limits.
    pub fn builder(pool: Pool<DB>) -> SqlStoreBuilder<DB> {
        SqlStoreBuilder {
            pool,
            table: DEFAULT_TABLE.to_owned(),
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            abandoned_after: DEFAULT_ABANDONED_AFTER,
            insert_first: false,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            dialect: PhantomData,
        }
    }

    fn with(shared: Shared<DB>) -> SqlStore<DB> {
        SqlStore {
            inner: Arc::new(shared),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.inner.pool
    }

    /// The table, as configured (`name` or `schema.name`).
    pub fn table(&self) -> String {
        self.inner.table.to_string()
    }

    /// The largest output this store accepts.
    pub fn max_output_bytes(&self) -> usize {
        self.inner.max_output_bytes
    }

    /// The statements [`migrate`](Self::migrate) runs, for a migration tool of your own.
    pub fn migration(&self) -> &[String] {
        &self.inner.sql.create
    }

    /// Creates the table and its index if they do not exist, and on PostgreSQL (re)creates the
    /// table's claim function `{table}_claim` beside it (drop it with the table). Safe to run
    /// at every start-up, from several processes at once; run it after every upgrade of this
    /// crate, as the claim function may change with it.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.acquire().await?;
        DB::__migrate(self, &mut conn).await
    }

    /// Deletes up to `limit` expired rows (completed past their TTL, in progress past their
    /// lease plus `abandoned_after`) and returns how many it deleted.
    pub async fn purge_expired(&self, limit: u32) -> Result<u64, StoreError> {
        let mut conn = self.acquire().await?;
        DB::__purge(self, &mut conn, limit).await
    }

    /// Starts a background task that calls [`purge_expired`](Self::purge_expired) every
    /// `every`, `batch` rows at a time until a batch comes back short. Stop it with
    /// [`Sweeper::shutdown`] (dropping the handle stops it too).
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use idempotent_core::store::sql::{sqlx::SqlitePool, SqliteStore};
    ///
    /// let store = SqliteStore::new(SqlitePool::connect("sqlite::memory:").await?);
    /// store.migrate().await?;
    /// let sweeper = store.spawn_sweeper(Duration::from_secs(60), 1000)?;
    /// // … serve …
    /// let purged = sweeper.shutdown().await;
    /// assert_eq!(purged, 0);
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "sqlite"))]
    /// # fn main() {}
    /// ```
    pub fn spawn_sweeper(&self, every: Duration, batch: u32) -> Result<Sweeper, SqlConfigError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SqlConfigError::NoRuntime)?;
        Ok(Sweeper::spawn(&runtime, self.clone(), every, batch))
    }

    /// The claim on `conn`, the caller's transaction (transactional mode).
    pub(crate) async fn claim_in(
        &self,
        conn: &mut DB::Connection,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        DB::__claim(self, conn, key, fingerprint, lease, true).await
    }

    /// `complete` on `conn`, the caller's transaction (transactional mode).
    pub(crate) async fn complete_in(
        &self,
        conn: &mut DB::Connection,
        key: &Key,
        token: &Token,
        output: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        DB::__complete(self, conn, key, token, output, ttl).await
    }

    /// `release` on `conn`, the caller's transaction (transactional mode).
    pub(crate) async fn release_in(
        &self,
        conn: &mut DB::Connection,
        key: &Key,
        token: &Token,
    ) -> Result<(), StoreError> {
        DB::__release(self, conn, key, token).await
    }

    /// Whether a claim in a transaction may wait for a key in progress outside it: only where
    /// the claim holds no lock the owner's `complete` needs (PostgreSQL).
    pub(crate) fn waits_in_transaction(&self) -> bool {
        DB::__WAITS_IN_TRANSACTION
    }

    pub(crate) fn sql(&self) -> &Statements {
        &self.inner.sql
    }

    pub(crate) fn abandoned_after(&self) -> Duration {
        self.inner.abandoned_after
    }

    /// How long a claim on the pool waits for a row lock (PostgreSQL).
    #[cfg(feature = "postgres")]
    pub(crate) fn lock_timeout(&self) -> Duration {
        self.inner.lock_timeout
    }

    /// Whether a claim on the pool inserts first (MySQL, SQLite).
    #[cfg(any(feature = "mysql", feature = "sqlite"))]
    pub(crate) fn claims_insert_first(&self) -> bool {
        self.inner.insert_first
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn table_name(&self) -> &TableName {
        &self.inner.table
    }

    /// `TooLarge` when `output` is over the limit (checked before any statement).
    pub(crate) fn check_size(&self, output: &[u8]) -> Result<(), StoreError> {
        let limit = self.inner.max_output_bytes;
        if output.len() > limit {
            return Err(StoreError::TooLarge {
                size: output.len(),
                limit,
            });
        }
        Ok(())
    }

    /// A pooled connection. Any failure to get one means the database cannot be reached
    /// (refused, unknown host, a file that cannot be opened, a pool that gave up waiting).
    async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<DB>, StoreError> {
        self.inner
            .pool
            .acquire()
            .await
            .map_err(|error| match error {
                sqlx::Error::PoolTimedOut => self.error(error),
                error => StoreError::unavailable(error),
            })
    }

    /// Maps a sqlx error to the store's, keeping it as the source.
    pub(crate) fn error(&self, error: sqlx::Error) -> StoreError {
        match error {
            sqlx::Error::PoolTimedOut => {
                StoreError::Timeout(self.inner.pool.options().get_acquire_timeout())
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::unavailable(error),
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. } => StoreError::corrupt(format!(
                "table `{}` does not hold what this store wrote ({error})",
                self.inner.table
            )),
            error => StoreError::backend(error),
        }
    }
}

#[async_trait]
impl<DB: SqlDialect> Store for SqlStore<DB> {
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let mut conn = self.acquire().await?;
        DB::__claim(self, &mut conn, key, fingerprint, lease, false).await
    }

    async fn complete(
        &self,
        key: &Key,
        token: &Token,
        _fingerprint: &Fingerprint,
        output: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.check_size(&output)?;
        let mut conn = self.acquire().await?;
        DB::__complete(self, &mut conn, key, token, &output, ttl).await
    }

    async fn release(&self, key: &Key, token: &Token) -> Result<(), StoreError> {
        let mut conn = self.acquire().await?;
        DB::__release(self, &mut conn, key, token).await
    }

    async fn renew(&self, key: &Key, token: &Token, lease: Duration) -> Result<(), StoreError> {
        let mut conn = self.acquire().await?;
        DB::__renew(self, &mut conn, key, token, lease).await
    }

    async fn get(&self, key: &Key) -> Result<Option<Record>, StoreError> {
        let mut conn = self.acquire().await?;
        DB::__get(self, &mut conn, key).await
    }

    async fn remove(&self, key: &Key) -> Result<bool, StoreError> {
        let mut conn = self.acquire().await?;
        DB::__remove(self, &mut conn, key).await
    }

    fn max_output_bytes(&self) -> usize {
        self.inner.max_output_bytes
    }
}

/// The key's text form and its row id, for a claim, which stores both: the key formatted once.
pub(crate) fn row_key(key: &Key) -> ([u8; 32], String) {
    let text = key.to_string();
    (Sha256::digest(text.as_bytes()).into(), text)
}

/// The row id of `key`: SHA-256 of its text form, streamed without building the string. The
/// text form is unambiguous (the version and the hex digest end it and contain no `:`).
pub(crate) fn row_id(key: &Key) -> [u8; 32] {
    struct Hashing(Sha256);
    impl fmt::Write for Hashing {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0.update(s.as_bytes());
            Ok(())
        }
    }
    let mut hashing = Hashing(Sha256::new());
    // Writing into a hasher cannot fail.
    let _ = fmt::write(&mut hashing, format_args!("{key}"));
    hashing.0.finalize().into()
}

/// `duration` in microseconds, capped (see [`MAX_MICROS`]).
pub(crate) fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros())
        .unwrap_or(i64::MAX)
        .min(MAX_MICROS)
}

/// A lease or TTL's remaining time from a signed count of microseconds (negative: passed).
pub(crate) fn remaining(micros: i64) -> Duration {
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

/// A wall-clock time from microseconds since the Unix epoch.
pub(crate) fn wall_clock(micros: i64) -> SystemTime {
    match u64::try_from(micros) {
        Ok(after) => UNIX_EPOCH + Duration::from_micros(after),
        Err(_) => UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs()),
    }
}

pub(crate) fn token_from(bytes: &[u8]) -> Result<Token, StoreError> {
    <[u8; 16]>::try_from(bytes)
        .map(Token::from_bytes)
        .map_err(|_| StoreError::corrupt(format!("a token of {} bytes, not 16", bytes.len())))
}

pub(crate) fn fingerprint_from(bytes: &[u8]) -> Result<Fingerprint, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(Fingerprint::from_bytes)
        .map_err(|_| StoreError::corrupt(format!("a fingerprint of {} bytes, not 32", bytes.len())))
}

pub(crate) fn completed_output(output: Option<Vec<u8>>) -> Result<Bytes, StoreError> {
    output
        .map(Bytes::from)
        .ok_or_else(|| StoreError::corrupt("a completed record without an output"))
}

/// What a read of the current row found (MySQL, SQLite).
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) struct Current {
    pub(crate) completed: bool,
    pub(crate) fingerprint: Vec<u8>,
    pub(crate) output: Option<Vec<u8>>,
    /// Microseconds until the lease (in progress) or the TTL (completed) passes.
    pub(crate) remaining: i64,
}

#[cfg(any(feature = "mysql", feature = "sqlite"))]
impl Current {
    /// The claim's answer when the record is live, `None` when it may be taken.
    pub(crate) fn live(self) -> Result<Option<Claim>, StoreError> {
        if self.remaining <= 0 {
            return Ok(None);
        }
        let fingerprint = fingerprint_from(&self.fingerprint)?;
        Ok(Some(if self.completed {
            Claim::Completed {
                fingerprint,
                output: completed_output(self.output)?,
            }
        } else {
            Claim::InProgress {
                fingerprint,
                lease_remaining: remaining(self.remaining),
            }
        }))
    }
}

/// The answer of a claim that gave up waiting for a row lock held by another transaction
/// (PostgreSQL's `lock_timeout`, MySQL's `innodb_lock_wait_timeout`): the key is in progress
/// there, but its record is not visible before that transaction commits, so the fingerprint is
/// the caller's own (a key reuse shows after the commit) and the lease is unknown (zero).
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn locked_elsewhere(fingerprint: &Fingerprint) -> Claim {
    Claim::InProgress {
        fingerprint: *fingerprint,
        lease_remaining: Duration::ZERO,
    }
}

/// The record changed under a claim more often than [`CLAIM_ATTEMPTS`] allows.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
#[derive(Debug, thiserror::Error)]
#[error("the record changed {CLAIM_ATTEMPTS} times during one claim; try again")]
pub(crate) struct ClaimContended;

/// A statement that always answers a row answered none.
#[cfg(feature = "postgres")]
#[derive(Debug, thiserror::Error)]
#[error("the claim statement returned no row")]
pub(crate) struct NoRow;

/// The number of claim attempts (MySQL, SQLite).
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) const fn claim_attempts() -> usize {
    CLAIM_ATTEMPTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        for good in ["idempotency", "a", "_x1", "app.records", "s_1.t_2"] {
            assert!(TableName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a.b.c",
            "Upper",
            "1abc",
            "x; drop table x; --",
            "x\"",
            "x`",
            "a b",
            "ünï",
            &"n".repeat(49),
        ] {
            let error = TableName::parse(bad).unwrap_err();
            assert!(
                error.to_string().contains("not a valid table name"),
                "{bad}: {error}"
            );
        }
        assert!(TableName::parse(&"n".repeat(48)).is_ok());
    }

    #[test]
    fn table_names_are_quoted_per_part() {
        let table = TableName::parse("app.records").unwrap();
        assert_eq!(table.quoted('"'), "\"app\".\"records\"");
        assert_eq!(table.quoted('`'), "`app`.`records`");
        assert_eq!(table.to_string(), "app.records");
    }

    #[test]
    fn row_ids_hash_the_key_text() {
        let key = Key::derive("ns", 1, &"material").unwrap();
        let expected: [u8; 32] = Sha256::digest(key.to_string().as_bytes()).into();
        assert_eq!(row_id(&key), expected);
        assert_eq!(row_key(&key), (expected, key.to_string()));
        let other = Key::derive("ns", 2, &"material").unwrap();
        assert_ne!(row_id(&key), row_id(&other));
    }

    #[test]
    fn durations_are_capped_microseconds() {
        assert_eq!(micros(Duration::from_millis(1500)), 1_500_000);
        assert_eq!(micros(Duration::MAX), MAX_MICROS);
        assert_eq!(remaining(-5), Duration::ZERO);
        assert_eq!(remaining(7), Duration::from_micros(7));
        assert_eq!(wall_clock(1_000_000), UNIX_EPOCH + Duration::from_secs(1));
    }
}
