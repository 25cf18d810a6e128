//! How a call's output was obtained — executed, replayed, replayed after waiting — with when it
//! was recorded and when its record expires: [`Call::run_obtained`](super::Call::run_obtained),
//! and `#[idempotent]` functions that return `Result<Obtained<T>, E>`.
//!
//! A call that is asked (either way) carries an [`Observed`]: the executor notes in it that the
//! body ran, that the call waited, and the times of the record it replayed or stored.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::kept::Probe;
use crate::output::envelope;

/// How a call's output was obtained: [`Call::run_obtained`](super::Call::run_obtained).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum How {
    /// The body ran in this call.
    Executed,
    /// An output stored by an earlier call was replayed at once.
    Replayed,
    /// Another call held the key; this one waited for it and replayed its output.
    ReplayedAfterWaiting,
}

/// An output and how it was obtained: [`Call::run_obtained`](super::Call::run_obtained), or an
/// `#[idempotent]` function declared to return `Result<Obtained<T>, E>`, whose body answers
/// [`Obtained::executed`]`(output)` and whose caller gets `how`, `recorded_at` and
/// `expires_at` filled in by the executor. Stored as the output alone.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Obtained<T> {
    /// The output, as [`Call::run`](super::Call::run) returns it.
    pub output: T,
    /// Whether the body ran in this call, or a stored output was replayed, at once or after
    /// waiting for another call that held the key.
    pub how: How,
    /// When the output was first recorded, by the clock of the process whose body produced it
    /// (for an execution, this one's). `None` for a record written by 0.1, which did not
    /// keep it, where nothing was stored (`fail_open` during an outage), and in transactional
    /// mode (`transaction = tx`), whose calls are told nothing.
    pub recorded_at: Option<SystemTime>,
    /// When the record expires and the key runs its body again: for an execution,
    /// `recorded_at` plus the call's `ttl`; for a replay, the expiry of the record that the
    /// store (or the [local replay cache](crate::IdempotencyBuilder::local_cache)) answered
    /// with. `None` where the store does not say (a store of your own whose claim leaves it
    /// out) and after waiting for a call of this same process, which hands over the output
    /// alone.
    pub expires_at: Option<SystemTime>,
}

impl<T> Obtained<T> {
    /// An output the body produced in this call: what an `#[idempotent]` function that
    /// returns `Result<Obtained<T>, E>` answers with.
    ///
    /// ```
    /// use idempotent_core::Obtained;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Clone, Serialize, Deserialize)] struct Receipt;
    /// # #[derive(Debug)] struct PaymentError;
    /// # impl From<idempotent_core::Error> for PaymentError { fn from(_: idempotent_core::Error) -> Self { PaymentError } }
    ///
    /// // #[idempotent(key = order)]
    /// async fn charge(order: u64) -> Result<Obtained<Receipt>, PaymentError> {
    ///     Ok(Obtained::executed(Receipt))
    /// }
    /// // A replay stores and reads back only the `Receipt`; its caller gets `How::Replayed`
    /// // (or `ReplayedAfterWaiting`) and the record's times.
    /// ```
    pub fn executed(output: T) -> Self {
        Obtained {
            output,
            how: How::Executed,
            recorded_at: None,
            expires_at: None,
        }
    }

    /// Whether the output was replayed (the body did not run in this call).
    pub fn replayed(&self) -> bool {
        self.how != How::Executed
    }
}

/// Stored as the output alone: the record is the same as for a function returning `T`.
impl<T: Serialize> Serialize for Obtained<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.output.serialize(serializer)
    }
}

/// Read back from a stored output, which is a replay: [`How::Replayed`] (the executor then
/// says whether it waited, and the record's times).
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obtained<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(|output| Obtained {
            output,
            how: How::Replayed,
            recorded_at: None,
            expires_at: None,
        })
    }
}

/// What the executor saw on one call's way: whether the body ran or the call waited, and the
/// times of the record it replayed or stored. Only a call that is asked carries one.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    ran: AtomicBool,
    waited: AtomicBool,
    recorded_at: OnceLock<SystemTime>,
    expires_at: OnceLock<SystemTime>,
}

impl Observed {
    /// The body is about to run in this call.
    pub(super) fn ran(&self) {
        self.ran.store(true, Ordering::Relaxed);
    }

    /// The call waits for another holding the key.
    pub(super) fn waited(&self) {
        self.waited.store(true, Ordering::Relaxed);
    }

    /// The call replays `output`, from a record that expires at `expires_at` (if known).
    pub(super) fn replayed(&self, output: &[u8], expires_at: Option<SystemTime>) {
        if let Some(at) = envelope::recorded_at(output) {
            let _ = self.recorded_at.set(at);
        }
        if let Some(at) = expires_at {
            let _ = self.expires_at.set(at);
        }
    }

    /// The body's `output` is being stored, for `ttl`.
    pub(super) fn stored(&self, output: &[u8], ttl: Duration) {
        if let Some(at) = envelope::recorded_at(output) {
            let _ = self.recorded_at.set(at);
            let _ = self.expires_at.set(at.checked_add(ttl).unwrap_or(at));
        }
    }

    /// `output`, with how it was obtained.
    pub(super) fn obtained<T>(&self, output: T) -> Obtained<T> {
        let how = if self.ran.load(Ordering::Relaxed) {
            How::Executed
        } else if self.waited.load(Ordering::Relaxed) {
            How::ReplayedAfterWaiting
        } else {
            How::Replayed
        };
        Obtained {
            output,
            how,
            recorded_at: self.recorded_at.get().copied(),
            expires_at: self.expires_at.get().copied(),
        }
    }
}

/// Notes a replay in `observed`, when the call carries one.
#[inline]
pub(super) fn observe(observed: Option<&Observed>, output: &[u8], expires_at: Option<SystemTime>) {
    if let Some(observed) = observed {
        observed.replayed(output, expires_at);
    }
}

/// How the executor tells an `#[idempotent]` function's caller how its output was obtained:
/// picked by autoref for an output type `Obtained<U>` ([`TellObtained`]), none for any other
/// ([`TellNothing`]).
pub struct Teller<T> {
    pub(crate) tell: fn(&mut T, Obtained<()>),
}

impl<T> Clone for Teller<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Teller<T> {}

impl<T> std::fmt::Debug for Teller<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Teller")
    }
}

/// The probe's pick for an output type `Obtained<U>`.
pub trait TellObtained<T> {
    /// A teller that fills in how the output was obtained.
    fn __idempotency_teller(&self) -> Option<Teller<T>>;
}

impl<U> TellObtained<Obtained<U>> for Probe<Obtained<U>> {
    #[inline(always)]
    fn __idempotency_teller(&self) -> Option<Teller<Obtained<U>>> {
        Some(Teller {
            tell: |obtained, how| {
                obtained.how = how.how;
                obtained.recorded_at = how.recorded_at;
                obtained.expires_at = how.expires_at;
            },
        })
    }
}

/// The probe's pick for any other output type.
pub trait TellNothing<T> {
    /// No teller.
    fn __idempotency_teller(&self) -> Option<Teller<T>>;
}

impl<T> TellNothing<T> for &Probe<T> {
    #[inline(always)]
    fn __idempotency_teller(&self) -> Option<Teller<T>> {
        None
    }
}
