//! The transactional outbox (features `postgres`, `mysql`, `sqlite`): an event row that
//! commits with the caller's writes, and a [`Relay`] that publishes it to a broker afterwards,
//! with an id the broker and the consumer deduplicate by.
//!
//! Publishing after the commit loses the event when the process dies in between; publishing
//! before it leaves an event for writes that rolled back. [`Outbox::add`] writes the event
//! into the caller's transaction instead, so the event exists exactly when the writes do, and
//! the [`Relay`] publishes it later:
//!
//! 1. **Add.** Inside a transactional `#[idempotent]` function (or an
//!    [`Owner::scope`](crate::transaction::Owner::scope)), each message's id is derived from
//!    the call's key and its position, `{key}/0`, `{key}/1`, … (or a name:
//!    [`add_named`](Outbox::add_named)): a rerun of the body adds the same ids, and a repeat
//!    of an id adds nothing. A replayed call does not run its body, so it adds nothing.
//!    Outside a call, a message gets a fresh UUID v7 id.
//! 2. **Relay.** [`Relay`] takes batches of unpublished rows under a lease (PostgreSQL and
//!    MySQL: `FOR UPDATE SKIP LOCKED`, so relays never wait for each other; SQLite: one
//!    statement, one writer at a time), publishes each through a
//!    [`Publisher`](crate::broker::Publisher) with the id as the broker's deduplication id,
//!    waits for the broker's confirmation, and only then marks the rows published. A relay
//!    that dies between the confirmation and the mark leaves its rows to be published again
//!    when their lease passes: the broker drops the repeat (JetStream's `Nats-Msg-Id` within
//!    the stream's duplicate window).
//! 3. **Consume.** The consumer reads the id back
//!    ([`broker::nats::message_id`](crate::broker)) and deduplicates by it with a
//!    [`Consumer`](crate::consumer::Consumer) or an
//!    [`Inbox`](crate::consumer::inbox::Inbox): one key lineage from the request to the
//!    consumer's effect.
//!
//! One relay publishes a batch's messages at once, in the order of their row numbers (the
//! order the inserts ran, not the order of the commits), and marks them after every
//! confirmation: a consumer may see them out of order, and several relays or a message given
//! back after a failed publish reorder them further. Carry a sequence in the payload where
//! order matters.
//!
//! Message ids come from a task-local scope: a task spawned inside the body does not see it,
//! and its messages get UUIDs (different on every rerun). Add messages in the body's own task.
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), idempotent_core::BoxError> {
//! use idempotent_core::outbox::Outbox;
//! use idempotent_core::store::sql::{sqlx::{self, SqlitePool}, SqliteStore};
//! use idempotent_core::{BoxError, Fingerprint, Key};
//!
//! let pool = SqlitePool::connect("sqlite::memory:").await?;
//! sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY)").execute(&pool).await?;
//! let store = SqliteStore::new(pool.clone());
//! store.migrate().await?;
//! let outbox = Outbox::new(pool.clone());
//! outbox.migrate().await?;
//!
//! // The client sends order 7 twice: one order row, one event.
//! for _attempt in 0..2 {
//!     let key = Key::derive("shop::place_order", 1, &"order-7")?;
//!     let mut tx = pool.begin().await?;
//!     let placed: Result<String, BoxError> = store
//!         .in_transaction(key, Fingerprint::of(&"order-7")?)
//!         .run(&mut tx, |tx| Box::pin(async {
//!             sqlx::query("INSERT INTO orders VALUES ('order-7')").execute(&mut **tx).await?;
//!             Ok(outbox.add(tx, "orders.created", b"order-7").await?)
//!         }))
//!         .await;
//!     tx.commit().await?;
//!     assert!(placed?.ends_with("/0"));
//! }
//! assert_eq!(outbox.pending().await?, 1);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlx::query::Query;
use sqlx::{Pool, Transaction};

use crate::store::sql::builder::TableName;
use crate::store::sql::dialect::Value;
use crate::store::sql::time::epoch_micros;
use crate::store::sql::{SqlConfigError, SqlDialect};

pub(crate) mod lineage;
mod relay;
mod sql;

pub use relay::{Failed, Relay, RelayHandle, RelayPass};

use sql::OutboxSql;

/// The table [`Outbox::new`] uses.
pub const DEFAULT_TABLE: &str = "idempotency_outbox";

/// The longest topic and message name, in bytes.
pub const MAX_TOPIC: usize = 255;

/// What went wrong with the outbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// A statement failed: the database is unreachable, or the table is missing (run
    /// [`Outbox::migrate`]).
    #[error(
        "the outbox could not {action}: {source}; check that the database is reachable and that `Outbox::migrate` ran"
    )]
    Database {
        /// What the outbox was doing.
        action: &'static str,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// A topic or a message name that cannot be stored or published.
    #[error("{what} {value:?} is not valid: {problem}")]
    Invalid {
        /// `"the topic"`, `"the message name"` or `"the message id"`.
        what: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it, and what to do.
        problem: &'static str,
    },
    /// A message with this id is in the table with another topic or payload: the call's
    /// key was used again after its record expired while the earlier message was still kept
    /// (keep the relay's `retention` shorter than the calls' `ttl`), or the body added other
    /// messages at the same positions on a rerun (name them: [`Outbox::add_named`]).
    #[error(
        "a different message with id {id:?} is already in the outbox; keep the relay's retention shorter than the calls' ttl, or name messages whose order can change (`add_named`)"
    )]
    Conflict {
        /// The id.
        id: String,
    },
    /// A message id over [`MAX_TOPIC`] bytes (a call's key with a long namespace): shorten the
    /// function's name or the message's name.
    #[error(
        "the message id {id:?} is longer than {MAX_TOPIC} bytes; use a shorter namespace or message name"
    )]
    IdTooLong {
        /// The id.
        id: String,
    },
}

