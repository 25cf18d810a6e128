//! The metrics (feature `metrics`), read with a recording exporter (`metrics-util`'s
//! `DebuggingRecorder`, installed for this thread only): each counter moves on the path that
//! should move it, by how much, and every metric is labelled by namespace, never by key.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{AppError, DOWN};
use idempotency::{
    ClaimRequest, Error, Fingerprint, Idempotency, InProgressPolicy, Key, MemoryStore, Store,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::sync::Notify;

const NAMESPACE: &str = "shop::charge";

fn key_of(name: &str) -> (Key, Fingerprint) {
    let key = Key::derive(NAMESPACE, 1, &name).expect("a key");
    let fingerprint = Fingerprint::of(&name).expect("a fingerprint");
    (key, fingerprint)
}

/// Runs `test` on a current-thread runtime with a recorder for this thread, and returns what
/// it recorded.
fn recorded<F, Fut>(test: F) -> Snapshot
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    metrics::with_local_recorder(&recorder, || runtime.block_on(test()));
    // Taken once: a snapshot takes histograms' values.
    Snapshot(snapshotter.snapshot().into_vec())
}

type Entry = (
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
);

struct Snapshot(Vec<Entry>);

impl Snapshot {
    /// Counter `name` with these labels (beside `namespace`), 0 when never moved.
    fn counter(&self, name: &str, op: Option<&str>) -> u64 {
        self.find(name, op)
            .map(|value| match value {
                DebugValue::Counter(count) => *count,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .unwrap_or(0)
    }

    /// How many values histogram `name` holds.
    fn samples(&self, name: &str, op: Option<&str>) -> usize {
        self.find(name, op)
            .map(|value| match value {
                DebugValue::Histogram(values) => values.len(),
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .unwrap_or(0)
    }

    fn find(&self, name: &str, op: Option<&str>) -> Option<&DebugValue> {
        let mut found = None;
        for (key, _, _, value) in &self.0 {
            let key = key.key();
            let labels: Vec<(String, String)> = key
                .labels()
                .map(|label| (label.key().to_owned(), label.value().to_owned()))
                .collect();
            // Labelled by namespace (and the store operation), never by key.
            assert!(
                labels
                    .iter()
                    .all(|(name, _)| name == "namespace" || name == "op"),
                "{labels:?}"
            );
            assert!(labels.contains(&("namespace".to_owned(), NAMESPACE.to_owned())));
            let this_op = labels
                .iter()
                .find(|(name, _)| name == "op")
                .map(|(_, value)| value.as_str());
            if key.name() == name && this_op == op {
                found = Some(value);
            }
        }
        found
    }
}

#[test]
fn a_first_call_a_replay_and_a_key_reuse() {
    let metrics = recorded(|| async {
        let idempotency = Idempotency::new(MemoryStore::new());
        let (key, fingerprint) = key_of("order-1");
        let run = || async { Ok::<_, Error>(7u32) };
        for _ in 0..3 {
            let out = idempotency.run(key.clone(), fingerprint, run).await;
            assert_eq!(out.expect("7"), 7);
        }
        let other = Fingerprint::of(&"another order").expect("a fingerprint");
        let reused = idempotency.run(key.clone(), other, run).await;
        assert!(matches!(reused, Err(Error::KeyReused { .. })));
    });
    assert_eq!(metrics.counter("idempotency_executions_total", None), 1);
    assert_eq!(metrics.counter("idempotency_replays_total", None), 2);
    assert_eq!(metrics.counter("idempotency_key_reuses_total", None), 1);
    assert_eq!(metrics.samples("idempotency_body_seconds", None), 1);
    assert_eq!(
        metrics.samples("idempotency_store_seconds", Some("complete")),
        1
    );
    for quiet in [
        "idempotency_in_progress_total",
        "idempotency_waits_total",
        "idempotency_takeovers_total",
        "idempotency_leases_lost_total",
        "idempotency_releases_total",
    ] {
        assert_eq!(metrics.counter(quiet, None), 0, "{quiet}");
    }
}

#[test]
fn refusals_waits_and_releases() {
    let metrics = recorded(|| async {
        let idempotency = Idempotency::new(MemoryStore::new());
        let (key, fingerprint) = key_of("order-2");
        let started = Arc::new(Notify::new());
        let finish = Arc::new(Notify::new());
        let owner = {
            let idempotency = idempotency.clone();
            let (key, started, finish) = (key.clone(), Arc::clone(&started), Arc::clone(&finish));
            tokio::spawn(async move {
                idempotency
                    .run(key, fingerprint, || async move {
                        started.notify_one();
                        finish.notified().await;
                        Ok::<_, Error>(1u8)
                    })
                    .await
            })
        };
        started.notified().await;
        let rejected = idempotency
            .call(key.clone(), fingerprint)
            .on_in_progress(InProgressPolicy::Reject)
            .run(|| async { Ok::<_, Error>(2u8) })
            .await;
        assert!(matches!(rejected, Err(Error::InProgress { .. })));
        let waiter = {
            let idempotency = idempotency.clone();
            let key = key.clone();
            tokio::spawn(async move {
                idempotency
                    .call(key, fingerprint)
                    .on_in_progress(InProgressPolicy::Wait)
                    .run(|| async { Ok::<_, Error>(3u8) })
                    .await
            })
        };
        // Time for the waiter to find the key held and start waiting (generous: a busy CI machine).
        tokio::time::sleep(Duration::from_millis(250)).await;
        finish.notify_one();
        assert_eq!(owner.await.expect("owner").expect("1"), 1);
        assert_eq!(waiter.await.expect("waiter").expect("the replay"), 1);

        // An error that is not stored releases the claim.
        let (failing, fingerprint) = key_of("order-3");
        let failed = idempotency
            .run(failing, fingerprint, || async {
                Err::<u8, _>(AppError::Gateway("declined".to_owned()))
            })
            .await;
        assert!(failed.is_err());
    });
    assert_eq!(metrics.counter("idempotency_in_progress_total", None), 1);
    assert_eq!(metrics.counter("idempotency_waits_total", None), 1);
    assert_eq!(metrics.counter("idempotency_replays_total", None), 1);
    assert_eq!(metrics.counter("idempotency_executions_total", None), 2);
    assert_eq!(metrics.counter("idempotency_releases_total", None), 1);
    assert_eq!(
        metrics.samples("idempotency_store_seconds", Some("release")),
        1
    );
}

#[test]
fn takeovers_renewals_and_lost_leases() {
    let metrics = recorded(|| async {
        let store = MemoryStore::new();
        let idempotency = Idempotency::new(store.clone());
        // A crashed owner: its claim's lease passes, and the next call takes the key over.
        let (crashed, fingerprint) = key_of("order-4");
        store
            .claim(
                &crashed,
                ClaimRequest::new(fingerprint, Duration::from_millis(30)),
            )
            .await
            .expect("a claim");
        tokio::time::sleep(Duration::from_millis(60)).await;
        let out = idempotency
            .run(crashed, fingerprint, || async { Ok::<_, Error>(4u8) })
            .await;
        assert_eq!(out.expect("4"), 4);

        // A body that outlives its lease three times over renews it; one that runs past
        // `max_run` stops renewing and is taken over, and its `complete` finds the lease lost.
        let (slow, fingerprint) = key_of("order-5");
        let renewed = idempotency
            .call(slow, fingerprint)
            .lease(Duration::from_millis(60))
            .run(|| async {
                tokio::time::sleep(Duration::from_millis(150)).await;
                Ok::<_, Error>(5u8)
            })
            .await;
        assert_eq!(renewed.expect("5"), 5);

        let (hung, fingerprint) = key_of("order-6");
        let runs = Arc::new(AtomicUsize::new(0));
        let hung_owner = {
            let (idempotency, hung, runs) = (idempotency.clone(), hung.clone(), Arc::clone(&runs));
            tokio::spawn(async move {
                idempotency
                    .call(hung, fingerprint)
                    .lease(Duration::from_millis(40))
                    .max_run(Duration::from_millis(40))
                    .run(|| async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, Error>(6u8)
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        let taken = idempotency
            .run(hung, fingerprint, || async { Ok::<_, Error>(60u8) })
            .await;
        assert_eq!(taken.expect("60"), 60);
        let lost = hung_owner.await.expect("the hung owner");
        assert!(lost.is_err(), "{lost:?}");
    });
    assert_eq!(metrics.counter("idempotency_takeovers_total", None), 2);
    assert!(metrics.counter("idempotency_renewals_total", None) >= 2);
    assert_eq!(metrics.counter("idempotency_leases_lost_total", None), 1);
    assert!(metrics.samples("idempotency_store_seconds", Some("renew")) >= 2);
}

#[test]
fn store_errors_are_counted_by_operation() {
    let metrics = recorded(|| async {
        let idempotency = Idempotency::new(DOWN);
        let (key, fingerprint) = key_of("order-7");
        let failed = idempotency
            .run(key, fingerprint, || async { Ok::<_, Error>(7u8) })
            .await;
        assert!(matches!(failed, Err(Error::Store { .. })));
    });
    assert_eq!(
        metrics.counter("idempotency_store_errors_total", Some("claim")),
        1
    );
    assert_eq!(metrics.counter("idempotency_executions_total", None), 0);
}
