//! The owner of a key: run the body once, record its outcome as the protocol decides, and
//! guard the claim when the call is dropped midway.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use tokio::time::Instant;

use super::Inner;
use super::background::Background;
use super::flight::Landing;
use super::lease::Renewal;
use crate::error::{Error, NotStored, StoreError, StoreOp};
use crate::kept::Keep;
use crate::key::{Fingerprint, Key};
use crate::output::{OutputMode, envelope};
use crate::protocol::{self, Outcome, Settings, defaults};
use crate::record::Token;
use crate::store::Store;
use crate::trace::event;

impl Inner {
    /// The caller owns the key: run the body once, renewing its lease, and record what it
    /// returned.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn own<M, T, E, F, Fut>(
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
            fingerprint,
            stage: Stage::Running,
        };
        event!(debug, key = %key, "execute");
        let renewal = Renewal::new(
            &*self.store,
            &key,
            token,
            &settings,
            pilot.flight(),
            &self.background,
        );
        // `body()` is called inside the caught future: a panic in its synchronous part
        // releases the claim too.
        let body = AssertUnwindSafe(async move { body().await }).catch_unwind();
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
                (Bytes::from(protocol::not_stored(&reason)), None)
            }
        };
        let completed = claim.complete(output, settings.ttl, keep).await;
        match &completed {
            Ok(output) => pilot.land(Landing::Completed(output.clone())),
            Err(_) => pilot.land(Landing::Released),
        }
        if let Some(panic) = panic {
            std::panic::resume_unwind(panic);
        }
        match completed {
            Ok(_) => result,
            Err(error) => {
                // Not released: the body ran, so the claim keeps duplicates out until its lease
                // passes rather than inviting an immediate second run.
                event!(error, key = %key, error = %error, "could not record the output");
                Err(Error::from_store(StoreOp::Complete, &key, error).into())
            }
        }
    }
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
            ) if attempt < defaults::COMPLETE_ATTEMPTS => {
                event!(warn, key = %key, error = %error, attempt, "complete failed; retrying");
                let _ = error;
                tokio::time::sleep(defaults::COMPLETE_BACKOFF * 4u32.pow(attempt - 1)).await;
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
    /// The body returned and its output (or the record that it was not stored) is encoded. A
    /// drop completes in the background.
    Completing {
        output: Bytes,
        ttl: Duration,
        keep: Option<Keep>,
    },
    /// Completed, released, or left to its lease: a drop does nothing.
    Settled,
}

/// The claim the owner holds while its call runs.
struct HeldClaim<'a> {
    store: &'a Arc<dyn Store>,
    background: &'a Arc<Background>,
    key: &'a Key,
    token: Token,
    fingerprint: Fingerprint,
    stage: Stage,
}

impl HeldClaim<'_> {
    /// Records the body's output (or that it was not stored); a drop on the way completes in
    /// the background. A store that refuses the output as too large gets the not-stored record
    /// instead. Returns what was recorded.
    async fn complete(
        &mut self,
        output: Bytes,
        ttl: Duration,
        keep: Option<Keep>,
    ) -> Result<Bytes, StoreError> {
        let mut output = output;
        let mut keep = keep;
        loop {
            self.stage = Stage::Completing {
                output: output.clone(),
                ttl,
                keep,
            };
            let completed = complete(
                &**self.store,
                self.key,
                &self.token,
                &self.fingerprint,
                output.clone(),
                ttl,
                keep,
            )
            .await;
            self.stage = Stage::Settled;
            match completed {
                Ok(()) => return Ok(output),
                Err(StoreError::TooLarge { size, limit })
                    if envelope::read_not_stored(&output).is_none() =>
                {
                    let reason = NotStored::TooLarge { size, limit };
                    event!(warn, key = %self.key, reason = %reason, "the store refused the output; recording that the body ran, so it does not run again");
                    output = Bytes::from(protocol::not_stored(&reason));
                    keep = None;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Releases the claim (the body failed with an error that is not stored, or panicked).
    async fn release(&mut self) {
        self.stage = Stage::Settled;
        match self.store.release(self.key, &self.token).await {
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

impl Drop for HeldClaim<'_> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.stage, Stage::Settled) {
            Stage::Running => {
                event!(warn, key = %self.key, "call cancelled while its body ran; the key stays claimed until its lease passes");
            }
            Stage::Completing { output, ttl, keep } => {
                // Without a runtime the lease frees the key, as for a crash.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let store = Arc::clone(self.store);
                    let key = self.key.clone();
                    let (token, fingerprint) = (self.token, self.fingerprint);
                    event!(debug, key = %key, "call cancelled after its body returned; completing in the background (`Idempotency::shutdown` waits for it)");
                    self.background.spawn(&runtime, async move {
                        let _ =
                            complete(&*store, &key, &token, &fingerprint, output, ttl, keep).await;
                    });
                }
            }
            Stage::Settled => {}
        }
    }
}
