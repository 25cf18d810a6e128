//! What one database says and the others do not: its statements, the order it binds their
//! values in ([`Param`]), where "now" comes from ([`Clock`]), and how its claim runs
//! ([`ClaimStatements`]: PostgreSQL's one statement, or the read-then-insert of MySQL and
//! SQLite). Everything else (statement bodies, rows to records, fencing) is written once, in
//! terms of [`Dialect`].
//!
//! [`Dialect`] is `pub` only so that the public [`SqlDialect`](super::SqlDialect) can name it
//! as its supertrait; its module is private to the crate, so users can neither see its methods
//! nor implement it, which seals [`SqlDialect`](super::SqlDialect). The versioned update
//! ([`VersionedTable`](crate::versioning::sql::VersionedTable)) runs on the same trait.

use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use sqlx::query::Query;
use sqlx::{Database, QueryBuilder};

use super::builder::TableName;
use super::time::{epoch_micros, micros};
use super::{SqlDialect, SqlStore};
use crate::error::StoreError;
use crate::key::Key;
use crate::record::{Claim, Token};
use crate::store::ClaimRequest;

/// A database the SQL store and the versioned update run on.
pub trait Dialect: Database {
    /// The identifier quote character (default: standard SQL's `"`).
    const QUOTE: char = '"';
    /// Where "now" comes from (default: the database server's clock).
    const CLOCK: Clock = Clock::Server;
    /// Whether a claim in a transaction may wait for a key in progress outside it: only where
    /// the claim holds no lock the owner's `complete` needs (PostgreSQL). MySQL's refused
    /// insert keeps a shared lock on the row and SQLite's the write lock until the transaction
    /// ends, so there the claim answers in progress at once (the default, `false`).
    const WAITS_IN_TRANSACTION: bool = false;
    /// Which database it is, for statements written apart from the store's (the outbox's).
    const SYNTAX: Syntax;

    /// The statements a claim runs (one, or a read and two writes), which run it.
    type ClaimStatements: ClaimStatements<Self>;

    /// The statements of one store, written once for its table.
    fn statements(table: &TableName) -> Statements<Self>;

    /// Runs the migration statements on `conn`.
    fn migrate<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut Self::Connection,
    ) -> BoxFuture<'c, Result<(), StoreError>>
    where
        Self: SqlDialect,
    {
        Box::pin(async move {
            for statement in store.migration() {
                Self::execute(&mut *conn, sqlx::query(statement))
                    .await
                    .map_err(|error| store.error(error))?;
            }
            drop_legacy_key_text(store, conn).await
        })
    }

    /// Whether `error` is a row lock wait that gave up (a key claimed by a transaction that
    /// has not committed).
    fn lock_wait_timed_out(_error: &sqlx::Error) -> bool {
        false
    }

    // The sqlx calls, one body for every database (see `sqlx_calls!`): generic code cannot
    // name the bounds they need without repeating them at every use.

    /// Binds `value`.
    fn bind<'q>(
        query: Query<'q, Self, Self::Arguments<'q>>,
        value: Value<'q>,
    ) -> Query<'q, Self, Self::Arguments<'q>>;

    /// Binds an integer to a query being built.
    fn push_int(sql: &mut QueryBuilder<'_, Self>, value: i64);

    /// Runs `query`; the number of rows it changed (MySQL: matched).
    fn execute<'e, 'q: 'e, 'a: 'q>(
        conn: &'e mut Self::Connection,
        query: Query<'q, Self, Self::Arguments<'a>>,
    ) -> BoxFuture<'e, Result<u64, sqlx::Error>>;

    /// Runs `query`; its first row, if any.
    fn fetch_optional<'e, 'q: 'e, 'a: 'q>(
        conn: &'e mut Self::Connection,
        query: Query<'q, Self, Self::Arguments<'a>>,
    ) -> BoxFuture<'e, Result<Option<Self::Row>, sqlx::Error>>;

    /// Column `index` of `row` as a boolean.
    fn flag(row: &Self::Row, index: usize) -> Result<bool, sqlx::Error>;
    /// Column `index` of `row` as bytes.
    fn bytes(row: &Self::Row, index: usize) -> Result<Vec<u8>, sqlx::Error>;
    /// Column `index` of `row` as bytes or `NULL`.
    fn maybe_bytes(row: &Self::Row, index: usize) -> Result<Option<Vec<u8>>, sqlx::Error>;
    /// Column `index` of `row` as an integer.
    fn int(row: &Self::Row, index: usize) -> Result<i64, sqlx::Error>;
    /// Column `index` of `row` as an integer or `NULL`.
    fn maybe_int(row: &Self::Row, index: usize) -> Result<Option<i64>, sqlx::Error>;
    /// Column `index` of `row` as text or `NULL`.
    fn maybe_text(row: &Self::Row, index: usize) -> Result<Option<String>, sqlx::Error>;

    /// Runs `query`; every row.
    fn fetch_all<'e, 'q: 'e, 'a: 'q>(
        conn: &'e mut Self::Connection,
        query: Query<'q, Self, Self::Arguments<'a>>,
    ) -> BoxFuture<'e, Result<Vec<Self::Row>, sqlx::Error>>;
}

