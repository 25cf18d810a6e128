//! Producer-sequence deduplication: one high-water mark per producer, however many messages
//! pass.
//!
//! A [`Consumer`](super::Consumer) remembers every message id for its window. When messages
//! come from producers that number them (as Kafka's idempotent producer does: a producer id
//! and a sequence 1, 2, 3, …), one number per producer is enough: a message at or below the
//! producer's mark was processed, and the next one is the mark plus one. Space is constant
//! (one small value per producer in the store, counted by
//! [`MemoryStore::mark_count`](crate::MemoryStore::mark_count) in the tests), and there is no
//! window: a duplicate a month late is still a duplicate.
//!
//! - The producer stamps each message with its id and next sequence
//!   ([`ProducerSequence::next`]), which the store keeps, so that a restarted producer
//!   continues where it stopped; it re-publishes what it may not have sent with
//!   [`ProducerSequence::again`].
//! - The consumer reads the stamp ([`Stamp::from_headers`]: headers
//!   [`PRODUCER_HEADER`] and [`SEQUENCE_HEADER`] on JetStream or RabbitMQ, or fields of the
//!   payload) and hands it to [`SequencedConsumer::handle`].
//!
//! | delivery | what [`SequencedConsumer::handle`] does | what to tell the broker |
//! |---|---|---|
//! | the next message (mark + 1) | runs the handler, then moves the mark to it; [`Delivery::Processed`] | ack |
//! | at or below the mark | skips the handler; [`Delivery::Duplicate`] | ack |
//! | while another message of the producer is being handled | waits (up to `wait_timeout`), then as above; [`Error::InProgress`] | nak with a delay |
//! | past the next one (a gap) | [`GapPolicy`]: [`Error::SequenceGap`] (`Reject`, the default, or `Wait` once it waited), or run it and skip the missing ones ([`Delivery::ProcessedAfterGap`], `Accept`) | nak with a delay (the missing message comes first) |
//! | the handler failed | its error; the mark does not move, so a redelivery runs it again | nak |
//! | the store cannot be reached | [`Error::Store`]; the handler does not run | nak with a delay |
//! | the worker died (or the call was dropped) holding the mark | the next delivery waits for its lease, then takes the mark over | — |
//!
//! The mark holds the delivery in progress too (its owner's token and lease, renewed while
//! the handler runs), so that messages of one producer are handled one at a time, in order,
//! across all instances of the consumer; every change is a compare-and-set fenced by that
//! token, and moving the mark is one atomic write. As with [`Consumer`](super::Consumer), a
//! consumer that dies between its effect and moving the mark runs the effect again once the
//! lease passes; to close that gap on a SQL database, use `SequencedInbox` (features
//! `postgres`, `mysql`, `sqlite`), which moves the mark in the handler's transaction.
//!
//! Works over the memory, Redis and SQL stores ([`Store::load_mark`],
//! [`Store::swap_mark`]).
//!
//! ```
//! use idempotent_core::consumer::sequence::{Delivery, ProducerSequence, SequencedConsumer};
//! use idempotent_core::{Error, Idempotency, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let idempotency = Idempotency::new(MemoryStore::new());
//! // The producer: its sequence lives in the store, so a restart continues it.
//! let mut producer = ProducerSequence::open(&idempotency, "stock.producers", "warehouse-7").await?;
//! let first = producer.next().await?; // warehouse-7 #1
//! let second = producer.next().await?; // warehouse-7 #2
//!
//! let consumer = SequencedConsumer::new(idempotency, "stock.apply-moves");
//! let mut applied = Vec::new();
//! // #1, #2, then #1 again (a redelivery): applied once each, in order.
//! for stamp in [&first, &second, &first] {
//!     let delivery = consumer
//!         .handle(stamp, || async {
//!             applied.push(stamp.sequence());
//!             Ok::<_, Error>(())
//!         })
//!         .await?;
//!     let _ack = delivery.is_duplicate(); // either way, acknowledge
//! }
//! assert_eq!(applied, [1, 2]);
//! assert_eq!(consumer.mark("warehouse-7").await?, 2);
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::ops::RangeInclusive;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{Either, select};

