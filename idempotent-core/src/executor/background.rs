//! What the executor still has to finish — owners running their body or recording its
//! output, and outputs left to the background (a cancelled call, a store that kept failing) —
//! and its shutdown, which waits for all of it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::protocol;

/// What [`Idempotency::shutdown`](super::Idempotency::shutdown) could not finish in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{pending} call(s) or background completion(s) still running when the shutdown timeout passed; their keys stay claimed until their leases pass, and a retry then runs the body again"
)]
pub struct ShutdownTimedOut {
    /// How many owners or background completions were still running.
    pub pending: usize,
}

/// The executor's unfinished work, counted.
#[derive(Debug, Default)]
pub(crate) struct Background {
    pending: AtomicUsize,
    idle: Notify,
}

impl Background {
    /// Counts one piece of work until the returned guard drops.
    pub(crate) fn count(self: &Arc<Self>) -> Counted {
        self.pending.fetch_add(1, Ordering::AcqRel);
        Counted(Arc::clone(self))
    }

    /// Runs `task` on `runtime`, counted until it ends or the runtime drops it.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let counted = self.count();
        runtime.spawn(async move {
            let _counted = counted;
            task.await;
        });
    }

    /// Waits up to `timeout` for the counted work to end.
    pub(crate) async fn shutdown(&self, timeout: Duration) -> Result<(), ShutdownTimedOut> {
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

/// One counted piece of work; dropped when it ends, or when its runtime drops it unfinished.
pub(crate) struct Counted(Arc<Background>);

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
