//! The executor: claim, run once, store, replay.

use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::error::{CodecOp, Error, StoreError, StoreOp};
use crate::inflight::{Flights, Landing};
use crate::key::{Fingerprint, Key};
use crate::output::{self, OutputError};
use crate::record::{Claim, ClaimNow, HeldRecord, Keep, Token};
use crate::store::Store;
use crate::trace::event;

/// What a caller does when it finds its key in progress in another call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum InProgressPolicy {
    /// Wait (up to the executor's `wait_timeout`) for the owner's result and return it. Inside
    /// one process the wait is a notification; across processes the store is polled with
    /// capped backoff. If the owner releases the key or its lease passes, the waiter claims
    /// it and runs the body itself.
    #[default]
    Wait,
    /// Return [`Error::InProgress`] at once.
    Reject,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    ttl: Duration,
    lease: Duration,
    wait_timeout: Duration,
    on_in_progress: InProgressPolicy,
    fail_open: bool,
    max_output_bytes: usize,
}

impl Settings {
    #[inline]
    fn problem(&self) -> Option<(&'static str, &'static str)> {
        if self.ttl.is_zero() {
            Some(("ttl", "must be greater than zero"))
        } else if self.lease.is_zero() {
            Some(("lease", "must be greater than zero"))
        } else {
            None
        }
    }
}

const DEFAULT_SETTINGS: Settings = Settings {
    ttl: Duration::from_secs(24 * 60 * 60),
    lease: Duration::from_secs(30),
    wait_timeout: Duration::from_secs(30),
    on_in_progress: InProgressPolicy::Wait,
    fail_open: false,
    max_output_bytes: 1 << 20,
};

/// First and largest pause between two store polls while another process owns the key.
const POLL_FIRST: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(250);
/// Attempts at `complete` when the store errors transiently (the body already ran, so it is
/// worth a retry; `complete` is idempotent for the same token).
const COMPLETE_ATTEMPTS: u32 = 3;

