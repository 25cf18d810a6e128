//! Compare-and-set for SQL rows with a version column, on PostgreSQL, MySQL / MariaDB and
//! SQLite (sqlx): one `UPDATE … SET …, version = version + 1 WHERE id = ? AND version = ?`,
//! and a stale version reported as [`VersionConflict`].
//!
//! The table needs an id column and a `BIGINT` (SQLite: `INTEGER`) version column:
//!
//! ```sql
//! CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL, version BIGINT NOT NULL DEFAULT 1)
//! ```
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use sqlx::{Sqlite, SqlitePool};
//! use idempotent_core::retry::RetryPolicy;
//! use idempotent_core::versioning::sql::{UpdateError, VersionedTable};
//! use idempotent_core::versioning::{retry_on_conflict, VersionConflict};
//!
//! let pool = SqlitePool::connect("sqlite::memory:").await?;
//! sqlx::query("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, version INTEGER NOT NULL)")
//!     .execute(&pool).await?;
//! sqlx::query("INSERT INTO accounts VALUES (7, 100, 1)").execute(&pool).await?;
//! let accounts = VersionedTable::new("accounts")?;
//!
//! // Read, compute, compare-and-set; again on conflict.
//! let version = retry_on_conflict(&RetryPolicy::new(), || async {
//!     let mut conn = pool.acquire().await.map_err(UpdateError::Database)?;
//!     let (balance, version): (i64, i64) =
//!         sqlx::query_as("SELECT balance, version FROM accounts WHERE id = 7")
//!             .fetch_one(&mut *conn).await.map_err(UpdateError::Database)?;
//!     accounts.update::<Sqlite, _>(7, version).set("balance", balance - 30).execute(&mut conn).await
//! })
//! .await?;
//! assert_eq!(version, 2);
//!
//! // A writer still holding version 1 changes nothing and learns the current version.
//! let mut conn = pool.acquire().await?;
//! let stale = accounts.update::<Sqlite, _>(7, 1).set("balance", 0).execute(&mut conn).await;
//! assert!(matches!(stale, Err(UpdateError::Conflict(VersionConflict { expected: 1, current: Some(2) }))));
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```

use sqlx::query::Query;
use sqlx::{Database, Encode, QueryBuilder, Type};

use super::{AsVersionConflict, VersionConflict};
use crate::retry::Retryable;
use crate::store::sql::builder::{MAX_IDENTIFIER, TableName, check_identifier, quote};

/// The [sqlx](https://docs.rs/sqlx) the helpers are built on, re-exported so that pools and
/// connections match.
pub use sqlx;

/// The databases the versioned update runs on: `Postgres`, `MySql` and `Sqlite`, each behind
/// its feature; the SQL store's [`SqlDialect`](crate::store::sql::SqlDialect). Sealed.
pub use crate::store::sql::SqlDialect as VersionedDialect;

/// A table or column name that is not a plain SQL identifier (1 to 48 of `a-z`, `0-9` and
/// `_`, not starting with a digit; a table may be `schema.table`): the rule of the SQL store's
/// table name. Names are checked because they are written into the statement, unlike values,
/// which are bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{name}` is not a plain SQL identifier (1 to {MAX_IDENTIFIER} of `a-z`, `0-9` and `_`, not starting with a digit)"
)]
pub struct InvalidIdentifier {
    /// The name refused.
    pub name: String,
}

impl InvalidIdentifier {
    fn of(name: &str) -> InvalidIdentifier {
        InvalidIdentifier {
            name: name.to_owned(),
        }
    }
}

/// Checks a column name.
fn column(name: &str) -> Result<(), InvalidIdentifier> {
    check_identifier(name).map_err(|_| InvalidIdentifier::of(name))
}

/// A table whose rows carry a version: where [`update`](Self::update) runs.
///
/// The id column defaults to `id` and the version column to `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedTable {
    table: TableName,
    id_column: String,
    version_column: String,
}

impl VersionedTable {
    /// The table `name` (optionally `schema.table`).
    pub fn new(name: &str) -> Result<VersionedTable, InvalidIdentifier> {
        Ok(VersionedTable {
            table: TableName::parse(name).map_err(|_| InvalidIdentifier::of(name))?,
            id_column: "id".to_owned(),
            version_column: "version".to_owned(),
        })
    }

