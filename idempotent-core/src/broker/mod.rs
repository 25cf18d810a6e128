//! Publishing to a broker with its own deduplication: what the outbox's relay
//! ([`outbox::Relay`](crate::outbox::Relay)) publishes through, and how a consumer reads the
//! id back.
//!
//! A [`Publisher`] sends one [`Message`] and returns only once the broker has confirmed it
//! (stored it, or dropped it as a duplicate of the same id). The id travels as the broker's
//! own deduplication id, so a message published twice (a relay that crashed between the
//! broker's confirmation and marking its row published) is dropped by the broker, and a
//! consumer that reads the id (`nats::message_id`, `rabbitmq::message_id`) deduplicates whatever still comes twice
//! with a [`Consumer`](crate::consumer::Consumer) or an `Inbox`.
//!
//! | broker | feature | the id travels as | confirmation |
//! |---|---|---|---|
//! | NATS JetStream | `nats` | the `Nats-Msg-Id` header: the stream drops a repeat within its `duplicate_window` | the stream's publish ack |
//! | RabbitMQ | `rabbitmq` | the `message-id` property; RabbitMQ keeps no deduplication, so the consumer drops a repeat | publisher confirms (`mandatory`: an unroutable message is an error) |
//!
//! Write a [`Publisher`] of your own for another broker: return `Ok` only after the broker
//! has the message durably, and send the id in the broker's deduplication field if it has one.

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::BoxError;

#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;
#[cfg(feature = "rabbitmq")]
#[cfg_attr(docsrs, doc(cfg(feature = "rabbitmq")))]
pub mod rabbitmq;

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message's id, the same on every publish of it: the broker's deduplication id.
    pub id: String,
    /// Where it goes: the subject (NATS), or the routing key.
    pub topic: String,
    /// The bytes.
    pub payload: Bytes,
}

/// Publishes messages to a broker and waits for its confirmation.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `message`, with its id as the broker's deduplication id, and returns once the
    /// broker has confirmed it (stored it, or dropped it as a duplicate of an id it already
    /// has). An `Err` means the message may or may not have reached the broker: it is
    /// published again later, with the same id.
    async fn publish(&self, message: &Message) -> Result<(), BoxError>;
}
