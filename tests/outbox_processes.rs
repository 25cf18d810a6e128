//! Exactly once from an HTTP request to a consumer's database, with every process killed.
//!
//! Three child processes of this test binary, each restarted after every kill:
//!
//! * **service**: `POST /orders` behind the `Idempotency-Key` layer (PostgreSQL store, 1 s
//!   lease), whose handler is a transactional `#[idempotent]` function writing the order row
//!   and its outbox event; one request in 10 SIGKILLs it after its commit, before the answer;
//! * **relay**: the outbox relay to JetStream (500 ms lease); one message in 8 SIGKILLs it
//!   after the stream's ack, before the batch is marked;
//! * **consumer**: a JetStream pull consumer (1 s ack wait) applying each event through the
//!   SQL inbox (the shipment row and the mark in one commit); one message in 8 SIGKILLs it
//!   after the commit, before the ack.
//!
//! The parent is the client (200 orders, each key sent 3 times, each send retried until it
//! gets a 2xx) and a killer that SIGKILLs a random role at random times, at least 3 times
//! each; every role also dies at its own crash point at least 5 times. At the end: 200 order rows, one per key; 200 published events; 200 messages in the
//! stream; 200 shipment rows, one per order. PostgreSQL from `POSTGRES_URL`, NATS from
//! `NATS_URL` (loopback defaults); tables and the stream are the run's own and are dropped.

#![cfg(all(
    feature = "postgres",
    feature = "nats",
    feature = "rabbitmq",
    feature = "http"
))]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use idempotency::testing::{service_url, unreachable};

const ROLE: &str = "OUTBOX_PROCESS_ROLE";
const TAG: &str = "OUTBOX_PROCESS_TAG";
const PORT: &str = "OUTBOX_PROCESS_PORT";
const ORDERS: usize = 200;
const SENDS_PER_KEY: usize = 3;

fn pg_url() -> String {
    service_url("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
}

fn amqp_url() -> String {
    service_url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// Runs whose tag starts with this use RabbitMQ; the others JetStream.
const RABBITMQ: &str = "rabbitmq";

fn nats_url() -> String {
    service_url("NATS_URL", "nats://127.0.0.1:4222")
}

struct Names {
    orders: String,
    records: String,
    outbox: String,
    shipments: String,
    inbox: String,
    stream: String,
    subject: String,
    queue: String,
}

fn names(tag: &str) -> Names {
    Names {
        orders: format!("kp_orders_{tag}"),
        records: format!("kp_records_{tag}"),
        outbox: format!("kp_outbox_{tag}"),
        shipments: format!("kp_shipments_{tag}"),
        inbox: format!("kp_inbox_{tag}"),
        stream: format!("KP_{tag}"),
        subject: format!("kp.{tag}"),
        queue: format!("kp_{tag}"),
    }
}

/// Kills this process with SIGKILL, with probability `one_in`⁻¹.
fn maybe_die(one_in: u32) {
    if rand_below(one_in) == 0 {
        let _ = Command::new("kill")
            .arg("-9")
            .arg(std::process::id().to_string())
            .status();
        std::thread::sleep(Duration::from_secs(10));
    }
}

/// A random number below `n` (std's randomly keyed hasher, fresh keys each call).
fn rand_below(n: u32) -> u32 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let word = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (word % u64::from(n.max(1))) as u32
}

/// The children: this test, run by the parent with `OUTBOX_PROCESS_ROLE` set.
#[test]
fn child_role() {
    let (Ok(role), Ok(tag)) = (std::env::var(ROLE), std::env::var(TAG)) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        match role.as_str() {
            "service" => roles::service(&tag).await,
            "relay" => roles::relay_role(&tag).await,
            "consumer" => roles::consumer(&tag).await,
            other => panic!("unknown role {other}"),
        }
    });
}

mod roles {
    use std::time::Duration;

    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use futures::StreamExt as _;
    use idempotency::broker::nats::{JetStreamPublisher, async_nats, message_id};
    use idempotency::broker::rabbitmq::{RabbitMqPublisher, lapin};
    use idempotency::broker::{Message, Publisher};
    use idempotency::consumer::inbox::Inbox;
    use idempotency::http::{ClientScope, IdempotencyLayer};
    use idempotency::outbox::{Outbox, RelayHandle};
    use idempotency::sqlx::{self, PgPool, Postgres, Transaction};
    use idempotency::{BoxError, Idempotency, PostgresStore, SqlStore, async_trait, idempotent};

