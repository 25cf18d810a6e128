//! Kept values: the typed replay cache of an in-process store.
//!
//! An in-process store (the memory store) may keep, beside a completed record's bytes, the
//! typed value those bytes decode to, so that each replay clones the value instead of
//! decoding the bytes. Three pieces make it:
//!
//! * [`Keep`] — handed to a store in [`Completion::keep`](crate::Completion::keep): how to
//!   decode the stored bytes into the value to keep (the store calls it, on the first replay);
//! * [`Keeper`] — a call's side: a `Keep` for its output type, and how to take a clone of a
//!   kept value back out of [`HeldRecord::kept`](crate::HeldRecord::kept);
//! * [`Probe`] with [`KeepByClone`] / [`KeepByDecoding`] — how `#[idempotent]` picks a
//!   `Keeper` only for output types that are `Clone`, by autoref, so `Clone` is never required.
//!
//! The value is decoded from the stored bytes, not copied from what the body returned, so a
//! replay from a kept value returns what decoding the record returns, as every other store
//! replays, as long as the type's `Clone` copies faithfully and its `Deserialize` gives the
//! same value for the same bytes. Replays share nothing mutable unless the type does (an
//! `Arc<Mutex<_>>` field is one value shared by every replay's clone).

use std::any::Any;
use std::fmt;

use serde::de::DeserializeOwned;

use crate::output::envelope;

/// How to decode a stored output into the typed value an in-process store keeps beside it, so
/// that its replays clone the value instead of decoding the bytes. Given by the executor to
/// [`Completion::keep`](crate::Completion::keep); the memory store decodes on
/// the record's first replay.
///
/// The value is decoded from the stored bytes, not copied from what the body returned, so a
/// replay from a kept value returns what decoding the record returns, as every other store
/// replays, as long as the type's `Clone` copies faithfully and its `Deserialize` gives the
/// same value for the same bytes.
#[derive(Clone, Copy)]
pub struct Keep {
    decode: fn(&[u8]) -> Option<Box<dyn Any + Send + Sync>>,
}

impl Keep {
    pub(crate) const fn new(decode: fn(&[u8]) -> Option<Box<dyn Any + Send + Sync>>) -> Keep {
        Keep { decode }
    }

    /// The typed value `output` holds (`None` when it holds none to keep, such as a stored
    /// error).
    pub fn value(self, output: &[u8]) -> Option<Box<dyn Any + Send + Sync>> {
        (self.decode)(output)
    }
}

impl fmt::Debug for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keep").finish_non_exhaustive()
    }
}

/// How a call replays the value an in-process store kept beside a completed record:
/// `#[idempotent]` builds one for an output type that is `Clone`, and
/// [`Call::run`](crate::Call::run) replays without one, by decoding.
pub struct Keeper<T> {
    pub(crate) take: fn(&(dyn Any + Send + Sync)) -> Option<T>,
    pub(crate) keep: Keep,
}

impl<T> Clone for Keeper<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Keeper<T> {}

impl<T> fmt::Debug for Keeper<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keeper").finish_non_exhaustive()
    }
}

impl<T: Clone + DeserializeOwned + Send + Sync + 'static> Keeper<T> {
    /// Keeps `Ok` outputs as decoded `T`s, and replays clones of them.
    pub const fn new() -> Keeper<T> {
        Keeper {
            take: |kept| kept.downcast_ref::<T>().cloned(),
            keep: Keep::new(|stored| {
                envelope::decode_ok::<T>(stored)
                    .map(|value| Box::new(value) as Box<dyn Any + Send + Sync>)
            }),
        }
    }
}

impl<T: Clone + DeserializeOwned + Send + Sync + 'static> Default for Keeper<T> {
    fn default() -> Self {
        Keeper::new()
    }
}

/// Picks, by autoref, a `Keeper` for an output type that is `Clone` (and `Send` and `Sync`),
/// and none for any other: `(&Probe::<T>::new()).__idempotency_keeper()` finds
/// [`KeepByClone`]'s method on `Probe<T>` when `T` has those bounds, and [`KeepByDecoding`]'s
/// on `&Probe<T>` otherwise.
///
/// Method resolution ignores lifetimes, so a `Clone` type that is not `'static` would pick
/// [`KeepByClone`] and then fail to compile; the macro therefore uses the probe only where the
/// output type is known to be `'static` (its check stage decides).
pub struct Probe<T>(core::marker::PhantomData<fn() -> T>);

impl<T> Default for Probe<T> {
    fn default() -> Self {
        Probe::new()
    }
}

impl<T> fmt::Debug for Probe<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Probe")
    }
}

impl<T> Probe<T> {
    /// The probe.
    #[inline(always)]
    pub const fn new() -> Probe<T> {
        Probe(core::marker::PhantomData)
    }
}

/// The probe's pick for a `Clone` output type.
pub trait KeepByClone<T> {
    /// A keeper that replays clones of the kept value.
    fn __idempotency_keeper(&self) -> Option<Keeper<T>>;
}

impl<T: Clone + DeserializeOwned + Send + Sync + 'static> KeepByClone<T> for Probe<T> {
    #[inline(always)]
    fn __idempotency_keeper(&self) -> Option<Keeper<T>> {
        Some(Keeper::new())
    }
}

/// The probe's pick for any other output type.
pub trait KeepByDecoding<T> {
    /// No keeper: replays decode the stored output.
    fn __idempotency_keeper(&self) -> Option<Keeper<T>>;
}

impl<T> KeepByDecoding<T> for &Probe<T> {
    #[inline(always)]
    fn __idempotency_keeper(&self) -> Option<Keeper<T>> {
        None
    }
}
