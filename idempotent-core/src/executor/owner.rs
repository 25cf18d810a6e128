//! The owner of a key: run the body once, record its outcome as the protocol decides, and
//! guard the claim when the call is dropped midway.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use tokio::time::Instant;

use super::background::Background;
use super::flight::Landing;
use super::lease::Renewal;
use super::obtained::Observed;
use super::{Body, Inner};
use crate::error::{Error, NotStored, StoreError, StoreOp};
use crate::kept::Keep;
use crate::key::{Fingerprint, Key};
use crate::metrics::{self, Counter};
use crate::output::{OutputMode, envelope};
use crate::protocol::{self, Outcome, Settings, defaults};
use crate::record::Token;
use crate::retry::Retryable;
use crate::store::{Completion, Store};
use crate::trace::event;

impl Inner {
    /// The caller owns the key: run the body once, renewing its lease, and record what it
    /// returned.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn own<M, T, E, F>(
        &self,
        settings: Settings,
        key: Key,
        fingerprint: Fingerprint,
        token: Token,
        body: F,
        keep: Option<Keep>,
        observed: Option<&Observed>,
    ) -> Result<T, E>
    where
        M: OutputMode<T, E>,
        E: From<Error>,
        F: Body<T, E>,
    {
        if let Some(observed) = observed {
            observed.ran();
        }
        // Counted until this call ends: `shutdown` waits for owners too.
        let _owning = self.background.count();
        let pilot = self.flights.start(
            &key,
            fingerprint,
            protocol::later(Instant::now(), settings.lease),
        );
        let mut claim = HeldClaim {
            store: &self.store,
            background: &self.background,
            key: &key,
            token,
            max_run: settings.max_run,
            stage: Stage::Running,
        };
        event!(debug, key = %key, "execute");
        let flight = pilot.flight();
        let mut renewal = Renewal::new(&*self.store, &key, token, &settings, &flight);
        // `body.run()` is called inside the caught future: a panic in its synchronous part
        // releases the claim too.
        let timed = &key;
        let body =
            AssertUnwindSafe(async move { metrics::body(timed, body.run()).await }).catch_unwind();
        // Messages the body adds to an outbox get ids derived from the key, the same on a rerun.
        #[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
        let body = crate::outbox::lineage::scope(&key, body);
        // A multi-step body fences its journal by the token.
        let body = super::OWNER.scope((key.clone(), token), body);
        let result = match renewal.around(body).await {
            Ok(result) => result,
            Err(panic) => {
                event!(warn, key = %key, "the body panicked; releasing the claim");
                claim.release().await;
                pilot.land(Landing::Released);
                std::panic::resume_unwind(panic);
            }
        };
        let (outcome, panic) =
            match protocol::outcome_unwinding::<M, T, E>(&result, settings.max_output_bytes) {
                Ok(outcome) => (outcome, None),
                Err((outcome, panic)) => (outcome, Some(panic)),
            };
        let (output, keep) = match outcome {
            Outcome::Store(encoded) => (Bytes::from(encoded), keep),
            Outcome::Release => {
                event!(debug, key = %key, "the body returned an error; releasing the claim");
                claim.release().await;
                pilot.land(Landing::Released);
                return result;
            }
            Outcome::NotStored(reason) => {
                event!(warn, key = %key, reason = %reason, "the output cannot be stored; recording that the body ran, so it does not run again");
                let record = protocol::not_stored(&reason, settings.max_output_bytes);
                (Bytes::from(record), None)
            }
        };
        if let Some(observed) = observed {
            observed.stored(&output, settings.ttl);
        }
        let recording = Recording {
            store: Arc::clone(&self.store),
            key: key.clone(),
            done: Completion::new(token, fingerprint, output, settings.ttl).keeping(keep),
            lease: settings.lease,
            limit: settings.max_output_bytes,
        };
        // Read before `complete`: the record's TTL starts in the store no earlier than this.
        let cached = self
            .local
            .as_ref()
            .map(|local| (local, local.generation(), std::time::SystemTime::now()));
        // The lease is renewed until the output is recorded, not only while the body runs.
        let completed = renewal.around(claim.complete(recording)).await;
        match &completed {
            Ok(output) => {
                if let Some((local, generation, before)) = cached {
                    let expires_at = before + settings.ttl;
                    local.remember(&key, fingerprint, output.clone(), expires_at, generation);
                }
                pilot.land(Landing::Completed(output.clone()));
            }
            Err(_) => pilot.land(Landing::Released),
        }
        if let Some(panic) = panic {
            std::panic::resume_unwind(panic);
        }
        match completed {
            Ok(_) => result,
            Err(error) => {
                // Not released: the body ran. A store that keeps failing is retried in the
                // background (renewing the lease) until `max_run`; otherwise the claim keeps
                // duplicates out until its lease passes.
                event!(error, key = %key, error = %error, "could not record the output");
                Err(Error::from_store(StoreOp::Complete, &key, error).into())
            }
        }
    }
}

/// How long the owner keeps trying to record a body's output.
#[derive(Clone, Copy)]
enum Budget {
    /// In the caller's call: a few attempts, then the rest goes to the background.
    Attempts(u32),
    /// In the background: until this instant (the claim's `max_run`), renewing the lease
    /// between attempts so that no duplicate takes the key over meanwhile.
    Until(Instant),
}

/// What one owner records: its output (or the not-stored record) and how.
#[derive(Clone)]
struct Recording {
    store: Arc<dyn Store>,
    key: Key,
    done: Completion,
    lease: Duration,
    limit: usize,
}

