//! An idempotent NATS JetStream consumer: payment events are settled once each, although the
//! stream holds publisher duplicates and the consumer forces every kind of redelivery.
//!
//! ```sh
//! cargo run --example jetstream_consumer    # NATS with JetStream at NATS_URL (default nats://127.0.0.1:4222)
//! ```
//!
//! The example publishes payment events to a fresh stream, a third of them twice (a publisher
//! that retried after a lost publish ack), then consumes them with a short ack wait and:
//!
//! * fails the handler on the first delivery of some events (nak: redelivered, then settled);
//! * settles some events and then naks them, as if the worker died before its ack reached the
//!   server (redelivered: a duplicate, acknowledged and skipped);
//! * settles some events and never acks their first delivery, as a hung worker would
//!   (redelivered after the ack wait: a duplicate, skipped).
//!
//! Deduplication is by the event id inside the payload (a key derived from the message), so
//! publisher duplicates, which JetStream stores as separate messages, are caught too. At the
//! end the number of settlements equals the number of distinct events.

use std::collections::{BTreeMap, HashMap};
use std::error::Error as StdError;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use futures::StreamExt as _;
use idempotency::consumer::{Consumer, Outcome};
use idempotency::{Idempotency, MemoryStore};
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn StdError + Send + Sync>;

/// A payment settled by the upstream gateway, to be booked into the ledger once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PaymentEvent {
    /// The gateway's event id: what identifies the event across redeliveries and retries.
    pub(crate) event_id: String,
    /// The merchant account credited.
    pub(crate) account: String,
    /// The amount.
    pub(crate) cents: u64,
}

/// What happened, for the caller to print or check.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Messages published, duplicates included.
    pub(crate) published: usize,
    /// Distinct events among them.
    pub(crate) distinct: usize,
    /// Deliveries received from JetStream.
    pub(crate) deliveries: usize,
    /// Deliveries that were redeliveries (JetStream's delivery count above 1).
    pub(crate) redeliveries: usize,
    /// Of those, redeliveries after a nak (a failed handler, or a lost ack).
    pub(crate) nak_redeliveries: usize,
    /// Of those, redeliveries after the ack wait passed with no answer (a hung worker).
    pub(crate) ack_wait_redeliveries: usize,
    /// Deliveries acknowledged as duplicates without running the handler.
    pub(crate) duplicates_skipped: usize,
    /// Handler failures (nak'ed, redelivered).
    pub(crate) handler_failures: usize,
    /// Times the effect (booking into the ledger) ran.
    pub(crate) settlements: usize,
    /// Times each event's effect ran.
    pub(crate) settlements_per_event: BTreeMap<String, usize>,
    /// The ledger's total.
    pub(crate) ledger_cents: u64,
    /// The sum of the distinct events' amounts.
    pub(crate) expected_cents: u64,
}

/// How the example treats an event's first delivery, to force redeliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Ack,
    FailFirst,
    NakAfterEffect,
    NeverAckFirst,
}

fn script(index: usize) -> Script {
    match index % 5 {
        1 => Script::FailFirst,
        2 => Script::NakAfterEffect,
        3 => Script::NeverAckFirst,
        _ => Script::Ack,
    }
}

#[derive(Debug, thiserror::Error)]
enum SettleError {
    #[error("the ledger database timed out (simulated)")]
    LedgerTimeout,
    #[error(transparent)]
    Idempotency(#[from] idempotency::Error),
}

#[derive(Debug, Default)]
struct Ledger {
    balances: HashMap<String, u64>,
    settlements: BTreeMap<String, usize>,
}

const EVENTS: usize = 40;
const ACK_WAIT: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(60);

/// Connects to NATS at `url`.
pub(crate) async fn connect(url: &str) -> Result<async_nats::Client, BoxError> {
    let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(3));
    Ok(options.connect(url).await?)
}

/// Publishes the events to a fresh stream, consumes them idempotently, deletes the stream.
pub(crate) async fn run(client: async_nats::Client) -> Result<Report, BoxError> {
    let js = jetstream::new(client);
    let unique = format!(
        "{}_{}",
        std::process::id(),
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos()
    );
    let name = format!("PAYMENTS_{unique}");
    let subject = format!("payments.{unique}.settled");
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::Memory,
            ..Default::default()
        })
        .await?;
    let outcome = publish_and_consume(&js, &stream, &subject).await;
    js.delete_stream(&name).await?;
    outcome
}

