//! Optimistic versioning in memory: `Versioned<T>` compare-and-set and `retry_on_conflict`
//! under contention. The SQL helpers are tested against real databases in `versioning_sql.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idempotency::retry::RetryPolicy;
use idempotency::{VersionConflict, Versioned, retry_on_conflict};
use tokio::sync::Barrier;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_increments_lose_no_update() {
    let counter = Arc::new(Mutex::new(Versioned::new(0u64, 1)));
    // Every task's first read happens before anyone writes: 49 of the 50 first writes are
    // stale, and a missing version check would lose them.
    let barrier = Arc::new(Barrier::new(50));
    let conflicts = Arc::new(AtomicUsize::new(0));
    let policy = RetryPolicy::new()
        .max_attempts(500)
        .initial_delay(Duration::from_micros(200))
        .max_delay(Duration::from_millis(5))
        .max_elapsed(Duration::from_secs(60));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (counter, barrier, conflicts, policy) = (
                Arc::clone(&counter),
                Arc::clone(&barrier),
                Arc::clone(&conflicts),
                policy.clone(),
            );
            tokio::spawn(async move {
                let mut first = true;
                retry_on_conflict(&policy, || {
                    let read = *counter.lock().unwrap();
                    let wait_for_all = std::mem::take(&mut first);
                    let (counter, barrier, conflicts) = (&counter, &barrier, &conflicts);
                    async move {
                        if wait_for_all {
                            barrier.wait().await;
                        }
                        let written = counter
                            .lock()
                            .unwrap()
                            .replace(read.version, read.value + 1);
                        if written.is_err() {
                            conflicts.fetch_add(1, Ordering::SeqCst);
                        }
                        written
                    }
                })
                .await
            })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap().unwrap());
    }
    let end = *counter.lock().unwrap();
    assert_eq!(end.value, 50);
    assert_eq!(end.version, 51);
    versions.sort_unstable();
    assert_eq!(versions, (2..=51).collect::<Vec<i64>>());
    assert!(conflicts.load(Ordering::SeqCst) >= 49);
}

#[tokio::test]
async fn a_stale_version_is_a_conflict_and_changes_nothing() {
    let mut doc = Versioned::new("v1".to_owned(), 7);
    assert_eq!(doc.replace(7, "v2".to_owned()), Ok(8));
    let stale = doc.replace(7, "lost".to_owned());
    assert_eq!(
        stale,
        Err(VersionConflict {
            expected: 7,
            current: Some(8)
        })
    );
    assert_eq!(doc, Versioned::new("v2".to_owned(), 8));
    assert_eq!(
        stale.unwrap_err().to_string(),
        "version conflict: the update expected version 7, but the current version is 8"
    );
}

#[tokio::test]
async fn retry_on_conflict_gives_up_within_the_policy() {
    let policy = RetryPolicy::new()
        .max_attempts(4)
        .clock(idempotency::retry::ManualClock::new());
    let mut attempts = 0;
    let result: Result<(), VersionConflict> = retry_on_conflict(&policy, || {
        attempts += 1;
        async {
            Err(VersionConflict {
                expected: 1,
                current: Some(2),
            })
        }
    })
    .await;
    assert!(result.is_err());
    assert_eq!(attempts, 4);
}

#[tokio::test]
async fn other_errors_are_not_retried_on_conflict() {
    #[derive(Debug)]
    enum SaveError {
        Conflict(VersionConflict),
        Invalid,
    }
    impl idempotency::versioning::AsVersionConflict for SaveError {
        fn version_conflict(&self) -> Option<&VersionConflict> {
            match self {
                SaveError::Conflict(conflict) => Some(conflict),
                SaveError::Invalid => None,
            }
        }
    }
    let policy = RetryPolicy::new().clock(idempotency::retry::ManualClock::new());
    let mut attempts = 0;
    let result: Result<(), SaveError> = retry_on_conflict(&policy, || {
        attempts += 1;
        let outcome = if attempts == 1 {
            Err(SaveError::Conflict(VersionConflict {
                expected: 1,
                current: None,
            }))
        } else {
            Err(SaveError::Invalid)
        };
        async move { outcome }
    })
    .await;
    assert!(matches!(result, Err(SaveError::Invalid)));
    assert_eq!(attempts, 2);
}