/// A claim's statements, and how a claim runs them: atomicity is the database's own.
pub trait ClaimStatements<DB: Database>: Send + Sync + 'static {
    /// The store's claim on `conn`, in the caller's transaction or on a pooled connection.
    fn claim<'c>(&'c self, on: ClaimOn<'c, DB>) -> BoxFuture<'c, Result<Claim, StoreError>>
    where
        DB: SqlDialect;
}

/// One claim of `key` on `conn`: the caller's transaction (`in_transaction`) or a pooled
/// connection.
pub struct ClaimOn<'c, DB: SqlDialect> {
    pub(crate) store: &'c SqlStore<DB>,
    pub(crate) conn: &'c mut DB::Connection,
    pub(crate) key: &'c Key,
    pub(crate) request: ClaimRequest,
    pub(crate) in_transaction: bool,
}

impl<DB: SqlDialect> std::fmt::Debug for ClaimOn<'_, DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimOn")
            .field("key", self.key)
            .field("request", &self.request)
            .field("in_transaction", &self.in_transaction)
            .finish_non_exhaustive()
    }
}

/// The sqlx calls of [`Dialect`], written once and expanded in each database's impl.
macro_rules! sqlx_calls {
    () => {
        fn bind<'q>(
            query: ::sqlx::query::Query<'q, Self, Self::Arguments<'q>>,
            value: $crate::store::sql::dialect::Value<'q>,
        ) -> ::sqlx::query::Query<'q, Self, Self::Arguments<'q>> {
            use $crate::store::sql::dialect::Value;
            match value {
                Value::Bytes(bytes) => query.bind(bytes),
                Value::Text(text) => query.bind(text),
                Value::Int(int) => query.bind(int),
                Value::MaybeText(text) => query.bind(text),
            }
        }

        fn push_int(sql: &mut ::sqlx::QueryBuilder<'_, Self>, value: i64) {
            sql.push_bind(value);
        }

        fn execute<'e, 'q: 'e, 'a: 'q>(
            conn: &'e mut Self::Connection,
            query: ::sqlx::query::Query<'q, Self, Self::Arguments<'a>>,
        ) -> ::futures_util::future::BoxFuture<'e, Result<u64, ::sqlx::Error>> {
            Box::pin(async move { Ok(query.execute(&mut *conn).await?.rows_affected()) })
        }

        fn fetch_optional<'e, 'q: 'e, 'a: 'q>(
            conn: &'e mut Self::Connection,
            query: ::sqlx::query::Query<'q, Self, Self::Arguments<'a>>,
        ) -> ::futures_util::future::BoxFuture<'e, Result<Option<Self::Row>, ::sqlx::Error>> {
            Box::pin(query.fetch_optional(&mut *conn))
        }

        fn flag(row: &Self::Row, index: usize) -> Result<bool, ::sqlx::Error> {
            ::sqlx::Row::try_get(row, index)
        }

        fn bytes(row: &Self::Row, index: usize) -> Result<Vec<u8>, ::sqlx::Error> {
            ::sqlx::Row::try_get(row, index)
        }

        fn maybe_bytes(row: &Self::Row, index: usize) -> Result<Option<Vec<u8>>, ::sqlx::Error> {
            ::sqlx::Row::try_get(row, index)
        }

        fn int(row: &Self::Row, index: usize) -> Result<i64, ::sqlx::Error> {
            ::sqlx::Row::try_get(row, index)
        }

        fn maybe_int(row: &Self::Row, index: usize) -> Result<Option<i64>, ::sqlx::Error> {
            ::sqlx::Row::try_get(row, index)
        }

        fn maybe_text(row: &Self::Row, index: usize) -> Result<Option<String>, ::sqlx::Error> {
            ::sqlx::Row::try_get(row, index)
        }

        fn fetch_all<'e, 'q: 'e, 'a: 'q>(
            conn: &'e mut Self::Connection,
            query: ::sqlx::query::Query<'q, Self, Self::Arguments<'a>>,
        ) -> ::futures_util::future::BoxFuture<'e, Result<Vec<Self::Row>, ::sqlx::Error>> {
            Box::pin(query.fetch_all(&mut *conn))
        }
    };
}
pub(crate) use sqlx_calls;

