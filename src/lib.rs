//! Make async functions, HTTP handlers and message consumers **idempotent**: a retried call
//! (network blip, double click, redelivered message, crashed worker) has its effect at most
//! once, and every retry gets the first call's result back.
//!
//! ```
//! use idempotency::idempotent;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize)]
//! struct ChargeRequest { order_id: String, amount_cents: u64 }
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct Receipt { charge_id: u64 }
//!
//! #[derive(Debug, thiserror::Error)]
//! enum PaymentError {
//!     #[error(transparent)]
//!     Idempotency(#[from] idempotency::Error),
//! }
//!
//! #[idempotent(key = req.order_id, ttl = "24h")]
//! async fn charge(req: ChargeRequest) -> Result<Receipt, PaymentError> {
//!     Ok(Receipt { charge_id: rand_id() })         // runs once per order_id
//! }
//! # fn rand_id() -> u64 { std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), PaymentError> {
//! let first = charge(ChargeRequest { order_id: "A-1".into(), amount_cents: 1999 }).await?;
//! let retry = charge(ChargeRequest { order_id: "A-1".into(), amount_cents: 1999 }).await?;
//! assert_eq!(first, retry); // the retry was replayed, not charged again
//! # Ok(())
//! # }
//! ```
//!
//! The attribute hashes the arguments into a key and a fingerprint, claims the key in a
//! [`Store`] in one round trip, runs the body once, stores its output and replays it to every
//! retry. The same machinery is available without the macro through [`Idempotency`].
//!
//! | situation | what the caller gets | store round trips |
//! |---|---|---|
//! | first call | the body's output (stored) | 2 (claim, complete) |
//! | retry of a completed call | the stored output, replayed | 1 |
//! | retry while the first still runs | waits for its output (or `InProgress` with `reject`) | — |
//! | same key, other arguments | [`Error::KeyReused`]; the body does not run | 1 |
//! | body returned `Err` | that error; nothing stored, a retry runs again | 2 (claim, release) |
//! | body returned, output cannot be stored | its own result; retries get [`Error::OutputNotStored`], the body does not run again | 2 (claim, complete) |
//! | body runs past its `lease` | the lease is renewed while it runs, up to `max_run` | +1 a renewal |
//! | call cancelled mid-body | the claim is kept until its `lease` passes (the effect may have happened) | 1 |
//! | call cancelled after the body returned | the output is recorded in the background ([`Idempotency::shutdown`] waits for it) | 2 |
//! | store unreachable | [`Error::Store`]; the body does not run (fail closed) | — |
//! | owner crashed, or hung past `max_run` | after its `lease`, the next call takes over and runs the body | — |
//!
//! # Features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `macros` | yes | the `#[idempotent]` attribute |
//! | `memory` | yes | [`MemoryStore`], the in-process default store (moka) |
//! | `tracing` | no | spans and events for claim, replay, execute, release, takeover, store errors |
//! | `redis` | no | `RedisStore`: Redis and Redis Cluster, one-command claims, Lua-fenced completions, one key a record |
//! | `postgres`, `mysql`, `sqlite` | no | `SqlStore` (`PostgresStore`, `MySqlStore`, `SqliteStore`): one table, `migrate()`, expiry by column and sweeper, and the record in the caller's transaction (`transaction = tx`) |

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

pub use idempotent_core::{
    BoxError, Bytes, Call, CallOptions, CanonicalError, CircuitOpen, Claim, ClaimNow, ClaimRequest,
    CodecOp, Completion, Digest, DigestBuilder, Error, Fingerprint, HeldRecord, HexDigest, How,
    Idempotency, IdempotencyBuilder, InProgressPolicy, Inspection, Keep, Key, MarkSwap, Namespace,
    NotStored, Obtained, OutputMode, OutputsAndErrors, OutputsOnly, Record, ShutdownTimedOut,
    Store, StoreError, StoreOp, StoredOutcome, Token, async_trait, default_idempotency, defaults,
    output, set_default, set_default_store, shutdown_default, store,
};

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub use idempotent_core::{conformance, conformance_tests, testing};