/// Makes calls idempotent over a [`Store`]: the macro-free API that `#[idempotent]` expands to.
///
/// Cheap to clone; clones share the store and the in-process coalescing of duplicates, so
/// create one per store and share it.
///
/// ```
/// use idempotent_core::{Error, Fingerprint, Idempotency, Key, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let idempotency = Idempotency::new(MemoryStore::new());
/// let request = ("order-42", 1999u64);
/// let key = Key::derive("shop::charge", 1, &request.0).unwrap();
/// let fingerprint = Fingerprint::of(&request).unwrap();
///
/// let first: Result<String, Error> = idempotency
///     .run(key.clone(), fingerprint, || async { Ok("receipt-1".to_string()) })
///     .await;
/// let retry: Result<String, Error> = idempotency
///     .run(key, fingerprint, || async { Ok("receipt-2".to_string()) })
///     .await;
/// assert_eq!(first?, retry?); // the retry got the first call's result back
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Idempotency {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    settings: Settings,
    flights: Flights,
}

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("store", &self.inner.store)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Idempotency {
    /// An executor over `store` with the defaults: `ttl` 24 h, `lease` 30 s, wait up to 30 s
    /// for a duplicate in progress, fail closed, outputs up to 1 MiB.
    pub fn new(store: impl Store) -> Idempotency {
        Idempotency::builder(store).build()
    }

    /// An executor over a shared store.
    pub fn from_shared(store: Arc<dyn Store>) -> Idempotency {
        IdempotencyBuilder {
            store,
            settings: DEFAULT_SETTINGS,
        }
        .build()
    }

    /// Configure the defaults before building.
    pub fn builder(store: impl Store) -> IdempotencyBuilder {
        IdempotencyBuilder {
            store: Arc::new(store),
            settings: DEFAULT_SETTINGS,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Runs `body` at most once for `key` (with the executor's defaults) and returns its
    /// output, or replays the output stored by an earlier call with the same key and
    /// fingerprint. `Err` outputs are not stored: the claim is released so a retry runs again.
    pub async fn run<T, E, F, Fut>(
        &self,
        key: Key,
        fingerprint: Fingerprint,
        body: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call(key, fingerprint).run(body).await
    }

    /// A call whose options can be set one by one before [`Call::run`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_core::{Error, Fingerprint, Idempotency, InProgressPolicy, Key, MemoryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let idempotency = Idempotency::new(MemoryStore::new());
    /// let key = Key::derive("stock::reserve", 1, &"sku-1").unwrap();
    /// let fingerprint = Fingerprint::of(&("sku-1", 3)).unwrap();
    /// let out: Result<u32, Error> = idempotency
    ///     .call(key, fingerprint)
    ///     .ttl(Duration::from_secs(3600))
    ///     .lease(Duration::from_secs(5))
    ///     .on_in_progress(InProgressPolicy::Reject)
    ///     .run(|| async { Ok(3) })
    ///     .await;
    /// assert_eq!(out.unwrap(), 3);
    /// # }
    /// ```
    #[inline]
    pub fn call(&self, key: Key, fingerprint: Fingerprint) -> Call<'_> {
        Call {
            idempotency: self,
            key,
            fingerprint,
            settings: self.inner.settings,
            mode: PhantomData,
        }
    }
}

/// Configures an [`Idempotency`].
#[derive(Debug)]
pub struct IdempotencyBuilder {
    store: Arc<dyn Store>,
    settings: Settings,
}

/// The per-call options, set the same way on the executor's defaults and on one call.
macro_rules! call_options {
    () => {
        /// How long a completed output is replayed (default 24 h).
        pub fn ttl(mut self, ttl: Duration) -> Self {
            self.settings.ttl = ttl;
            self
        }

        /// How long a claim holds before another caller may take the key over (default
        /// 30 s). Make it longer than the body ever runs: a body that outlives its lease can
        /// be run a second time by a taker-over, and its own result is then refused with
        /// [`Error::LeaseLost`].
        pub fn lease(mut self, lease: Duration) -> Self {
            self.settings.lease = lease;
            self
        }

        /// How long a duplicate waits for the owner under [`InProgressPolicy::Wait`]
        /// (default 30 s).
        pub fn wait_timeout(mut self, wait: Duration) -> Self {
            self.settings.wait_timeout = wait;
            self
        }

        /// What a duplicate does when it finds the key in progress (default: wait).
        pub fn on_in_progress(mut self, policy: InProgressPolicy) -> Self {
            self.settings.on_in_progress = policy;
            self
        }
    };
}

impl IdempotencyBuilder {
    call_options!();

    /// Run the body anyway when the store cannot be reached to claim the key — it is
    /// unavailable or does not answer in time (default `false`: fail closed with
    /// [`Error::Store`]). Any other store error still fails the call. Opting in trades
    /// at-most-once for availability during a store outage.
    pub fn fail_open(mut self, fail_open: bool) -> Self {
        self.settings.fail_open = fail_open;
        self
    }

    /// Largest encoded output stored (default 1 MiB). A larger output fails the call with
    /// [`Error::OutputTooLarge`] and releases its claim.
    pub fn max_output_bytes(mut self, limit: usize) -> Self {
        self.settings.max_output_bytes = limit;
        self
    }

    /// The executor.
    pub fn build(self) -> Idempotency {
        Idempotency {
            inner: Arc::new(Inner {
                store: self.store,
                settings: self.settings,
                flights: Flights::default(),
            }),
        }
    }
}

/// Errors are released, not stored (the default).
#[derive(Debug, Clone, Copy)]
pub struct DropErrors;

/// Errors are stored and replayed like outputs (`store_errors`): for deterministic business
/// outcomes such as "card declined".
#[derive(Debug, Clone, Copy)]
pub struct StoreErrors;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::DropErrors {}
    impl Sealed for super::StoreErrors {}
}

/// How outputs are encoded for storage: [`DropErrors`] or [`StoreErrors`].
#[diagnostic::on_unimplemented(
    message = "`store_errors` needs the error type `{E}` to implement `Serialize` and `DeserializeOwned`",
    label = "the error is stored and replayed, so it must be serializable",
    note = "derive `serde::Serialize` and `serde::Deserialize` for `{E}`, or drop `store_errors`"
)]
pub trait OutputMode<T, E>: sealed::Sealed {
    /// `None` when the result is not stored.
    #[doc(hidden)]
    fn encode(result: &Result<T, E>) -> Option<Result<Vec<u8>, OutputError>>;
    /// Decodes what `encode` stored.
    #[doc(hidden)]
    fn decode(bytes: &[u8]) -> Result<Result<T, E>, crate::BoxError>;
}