/// Which database a [`Dialect`] is: for code that writes its own statements per database
/// (the outbox) instead of the store's [`Statements`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// PostgreSQL: `$n` placeholders, `RETURNING`, `FOR UPDATE SKIP LOCKED`.
    Postgres,
    /// MySQL 8 / MariaDB 10.6+: `?` placeholders, `FOR UPDATE SKIP LOCKED`, no `UPDATE … RETURNING`.
    MySql,
    /// SQLite: `?` placeholders, `RETURNING`, one writer at a time.
    Sqlite,
}

/// Where "now" comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The database server's clock, so that several application servers agree on leases:
    /// durations are bound as microseconds and the statement adds them to its own "now".
    Server,
    /// This process's clock (SQLite runs in the application): times are bound as
    /// microseconds since the Unix epoch.
    Process,
}

impl Clock {
    /// Now in microseconds since the Unix epoch, for a process clock; `None` for the server's.
    pub(crate) fn now(self) -> Option<i64> {
        match self {
            Clock::Server => None,
            Clock::Process => Some(epoch_micros(SystemTime::now())),
        }
    }
}

/// A value a statement binds, named in its bind list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Param {
    /// The row id.
    Id,
    /// The owner's token.
    Token,
    /// The call's fingerprint.
    Fingerprint,
    /// The output to store.
    Output,
    /// End of the lease.
    Lease,
    /// End of the lease plus `abandoned_after`: when an abandoned claim may be purged.
    Expiry,
    /// End of the TTL.
    Ttl,
    /// Now (process clock).
    Now,
    /// A purge's batch size.
    Limit,
    /// PostgreSQL's `lock_timeout` for a claim, or `NULL`.
    #[cfg(feature = "postgres")]
    Lock,
    /// The value a mark must hold for a swap.
    Expected,
    /// The key's namespace (kept in the row for listing).
    Namespace,
    /// The namespace's version.
    Version,
}

