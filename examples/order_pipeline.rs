//! One key lineage from an HTTP request to a consumer's database, exactly once: the three
//! roles of a transactional outbox in one process, on PostgreSQL and NATS JetStream
//! (RabbitMQ with `--rabbitmq`).
//!
//! ```sh
//! cargo run --example order_pipeline --features postgres,nats,http              # JetStream
//! cargo run --example order_pipeline --features postgres,nats,rabbitmq,http -- --rabbitmq
//! cargo run --example order_pipeline --features postgres,nats,http -- --check   # asserts the counts
//! ```
//!
//! 1. **The service**: `POST /orders` behind the `Idempotency-Key` layer. The handler is a
//!    transactional `#[idempotent]` function keyed by the request's `Idempotency-Key`: the
//!    order row, the idempotency record and the `orders.created` event (`Outbox::add`, its id
//!    derived from the key) commit together.
//! 2. **The relay** publishes committed events with their ids as the broker's dedup id.
//! 3. **The consumer** applies each event once in its own database: the shipment row and the
//!    inbox's processed-mark for the event's id commit together, then it acks.
//!
//! A client sends 50 orders, each three times (a retry after a lost response, and a
//! duplicate sent at the same time). At the end it prints the counts: 50 orders, 50 events,
//! 50 shipments. PostgreSQL from `POSTGRES_URL`, NATS from `NATS_URL`, RabbitMQ from
//! `AMQP_URL` (loopback defaults); every table, stream and queue is the run's own and is
//! dropped at the end.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt as _;
use idempotency::consumer::inbox::Inbox;
use idempotency::http::{ClientScope, IdempotencyLayer};
use idempotency::outbox::Outbox;
use idempotency::sqlx::{self, PgPool, Postgres, Transaction};
use idempotency::{BoxError, Idempotency, PostgresStore, SqlStore, idempotent};
use serde::{Deserialize, Serialize};

const ORDERS: usize = 50;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    sku: String,
    quantity: u32,
}