/// Stored outputs are one mark byte, then the value in the [output encoding](crate::output):
/// `0xB0` for an `Ok` output, `0xB1` for a stored `Err`.
pub(crate) const MARK_OK: u8 = 0xB0;
pub(crate) const MARK_ERR: u8 = 0xB1;

/// How a call replays the typed value an in-process store kept beside a completed record
/// (see [`Keep`]): `#[idempotent]` builds one for an output type that is `Clone`, and
/// [`Call::run`] replays without one, by decoding.
pub struct Keeper<T> {
    take: fn(&(dyn Any + Send + Sync)) -> Option<T>,
    keep: Keep,
}

impl<T> Clone for Keeper<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Keeper<T> {}

impl<T> std::fmt::Debug for Keeper<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper").finish_non_exhaustive()
    }
}

impl<T: Clone + DeserializeOwned + Send + Sync + 'static> Keeper<T> {
    /// Keeps `Ok` outputs as decoded `T`s, and replays clones of them.
    pub const fn new() -> Keeper<T> {
        Keeper {
            take: |kept| kept.downcast_ref::<T>().cloned(),
            keep: Keep::new(|stored| match unmark(stored) {
                Ok((MARK_OK, value)) => output::decode::<T>(value)
                    .ok()
                    .map(|value| Box::new(value) as Box<dyn Any + Send + Sync>),
                _ => None,
            }),
        }
    }
}

impl<T: Clone + DeserializeOwned + Send + Sync + 'static> Default for Keeper<T> {
    fn default() -> Self {
        Keeper::new()
    }
}

fn encode_marked<V: Serialize + ?Sized>(mark: u8, value: &V) -> Result<Vec<u8>, OutputError> {
    let mut out = Vec::with_capacity(128);
    out.push(mark);
    output::encode_into(&mut out, value)?;
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
enum StoredOutputError {
    #[error("the stored output is an error, but this call does not use `store_errors`")]
    ErrorNotExpected,
    #[error("the stored output does not start with an `Ok`/`Err` mark (first byte {0:?})")]
    UnknownMark(Option<u8>),
}

/// Splits a stored output into its mark and its value.
fn unmark(bytes: &[u8]) -> Result<(u8, &[u8]), crate::BoxError> {
    match bytes.split_first() {
        Some((&mark, value)) if mark == MARK_OK || mark == MARK_ERR => Ok((mark, value)),
        other => Err(Box::new(StoredOutputError::UnknownMark(
            other.map(|(mark, _)| *mark),
        ))),
    }
}

impl<T: Serialize + DeserializeOwned, E> OutputMode<T, E> for DropErrors {
    fn encode(result: &Result<T, E>) -> Option<Result<Vec<u8>, OutputError>> {
        match result {
            Ok(value) => Some(encode_marked(MARK_OK, value)),
            Err(_) => None,
        }
    }

    fn decode(bytes: &[u8]) -> Result<Result<T, E>, crate::BoxError> {
        match unmark(bytes)? {
            (MARK_OK, value) => Ok(Ok(output::decode(value)?)),
            _ => Err(Box::new(StoredOutputError::ErrorNotExpected)),
        }
    }
}

impl<T, E> OutputMode<T, E> for StoreErrors
where
    T: Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned,
{
    fn encode(result: &Result<T, E>) -> Option<Result<Vec<u8>, OutputError>> {
        Some(match result {
            Ok(value) => encode_marked(MARK_OK, value),
            Err(error) => encode_marked(MARK_ERR, error),
        })
    }

    fn decode(bytes: &[u8]) -> Result<Result<T, E>, crate::BoxError> {
        match unmark(bytes)? {
            (MARK_OK, value) => Ok(Ok(output::decode(value)?)),
            (_, value) => Ok(Err(output::decode(value)?)),
        }
    }
}

/// One call's options; finish with [`run`](Call::run).
#[derive(Debug)]
#[must_use = "a call does nothing until `run` is awaited"]
pub struct Call<'a, M = DropErrors> {
    idempotency: &'a Idempotency,
    key: Key,
    fingerprint: Fingerprint,
    settings: Settings,
    mode: PhantomData<M>,
}

