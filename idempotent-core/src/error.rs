//! Errors: [`StoreError`] from stores, [`Error`] from the executor and the entry points.

use std::fmt;
use std::time::Duration;

use crate::key::Key;

/// A boxed error from a backend or a codec, kept as the source of ours.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a [`Store`](crate::Store) reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Fencing refused the call: the token no longer owns the record (its lease passed and
    /// another caller took it over, or it was released or removed).
    #[error("the token no longer owns the record")]
    LeaseLost,
    /// The store could not be reached (connection refused, reset, pool exhausted).
    #[error("the store could not be reached")]
    Unavailable(#[source] BoxError),
    /// The store did not answer in time.
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    /// A value under the store's prefix or table that this crate did not write, or that is
    /// damaged.
    #[error("the record is corrupt or was not written by idempotency: {detail}")]
    Corrupt {
        /// What was wrong.
        detail: String,
    },
    /// The output is larger than the store accepts.
    #[error("the output is {size} bytes, over the store's limit of {limit} bytes")]
    TooLarge {
        /// The output's size.
        size: usize,
        /// The store's limit.
        limit: usize,
    },
    /// Any other backend failure.
    #[error("the store failed")]
    Backend(#[source] BoxError),
    /// The executor's [store breaker](crate::IdempotencyBuilder::store_breaker) is open: the
    /// store failed repeatedly, so the call was refused without asking it. Not retryable at
    /// once: [`CircuitOpen::retry_after`] says when the breaker lets a probe through.
    #[error(transparent)]
    CircuitOpen(CircuitOpen),
    /// The store does not implement this (optional) operation.
    #[error("this store does not support {0}; use one of the crate's stores, or implement it")]
    Unsupported(&'static str),
    /// An operator's request the store cannot answer as given (a listing cursor that is not
    /// one the store handed out): fix the request, retrying it as it is fails again.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// A [`CircuitBreaker`](crate::retry::CircuitBreaker) refused a call: it is open after
/// repeated failures, or half-open with every probe already in flight. The call was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the circuit breaker is open after repeated failures; the call was not made (next probe in {retry_after:?})"
)]
pub struct CircuitOpen {
    pub(crate) retry_after: Duration,
}

impl CircuitOpen {
    /// How long until the breaker lets a probe through (zero when half-open: a probe is in
    /// flight and the breaker closes or opens again when it ends).
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl StoreError {
    /// Unreachable, timed out or failed: the same request may succeed later. Not a lost
    /// lease, a corrupt record, a size limit, or an open breaker (which refused the call so
    /// that it is not retried at once).
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Timeout(_) | StoreError::Backend(_)
        )
    }

    /// A backend failure, keeping its source.
    pub fn backend(error: impl Into<BoxError>) -> StoreError {
        StoreError::Backend(error.into())
    }

    /// An unreachable store, keeping its source.
    pub fn unavailable(error: impl Into<BoxError>) -> StoreError {
        StoreError::Unavailable(error.into())
    }

    /// A corrupt or foreign record.
    pub fn corrupt(detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            detail: detail.into(),
        }
    }
}

/// The store operation that failed, for [`Error::Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreOp {
    /// Claiming the key, before the body ran.
    Claim,
    /// Storing the output, after the body ran.
    Complete,
    /// Releasing the claim after the body failed.
    Release,
    /// Extending a lease.
    Renew,
    /// Reading a record.
    Get,
    /// Deleting a record.
    Remove,
    /// Reading or writing a multi-step call's journal (its [steps](crate::steps)' recovery
    /// points).
    Journal,
}

impl StoreOp {
    fn consequence(self) -> &'static str {
        match self {
            StoreOp::Claim => "; the body did not run",
            StoreOp::Complete => {
                "; the body ran but its result is not recorded, so a retry after the lease passes may run it again"
            }
            StoreOp::Release => "; the key stays claimed until its lease passes",
            StoreOp::Journal => {
                "; a step that ran is not recorded, so a retry may run it again (send its derived key downstream)"
            }
            StoreOp::Renew | StoreOp::Get | StoreOp::Remove => "",
        }
    }
}