#[derive(Clone)]
struct Service {
    pool: PgPool,
    store: PostgresStore,
    outbox: Outbox<Postgres>,
    orders: String,
}

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Idempotency(#[from] idempotency::Error),
    #[error(transparent)]
    Other(#[from] BoxError),
}

impl From<sqlx::Error> for ShopError {
    fn from(error: sqlx::Error) -> Self {
        ShopError::Other(error.into())
    }
}

impl From<idempotency::outbox::OutboxError> for ShopError {
    fn from(error: idempotency::outbox::OutboxError) -> Self {
        ShopError::Other(error.into())
    }
}

/// The order row and its event, in the caller's transaction, once per key.
#[idempotent(key = key, transaction = tx, store = service.store, skip(service))]
async fn place_order(
    tx: &mut Transaction<'_, Postgres>,
    service: &Service,
    key: &str,
    order: &Order,
) -> Result<i64, ShopError> {
    let id: i64 = sqlx::query_scalar(&format!(
        "INSERT INTO {} (sku, quantity) VALUES ($1, $2) RETURNING id",
        service.orders
    ))
    .bind(&order.sku)
    .bind(i64::from(order.quantity))
    .fetch_one(&mut **tx)
    .await?;
    let event = serde_json::json!({ "order_id": id, "sku": order.sku, "quantity": order.quantity });
    service
        .outbox
        .add(tx, "orders.created", event.to_string())
        .await?;
    Ok(id)
}

async fn create_order(
    State(service): State<Service>,
    headers: HeaderMap,
    Json(order): Json<Order>,
) -> Result<(StatusCode, Json<i64>), (StatusCode, String)> {
    let key = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .ok_or((
            StatusCode::BAD_REQUEST,
            "an Idempotency-Key is required".to_owned(),
        ))?;
    let failed = |error: ShopError| (StatusCode::SERVICE_UNAVAILABLE, error.to_string());
    let mut tx = service.pool.begin().await.map_err(|e| failed(e.into()))?;
    let id = place_order(&mut tx, &service, key, &order)
        .await
        .map_err(failed)?;
    tx.commit().await.map_err(|e| failed(e.into()))?;
    Ok((StatusCode::CREATED, Json(id)))
}

/// Where the relay publishes, and where the consumer reads.
enum Broker {
    JetStream {
        js: Box<async_nats::jetstream::Context>,
        stream: String,
        subject: String,
    },
    #[cfg(feature = "rabbitmq")]
    Rabbit {
        connection: std::sync::Arc<lapin::Connection>,
        queue: String,
    },
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let check = args.iter().any(|arg| arg == "--check");
    let rabbit = args.iter().any(|arg| arg == "--rabbitmq");
    let env =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let tag = format!(
        "{}_{}",
        std::process::id(),
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis()
    );

    let pool = PgPool::connect(&env(
        "POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    ))
    .await?;
    let tables = Tables::new(&tag);
    sqlx::query(&format!(
        "CREATE TABLE {} (id BIGSERIAL PRIMARY KEY, sku TEXT NOT NULL, quantity BIGINT NOT NULL)",
        tables.orders
    ))
    .execute(&pool)
    .await?;
    sqlx::query(&format!(
        "CREATE TABLE {} (order_id BIGINT PRIMARY KEY)",
        tables.shipments
    ))
    .execute(&pool)
    .await?;
    let store = SqlStore::builder(pool.clone())
        .table(&tables.records)
        .build()?;
    store.migrate().await?;
    let outbox = Outbox::with_table(pool.clone(), &tables.outbox)?;
    outbox.migrate().await?;
    // The consumer's side: in production its own database; its own tables here.
    let inbox_store = SqlStore::builder(pool.clone())
        .table(&tables.inbox)
        .build()?;
    inbox_store.migrate().await?;
    let inbox = Inbox::new(inbox_store, "shipping.orders-created");

    let outcome = run(&pool, &tables, &tag, store, outbox, inbox, rabbit).await;
    tables.drop(&pool).await;
    let counts = outcome?;
    println!(
        "orders sent {} times each: {} orders, {} events published, {} deliveries, {} shipments",
        3, counts.orders, counts.published, counts.deliveries, counts.shipments
    );
    if check
        && (counts.orders != ORDERS as i64
            || counts.published != ORDERS as i64
            || counts.shipments != ORDERS as i64)
    {
        return Err(format!("expected {ORDERS} of each: {counts:?}").into());
    }
    Ok(())
}

#[derive(Debug)]
struct Counts {
    orders: i64,
    published: i64,
    deliveries: usize,
    shipments: i64,
}

struct Tables {
    orders: String,
    shipments: String,
    records: String,
    outbox: String,
    inbox: String,
}

impl Tables {
    fn new(tag: &str) -> Tables {
        Tables {
            orders: format!("pipeline_orders_{tag}"),
            shipments: format!("pipeline_shipments_{tag}"),
            records: format!("pipeline_records_{tag}"),
            outbox: format!("pipeline_outbox_{tag}"),
            inbox: format!("pipeline_inbox_{tag}"),
        }
    }

    async fn drop(&self, pool: &PgPool) {
        for table in [
            &self.orders,
            &self.shipments,
            &self.records,
            &self.outbox,
            &self.inbox,
        ] {
            let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
                .execute(pool)
                .await;
            let _ = sqlx::query(&format!("DROP FUNCTION IF EXISTS {table}_claim CASCADE"))
                .execute(pool)
                .await;
        }
    }
}

async fn run(
    pool: &PgPool,
    tables: &Tables,
    tag: &str,
    store: PostgresStore,
    outbox: Outbox<Postgres>,
    inbox: Inbox<Postgres>,
    rabbit: bool,
) -> Result<Counts, BoxError> {
    // 1. The service.
    let service = Service {
        pool: pool.clone(),
        store: store.clone(),
        outbox: outbox.clone(),
        orders: tables.orders.clone(),
    };
    let app = Router::new()
        .route("/orders", post(create_order))
        .with_state(service)
        // Every client shares the key space in this example; see `http_orders` for scopes.
        .layer(
            IdempotencyLayer::new(Idempotency::new(store))
                .require_key(true)
                .scope(ClientScope::global()),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // 2. The relay.
    let broker = broker(tag, rabbit).await?;
    let relay = match &broker {
        Broker::JetStream { js, subject, .. } => outbox
            .relay(
                idempotency::broker::nats::JetStreamPublisher::new((**js).clone())
                    .subject_prefix(format!("{subject}.")),
            )
            .idle(Duration::from_millis(20))
            .spawn(),
        #[cfg(feature = "rabbitmq")]
        Broker::Rabbit { connection, queue } => {
            // On the connection: a channel the broker closes is opened again.
            let publisher =
                idempotency::broker::rabbitmq::RabbitMqPublisher::on_connection(connection.clone())
                    .await?;
            // The default exchange routes by queue name: every event goes to the run's queue.
            outbox
                .relay(QueueNamed {
                    inner: publisher,
                    queue: queue.clone(),
                })
                .idle(Duration::from_millis(20))
                .spawn()
        }
    };

    // The client: every order three times, two of them at once.
    let client = reqwest::Client::new();
    let mut sends = Vec::new();
    for n in 0..ORDERS {
        let body = serde_json::json!({ "sku": format!("sku-{}", n % 7), "quantity": 1 + n % 3 })
            .to_string();
        for _attempt in 0..3 {
            let request = client
                .post(format!("http://{address}/orders"))
                .header("idempotency-key", format!("order-{tag}-{n}"))
                .header("content-type", "application/json")
                .body(body.clone());
            sends.push(async move { request.send().await.map(|response| response.status()) });
        }
    }
    for status in futures::future::join_all(sends).await {
        let status = status?;
        // A duplicate that arrives while its first is still running may be told to retry.
        if !status.is_success() && status != reqwest::StatusCode::CONFLICT {
            return Err(format!("unexpected status {status}").into());
        }
    }

    // 3. The consumer, until every event is applied (bounded).
    let deliveries = consume(&broker, pool, &inbox, &tables.shipments, ORDERS).await?;

    relay.shutdown().await;
    server.abort();
    let count = |table: &str| format!("SELECT COUNT(*) FROM {table}");
    let orders: i64 = sqlx::query_scalar(&count(&tables.orders))
        .fetch_one(pool)
        .await?;
    let published: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM {} WHERE published_at IS NOT NULL",
        tables.outbox
    ))
    .fetch_one(pool)
    .await?;
    let shipped: i64 = sqlx::query_scalar(&count(&tables.shipments))
        .fetch_one(pool)
        .await?;
    cleanup(broker).await;
    Ok(Counts {
        orders,
        published,
        deliveries,
        shipments: shipped,
    })
}

async fn broker(tag: &str, rabbit: bool) -> Result<Broker, BoxError> {
    let env =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    if rabbit {
        #[cfg(feature = "rabbitmq")]
        {
            let connection = lapin::Connection::connect(
                &env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
                lapin::ConnectionProperties::default(),
            )
            .await?;
            let queue = format!("pipeline_{tag}");
            connection
                .create_channel()
                .await?
                .queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions::default(),
                    lapin::types::FieldTable::default(),
                )
                .await?;
            return Ok(Broker::Rabbit {
                connection: std::sync::Arc::new(connection),
                queue,
            });
        }
        #[cfg(not(feature = "rabbitmq"))]
        return Err("--rabbitmq needs the `rabbitmq` feature".into());
    }
    let client = async_nats::connect(env("NATS_URL", "nats://127.0.0.1:4222")).await?;
    let js = async_nats::jetstream::new(client);
    let (stream, subject) = (format!("PIPELINE_{tag}"), format!("pipeline.{tag}"));
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{subject}.>")],
        storage: async_nats::jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await?;
    Ok(Broker::JetStream {
        js: Box::new(js),
        stream,
        subject,
    })
}

/// Applies each event once: the shipment row and the inbox's mark commit together, then ack.
async fn consume(
    broker: &Broker,
    pool: &PgPool,
    inbox: &Inbox<Postgres>,
    shipments: &str,
    expected: usize,
) -> Result<usize, BoxError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut deliveries = 0;
    let insert = &format!("INSERT INTO {shipments} (order_id) VALUES ($1)");
    let count = format!("SELECT COUNT(*) FROM {shipments}");
    let shipped = || sqlx::query_scalar::<_, i64>(&count).fetch_one(pool);
    let apply = |id: String, payload: Vec<u8>| async move {
        let event: serde_json::Value = serde_json::from_slice(&payload)?;
        let order_id = event["order_id"]
            .as_i64()
            .ok_or("an event without order_id")?;
        let mut tx = pool.begin().await?;
        inbox
            .handle(&mut tx, &id, |tx| {
                Box::pin(async move {
                    sqlx::query(insert)
                        .bind(order_id)
                        .execute(&mut **tx)
                        .await
                        .map_err(BoxError::from)?;
                    Ok::<_, BoxError>(())
                })
            })
            .await?;
        tx.commit().await?;
        Ok::<_, BoxError>(())
    };
    match broker {
        Broker::JetStream { js, stream, .. } => {
            let consumer = js
                .get_stream(stream)
                .await?
                .create_consumer(async_nats::jetstream::consumer::pull::Config {
                    durable_name: Some("shipping".to_owned()),
                    ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                    ..Default::default()
                })
                .await?;
            while (shipped().await? as usize) < expected && Instant::now() < deadline {
                let mut batch = consumer
                    .fetch()
                    .max_messages(64)
                    .expires(Duration::from_millis(200))
                    .messages()
                    .await?;
                while let Some(message) = batch.next().await {
                    let message = message?;
                    deliveries += 1;
                    let id = idempotency::broker::nats::message_id(message.headers.as_ref())
                        .ok_or("no Nats-Msg-Id")?
                        .to_owned();
                    apply(id, message.payload.to_vec()).await?;
                    message.ack().await?;
                }
            }
        }
        #[cfg(feature = "rabbitmq")]
        Broker::Rabbit { connection, queue } => {
            let channel = connection.create_channel().await?;
            let mut consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "shipping".into(),
                    lapin::options::BasicConsumeOptions::default(),
                    lapin::types::FieldTable::default(),
                )
                .await?;
            while (shipped().await? as usize) < expected && Instant::now() < deadline {
                let Ok(Some(delivery)) =
                    tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
                else {
                    continue;
                };
                let delivery = delivery?;
                deliveries += 1;
                let id = idempotency::broker::rabbitmq::message_id(&delivery.properties)
                    .ok_or("no message-id")?
                    .to_owned();
                apply(id, delivery.data.clone()).await?;
                delivery
                    .ack(lapin::options::BasicAckOptions::default())
                    .await?;
            }
        }
    }
    Ok(deliveries)
}

async fn cleanup(broker: Broker) {
    match broker {
        Broker::JetStream { js, stream, .. } => {
            let _ = js.delete_stream(&stream).await;
        }
        #[cfg(feature = "rabbitmq")]
        Broker::Rabbit { connection, queue } => {
            if let Ok(channel) = connection.create_channel().await {
                let _ = channel
                    .queue_delete(
                        queue.as_str().into(),
                        lapin::options::QueueDeleteOptions::default(),
                    )
                    .await;
            }
        }
    }
}

/// Publishes every topic to the run's queue (the default exchange routes by queue name).
#[cfg(feature = "rabbitmq")]
struct QueueNamed {
    inner: idempotency::broker::rabbitmq::RabbitMqPublisher,
    queue: String,
}

#[cfg(feature = "rabbitmq")]
#[idempotency::async_trait]
impl idempotency::broker::Publisher for QueueNamed {
    async fn publish(&self, message: &idempotency::broker::Message) -> Result<(), BoxError> {
        let mut routed = message.clone();
        routed.topic = self.queue.clone();
        self.inner.publish(&routed).await
    }
}