impl<'a, M> Call<'a, M> {
    call_options!();

    /// Store `Err` outputs too and replay them (the error type must be serializable).
    pub fn store_errors(self) -> Call<'a, StoreErrors> {
        Call {
            idempotency: self.idempotency,
            key: self.key,
            fingerprint: self.fingerprint,
            settings: self.settings,
            mode: PhantomData,
        }
    }

    /// The key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Runs `body` at most once for the key and returns its output, or replays the stored one.
    ///
    /// * A completed record with this fingerprint: its output, decoded (one store round trip).
    /// * A record with another fingerprint: [`Error::KeyReused`]; the body does not run.
    /// * Free: the body runs; `Ok` is stored (claim + complete: two round trips), `Err` is
    ///   released and returned (claim + release) unless errors are stored. A panic releases
    ///   the claim and resumes. A call cancelled while its body runs keeps its claim until the
    ///   lease passes (the body may have had its effect); one cancelled after its body
    ///   succeeded records the output in the background.
    /// * In progress: wait or reject, per [`InProgressPolicy`].
    /// * The store fails: [`Error::Store`], and the body does not run (unless `fail_open`).
    pub fn run<T, E, F, Fut>(self, body: F) -> impl Future<Output = Result<T, E>>
    where
        M: OutputMode<T, E>,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        run_prepared(Ok(self), body, None)
    }

    /// The first step of [`run`](Call::run): a replay answered by the store at once, or the
    /// whole call, boxed.
    #[allow(clippy::type_complexity)]
    fn start<T, E, F, Fut>(
        self,
        body: F,
        keeper: Option<Keeper<T>>,
    ) -> Result<Result<T, E>, Pin<Box<impl Future<Output = Result<T, E>>>>>
    where
        M: OutputMode<T, E>,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let Call {
            idempotency,
            key,
            fingerprint,
            settings,
            ..
        } = self;
        let inner = &*idempotency.inner;
        #[cfg(feature = "tracing")]
        let span = tracing::debug_span!("idempotent", key = %key);
        // No invalid option to report and no flight of this process to follow: the call
        // starts with a claim, answered at once by an in-process store.
        let claim_first = settings.problem().is_none() && !inner.flights.busy();
        let first = if claim_first {
            #[cfg(feature = "tracing")]
            let _entered = span.enter();
            match inner.store.claim_now(&key, &fingerprint, settings.lease) {
                Some(Ok(ClaimNow::Held(held))) => {
                    return Ok(replay_held::<M, T, E>(key, &fingerprint, &*held, keeper));
                }
                Some(Ok(ClaimNow::Claim(Claim::Completed {
                    fingerprint: stored,
                    output,
                }))) => return Ok(replay::<M, T, E>(key, &fingerprint, &stored, &output)),
                Some(Ok(ClaimNow::Claim(claim))) => Some(Ok(claim)),
                Some(Err(error)) => Some(Err(error)),
                None => None,
            }
        } else {
            None
        };
        let execution = async move {
            let first = match first {
                None if claim_first => {
                    // A remote store: its first claim is awaited here, so a replay returns
                    // without building the whole call's future.
                    match inner.store.claim(&key, &fingerprint, settings.lease).await {
                        Ok(Claim::Completed {
                            fingerprint: stored,
                            output,
                        }) => return replay::<M, T, E>(key, &fingerprint, &stored, &output),
                        other => Some(other),
                    }
                }
                first => first,
            };
            Box::pin(inner.execute::<M, T, E, F, Fut>(
                settings,
                key,
                fingerprint,
                body,
                first,
                keeper,
            ))
            .await
        };
        #[cfg(feature = "tracing")]
        let execution = tracing::Instrument::instrument(execution, span);
        Err(Box::pin(execution))
    }
}

