//! Idempotent RabbitMQ workers: three workers share one task queue, two of them crash with
//! tasks in hand, RabbitMQ requeues those tasks, and each task's effect still happens once.
//!
//! ```sh
//! cargo run --example rabbitmq_workers    # RabbitMQ at AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f)
//! ```
//!
//! Each worker is its own AMQP connection with its own executor, as separate processes would
//! be; they share only the dedup store. A supervisor restarts a crashed worker. The crashes:
//!
//! * worker 0 sends an invoice (the effect), then dies before its ack: RabbitMQ requeues the
//!   task, and the worker that gets it finds it done, acknowledges and skips it;
//! * worker 1 dies in the middle of sending an invoice, holding the task's claim: the worker
//!   that gets the requeued task waits for the dead worker's lease to pass, then takes the
//!   task over and sends it.
//!
//! Deliveries are acknowledged manually, after the handler; a failed handler would be
//! nack'ed with requeue.

use std::collections::{BTreeMap, HashSet};
use std::error::Error as StdError;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use idempotency::consumer::{Consumer, Outcome};
use idempotency::{Idempotency, MemoryStore, Store};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn StdError + Send + Sync>;

/// A task: send the invoice of one order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SendInvoice {
    /// What identifies the task across requeues.
    pub(crate) task_id: String,
    /// The order invoiced.
    pub(crate) order: u32,
}

/// What happened, for the caller to print or check.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Tasks published.
    pub(crate) tasks: usize,
    /// Deliveries received, by worker slot.
    pub(crate) deliveries_per_worker: [usize; WORKERS],
    /// Deliveries RabbitMQ marked as redelivered (requeued after a crash).
    pub(crate) requeued_deliveries: usize,
    /// Deliveries acknowledged as duplicates without running the handler.
    pub(crate) duplicates_skipped: usize,
    /// Worker crashes simulated.
    pub(crate) crashes: usize,
    /// Invoices sent for each task (the effect).
    pub(crate) invoices_per_task: BTreeMap<String, usize>,
    /// The task worker 0 had sent the invoice for when it died, unacknowledged.
    pub(crate) died_after_effect: Option<String>,
    /// Deliveries of that task acknowledged and skipped as duplicates after the crash.
    pub(crate) died_after_effect_skipped: usize,
    /// The task worker 1 held (claimed, invoice not sent) when it died.
    pub(crate) died_in_handler: Option<String>,
    /// The worker slot that took that task over after the dead worker's lease passed.
    pub(crate) died_in_handler_taken_over_by: Option<usize>,
}

pub(crate) const WORKERS: usize = 3;
const TASKS: usize = 60;
/// How long a worker's claim on a task holds: a dead worker's task waits this long.
const LEASE: Duration = Duration::from_secs(2);
const DEADLINE: Duration = Duration::from_secs(60);

/// How a worker process ends its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Healthy,
    /// From its `n`-th delivery on, dies after the first effect it runs, before the ack.
    CrashAfterEffect(usize),
    /// From its `n`-th delivery on, dies in the middle of the first handler it runs.
    CrashInHandler(usize),
}

