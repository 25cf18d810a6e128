//! Consumer dedup over a store (the memory store here; the broker tests run it against NATS
//! JetStream and RabbitMQ): duplicates are skipped, failures stay unmarked, concurrent and
//! crashed deliveries resolve to one effect.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{AppError, DOWN};
use idempotency::ClaimRequest;
use idempotency::consumer::{Consumer, Outcome};
use idempotency::{
    Claim, Error, Fingerprint, Idempotency, InProgressPolicy, MemoryStore, Store, StoreOp,
};

fn consumer(store: &Arc<MemoryStore>, name: &'static str) -> Consumer {
    Consumer::new(Idempotency::from_shared(store.clone()), name)
}

#[tokio::test]
async fn duplicates_are_skipped_and_get_the_first_output() {
    let store = Arc::new(MemoryStore::new());
    let consumer = consumer(&store, "test.duplicates");
    let effects = AtomicUsize::new(0);
    let deliveries = ["a", "b", "a", "c", "b", "a"];
    let mut outcomes = Vec::new();
    for id in deliveries {
        let outcome = consumer
            .handle(id, || async {
                let n = effects.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>(format!("{id}#{n}"))
            })
            .await
            .unwrap();
        outcomes.push(outcome);
    }
    assert_eq!(effects.load(Ordering::SeqCst), 3);
    assert_eq!(
        outcomes,
        vec![
            Outcome::Processed("a#0".to_owned()),
            Outcome::Processed("b#1".to_owned()),
            Outcome::Duplicate("a#0".to_owned()),
            Outcome::Processed("c#2".to_owned()),
            Outcome::Duplicate("b#1".to_owned()),
            Outcome::Duplicate("a#0".to_owned()),
        ]
    );
}

