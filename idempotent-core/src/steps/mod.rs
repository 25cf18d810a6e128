//! Durable multi-step operations: named steps journaled under the call's key (recovery
//! points), keys derived per step for downstream calls, and a [`Completer`] that finishes calls
//! abandoned midway.
//!
//! A call run with [`Call::run_steps`](crate::Call::run_steps) is an ordinary idempotent call
//! (claimed, run once, its output stored and replayed), whose body gets a [`Steps`]:
//!
//! ```
//! use idempotent_core::steps::Steps;
//! use idempotent_core::{Error, Fingerprint, Idempotency, Key, MemoryStore};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct Order { id: String, cents: u64 }
//!
//! async fn checkout(order: Order, steps: Steps) -> Result<String, Error> {
//!     let hold: u64 = steps.step("reserve", || async { Ok::<_, Error>(7) }).await?;
//!     let charge_key = steps.key("charge"); // send as `Idempotency-Key` to the payment service
//!     let charge: String = steps
//!         .step("charge", || async { Ok::<_, Error>(format!("ch_{}", &charge_key[..8])) })
//!         .await?;
//!     Ok(format!("{} held {hold}, paid by {charge}", order.id))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), idempotent_core::BoxError> {
//! let idempotency = Idempotency::new(MemoryStore::new());
//! let order = Order { id: "order-1".into(), cents: 1999 };
//! let key = Key::derive("shop::checkout", 1, &order.id)?;
//! let receipt = idempotency
//!     .call(key.clone(), Fingerprint::of(&order)?)
//!     .run_steps(order.clone(), checkout)
//!     .await?;
//! let again = idempotency.call(key, Fingerprint::of(&order)?).run_steps(order, checkout).await?;
//! assert_eq!(receipt, again);
//! # Ok(())
//! # }
//! ```
//!
//! * The first time a step returns `Ok`, its output is journaled: one compare-and-set of the
//!   call's journal (a [mark](crate::Store::swap_mark) in the same store), which holds the
//!   owner's token. A run that took the key over adopts the journal first (writing its own
//!   token), so a taken-over owner's late write is refused with [`Error::LeaseLost`].
//! * A rerun (a retry after a crash or a takeover, a retry after the body returned an error,
//!   or the [`Completer`]) returns journaled steps' outputs without running them and goes on
//!   at the first step not journaled. Steps match by name, never by position.
//! * A journal written for other arguments (another fingerprint) is never used: the call
//!   fails with [`Error::KeyReused`] and no step runs.
//! * A step that failed journals nothing; its error is the body's to return.
//! * A step's effect and its journal entry are two writes: see [crash windows](#crash-windows).
//!   [`Steps::key`] gives a key per step that is the same on every run of the call, to send
//!   downstream so that a repeated remote step is deduplicated there. With a SQL store,
//!   [`Steps::local`] commits a step's own writes and its journal entry in one transaction.
//!
//! # Crash windows
//!
//! | step kind | a crash after its effect, before its journal write |
//! |---|---|
//! | `local` (SQL, in the store's database) | impossible: the effect and the entry commit together, or neither does |
//! | remote, sent with [`Steps::key`] to a service that deduplicates by it (our HTTP layer does) | the rerun sends it again with the same key; the service replays its first answer |
//! | remote, without a derived key | the rerun runs it again: the effect may repeat |
//!
//! # Round trips
//!
//! On top of a call's claim and complete: one write to start the journal (two, a read and a
//! write, to adopt an existing one), then one write per step that runs. A replayed call
//! reads no journal.
//!
//! # Where journals live, and for how long
//!
//! In the executor's store, under the call's key in the namespace `{namespace}~steps`, kept
//! for the call's `ttl` from each write, so a journal never outlives the record it belongs to.
//! In transactional mode (`#[idempotent(transaction = …)]`) every write of the body already
//! commits with the record, and a crash rolls all of it back: journal remote steps with a
//! call on the executor instead.

mod completer;
mod journal;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod local;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use completer::{Completer, CompleterHandle, CompleterPass};
use journal::{Journal, PARKED, SETTLED};

use crate::error::{CodecOp, Error, StoreError, StoreOp};
use crate::executor::{Call, Obtained};
use crate::key::{Digest, Fingerprint, Key};
use crate::record::Token;
use crate::store::{MarkSwap, Store};

/// The longest step name, in bytes.
pub const MAX_STEP_NAME: usize = 200;