    /// The id column (default `id`).
    pub fn id_column(mut self, name: &str) -> Result<VersionedTable, InvalidIdentifier> {
        column(name)?;
        self.id_column = name.to_owned();
        Ok(self)
    }

    /// The version column (default `version`; `BIGINT`, or `INTEGER` on SQLite).
    pub fn version_column(mut self, name: &str) -> Result<VersionedTable, InvalidIdentifier> {
        column(name)?;
        self.version_column = name.to_owned();
        Ok(self)
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        self.table.as_str()
    }

    /// Starts the update of row `id`, computed from `expected_version`; add columns with
    /// [`set`](VersionedUpdate::set), run with [`execute`](VersionedUpdate::execute).
    pub fn update<'a, DB, I>(&'a self, id: I, expected_version: i64) -> VersionedUpdate<'a, DB, I>
    where
        DB: VersionedDialect,
        I: 'a + Encode<'a, DB> + Type<DB> + Clone + Send,
        DB::Arguments<'a>: Default,
    {
        let mut sql = QueryBuilder::new("UPDATE ");
        sql.push(self.table.quoted(DB::QUOTE)).push(" SET ");
        VersionedUpdate {
            table: self,
            sql,
            id,
            expected_version,
            invalid: None,
        }
    }

    /// The current version of row `id`, if the row exists.
    pub async fn current_version<'a, DB, I>(
        &'a self,
        conn: &mut DB::Connection,
        id: I,
    ) -> Result<Option<i64>, sqlx::Error>
    where
        DB: VersionedDialect,
        I: 'a + Encode<'a, DB> + Type<DB> + Send,
        DB::Arguments<'a>: Default,
    {
        let mut sql = self.select_version::<DB, I>(id);
        fetch_version::<DB>(conn, sql.build()).await
    }

    fn select_version<'a, DB, I>(&self, id: I) -> QueryBuilder<'a, DB>
    where
        DB: VersionedDialect,
        I: 'a + Encode<'a, DB> + Type<DB>,
        DB::Arguments<'a>: Default,
    {
        let mut sql = QueryBuilder::new("SELECT ");
        sql.push(quote(&self.version_column, DB::QUOTE))
            .push(" FROM ")
            .push(self.table.quoted(DB::QUOTE))
            .push(" WHERE ")
            .push(quote(&self.id_column, DB::QUOTE))
            .push(" = ")
            .push_bind(id);
        sql
    }
}

/// One versioned update being built: `UPDATE table SET a = ?, b = ?, version = version + 1
/// WHERE id = ? AND version = ?`. Values are bound, never spliced into the SQL.
#[must_use = "the update does nothing until `execute` is awaited"]
pub struct VersionedUpdate<'a, DB: Database, I> {
    table: &'a VersionedTable,
    sql: QueryBuilder<'a, DB>,
    id: I,
    expected_version: i64,
    invalid: Option<InvalidIdentifier>,
}

impl<DB: Database, I> std::fmt::Debug for VersionedUpdate<'_, DB, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionedUpdate")
            .field("table", &self.table.table.as_str())
            .field("sql", &self.sql.sql())
            .field("expected_version", &self.expected_version)
            .finish_non_exhaustive()
    }
}