    use super::{PORT, RABBITMQ, amqp_url, maybe_die, names, nats_url, pg_url};

    #[derive(Clone)]
    struct Service {
        pool: PgPool,
        store: PostgresStore,
        outbox: Outbox<Postgres>,
        orders: String,
    }

    #[idempotent(key = key, transaction = tx, store = service.store, skip(service))]
    async fn place(
        tx: &mut Transaction<'_, Postgres>,
        service: &Service,
        key: &str,
    ) -> Result<i64, BoxError> {
        let id: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO {} (client_key) VALUES ($1) RETURNING id",
            service.orders
        ))
        .bind(key)
        .fetch_one(&mut **tx)
        .await?;
        service.outbox.add(tx, "created", id.to_string()).await?;
        Ok(id)
    }

    async fn create(
        State(service): State<Service>,
        headers: HeaderMap,
    ) -> Result<String, (StatusCode, String)> {
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let failed = |error: BoxError| (StatusCode::SERVICE_UNAVAILABLE, error.to_string());
        let mut tx = service.pool.begin().await.map_err(|e| failed(e.into()))?;
        let id = place(&mut tx, &service, &key).await.map_err(failed)?;
        tx.commit().await.map_err(|e| failed(e.into()))?;
        maybe_die(10); // committed, not answered
        Ok(id.to_string())
    }

    pub(super) async fn service(tag: &str) {
        let names = names(tag);
        let pool = PgPool::connect(&pg_url()).await.expect("postgres");
        let store = SqlStore::builder(pool.clone())
            .table(&names.records)
            .build()
            .expect("store");
        let outbox = Outbox::with_table(pool.clone(), &names.outbox).expect("outbox");
        let service = Service {
            pool,
            store: store.clone(),
            outbox,
            orders: names.orders,
        };
        let app = Router::new()
            .route("/orders", post(create))
            .with_state(service)
            .layer(
                IdempotencyLayer::new(Idempotency::new(store))
                    .require_key(true)
                    .scope(ClientScope::global())
                    .lease(Duration::from_secs(1)),
            );
        let port: u16 = std::env::var(PORT)
            .expect("a port")
            .parse()
            .expect("a port");
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        println!("ready");
        axum::serve(listener, app).await.expect("serve");
    }

    struct Dying(JetStreamPublisher);

    #[async_trait]
    impl Publisher for Dying {
        async fn publish(&self, message: &Message) -> Result<(), BoxError> {
            self.0.publish(message).await?;
            maybe_die(8); // acked, not marked
            Ok(())
        }
    }

    /// Publishes every topic to the run's queue (RabbitMQ's default exchange routes by queue
    /// name), dying as `Dying` does.
    struct DyingRabbit(RabbitMqPublisher, String);

    #[async_trait]
    impl Publisher for DyingRabbit {
        async fn publish(&self, message: &Message) -> Result<(), BoxError> {
            let mut routed = message.clone();
            routed.topic = self.1.clone();
            self.0.publish(&routed).await?;
            maybe_die(8); // confirmed, not marked
            Ok(())
        }
    }

    fn relay<P: Publisher>(relay: idempotency::outbox::Relay<Postgres, P>) -> RelayHandle {
        relay
            .batch(10)
            .idle(Duration::from_millis(20))
            .lease(Duration::from_millis(500))
            .spawn()
    }

    pub(super) async fn relay_role(tag: &str) {
        let names = names(tag);
        let pool = PgPool::connect(&pg_url()).await.expect("postgres");
        let outbox = Outbox::with_table(pool, &names.outbox).expect("outbox");
        let _relay = if tag.starts_with(RABBITMQ) {
            let connection =
                lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
                    .await
                    .expect("rabbitmq");
            let channel = connection.create_channel().await.expect("a channel");
            let publisher = RabbitMqPublisher::new(channel).await.expect("confirm mode");
            let handle = relay(outbox.relay(DyingRabbit(publisher, names.queue.clone())));
            std::mem::forget(connection);
            handle
        } else {
            let js =
                async_nats::jetstream::new(async_nats::connect(nats_url()).await.expect("nats"));
            let publisher =
                JetStreamPublisher::new(js).subject_prefix(format!("{}.", names.subject));
            relay(outbox.relay(Dying(publisher)))
        };
        println!("ready");
        std::future::pending::<()>().await;
    }

    pub(super) async fn consumer(tag: &str) {
        let names = names(tag);
        let pool = PgPool::connect(&pg_url()).await.expect("postgres");
        let store = SqlStore::builder(pool.clone())
            .table(&names.inbox)
            .build()
            .expect("store");
        let inbox = Inbox::new(store, "kp.shipping").lease(Duration::from_secs(2));
        let insert = format!("INSERT INTO {} (order_id) VALUES ($1)", names.shipments);
        // The shipment and the inbox's mark in one commit; `true` when committed.
        let apply = |id: String, payload: Vec<u8>| {
            let (pool, inbox, insert) = (&pool, &inbox, insert.as_str());
            async move {
                let order: i64 = std::str::from_utf8(&payload)
                    .ok()
                    .and_then(|p| p.parse().ok())
                    .expect("an order id");
                let Ok(mut tx) = pool.begin().await else {
                    return false;
                };
                let applied = inbox
                    .handle(&mut tx, &id, |tx| {
                        Box::pin(async move {
                            sqlx::query(insert)
                                .bind(order)
                                .execute(&mut **tx)
                                .await
                                .map_err(BoxError::from)?;
                            Ok::<_, BoxError>(())
                        })
                    })
                    .await;
                applied.is_ok() && tx.commit().await.is_ok()
            }
        };
        if tag.starts_with(RABBITMQ) {
            let connection =
                lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
                    .await
                    .expect("rabbitmq");
            let channel = connection.create_channel().await.expect("a channel");
            channel
                .basic_qos(16, lapin::options::BasicQosOptions::default())
                .await
                .expect("qos");
            let mut deliveries = channel
                .basic_consume(
                    names.queue.as_str().into(),
                    "shipping".into(),
                    lapin::options::BasicConsumeOptions::default(),
                    lapin::types::FieldTable::default(),
                )
                .await
                .expect("consume");
            println!("ready");
            while let Some(Ok(delivery)) = deliveries.next().await {
                let Some(id) = idempotency::broker::rabbitmq::message_id(&delivery.properties)
                    .map(str::to_owned)
                else {
                    continue;
                };
                if apply(id, delivery.data.clone()).await {
                    maybe_die(8); // applied, not acked
                    let _ = delivery
                        .ack(lapin::options::BasicAckOptions::default())
                        .await;
                }
            }
            return;
        }
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.expect("nats"));
        let consumer = js
            .get_stream(&names.stream)
            .await
            .expect("the stream")
            .get_or_create_consumer(
                "shipping",
                async_nats::jetstream::consumer::pull::Config {
                    durable_name: Some("shipping".to_owned()),
                    ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(1),
                    ..Default::default()
                },
            )
            .await
            .expect("a consumer");
        println!("ready");
        loop {
            let Ok(mut batch) = consumer
                .fetch()
                .max_messages(16)
                .expires(Duration::from_millis(200))
                .messages()
                .await
            else {
                continue;
            };
            while let Some(Ok(message)) = batch.next().await {
                let Some(id) = message_id(message.headers.as_ref()).map(str::to_owned) else {
                    continue;
                };
                if apply(id, message.payload.to_vec()).await {
                    maybe_die(8); // applied, not acked
                    let _ = message.ack().await;
                }
            }
        }
    }
}