pub use idempotent_core::consumer::{self, Consumer};
pub use idempotent_core::retry::{self, CircuitBreaker, IdempotencyKey, RetryPolicy};
/// Durable multi-step operations: journaled steps, derived keys, the completer.
pub use idempotent_core::steps;
pub use idempotent_core::versioning::{self, VersionConflict, Versioned, retry_on_conflict};
#[allow(deprecated)]
pub use idempotent_core::{DropErrors, StoreErrors};

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use idempotent_core::{MemoryStore, MemoryStoreBuilder};

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use idempotent_core::{
    RedisEvictionPolicyError, RedisPrefixError, RedisStore, RedisStoreBuilder, SentinelConnection,
    redis,
};

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite")))
)]
pub use idempotent_core::{
    SqlConfigError, SqlDialect, SqlStore, SqlStoreBuilder, outbox, sqlx, transaction,
};

/// Publishing to a broker with its own deduplication (the outbox relay's [`Publisher`]s;
/// feature `nats`: JetStream).
///
/// [`Publisher`]: broker::Publisher
pub use idempotent_core::broker;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use idempotent_core::PostgresStore;

#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub use idempotent_core::MySqlStore;

#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use idempotent_core::SqliteStore;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use idempotent_core::http;

/// The metrics (feature `metrics`): their names, kinds and labels.
pub use idempotent_core::metrics;

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub use idempotent_core::test_util;

