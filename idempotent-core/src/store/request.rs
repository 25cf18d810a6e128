//! What the executor hands a [`Store`](crate::Store) besides the key: the arguments of
//! `claim` and of `complete`, each one value, so that a store's methods read as one line and a
//! new argument does not change every store's signature.

use std::time::Duration;

use bytes::Bytes;

use crate::kept::Keep;
use crate::key::Fingerprint;
use crate::record::Token;

/// What [`Store::claim`](crate::Store::claim) writes if the key is free: the call's
/// fingerprint and how long its lease lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The fingerprint of the claiming call's arguments, stored with the in-progress record.
    pub fingerprint: Fingerprint,
    /// How long the claim owns the key before another claim may take it over.
    pub lease: Duration,
}

impl ClaimRequest {
    /// A claim with `fingerprint` for `lease`.
    pub const fn new(fingerprint: Fingerprint, lease: Duration) -> ClaimRequest {
        ClaimRequest { fingerprint, lease }
    }
}

/// What [`Store::complete`](crate::Store::complete) records: the owner's token, its
/// fingerprint, the encoded output and how long to keep it.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The token the claim returned: the completion is fenced by it.
    pub token: Token,
    /// The fingerprint the owner claimed with.
    pub fingerprint: Fingerprint,
    /// The output, as the executor encoded it.
    pub output: Bytes,
    /// How long the completed record is replayed.
    pub ttl: Duration,
    /// Set by an executor that can replay a typed value: a store that lends its completed
    /// records through [`claim_now`](crate::Store::claim_now) may keep `keep.value(&output)`
    /// beside the output and lend it as [`HeldRecord::kept`](crate::HeldRecord::kept). Other
    /// stores ignore it.
    pub keep: Option<Keep>,
}

/// What [`Store::swap_mark`](crate::Store::swap_mark) writes: `new`, kept for `ttl`, if the
/// mark still holds `expected`. Named fields, so that the value expected and the value written
/// (both bytes) cannot be swapped by mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkSwap<'a> {
    /// What the mark must hold for the swap to happen; `None`: there must be no mark.
    pub expected: Option<&'a [u8]>,
    /// The mark's new value.
    pub new: &'a [u8],
    /// How long the new value is kept.
    pub ttl: Duration,
}

impl<'a> MarkSwap<'a> {
    /// `new` for `ttl` in place of `expected`.
    pub const fn new(expected: Option<&'a [u8]>, new: &'a [u8], ttl: Duration) -> MarkSwap<'a> {
        MarkSwap { expected, new, ttl }
    }
}

impl Completion {
    /// The completion of the record owned by `token` with `output`, kept for `ttl`.
    pub fn new(token: Token, fingerprint: Fingerprint, output: Bytes, ttl: Duration) -> Completion {
        Completion {
            token,
            fingerprint,
            output,
            ttl,
            keep: None,
        }
    }

    /// The same, with a typed value to keep beside the output (see [`Completion::keep`]).
    pub fn keeping(self, keep: Option<Keep>) -> Completion {
        Completion { keep, ..self }
    }
}
