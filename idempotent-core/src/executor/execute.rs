//! The rest of a call after its first step: the protocol's loop — follow a flight of this
//! process, claim, wait for an owner elsewhere, or own the key.

use tokio::time::Instant;

use super::call::replay;
use super::flight::Landing;
use super::obtained::Observed;
use super::{Body, Inner};
use crate::error::{Error, StoreError, StoreOp};
use crate::kept::Keeper;
use crate::key::{Fingerprint, Key};
use crate::metrics::{self, Counter};
use crate::output::OutputMode;
use crate::protocol::{self, Caller, Next, Refusal, Settings};
use crate::record::Claim;
use crate::store::ClaimRequest;
use crate::trace::event;

impl Inner {
    /// The whole call. `first` is the answer to the call's first claim when `Call::start`
    /// already had it; it checked then that no flight of this process ran the key, so the
    /// answer is used as it is. `observed`, when the caller asks how the output was obtained,
    /// notes that the call waited, replayed or ran the body.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn execute<M, T, E, F>(
        &self,
        settings: Settings,
        key: Key,
        fingerprint: Fingerprint,
        body: F,
        mut first: Option<Result<Claim, StoreError>>,
        keeper: Option<Keeper<T>>,
        observed: Option<&Observed>,
    ) -> Result<T, E>
    where
        M: OutputMode<T, E>,
        E: From<Error>,
        F: Body<T, E>,
    {
        settings.check()?;
        let mut caller = Caller::new(&settings);
        // Counted once per call, however often it waits.
        let mut counted = false;
        let mut wait = |key: &Key| {
            if let Some(observed) = observed {
                observed.waited();
            }
            if !std::mem::replace(&mut counted, true) {
                metrics::count(Counter::Waits, key);
            }
        };
        loop {
            // A task of this process owns the key: wait for its landing, no store traffic.
            // (Not when the store already answered the first claim: that answer is ours.)
            if let Some(flight) = first.is_none().then(|| self.flights.get(&key)).flatten() {
                let now = Instant::now();
                let lease_until = flight.lease_until();
                match caller.on_flight(&flight.fingerprint, lease_until, &fingerprint, now) {
                    // Boxed, like every waiting path: waits are rare, and their timers would
                    // otherwise make every call's future large and costly to move.
                    Ok(Some(until)) => match {
                        wait(&key);
                        Box::pin(flight.wait(until))
                    }
                    .await
                    {
                        Some(Landing::Completed(output)) => {
                            if let Some(observed) = observed {
                                observed.replayed(&output, None);
                            }
                            metrics::count(Counter::Replays, &key);
                            event!(debug, key = %key, "replay (coalesced in process)");
                            return protocol::decode::<M, T, E>(key, &output);
                        }
                        Some(Landing::Released) => continue,
                        // The owner's lease passed, or it was renewed: ask the store, which
                        // lets us take a hung owner over.
                        None => {
                            let lease_until = flight.lease_until();
                            if let Err(refusal) =
                                caller.on_flight_timeout(lease_until, Instant::now())
                            {
                                return Err(refusal.into_error(key).into());
                            }
                        }
                    },
                    // A hung owner of this process: the store decides, as for any other.
                    Ok(None) => {
                        event!(debug, key = %key, "a flight of this process outlived its lease; asking the store");
                    }
                    Err(refusal) => return Err(refusal.into_error(key).into()),
                }
            }

            let claim = match first.take() {
                Some(claim) => claim,
                None => {
                    let claim = self.claim(&key, ClaimRequest::new(fingerprint, settings.lease));
                    metrics::store_call(StoreOp::Claim, &key, claim).await
                }
            };
            let next = match claim {
                Ok(claim) => caller.on_claim(claim, &fingerprint, Instant::now),
                Err(error) if caller.fails_open(&error) => {
                    event!(warn, key = %key, error = %error, "store error on claim; running the body anyway (fail_open)");
                    if let Some(observed) = observed {
                        observed.ran();
                    }
                    return metrics::body(&key, body.run()).await;
                }
                Err(error) => Next::Fail(Refusal::Store(error)),
            };
            match next {
                Next::Replay { output, expires_at } => {
                    if let Some(observed) = observed {
                        observed.replayed(&output, expires_at);
                    }
                    return replay::<M, T, E>(key, &fingerprint, &fingerprint, &output);
                }
                Next::Poll(nap) => {
                    // A live local owner appeared meanwhile: follow it. A flight whose lease
                    // has passed is a hung owner another process took over; following it would
                    // return at once and spin on the store, so poll with backoff instead.
                    if self
                        .flights
                        .get(&key)
                        .is_some_and(|flight| flight.lease_until() > Instant::now())
                    {
                        continue;
                    }
                    event!(trace, key = %key, nap = ?nap, "in progress elsewhere; polling");
                    wait(&key);
                    Box::pin(tokio::time::sleep(nap)).await;
                }
                Next::Own { token, took_over } => {
                    if took_over {
                        metrics::count(Counter::Takeovers, &key);
                        event!(info, key = %key, "took over a claim whose lease had passed");
                    } else {
                        event!(debug, key = %key, "claimed");
                    }
                    let _ = took_over;
                    // Boxed: the first execution is the rare path, and keeping its state out of
                    // this future keeps replays small and cheap to move.
                    return Box::pin(self.own::<M, T, E, F>(
                        settings,
                        key,
                        fingerprint,
                        token,
                        body,
                        keeper.map(|keeper| keeper.keep),
                        observed,
                    ))
                    .await;
                }
                Next::Fail(refusal) => {
                    if let Refusal::Store(error) = &refusal {
                        event!(error, key = %key, error = %error, "store error on claim; the body does not run");
                        let _ = error;
                    }
                    return Err(refusal.into_error(key).into());
                }
            }
        }
    }
}
