//! The outbox relay on PostgreSQL + NATS JetStream, against a bare publish loop on the same
//! stream, in one run:
//!
//! * **throughput**: 5,000 committed messages drained by one relay (batches of 100, or `OUTBOX_BENCH_BATCH`: take,
//!   publish with `Nats-Msg-Id`, wait for the acks, mark), against the same 5,000 messages
//!   published by a bare loop (batches of 100 in flight, each waiting for its ack) — no table;
//! * **end-to-end latency**: messages committed one at a time (500 per second for 4 s), each
//!   carrying its commit time; a spawned relay (`idle` 10 ms) publishes them and a JetStream
//!   consumer applies each once through a `Consumer` keyed by the message id: the time from the
//!   commit to the consumer's effect, p50 / p99 / max.
//!
//! ```sh
//! cargo bench --bench outbox --features postgres,nats
//! OUTBOX_BENCH_BATCH=500 cargo bench --bench outbox --features postgres,nats
//! OUTBOX_BENCH_RELAYS=2 cargo bench --bench outbox --features postgres,nats   # relays passing at once
//! ```
//!
//! A plain program (no criterion): both measures are of a whole pipeline, not of a call.
//! PostgreSQL from `POSTGRES_URL`, NATS from `NATS_URL` (loopback defaults); a server that
//! cannot be reached is reported SKIPPED.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt as _;
use idempotency::broker::nats::{JetStreamPublisher, async_nats, message_id};
use idempotency::consumer::Consumer;
use idempotency::outbox::Outbox;
use idempotency::sqlx::{PgPool, Postgres};
use idempotency::{Idempotency, MemoryStore};

const MESSAGES: usize = 5_000;
const RATE: usize = 500;
const LATENCY_SECONDS: usize = 4;

/// Rows per relay pass, and messages in flight in the bare loop (`OUTBOX_BENCH_BATCH`,
/// default 100).
fn batch() -> usize {
    std::env::var("OUTBOX_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(100)
}

fn tag() -> String {
    format!(
        "{}_{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0)
    )
}

async fn stream_on(js: &jetstream::Context, name: &str, subject: &str) {
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{subject}.>")],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .expect("create a stream");
}

async fn fill(pool: &PgPool, outbox: &Outbox<Postgres>, n: usize, topic: &str) {
    for chunk in 0..n.div_ceil(batch()) {
        let mut tx = pool.begin().await.expect("begin");
        for i in 0..batch().min(n - chunk * batch()) {
            outbox
                .add(&mut tx, topic, format!("payload {chunk}-{i}"))
                .await
                .expect("add");
        }
        tx.commit().await.expect("commit");
    }
}

/// Publishes `n` messages in batches of `batch()` in flight, each waiting for its ack.
async fn bare(js: &jetstream::Context, subject: &str, n: usize) -> Duration {
    let started = Instant::now();
    for chunk in 0..n.div_ceil(batch()) {
        let acks = (0..batch().min(n - chunk * batch())).map(|i| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("bare-{chunk}-{i}").as_str());
            let payload = format!("payload {chunk}-{i}");
            async move {
                js.publish_with_headers(format!("{subject}.bare"), headers, payload.into())
                    .await
                    .expect("publish")
                    .await
                    .expect("ack")
            }
        });
        futures::future::join_all(acks).await;
    }
    started.elapsed()
}

