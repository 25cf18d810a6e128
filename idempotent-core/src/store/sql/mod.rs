#![doc = include_str!("docs.md")]

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::Pool;

use self::builder::TableName;
use self::dialect::{Args, ClaimOn, ClaimStatements as _, Dialect, Statement, Statements};
use self::record::{fenced, record_from, row_id};
use crate::error::StoreError;
use crate::key::Key;
use crate::record::{Claim, Record, Token};
use crate::store::{ClaimRequest, Completion, Store, fits};
use crate::store::{ListRequest, Listing, MarkPage, MarkSwap, Purged, StoreStats};

pub(crate) mod builder;
#[cfg(any(feature = "mysql", feature = "sqlite"))]
mod claim;
pub(crate) mod dialect;
mod listing;
mod mark;
mod record;
mod sweeper;
pub(crate) mod time;

#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
mod mysql;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
mod postgres;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
mod sqlite;

pub use builder::{SqlConfigError, SqlStoreBuilder};
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
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = crate::defaults::MAX_OUTPUT_BYTES;
/// How long an in-progress record whose lease passed is kept before the sweeper may purge it.
pub const DEFAULT_ABANDONED_AFTER: Duration = Duration::from_secs(60 * 60);
/// How long a PostgreSQL claim on the pool waits for a key claimed by an uncommitted
/// transaction (see [`SqlStoreBuilder::lock_timeout`]).
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// A database the SQL store (and [`VersionedTable`](crate::versioning::sql::VersionedTable))
/// runs on: `sqlx::Postgres`, `sqlx::MySql` or `sqlx::Sqlite` (features `postgres`, `mysql`,
/// `sqlite`). Sealed: the statements are written per database.
pub trait SqlDialect: Dialect {}

impl<DB: Dialect> SqlDialect for DB {}

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
pub struct SqlStore<DB: SqlDialect> {
    inner: Arc<Shared<DB>>,
}

struct Shared<DB: SqlDialect> {
    pool: Pool<DB>,
    table: TableName,
    sql: Statements<DB>,
    max_output_bytes: usize,
    abandoned_after: Duration,
    insert_first: bool,
    lock_timeout: Duration,
}

impl<DB: SqlDialect> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        SqlStore {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<DB: SqlDialect> fmt::Debug for SqlStore<DB> {
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

impl<DB: SqlDialect> SqlStore<DB> {
    /// A store on `pool`, in the default table [`DEFAULT_TABLE`]. Call
    /// [`migrate`](Self::migrate) once to create it.
    pub fn new(pool: Pool<DB>) -> SqlStore<DB> {
        SqlStore::with(SqlStore::builder(pool), TableName::default_table())
    }

    /// Configure the table and limits.
    pub fn builder(pool: Pool<DB>) -> SqlStoreBuilder<DB> {
        SqlStoreBuilder::new(pool)
    }

