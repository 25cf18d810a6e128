//! Producer-sequence deduplication through real brokers, NATS JetStream (`NATS_URL`) and
//! RabbitMQ (`AMQP_URL`), with the producer's sequence and the consumer's marks in Redis
//! (`REDIS_URL`).
//!
//! The producer is a child process (this test binary, run as `producer_child`): it stamps
//! each message with `Idempotency-Producer` / `Idempotency-Sequence` from a
//! `ProducerSequence` kept in Redis. It is SIGKILLed mid-stream, restarted, re-publishes its
//! last three messages (duplicates, or the one it died before sending) and goes on. The
//! consumer naks some deliveries before handling them and some after (a lost ack), so the
//! broker redelivers too. Every message is processed exactly once, in order.
//!
//! Without a server, the test prints SKIPPED; `IDEMPOTENCY_REQUIRE_SERVICES=1` makes that a
//! failure.

mod redis_support;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use idempotency::consumer::sequence::{
    Delivery, PRODUCER_HEADER, ProducerSequence, SEQUENCE_HEADER, SequencedConsumer, Stamp,
};
use idempotency::testing::{service_url, unreachable};
use idempotency::{Error, Idempotency, RedisStore};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Messages the producer sends.
const TOTAL: u64 = 300;
/// The producer is killed once it has published this many.
const KILL_AFTER: u64 = 120;
/// It re-publishes this many of its last messages when it starts.
const AGAIN: u64 = 3;
const PRODUCER: &str = "warehouse-7";
const DEADLINE: Duration = Duration::from_secs(90);

const ROLE: &str = "IDEMPOTENCY_SEQUENCE_CHILD";
const TARGET: &str = "IDEMPOTENCY_SEQUENCE_TARGET";
const PREFIX: &str = "IDEMPOTENCY_SEQUENCE_PREFIX";

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a message carries: derived from its sequence, so a restarted producer re-publishes
/// the same message (a real producer reads it from its own outbox or source).
fn payload(sequence: u64) -> Vec<u8> {
    format!("move {sequence}: {} units", sequence * 7 % 13).into_bytes()
}

async fn redis_store(prefix: &str) -> Option<RedisStore> {
    let (_, connection) = redis_support::standalone("producer sequence brokers").await?;
    Some(
        RedisStore::builder(connection)
            .prefix(prefix.to_owned())
            .build()
            .expect("prefix"),
    )
}

/// One broker, as the producer and the consumer see it.
trait Broker: Send + Sync + 'static {
    /// Publishes `body` stamped with `stamp`, confirmed by the broker.
    fn publish(
        &self,
        stamp: &Stamp,
        body: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), BoxError>> + Send;
}