struct Role {
    name: &'static str,
    child: Option<Child>,
    /// SIGKILLed by the parent at a random time.
    killed: usize,
    /// SIGKILLed by itself at its own crash point.
    died: usize,
    /// Ended any other way (a panic): none may.
    failed: Vec<String>,
}

impl Role {
    fn start(&mut self, tag: &str, port: u16) {
        let child = Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "--exact",
                "child_role",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(ROLE, self.name)
            .env(TAG, tag)
            .env(PORT, port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a child");
        self.child = Some(child);
    }

    /// Restarts the child if it died (a self-kill); `kill` kills it first.
    fn keep(&mut self, tag: &str, port: u16, kill: bool) {
        if let Some(child) = self.child.as_mut() {
            if kill {
                let _ = child.kill();
                let _ = child.wait();
                self.killed += 1;
            } else if let Ok(Some(status)) = child.try_wait() {
                use std::os::unix::process::ExitStatusExt as _;
                if status.signal() == Some(9) {
                    self.died += 1;
                } else {
                    self.failed.push(status.to_string());
                }
            } else {
                return;
            }
        }
        self.start(tag, port);
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_jetstream_every_order_has_one_row_one_event_and_one_shipment_with_every_process_killed()
{
    pipeline("nats").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq_every_order_has_one_row_one_event_and_one_shipment_with_every_process_killed()
{
    pipeline(RABBITMQ).await;
}

/// Where the relay publishes and the consumer reads.
enum Broker {
    JetStream(idempotency::broker::nats::async_nats::jetstream::Context),
    Rabbit(idempotency::broker::rabbitmq::lapin::Channel),
}

async fn pipeline(broker: &str) {
    use idempotency::broker::nats::async_nats;
    use idempotency::broker::rabbitmq::lapin;
    use idempotency::sqlx::{self, PgPool};

    if std::env::var(ROLE).is_ok() {
        return;
    }
    let pool = match PgPool::connect(&pg_url()).await {
        Ok(pool) => pool,
        Err(error) => return unreachable("outbox processes (postgres)", &pg_url(), &error),
    };
    let tag = format!(
        "{broker}_{}_{}",
        std::process::id(),
        &idempotency::Token::random().to_string()[..8]
    );
    let names = names(&tag);
    let client = if broker == RABBITMQ {
        let connection =
            match lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
                .await
            {
                Ok(connection) => connection,
                Err(error) => {
                    return unreachable("outbox processes (rabbitmq)", &amqp_url(), &error);
                }
            };
        let channel = connection.create_channel().await.expect("a channel");
        channel
            .queue_declare(
                names.queue.as_str().into(),
                lapin::options::QueueDeclareOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("a queue");
        std::mem::forget(connection);
        Broker::Rabbit(channel)
    } else {
        let client = match async_nats::connect(nats_url()).await {
            Ok(client) => client,
            Err(error) => return unreachable("outbox processes (nats)", &nats_url(), &error),
        };
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: names.stream.clone(),
            subjects: vec![format!("{}.>", names.subject)],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .expect("a stream");
        Broker::JetStream(js)
    };
    for sql in [
        format!(
            "CREATE TABLE {} (id BIGSERIAL PRIMARY KEY, client_key TEXT NOT NULL)",
            names.orders
        ),
        format!(
            "CREATE TABLE {} (order_id BIGINT NOT NULL)",
            names.shipments
        ),
    ] {
        sqlx::query(&sql)
            .execute(&pool)
            .await
            .expect("create a table");
    }
    for table in [&names.records, &names.inbox] {
        idempotency::SqlStore::<sqlx::Postgres>::builder(pool.clone())
            .table(table)
            .build()
            .expect("store")
            .migrate()
            .await
            .expect("migrate");
    }
    idempotency::outbox::Outbox::with_table(pool.clone(), &names.outbox)
        .expect("outbox")
        .migrate()
        .await
        .expect("migrate");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a port")
        .local_addr()
        .expect("addr")
        .port();
    let mut roles: Vec<Role> = ["service", "relay", "consumer"]
        .into_iter()
        .map(|name| Role {
            name,
            child: None,
            killed: 0,
            died: 0,
            failed: Vec::new(),
        })
        .collect();
    for role in &mut roles {
        role.start(&tag, port);
    }

    // The client: every key sent 3 times, each send retried until a 2xx (bounded).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("a client");
    let deadline = Instant::now() + Duration::from_secs(120);
    let load = {
        let tag = tag.clone();
        tokio::spawn(async move {
            let mut sends = Vec::new();
            for n in 0..ORDERS {
                for _send in 0..SENDS_PER_KEY {
                    let (http, key) = (http.clone(), format!("order-{tag}-{n}"));
                    sends.push(async move {
                        while Instant::now() < deadline {
                            let sent = http
                                .post(format!("http://127.0.0.1:{port}/orders"))
                                .header("idempotency-key", &key)
                                .send()
                                .await;
                            if let Ok(response) = sent
                                && response.status().is_success()
                            {
                                return response.text().await.ok();
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        None
                    });
                }
            }
            // At most 32 sends at a time.
            futures::stream::iter(sends)
                .buffer_unordered(32)
                .collect::<Vec<_>>()
                .await
        })
    };

    // The killer, while the load runs and until every role was killed 3 times at random.
    use futures::StreamExt as _;
    let mut step = 0u32;
    while (!load.is_finished() || roles.iter().any(|role| role.killed < 3))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(150 + u64::from(rand_below(350)))).await;
        step += 1;
        let victim = (rand_below(3)) as usize;
        for (index, role) in roles.iter_mut().enumerate() {
            role.keep(&tag, port, index == victim && step.is_multiple_of(2));
        }
    }
    let answers = load.await.expect("the load");
    // Let everything drain, restarting what dies.
    let count = |sql: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&sql)
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };
    while Instant::now() < deadline + Duration::from_secs(60) {
        for role in &mut roles {
            role.keep(&tag, port, false);
        }
        if count(format!("SELECT COUNT(*) FROM {}", names.shipments)).await >= ORDERS as i64
            && count(format!(
                "SELECT COUNT(*) FROM {} WHERE published_at IS NULL",
                names.outbox
            ))
            .await
                == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failed: Vec<_> = roles
        .iter()
        .flat_map(|role| role.failed.iter().map(|status| (role.name, status.clone())))
        .collect();
    let kills: Vec<_> = roles
        .iter()
        .map(|role| (role.name, role.killed, role.died))
        .collect();
    drop(roles);

    let orders = count(format!("SELECT COUNT(*) FROM {}", names.orders)).await;
    let keys = count(format!(
        "SELECT COUNT(DISTINCT client_key) FROM {}",
        names.orders
    ))
    .await;
    let events = count(format!(
        "SELECT COUNT(*) FROM {} WHERE published_at IS NOT NULL",
        names.outbox
    ))
    .await;
    let shipments = count(format!("SELECT COUNT(*) FROM {}", names.shipments)).await;
    let shipped = count(format!(
        "SELECT COUNT(DISTINCT order_id) FROM {}",
        names.shipments
    ))
    .await;
    // The stream holds one message per order (JetStream drops the relay's repeats); RabbitMQ
    // keeps none of its own, and the inbox drops them.
    let stored = match &client {
        Broker::JetStream(js) => {
            js.get_stream(&names.stream)
                .await
                .expect("the stream")
                .info()
                .await
                .expect("info")
                .state
                .messages
        }
        Broker::Rabbit(_) => ORDERS as u64,
    };
    let answered = answers.iter().filter(|answer| answer.is_some()).count();

    match &client {
        Broker::JetStream(js) => {
            let _ = js.delete_stream(&names.stream).await;
        }
        Broker::Rabbit(channel) => {
            let _ = channel
                .queue_delete(
                    names.queue.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await;
        }
    }
    for table in [
        &names.orders,
        &names.shipments,
        &names.outbox,
        &names.records,
        &names.inbox,
    ] {
        let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
            .execute(&pool)
            .await;
        let _ = sqlx::query(&format!("DROP FUNCTION IF EXISTS {table}_claim CASCADE"))
            .execute(&pool)
            .await;
    }

    println!(
        "(role, killed at random, killed at its crash point) {kills:?}; answered {answered}; orders {orders}; events {events}; stream {stored}; shipments {shipments}"
    );
    assert!(
        failed.is_empty(),
        "a child ended otherwise than killed: {failed:?}"
    );
    assert!(
        kills
            .iter()
            .all(|(_, killed, died)| *killed >= 3 && *died >= 5),
        "every role killed 3 times at random and 5 times at its crash point: {kills:?}"
    );
    assert_eq!(
        answered,
        ORDERS * SENDS_PER_KEY,
        "every send was answered in the end"
    );
    assert_eq!(orders, ORDERS as i64, "one order row per key");
    assert_eq!(keys, ORDERS as i64);
    assert_eq!(events, ORDERS as i64, "one event per order, published");
    assert_eq!(stored, ORDERS as u64, "one message per order in the stream");
    assert_eq!(shipments, ORDERS as i64, "one shipment per order");
    assert_eq!(shipped, ORDERS as i64);
}