impl<'a, DB, I> VersionedUpdate<'a, DB, I>
where
    DB: VersionedDialect,
    I: 'a + Encode<'a, DB> + Type<DB> + Clone + Send,
    DB::Arguments<'a>: Default,
{
    /// Sets `column` to `value` (bound as a parameter). An invalid column name fails the
    /// update with [`UpdateError::InvalidIdentifier`] when it executes.
    pub fn set<T>(mut self, column: &str, value: T) -> Self
    where
        T: 'a + Encode<'a, DB> + Type<DB>,
    {
        if let Err(invalid) = self::column(column) {
            self.invalid.get_or_insert(invalid);
            return self;
        }
        self.sql
            .push(quote(column, DB::QUOTE))
            .push(" = ")
            .push_bind(value)
            .push(", ");
        self
    }

    /// Runs the update on `conn` (a connection, or a transaction: `&mut *tx`) and returns the
    /// row's new version (`expected_version + 1`).
    ///
    /// Exactly one statement when the version matches. When no row matched, a second one
    /// reads the current version to report [`UpdateError::Conflict`] (the row moved on) or
    /// [`UpdateError::NotFound`] (there is no such row).
    pub async fn execute(self, conn: &mut DB::Connection) -> Result<i64, UpdateError> {
        let VersionedUpdate {
            table,
            mut sql,
            id,
            expected_version,
            invalid,
        } = self;
        if let Some(invalid) = invalid {
            return Err(UpdateError::InvalidIdentifier(invalid));
        }
        let version = quote(&table.version_column, DB::QUOTE);
        sql.push(&version)
            .push(" = ")
            .push(&version)
            .push(" + 1 WHERE ")
            .push(quote(&table.id_column, DB::QUOTE))
            .push(" = ")
            .push_bind(id.clone())
            .push(" AND ")
            .push(&version)
            .push(" = ");
        DB::push_int(&mut sql, expected_version);
        let matched = DB::execute(&mut *conn, sql.build())
            .await
            .map_err(UpdateError::Database)?;
        if matched == 1 {
            return Ok(expected_version + 1);
        }
        let mut read = table.select_version::<DB, I>(id);
        match fetch_version::<DB>(conn, read.build())
            .await
            .map_err(UpdateError::Database)?
        {
            Some(current) => Err(UpdateError::Conflict(VersionConflict {
                expected: expected_version,
                current: Some(current),
            })),
            None => Err(UpdateError::NotFound {
                table: table.name().to_owned(),
            }),
        }
    }
}

/// Runs the version read-back; the version, if the row exists.
async fn fetch_version<'q, 'a: 'q, DB: VersionedDialect>(
    conn: &mut DB::Connection,
    query: Query<'q, DB, DB::Arguments<'a>>,
) -> Result<Option<i64>, sqlx::Error> {
    match DB::fetch_optional(conn, query).await? {
        Some(row) => Ok(Some(DB::int(&row, 0)?)),
        None => Ok(None),
    }
}

/// Why a versioned update changed nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// The row's version is not the expected one: someone updated it since it was read.
    #[error(transparent)]
    Conflict(#[from] VersionConflict),
    /// There is no row with this id.
    #[error("no row with this id in `{table}`")]
    NotFound {
        /// The table.
        table: String,
    },
    /// A column name is not a plain SQL identifier.
    #[error(transparent)]
    InvalidIdentifier(#[from] InvalidIdentifier),
    /// The database failed.
    #[error("the versioned update failed")]
    Database(#[source] sqlx::Error),
}

impl AsVersionConflict for UpdateError {
    fn version_conflict(&self) -> Option<&VersionConflict> {
        match self {
            UpdateError::Conflict(conflict) => Some(conflict),
            _ => None,
        }
    }
}

impl Retryable for UpdateError {
    /// A conflict, or a database error that is a lost connection, a pool timeout, a
    /// deadlock or a serialization failure.
    fn is_retryable(&self) -> bool {
        match self {
            UpdateError::Conflict(_) => true,
            UpdateError::Database(error) => is_transient(error),
            UpdateError::NotFound { .. } | UpdateError::InvalidIdentifier(_) => false,
        }
    }
}

fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(database) => matches!(
            database.code().as_deref(),
            // SQLSTATE serialization failure (PostgreSQL, and MySQL's deadlock) and
            // PostgreSQL deadlock; SQLite busy, locked and busy snapshot.
            Some("40001" | "40P01" | "5" | "6" | "517")
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_identifiers_pass() {
        assert!(VersionedTable::new("accounts").is_ok());
        assert!(VersionedTable::new("billing.accounts").is_ok());
        assert!(VersionedTable::new("_t1").is_ok());
        for bad in [
            "",
            "1t",
            "a b",
            "a;drop table x",
            "a\"b",
            "a`b",
            "a.b.c",
            ".a",
            "é",
        ] {
            assert!(VersionedTable::new(bad).is_err(), "{bad}");
        }
        assert!(VersionedTable::new("t").unwrap().id_column("s.id").is_err());
        assert!(
            VersionedTable::new("t")
                .unwrap()
                .version_column("v-1")
                .is_err()
        );
        assert!(VersionedTable::new(&"x".repeat(64)).is_err());
    }
}