impl Recording {
    /// Records the output, retrying transient errors within `budget` (`complete` is idempotent
    /// for the same token). A store that refuses the output as too large gets the not-stored
    /// record instead. Returns what was recorded.
    async fn record(&mut self, budget: Budget) -> Result<Bytes, StoreError> {
        let mut attempt = 1;
        let mut pause = defaults::COMPLETE_BACKOFF;
        loop {
            let completing = self.store.complete(&self.key, self.done.clone());
            let completed = metrics::store_call(StoreOp::Complete, &self.key, completing).await;
            match completed {
                Ok(()) => return Ok(self.done.output.clone()),
                Err(StoreError::TooLarge { size, limit })
                    if envelope::read_not_stored(&self.done.output).is_none() =>
                {
                    let reason = NotStored::TooLarge { size, limit };
                    event!(warn, key = %self.key, reason = %reason, "the store refused the output; recording that the body ran, so it does not run again");
                    let record = protocol::not_stored(&reason, self.limit.min(limit));
                    self.done.output = Bytes::from(record);
                    self.done.keep = None;
                }
                Err(error) if error.is_retryable() => {
                    let more = match budget {
                        Budget::Attempts(attempts) => attempt < attempts,
                        Budget::Until(until) => Instant::now() < until,
                    };
                    if !more {
                        return Err(error);
                    }
                    event!(warn, key = %self.key, error = %error, attempt, "complete failed; retrying");
                    tokio::time::sleep(pause).await;
                    // In the background the lease is renewed after each pause: a pause is at
                    // most a third of it.
                    let most = (self.lease / defaults::RENEW_DIVISOR).max(defaults::RENEW_MIN);
                    pause = (pause * 4).min(defaults::COMPLETE_BACKOFF_MAX).min(most);
                    attempt += 1;
                    if let Budget::Until(_) = budget {
                        // Keep the key while the store recovers; a taken-over key ends the
                        // attempts at the next `complete` (`LeaseLost`).
                        let renewing = self.store.renew(&self.key, &self.done.token, self.lease);
                        if metrics::store_call(StoreOp::Renew, &self.key, renewing)
                            .await
                            .is_ok()
                        {
                            metrics::count(Counter::Renewals, &self.key);
                        }
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Keeps recording in the background, counted by `shutdown`, until it is recorded, the
    /// key is taken over, or `max_run` passes. Without a runtime the lease frees the key, as
    /// for a crash.
    fn finish_in_background(mut self, background: &Arc<Background>, max_run: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let until = protocol::later(Instant::now(), max_run);
        background.spawn(&runtime, async move {
            match self.record(Budget::Until(until)).await {
                Ok(_) => {
                    event!(info, key = %self.key, "recorded the output in the background");
                }
                Err(error) => {
                    event!(error, key = %self.key, error = %error, "gave up recording the output; the key stays claimed until its lease passes");
                    let _ = error;
                }
            }
        });
    }
}

/// Where the owner's call is, which decides what dropping it (a cancelled call) does.
// Unboxed: the stage lives in the owner's future (itself boxed), and a box would cost every
// first execution an allocation.
#[allow(clippy::large_enum_variant)]
enum Stage {
    /// The body is running. A drop keeps the claim: the body may already have had its effect,
    /// so the key stays claimed until its lease passes instead of inviting an immediate
    /// second run.
    Running,
    /// The body returned and its output (or the record that it was not stored) is on its way.
    /// A drop keeps recording it in the background.
    Completing(Recording),
    /// Completed, released, or left to the background: a drop does nothing.
    Settled,
}

/// The claim the owner holds while its call runs.
struct HeldClaim<'a> {
    store: &'a Arc<dyn Store>,
    background: &'a Arc<Background>,
    key: &'a Key,
    token: Token,
    max_run: Duration,
    stage: Stage,
}

impl HeldClaim<'_> {
    /// Records the body's output (or that it was not stored): a few attempts here, then, on
    /// a store that keeps failing, in the background until `max_run` (renewing the lease). A
    /// drop on the way leaves it to the background too. Returns what was recorded.
    async fn complete(&mut self, recording: Recording) -> Result<Bytes, StoreError> {
        self.stage = Stage::Completing(recording);
        let Stage::Completing(completion) = &mut self.stage else {
            unreachable!("set above");
        };
        let recorded = completion
            .record(Budget::Attempts(defaults::COMPLETE_ATTEMPTS))
            .await;
        match std::mem::replace(&mut self.stage, Stage::Settled) {
            Stage::Completing(completion)
                if recorded.as_ref().is_err_and(Retryable::is_retryable) =>
            {
                completion.finish_in_background(self.background, self.max_run);
            }
            _ => {}
        }
        recorded
    }

    /// Releases the claim (the body failed with an error that is not stored, or panicked).
    async fn release(&mut self) {
        self.stage = Stage::Settled;
        let releasing = self.store.release(self.key, &self.token);
        match metrics::store_call(StoreOp::Release, self.key, releasing).await {
            Ok(()) => {
                metrics::count(Counter::Releases, self.key);
                event!(debug, key = %self.key, "released the claim");
            }
            Err(error) => {
                event!(warn, key = %self.key, error = %error, "could not release the claim; it holds until its lease passes");
                let _ = error;
            }
        }
    }
}

impl Drop for HeldClaim<'_> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.stage, Stage::Settled) {
            Stage::Running => {
                event!(warn, key = %self.key, "call cancelled while its body ran; the key stays claimed until its lease passes");
            }
            Stage::Completing(completion) => {
                event!(debug, key = %self.key, "call cancelled after its body returned; recording in the background (`Idempotency::shutdown` waits for it)");
                completion.finish_in_background(self.background, self.max_run);
            }
            Stage::Settled => {}
        }
    }
}