use crate::error::{CodecOp, Error, StoreOp};
use crate::executor::Idempotency;
use crate::key::{Digest, Key, Namespace};
use crate::protocol::defaults;
use crate::record::Token;
use crate::store::MarkSwap;
use crate::store::Store;

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod inbox;
mod mark;
mod producer;

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite")))
)]
pub use inbox::SequencedInbox;
use mark::{Admission, Mark, Owner, load, millis, now_ms, swap_owned};
pub use producer::{PRODUCER_HEADER, ProducerSequence, SEQUENCE_HEADER, Stamp};

/// How long a producer's mark (and a [`ProducerSequence`]) is kept after its last change:
/// 30 days. A producer silent for longer starts again from sequence 1 on both sides.
pub const RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// What to do with a message past the next one expected (a gap: the messages between were
/// not processed yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GapPolicy {
    /// Refuse it at once with [`Error::SequenceGap`]: nak it with a delay, so that the
    /// missing messages come first. The default.
    #[default]
    Reject,
    /// Wait up to this long for the missing messages (handled by other instances), then
    /// refuse it like `Reject`. A consumer that handles one message at a time waits in vain:
    /// there, use `Reject`.
    Wait(Duration),
    /// Handle it, and move the mark past the missing messages: they count as duplicates if
    /// they come later. [`Delivery::ProcessedAfterGap`] says which were skipped. Only for
    /// messages that supersede the ones before (the latest price, a position).
    Accept,
}

/// What [`SequencedConsumer::handle`] did with a delivery. Either way it can be acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery<T> {
    /// The next message of its producer: the handler ran and returned this.
    Processed(T),
    /// A message past a gap, handled under [`GapPolicy::Accept`]: the handler ran and
    /// returned `output`; the `missed` sequences were skipped for good.
    ProcessedAfterGap {
        /// What the handler returned.
        output: T,
        /// The sequences skipped.
        missed: RangeInclusive<u64>,
    },
    /// At or below the producer's mark: processed before, so the handler did not run.
    Duplicate,
}

impl<T> Delivery<T> {
    /// `true` for a skipped duplicate.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Delivery::Duplicate)
    }

    /// What the handler returned, when it ran.
    pub fn output(self) -> Option<T> {
        match self {
            Delivery::Processed(output) | Delivery::ProcessedAfterGap { output, .. } => {
                Some(output)
            }
            Delivery::Duplicate => None,
        }
    }
}

/// Deduplicates and orders the messages of numbered producers: one high-water mark per
/// producer in the store of an [`Idempotency`]. See the [module docs](self). Cheap to clone.
///
/// Instances sharing a name and a store share the marks, so each message is processed once,
/// in its producer's order, between them; consumers with different names keep their own.
#[derive(Debug, Clone)]
pub struct SequencedConsumer {
    store: Arc<dyn Store>,
    name: Namespace,
    lease: Duration,
    wait_timeout: Duration,
    max_run: Duration,
    retention: Duration,
    gaps: GapPolicy,
}

impl SequencedConsumer {
    /// A consumer named `name` (a stable name: it scopes the marks) over `idempotency`'s
    /// store: lease 30 s, wait 30 s, gaps rejected, marks kept 30 days.
    pub fn new(idempotency: Idempotency, name: impl Into<Namespace>) -> SequencedConsumer {
        SequencedConsumer {
            store: Arc::clone(idempotency.store()),
            name: name.into(),
            lease: defaults::LEASE,
            wait_timeout: defaults::WAIT_TIMEOUT,
            max_run: defaults::MAX_RUN,
            retention: RETENTION,
            gaps: GapPolicy::Reject,
        }
    }