/// A bound value, as the database sees it.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// `BYTEA` / `BINARY` / `BLOB`.
    Bytes(&'a [u8]),
    /// Text.
    Text(&'a str),
    /// A 64-bit integer.
    Int(i64),
    /// Text or `NULL`.
    MaybeText(Option<&'a str>),
}

/// One statement and the values it binds, in order.
#[derive(Debug, Default)]
pub(crate) struct Statement {
    pub(crate) sql: String,
    pub(crate) binds: &'static [Param],
}

impl Statement {
    pub(crate) fn new(sql: String, binds: &'static [Param]) -> Statement {
        Statement { sql, binds }
    }
}

/// The statements of one store, written once for its table.
#[derive(Debug)]
pub struct Statements<DB: Dialect> {
    pub(crate) create: Vec<String>,
    pub(crate) claim: DB::ClaimStatements,
    /// Completes; PostgreSQL: answers whether it did, now or earlier by this token.
    pub(crate) complete: Statement,
    /// MySQL, SQLite: after a `complete` that changed nothing, whether this token completed
    /// the record already (a retried complete whose answer was lost).
    pub(crate) completed_by: Option<Statement>,
    pub(crate) release: Statement,
    pub(crate) renew: Statement,
    pub(crate) get: Statement,
    pub(crate) remove: Statement,
    pub(crate) purge: Statement,
    /// Whether the table still has the `key_text` column of tables created before 0.2 (one
    /// row: a count); `migrate` asks after `create`, and drops the column when it is there.
    pub(crate) has_key_text: Statement,
    /// Whether the table has the `namespace` and `version` columns, which tables created
    /// before 0.2 lack (one row: a count); `migrate` adds them when they are not there.
    pub(crate) has_namespace: Statement,
    /// Adds the `namespace` and `version` columns.
    pub(crate) add_namespace: Vec<String>,
    pub(crate) marks: MarkStatements,
    pub(crate) listing: ListingStatements,
}

/// The statements of listing and counting records (see [`Store::list`](crate::Store::list)).
/// A listed row: `id, namespace, version, completed, lease_until, expires_at` (times in
/// microseconds since the Unix epoch); a counted one: `namespace, version` and the counts in
/// progress, lease passed, completed and expired.
#[derive(Debug)]
pub(crate) struct ListingStatements {
    /// A page of every row after the cursor (`Id`), in id order.
    pub(crate) all: Statement,
    /// A page of one namespace's rows after the cursor, in id order.
    pub(crate) namespace: Statement,
    /// A page of one namespace's marks after the cursor (`id, output`), in id order.
    pub(crate) marks: Statement,
    /// Counts by namespace and state.
    pub(crate) stats: Statement,
}

/// The listing statements, written once: `epoch` writes a time column as microseconds since
/// the Unix epoch, `now` is the dialect's "now" (`with_now`: a bound process clock, the first
/// placeholder), and `bind(n)` the `n`th placeholder (1-based).
pub(crate) fn listing_statements(
    t: &str,
    epoch: impl Fn(&str) -> String,
    now: &str,
    bind: impl Fn(usize) -> String,
    with_now: bool,
) -> ListingStatements {
    use Param::*;
    let select = format!(
        "SELECT id, namespace, version, completed, {lease}, {expiry} FROM {t}",
        lease = epoch("lease_until"),
        expiry = epoch("expires_at"),
    );
    let live = format!("expires_at > {now}");
    let stats = format!(
        "SELECT namespace, version,
    COUNT(CASE WHEN NOT completed AND lease_until > {now} AND {live} THEN 1 END),
    COUNT(CASE WHEN NOT completed AND lease_until <= {now} AND {live} THEN 1 END),
    COUNT(CASE WHEN completed AND {live} THEN 1 END),
    COUNT(CASE WHEN NOT ({live}) THEN 1 END)
FROM {t} GROUP BY namespace, version ORDER BY namespace, version"
    );
    // Placeholders in the order they appear, which is the order MySQL's `?` binds in.
    ListingStatements {
        all: Statement::new(
            format!(
                "{select} WHERE id > {} ORDER BY id LIMIT {}",
                bind(1),
                bind(2)
            ),
            &[Id, Limit],
        ),
        namespace: Statement::new(
            format!(
                "{select} WHERE namespace = {} AND version = {} AND id > {}
ORDER BY id LIMIT {}",
                bind(1),
                bind(2),
                bind(3),
                bind(4)
            ),
            &[Namespace, Version, Id, Limit],
        ),
        stats: Statement::new(stats, if with_now { &[Now] } else { &[] }),
        marks: Statement::new(
            format!(
                "SELECT id, output FROM {t} WHERE namespace = {} AND version = {} AND completed
AND id > {} ORDER BY id LIMIT {}",
                bind(1),
                bind(2),
                bind(3),
                bind(4)
            ),
            &[Namespace, Version, Id, Limit],
        ),
    }
}

/// The statements of marks (producer-sequence deduplication): a mark is a completed row of
/// the store's table whose output is the mark's value (zero token and fingerprint), so it
/// expires and is purged like any record, and needs no table of its own.
#[derive(Debug)]
pub(crate) struct MarkStatements {
    /// The live mark's value (one column).
    pub(crate) load: Statement,
    /// Deletes an expired mark, before an insert.
    pub(crate) clear: Statement,
    /// Inserts a mark where there is none (changes no row when there is one).
    pub(crate) insert: Statement,
    /// Replaces a live mark that holds the expected value.
    pub(crate) swap: Statement,
    /// Locks a mark's row, if there is one, until the transaction ends.
    pub(crate) lock: Statement,
}

/// Drops the `key_text` column (the key's text, 100 bytes or more a row, that no statement
/// reads) from a table created before 0.2; a table without it is left alone.
pub(crate) async fn drop_legacy_key_text<DB: SqlDialect>(
    store: &SqlStore<DB>,
    conn: &mut DB::Connection,
) -> Result<(), StoreError> {
    let error = |error| store.error(error);
    let found = fetch::<DB>(&mut *conn, &store.sql().has_key_text, &Args::default())
        .await
        .map_err(error)?;
    let columns = match found {
        Some(row) => DB::maybe_int(&row, 0).map_err(error)?.unwrap_or(0),
        None => 0,
    };
    if columns > 0 {
        let table = store.table_name().quoted(DB::QUOTE);
        let drop = format!("ALTER TABLE {table} DROP COLUMN key_text");
        DB::execute(&mut *conn, sqlx::query(&drop))
            .await
            .map_err(error)?;
    }
    add_namespace_columns(store, conn).await
}

/// Adds the `namespace` and `version` columns to a table created before 0.2 (rows written
/// before keep them `NULL` and list as of an unknown namespace); a table with them is left
/// alone. Another process migrating at the same time may add a column first: a failed `ALTER`
/// is an error only if the columns are still missing after it.
async fn add_namespace_columns<DB: SqlDialect>(
    store: &SqlStore<DB>,
    conn: &mut DB::Connection,
) -> Result<(), StoreError> {
    let sql = store.sql();
    let count = async |conn: &mut DB::Connection| {
        let found = fetch::<DB>(conn, &sql.has_namespace, &Args::default()).await?;
        match found {
            Some(row) => Ok(DB::maybe_int(&row, 0)?.unwrap_or(0)),
            None => Ok::<_, sqlx::Error>(0),
        }
    };
    if count(&mut *conn)
        .await
        .map_err(|error| store.error(error))?
        >= 2
    {
        return Ok(());
    }
    let mut failed = None;
    for statement in &sql.add_namespace {
        if let Err(error) = DB::execute(&mut *conn, sqlx::query(statement)).await {
            failed.get_or_insert(error);
        }
    }
    match failed {
        Some(error) if count(&mut *conn).await.unwrap_or(0) < 2 => Err(store.error(error)),
        _ => Ok(()),
    }
}

/// The values of one call's statements; each statement binds those its list names.
#[derive(Debug, Default)]
pub(crate) struct Args<'a> {
    pub(crate) id: &'a [u8],
    pub(crate) token: &'a [u8],
    pub(crate) fingerprint: &'a [u8],
    pub(crate) output: &'a [u8],
    pub(crate) expected: &'a [u8],
    pub(crate) lease: Duration,
    pub(crate) expiry: Duration,
    pub(crate) ttl: Duration,
    pub(crate) limit: u32,
    pub(crate) namespace: &'a str,
    pub(crate) version: i64,
    #[cfg(feature = "postgres")]
    pub(crate) lock: Option<String>,
    /// Now, on a process clock (see [`Clock::now`]).
    pub(crate) now: Option<i64>,
}

impl<'a> Args<'a> {
    /// The values of a claim (the token is new, the key formatted once).
    pub(crate) fn claim(
        id: &'a [u8],
        key: &'a Key,
        token: &'a Token,
        request: &'a ClaimRequest,
        abandoned_after: Duration,
    ) -> Args<'a> {
        Args {
            id,
            namespace: key.namespace(),
            version: i64::from(key.version()),
            token: token.as_bytes(),
            fingerprint: request.fingerprint.as_bytes(),
            lease: request.lease,
            expiry: request.lease.saturating_add(abandoned_after),
            ..Args::default()
        }
    }

    /// A duration from now: bound as it is for the server to add, or added to the process's
    /// now.
    fn after(&self, duration: Duration) -> i64 {
        match self.now {
            Some(now) => now.saturating_add(micros(duration)),
            None => micros(duration),
        }
    }

    fn value(&self, param: Param) -> Value<'_> {
        match param {
            Param::Id => Value::Bytes(self.id),
            Param::Token => Value::Bytes(self.token),
            Param::Fingerprint => Value::Bytes(self.fingerprint),
            Param::Output => Value::Bytes(self.output),
            Param::Expected => Value::Bytes(self.expected),
            Param::Lease => Value::Int(self.after(self.lease)),
            Param::Expiry => Value::Int(self.after(self.expiry)),
            Param::Ttl => Value::Int(self.after(self.ttl)),
            Param::Now => Value::Int(self.now.unwrap_or(0)),
            Param::Limit => Value::Int(i64::from(self.limit)),
            Param::Namespace => Value::Text(self.namespace),
            Param::Version => Value::Int(self.version),
            #[cfg(feature = "postgres")]
            Param::Lock => Value::MaybeText(self.lock.as_deref()),
        }
    }
}

