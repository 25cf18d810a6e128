//! Runtime of the [`idempotency`](https://docs.rs/idempotency) SDK: canonical keys and
//! fingerprints, records and claims, the [`Store`] trait and its backends, and the
//! [`Idempotency`] executor that `#[idempotent]` expands to.
//!
//! Depend on `idempotency`, not on this crate: it re-exports everything here.
//!
//! # Canonical encoding
//!
//! Keys and fingerprints are SHA-256 digests of a canonical encoding of `Serialize` values,
//! streamed into the hasher without an intermediate buffer. It is stable across processes,
//! machines, releases and map iteration order: integer widths do not matter, `-0.0` is `0.0`,
//! newtypes are transparent, struct names are ignored (field and variant names count), and a
//! map's digest does not depend on its iteration order (its entries are hashed one by one and
//! their digests sorted). Hashing allocates nothing for maps of up to 32 entries.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]

pub mod broker;
mod canonical;
#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
pub mod consumer;
mod encoding;
mod error;
mod executor;
mod global;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
mod kept;
mod key;
pub mod metrics;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite")))
)]
pub mod outbox;
pub mod output;
mod protocol;
mod record;
pub mod retry;
mod sink;
pub mod steps;
pub mod store;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod test_util;
#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod testing;
mod trace;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite")))
)]
pub mod transaction;
pub mod versioning;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use async_trait::async_trait;
pub use bytes::Bytes;

pub use canonical::CanonicalError;
pub use error::{BoxError, CircuitOpen, CodecOp, Error, NotStored, StoreError, StoreOp};
pub use executor::{
    Call, How, Idempotency, IdempotencyBuilder, Inspection, Obtained, ShutdownTimedOut,
    StoredOutcome,
};
pub use global::{default_idempotency, set_default, set_default_store, shutdown_default};
pub use kept::Keep;
pub use key::{Digest, DigestBuilder, Fingerprint, HexDigest, Key, Namespace};
#[allow(deprecated)]
pub use output::{DropErrors, StoreErrors};
pub use output::{OutputMode, OutputsAndErrors, OutputsOnly};
pub use protocol::defaults;
pub use protocol::{CallOptions, InProgressPolicy};
pub use record::{Claim, ClaimNow, HeldRecord, Record, Token};
pub use store::{ClaimRequest, Completion, MarkSwap, Store};

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use store::memory::{MemoryStore, MemoryStoreBuilder};

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use store::redis::{
    RedisEvictionPolicyError, RedisPrefixError, RedisStore, RedisStoreBuilder, SentinelConnection,
};

/// The [redis-rs](https://docs.rs/redis) client the Redis store is built on, re-exported so
/// that connection types match the store's.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use ::redis;

// docs.rs shows the feature from the re-exported items' own `doc(cfg)`.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub use store::sql::{SqlConfigError, SqlDialect, SqlStore, SqlStoreBuilder, sqlx};

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::sql::PostgresStore;

#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub use store::sql::MySqlStore;

#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use store::sql::SqliteStore;
