//! One call: its options, and its first step — a replay answered by the store at once, or the
//! rest of the call (`execute.rs`), boxed.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::Idempotency;
use crate::error::{Error, StoreOp};
use crate::kept::Keeper;
use crate::key::{Fingerprint, Key};
use crate::metrics::{self, Counter};
use crate::output::{OutputMode, OutputsAndErrors, OutputsOnly};
use crate::protocol::{self, CallOptions, Refusal, Request, call_option_setters};
use crate::record::{Claim, ClaimNow, HeldRecord};
use crate::store::ClaimRequest;
use crate::trace::event;

/// How a call's output was obtained: [`Call::run_obtained`].
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

/// An output and how it was obtained: [`Call::run_obtained`], or an `#[idempotent]` function
/// declared to return `Result<Obtained<T>, E>`, whose body answers
/// [`Obtained::executed`]`(output)`; a replay answers [`How::Replayed`] (the macro does not
/// tell a replay after waiting apart). Stored as the output alone.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Obtained<T> {
    /// The output, as [`Call::run`] returns it.
    pub output: T,
    /// Whether the body ran in this call, or a stored output was replayed.
    pub how: How,
    /// When the record expires and the key runs its body again: for an execution, now plus
    /// the call's `ttl` by this process's clock; for a replay, the expiry of the record the
    /// store (or the local replay cache) answered with. `None` where the store does not say,
    /// after waiting for another call, and under `#[idempotent]` (its output is read back
    /// without the record). When the record was first written is not kept by any store.
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
    /// // A replay stores and reads back only the `Receipt`, and answers `How::Replayed`.
    /// ```
    pub fn executed(output: T) -> Self {
        Obtained {
            output,
            how: How::Executed,
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

/// Read back from a stored output, which is a replay: [`How::Replayed`].
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obtained<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(|output| Obtained {
            output,
            how: How::Replayed,
            expires_at: None,
        })
    }
}

/// One call's options; finish with [`run`](Call::run).
#[derive(Debug)]
#[must_use = "a call does nothing until `run` is awaited"]
pub struct Call<'a, M = OutputsOnly> {
    idempotency: &'a Idempotency,
    request: Request<M>,
}

impl<'a> Call<'a> {
    #[inline]
    pub(super) fn new(idempotency: &'a Idempotency, key: Key, fingerprint: Fingerprint) -> Self {
        Call {
            idempotency,
            request: Request::new(key, fingerprint, idempotency.inner.settings),
        }
    }
}

impl<'a, M> Call<'a, M> {
    #[inline]
    fn apply(&mut self, options: CallOptions) {
        self.request.apply(options);
    }

    call_option_setters!();

