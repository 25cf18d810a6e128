//! NATS JetStream (feature `nats`, on [`async_nats`]): a [`Publisher`] that sends the
//! message id as the `Nats-Msg-Id` header and waits for the stream's ack, and
//! [`message_id`], which reads it back on the consumer's side.
//!
//! JetStream drops a message whose `Nats-Msg-Id` it has seen within the stream's
//! `duplicate_window` (2 minutes unless configured): make the window longer than a relay's
//! lease plus its longest backoff, so a re-publish after a relay's crash is dropped by the
//! stream. Past the window, a consumer that deduplicates by [`message_id`] still processes
//! the message once.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_trait::async_trait;

use super::{Message, Publisher};
use crate::error::BoxError;

pub use async_nats;

/// The header JetStream deduplicates by.
pub const MESSAGE_ID_HEADER: &str = "Nats-Msg-Id";

/// Publishes to JetStream: the subject is the message's topic (after an optional prefix),
/// the `Nats-Msg-Id` header its id, and [`publish`](Publisher::publish) returns once the
/// stream acknowledged it (a duplicate's ack included).
#[derive(Debug, Clone)]
pub struct JetStreamPublisher {
    context: jetstream::Context,
    prefix: String,
    ack_timeout: Duration,
}

impl JetStreamPublisher {
    /// Publishes through `context`, waiting up to 5 seconds for each ack.
    pub fn new(context: jetstream::Context) -> JetStreamPublisher {
        JetStreamPublisher {
            context,
            prefix: String::new(),
            ack_timeout: Duration::from_secs(5),
        }
    }

    /// Puts `prefix` before every topic (`"orders."` + `"created"` = `"orders.created"`).
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> JetStreamPublisher {
        self.prefix = prefix.into();
        self
    }

    /// How long a publish waits for the send and the stream's ack together; past it the
    /// publish fails and the message is published again later (default 5 s).
    pub fn ack_timeout(mut self, timeout: Duration) -> JetStreamPublisher {
        self.ack_timeout = timeout;
        self
    }
}

#[async_trait]
impl Publisher for JetStreamPublisher {
    async fn publish(&self, message: &Message) -> Result<(), BoxError> {
        let mut headers = HeaderMap::new();
        headers.insert(MESSAGE_ID_HEADER, message.id.as_str());
        let subject = format!("{}{}", self.prefix, message.topic);
        let sent = async {
            let ack = self
                .context
                .publish_with_headers(subject, headers, message.payload.clone())
                .await?;
            ack.await.map_err(BoxError::from)
        };
        match tokio::time::timeout(self.ack_timeout, sent).await {
            Ok(Ok(_ack)) => Ok(()),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(format!(
                "JetStream did not acknowledge message {} within {:?}",
                message.id, self.ack_timeout
            )
            .into()),
        }
    }
}

/// The message id a relay published with (the `Nats-Msg-Id` header), to deduplicate by:
/// `message_id(message.headers.as_ref())`, then `consumer.handle(id, …)`.
pub fn message_id(headers: Option<&HeaderMap>) -> Option<&str> {
    headers?.get(MESSAGE_ID_HEADER).map(|value| value.as_str())
}
