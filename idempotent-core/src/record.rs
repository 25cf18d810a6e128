//! Records, claims and the tokens that fence them.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::key::Fingerprint;

/// A random 128-bit token naming one owner of a claim.
///
/// `complete`, `release` and `renew` succeed only while the caller's token still owns the
/// record; a worker whose lease passed and whose record was taken over holds a stale token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token([u8; 16]);

impl Token {
    /// A fresh random token.
    pub fn random() -> Token {
        Token(rand::random())
    }

    /// A token read back from a store.
    pub const fn from_bytes(bytes: [u8; 16]) -> Token {
        Token(bytes)
    }

    /// The token's bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses 32 hex digits.
    pub fn from_hex(hex_digits: &str) -> Option<Token> {
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(hex_digits, &mut bytes).ok()?;
        Some(Token(bytes))
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 32];
        let _ = hex::encode_to_slice(self.0, &mut out);
        f.write_str(std::str::from_utf8(&out).unwrap_or_default())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({self})")
    }
}

/// What [`Store::claim`](crate::Store::claim) found, in one round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// The key was free (or its previous owner's lease had passed): the caller owns it now and
    /// must `complete` or `release` it with `token`.
    Acquired {
        /// The caller's token.
        token: Token,
        /// `true` when an in-progress record whose lease had passed was taken over.
        took_over: bool,
    },
    /// The key was completed earlier: replay `output` if `fingerprint` matches the call's.
    Completed {
        /// Fingerprint of the call that produced the output.
        fingerprint: Fingerprint,
        /// The stored output, as the executor encoded it.
        output: Bytes,
        /// When the record expires, if the store says (every remote store of this crate does;
        /// `None` keeps it out of the executor's [local replay
        /// cache](crate::IdempotencyBuilder::local_cache) and out of [`Obtained::expires_at`](crate::Obtained)).
        expires_at: Option<SystemTime>,
    },
    /// Another caller owns the key and its lease has not passed.
    InProgress {
        /// Fingerprint of the owner's call.
        fingerprint: Fingerprint,
        /// How long until the owner's lease passes (zero when unknown).
        lease_remaining: Duration,
    },
}

/// A stored record, as [`Store::get`](crate::Store::get) reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Record {
    /// Claimed; the owner is running the body.
    InProgress {
        /// The owner's token.
        token: Token,
        /// Fingerprint of the owner's call.
        fingerprint: Fingerprint,
        /// When the owner's lease passes and the key becomes claimable again.
        lease_until: SystemTime,
    },
    /// Done; the output is replayed to every retry until `expires_at`.
    Completed {
        /// The token that completed it (a retried `complete` by that token is a no-op).
        token: Token,
        /// Fingerprint of the call that produced the output.
        fingerprint: Fingerprint,
        /// The stored output.
        output: Bytes,
        /// When the record expires.
        expires_at: SystemTime,
    },
}

impl Record {
    /// The fingerprint of the call that created the record.
    pub fn fingerprint(&self) -> &Fingerprint {
        match self {
            Record::InProgress { fingerprint, .. } | Record::Completed { fingerprint, .. } => {
                fingerprint
            }
        }
    }

    /// The token of the record's owner (or of the owner that completed it).
    pub fn token(&self) -> &Token {
        match self {
            Record::InProgress { token, .. } | Record::Completed { token, .. } => token,
        }
    }
}

/// A live completed record as an in-process store holds it, lent out by
/// [`Store::claim_now`](crate::Store::claim_now) so that a replay copies nothing it does not
/// return.
pub trait HeldRecord: Send + Sync {
    /// Fingerprint of the call that produced the output.
    fn fingerprint(&self) -> &Fingerprint;

    /// The stored output, as the executor encoded it.
    fn output(&self) -> &Bytes;

    /// The typed value the store kept beside the output when it was completed with
    /// [`Completion::keep`](crate::Completion::keep), if it kept one.
    fn kept(&self) -> Option<&(dyn Any + Send + Sync)> {
        None
    }

    /// When the record expires, if the store knows (for
    /// [`Obtained::expires_at`](crate::Obtained): asked by calls that tell how their output
    /// was obtained, and by [`ClaimNow::into_claim`]).
    fn expires_at(&self) -> Option<SystemTime> {
        None
    }
}

/// What [`Store::claim_now`](crate::Store::claim_now) answered.
#[non_exhaustive]
pub enum ClaimNow {
    /// The answer `claim` would give.
    Claim(Claim),
    /// A live completed record, lent as the store holds it (the same answer as
    /// [`Claim::Completed`], without copying the output).
    Held(Arc<dyn HeldRecord>),
}

impl ClaimNow {
    /// The answer as a [`Claim`] (a held record becomes [`Claim::Completed`]).
    pub fn into_claim(self) -> Claim {
        match self {
            ClaimNow::Claim(claim) => claim,
            ClaimNow::Held(held) => Claim::Completed {
                fingerprint: *held.fingerprint(),
                output: held.output().clone(),
                expires_at: held.expires_at(),
            },
        }
    }
}

impl From<Claim> for ClaimNow {
    fn from(claim: Claim) -> Self {
        ClaimNow::Claim(claim)
    }
}

impl fmt::Debug for ClaimNow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimNow::Claim(claim) => f.debug_tuple("Claim").field(claim).finish(),
            ClaimNow::Held(held) => f
                .debug_struct("Held")
                .field("fingerprint", held.fingerprint())
                .field("output_len", &held.output().len())
                .field("kept", &held.kept().is_some())
                .finish(),
        }
    }
}

#[cfg(any(feature = "memory", feature = "conformance"))]
pub(crate) use crate::kept::Keep;