/// Makes an `async fn` idempotent: it runs at most once per key, and every retry gets the
/// first call's output back.
///
/// ```
/// # use idempotency::idempotent;
/// # #[derive(Debug, thiserror::Error)] #[error(transparent)]
/// # struct AppError(#[from] idempotency::Error);
/// #[idempotent(ttl = "1h")]
/// async fn reserve_stock(sku: String, quantity: u32) -> Result<u64, AppError> {
///     Ok(42) // reservation id; runs once per (sku, quantity) for an hour
/// }
/// ```
///
/// # Requirements
///
/// * an `async fn` (free function, method — `self` is never hashed — generic function, or a
///   method inside an `#[async_trait]` impl);
/// * returning `Result<T, E>` where `T: Serialize + DeserializeOwned` (stored and replayed)
///   and `E: From<idempotency::Error>` (how the call reports key reuse, store failures, …);
/// * every argument not listed in `skip(..)` is `Serialize` (references too: `&str`, `&T`).
///
/// # What is hashed
///
/// The **fingerprint** is SHA-256 of the canonical encoding of every non-skipped argument, in
/// order (their values, not their names).
/// The **key** is `{namespace}:{version}:{sha256(key material)}`, where the material is the
/// `key = …` expression, or the arguments when `key` is not given. A stored record whose
/// fingerprint differs from the call's is a reused key: the call fails with
/// [`Error::KeyReused`] and the body does not run.
///
/// # Options
///
/// ## `key = <expr>`
/// What identifies the operation, e.g. an order id or a client's `Idempotency-Key`. Without
/// it, the arguments themselves are the key.
///
/// ```
/// # use idempotency::idempotent;
/// # #[derive(serde::Serialize)] struct Order { id: String, total: u64 }
/// # #[derive(Debug, thiserror::Error)] #[error(transparent)] struct AppError(#[from] idempotency::Error);
/// #[idempotent(key = order.id)]
/// async fn place(order: Order) -> Result<String, AppError> { Ok(order.id) }
/// ```
///
/// ## `ttl = "24h"` / `ttl = <Duration expr>`
/// How long the output is replayed (default 24 h). A literal is checked at compile time
/// (`"15m"`, `"30s"`, `"1500ms"`, `"7days"`); an expression is evaluated per call.
///
/// ```
/// # use idempotency::idempotent;
/// # use std::time::Duration;
/// # #[derive(Debug, thiserror::Error)] #[error(transparent)] struct AppError(#[from] idempotency::Error);
/// const SESSION: Duration = Duration::from_secs(900);
///
/// #[idempotent(ttl = SESSION)]
/// async fn open_session(user: u64) -> Result<String, AppError> { Ok(format!("s-{user}")) }
/// ```
///
/// ## `lease = "30s"`
/// How long a claim holds before another caller may take it over (default 30 s). While the
/// body runs, the owner renews it every third of it (up to `max_run`), so the lease is how
/// long a crashed owner blocks its key, not how long the body may run.
///
/// ```
/// # use idempotency::idempotent;
/// # #[derive(Debug, thiserror::Error)] #[error(transparent)] struct AppError(#[from] idempotency::Error);
/// #[idempotent(lease = "2m")]
/// async fn export_report(month: u32) -> Result<String, AppError> { Ok(format!("report-{month}")) }
/// ```
///
/// ## `max_run = "15m"`
/// How long the owner keeps renewing its lease while the body runs (default 15 min). A body
/// still running after it can be taken over once its lease passes, and its own result is then
/// refused with [`Error::LeaseLost`]; so a hung body blocks its key for `max_run` + `lease` at
/// most (plus a third of the lease, the renewal period). A body that blocks its thread (a
/// sync client, heavy CPU work) cannot renew while it blocks: run such work with
/// `tokio::task::spawn_blocking`.
///
/// ```
/// # use idempotency::idempotent;
/// # #[derive(Debug, thiserror::Error)] #[error(transparent)] struct AppError(#[from] idempotency::Error);
/// #[idempotent(lease = "10s", max_run = "2m")]
/// async fn settle(batch: u32) -> Result<u32, AppError> { Ok(batch) }
/// ```
///
/// ## `executor = <expr>` (or `store = <expr>`)
/// The [`Idempotency`] executor to use (any expression that borrows as `&Idempotency`, such
/// as `self.idempotency` or `&*STATE`); default: the process default store
/// ([`set_default_store`], else an in-process [`MemoryStore`]). With `transaction = tx` it
/// is the `SqlStore` of the transaction's database instead (see below). `store = …` is
/// another name for the same option, kept for existing code; give one of the two.
///
/// ```
/// # use idempotency::{idempotent, Idempotency, MemoryStore};
/// # #[derive(Debug, thiserror::Error)] #[error(transparent)] struct AppError(#[from] idempotency::Error);
/// struct Payments { idempotency: Idempotency }
///
/// impl Payments {
///     #[idempotent(executor = self.idempotency)]
///     async fn refund(&self, charge_id: u64) -> Result<u64, AppError> { Ok(charge_id) }
/// }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let payments = Payments { idempotency: Idempotency::new(MemoryStore::new()) };
/// assert_eq!(payments.refund(7).await.unwrap(), 7);
/// # }
/// ```
///
/// ## `skip(a, b)`
/// Arguments left out of the key and fingerprint: clients, connections, configuration.
///
/// ```
/// # use idempotency::idempotent;
/// # #[derive(Debug, thiserror::Error)] #[error(transparent)] struct AppError(#[from] idempotency::Error);
/// # struct Gateway;
/// #[idempotent(skip(gateway))]
/// async fn charge(order_id: String, gateway: &Gateway) -> Result<u64, AppError> { Ok(1) }
/// ```
///
/// ## `name = "…"` and `version = N`
/// The namespace defaults to the function's module path and name; `name` fixes it so records
/// survive a rename or a move. Bump `version` when the function's meaning or output type
/// changes, so old records are not replayed. Two functions that end up with the same
/// namespace and version fail with [`Error::NamespaceCollision`] instead of sharing keys.
/// The instantiations of a generic function (and of a function in a generic impl) share one
/// namespace. Where the output type can differ between them (it names a generic parameter of
/// the function or of the impl, `Self`, or an alias), its name is part of the fingerprint, so
/// a record written by one instantiation is refused to another with [`Error::KeyReused`],
/// never replayed as the wrong type. Elsewhere the output type stays out: moving or renaming
/// it changes no key and no fingerprint. README, "Changing an idempotent function safely",
/// lists what does.
///
/// ```
/// # use idempotency::idempotent;
/// # #[derive(Debug, thiserror::Error)] #[error(transparent)] struct AppError(#[from] idempotency::Error);
/// #[idempotent(name = "billing.charge", version = 2)]
/// async fn charge(order_id: String) -> Result<u64, AppError> { Ok(2) }
/// ```
///
/// ## `on_in_progress = wait | reject`
/// A duplicate that arrives while the first call runs waits for its output (`wait`, the
/// default, bounded by the executor's `wait_timeout`), or fails at once with
/// [`Error::InProgress`] (`reject`), for example to answer HTTP 409.
///
/// ```
/// # use idempotency::idempotent;
/// # #[derive(Debug, thiserror::Error)] #[error(transparent)] struct AppError(#[from] idempotency::Error);
/// #[idempotent(on_in_progress = reject)]
/// async fn submit(form_id: u64) -> Result<u64, AppError> { Ok(form_id) }
/// ```
///
/// ## `store_errors`
/// By default an `Err` is not stored: the claim is released so a retry runs again. With
/// `store_errors`, errors that are deterministic business outcomes ("card declined") are
/// stored and replayed like outputs; `E` must then be `Serialize + DeserializeOwned` too.
///
/// ```
/// # use idempotency::idempotent;
/// #[derive(Debug, serde::Serialize, serde::Deserialize, thiserror::Error)]
/// enum ChargeError {
///     #[error("card declined")]
///     Declined,
///     #[error("{0}")]
///     Idempotency(String),
/// }
/// impl From<idempotency::Error> for ChargeError {
///     fn from(error: idempotency::Error) -> Self { ChargeError::Idempotency(error.to_string()) }
/// }
///
/// #[idempotent(store_errors)]
/// async fn charge(card: String) -> Result<u64, ChargeError> { Err(ChargeError::Declined) }
/// ```
///
/// ## `transaction = tx` (features `postgres`, `mysql`, `sqlite`)
/// `tx` is an argument holding the caller's SQL transaction (`tx: &mut sqlx::Transaction<'_,
/// DB>`), and `executor = …` (or `store = …`) names the `SqlStore` of the same database. The claim and the
/// completed record are written in `tx`, next to the body's own writes through `tx`, so they
/// commit or roll back together: a crash before the commit leaves neither, and the retry runs
/// the body once. A replay writes nothing; an `Err` deletes the claim in `tx` (drop `tx` to
/// roll the body's writes back too). `tx` is not hashed. Everything else is as above.
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # mod example {
/// use idempotency::sqlx::{self, Sqlite, Transaction};
/// use idempotency::{SqliteStore, idempotent};
///
/// #[derive(Debug, thiserror::Error)]
/// enum ShopError {
///     #[error(transparent)]
///     Idempotency(#[from] idempotency::Error),
///     #[error(transparent)]
///     Database(#[from] sqlx::Error),
/// }
///
/// #[idempotent(key = client_order_id, transaction = tx, executor = store, skip(store))]
/// async fn create_order(
///     tx: &mut Transaction<'_, Sqlite>,
///     store: &SqliteStore,
///     client_order_id: &str,
///     sku: &str,
/// ) -> Result<i64, ShopError> {
///     let id = sqlx::query_scalar("INSERT INTO orders (sku) VALUES (?) RETURNING id")
///         .bind(sku)
///         .fetch_one(&mut **tx)
///         .await?;
///     Ok(id)
/// }
///
/// pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
///     sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, sku TEXT)").execute(&pool).await?;
///     let store = SqliteStore::new(pool.clone());
///     store.migrate().await?;
///     for _retry in 0..3 {
///         let mut tx = pool.begin().await?;
///         let id = create_order(&mut tx, &store, "client-order-7", "sku-1").await?;
///         tx.commit().await?; // the order row and its record, together
///         assert_eq!(id, 1);
///     }
///     let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(&pool).await?;
///     assert_eq!(orders, 1);
///     Ok(())
/// }
/// # }
/// # #[cfg(feature = "sqlite")]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// #     tokio::runtime::Runtime::new()?.block_on(example::main())
/// # }
/// # #[cfg(not(feature = "sqlite"))]
/// # fn main() {}
/// ```
///
/// ## `crate = path`
/// Where `idempotency` is, when it is renamed or re-exported: `crate = ::my_sdk::idempotency`.
///
/// # Errors at compile time
///
/// Unknown or duplicate options (`executor` and `store` together count as a duplicate), a
/// non-`async` function, `skip` of an argument that does not exist, a return type that
/// cannot be `Result<T, E>`, an argument that is not `Serialize`, a `ttl` or `lease` literal
/// that is not a duration, and a `transaction` that names no `&mut` argument or comes without
/// `executor` are compile errors pointing at the offending token.
#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
#[doc(inline)]
pub use idempotent_macros::idempotent;

#[doc(hidden)]
pub mod __private {
    //! Used by the code `#[idempotent]` generates. **Not public API.**
    pub use idempotent_core::__private::*;
}