/// The steps of one multi-step call: given to the body by
/// [`Call::run_steps`](crate::Call::run_steps) (see [the module](self)). Cheap to clone; clones
/// share the journal.
#[derive(Clone)]
pub struct Steps {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    key: Key,
    journal_key: Key,
    ttl: Duration,
    /// `None`: the call runs without a claim (the store failed and the executor fails open),
    /// so nothing is journaled.
    state: Option<tokio::sync::Mutex<State>>,
}

/// The journal as this owner last wrote it, and its bytes (what the next swap expects).
struct State {
    journal: Journal,
    stored: Bytes,
}

impl fmt::Debug for Steps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Steps")
            .field("key", &self.inner.key)
            .field("journaled", &self.inner.state.is_some())
            .finish_non_exhaustive()
    }
}

/// Who runs the body: its caller, or the completer (which counts attempts and keeps the
/// last error instead of settling the journal).
pub(crate) enum Driver<E> {
    Caller,
    Completer(fn(&E) -> String),
}

impl<E> Clone for Driver<E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for Driver<E> {}

impl Steps {
    /// Runs step `name`: its journaled output if a run of this call journaled one, else `run`,
    /// whose `Ok` output is journaled before it is returned. An `Err` is returned as it is and
    /// journals nothing.
    ///
    /// Errors of its own: an invalid name ([`Error::InvalidOption`]), an output that cannot be
    /// encoded or a journaled one that cannot be decoded as `T` ([`Error::Codec`]), a journal
    /// write refused because another run took the call over ([`Error::LeaseLost`]) or that
    /// failed ([`Error::Store`]; the step ran, and a rerun may run it again).
    pub async fn step<T, E, F, Fut>(&self, name: &str, run: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        check_name(name)?;
        if let Some(output) = self.journaled(name).await {
            return Ok(self.decode(&output)?);
        }
        let value = run().await?;
        let output = self.encode(&value)?;
        self.record(name, output).await?;
        Ok(value)
    }

    /// A key for the downstream call of step `name`: the same on every run of this call,
    /// different for every step and every call (64 hex digits, SHA-256 of the call's key and
    /// the name). Send it as the downstream's `Idempotency-Key`, so that a step whose effect
    /// happened but whose journal entry was lost is deduplicated there.
    pub fn key(&self, name: &str) -> String {
        derived_key(&self.inner.key, name)
    }

    /// The call's key.
    pub fn call_key(&self) -> &Key {
        &self.inner.key
    }

    /// The names of the steps journaled so far, in the order they were journaled.
    pub async fn journaled_steps(&self) -> Vec<String> {
        match &self.inner.state {
            Some(state) => state
                .lock()
                .await
                .journal
                .steps
                .iter()
                .map(|(name, _)| name.clone())
                .collect(),
            None => Vec::new(),
        }
    }

