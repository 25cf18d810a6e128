//! The background sweeper: purges expired rows on an interval until shut down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{SqlDialect, SqlStore};
use crate::trace::event;

/// Batches one pass may purge before it yields to the interval, so a huge backlog cannot keep
/// the sweeper busy without pause.
const MAX_BATCHES_PER_PASS: usize = 100;
/// The shortest interval accepted.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Handle of a sweeper started by [`SqlStore::spawn_sweeper`]. Stop it with
/// [`shutdown`](Self::shutdown), which waits for a purge in flight to finish; dropping the
/// handle stops it too, without waiting.
#[derive(Debug)]
pub struct Sweeper {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    purged: Arc<AtomicU64>,
}

impl Sweeper {
    pub(super) fn spawn<DB: SqlDialect>(
        runtime: &Handle,
        store: SqlStore<DB>,
        every: Duration,
        batch: u32,
    ) -> Sweeper {
        let (stop, mut stopped) = watch::channel(false);
        let purged = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&purged);
        let every = every.max(MIN_INTERVAL);
        let batch = batch.max(1);
        let task = runtime.spawn(async move {
            loop {
                for _ in 0..MAX_BATCHES_PER_PASS {
                    match store.purge_expired(batch).await {
                        Ok(deleted) => {
                            counter.fetch_add(deleted, Ordering::Relaxed);
                            if deleted < u64::from(batch) {
                                break;
                            }
                        }
                        Err(error) => {
                            event!(warn, error = %error, "the sweeper could not purge expired records; retrying next interval");
                            let _ = error;
                            break;
                        }
                    }
                    if *stopped.borrow() {
                        return;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    // A shutdown, or the handle was dropped.
                    _ = stopped.changed() => return,
                }
            }
        });
        Sweeper {
            stop,
            task: Some(task),
            purged,
        }
    }

    /// Rows purged so far.
    pub fn purged(&self) -> u64 {
        self.purged.load(Ordering::Relaxed)
    }

    /// Stops the sweeper, waits for it to finish its current purge, and returns how many
    /// rows it purged in all.
    pub async fn shutdown(mut self) -> u64 {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.purged()
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