    /// How long a delivery holds its producer's mark without renewing it; renewed every
    /// third of it while the handler runs (up to `max_run`). Another instance takes a mark
    /// whose lease passed.
    pub fn lease(mut self, lease: Duration) -> SequencedConsumer {
        self.lease = lease.clamp(Duration::from_millis(3), defaults::LONGEST);
        self
    }

    /// How long a delivery waits while another message of its producer is being handled,
    /// before [`Error::InProgress`]. Keep it under the broker's ack deadline.
    pub fn wait_timeout(mut self, wait: Duration) -> SequencedConsumer {
        self.wait_timeout = wait.min(defaults::LONGEST);
        self
    }

    /// How long a handler's lease is renewed at most (default 15 minutes): a hung handler
    /// loses the mark after this plus its lease.
    pub fn max_run(mut self, max_run: Duration) -> SequencedConsumer {
        self.max_run = max_run.min(defaults::LONGEST);
        self
    }

    /// How long a mark is kept after its last change (default [`RETENTION`]). Keep it no
    /// longer than the producers' [`ProducerSequence::retention`].
    pub fn retention(mut self, retention: Duration) -> SequencedConsumer {
        self.retention = retention.clamp(Duration::from_secs(1), defaults::LONGEST);
        self
    }

    /// What to do with a gap (default [`GapPolicy::Reject`]).
    pub fn on_gap(mut self, policy: GapPolicy) -> SequencedConsumer {
        self.gaps = policy;
        self
    }

    /// The consumer's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The key `producer`'s mark is kept under.
    pub fn key(&self, producer: &str) -> Result<Key, Error> {
        mark_key(&self.name, producer)
    }

    /// The highest sequence of `producer` processed (`0`: none within the retention).
    pub async fn mark(&self, producer: &str) -> Result<u64, Error> {
        let key = self.key(producer)?;
        Ok(load(&*self.store, &key).await?.0.processed)
    }