    /// Store `Err` outputs too and replay them (the error type must be serializable).
    pub fn store_errors(self) -> Call<'a, OutputsAndErrors> {
        Call {
            idempotency: self.idempotency,
            request: self.request.store_errors(),
        }
    }

    /// The key.
    pub fn key(&self) -> &Key {
        &self.request.key
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
    /// * In progress: wait or reject, per [`InProgressPolicy`](crate::InProgressPolicy).
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

    /// [`run`](Call::run), telling how the output was obtained: the body ran in this call,
    /// or a stored output was replayed at once, or after waiting for another call that held
    /// the key.
    ///
    /// ```
    /// use idempotent_core::{Error, Fingerprint, How, Idempotency, Key, MemoryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), idempotent_core::BoxError> {
    /// let idempotency = Idempotency::new(MemoryStore::new());
    /// let key = Key::derive("orders::confirm", 1, &"order-1")?;
    /// let fingerprint = Fingerprint::of(&"order-1")?;
    /// for expected in [How::Executed, How::Replayed] {
    ///     let confirmed = idempotency
    ///         .call(key.clone(), fingerprint)
    ///         .run_obtained(|| async { Ok::<_, Error>("confirmed".to_owned()) })
    ///         .await?;
    ///     assert_eq!(confirmed.how, expected);
    ///     if confirmed.how == How::Executed {
    ///         // send the receipt email: only the call that did the work does
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run_obtained<T, E, F, Fut>(self, body: F) -> Result<Obtained<T>, E>
    where
        M: OutputMode<T, E>,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let ran = AtomicBool::new(false);
        let waited = AtomicBool::new(false);
        let expiry = OnceLock::new();
        let ttl = self.request.settings.ttl;
        let body = || {
            ran.store(true, Ordering::Relaxed);
            body()
        };
        let output = match self.start(body, None, Some(&waited), Some(&expiry)) {
            Ok(done) => done,
            Err(rest) => rest.await,
        }?;
        let (how, expires_at) = if ran.load(Ordering::Relaxed) {
            (How::Executed, Some(SystemTime::now() + ttl))
        } else if waited.load(Ordering::Relaxed) {
            (How::ReplayedAfterWaiting, None)
        } else {
            (How::Replayed, expiry.get().copied())
        };
        Ok(Obtained {
            output,
            how,
            expires_at,
        })
    }

    /// The first step of [`run`](Call::run): a replay answered by the store at once, or the
    /// whole call, boxed. `waited` is set when the call waits for another holding the key.
    #[allow(clippy::type_complexity)]
    fn start<T, E, F, Fut>(
        self,
        body: F,
        keeper: Option<Keeper<T>>,
        waited: Option<&'a AtomicBool>,
        expiry: Option<&'a OnceLock<SystemTime>>,
    ) -> Result<Result<T, E>, Pin<Box<impl Future<Output = Result<T, E>>>>>
    where
        M: OutputMode<T, E>,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let idempotency = self.idempotency;
        let Request {
            key,
            fingerprint,
            settings,
            ..
        } = self.request;
        let inner = &*idempotency.inner;
        #[cfg(feature = "tracing")]
        let span = tracing::debug_span!("idempotent", key = %key);
        // No invalid option to report and no flight of this process to follow: the call
        // starts with a claim, answered at once by an in-process store.
        let claim_first = settings.problem().is_none() && !inner.flights.busy();
        let first = if claim_first {
            #[cfg(feature = "tracing")]
            let _entered = span.enter();
            match inner.claim_now(&key, ClaimRequest::new(fingerprint, settings.lease)) {
                Some(Ok(ClaimNow::Held(held))) => {
                    if let Some(slot) = expiry {
                        observe(slot, held.expires_at());
                    }
                    return Ok(replay_held::<M, T, E>(key, &fingerprint, &*held, keeper));
                }
                Some(Ok(ClaimNow::Claim(Claim::Completed {
                    fingerprint: stored,
                    output,
                    expires_at,
                }))) => {
                    if let Some(slot) = expiry {
                        observe(slot, expires_at);
                    }
                    return Ok(replay::<M, T, E>(key, &fingerprint, &stored, &output));
                }
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
                    // A completed record this process keeps (`local_cache`): no round trip.
                    if let Some(entry) = inner.local.as_ref().and_then(|local| local.get(&key)) {
                        let (stored, output, expires_at) = entry.parts();
                        if let Some(slot) = expiry {
                            observe(slot, Some(expires_at));
                        }
                        return replay::<M, T, E>(key, &fingerprint, stored, output);
                    }
                    // A remote store: its first claim is awaited here, so a replay returns
                    // without building the whole call's future.
                    let request = ClaimRequest::new(fingerprint, settings.lease);
                    let generation = inner.local.as_ref().map(|local| local.generation());
                    let claim = inner.claim(&key, request);
                    match metrics::store_call(StoreOp::Claim, &key, claim).await {
                        Ok(Claim::Completed {
                            fingerprint: stored,
                            output,
                            expires_at,
                        }) => {
                            if let (Some(local), Some(expires_at), Some(generation)) =
                                (&inner.local, expires_at, generation)
                            {
                                local.remember(
                                    &key,
                                    stored,
                                    output.clone(),
                                    expires_at,
                                    generation,
                                );
                            }
                            if let Some(slot) = expiry {
                                observe(slot, expires_at);
                            }
                            return replay::<M, T, E>(key, &fingerprint, &stored, &output);
                        }
                        other => Some(other),
                    }
                }
                first => first,
            };
            let call = inner.execute::<M, T, E, F>(
                settings,
                key,
                fingerprint,
                body,
                first,
                keeper,
                waited,
            );
            Box::pin(call).await
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
        Ok(call) => call.start(body, keeper, None, None),
        Err(error) => Ok(Err(error.into())),
    }
}

/// The answer for a completed record: its output, or key reuse when it was stored for another
/// fingerprint.
pub(super) fn replay<M: OutputMode<T, E>, T, E: From<Error>>(
    key: Key,
    fingerprint: &Fingerprint,
    stored: &Fingerprint,
    output: &[u8],
) -> Result<T, E> {
    if stored != fingerprint {
        return Err(Refusal::KeyReused.into_error(key).into());
    }
    metrics::count(Counter::Replays, &key);
    event!(debug, key = %key, "replay");
    protocol::decode::<M, T, E>(key, output)
}

/// Notes a replayed record's expiry for [`Call::run_obtained`].
fn observe(slot: &OnceLock<SystemTime>, expires_at: Option<SystemTime>) {
    if let Some(at) = expires_at {
        let _ = slot.set(at);
    }
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
    if held.fingerprint() == fingerprint
        && let Some(value) = keeper.and_then(|keeper| held.kept().and_then(keeper.take))
    {
        metrics::count(Counter::Replays, &key);
        event!(debug, key = %key, "replay");
        return Ok(value);
    }
    replay::<M, T, E>(key, fingerprint, held.fingerprint(), held.output())
}
