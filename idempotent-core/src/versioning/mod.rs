//! Optimistic versioning: a value with the version it was read at, a [`VersionConflict`] when
//! someone else updated it in between, and [`retry_on_conflict`] to read, change and write
//! again until the write lands.
//!
//! Every update names the version it was computed from and bumps it by one; an update whose
//! version is no longer current changes nothing and fails with a conflict, so two concurrent
//! read-modify-write cycles can never silently overwrite each other (no lost update).
//!
//! ```
//! use std::sync::Mutex;
//! use idempotent_core::retry::RetryPolicy;
//! use idempotent_core::versioning::{retry_on_conflict, VersionConflict, Versioned};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), VersionConflict> {
//! let account = Mutex::new(Versioned::new(100u64, 1)); // balance 100 at version 1
//!
//! let read = account.lock().unwrap().clone();
//! // Another writer gets in first:
//! account.lock().unwrap().replace(read.version, read.value + 5)?;
//! // Our write, computed from version 1, is refused instead of overwriting the other one:
//! let stale = account.lock().unwrap().replace(read.version, read.value - 30);
//! assert_eq!(stale, Err(VersionConflict { expected: 1, current: Some(2) }));
//!
//! // Read, compute and write again until it lands:
//! let version = retry_on_conflict(&RetryPolicy::new(), || async {
//!     let read = account.lock().unwrap().clone();
//!     account.lock().unwrap().replace(read.version, read.value - 30)
//! })
//! .await?;
//! assert_eq!(version, 3);
//! assert_eq!(account.lock().unwrap().value, 75);
//! # Ok(())
//! # }
//! ```
//!
//! For SQL rows, `sql::VersionedTable` runs the compare-and-set as one `UPDATE … WHERE id =
//! ? AND version = ?` (features `postgres`, `mysql`, `sqlite`); over HTTP, `http` maps
//! versions to `ETag` and `If-Match`, and a stale `If-Match` to `412 Precondition Failed`
//! (feature `axum`).

use std::future::Future;

use crate::retry::{RetryPolicy, Retryable};

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite")))
)]
pub mod sql;

/// A value and the version it was read at.
///
/// Versions start wherever the storage starts them (the SQL helpers use the row's `version`
/// column) and go up by one with every update.
///
/// ```
/// use idempotent_core::versioning::Versioned;
///
/// let mut doc = Versioned::new(String::from("draft"), 1);
/// let version = doc.update(1, |text| text.push_str(" v2")).unwrap();
/// assert_eq!((doc.value.as_str(), version), ("draft v2", 2));
/// assert!(doc.update(1, |text| text.clear()).is_err()); // version 1 is stale now
/// assert_eq!(doc.value, "draft v2");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// The version the value was read at.
    pub version: i64,
}

impl<T> Versioned<T> {
    /// `value` at `version`.
    pub const fn new(value: T, version: i64) -> Versioned<T> {
        Versioned { value, version }
    }

    /// `Ok` when `expected` is the current version, else the conflict to report.
    pub fn check(&self, expected: i64) -> Result<(), VersionConflict> {
        if expected == self.version {
            Ok(())
        } else {
            Err(VersionConflict {
                expected,
                current: Some(self.version),
            })
        }
    }

    /// Compare-and-set in memory: if `expected` is the current version, apply `change` and
    /// bump the version; return the new version. Otherwise nothing changes.
    pub fn update(
        &mut self,
        expected: i64,
        change: impl FnOnce(&mut T),
    ) -> Result<i64, VersionConflict> {
        self.check(expected)?;
        change(&mut self.value);
        self.version += 1;
        Ok(self.version)
    }

    /// Compare-and-set in memory with a new value; returns the new version.
    pub fn replace(&mut self, expected: i64, value: T) -> Result<i64, VersionConflict> {
        self.update(expected, |current| *current = value)
    }

    /// Borrows the value, keeping the version.
    pub fn as_ref(&self) -> Versioned<&T> {
        Versioned {
            value: &self.value,
            version: self.version,
        }
    }

    /// Maps the value, keeping the version.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Versioned<U> {
        Versioned {
            value: f(self.value),
            version: self.version,
        }
    }

    /// The value, without its version.
    pub fn into_inner(self) -> T {
        self.value
    }
}

/// An update named a version that is no longer current: someone else updated the value since
/// it was read. Nothing was changed; read again, recompute and retry
/// ([`retry_on_conflict`]), or report it (HTTP `412 Precondition Failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", conflict_message(*expected, *current))]
pub struct VersionConflict {
    /// The version the update was computed from.
    pub expected: i64,
    /// The version found instead, when known; `None` when the value no longer exists.
    pub current: Option<i64>,
}

fn conflict_message(expected: i64, current: Option<i64>) -> String {
    match current {
        Some(current) => format!(
            "version conflict: the update expected version {expected}, but the current version is {current}"
        ),
        None => format!(
            "version conflict: the update expected version {expected}, but the value no longer exists"
        ),
    }
}

impl Retryable for VersionConflict {
    /// Always: a fresh read gives a current version to retry with.
    fn is_retryable(&self) -> bool {
        true
    }
}

/// Error types that may be a [`VersionConflict`], so [`retry_on_conflict`] knows which of
/// them to retry.
///
/// ```
/// use idempotent_core::versioning::{AsVersionConflict, VersionConflict};
///
/// #[derive(Debug)]
/// enum SaveError { Conflict(VersionConflict), Invalid(String) }
///
/// impl AsVersionConflict for SaveError {
///     fn version_conflict(&self) -> Option<&VersionConflict> {
///         match self { SaveError::Conflict(conflict) => Some(conflict), _ => None }
///     }
/// }
/// ```
pub trait AsVersionConflict {
    /// The conflict, if this error is one.
    fn version_conflict(&self) -> Option<&VersionConflict>;
}

impl AsVersionConflict for VersionConflict {
    fn version_conflict(&self) -> Option<&VersionConflict> {
        Some(self)
    }
}

/// Runs `attempt` (read, compute, compare-and-set) again after each [`VersionConflict`], with
/// `policy`'s backoff and full jitter, until it succeeds, fails otherwise, or the policy's
/// bounds are reached (then the last conflict is returned).
///
/// Each attempt must read the current value afresh: retrying a write with the same stale
/// version can only conflict again.
///
/// ```
/// use std::sync::Mutex;
/// use idempotent_core::retry::{ManualClock, RetryPolicy};
/// use idempotent_core::versioning::{retry_on_conflict, Versioned};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let counter = Mutex::new(Versioned::new(0u32, 0));
/// let mut interfere = 2; // another writer wins the first two rounds
/// let clock = ManualClock::new();
/// let policy = RetryPolicy::new().clock(clock.clone());
/// let version = retry_on_conflict(&policy, || {
///     let read = counter.lock().unwrap().clone();
///     if interfere > 0 {
///         interfere -= 1;
///         counter.lock().unwrap().value += 10;
///         counter.lock().unwrap().version += 1;
///     }
///     let outcome = counter.lock().unwrap().replace(read.version, read.value + 1);
///     async move { outcome }
/// })
/// .await
/// .unwrap();
/// assert_eq!((counter.lock().unwrap().value, version), (21, 3));
/// assert_eq!(clock.sleeps().len(), 2);
/// # }
/// ```
pub async fn retry_on_conflict<T, E, F, Fut>(policy: &RetryPolicy, attempt: F) -> Result<T, E>
where
    E: AsVersionConflict,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    policy
        .retry_if(|error: &E| error.version_conflict().is_some(), attempt)
        .await
}
