//! RabbitMQ: the `rabbitmq_workers` example, asserted. Three workers on one queue; one dies
//! after an effect and before its ack, one dies holding a task's claim; RabbitMQ requeues
//! their tasks, and every task's effect happens exactly once.
//!
//! Uses the RabbitMQ at `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`) with a
//! fresh queue that is deleted afterwards. Without a server the test prints SKIPPED;
//! `IDEMPOTENCY_REQUIRE_SERVICES=1` makes that a failure.

#[allow(dead_code)]
#[path = "../examples/rabbitmq_workers.rs"]
mod example;

use idempotency::testing::{service_url, unreachable};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_task_has_its_effect_once_across_crashes_and_requeues() {
    let url = service_url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let connection = match example::connect(&url).await {
        Ok(connection) => connection,
        Err(error) => return unreachable("rabbitmq workers", &url, &error),
    };
    let report = example::run(&url, connection)
        .await
        .expect("the example runs");

    // Three workers shared the queue, two crashed, and RabbitMQ requeued their tasks.
    assert!(
        report.deliveries_per_worker.iter().all(|n| *n > 0),
        "{report:?}"
    );
    assert_eq!(report.crashes, 2, "{report:?}");
    assert!(report.requeued_deliveries >= 2, "{report:?}");

    // The task whose invoice went out before the crash came back and was skipped.
    assert!(report.died_after_effect.is_some(), "{report:?}");
    assert!(report.died_after_effect_skipped >= 1, "{report:?}");
    // The task held by the worker that died mid-handler was taken over and done once.
    let held = report
        .died_in_handler
        .clone()
        .expect("a worker died in its handler");
    assert!(report.died_in_handler_taken_over_by.is_some(), "{report:?}");
    assert_eq!(report.invoices_per_task.get(&held), Some(&1));

    // Every task's effect happened exactly once.
    assert_eq!(report.invoices_per_task.len(), report.tasks, "{report:?}");
    assert!(
        report.invoices_per_task.values().all(|n| *n == 1),
        "{report:?}"
    );
}