/// [`Call::run`] of a call still being prepared: a preparation error (from `#[idempotent]`'s
/// hashing, say) comes out of the same future, so generated code builds no call of its own.
///
/// Written by hand rather than as an `async fn`: the future is only the call and the body until
/// its first poll, which answers a replay from an in-process store at once and otherwise boxes
/// the whole call. Small futures are cheap to move, and a replay takes a few hundred
/// nanoseconds, so the bytes moved show.
pub(crate) fn run_prepared<'a, M, T, E, F, Fut>(
    call: Result<Call<'a, M>, Error>,
    body: F,
    keeper: Option<Keeper<T>>,
) -> impl Future<Output = Result<T, E>>
where
    M: OutputMode<T, E>,
    E: From<Error>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut start = Some((call, body));
    let mut running = None;
    std::future::poll_fn(move |cx| {
        if let Some((call, body)) = start.take() {
            match start_prepared(call, body, keeper) {
                Ok(done) => return Poll::Ready(done),
                Err(execution) => running = Some(execution),
            }
        }
        match running.as_mut() {
            Some(execution) => Pin::as_mut(execution).poll(cx),
            None => panic!("`Call::run` polled after it completed"),
        }
    })
}

/// The first step of a prepared call: its answer, when a preparation error or a replay from an
/// in-process store gives it at once, or the rest of the call, boxed.
#[allow(clippy::type_complexity)]
#[inline]
pub(crate) fn start_prepared<'a, M, T, E, F, Fut>(
    call: Result<Call<'a, M>, Error>,
    body: F,
    keeper: Option<Keeper<T>>,
) -> Result<Result<T, E>, Pin<Box<impl Future<Output = Result<T, E>> + use<'a, M, T, E, F, Fut>>>>
where
    M: OutputMode<T, E>,
    E: From<Error>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    match call {
        Ok(call) => call.start(body, keeper),
        Err(error) => Ok(Err(error.into())),
    }
}

/// The answer for a completed record: its output, or key reuse when it was stored for another
/// fingerprint.
fn replay<M: OutputMode<T, E>, T, E: From<Error>>(
    key: Key,
    fingerprint: &Fingerprint,
    stored: &Fingerprint,
    output: &[u8],
) -> Result<T, E> {
    if stored != fingerprint {
        return Err(Error::KeyReused { key }.into());
    }
    event!(debug, key = %key, "replay");
    decode::<M, T, E>(key, output)
}

/// The answer for a completed record an in-process store lent: its kept value, cloned, when
/// it kept one of this type; its output, decoded, otherwise; or key reuse.
fn replay_held<M: OutputMode<T, E>, T, E: From<Error>>(
    key: Key,
    fingerprint: &Fingerprint,
    held: &dyn HeldRecord,
    keeper: Option<Keeper<T>>,
) -> Result<T, E> {
    // Only `Ok` outputs are kept, and an `Ok` output replays as `Ok` in every mode.
    if held.fingerprint() == fingerprint {
        if let Some(value) = keeper.and_then(|keeper| held.kept().and_then(keeper.take)) {
            event!(debug, key = %key, "replay");
            return Ok(value);
        }
    }
    replay::<M, T, E>(key, fingerprint, held.fingerprint(), held.output())
}