#[derive(Debug, thiserror::Error)]
enum TaskError {
    #[error(transparent)]
    Idempotency(#[from] idempotency::Error),
}

struct Shared {
    url: String,
    queue: String,
    store: Arc<MemoryStore>,
    invoices: Mutex<BTreeMap<String, usize>>,
    report: Mutex<Report>,
    last_delivery: Mutex<Instant>,
    stop: AtomicBool,
    /// Deliveries received and not yet acknowledged or requeued.
    in_hand: AtomicUsize,
}

/// Connects to RabbitMQ at `url`.
pub(crate) async fn connect(url: &str) -> Result<Connection, BoxError> {
    let connect = Connection::connect(url, ConnectionProperties::default());
    Ok(tokio::time::timeout(Duration::from_secs(5), connect).await??)
}

/// Publishes the tasks to a fresh queue, runs three workers (two of which crash) until every
/// task is done, deletes the queue.
pub(crate) async fn run(url: &str, connection: Connection) -> Result<Report, BoxError> {
    let unique = format!(
        "{}.{}",
        std::process::id(),
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos()
    );
    let queue = format!("idempotency.invoices.{unique}");
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let outcome = publish_and_work(url, &channel, &queue).await;
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    connection.close(200, "done".into()).await?;
    outcome
}

async fn publish_and_work(
    url: &str,
    channel: &lapin::Channel,
    queue: &str,
) -> Result<Report, BoxError> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    for order in 0..TASKS as u32 {
        let task = SendInvoice {
            task_id: format!("invoice-{order:03}"),
            order,
        };
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&task)?,
                BasicProperties::default(),
            )
            .await?
            .await?;
    }

    let shared = Arc::new(Shared {
        url: url.to_owned(),
        queue: queue.to_owned(),
        // In production: a store every worker process reaches (Redis, SQL).
        store: Arc::new(MemoryStore::new()),
        invoices: Mutex::new(BTreeMap::new()),
        report: Mutex::new(Report {
            tasks: TASKS,
            ..Report::default()
        }),
        last_delivery: Mutex::new(Instant::now()),
        stop: AtomicBool::new(false),
        in_hand: AtomicUsize::new(0),
    });
    let fates = [
        Fate::CrashAfterEffect(3),
        Fate::CrashInHandler(4),
        Fate::Healthy,
    ];
    let supervisors: Vec<_> = fates
        .into_iter()
        .enumerate()
        .map(|(slot, fate)| tokio::spawn(supervise(Arc::clone(&shared), slot, fate)))
        .collect();

    let started = Instant::now();
    let mut finished = false;
    while started.elapsed() < DEADLINE {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let all_done = lock(&shared.invoices).len() == TASKS;
        let idle = lock(&shared.last_delivery).elapsed() > Duration::from_millis(500);
        if all_done && idle && shared.in_hand.load(Ordering::SeqCst) == 0 {
            finished = true;
            break;
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    for supervisor in supervisors {
        supervisor.await??;
    }
    if !finished {
        return Err("the tasks were not all done before the deadline".into());
    }
    let mut report = std::mem::take(&mut *lock(&shared.report));
    report.invoices_per_task = std::mem::take(&mut *lock(&shared.invoices));
    Ok(report)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the worker of `slot`; restarts it (healthy) when it crashes, as a process supervisor
/// would.
async fn supervise(shared: Arc<Shared>, slot: usize, first: Fate) -> Result<(), BoxError> {
    let mut fate = first;
    for _generation in 0..3 {
        let crashed = worker(&shared, slot, fate).await?;
        if !crashed {
            return Ok(());
        }
        lock(&shared.report).crashes += 1;
        fate = Fate::Healthy;
    }
    Ok(())
}

/// One worker process: its own connection and executor. `Ok(true)` when it crashed.
async fn worker(shared: &Shared, slot: usize, fate: Fate) -> Result<bool, BoxError> {
    let connection = connect(&shared.url).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(4, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            shared.queue.as_str().into(),
            format!("worker-{slot}").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Its own executor over the shared store: no in-process shortcut between workers.
    let idempotency = Idempotency::from_shared(Arc::clone(&shared.store) as Arc<dyn Store>);
    let consumer = Consumer::new(idempotency, "billing.send-invoice").lease(LEASE);

    let mut received = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let next = tokio::time::timeout(Duration::from_millis(200), deliveries.next()).await;
        let delivery = match next {
            Err(_idle) => continue,
            Ok(None) => break,
            Ok(Some(delivery)) => delivery?,
        };
        shared.in_hand.fetch_add(1, Ordering::SeqCst);
        *lock(&shared.last_delivery) = Instant::now();
        received += 1;
        {
            let mut report = lock(&shared.report);
            report.deliveries_per_worker[slot] += 1;
            report.requeued_deliveries += usize::from(delivery.redelivered);
        }
        let task: SendInvoice = serde_json::from_slice(&delivery.data)?;
        // From its n-th delivery on, the worker dies in the first handler that really runs
        // (a duplicate does not run the handler).
        let dies_in_handler = matches!(fate, Fate::CrashInHandler(n) if received >= n);
        let entered = AtomicBool::new(false);

        let handled = consumer.handle(&task.task_id, || async {
            if dies_in_handler {
                // The process is about to die: the invoice is never sent.
                entered.store(true, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await; // the mail server
            *lock(&shared.invoices)
                .entry(task.task_id.clone())
                .or_default() += 1;
            Ok::<_, TaskError>(slot)
        });

        let mut handled = Box::pin(handled);
        let result = loop {
            if !dies_in_handler {
                break handled.await;
            }
            match tokio::time::timeout(Duration::from_millis(100), &mut handled).await {
                Ok(result) => break result, // a duplicate: the handler did not run
                Err(_) if entered.load(Ordering::SeqCst) => {
                    // The handler holds the task's claim: die. A dead process runs no
                    // destructors, so the in-flight call is leaked: its claim stays until the
                    // lease passes, exactly as after a real crash.
                    std::mem::forget(handled);
                    lock(&shared.report).died_in_handler = Some(task.task_id.clone());
                    return crash(shared, connection, 1).await;
                }
                Err(_) => {} // still waiting for another worker's claim on this task
            }
        };

        match result {
            Ok(outcome) => {
                let processed = matches!(outcome, Outcome::Processed(_));
                if processed && matches!(fate, Fate::CrashAfterEffect(n) if received >= n) {
                    // The invoice went out; the ack never will.
                    lock(&shared.report).died_after_effect = Some(task.task_id.clone());
                    return crash(shared, connection, 1).await;
                }
                {
                    let mut report = lock(&shared.report);
                    let this_task = Some(&task.task_id);
                    match outcome {
                        Outcome::Duplicate(_) => {
                            report.duplicates_skipped += 1;
                            if report.died_after_effect.as_ref() == this_task {
                                report.died_after_effect_skipped += 1;
                            }
                        }
                        Outcome::Processed(_) => {
                            if report.died_in_handler.as_ref() == this_task {
                                report.died_in_handler_taken_over_by = Some(slot);
                            }
                        }
                    }
                }
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Err(error) => {
                eprintln!("worker {slot}: {error}; requeueing {}", task.task_id);
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await?;
            }
        }
        shared.in_hand.fetch_sub(1, Ordering::SeqCst);
    }
    connection.close(200, "stopping".into()).await?;
    Ok(false)
}

/// The worker dies: its connection goes away with its unacknowledged deliveries (the one in
/// hand and those prefetched), which RabbitMQ requeues for the other workers.
async fn crash(shared: &Shared, connection: Connection, in_hand: usize) -> Result<bool, BoxError> {
    connection.close(320, "worker crashed".into()).await?;
    shared.in_hand.fetch_sub(in_hand, Ordering::SeqCst);
    Ok(true)
}

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let connection = match connect(&url).await {
        Ok(connection) => connection,
        Err(error) => {
            eprintln!("cannot reach RabbitMQ at {url}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let report = match run(&url, connection).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("rabbitmq example failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    let sent: usize = report.invoices_per_task.values().sum();
    let twice: HashSet<&String> = report
        .invoices_per_task
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(task, _)| task)
        .collect();
    println!(
        "{} tasks, 3 workers; deliveries per worker {:?}; {} crashes",
        report.tasks, report.deliveries_per_worker, report.crashes
    );
    println!(
        "{} requeued deliveries; {} duplicates acknowledged and skipped",
        report.requeued_deliveries, report.duplicates_skipped
    );
    if let Some(task) = &report.died_after_effect {
        println!(
            "{task}: worker 0 died after sending its invoice, before the ack; requeued, skipped {} time(s) as a duplicate",
            report.died_after_effect_skipped
        );
    }
    if let (Some(task), Some(worker)) = (
        &report.died_in_handler,
        report.died_in_handler_taken_over_by,
    ) {
        println!("{task}: worker 1 died holding it; worker {worker} took it over after the lease");
    }
    println!("{sent} invoices sent for {} tasks", report.tasks);
    if sent == report.tasks && twice.is_empty() && report.invoices_per_task.len() == report.tasks {
        println!("every task's effect happened exactly once");
        ExitCode::SUCCESS
    } else {
        eprintln!("tasks with more than one invoice: {twice:?}");
        ExitCode::FAILURE
    }
}