async fn publish_and_consume(
    js: &jetstream::Context,
    stream: &jetstream::stream::Stream,
    subject: &str,
) -> Result<Report, BoxError> {
    let mut report = Report::default();
    let mut scripts = HashMap::new();
    for index in 0..EVENTS {
        let event = PaymentEvent {
            event_id: format!("evt-{index:03}"),
            account: format!("merchant-{}", index % 4),
            cents: 100 + 7 * index as u64,
        };
        report.expected_cents += event.cents;
        scripts.insert(event.event_id.clone(), script(index));
        let copies = if index % 3 == 0 { 2 } else { 1 };
        for _ in 0..copies {
            let payload = serde_json::to_vec(&event)?;
            js.publish(subject.to_owned(), payload.into())
                .await?
                .await?;
            report.published += 1;
        }
    }
    report.distinct = EVENTS;

    let mut consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("ledger".to_owned()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_deliver: 10,
            ..Default::default()
        })
        .await?;

    // In production the dedup store is shared by every instance (Redis, SQL); one process here.
    let dedup = Consumer::new(
        Idempotency::new(MemoryStore::new()),
        "ledger.settle-payments",
    )
    .window(Duration::from_secs(24 * 3600));
    let ledger = Mutex::new(Ledger::default());

    let started = Instant::now();
    while started.elapsed() < DEADLINE {
        let mut batch = consumer
            .batch()
            .max_messages(16)
            .expires(Duration::from_millis(300))
            .messages()
            .await?;
        while let Some(message) = batch.next().await {
            let message = message?;
            let delivered = message.info()?.delivered;
            report.deliveries += 1;
            report.redeliveries += usize::from(delivered > 1);
            let event: PaymentEvent = serde_json::from_slice(&message.payload)?;
            let plan = scripts.get(&event.event_id).copied().unwrap_or(Script::Ack);
            let first_delivery = delivered == 1;
            if !first_delivery {
                match plan {
                    Script::FailFirst | Script::NakAfterEffect => report.nak_redeliveries += 1,
                    Script::NeverAckFirst => report.ack_wait_redeliveries += 1,
                    Script::Ack => {}
                }
            }

            let settled = dedup
                .handle(&event.event_id, || async {
                    if plan == Script::FailFirst && first_delivery {
                        return Err(SettleError::LedgerTimeout);
                    }
                    let mut ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
                    *ledger.balances.entry(event.account.clone()).or_default() += event.cents;
                    *ledger
                        .settlements
                        .entry(event.event_id.clone())
                        .or_default() += 1;
                    Ok(())
                })
                .await;

            match settled {
                Ok(Outcome::Duplicate(())) => {
                    report.duplicates_skipped += 1;
                    message.ack().await?;
                }
                Ok(Outcome::Processed(())) => match plan {
                    Script::NakAfterEffect if first_delivery => {
                        message.ack_with(AckKind::Nak(None)).await?;
                    }
                    Script::NeverAckFirst if first_delivery => {}
                    _ => message.ack().await?,
                },
                Err(SettleError::LedgerTimeout) => {
                    report.handler_failures += 1;
                    message.ack_with(AckKind::Nak(None)).await?;
                }
                Err(SettleError::Idempotency(error)) => {
                    // The dedup store failed: redeliver later rather than risk a double booking.
                    eprintln!("dedup store error, redelivering: {error}");
                    message
                        .ack_with(AckKind::Nak(Some(Duration::from_millis(200))))
                        .await?;
                }
            }
        }
        let info = consumer.info().await?;
        let settled_all = ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .settlements
            .len()
            == EVENTS;
        if settled_all && info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
    }

    let ledger = ledger.into_inner().unwrap_or_else(|e| e.into_inner());
    report.settlements = ledger.settlements.values().sum();
    report.settlements_per_event = ledger.settlements;
    report.ledger_cents = ledger.balances.values().sum();
    Ok(report)
}

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let client = match connect(&url).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("cannot reach NATS at {url}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let report = match run(client).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("jetstream example failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "published {} messages for {} distinct payment events",
        report.published, report.distinct
    );
    println!(
        "{} deliveries ({} redeliveries: {} after a nak, {} after the ack wait); {} handler failures nak'ed; {} duplicates acknowledged and skipped",
        report.deliveries,
        report.redeliveries,
        report.nak_redeliveries,
        report.ack_wait_redeliveries,
        report.handler_failures,
        report.duplicates_skipped
    );
    println!(
        "{} settlements for {} distinct events; ledger {} cents (expected {})",
        report.settlements, report.distinct, report.ledger_cents, report.expected_cents
    );
    if report.settlements == report.distinct && report.ledger_cents == report.expected_cents {
        println!("every event was settled exactly once");
        ExitCode::SUCCESS
    } else {
        eprintln!("some event was settled twice or not at all");
        ExitCode::FAILURE
    }
}