fn decode<M: OutputMode<T, E>, T, E: From<Error>>(key: Key, bytes: &[u8]) -> Result<T, E> {
    match M::decode(bytes) {
        Ok(result) => result,
        Err(source) => Err(Error::Codec {
            op: CodecOp::DecodeOutput,
            key: Some(key),
            source,
        }
        .into()),
    }
}

impl Inner {
    /// The whole call. `first` is the answer to the call's first claim when `Call::start`
    /// already had it; it checked then that no flight of this process ran the key, so the
    /// answer is used as it is.
    async fn execute<M, T, E, F, Fut>(
        &self,
        settings: Settings,
        key: Key,
        fingerprint: Fingerprint,
        body: F,
        mut first: Option<Result<Claim, StoreError>>,
        keeper: Option<Keeper<T>>,
    ) -> Result<T, E>
    where
        M: OutputMode<T, E>,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some((option, problem)) = settings.problem() {
            return Err(Error::InvalidOption { option, problem }.into());
        }
        let reject = settings.on_in_progress == InProgressPolicy::Reject;
        let mut deadline: Option<Instant> = None;
        let mut backoff = POLL_FIRST;
        loop {
            // A task of this process owns the key: wait for its landing, no store traffic.
            // (Not when the store already answered the first claim: that answer is ours.)
            if let Some(flight) = first.is_none().then(|| self.flights.get(&key)).flatten() {
                if flight.fingerprint != fingerprint {
                    return Err(Error::KeyReused { key }.into());
                }
                let now = Instant::now();
                if reject {
                    let retry_after = flight.lease_until.saturating_duration_since(now);
                    return Err(Error::InProgress { key, retry_after }.into());
                }
                let deadline = *deadline.get_or_insert(later(now, settings.wait_timeout));
                // Boxed, like every waiting path: waits are rare, and their timers would
                // otherwise make every call's future large and costly to move.
                match Box::pin(flight.wait(deadline.min(flight.lease_until))).await {
                    Some(Landing::Completed(output)) => {
                        event!(debug, key = %key, "replay (coalesced in process)");
                        return decode::<M, T, E>(key, &output);
                    }
                    Some(Landing::Released) => continue,
                    None if Instant::now() >= deadline => {
                        let retry_after = flight.lease_until.saturating_duration_since(now);
                        return Err(Error::InProgress { key, retry_after }.into());
                    }
                    // The owner's lease passed: ask the store, which lets us take it over.
                    None => {}
                }
            }

            let claim = match first.take() {
                Some(claim) => claim,
                None => self.store.claim(&key, &fingerprint, settings.lease).await,
            };
            let claim = match claim {
                Ok(claim) => claim,
                // Only an unreachable or silent store: a corrupt record or any other answer
                // from a store that is up is not an outage.
                Err(error @ (StoreError::Unavailable(_) | StoreError::Timeout(_)))
                    if settings.fail_open =>
                {
                    let _ = &error;
                    event!(warn, key = %key, error = %error, "store error on claim; running the body anyway (fail_open)");
                    return body().await;
                }
                Err(error) => {
                    event!(error, key = %key, error = %error, "store error on claim; the body does not run");
                    return Err(Error::from_store(StoreOp::Claim, &key, error).into());
                }
            };
            match claim {
                Claim::Completed {
                    fingerprint: stored,
                    output,
                } => return replay::<M, T, E>(key, &fingerprint, &stored, &output),
                Claim::InProgress {
                    fingerprint: owner,
                    lease_remaining,
                } => {
                    if owner != fingerprint {
                        return Err(Error::KeyReused { key }.into());
                    }
                    if reject {
                        return Err(Error::InProgress {
                            key,
                            retry_after: lease_remaining,
                        }
                        .into());
                    }
                    let now = Instant::now();
                    let deadline = *deadline.get_or_insert(later(now, settings.wait_timeout));
                    if now >= deadline {
                        return Err(Error::InProgress {
                            key,
                            retry_after: lease_remaining,
                        }
                        .into());
                    }
                    // A live local owner appeared meanwhile: follow it. A flight whose lease has
                    // passed is a hung owner another process took over; following it would
                    // return at once and spin on the store, so poll with backoff instead.
                    if self
                        .flights
                        .get(&key)
                        .is_some_and(|flight| flight.lease_until > now)
                    {
                        continue;
                    }
                    let nap = backoff
                        .min(deadline - now)
                        .min(lease_remaining.max(Duration::from_millis(1)));
                    event!(trace, key = %key, nap = ?nap, "in progress elsewhere; polling");
                    Box::pin(tokio::time::sleep(nap)).await;
                    backoff = (backoff * 2).min(POLL_MAX);
                }
                Claim::Acquired { token, took_over } => {
                    if took_over {
                        event!(info, key = %key, "took over a claim whose lease had passed");
                    } else {
                        event!(debug, key = %key, "claimed");
                    }
                    let _ = took_over;
                    // Boxed: the first execution is the rare path, and keeping its state out of
                    // this future keeps replays small and cheap to move.
                    return Box::pin(self.own::<M, T, E, F, Fut>(
                        settings,
                        key,
                        fingerprint,
                        token,
                        body,
                        keeper.map(|keeper| keeper.keep),
                    ))
                    .await;
                }
            }
        }
    }

    /// The caller owns the key: run the body once and record what it returned.
    async fn own<M, T, E, F, Fut>(
        &self,
        settings: Settings,
        key: Key,
        fingerprint: Fingerprint,
        token: Token,
        body: F,
        keep: Option<Keep>,
    ) -> Result<T, E>
    where
        M: OutputMode<T, E>,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let pilot = self
            .flights
            .start(&key, fingerprint, later(Instant::now(), settings.lease));
        let mut claim = HeldClaim {
            store: Arc::clone(&self.store),
            key: key.clone(),
            token,
            fingerprint,
            stage: Stage::Running,
        };
        event!(debug, key = %key, "execute");
        let result = match AssertUnwindSafe(body()).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => {
                event!(warn, key = %key, "the body panicked; releasing the claim");
                claim.release().await;
                pilot.land(Landing::Released);
                std::panic::resume_unwind(panic);
            }
        };
        let encoded = match M::encode(&result) {
            None => {
                event!(debug, key = %key, "the body returned an error; releasing the claim");
                claim.release().await;
                pilot.land(Landing::Released);
                return result;
            }
            Some(Err(source)) => {
                event!(warn, key = %key, error = %source, "the output could not be encoded; releasing the claim");
                claim.release().await;
                pilot.land(Landing::Released);
                return Err(Error::Codec {
                    op: CodecOp::EncodeOutput,
                    key: Some(key),
                    source: Box::new(source),
                }
                .into());
            }
            Some(Ok(encoded)) => encoded,
        };
        if encoded.len() > settings.max_output_bytes {
            event!(warn, key = %key, size = encoded.len(), limit = settings.max_output_bytes, "the output is over the limit; releasing the claim");
            claim.release().await;
            pilot.land(Landing::Released);
            return Err(Error::OutputTooLarge {
                key,
                size: encoded.len(),
                limit: settings.max_output_bytes,
            }
            .into());
        }
        let output = Bytes::from(encoded);
        // From here a dropped call (cancelled while `complete` is on its way) still records the
        // output, in the background: the body ran and succeeded.
        claim.stage = Stage::Completing {
            output: output.clone(),
            ttl: settings.ttl,
            keep,
        };
        match complete(
            &*self.store,
            &key,
            &token,
            &fingerprint,
            output.clone(),
            settings.ttl,
            keep,
        )
        .await
        {
            Ok(()) => {
                claim.stage = Stage::Settled;
                pilot.land(Landing::Completed(output));
                result
            }
            Err(StoreError::TooLarge { size, limit }) => {
                claim.release().await;
                pilot.land(Landing::Released);
                Err(Error::OutputTooLarge { key, size, limit }.into())
            }
            Err(error) => {
                // Not released: the body ran, so the claim keeps duplicates out until its lease
                // passes rather than inviting an immediate second run.
                claim.stage = Stage::Settled;
                pilot.land(Landing::Released);
                event!(error, key = %key, error = %error, "could not record the output");
                Err(Error::from_store(StoreOp::Complete, &key, error).into())
            }
        }
    }
}