#[tokio::test]
async fn a_failed_handler_leaves_the_message_unmarked_for_redelivery() {
    let store = Arc::new(MemoryStore::new());
    let consumer = consumer(&store, "test.failure");
    let attempts = AtomicUsize::new(0);
    let effects = AtomicUsize::new(0);
    let deliver = || {
        consumer.handle("evt-1", || async {
            if attempts.fetch_add(1, Ordering::SeqCst) < 2 {
                return Err(AppError::Gateway("timeout".into()));
            }
            effects.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    };
    assert!(matches!(deliver().await, Err(AppError::Gateway(_))));
    assert!(matches!(deliver().await, Err(AppError::Gateway(_))));
    assert_eq!(deliver().await.unwrap(), Outcome::Processed(()));
    assert_eq!(deliver().await.unwrap(), Outcome::Duplicate(()));
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(effects.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_deliveries_to_separate_workers_have_one_effect() {
    // Five workers, each with its own executor (no in-process coalescing between them, as in
    // five processes), sharing one store; every message is delivered to every worker at once.
    let store = Arc::new(MemoryStore::new());
    let workers: Vec<Consumer> = (0..5).map(|_| consumer(&store, "test.race")).collect();
    let effects: Arc<Vec<AtomicUsize>> = Arc::new((0..20).map(|_| AtomicUsize::new(0)).collect());
    let mut tasks = Vec::new();
    for message in 0..20usize {
        for worker in &workers {
            let worker = worker.clone();
            let effects = Arc::clone(&effects);
            tasks.push(tokio::spawn(async move {
                worker
                    .handle(&message, || async {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        effects[message].fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Error>(message)
                    })
                    .await
            }));
        }
    }
    let mut processed = 0;
    for task in tasks {
        let outcome = task.await.unwrap().unwrap();
        processed += usize::from(!outcome.is_duplicate());
    }
    assert_eq!(processed, 20);
    assert!(
        effects
            .iter()
            .all(|count| count.load(Ordering::SeqCst) == 1)
    );
}

#[tokio::test]
async fn a_crashed_consumers_message_is_taken_over_after_its_lease() {
    let store = Arc::new(MemoryStore::new());
    let consumer = consumer(&store, "test.crash").lease(Duration::from_millis(200));
    // A worker claimed the message and died without completing or releasing it.
    let key = consumer.key("evt-7").unwrap();
    let fingerprint = Fingerprint::from_digest(*key.digest());
    let claim = store
        .claim(
            &key,
            ClaimRequest::new(fingerprint, Duration::from_millis(200)),
        )
        .await
        .unwrap();
    assert!(matches!(claim, Claim::Acquired { .. }));

    // The redelivery waits for the dead worker's lease, then takes the message over.
    let effects = AtomicUsize::new(0);
    let outcome = consumer
        .handle("evt-7", || async {
            effects.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Processed(()));
    assert_eq!(effects.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_duplicate_in_progress_can_be_refused_at_once() {
    let store = Arc::new(MemoryStore::new());
    let consumer = consumer(&store, "test.reject").on_in_progress(InProgressPolicy::Reject);
    let key = consumer.key("evt-8").unwrap();
    let fingerprint = Fingerprint::from_digest(*key.digest());
    store
        .claim(
            &key,
            ClaimRequest::new(fingerprint, Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let result = consumer
        .handle("evt-8", || async { Ok::<_, Error>(()) })
        .await;
    match result {
        Err(Error::InProgress { retry_after, .. }) => assert!(retry_after > Duration::ZERO),
        other => panic!("expected InProgress, got {other:?}"),
    }
}

#[tokio::test]
async fn ids_are_remembered_for_the_window_only() {
    let store = Arc::new(MemoryStore::new());
    let consumer = consumer(&store, "test.window").window(Duration::from_millis(100));
    let effects = AtomicUsize::new(0);
    let deliver = || {
        consumer.handle("evt-9", || async {
            effects.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>(())
        })
    };
    assert!(!deliver().await.unwrap().is_duplicate());
    assert!(deliver().await.unwrap().is_duplicate());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!deliver().await.unwrap().is_duplicate());
    assert_eq!(effects.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn consumers_with_other_names_each_process_the_message() {
    let store = Arc::new(MemoryStore::new());
    let billing = consumer(&store, "billing.settle");
    let emails = consumer(&store, "emails.receipt");
    let effects = AtomicUsize::new(0);
    for consumer in [&billing, &emails, &billing, &emails] {
        consumer
            .handle("evt-10", || async {
                effects.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
    }
    assert_eq!(effects.load(Ordering::SeqCst), 2);
    assert_ne!(
        billing.key("evt-10").unwrap(),
        emails.key("evt-10").unwrap()
    );
    for consumer in [&billing, &emails] {
        let outcome = consumer
            .handle("evt-10", || async { Ok::<_, Error>(()) })
            .await
            .unwrap();
        assert!(outcome.is_duplicate());
    }
}

#[tokio::test]
async fn an_id_reused_with_another_payload_is_refused() {
    let store = Arc::new(MemoryStore::new());
    let consumer = consumer(&store, "test.payload");
    let effects = AtomicUsize::new(0);
    let post = |cents: u64| {
        let (consumer, effects) = (&consumer, &effects);
        async move {
            consumer
                .handle_payload("evt-11", &cents, || async {
                    effects.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Error>(cents)
                })
                .await
        }
    };
    assert_eq!(post(100).await.unwrap(), Outcome::Processed(100));
    assert_eq!(post(100).await.unwrap(), Outcome::Duplicate(100));
    assert!(matches!(post(250).await, Err(Error::KeyReused { .. })));
    assert_eq!(effects.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unreachable_store_runs_nothing_and_asks_for_redelivery() {
    let consumer = Consumer::new(Idempotency::new(DOWN), "test.down");
    let effects = AtomicUsize::new(0);
    let result = consumer
        .handle("evt-12", || async {
            effects.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>(())
        })
        .await;
    match result {
        Err(
            error @ Error::Store {
                op: StoreOp::Claim, ..
            },
        ) => assert!(error.is_retryable()),
        other => panic!("expected a store error, got {other:?}"),
    }
    assert_eq!(effects.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn keys_derived_from_the_message_work_like_ids() {
    #[derive(serde::Serialize)]
    struct Shipped<'a> {
        order: &'a str,
        warehouse: u32,
    }
    let store = Arc::new(MemoryStore::new());
    let consumer = consumer(&store, "test.derived");
    let effects = AtomicUsize::new(0);
    for warehouse in [1, 2, 1, 1, 2] {
        let id = Shipped {
            order: "order-5",
            warehouse,
        };
        consumer
            .handle(&id, || async {
                effects.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
    }
    assert_eq!(effects.load(Ordering::SeqCst), 2);
}