/// A transactional outbox table on a sqlx pool. Cheap to clone.
#[derive(Debug)]
pub struct Outbox<DB: SqlDialect> {
    inner: Arc<Inner<DB>>,
}

impl<DB: SqlDialect> Clone for Outbox<DB> {
    fn clone(&self) -> Self {
        Outbox {
            inner: Arc::clone(&self.inner),
        }
    }
}

#[derive(Debug)]
struct Inner<DB: SqlDialect> {
    pool: Pool<DB>,
    table: TableName,
    sql: OutboxSql,
}

impl<DB: SqlDialect> Outbox<DB> {
    /// The outbox in table [`DEFAULT_TABLE`] of `pool`'s database.
    pub fn new(pool: Pool<DB>) -> Outbox<DB> {
        Outbox::build(
            pool,
            TableName::parse(DEFAULT_TABLE).expect("the default table name is valid"),
        )
    }

    /// The outbox in `table` (`name` or `schema.name`).
    pub fn with_table(pool: Pool<DB>, table: &str) -> Result<Outbox<DB>, SqlConfigError> {
        Ok(Outbox::build(pool, TableName::parse(table)?))
    }

    fn build(pool: Pool<DB>, table: TableName) -> Outbox<DB> {
        let sql = OutboxSql::new(DB::SYNTAX, &table);
        Outbox {
            inner: Arc::new(Inner { pool, table, sql }),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.inner.pool
    }

    /// The table, as configured.
    pub fn table(&self) -> String {
        self.inner.table.to_string()
    }

    /// The statements [`migrate`](Self::migrate) runs, for a migration tool of your own.
    pub fn migration(&self) -> &[String] {
        &self.inner.sql.create
    }

    /// Creates the table and its indexes if they do not exist.
    pub async fn migrate(&self) -> Result<(), OutboxError> {
        let mut conn = self.acquire("connect").await?;
        for statement in &self.inner.sql.create {
            DB::execute(&mut conn, sqlx::query(statement))
                .await
                .map_err(database("create its table"))?;
        }
        Ok(())
    }

    /// Adds a message for `topic` in `tx`: it is published after `tx` commits, and never if
    /// it rolls back. Its id, returned, is `{key}/{position}` inside an idempotent call (see
    /// the [module docs](self)), a UUID v7 outside one. Adding an id that is already there
    /// adds nothing.
    pub async fn add(
        &self,
        tx: &mut Transaction<'_, DB>,
        topic: &str,
        payload: impl AsRef<[u8]>,
    ) -> Result<String, OutboxError> {
        check("the topic", topic)?;
        let id = lineage::next_id().unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        self.insert(tx, id, topic, payload.as_ref()).await
    }

    /// Adds a message named `name`, whose id is `{key}/{name}` inside an idempotent call: for
    /// a body whose messages vary in number or order between runs. Outside a call the id is
    /// `name` itself, which must then be unique on its own.
    pub async fn add_named(
        &self,
        tx: &mut Transaction<'_, DB>,
        name: &str,
        topic: &str,
        payload: impl AsRef<[u8]>,
    ) -> Result<String, OutboxError> {
        check("the topic", topic)?;
        check("the message name", name)?;
        if name.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(OutboxError::Invalid {
                what: "the message name",
                value: name.to_owned(),
                problem: "it is all digits, as the ids of unnamed messages are; add a letter",
            });
        }
        let id = lineage::named_id(name).unwrap_or_else(|| name.to_owned());
        self.insert(tx, id, topic, payload.as_ref()).await
    }

