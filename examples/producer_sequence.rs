//! Producer-sequence deduplication, end to end in one process on the memory store: a
//! warehouse numbers its stock moves, crashes mid-stream, restarts and re-publishes its last
//! moves; the broker (a queue here) redelivers and reorders; the stock service applies every
//! move once, in order, keeping one mark per warehouse.
//!
//! `cargo run --example producer_sequence`. The same code runs over Redis or SQL by giving
//! `Idempotency` that store; `tests/producer_sequence_brokers.rs` runs it through NATS
//! JetStream and RabbitMQ with a producer process that is really killed.

use std::collections::VecDeque;
use std::process::ExitCode;

use idempotency::consumer::sequence::{
    Delivery, PRODUCER_HEADER, ProducerSequence, SEQUENCE_HEADER, SequencedConsumer, Stamp,
};
use idempotency::{Error, Idempotency, MemoryStore};

/// A message on the wire: headers and a body.
#[derive(Debug, Clone)]
struct Message {
    headers: Vec<(&'static str, String)>,
    units: i64,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        let found = self.headers.iter().find(|(header, _)| *header == name);
        found.map(|(_, value)| value.as_str())
    }
}

/// The warehouse's move number `n` (a real producer reads it from its own outbox).
fn units(n: u64) -> i64 {
    if n.is_multiple_of(3) { -2 } else { 5 }
}

fn publish(queue: &mut VecDeque<Message>, stamp: &Stamp) {
    queue.push_back(Message {
        headers: stamp.headers().to_vec(),
        units: units(stamp.sequence()),
    });
}

async fn run() -> Result<(), Error> {
    // One store for both sides here; in production each side reaches the shared store.
    let idempotency = Idempotency::new(MemoryStore::new());
    let mut queue = VecDeque::new();

    // The warehouse publishes moves 1..=4, then crashes.
    let mut warehouse =
        ProducerSequence::open(&idempotency, "stock.producers", "warehouse-7").await?;
    for _ in 0..4 {
        let stamp = warehouse.next().await?;
        publish(&mut queue, &stamp);
    }
    // It took number 5 and died before publishing it.
    let _lost = warehouse.next().await?;
    drop(warehouse);

    // Restarted: it continues at 5 (not 1), re-publishing what it may not have sent.
    let mut warehouse =
        ProducerSequence::open(&idempotency, "stock.producers", "warehouse-7").await?;
    println!("warehouse-7 restarted after move {}", warehouse.last());
    for again in warehouse.last() - 1..=warehouse.last() {
        publish(&mut queue, &warehouse.again(again)?);
    }
    for _ in 0..3 {
        let stamp = warehouse.next().await?;
        publish(&mut queue, &stamp);
    }
    // The broker redelivers move 2 and delivers move 7 before move 6.
    queue.push_back(queue[1].clone());
    queue.swap(6, 7);

    let consumer = SequencedConsumer::new(idempotency, "stock.apply-moves");
    let mut stock = 100;
    let mut applied = Vec::new();
    while let Some(message) = queue.pop_front() {
        let stamp = Stamp::from_headers(
            message.header(PRODUCER_HEADER),
            message.header(SEQUENCE_HEADER),
        )?;
        let delivered = consumer
            .handle(&stamp, || async {
                stock += message.units;
                applied.push(stamp.sequence());
                Ok::<_, Error>(())
            })
            .await;
        match delivered {
            Ok(Delivery::Duplicate) => println!("{stamp}: duplicate, skipped (ack)"),
            Ok(_) => println!("{stamp}: applied {:+} units (ack)", message.units),
            Err(Error::SequenceGap { expected, .. }) => {
                println!("{stamp}: {expected} comes first (nak, redelivered later)");
                queue.push_back(message);
            }
            Err(error) => return Err(error),
        }
    }
    println!("applied moves {applied:?}; stock {stock}");
    assert_eq!(applied, (1..=8).collect::<Vec<_>>());
    assert_eq!(stock, 100 + (1..=8).map(units).sum::<i64>());
    assert_eq!(consumer.mark("warehouse-7").await?, 8);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("producer sequence example failed: {error}");
            ExitCode::FAILURE
        }
    }
}
