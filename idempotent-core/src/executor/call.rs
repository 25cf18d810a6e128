//! One call: its options, and its first step — a replay answered by the store at once, or the
//! rest of the call (`execute.rs`), boxed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use super::Idempotency;
use super::obtained::{Observed, Obtained, Teller, observe};
use crate::error::{Error, StoreOp};
use crate::kept::Keeper;
use crate::key::{Fingerprint, Key};
use crate::metrics::{self, Counter};
use crate::output::{OutputMode, OutputsAndErrors, OutputsOnly};
use crate::protocol::{self, CallOptions, Refusal, Request, call_option_setters};
use crate::record::{Claim, ClaimNow, HeldRecord};
use crate::store::ClaimRequest;
use crate::trace::event;

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

    /// The fingerprint.
    pub(crate) fn fingerprint(&self) -> Fingerprint {
        self.request.fingerprint
    }

    /// The record's TTL, as resolved for this call.
    pub(crate) fn resolved_ttl(&self) -> std::time::Duration {
        self.request.settings.ttl
    }

    /// The executor the call runs on.
    pub(crate) fn idempotency(&self) -> &'a Idempotency {
        self.idempotency
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
        let observed = Arc::new(Observed::default());
        let watch = Watch {
            observed: Arc::clone(&observed),
            teller: None,
        };
        let output = match self.start(body, None, Some(watch)) {
            Ok(done) => done,
            Err(rest) => rest.await,
        }?;
        Ok(observed.obtained(output))
    }

    /// The first step of [`run`](Call::run): a replay answered by the store at once, or the
    /// whole call, boxed. `watch`, when the caller asks how the output was obtained, notes it.
    #[allow(clippy::type_complexity)]
    fn start<T, E, F, Fut>(
        self,
        body: F,
        keeper: Option<Keeper<T>>,
        watch: Option<Watch<T>>,
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
                    if let Some(watch) = &watch {
                        watch.observed.replayed(held.output(), held.expires_at());
                    }
                    let result = replay_held::<M, T, E>(key, &fingerprint, &*held, keeper);
                    return Ok(finish(watch.as_ref(), result));
                }
                Some(Ok(ClaimNow::Claim(Claim::Completed {
                    fingerprint: stored,
                    output,
                    expires_at,
                }))) => {
                    observe(observed(&watch), &output, expires_at);
                    let result = replay::<M, T, E>(key, &fingerprint, &stored, &output);
                    return Ok(finish(watch.as_ref(), result));
                }
                Some(Ok(ClaimNow::Claim(claim))) => Some(Ok(claim)),
                Some(Err(error)) => Some(Err(error)),
                None => {
                    // A remote store, and a completed record this process keeps
                    // (`local_cache`): no round trip, and no box for the rest of the call.
                    if let Some(entry) = inner.local.as_ref().and_then(|local| local.get(&key)) {
                        let (stored, output, expires_at) = entry.parts();
                        observe(observed(&watch), output, Some(expires_at));
                        // A `Clone` output replays a clone of the value the entry keeps (only
                        // `Ok` outputs are kept), as from the memory store.
                        if stored == &fingerprint
                            && let Some(value) = keeper
                                .and_then(|keeper| entry.kept(keeper.keep).and_then(keeper.take))
                        {
                            metrics::count(Counter::Replays, &key);
                            event!(debug, key = %key, "replay");
                            return Ok(finish(watch.as_ref(), Ok(value)));
                        }
                        let result = replay::<M, T, E>(key, &fingerprint, stored, output);
                        return Ok(finish(watch.as_ref(), result));
                    }
                    None
                }
            }
        } else {
            None
        };
        let execution = async move {
            let seen = observed(&watch);
            let result = async {
                let first = match first {
                    None if claim_first => {
                        // A remote store (its local replay cache, if any, was asked above): its
                        // first claim is awaited here, so a replay returns without building the
                        // whole call's future.
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
                                observe(seen, &output, expires_at);
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
                    seen,
                );
                Box::pin(call).await
            }
            .await;
            finish(watch.as_ref(), result)
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
            match start_prepared(call, body, keeper, None) {
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
    teller: Option<Teller<T>>,
) -> Result<Result<T, E>, Pin<Box<impl Future<Output = Result<T, E>> + use<'a, M, T, E, F, Fut>>>>
where
    M: OutputMode<T, E>,
    E: From<Error>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    match call {
        Ok(call) => {
            let watch = teller.map(|teller| Watch {
                observed: Arc::default(),
                teller: Some(teller),
            });
            call.start(body, keeper, watch)
        }
        Err(error) => Ok(Err(error.into())),
    }
}

/// A call whose caller asks how its output was obtained: what the executor saw, and for an
/// `#[idempotent]` function returning `Obtained<U>`, how to tell its output.
pub(super) struct Watch<T> {
    observed: Arc<Observed>,
    teller: Option<Teller<T>>,
}

/// What a watched call saw so far.
#[inline]
fn observed<T>(watch: &Option<Watch<T>>) -> Option<&Observed> {
    watch.as_ref().map(|watch| &*watch.observed)
}

/// A watched call's answer, with how it was obtained told to its output (by its teller).
#[inline]
fn finish<T, E>(watch: Option<&Watch<T>>, mut result: Result<T, E>) -> Result<T, E> {
    if let (
        Some(Watch {
            observed,
            teller: Some(teller),
        }),
        Ok(output),
    ) = (watch, &mut result)
    {
        (teller.tell)(output, observed.obtained(()));
    }
    result
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
