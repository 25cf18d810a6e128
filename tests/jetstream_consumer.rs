//! NATS JetStream: the `jetstream_consumer` example, asserted. Publisher duplicates, handler
//! failures (nak), lost acks (nak after the effect) and hung workers (no ack, redelivered
//! after a short ack wait) all end with one settlement per distinct event.
//!
//! Uses the NATS at `NATS_URL` (default `nats://127.0.0.1:4222`, JetStream enabled) with a
//! fresh stream that is deleted afterwards. Without a server the test prints SKIPPED;
//! `IDEMPOTENCY_REQUIRE_SERVICES=1` makes that a failure.

#[allow(dead_code)]
#[path = "../examples/jetstream_consumer.rs"]
mod example;

use idempotency::testing::{service_url, unreachable};

#[tokio::test]
async fn every_distinct_event_is_settled_once_despite_duplicates_and_redeliveries() {
    let url = service_url("NATS_URL", "nats://127.0.0.1:4222");
    let client = match example::connect(&url).await {
        Ok(client) => client,
        Err(error) => return unreachable("jetstream consumer", &url, &error),
    };
    let report = example::run(client).await.expect("the example runs");

    // The broker really delivered duplicates and redeliveries of every kind.
    assert!(report.published > report.distinct, "{report:?}");
    assert!(report.redeliveries > 0, "{report:?}");
    assert!(
        report.nak_redeliveries > 0,
        "naks were redelivered: {report:?}"
    );
    assert!(
        report.ack_wait_redeliveries > 0,
        "unanswered deliveries came back after the ack wait: {report:?}"
    );
    assert!(report.handler_failures > 0, "{report:?}");
    assert!(
        report.duplicates_skipped >= report.published - report.distinct,
        "{report:?}"
    );
    assert!(report.deliveries > report.published, "{report:?}");

    // And every distinct event had its effect exactly once.
    assert_eq!(report.settlements, report.distinct, "{report:?}");
    assert_eq!(report.settlements_per_event.len(), report.distinct);
    assert!(
        report.settlements_per_event.values().all(|n| *n == 1),
        "{report:?}"
    );
    assert_eq!(report.ledger_cents, report.expected_cents);
}
