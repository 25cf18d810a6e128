//! The store breaker: every claim asks the executor's [`CircuitBreaker`] first, when it has
//! one, and reports to it whether the store answered.
//!
//! Only claims are gated: a claim refused by an open breaker fails closed at once, before any
//! body runs. Completions, releases and renewals of bodies already running always go to the
//! store (refusing them would lose outputs or leases), and are not counted.

use super::Inner;
use crate::error::StoreError;
use crate::key::Key;
use crate::record::{Claim, ClaimNow};
use crate::retry::Permit;
use crate::store::ClaimRequest;

impl Inner {
    /// [`Store::claim_now`](crate::Store::claim_now), behind the breaker.
    #[inline]
    pub(super) fn claim_now(
        &self,
        key: &Key,
        request: ClaimRequest,
    ) -> Option<Result<ClaimNow, StoreError>> {
        let Some(breaker) = &self.breaker else {
            return self.store.claim_now(key, request);
        };
        let permit = match breaker.permit() {
            Ok(permit) => permit,
            Err(open) => return Some(Err(StoreError::CircuitOpen(open))),
        };
        // `None` (a remote store): the permit is dropped unreported, and `claim` asks again.
        let answer = self.store.claim_now(key, request)?;
        report(permit, answer.as_ref().err());
        Some(answer)
    }

    /// [`Store::claim`](crate::Store::claim), behind the breaker.
    pub(super) async fn claim(
        &self,
        key: &Key,
        request: ClaimRequest,
    ) -> Result<Claim, StoreError> {
        let Some(breaker) = &self.breaker else {
            return self.store.claim(key, request).await;
        };
        let permit = breaker.permit().map_err(StoreError::CircuitOpen)?;
        let answer = self.store.claim(key, request).await;
        report(permit, answer.as_ref().err());
        answer
    }
}

/// A store that could not be asked (unreachable, silent, failing) counts against it; any
/// answer, a corrupt record included, says it is up.
#[inline]
fn report(permit: Permit<'_>, error: Option<&StoreError>) {
    match error {
        Some(error) if error.is_transient() => permit.failure(),
        _ => permit.success(),
    }
}