/// The producer process: continues its sequence from Redis, re-publishes the last
/// messages, then publishes up to `TOTAL`, printing each sequence once the broker has it.
async fn produce(broker: &impl Broker, prefix: &str) -> Result<(), BoxError> {
    let store = redis_store(prefix).await.ok_or("no redis")?;
    let idempotency = Idempotency::new(store);
    let mut sequence = ProducerSequence::open(&idempotency, "test.producers", PRODUCER).await?;
    let last = sequence.last();
    for again in last.saturating_sub(AGAIN - 1).max(1)..=last {
        broker
            .publish(&sequence.again(again)?, payload(again))
            .await?;
        println!("republished {again}");
    }
    while sequence.last() < TOTAL {
        let stamp = sequence.next().await?;
        broker.publish(&stamp, payload(stamp.sequence())).await?;
        println!("published {}", stamp.sequence());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// What the consumer saw.
#[derive(Debug, Default)]
struct Report {
    processed: Vec<u64>,
    deliveries: usize,
    duplicates: usize,
    failed_first: usize,
    lost_acks: usize,
    naks: usize,
}

/// How the consumer treats a delivery of `sequence`: every 10th fails on its first delivery
/// (the handler errs, nothing is marked), every 7th loses its ack after its effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Ack,
    FailFirst,
    LoseAckFirst,
}

fn plan(sequence: u64) -> Plan {
    if sequence.is_multiple_of(10) {
        Plan::FailFirst
    } else if sequence.is_multiple_of(7) {
        Plan::LoseAckFirst
    } else {
        Plan::Ack
    }
}

#[derive(Debug, thiserror::Error)]
enum HandleError {
    #[error("the stock database timed out (simulated)")]
    Timeout,
    #[error(transparent)]
    Idempotency(#[from] Error),
}

/// Handles one delivery: `true` to acknowledge it, `false` to nak it.
async fn handle(
    consumer: &SequencedConsumer,
    report: &Mutex<Report>,
    stamp: &Stamp,
    body: &[u8],
    first_delivery: bool,
) -> bool {
    let sequence = stamp.sequence();
    assert_eq!(body, payload(sequence), "{stamp}: the payload");
    lock(report).deliveries += 1;
    let plan = plan(sequence);
    let handled = consumer
        .handle(stamp, || async {
            if plan == Plan::FailFirst && first_delivery {
                return Err(HandleError::Timeout);
            }
            lock(report).processed.push(sequence);
            Ok(())
        })
        .await;
    let mut report = lock(report);
    match handled {
        Ok(Delivery::Processed(())) if plan == Plan::LoseAckFirst && first_delivery => {
            report.lost_acks += 1;
            false
        }
        Ok(Delivery::Processed(())) => true,
        Ok(Delivery::Duplicate) => {
            report.duplicates += 1;
            true
        }
        Ok(other) => panic!("{stamp}: {other:?}"),
        Err(HandleError::Timeout) => {
            report.failed_first += 1;
            false
        }
        Err(HandleError::Idempotency(Error::SequenceGap { .. } | Error::InProgress { .. })) => {
            report.naks += 1;
            false
        }
        Err(HandleError::Idempotency(error)) => panic!("{stamp}: {error}"),
    }
}

/// A child process running `producer_child` of this binary.
struct ProducerProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl ProducerProcess {
    fn spawn(role: &str, target: &str, prefix: &str) -> ProducerProcess {
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args(["producer_child", "--exact", "--ignored", "--nocapture"])
            .env(ROLE, role)
            .env(TARGET, target)
            .env(PREFIX, prefix)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the producer");
        let stdout = child.stdout.take().expect("piped stdout");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        ProducerProcess { child, lines }
    }

    /// Waits up to `within` for a line containing `text`; the lines read on the way.
    fn wait_for(&self, text: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(text);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("the producer did not print `{text}` in {within:?}: {seen:?}");
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProducerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the producer twice, killing the first one mid-stream: what each printed.
fn kill_and_restart(role: &str, target: &str, prefix: &str) -> (Vec<String>, Vec<String>) {
    let first = ProducerProcess::spawn(role, target, prefix);
    let before = first.wait_for(&format!("published {KILL_AFTER}"), DEADLINE);
    first.kill();
    let second = ProducerProcess::spawn(role, target, prefix);
    let after = second.wait_for(&format!("published {TOTAL}"), DEADLINE);
    (before, after)
}

/// The assertions every broker shares.
fn check(report: &Report, before: &[String], after: &[String]) {
    let expected: Vec<u64> = (1..=TOTAL).collect();
    assert_eq!(report.processed, expected, "every message once, in order");
    let republished = after
        .iter()
        .filter(|line| line.contains("republished"))
        .count();
    assert_eq!(
        republished, AGAIN as usize,
        "the restarted producer re-published its last {AGAIN}: {after:?}"
    );
    assert!(before.len() >= KILL_AFTER as usize);
    // Re-published copies, lost acks and failures all came back as deliveries.
    assert!(report.duplicates >= AGAIN as usize, "{report:?}");
    assert!(
        report.lost_acks > 0 && report.failed_first > 0,
        "{report:?}"
    );
    assert!(
        report.deliveries > TOTAL as usize + AGAIN as usize,
        "{report:?}"
    );
    let killed_after = before.last().map_or("", String::as_str);
    eprintln!(
        "{TOTAL} messages processed once, in order; {} deliveries, {} duplicates skipped, {} failed first deliveries, {} lost acks, {} naks; producer killed after `{killed_after}`",
        report.deliveries, report.duplicates, report.failed_first, report.lost_acks, report.naks
    );
}

fn consumer(store: RedisStore, name: &str) -> SequencedConsumer {
    SequencedConsumer::new(Idempotency::new(store), name.to_owned())
        .lease(Duration::from_secs(5))
        .wait_timeout(Duration::from_secs(2))
}

/// The test binary run as the producer (by the tests below, with its variables set).
#[test]
#[ignore = "run by the broker tests as their producer process"]
fn producer_child() {
    let (Ok(role), Ok(target), Ok(prefix)) = (
        std::env::var(ROLE),
        std::env::var(TARGET),
        std::env::var(PREFIX),
    ) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let produced = match role.as_str() {
            "jetstream" => {
                let url = service_url("NATS_URL", "nats://127.0.0.1:4222");
                let client = async_nats::connect(url).await.expect("nats");
                let broker = jetstream::Nats {
                    js: async_nats::jetstream::new(client),
                    subject: target,
                };
                produce(&broker, &prefix).await
            }
            "rabbitmq" => {
                let url = service_url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
                let broker = rabbitmq::Rabbit::connect(&url, target).await.expect("amqp");
                produce(&broker, &prefix).await
            }
            other => panic!("unknown role {other}"),
        };
        produced.expect("the producer runs");
    });
}

mod jetstream {
    use async_nats::HeaderMap;
    use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
    use futures::StreamExt as _;

    use super::*;

    pub(super) struct Nats {
        pub(super) js: jetstream::Context,
        pub(super) subject: String,
    }

    impl Broker for Nats {
        async fn publish(&self, stamp: &Stamp, body: Vec<u8>) -> Result<(), BoxError> {
            let mut headers = HeaderMap::new();
            for (name, value) in stamp.headers() {
                headers.insert(name, value.as_str());
            }
            self.js
                .publish_with_headers(self.subject.clone(), headers, body.into())
                .await?
                .await?;
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_producer_and_redeliveries_on_jetstream_process_each_message_once_in_order() {
        let url = service_url("NATS_URL", "nats://127.0.0.1:4222");
        let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(3));
        let client = match options.connect(&url).await {
            Ok(client) => client,
            Err(error) => return unreachable("producer sequence on jetstream", &url, &error),
        };
        let prefix = redis_support::unique_prefix("sequence-jetstream");
        let Some(store) = redis_store(&prefix).await else {
            return;
        };
        let js = jetstream::new(client);
        let unique = idempotency::Token::random().to_string();
        let name = format!("STOCK_{unique}");
        let subject = format!("stock.{unique}.moves");
        let stream = js
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::Memory,
                ..Default::default()
            })
            .await
            .expect("a stream");
        let pull = stream
            .create_consumer(pull::Config {
                durable_name: Some("stock".to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(2),
                max_ack_pending: 1,
                ..Default::default()
            })
            .await
            .expect("a consumer");

        let report = Arc::new(Mutex::new(Report::default()));
        let consuming = {
            let (report, consumer) = (Arc::clone(&report), consumer(store, "stock.apply"));
            tokio::spawn(async move {
                let started = Instant::now();
                while lock(&report).processed.len() < TOTAL as usize {
                    assert!(started.elapsed() < DEADLINE, "{:?}", lock(&report));
                    let mut batch = pull
                        .batch()
                        .max_messages(1)
                        .expires(Duration::from_millis(200))
                        .messages()
                        .await
                        .expect("a batch");
                    while let Some(message) = batch.next().await {
                        let message = message.expect("a message");
                        let header = |name: &str| {
                            let headers = message.headers.as_ref()?;
                            headers.get(name).map(|value| value.as_str().to_owned())
                        };
                        let stamp = Stamp::from_headers(
                            header(PRODUCER_HEADER).as_deref(),
                            header(SEQUENCE_HEADER).as_deref(),
                        )
                        .expect("a stamped message");
                        let first = message.info().expect("info").delivered == 1;
                        let ack = handle(&consumer, &report, &stamp, &message.payload, first).await;
                        let reply = if ack {
                            message.ack().await
                        } else {
                            message.ack_with(AckKind::Nak(None)).await
                        };
                        reply.expect("ack or nak");
                    }
                }
            })
        };
        let (before, after) = {
            let (subject, prefix) = (subject.clone(), prefix.clone());
            tokio::task::spawn_blocking(move || kill_and_restart("jetstream", &subject, &prefix))
                .await
                .expect("the producer runs")
        };
        consuming.await.expect("the consumer");
        js.delete_stream(&name).await.expect("delete the stream");
        check(&lock(&report), &before, &after);
    }
}

mod rabbitmq {
    use futures::StreamExt as _;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

    use super::*;

    pub(super) struct Rabbit {
        _connection: Connection,
        channel: Channel,
        queue: String,
    }

    impl Rabbit {
        pub(super) async fn connect(url: &str, queue: String) -> Result<Rabbit, BoxError> {
            let connect = Connection::connect(url, ConnectionProperties::default());
            let connection = tokio::time::timeout(Duration::from_secs(5), connect).await??;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok(Rabbit {
                _connection: connection,
                channel,
                queue,
            })
        }
    }

    impl Broker for Rabbit {
        async fn publish(&self, stamp: &Stamp, body: Vec<u8>) -> Result<(), BoxError> {
            let mut headers = FieldTable::default();
            for (name, value) in stamp.headers() {
                headers.insert(name.into(), AMQPValue::LongString(value.into()));
            }
            let properties = BasicProperties::default().with_headers(headers);
            self.channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await?
                .await?;
            Ok(())
        }
    }

    fn header(properties: &BasicProperties, name: &str) -> Option<String> {
        let headers = properties.headers().as_ref()?;
        match headers.inner().get(name)? {
            AMQPValue::LongString(value) => {
                Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
            }
            _ => None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_producer_and_redeliveries_on_rabbitmq_process_each_message_once_in_order() {
        let url = service_url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
        let connect = Connection::connect(&url, ConnectionProperties::default());
        let connection = match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => return unreachable("producer sequence on rabbitmq", &url, &error),
            Err(elapsed) => return unreachable("producer sequence on rabbitmq", &url, &elapsed),
        };
        let prefix = redis_support::unique_prefix("sequence-rabbitmq");
        let Some(store) = redis_store(&prefix).await else {
            return;
        };
        let queue = format!("idempotency.stock.{}", idempotency::Token::random());
        let channel = connection.create_channel().await.expect("a channel");
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("a queue");
        channel
            .basic_qos(1, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut deliveries = channel
            .basic_consume(
                queue.as_str().into(),
                "stock".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");

        let report = Arc::new(Mutex::new(Report::default()));
        let consuming = {
            let (report, consumer) = (Arc::clone(&report), consumer(store, "stock.apply"));
            tokio::spawn(async move {
                let started = Instant::now();
                while lock(&report).processed.len() < TOTAL as usize {
                    assert!(started.elapsed() < DEADLINE, "{:?}", lock(&report));
                    let next =
                        tokio::time::timeout(Duration::from_millis(200), deliveries.next()).await;
                    let delivery = match next {
                        Err(_idle) => continue,
                        Ok(None) => panic!("the consumer was cancelled"),
                        Ok(Some(delivery)) => delivery.expect("a delivery"),
                    };
                    let stamp = Stamp::from_headers(
                        header(&delivery.properties, PRODUCER_HEADER).as_deref(),
                        header(&delivery.properties, SEQUENCE_HEADER).as_deref(),
                    )
                    .expect("a stamped message");
                    let first = !delivery.redelivered;
                    let ack = handle(&consumer, &report, &stamp, &delivery.data, first).await;
                    let reply = if ack {
                        delivery.ack(BasicAckOptions::default()).await
                    } else {
                        let requeue = BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        };
                        delivery.nack(requeue).await
                    };
                    reply.expect("ack or nack");
                }
            })
        };
        let (before, after) = {
            let (queue, prefix) = (queue.clone(), prefix.clone());
            tokio::task::spawn_blocking(move || kill_and_restart("rabbitmq", &queue, &prefix))
                .await
                .expect("the producer runs")
        };
        consuming.await.expect("the consumer");
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete the queue");
        check(&lock(&report), &before, &after);
    }
}
