//! Idempotent message consumers: each message is processed once within a window, whatever
//! the broker redelivers.
//!
//! Brokers deliver *at least once*: a consumer that crashes, times out or loses its
//! connection before it acknowledges gets the message again, and publishers retry too. A
//! [`Consumer`] wraps the handler so that a message id (or a key derived from the message) is
//! processed once within the window, over any [`Store`](crate::Store):
//!
//! | delivery | what [`Consumer::handle`] does | what to tell the broker |
//! |---|---|---|
//! | first | runs the handler, remembers the id; [`Outcome::Processed`] | ack |
//! | duplicate of a processed message | skips the handler; [`Outcome::Duplicate`] with the first run's output | ack |
//! | duplicate while the first is still running | waits for it (bounded), then as above; [`Error::InProgress`] once the wait is over | nak with a delay |
//! | the handler failed | its error; the id is **not** marked, so a redelivery runs it again | nak (redeliver) |
//! | duplicate of a message whose output could not be stored | [`Error::OutputNotStored`]: the handler ran; it does not run again | ack (a nak redelivers it until the window passes) |
//! | the store cannot be reached | [`Error::Store`]; the handler does not run | nak with a delay |
//!
//! The mark is written after the handler returns, so a consumer that crashes between its
//! effect and the mark runs the effect again on redelivery (after the claim's `lease`). When
//! the effect is a database write, write the mark in the same transaction instead: see
//! `consumer::inbox` (features `postgres`, `mysql`, `sqlite`).
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use idempotent_core::consumer::{Consumer, Outcome};
//! use idempotent_core::{Error, Idempotency, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let settled = AtomicU64::new(0);
//! let consumer = Consumer::new(Idempotency::new(MemoryStore::new()), "payments.settle");
//!
//! // The broker delivers "evt-1" twice (a redelivery after a lost ack).
//! for (event_id, cents) in [("evt-1", 1999u64), ("evt-1", 1999), ("evt-2", 500)] {
//!     let outcome = consumer
//!         .handle(event_id, || async {
//!             settled.fetch_add(cents, Ordering::SeqCst); // the effect
//!             Ok::<_, Error>(())
//!         })
//!         .await?;
//!     // Processed or duplicate: either way, acknowledge the delivery.
//!     let _ack = outcome.is_duplicate();
//! }
//! assert_eq!(settled.load(Ordering::SeqCst), 1999 + 500);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{CodecOp, Error};
use crate::executor::Idempotency;
use crate::key::{Digest, Fingerprint, Key, Namespace};
use crate::protocol::{CallOptions, call_option_setters, defaults};

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite")))
)]
pub mod inbox;
pub mod sequence;

/// What [`Consumer::handle`] did with a delivery. Either way the delivery can be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The first delivery within the window: the handler ran and returned this.
    Processed(T),
    /// A duplicate: the handler did not run; this is what it returned the first time.
    Duplicate(T),
}

impl<T> Outcome<T> {
    /// `true` for a skipped duplicate.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Outcome::Duplicate(_))
    }

    /// What the handler returned, this time or the first time.
    pub fn into_inner(self) -> T {
        match self {
            Outcome::Processed(value) | Outcome::Duplicate(value) => value,
        }
    }
}

/// Deduplicates the messages of one consumer (one handler, one subscription) over the store of
/// an [`Idempotency`]: a message id is processed once within the [`window`](Self::window).
///
/// Consumers with different names never see each other's ids, so two services consuming the
/// same stream each process every message once. Several instances of one consumer (workers of
/// one queue, replicas of one service) share a name and a store, and so process each message
/// once between them. Cheap to clone.
///
/// Message ids are hashed (SHA-256 of their canonical encoding) into keys
/// `{name}:1:{hex}`: any `Serialize` value works, such as the broker's message id, an event id
/// from the payload, or a tuple derived from the message (`(order_id, "shipped")`).
///
/// Per-delivery options are [`CallOptions`], set one by one or as one value: the `ttl` is the
/// [`window`](Self::window); the `lease` (default: the executor's) should be longer than the
/// handler ever runs; the `wait_timeout` (default: the executor's) below the broker's ack
/// deadline; with [`InProgressPolicy::Reject`](crate::InProgressPolicy::Reject) a duplicate of
/// a delivery still being handled fails at once with [`Error::InProgress`] (nak it with a
/// delay).
#[derive(Debug, Clone)]
pub struct Consumer {
    idempotency: Idempotency,
    name: Namespace,
    options: CallOptions,
}