/// `statement` with `args` bound in its order.
fn bound<'q, DB: Dialect>(
    statement: &'q Statement,
    args: &'q Args<'_>,
) -> Query<'q, DB, DB::Arguments<'q>> {
    statement
        .binds
        .iter()
        .fold(sqlx::query(&statement.sql), |query, param| {
            DB::bind(query, args.value(*param))
        })
}

/// Runs `statement` with `args`; the number of rows it changed.
pub(crate) async fn execute<DB: Dialect>(
    conn: &mut DB::Connection,
    statement: &Statement,
    args: &Args<'_>,
) -> Result<u64, sqlx::Error> {
    DB::execute(conn, bound::<DB>(statement, args)).await
}

/// Runs `statement` with `args`; every row.
pub(crate) async fn fetch_all<DB: Dialect>(
    conn: &mut DB::Connection,
    statement: &Statement,
    args: &Args<'_>,
) -> Result<Vec<DB::Row>, sqlx::Error> {
    DB::fetch_all(conn, bound::<DB>(statement, args)).await
}

/// Runs `statement` with `args`; its first row, if any.
pub(crate) async fn fetch<DB: Dialect>(
    conn: &mut DB::Connection,
    statement: &Statement,
    args: &Args<'_>,
) -> Result<Option<DB::Row>, sqlx::Error> {
    DB::fetch_optional(conn, bound::<DB>(statement, args)).await
}