    async fn journaled(&self, name: &str) -> Option<Bytes> {
        let state = self.inner.state.as_ref()?.lock().await;
        state.journal.step(name).cloned()
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<Bytes, Error> {
        let mut out = Vec::new();
        crate::output::encode_into(&mut out, value).map_err(|error| Error::Codec {
            op: CodecOp::EncodeOutput,
            key: Some(self.inner.key.clone()),
            source: Box::new(error),
        })?;
        Ok(Bytes::from(out))
    }

    fn decode<T: DeserializeOwned>(&self, output: &[u8]) -> Result<T, Error> {
        crate::output::decode(output).map_err(|error| Error::Codec {
            op: CodecOp::DecodeOutput,
            key: Some(self.inner.key.clone()),
            source: Box::new(error),
        })
    }

    /// Journals step `name`'s output: one compare-and-set of the journal.
    async fn record(&self, name: &str, output: Bytes) -> Result<(), Error> {
        let Some(state) = &self.inner.state else {
            return Ok(());
        };
        let mut state = state.lock().await;
        self.swap(&mut state, |journal| {
            if journal.step(name).is_none() {
                journal.steps.push((name.to_owned(), output.clone()));
            }
        })
        .await
    }

    /// Makes `change` to the journal if it still holds what this owner wrote last: one
    /// compare-and-set. A journal that changed but still names this owner (a write whose answer
    /// was lost, or one a rolled-back transaction undid) is read back and changed again.
    async fn swap(&self, state: &mut State, change: impl Fn(&mut Journal)) -> Result<(), Error> {
        for first in [true, false] {
            let mut next = state.journal.clone();
            change(&mut next);
            let bytes = Bytes::from(next.encode());
            let swap = MarkSwap::new(Some(&state.stored), &bytes, self.inner.ttl);
            let swapped = self
                .inner
                .store
                .swap_mark(&self.inner.journal_key, swap)
                .await
                .map_err(|error| self.failed(error))?;
            if swapped {
                *state = State {
                    journal: next,
                    stored: bytes,
                };
                return Ok(());
            }
            if !(first && self.resync(state).await?) {
                break;
            }
        }
        Err(Error::LeaseLost {
            key: self.inner.key.clone(),
        })
    }

    /// Reads the journal back: `true` (and `state` replaced) when this owner still owns it.
    async fn resync(&self, state: &mut State) -> Result<bool, Error> {
        let stored = self
            .inner
            .store
            .load_mark(&self.inner.journal_key)
            .await
            .map_err(|error| self.failed(error))?;
        let Some(stored) = stored else {
            return Ok(false);
        };
        match Journal::decode(&stored) {
            Ok(journal)
                if journal.owner == state.journal.owner
                    && journal.fingerprint == state.journal.fingerprint =>
            {
                *state = State { journal, stored };
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn failed(&self, error: StoreError) -> Error {
        Error::from_store(StoreOp::Journal, &self.inner.key, error)
    }

    /// After the body returned an error: a caller's journal is settled (the completer leaves
    /// it; the caller got the error), the completer's keeps the error. Best effort: a failed
    /// write leaves the journal as it was.
    async fn after_error(&self, settle: bool, error: String) {
        let Some(state) = &self.inner.state else {
            return;
        };
        let mut state = state.lock().await;
        let error = truncate(error, 1024);
        let _ = self
            .swap(&mut state, |journal| {
                if settle {
                    journal.flags |= SETTLED;
                }
                journal.last_error.clone_from(&error);
            })
            .await;
    }

    /// Starts or adopts the journal of the call `key`, owned by `token`: one swap when there
    /// is none; else a read, the fingerprint compared, and a swap that writes this owner's
    /// token (and, for the completer, one more attempt).
    async fn begin(
        store: Arc<dyn Store>,
        key: Key,
        fingerprint: Fingerprint,
        token: Token,
        ttl: Duration,
        input: Bytes,
        completer: bool,
    ) -> Result<Steps, Error> {
        let journal_key = journal::key_of(&key);
        let failed = |error| Error::from_store(StoreOp::Journal, &key, error);
        let mut fresh = Journal::new(key.clone(), fingerprint, token, ttl, input);
        fresh.attempts = u32::from(completer);
        let fresh_bytes = Bytes::from(fresh.encode());
        for _ in 0..ADOPT_TRIES {
            let create = MarkSwap::new(None, &fresh_bytes, ttl);
            if store
                .swap_mark(&journal_key, create)
                .await
                .map_err(failed)?
            {
                return Ok(Steps::adopted(
                    store,
                    key,
                    journal_key,
                    ttl,
                    fresh,
                    fresh_bytes,
                ));
            }
            let Some(stored) = store.load_mark(&journal_key).await.map_err(failed)? else {
                continue;
            };
            if stored.is_empty() {
                // Cleared by the completer after its call completed, not yet expired.
                let replace = MarkSwap::new(Some(&stored), &fresh_bytes, ttl);
                if store
                    .swap_mark(&journal_key, replace)
                    .await
                    .map_err(failed)?
                {
                    let (journal, stored) = (fresh, fresh_bytes);
                    return Ok(Steps::adopted(
                        store,
                        key,
                        journal_key,
                        ttl,
                        journal,
                        stored,
                    ));
                }
                continue;
            }
            let mut journal = Journal::decode(&stored).map_err(|detail| Error::CorruptRecord {
                key: key.clone(),
                detail: format!("its steps journal: {detail}"),
            })?;
            if journal.fingerprint != fingerprint || journal.key != key {
                return Err(Error::KeyReused { key });
            }
            journal.owner = token;
            journal.flags &= !(SETTLED | PARKED);
            journal.ttl = ttl;
            if completer {
                journal.attempts = journal.attempts.saturating_add(1);
            }
            let bytes = Bytes::from(journal.encode());
            let adopt = MarkSwap::new(Some(&stored), &bytes, ttl);
            if store.swap_mark(&journal_key, adopt).await.map_err(failed)? {
                return Ok(Steps::adopted(store, key, journal_key, ttl, journal, bytes));
            }
        }
        Err(failed(StoreError::Backend(
            format!("the steps journal changed {ADOPT_TRIES} times while this call adopted it")
                .into(),
        )))
    }

    fn adopted(
        store: Arc<dyn Store>,
        key: Key,
        journal_key: Key,
        ttl: Duration,
        journal: Journal,
        stored: Bytes,
    ) -> Steps {
        Steps {
            inner: Arc::new(Inner {
                store,
                key,
                journal_key,
                ttl,
                state: Some(tokio::sync::Mutex::new(State { journal, stored })),
            }),
        }
    }
}

/// Adoption attempts before a journal that keeps changing is an error.
const ADOPT_TRIES: usize = 8;

fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_STEP_NAME {
        return Err(Error::InvalidOption {
            option: "step name",
            problem: "must be 1 to 200 bytes: name each step of a call once, the same on every run",
        });
    }
    Ok(())
}

fn truncate(mut text: String, at: usize) -> String {
    if text.len() > at {
        let mut cut = at;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// [`Steps::key`] of step `name` of the call `key`: for operators and tests, to find what a
/// step sent downstream.
pub fn derived_key(key: &Key, name: &str) -> String {
    let mut material = Vec::with_capacity(96 + name.len());
    material.extend_from_slice(b"idempotency steps key\0");
    material.extend_from_slice(key.to_string().as_bytes());
    material.push(0);
    material.extend_from_slice(name.as_bytes());
    Digest::of_bytes(&material).hex().as_str().to_owned()
}

impl<'a> Call<'a> {
    /// Runs a multi-step call: `body` gets `input` and the call's [`Steps`]. Otherwise the
    /// same as [`run`](Call::run): run at most once and replayed, `Ok` stored, `Err`
    /// returned and the claim released (the journal is kept: a retry resumes after the
    /// journaled steps).
    ///
    /// `input` is journaled with the first write, so that a [`Completer`] can re-drive the
    /// call; give the call the fingerprint of `input` (or of what identifies it).
    pub async fn run_steps<I, T, E, F, Fut>(self, input: I, body: F) -> Result<T, E>
    where
        I: Serialize,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: FnOnce(I, Steps) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        Ok(self.drive(input, body, Driver::Caller).await?.output)
    }

    /// [`run_steps`](Call::run_steps) by a caller or the completer, telling how the output
    /// was obtained.
    pub(crate) async fn drive<I, T, E, F, Fut>(
        self,
        input: I,
        body: F,
        driver: Driver<E>,
    ) -> Result<Obtained<T>, E>
    where
        I: Serialize,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: FnOnce(I, Steps) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let store = Arc::clone(self.idempotency().store());
        let (key, fingerprint, ttl) = (self.key().clone(), self.fingerprint(), self.resolved_ttl());
        self.run_obtained(move || async move {
            let Some(token) = crate::executor::owner_token(&key) else {
                // No claim (the store failed and the executor fails open): nothing to journal.
                let steps = Steps {
                    inner: Arc::new(Inner {
                        journal_key: journal::key_of(&key),
                        store,
                        key,
                        ttl,
                        state: None,
                    }),
                };
                return body(input, steps).await;
            };
            let mut encoded = Vec::new();
            crate::output::encode_into(&mut encoded, &input).map_err(|error| Error::Codec {
                op: CodecOp::EncodeOutput,
                key: Some(key.clone()),
                source: Box::new(error),
            })?;
            let completer = matches!(driver, Driver::Completer(_));
            let steps = Steps::begin(
                store,
                key,
                fingerprint,
                token,
                ttl,
                Bytes::from(encoded),
                completer,
            )
            .await?;
            let result = body(input, steps.clone()).await;
            if let Err(error) = &result {
                match driver {
                    Driver::Caller => steps.after_error(true, String::new()).await,
                    Driver::Completer(describe) => steps.after_error(false, describe(error)).await,
                }
            }
            result
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_differ_per_step_and_per_call() {
        let one = Key::derive("shop::checkout", 1, &"order-1").expect("key");
        let two = Key::derive("shop::checkout", 1, &"order-2").expect("key");
        assert_eq!(derived_key(&one, "charge"), derived_key(&one, "charge"));
        assert_ne!(derived_key(&one, "charge"), derived_key(&one, "ship"));
        assert_ne!(derived_key(&one, "charge"), derived_key(&two, "charge"));
        assert_eq!(derived_key(&one, "charge").len(), 64);
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let cut = truncate("é".repeat(600), 1023);
        assert!(cut.len() <= 1023 && cut.chars().all(|c| c == 'é'));
    }
}