impl Consumer {
    /// A consumer named `name` (a stable name such as `"billing.settle-payments"`: it scopes
    /// the ids) over `idempotency`'s store, remembering processed ids for 24 hours.
    pub fn new(idempotency: Idempotency, name: impl Into<Namespace>) -> Consumer {
        Consumer {
            idempotency,
            name: name.into(),
            options: CallOptions::new().ttl(defaults::DEDUP_WINDOW),
        }
    }

    call_option_setters!(window, options);

    /// The consumer's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The key a message id is remembered under.
    ///
    /// ```
    /// use idempotent_core::consumer::Consumer;
    /// use idempotent_core::{Idempotency, MemoryStore};
    ///
    /// let consumer = Consumer::new(Idempotency::new(MemoryStore::new()), "orders.ship");
    /// let key = consumer.key(&("order-7", "shipped")).unwrap();
    /// assert!(key.to_string().starts_with("orders.ship:1:"));
    /// ```
    pub fn key<I: Serialize + ?Sized>(&self, id: &I) -> Result<Key, Error> {
        Consumer::key_in(&self.name, id)
    }

    pub(crate) fn key_in<I: Serialize + ?Sized>(name: &Namespace, id: &I) -> Result<Key, Error> {
        let digest = Digest::of(id).map_err(|source| Error::Codec {
            op: CodecOp::HashKey,
            key: None,
            source: Box::new(source),
        })?;
        Ok(Key::new(name.clone(), 1, digest))
    }

    /// Runs `handler` for the message `id` unless that id was processed within the window.
    ///
    /// `Ok` (processed or duplicate) means the delivery can be acknowledged; `Err` means it
    /// must be redelivered: the handler's own error leaves the id unmarked. The handler's
    /// output is stored and handed to duplicates (use `()` when there is nothing to return).
    pub async fn handle<I, T, E, F, Fut>(&self, id: &I, handler: F) -> Result<Outcome<T>, E>
    where
        I: Serialize + ?Sized,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let key = self.key(id)?;
        // Only the id identifies the message here: a redelivery is the same message.
        let fingerprint = Fingerprint::from_digest(*key.digest());
        self.run(key, fingerprint, handler).await
    }

    /// Like [`handle`](Self::handle), and also checks that a duplicate carries the same
    /// payload: an id that comes back with another payload is [`Error::KeyReused`] (a
    /// publisher reusing ids), and the handler does not run.
    ///
    /// ```
    /// use idempotent_core::consumer::Consumer;
    /// use idempotent_core::{Error, Idempotency, MemoryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let consumer = Consumer::new(Idempotency::new(MemoryStore::new()), "ledger.post");
    /// let post = |cents: u64| {
    ///     let consumer = &consumer;
    ///     async move { consumer.handle_payload("evt-9", &cents, || async { Ok::<_, Error>(cents) }).await }
    /// };
    /// assert!(!post(100).await.unwrap().is_duplicate());
    /// assert!(post(100).await.unwrap().is_duplicate());
    /// assert!(matches!(post(999).await, Err(Error::KeyReused { .. })));
    /// # }
    /// ```
    pub async fn handle_payload<I, P, T, E, F, Fut>(
        &self,
        id: &I,
        payload: &P,
        handler: F,
    ) -> Result<Outcome<T>, E>
    where
        I: Serialize + ?Sized,
        P: Serialize + ?Sized,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let key = self.key(id)?;
        let fingerprint = Fingerprint::of(payload).map_err(|source| Error::Codec {
            op: CodecOp::HashArguments,
            key: Some(key.clone()),
            source: Box::new(source),
        })?;
        self.run(key, fingerprint, handler).await
    }

    async fn run<T, E, F, Fut>(
        &self,
        key: Key,
        fingerprint: Fingerprint,
        handler: F,
    ) -> Result<Outcome<T>, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let call = self
            .idempotency
            .call(key, fingerprint)
            .options(self.options);
        // The executor replays a stored output without running the body: whether the body
        // ran tells a first delivery from a duplicate.
        let ran = AtomicBool::new(false);
        let value = call
            .run(|| {
                ran.store(true, Ordering::Relaxed);
                handler()
            })
            .await?;
        Ok(if ran.load(Ordering::Relaxed) {
            Outcome::Processed(value)
        } else {
            Outcome::Duplicate(value)
        })
    }
}