impl fmt::Display for StoreOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreOp::Claim => "claim",
            StoreOp::Complete => "complete",
            StoreOp::Release => "release",
            StoreOp::Renew => "renew",
            StoreOp::Get => "read",
            StoreOp::Remove => "remove",
            StoreOp::Journal => "journal the steps of",
        })
    }
}

/// The encoding step that failed, for [`Error::Codec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecOp {
    /// Hashing the arguments into the fingerprint (a `Serialize` impl failed).
    HashArguments,
    /// Hashing the `key = …` material.
    HashKey,
    /// Encoding the body's output for storage (the body ran).
    EncodeOutput,
    /// Decoding a stored output into the function's return type.
    DecodeOutput,
}

impl fmt::Display for CodecOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CodecOp::HashArguments => {
                "hash the arguments (a `Serialize` impl failed; the body did not run)"
            }
            CodecOp::HashKey => "hash the `key` (a `Serialize` impl failed; the body did not run)",
            CodecOp::EncodeOutput => {
                "encode the output for storage (the body ran; its claim was released)"
            }
            CodecOp::DecodeOutput => {
                "decode the stored output as this function's return type (if the output type changed, bump `version`)"
            }
        })
    }
}

/// Everything an idempotent call can fail with besides the body's own errors.
///
/// A function under `#[idempotent]` returns `Result<T, E>` with `E: From<Error>`, so each of
/// these reaches the caller as the function's own error type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another call with this key is running: the `reject` policy answered at once, or the
    /// `wait` policy's bound passed first.
    #[error("key `{key}` is in progress in another call; retry after {retry_after:?}")]
    InProgress {
        /// The key.
        key: Key,
        /// A hint of when the other call's lease passes.
        retry_after: Duration,
    },
    /// The key was used before with different inputs.
    #[error(
        "key `{key}` was already used with different arguments; use a new key for a new request"
    )]
    KeyReused {
        /// The key.
        key: Key,
    },
    /// The body ran longer than its lease and another call took the key over: this call's
    /// result was not stored (the other owner's is).
    #[error(
        "lost the claim on key `{key}`: the body ran past its `lease` and another call took the key over, so this result was not stored"
    )]
    LeaseLost {
        /// The key.
        key: Key,
    },
    /// The store failed.
    #[error("store failed to {op} key `{key}`{}", op.consequence())]
    Store {
        /// Which operation failed.
        op: StoreOp,
        /// The key.
        key: Key,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// Hashing, encoding or decoding failed.
    #[error("could not {op}{}", key.as_ref().map(|k| format!(" for key `{k}`")).unwrap_or_default())]
    Codec {
        /// Which step failed.
        op: CodecOp,
        /// The key, when it was known.
        key: Option<Key>,
        /// The codec's error.
        #[source]
        source: BoxError,
    },
    /// A stored record is damaged or was written by something else.
    #[error("record for key `{key}` is corrupt or foreign: {detail}")]
    CorruptRecord {
        /// The key.
        key: Key,
        /// What was wrong.
        detail: String,
    },
    /// A store refused an encoded output as over its limit. A call's owner never returns it:
    /// it records the body as run with its output not stored instead (retries get
    /// [`Error::OutputNotStored`]); it remains for code that maps a store's
    /// [`StoreError::TooLarge`] itself.
    #[error(
        "output for key `{key}` is {size} bytes, over the store's limit of {limit} bytes (`max_output_bytes`)"
    )]
    OutputTooLarge {
        /// The key.
        key: Key,
        /// The encoded output's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// An earlier call with this key ran its body and it returned, but its output could not
    /// be stored (over `max_output_bytes`, refused by the store, or its `Serialize` failed).
    /// The body had its effect, so it does not run again for this key within `ttl`, and there
    /// is no output to replay.
    #[error(
        "key `{key}` was run and its body returned, but its output was not stored ({reason}); the body does not run again for this key until its record expires (`ttl`): use a new key to run it again"
    )]
    OutputNotStored {
        /// The key.
        key: Key,
        /// Why the output was not stored.
        reason: NotStored,
    },
    /// Two different `#[idempotent]` functions share a namespace and version, so their keys
    /// could collide.
    #[error(
        "namespace `{namespace}` (version {version}) is used by two different `#[idempotent]` functions; give one of them `name = \"…\"`"
    )]
    NamespaceCollision {
        /// The namespace.
        namespace: String,
        /// The version.
        version: u32,
    },
    /// An option has a value it cannot take.
    #[error("`{option}` {problem}")]
    InvalidOption {
        /// The option.
        option: &'static str,
        /// What is wrong with its value.
        problem: &'static str,
    },
    /// A message of a numbered producer came past the next one expected: the messages
    /// between have not been processed (see
    /// [`GapPolicy`](crate::consumer::sequence::GapPolicy)). Nak it with a delay so that they
    /// come first.
    #[error(
        "producer `{producer}` sent message {received} but {expected} is next: the messages between were not processed yet; redeliver this one later"
    )]
    SequenceGap {
        /// The key of the producer's mark.
        key: Key,
        /// The producer id.
        producer: String,
        /// The sequence expected next.
        expected: u64,
        /// The sequence received.
        received: u64,
    },
    /// A [`ProducerSequence`](crate::consumer::sequence::ProducerSequence) found a number it
    /// did not store: another process publishes with the same producer id.
    #[error(
        "another process advanced producer `{producer}`'s sequence: give each running producer its own id"
    )]
    SequenceConflict {
        /// The key of the producer's sequence.
        key: Key,
        /// The producer id.
        producer: String,
    },
    /// A message's producer stamp is missing or malformed.
    #[error("bad producer stamp: {problem}")]
    InvalidStamp {
        /// What is wrong.
        problem: String,
    },
    /// No store was given and there is no default store.
    #[error(
        "no default store: enable the `memory` feature, call `idempotency::set_default_store` at start-up, or pass `store = …`"
    )]
    NoDefaultStore,
    /// The default store was set (or used) already.
    #[error(
        "the default store is already set; call `idempotency::set_default_store` once, before the first idempotent call"
    )]
    DefaultStoreAlreadySet,
}

