//! Configuration: [`SqlStoreBuilder`], [`SqlConfigError`], and the table name check, which
//! is also the identifier check of [`VersionedTable`](crate::versioning::sql::VersionedTable).

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use sqlx::{Database, Pool};

use super::{
    DEFAULT_ABANDONED_AFTER, DEFAULT_LOCK_TIMEOUT, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_TABLE,
    SqlDialect, SqlStore,
};
#[cfg(doc)]
use crate::{error::StoreError, record::Claim};

/// Longest identifier accepted: 63 bytes (PostgreSQL's limit) minus the suffix of the index
/// name the store derives from its table's name.
pub(crate) const MAX_IDENTIFIER: usize = 48;

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

/// Checks one identifier written into a statement (names are checked, never escaped): 1 to
/// [`MAX_IDENTIFIER`] bytes of `a-z`, `0-9` and `_`, not starting with a digit. Lowercase only,
/// as the names are quoted: a quoted name with capitals would not match a table created
/// without quotes on PostgreSQL, which folds unquoted names to lowercase.
pub(crate) fn check_identifier(part: &str) -> Result<(), &'static str> {
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

/// Quotes an identifier checked by [`check_identifier`] (it contains no quote character).
pub(crate) fn quote(identifier: &str, quote: char) -> String {
    format!("{quote}{identifier}{quote}")
}

/// A validated table name, optionally schema-qualified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    text: String,
    /// Where `name` starts in `text` (after `schema.`).
    name_at: usize,
}

impl TableName {
    /// `name` or `schema.name`, each part a plain identifier (see [`check_identifier`]).
    pub(crate) fn parse(text: &str) -> Result<TableName, SqlConfigError> {
        let invalid = |problem| SqlConfigError::InvalidTable {
            name: text.to_owned(),
            problem,
        };
        let (schema, name) = match text.split_once('.') {
            Some((_, name)) if name.contains('.') => {
                return Err(invalid("it has more than one `.`"));
            }
            Some((schema, name)) => (Some(schema), name),
            None => (None, text),
        };
        for part in schema.into_iter().chain([name]) {
            check_identifier(part).map_err(invalid)?;
        }
        Ok(TableName {
            text: text.to_owned(),
            name_at: text.len() - name.len(),
        })
    }

    /// [`DEFAULT_TABLE`], which needs no check.
    pub(crate) fn default_table() -> TableName {
        TableName {
            text: DEFAULT_TABLE.to_owned(),
            name_at: 0,
        }
    }

    /// The schema, if the name is qualified.
    pub(crate) fn schema(&self) -> Option<&str> {
        self.name_at.checked_sub(1).map(|dot| &self.text[..dot])
    }

    /// The unqualified table name.
    pub(crate) fn name(&self) -> &str {
        &self.text[self.name_at..]
    }

    /// `schema.name` or `name`, as given.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// `name` with `suffix`, in the table's schema: the name of an object beside the table.
    pub(crate) fn beside(&self, suffix: &str, quote_char: char) -> String {
        let name = quote(&format!("{}{suffix}", self.name()), quote_char);
        match self.schema() {
            Some(schema) => format!("{}.{name}", quote(schema, quote_char)),
            None => name,
        }
    }

    /// `schema.name` or `name`, each part wrapped in `quote_char`.
    pub(crate) fn quoted(&self, quote_char: char) -> String {
        self.beside("", quote_char)
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Configures a [`SqlStore`].
pub struct SqlStoreBuilder<DB: Database> {
    pub(super) pool: Pool<DB>,
    pub(super) table: String,
    pub(super) max_output_bytes: usize,
    pub(super) abandoned_after: Duration,
    pub(super) insert_first: bool,
    pub(super) lock_timeout: Duration,
    pub(super) dialect: PhantomData<DB>,
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
    pub(super) fn new(pool: Pool<DB>) -> SqlStoreBuilder<DB> {
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

    /// The table (default [`DEFAULT_TABLE`]), optionally as `schema.table`: lowercase ASCII
    /// letters, digits and `_`, checked by [`build`](Self::build).
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// Largest output stored (default 1 MiB); a larger one is refused with
    /// [`StoreError::TooLarge`] before any statement runs, and the executor records that the
    /// body ran with its output not stored (retries get `Error::OutputNotStored`).
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
    /// first; see the [module docs](super#round-trips).)
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
    /// [transactional and pool calls on one key](super#transactional-and-pool-calls-on-one-key).
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
        Ok(SqlStore::with(self, table))
    }
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
        assert_eq!(table.beside("_claim", '"'), "\"app\".\"records_claim\"");
        assert_eq!(table.to_string(), "app.records");
        assert_eq!((table.schema(), table.name()), (Some("app"), "records"));
        assert_eq!(
            TableName::default_table(),
            TableName::parse(DEFAULT_TABLE).unwrap()
        );
        let plain = TableName::parse("records").unwrap();
        assert_eq!(
            (plain.schema(), plain.quoted('`')),
            (None, "`records`".into())
        );
    }
}