/// Relays running at once in the throughput measure (`OUTBOX_BENCH_RELAYS`, default 1).
fn relays() -> usize {
    std::env::var("OUTBOX_BENCH_RELAYS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// Drains the outbox with `relays()` relays passing at once, each until a pass finds nothing.
async fn relay_drain(
    outbox: &Outbox<Postgres>,
    js: &jetstream::Context,
    subject: &str,
) -> Duration {
    let relay = outbox
        .relay(JetStreamPublisher::new(js.clone()).subject_prefix(format!("{subject}.")))
        .batch(batch());
    let started = Instant::now();
    let drain = || async {
        loop {
            let pass = relay.run_once().await.expect("a pass");
            assert!(pass.failed.is_empty(), "{pass:?}");
            if pass.published == 0 {
                break;
            }
        }
    };
    futures::future::join_all((0..relays()).map(|_| drain())).await;
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

async fn latency(
    pool: &PgPool,
    outbox: &Outbox<Postgres>,
    js: &jetstream::Context,
    name: &str,
    subject: &str,
) -> Vec<Duration> {
    let origin = Instant::now();
    let handle = outbox
        .relay(JetStreamPublisher::new(js.clone()).subject_prefix(format!("{subject}.")))
        .idle(Duration::from_millis(10))
        .spawn();
    let stream = js.get_stream(name).await.expect("the stream");
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("latency".to_owned()),
            filter_subject: format!("{subject}.timed"),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("a consumer");
    let expected = RATE * LATENCY_SECONDS;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(expected)));
    let consuming = {
        let latencies = Arc::clone(&latencies);
        tokio::spawn(async move {
            let dedup = Consumer::new(Idempotency::new(MemoryStore::new()), "bench.outbox");
            let mut messages = consumer.messages().await.expect("messages");
            let deadline = Instant::now() + Duration::from_secs(30);
            while latencies.lock().map(|l| l.len()).unwrap_or(0) < expected
                && Instant::now() < deadline
            {
                let Ok(Some(Ok(message))) =
                    tokio::time::timeout(Duration::from_secs(5), messages.next()).await
                else {
                    break;
                };
                let id = message_id(message.headers.as_ref())
                    .unwrap_or_default()
                    .to_owned();
                let committed: u64 = std::str::from_utf8(&message.payload)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let latencies = Arc::clone(&latencies);
                dedup
                    .handle(&id, || async move {
                        let now = origin.elapsed().as_nanos() as u64;
                        latencies
                            .lock()
                            .expect("lock")
                            .push(Duration::from_nanos(now.saturating_sub(committed)));
                        Ok::<_, idempotency::Error>(())
                    })
                    .await
                    .expect("handle");
                let _ = message.ack().await;
            }
        })
    };
    let tick = Duration::from_secs(1) / RATE as u32;
    let start = Instant::now();
    for i in 0..expected {
        let due = start + tick * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let mut tx = pool.begin().await.expect("begin");
        // The time the commit is sent: the latency counts the commit's own round trip too.
        let committing = origin.elapsed().as_nanos() as u64;
        outbox
            .add(&mut tx, "timed", committing.to_string())
            .await
            .expect("add");
        tx.commit().await.expect("commit");
    }
    let _ = consuming.await;
    handle.shutdown().await;
    let mut latencies = latencies.lock().expect("lock").clone();
    latencies.sort();
    latencies
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run());
}

async fn run() {
    let pg = std::env::var("POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let nats = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let (Ok(pool), Ok(client)) = (PgPool::connect(&pg).await, async_nats::connect(&nats).await)
    else {
        eprintln!("SKIPPED outbox bench: cannot reach {pg} or {nats}");
        return;
    };
    let js = jetstream::new(client);
    let tag = tag();
    let (name, subject) = (format!("OUTBOX_BENCH_{tag}"), format!("bench.{tag}"));
    stream_on(&js, &name, &subject).await;
    let table = format!("outbox_bench_{tag}");
    let outbox = Outbox::with_table(pool.clone(), &table).expect("a table name");
    outbox.migrate().await.expect("migrate");

    // Throughput: three alternating rounds of each side.
    let (mut bare_rates, mut relay_rates) = (Vec::new(), Vec::new());
    for _round in 0..3 {
        let took = bare(&js, &subject, MESSAGES).await;
        bare_rates.push(MESSAGES as f64 / took.as_secs_f64());
        fill(&pool, &outbox, MESSAGES, "drained").await;
        let took = relay_drain(&outbox, &js, &subject).await;
        relay_rates.push(MESSAGES as f64 / took.as_secs_f64());
    }
    let median = |rates: &mut Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let (bare_rate, relay_rate) = (median(&mut bare_rates), median(&mut relay_rates));
    println!(
        "throughput, {MESSAGES} messages, batches of {}, {} relay(s) (median of 3 alternating rounds):",
        batch(),
        relays()
    );
    println!("  bare publish loop  {bare_rate:>10.0} msg/s");
    println!(
        "  outbox relay       {relay_rate:>10.0} msg/s   ratio {:.2}",
        relay_rate / bare_rate
    );

    let latencies = latency(&pool, &outbox, &js, &name, &subject).await;
    println!(
        "end-to-end latency, commit -> consumer effect, {} messages at {RATE}/s, relay idle 10 ms: p50 {:?}  p99 {:?}  max {:?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    let _ = js.delete_stream(&name).await;
    let _ = idempotency::sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(&pool)
        .await;
}
