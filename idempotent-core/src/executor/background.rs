//! The executor's background work — completions of calls cancelled after their body
//! succeeded — and its shutdown, which waits for that work and stops lease renewals.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::protocol;

/// What [`Idempotency::shutdown`](super::Idempotency::shutdown) could not finish in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{pending} background completion(s) still running when the shutdown timeout passed; their calls' keys stay claimed until their leases pass, and retries then run the body again"
)]
pub struct ShutdownTimedOut {
    /// How many background completions were still running.
    pub pending: usize,
}

/// The executor's background tasks, counted, and whether it is shutting down.
#[derive(Debug, Default)]
pub(crate) struct Background {
    pending: AtomicUsize,
    idle: Notify,
    closing: AtomicBool,
}

impl Background {
    /// Runs `task` on `runtime`, counted until it ends or the runtime drops it.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        let counted = Counted(Arc::clone(self));
        runtime.spawn(async move {
            let _counted = counted;
            task.await;
        });
    }

    /// Whether [`shutdown`](Self::shutdown) was called: owners stop renewing their leases.
    pub(crate) fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Stops lease renewals and waits up to `timeout` for the background tasks.
    pub(crate) async fn shutdown(&self, timeout: Duration) -> Result<(), ShutdownTimedOut> {
        self.closing.store(true, Ordering::Release);
        let deadline = protocol::later(Instant::now(), timeout);
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the count is read, so a task ending between the two wakes us.
            idle.as_mut().enable();
            let pending = self.pending.load(Ordering::Acquire);
            if pending == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                let pending = self.pending.load(Ordering::Acquire);
                return if pending == 0 {
                    Ok(())
                } else {
                    Err(ShutdownTimedOut { pending })
                };
            }
        }
    }
}

/// One counted task; dropped when it ends, or when its runtime drops it unfinished.
struct Counted(Arc<Background>);

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