    /// Runs `handler` for the message stamped `stamp` if it is its producer's next one, and
    /// moves the producer's mark to it when the handler returns `Ok`. See the
    /// [module docs](self) for each case.
    pub async fn handle<T, E, F, Fut>(&self, stamp: &Stamp, handler: F) -> Result<Delivery<T>, E>
    where
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let key = self.key(stamp.producer())?;
        let store = &*self.store;
        let Some((claimed, owner, gap)) = self.claim(store, &key, stamp).await? else {
            return Ok(Delivery::Duplicate);
        };
        let guess = claimed.encode();
        let result = self.run_renewing(store, &key, &claimed, handler).await;
        let (done, op) = match &result {
            Ok(_) => (stamp.sequence(), StoreOp::Complete),
            Err(_) => (claimed.processed, StoreOp::Release),
        };
        let after = Mark {
            processed: done,
            owner: None,
        };
        let swapped = swap_owned(
            store,
            &key,
            &owner.token,
            &guess,
            &after,
            self.retention,
            op,
        );
        match (result, swapped.await) {
            (Ok(output), Ok(true)) => Ok(match gap {
                Some(missed) => Delivery::ProcessedAfterGap { output, missed },
                None => Delivery::Processed(output),
            }),
            (Ok(_), Ok(false)) => Err(Error::LeaseLost { key }.into()),
            (Ok(_), Err(error)) => Err(error.into()),
            // The handler's error either way: a release that failed leaves the mark held
            // until its lease passes.
            (Err(error), _) => Err(error),
        }
    }

    /// Takes the producer's mark for `stamp`: `None` for a duplicate, else the mark as
    /// claimed, its owner (this delivery) and the sequences a gap skips.
    async fn claim(
        &self,
        store: &dyn Store,
        key: &Key,
        stamp: &Stamp,
    ) -> Result<Option<(Mark, Owner, Option<RangeInclusive<u64>>)>, Error> {
        let started = Instant::now();
        let mut nap = defaults::POLL_FIRST;
        let sequence = stamp.sequence();
        loop {
            let (mark, bytes) = load(store, key).await?;
            let now = now_ms();
            let waited = started.elapsed();
            let missed = match mark.admit(sequence, now, self.gaps == GapPolicy::Accept) {
                Admission::Duplicate => return Ok(None),
                Admission::Run(missed) => missed,
                Admission::Busy(retry_after) if waited >= self.wait_timeout => {
                    return Err(Error::InProgress {
                        key: key.clone(),
                        retry_after,
                    });
                }
                Admission::Gap { expected } => match self.gaps {
                    GapPolicy::Wait(limit) if waited < limit => {
                        nap = nap_then_longer(nap).await;
                        continue;
                    }
                    _ => return Err(gap_error(key, stamp, expected)),
                },
                Admission::Busy(_) => {
                    nap = nap_then_longer(nap).await;
                    continue;
                }
            };
            let owner = Owner {
                token: Token::random(),
                sequence,
                lease_until: now.saturating_add(millis(self.lease)),
            };
            let claimed = Mark {
                processed: mark.processed,
                owner: Some(owner),
            };
            let swapped = store
                .swap_mark(
                    key,
                    MarkSwap::new(bytes.as_deref(), &claimed.encode(), self.retention),
                )
                .await
                .map_err(|source| Error::from_store(StoreOp::Claim, key, source))?;
            if swapped {
                return Ok(Some((claimed, owner, missed)));
            }
            // Another delivery changed the mark between the read and the swap: read again.
        }
    }

    /// Runs the handler while renewing the claimed mark's lease every third of it (up to
    /// `max_run`). A renewal that finds the mark taken over stops renewing; the completion
    /// then reports the lease lost.
    async fn run_renewing<T, E, F, Fut>(
        &self,
        store: &dyn Store,
        key: &Key,
        claimed: &Mark,
        handler: F,
    ) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let body = pin!(handler());
        let renewal = pin!(async {
            let every = (self.lease / defaults::RENEW_DIVISOR).max(defaults::RENEW_MIN);
            let stop = Instant::now() + self.max_run.min(defaults::LONGEST);
            let mut latest = *claimed;
            while Instant::now() < stop {
                tokio::time::sleep(every).await;
                let Some(owner) = latest.owner else { break };
                let renewed = Mark {
                    owner: Some(Owner {
                        lease_until: now_ms().saturating_add(millis(self.lease)),
                        ..owner
                    }),
                    ..latest
                };
                let guess = latest.encode();
                let swap = swap_owned(
                    store,
                    key,
                    &owner.token,
                    &guess,
                    &renewed,
                    self.retention,
                    StoreOp::Renew,
                );
                match swap.await {
                    Ok(true) => latest = renewed,
                    Ok(false) => break,
                    // A store error: try again at the next tick, while the lease lasts.
                    Err(_) => {}
                }
            }
            std::future::pending::<Infallible>().await
        });
        match select(body, renewal).await {
            Either::Left((output, _)) => output,
            Either::Right((never, _)) => match never {},
        }
    }
}

/// Sleeps `nap`; the next, longer nap.
async fn nap_then_longer(nap: Duration) -> Duration {
    tokio::time::sleep(nap).await;
    (nap * 2).min(defaults::POLL_MAX)
}

/// The refusal of `stamp`, past the `expected` sequence.
pub(crate) fn gap_error(key: &Key, stamp: &Stamp, expected: u64) -> Error {
    Error::SequenceGap {
        key: key.clone(),
        producer: stamp.producer().to_owned(),
        expected,
        received: stamp.sequence(),
    }
}

/// The key of `producer`'s mark in consumer `name`.
pub(crate) fn mark_key(name: &Namespace, producer: &str) -> Result<Key, Error> {
    let digest =
        Digest::of(&("idempotency.sequence", producer)).map_err(|source| Error::Codec {
            op: CodecOp::HashKey,
            key: None,
            source: Box::new(source),
        })?;
    Ok(Key::new(name.clone(), 1, digest))
}