    fn with(builder: SqlStoreBuilder<DB>, table: TableName) -> SqlStore<DB> {
        SqlStore {
            inner: Arc::new(Shared {
                sql: DB::statements(&table),
                pool: builder.pool,
                table,
                max_output_bytes: builder.max_output_bytes,
                abandoned_after: builder.abandoned_after,
                insert_first: builder.insert_first,
                lock_timeout: builder.lock_timeout,
            }),
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

    /// The statements [`migrate`](Self::migrate) runs, for a migration tool of your own. A
    /// table created before 0.2 also has a `key_text` column, which `migrate` drops and these
    /// statements do not: drop it yourself (`ALTER TABLE … DROP COLUMN key_text`). Such a table
    /// also lacks the `namespace` and `version` columns, which every claim writes: on
    /// PostgreSQL these statements add them; on MySQL add `namespace TEXT CHARACTER SET
    /// utf8mb4 COLLATE utf8mb4_bin NULL` and `version BIGINT NULL`, on SQLite `namespace TEXT`
    /// and `version INTEGER`, before processes of this version start.
    pub fn migration(&self) -> &[String] {
        &self.inner.sql.create
    }

    /// The row id of `key`: SHA-256 of its text form, the table's primary key. For operators
    /// finding a call's row (PostgreSQL: `WHERE id = decode('<hex>', 'hex')`; MySQL:
    /// `WHERE id = UNHEX('<hex>')`; SQLite: `WHERE id = X'<hex>'`).
    pub fn row_id(&self, key: &Key) -> [u8; 32] {
        row_id(key)
    }

    /// Creates the table and its index if they do not exist, and on PostgreSQL (re)creates the
    /// table's claim function `{table}_claim` beside it, with a wrapper of the previous
    /// version's signature (drop both with the table: `DROP FUNCTION {table}_claim(bytea,
    /// bytea, bytea, int8, int8, text, text, int8), {table}_claim(bytea, bytea, bytea, int8,
    /// int8, text)`). Drops the
    /// `key_text` column of a table created before 0.2 (processes of an older version still
    /// writing that table then fail their claims, closed: upgrade them together). Safe to run
    /// at every start-up, from several processes at once; run it after every upgrade of this
    /// crate, as the claim function may change with it.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.acquire().await?;
        DB::migrate(self, &mut conn).await
    }

    /// Deletes up to `limit` expired rows (completed past their TTL, in progress past their
    /// lease plus `abandoned_after`) and returns how many it deleted.
    pub async fn purge_expired(&self, limit: u32) -> Result<u64, StoreError> {
        let mut conn = self.acquire().await?;
        let args = Args {
            limit,
            now: DB::CLOCK.now(),
            ..Args::default()
        };
        self.execute(&mut conn, &self.sql().purge, &args).await
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

    /// The claim on `conn`: the caller's transaction (transactional mode) or a pooled
    /// connection.
    pub(crate) async fn claim_in(
        &self,
        conn: &mut DB::Connection,
        key: &Key,
        request: ClaimRequest,
        in_transaction: bool,
    ) -> Result<Claim, StoreError> {
        let on = ClaimOn {
            store: self,
            conn,
            key,
            request,
            in_transaction,
        };
        self.sql().claim.claim(on).await
    }

    /// `complete` on `conn`, the caller's transaction (transactional mode), or a pooled
    /// connection. PostgreSQL completes in one statement that also answers whether this token
    /// completed the record earlier (a retried complete whose answer was lost); MySQL and
    /// SQLite ask that in a second statement when the first changed nothing.
    pub(crate) async fn complete_in(
        &self,
        conn: &mut DB::Connection,
        key: &Key,
        token: &Token,
        output: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let id = row_id(key);
        let args = Args {
            id: &id,
            token: token.as_bytes(),
            output,
            ttl,
            now: DB::CLOCK.now(),
            ..Args::default()
        };
        let sql = self.sql();
        let done = match &sql.completed_by {
            None => match self.fetch(conn, &sql.complete, &args).await? {
                Some(row) => DB::flag(&row, 0).map_err(|error| self.error(error))?,
                None => false,
            },
            Some(completed_by) => {
                self.execute(conn, &sql.complete, &args).await? == 1
                    || self.fetch(conn, completed_by, &args).await?.is_some()
            }
        };
        if done {
            Ok(())
        } else {
            Err(StoreError::LeaseLost)
        }
    }

    /// `release` on `conn`, the caller's transaction (transactional mode), or a pooled
    /// connection.
    pub(crate) async fn release_in(
        &self,
        conn: &mut DB::Connection,
        key: &Key,
        token: &Token,
    ) -> Result<(), StoreError> {
        let id = row_id(key);
        let args = Args {
            id: &id,
            token: token.as_bytes(),
            ..Args::default()
        };
        fenced(self.execute(conn, &self.sql().release, &args).await?)
    }

    /// Whether a claim in a transaction may wait for a key in progress outside it: only where
    /// the claim holds no lock the owner's `complete` needs (PostgreSQL).
    pub(crate) fn waits_in_transaction(&self) -> bool {
        DB::WAITS_IN_TRANSACTION
    }

    pub(crate) fn sql(&self) -> &Statements<DB> {
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

    pub(crate) fn table_name(&self) -> &TableName {
        &self.inner.table
    }

    /// Runs `statement` with `args`; the number of rows it changed.
    async fn execute(
        &self,
        conn: &mut DB::Connection,
        statement: &Statement,
        args: &Args<'_>,
    ) -> Result<u64, StoreError> {
        let executed = dialect::execute::<DB>(conn, statement, args).await;
        executed.map_err(|error| self.error(error))
    }

    /// Runs `statement` with `args`; its first row, if any.
    async fn fetch(
        &self,
        conn: &mut DB::Connection,
        statement: &Statement,
        args: &Args<'_>,
    ) -> Result<Option<DB::Row>, StoreError> {
        let fetched = dialect::fetch::<DB>(conn, statement, args).await;
        fetched.map_err(|error| self.error(error))
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
    async fn claim(&self, key: &Key, request: ClaimRequest) -> Result<Claim, StoreError> {
        let mut conn = self.acquire().await?;
        self.claim_in(&mut conn, key, request, false).await
    }

    async fn complete(&self, key: &Key, completion: Completion) -> Result<(), StoreError> {
        fits(&completion.output, self.inner.max_output_bytes)?;
        let mut conn = self.acquire().await?;
        let Completion {
            token, output, ttl, ..
        } = &completion;
        self.complete_in(&mut conn, key, token, output, *ttl).await
    }

    async fn release(&self, key: &Key, token: &Token) -> Result<(), StoreError> {
        let mut conn = self.acquire().await?;
        self.release_in(&mut conn, key, token).await
    }

    async fn renew(&self, key: &Key, token: &Token, lease: Duration) -> Result<(), StoreError> {
        let mut conn = self.acquire().await?;
        let id = row_id(key);
        let args = Args {
            id: &id,
            token: token.as_bytes(),
            lease,
            expiry: lease.saturating_add(self.inner.abandoned_after),
            now: DB::CLOCK.now(),
            ..Args::default()
        };
        // MySQL counts rows matched, so an unchanged row still counts.
        fenced(self.execute(&mut conn, &self.sql().renew, &args).await?)
    }

    async fn get(&self, key: &Key) -> Result<Option<Record>, StoreError> {
        let mut conn = self.acquire().await?;
        let id = row_id(key);
        let args = Args {
            id: &id,
            now: DB::CLOCK.now(),
            ..Args::default()
        };
        let row = self.fetch(&mut conn, &self.sql().get, &args).await?;
        row.as_ref().map(record_from::<DB>).transpose()
    }

    async fn remove(&self, key: &Key) -> Result<bool, StoreError> {
        let id = row_id(key);
        let args = Args {
            id: &id,
            ..Args::default()
        };
        let mut conn = self.acquire().await?;
        Ok(self.execute(&mut conn, &self.sql().remove, &args).await? > 0)
    }

    fn max_output_bytes(&self) -> usize {
        self.inner.max_output_bytes
    }

    async fn load_mark(&self, key: &Key) -> Result<Option<Bytes>, StoreError> {
        let mut conn = self.acquire().await?;
        self.load_mark_in(&mut conn, key).await
    }

    async fn swap_mark(&self, key: &Key, swap: MarkSwap<'_>) -> Result<bool, StoreError> {
        let mut conn = self.acquire().await?;
        self.swap_mark_in(&mut conn, key, swap).await
    }

    async fn list(&self, request: ListRequest) -> Result<Listing, StoreError> {
        self.list_rows(request).await
    }

    async fn list_marks(&self, request: ListRequest) -> Result<MarkPage, StoreError> {
        self.list_mark_rows(request).await
    }

    async fn stats(&self, _max_records: u64) -> Result<StoreStats, StoreError> {
        self.count_rows().await
    }

    async fn purge_expired(&self, limit: u32) -> Result<Purged, StoreError> {
        SqlStore::purge_expired(self, limit)
            .await
            .map(Purged::Deleted)
    }
}
