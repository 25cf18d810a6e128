//! RabbitMQ (feature `rabbitmq`, on [`lapin`]): a [`Publisher`] that sends the message id
//! as the AMQP `message-id` property, persistent and `mandatory`, and waits for the publisher
//! confirm; and [`message_id`], which reads it back on the consumer's side.
//!
//! The broker closes a channel on some errors (publishing to an exchange that does not
//! exist, for instance). A publisher built [`on_connection`](RabbitMqPublisher::on_connection)
//! opens a new channel then; one built on a channel ([`new`](RabbitMqPublisher::new)) fails
//! every later publish.
//!
//! RabbitMQ keeps no deduplication of its own: a message published again after a relay's
//! crash between the confirm and its mark arrives twice. Deduplicate on the consumer's side
//! by [`message_id`] with a [`Consumer`](crate::consumer::Consumer) or an `Inbox`: the effect
//! then happens once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};

use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::Mutex;

use super::{Message, Publisher};
use crate::error::BoxError;

pub use lapin;

/// Publishes to RabbitMQ through a channel in confirm mode: the exchange is fixed (the
/// default exchange `""` unless set), the routing key is the message's topic.
#[derive(Debug, Clone)]
pub struct RabbitMqPublisher {
    channel: Arc<Mutex<Channel>>,
    connection: Option<Arc<Connection>>,
    exchange: String,
    confirm_timeout: Duration,
}

impl RabbitMqPublisher {
    /// Puts `channel` in confirm mode and publishes through it to the default exchange
    /// (routing key = queue name), waiting up to 5 seconds for each confirm.
    pub async fn new(channel: Channel) -> Result<RabbitMqPublisher, lapin::Error> {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(RabbitMqPublisher {
            channel: Arc::new(Mutex::new(channel)),
            connection: None,
            exchange: String::new(),
            confirm_timeout: Duration::from_secs(5),
        })
    }

    /// Opens a channel in confirm mode on `connection`, and a new one whenever the broker has
    /// closed it.
    pub async fn on_connection(
        connection: Arc<Connection>,
    ) -> Result<RabbitMqPublisher, lapin::Error> {
        let mut publisher = RabbitMqPublisher::new(connection.create_channel().await?).await?;
        publisher.connection = Some(connection);
        Ok(publisher)
    }

    /// The channel it publishes on now.
    pub async fn channel(&self) -> Channel {
        self.channel.lock().await.clone()
    }

    /// The channel to publish on: a new one when the broker closed it and the connection is
    /// known.
    async fn open_channel(&self) -> Result<Channel, lapin::Error> {
        let mut channel = self.channel.lock().await;
        if let Some(connection) = &self.connection
            && !channel.status().connected()
        {
            let fresh = connection.create_channel().await?;
            fresh
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            *channel = fresh;
        }
        Ok(channel.clone())
    }

    /// Publishes to `exchange` instead of the default exchange.
    pub fn exchange(mut self, exchange: impl Into<String>) -> RabbitMqPublisher {
        self.exchange = exchange.into();
        self
    }

    /// How long a publish waits for its confirm (default 5 s); past it the message is
    /// published again later.
    pub fn confirm_timeout(mut self, timeout: Duration) -> RabbitMqPublisher {
        self.confirm_timeout = timeout;
        self
    }
}

#[async_trait]
impl Publisher for RabbitMqPublisher {
    async fn publish(&self, message: &Message) -> Result<(), BoxError> {
        let properties = BasicProperties::default()
            .with_message_id(message.id.as_str().into())
            .with_delivery_mode(2);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let sent = async {
            let confirm = self
                .open_channel()
                .await?
                .basic_publish(
                    self.exchange.as_str().into(),
                    message.topic.as_str().into(),
                    options,
                    &message.payload,
                    properties,
                )
                .await?;
            confirm.await
        };
        let confirmation = tokio::time::timeout(self.confirm_timeout, sent)
            .await
            .map_err(|_| {
                format!(
                    "RabbitMQ did not confirm message {} within {:?}",
                    message.id, self.confirm_timeout
                )
            })??;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(format!(
                "RabbitMQ returned message {}: no queue is bound to exchange {:?} with routing key {:?}",
                message.id, self.exchange, message.topic
            )
            .into()),
            Confirmation::Nack(_) => {
                Err(format!("RabbitMQ refused message {} (nack)", message.id).into())
            }
            Confirmation::NotRequested => Err(
                "the channel is not in confirm mode; build the publisher with `RabbitMqPublisher::new`"
                    .into(),
            ),
        }
    }
}

/// The message id a relay published with (the AMQP `message-id` property), to deduplicate
/// by: `message_id(&delivery.properties)`, then `consumer.handle(id, …)`.
pub fn message_id(properties: &BasicProperties) -> Option<&str> {
    properties.message_id().as_ref().map(|id| id.as_str())
}
