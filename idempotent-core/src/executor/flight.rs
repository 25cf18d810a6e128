//! In-process coalescing: while one task of this process runs a key's body, the other tasks of
//! this process with that key wait on a notification for its result instead of polling the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::key::{Fingerprint, Key};

const SHARDS: usize = 16;

/// How a flight ended, as its followers see it.
#[derive(Debug, Clone)]
pub(crate) enum Landing {
    /// The owner stored this output: decode and return it.
    Completed(Bytes),
    /// The owner released the key, lost it, or could not record its output: ask the store.
    Released,
}

/// One key being run by a task of this process.
#[derive(Debug)]
pub(crate) struct Flight {
    pub(crate) fingerprint: Fingerprint,
    /// When the owner's lease passes (moved by each renewal): a follower stops waiting then
    /// and asks the store, which lets it take over a hung owner.
    lease_until: Mutex<Instant>,
    /// Set once, when the flight lands.
    landing: OnceLock<Landing>,
    /// Wakes the followers waiting for `landing`. (A `watch` channel did the same but wakes
    /// eight notifiers on every landing, followers or not: a measurable share of a first
    /// execution.)
    landed: Notify,
}

impl Flight {
    /// When the owner's lease passes, as far as this process knows.
    pub(crate) fn lease_until(&self) -> Instant {
        *self
            .lease_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The owner renewed its lease until `until`.
    pub(crate) fn extend(&self, until: Instant) {
        let mut lease_until = self
            .lease_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *lease_until = (*lease_until).max(until);
    }

    /// Waits until the flight lands or `until` passes (`None`).
    pub(crate) async fn wait(&self, until: Instant) -> Option<Landing> {
        let landed = async {
            loop {
                let notified = self.landed.notified();
                tokio::pin!(notified);
                // Registered before the check, so a landing between the two is not missed.
                notified.as_mut().enable();
                if let Some(landing) = self.landing.get() {
                    return landing.clone();
                }
                notified.await;
            }
        };
        tokio::time::timeout_at(until, landed).await.ok()
    }
}

type Shard = Mutex<HashMap<Key, Arc<Flight>>>;

/// The flights of one executor.
#[derive(Debug)]
pub(crate) struct Flights {
    shards: Box<[Shard]>,
    live: AtomicUsize,
}

impl Default for Flights {
    fn default() -> Self {
        Flights {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            live: AtomicUsize::new(0),
        }
    }
}

impl Flights {
    fn shard(&self, key: &Key) -> MutexGuard<'_, HashMap<Key, Arc<Flight>>> {
        let index = usize::from(key.digest().as_bytes()[1]) % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a task of this process is running any key.
    #[inline]
    pub(crate) fn busy(&self) -> bool {
        self.live.load(Ordering::Acquire) != 0
    }

    /// The flight running `key` in this process, if any.
    pub(crate) fn get(&self, key: &Key) -> Option<Arc<Flight>> {
        if !self.busy() {
            return None;
        }
        self.shard(key).get(key).cloned()
    }

    /// Registers the caller as the key's local owner until the returned handle lands or drops.
    /// A previous flight of the key (an owner whose lease passed and was taken over) is
    /// replaced; its handle will not remove the new one.
    pub(crate) fn start(
        &self,
        key: &Key,
        fingerprint: Fingerprint,
        lease_until: Instant,
    ) -> Pilot<'_> {
        let flight = Arc::new(Flight {
            fingerprint,
            lease_until: Mutex::new(lease_until),
            landing: OnceLock::new(),
            landed: Notify::new(),
        });
        let previous = self.shard(key).insert(key.clone(), Arc::clone(&flight));
        if previous.is_none() {
            self.live.fetch_add(1, Ordering::AcqRel);
        }
        Pilot {
            flights: self,
            key: key.clone(),
            flight,
            landed: false,
        }
    }
}

/// The owner's side of a flight. Dropping it without [`land`](Pilot::land) (a panic, a
/// cancelled future) lands it as released.
#[derive(Debug)]
pub(crate) struct Pilot<'a> {
    flights: &'a Flights,
    key: Key,
    flight: Arc<Flight>,
    landed: bool,
}

impl Pilot<'_> {
    /// The flight, for the owner's lease renewal to move its lease.
    pub(crate) fn flight(&self) -> Arc<Flight> {
        Arc::clone(&self.flight)
    }

    pub(crate) fn land(mut self, landing: Landing) {
        self.finish(landing);
    }

    fn finish(&mut self, landing: Landing) {
        if self.landed {
            return;
        }
        self.landed = true;
        {
            let mut shard = self.flights.shard(&self.key);
            if shard
                .get(&self.key)
                .is_some_and(|current| Arc::ptr_eq(current, &self.flight))
            {
                shard.remove(&self.key);
                self.flights.live.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _ = self.flight.landing.set(landing);
        self.flight.landed.notify_waiters();
    }
}

impl Drop for Pilot<'_> {
    fn drop(&mut self) {
        self.finish(Landing::Released);
    }
}