    async fn insert(
        &self,
        tx: &mut Transaction<'_, DB>,
        id: String,
        topic: &str,
        payload: &[u8],
    ) -> Result<String, OutboxError> {
        if id.len() > MAX_TOPIC {
            return Err(OutboxError::IdTooLong { id });
        }
        check("the message id", &id)?;
        let digest = digest(topic, payload);
        let query = bind::<DB>(
            &self.inner.sql.insert,
            &[
                Value::Text(&id),
                Value::Text(topic),
                Value::Bytes(payload),
                Value::Bytes(&digest),
                Value::Int(now()),
            ],
        );
        let added = match DB::execute(&mut **tx, query).await {
            Ok(rows) => rows > 0,
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => false,
            Err(error) => return Err(database("add a message")(error)),
        };
        if !added {
            // The id is there: the same message again (a rerun of the body) adds nothing;
            // another message under its id would be lost, so it is refused.
            let query = bind::<DB>(&self.inner.sql.digest, &[Value::Text(&id)]);
            let row = DB::fetch_optional(&mut **tx, query)
                .await
                .map_err(database("compare a repeated message"))?;
            let there = match row {
                Some(row) => DB::bytes(&row, 0).map_err(database("compare a repeated message"))?,
                None => Vec::new(),
            };
            if there != digest {
                return Err(OutboxError::Conflict { id });
            }
        }
        Ok(id)
    }

    /// How many messages are not published yet.
    pub async fn pending(&self) -> Result<u64, OutboxError> {
        let mut conn = self.acquire("connect").await?;
        let row = DB::fetch_optional(&mut conn, sqlx::query(&self.inner.sql.pending))
            .await
            .map_err(database("count pending messages"))?;
        let count = match row {
            Some(row) => DB::int(&row, 0).map_err(database("count pending messages"))?,
            None => 0,
        };
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// A relay publishing this outbox through `publisher`.
    pub fn relay<P: crate::broker::Publisher>(&self, publisher: P) -> Relay<DB, P> {
        Relay::new(self.clone(), publisher)
    }

    async fn acquire(
        &self,
        action: &'static str,
    ) -> Result<sqlx::pool::PoolConnection<DB>, OutboxError> {
        self.inner.pool.acquire().await.map_err(database(action))
    }
}

/// A topic or a name: 1 to [`MAX_TOPIC`] bytes, no whitespace or control characters (NATS
/// subjects and RabbitMQ routing keys take neither).
fn check(what: &'static str, value: &str) -> Result<(), OutboxError> {
    let problem = if value.is_empty() {
        "it is empty"
    } else if value.len() > MAX_TOPIC {
        "it is longer than 255 bytes"
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "it contains whitespace or a control character, which brokers refuse in a subject"
    } else {
        return Ok(());
    };
    Err(OutboxError::Invalid {
        what,
        value: value.to_owned(),
        problem,
    })
}

/// What identifies a message's content: SHA-256 of its topic (length-prefixed) and payload.
fn digest(topic: &str, payload: &[u8]) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    hasher.update((topic.len() as u64).to_le_bytes());
    hasher.update(topic.as_bytes());
    hasher.update(payload);
    hasher.finalize().into()
}

/// `sql` with `values` bound in order.
fn bind<'q, DB: SqlDialect>(
    sql: &'q str,
    values: &[Value<'q>],
) -> Query<'q, DB, DB::Arguments<'q>> {
    values
        .iter()
        .fold(sqlx::query(sql), |query, value| DB::bind(query, *value))
}

fn database(action: &'static str) -> impl FnOnce(sqlx::Error) -> OutboxError {
    move |source| OutboxError::Database { action, source }
}

/// Now, in microseconds since the Unix epoch.
fn now() -> i64 {
    epoch_micros(SystemTime::now())
}

/// `duration` in microseconds, saturating.
fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}
