//! Lease renewal: while the owner's body runs, its lease is renewed every third of it (fenced
//! by the owner's token), up to `max_run`, so a slow but live body keeps its key and a hung
//! one loses it after `max_run` + its lease.
//!
//! The renewal runs inside the owner's own future, beside the body: no task is spawned, a
//! body that finishes at its first poll never starts a timer, and a cancelled call stops
//! renewing when it is dropped.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::{Instant, Sleep};

use super::flight::Flight;
use crate::error::{StoreError, StoreOp};
use crate::key::Key;
use crate::metrics::{self, Counter};
use crate::protocol::{Settings, defaults, later};
use crate::record::Token;
use crate::store::Store;
use crate::trace::event;

/// The owner's lease, renewed while its body runs. It borrows everything from the owner's
/// call and reads the clock only once the body first waits, so a body that finishes at its
/// first poll pays nothing for it.
pub(super) struct Renewal<'a> {
    store: &'a dyn Store,
    key: &'a Key,
    token: Token,
    lease: Duration,
    max_run: Duration,
    flight: &'a Flight,
    /// When renewal stops: `max_run` after the body first waited.
    stop_at: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    /// A renewal on its way, and when it was sent.
    renewing: Option<(Instant, BoxFuture<'a, Result<(), StoreError>>)>,
    stopped: bool,
}

impl<'a> Renewal<'a> {
    pub(super) fn new(
        store: &'a dyn Store,
        key: &'a Key,
        token: Token,
        settings: &Settings,
        flight: &'a Flight,
    ) -> Renewal<'a> {
        Renewal {
            store,
            key,
            token,
            lease: settings.lease,
            max_run: settings.max_run,
            flight,
            stop_at: None,
            timer: None,
            renewing: None,
            stopped: settings.max_run.is_zero(),
        }
    }

    /// Runs `body` to its end, renewing the lease meanwhile (again for the next `around`:
    /// the body, then the recording of its output).
    pub(super) async fn around<F: Future>(&mut self, body: F) -> F::Output {
        let mut body = pin!(body);
        poll_fn(|cx| {
            if let Poll::Ready(output) = body.as_mut().poll(cx) {
                return Poll::Ready(output);
            }
            self.poll_renew(cx);
            Poll::Pending
        })
        .await
    }

    /// Drives the timer and the renewal on its way; registers for the next wake-up.
    fn poll_renew(&mut self, cx: &mut Context<'_>) {
        loop {
            if let Some((sent, renewing)) = self.renewing.as_mut() {
                let Poll::Ready(renewed) = renewing.as_mut().poll(cx) else {
                    return;
                };
                let sent = *sent;
                self.renewing = None;
                match renewed {
                    Ok(()) => {
                        metrics::count(Counter::Renewals, self.key);
                        event!(trace, key = %self.key, "renewed the lease");
                        self.flight.extend(later(sent, self.lease));
                    }
                    Err(StoreError::LeaseLost) => {
                        event!(warn, key = %self.key, "lease lost while the body ran: another call took the key over; this call's result will not be stored");
                        self.stopped = true;
                    }
                    Err(error) => {
                        event!(warn, key = %self.key, error = %error, "could not renew the lease; trying again");
                        let _ = error;
                    }
                }
            }
            if self.stopped {
                return;
            }
            let every = (self.lease / defaults::RENEW_DIVISOR).max(defaults::RENEW_MIN);
            let timer = match self.timer.as_mut() {
                Some(timer) => timer,
                None => {
                    let now = Instant::now();
                    self.stop_at = Some(later(now, self.max_run));
                    self.timer
                        .insert(Box::pin(tokio::time::sleep_until(later(now, every))))
                }
            };
            if timer.as_mut().poll(cx).is_pending() {
                return;
            }
            let now = Instant::now();
            if self.stop_at.is_some_and(|stop_at| now >= stop_at) {
                event!(warn, key = %self.key, "the body is still running and `max_run` passed: lease renewal stops; the key may be taken over once its lease passes");
                self.stopped = true;
                return;
            }
            timer.as_mut().reset(later(now, every));
            let (store, key, token, lease) = (self.store, self.key, self.token, self.lease);
            // Bounded by the renewal period: a slow renewal never holds up the next one.
            self.renewing = Some((
                now,
                Box::pin(async move {
                    let renewing = store.renew(key, &token, lease);
                    let renewing = metrics::store_call(StoreOp::Renew, key, renewing);
                    match tokio::time::timeout(every, renewing).await {
                        Ok(renewed) => renewed,
                        Err(_) => Err(StoreError::Timeout(every)),
                    }
                }),
            ));
        }
    }
}
