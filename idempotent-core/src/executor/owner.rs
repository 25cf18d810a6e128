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
use super::flight::Landing;
use crate::error::{Error, StoreError, StoreOp};
use crate::kept::Keep;
use crate::key::{Fingerprint, Key};
use crate::output::OutputMode;
use crate::protocol::{self, Outcome, Settings, Unstorable, defaults};
use crate::record::Token;
use crate::store::Store;
use crate::trace::event;

impl Inner {
    /// The caller owns the key: run the body once and record what it returned.
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
        let output = match protocol::outcome::<M, T, E>(&result, settings.max_output_bytes) {
            Outcome::Store(encoded) => Bytes::from(encoded),
            Outcome::Release => {
                event!(debug, key = %key, "the body returned an error; releasing the claim");
                claim.release().await;
                pilot.land(Landing::Released);
                return result;
            }
            Outcome::Unstorable(why) => {
                event!(warn, key = %key, why = ?why, "the output cannot be stored; releasing the claim");
                claim.release().await;
                pilot.land(Landing::Released);
                return Err(why.into_error(key).into());
            }
        };
        // From here a dropped call (cancelled while `complete` is on its way) still records the
        // output, in the background: the body ran and succeeded.
        claim.stage = Stage::Completing {
            output: output.clone(),
            ttl: settings.ttl,
            keep,
        };
        let completed = complete(
            &*self.store,
            &key,
            &token,
            &fingerprint,
            output.clone(),
            settings.ttl,
            keep,
        )
        .await;
        match completed {
            Ok(()) => {
                claim.stage = Stage::Settled;
                pilot.land(Landing::Completed(output));
                result
            }
            Err(StoreError::TooLarge { size, limit }) => {
                claim.release().await;
                pilot.land(Landing::Released);
                Err(Unstorable::TooLarge { size, limit }.into_error(key).into())
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