/// `by` after `now`; a duration too long for the clock (`Duration::MAX`, say) means 68 years.
fn later(now: Instant, by: Duration) -> Instant {
    now.checked_add(by)
        .unwrap_or_else(|| now + Duration::from_secs(1 << 31))
}

/// `complete`, retried on transient errors: the body already ran, so recording its output is
/// worth a retry, and `complete` is idempotent for the same token.
async fn complete(
    store: &dyn Store,
    key: &Key,
    token: &Token,
    fingerprint: &Fingerprint,
    output: Bytes,
    ttl: Duration,
    keep: Option<Keep>,
) -> Result<(), StoreError> {
    let mut attempt = 1;
    loop {
        let completed = match keep {
            Some(keep) => {
                store
                    .complete_keeping(key, token, fingerprint, output.clone(), ttl, keep)
                    .await
            }
            None => {
                store
                    .complete(key, token, fingerprint, output.clone(), ttl)
                    .await
            }
        };
        match completed {
            Err(
                error @ (StoreError::Unavailable(_)
                | StoreError::Timeout(_)
                | StoreError::Backend(_)),
            ) if attempt < COMPLETE_ATTEMPTS => {
                event!(warn, key = %key, error = %error, attempt, "complete failed; retrying");
                let _ = error;
                tokio::time::sleep(Duration::from_millis(25) * 4u32.pow(attempt - 1)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Where the owner's call is, which decides what dropping it (a cancelled call) does.
enum Stage {
    /// The body is running. A drop keeps the claim: the body may already have had its effect,
    /// so the key stays claimed until its lease passes instead of inviting an immediate
    /// second run.
    Running,
    /// The body succeeded and its output is encoded. A drop completes in the background.
    Completing {
        output: Bytes,
        ttl: Duration,
        keep: Option<Keep>,
    },
    /// Completed, released, or left to its lease: a drop does nothing.
    Settled,
}

/// The claim the owner holds while its call runs.
struct HeldClaim {
    store: Arc<dyn Store>,
    key: Key,
    token: Token,
    fingerprint: Fingerprint,
    stage: Stage,
}

impl HeldClaim {
    /// Releases the claim (the body failed or panicked, or its output cannot be stored).
    async fn release(&mut self) {
        self.stage = Stage::Settled;
        match self.store.release(&self.key, &self.token).await {
            Ok(()) => {
                event!(debug, key = %self.key, "released the claim");
            }
            Err(error) => {
                event!(warn, key = %self.key, error = %error, "could not release the claim; it holds until its lease passes");
                let _ = error;
            }
        }
    }
}

impl Drop for HeldClaim {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.stage, Stage::Settled) {
            Stage::Running => {
                event!(warn, key = %self.key, "call cancelled while its body ran; the key stays claimed until its lease passes");
            }
            Stage::Completing { output, ttl, keep } => {
                // Without a runtime the lease frees the key, as for a crash.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let store = Arc::clone(&self.store);
                    let key = self.key.clone();
                    let (token, fingerprint) = (self.token, self.fingerprint);
                    event!(debug, key = %key, "call cancelled after its body succeeded; completing in the background");
                    runtime.spawn(async move {
                        let _ =
                            complete(&*store, &key, &token, &fingerprint, output, ttl, keep).await;
                    });
                }
            }
            Stage::Settled => {}
        }
    }
}