impl Error {
    /// The key the error is about, when there is one.
    pub fn key(&self) -> Option<&Key> {
        match self {
            Error::InProgress { key, .. }
            | Error::KeyReused { key }
            | Error::LeaseLost { key }
            | Error::Store { key, .. }
            | Error::CorruptRecord { key, .. }
            | Error::OutputTooLarge { key, .. }
            | Error::OutputNotStored { key, .. }
            | Error::SequenceGap { key, .. }
            | Error::SequenceConflict { key, .. } => Some(key),
            Error::Codec { key, .. } => key.as_ref(),
            Error::NamespaceCollision { .. }
            | Error::InvalidOption { .. }
            | Error::InvalidStamp { .. }
            | Error::NoDefaultStore
            | Error::DefaultStoreAlreadySet => None,
        }
    }

    /// `true` for errors a caller may retry later with the same key and inputs.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::InProgress { .. } | Error::SequenceGap { .. } => true,
            // The body ran (and may have had its effect): a retry would run it again once the
            // claim's lease passes.
            Error::Store {
                op: StoreOp::Complete,
                ..
            } => false,
            Error::Store { source, .. } => source.is_transient(),
            _ => false,
        }
    }

    /// Maps a store error from `op` to the executor's error, keeping typed causes typed.
    pub(crate) fn from_store(op: StoreOp, key: &Key, source: StoreError) -> Error {
        match source {
            StoreError::LeaseLost => Error::LeaseLost { key: key.clone() },
            StoreError::Corrupt { detail } => Error::CorruptRecord {
                key: key.clone(),
                detail,
            },
            StoreError::TooLarge { size, limit } => Error::OutputTooLarge {
                key: key.clone(),
                size,
                limit,
            },
            source => Error::Store {
                op,
                key: key.clone(),
                source,
            },
        }
    }
}

/// Why a body's output was not stored ([`Error::OutputNotStored`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotStored {
    /// Its encoded envelope is over the limit: the executor's `max_output_bytes`, or the
    /// store's.
    TooLarge {
        /// The envelope's length in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Its `Serialize` failed or panicked.
    Unencodable {
        /// The encoder's message (at most 256 bytes of it).
        detail: String,
    },
}

impl fmt::Display for NotStored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotStored::TooLarge { size, limit } => write!(
                f,
                "it was {size} bytes, over the limit of {limit} (`max_output_bytes`)"
            ),
            NotStored::Unencodable { detail } => write!(f, "it could not be encoded: {detail}"),
        }
    }
}
