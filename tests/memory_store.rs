//! The memory store: the shared conformance suite, and what happens at capacity.

use std::time::Duration;

use idempotency::{Bytes, Claim, Digest, Fingerprint, Key, MemoryStore, Store, StoreError};
use idempotency::{ClaimRequest, Completion};

idempotency::conformance_tests!(|| async { Some(MemoryStore::new()) });

fn key(n: usize) -> Key {
    Key::new("memory::capacity", 1, Digest::of(&n).expect("digest"))
}

const HOUR: Duration = Duration::from_secs(3600);

/// Claims `key` (it must be free) and completes it with `output`.
async fn complete_one(store: &MemoryStore, key: &Key, output: impl Into<Bytes>, ttl: Duration) {
    let fingerprint = Fingerprint::from_digest(Digest::of_bytes(b"f"));
    let claim = store
        .claim(key, ClaimRequest::new(fingerprint, HOUR))
        .await
        .expect("claim");
    let Claim::Acquired { token, .. } = claim else {
        panic!("{key} must be free, got {claim:?}");
    };
    store
        .complete(key, Completion::new(token, fingerprint, output.into(), ttl))
        .await
        .expect("complete");
}

#[tokio::test]
async fn in_progress_records_are_never_evicted() {
    // Room for only a handful of completed records.
    let store = MemoryStore::builder().max_capacity_bytes(4 * 1024).build();
    let fingerprint = Fingerprint::from_digest(Digest::of_bytes(b"f"));
    let mut owners = Vec::new();
    for n in 0..500 {
        match store
            .claim(&key(n), ClaimRequest::new(fingerprint, HOUR))
            .await
            .unwrap()
        {
            Claim::Acquired { token, .. } => owners.push(token),
            other => panic!("expected Acquired, got {other:?}"),
        }
    }
    // Flood the completed side far past capacity.
    for n in 1000..1200 {
        complete_one(&store, &key(n), vec![7u8; 512], HOUR).await;
    }
    assert!(
        store.evicted_before_expiry() > 0,
        "the flood must evict completed records"
    );
    assert!(
        store.weighted_size() <= 4 * 1024,
        "capacity holds: {}",
        store.weighted_size()
    );
    for n in 0..500 {
        assert!(
            matches!(
                store
                    .claim(&key(n), ClaimRequest::new(fingerprint, HOUR))
                    .await
                    .unwrap(),
                Claim::InProgress { .. }
            ),
            "in-progress record {n} must survive capacity pressure"
        );
    }
    for (n, token) in owners.iter().enumerate() {
        store
            .complete(
                &key(n),
                Completion::new(*token, fingerprint, Bytes::from_static(b"ok"), HOUR),
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_least_recently_used_completed_record_goes_first() {
    let store = MemoryStore::builder()
        .max_capacity_bytes(3 * (512 + 256))
        .build();
    let fingerprint = Fingerprint::from_digest(Digest::of_bytes(b"f"));
    for n in 0..2 {
        complete_one(&store, &key(n), vec![1u8; 512], HOUR).await;
    }
    // Moka applies writes and reads to its LRU order in batches; settle the writes first.
    store.evicted_before_expiry();
    // Touch record 0 so that record 1 is the least recently used.
    assert!(matches!(
        store
            .claim(&key(0), ClaimRequest::new(fingerprint, HOUR))
            .await
            .unwrap(),
        Claim::Completed { .. }
    ));
    store.evicted_before_expiry();
    for n in 2..4 {
        complete_one(&store, &key(n), vec![1u8; 512], HOUR).await;
        store.evicted_before_expiry();
    }
    assert!(
        store.get(&key(0)).await.unwrap().is_some(),
        "recently used record 0 stays"
    );
    assert!(
        store.get(&key(1)).await.unwrap().is_none(),
        "LRU record 1 was evicted"
    );
    assert!(
        store.get(&key(3)).await.unwrap().is_some(),
        "the newest record was admitted"
    );
}

#[tokio::test]
async fn an_output_larger_than_the_whole_capacity_is_refused() {
    let store = MemoryStore::builder().max_capacity_bytes(1024).build();
    let fingerprint = Fingerprint::from_digest(Digest::of_bytes(b"f"));
    let Claim::Acquired { token, .. } = store
        .claim(&key(1), ClaimRequest::new(fingerprint, HOUR))
        .await
        .unwrap()
    else {
        panic!("expected Acquired");
    };
    let refused = store
        .complete(
            &key(1),
            Completion::new(token, fingerprint, Bytes::from(vec![0u8; 4096]), HOUR),
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::TooLarge { size: 4096, .. })),
        "{refused:?}"
    );
}

/// Expired records are never replayed, and a sweep gives their memory back; a key completed
/// again after it expired keeps its new record through the sweep.
#[tokio::test]
async fn expired_records_are_swept_and_renewed_keys_kept() {
    let store = MemoryStore::new();
    let fingerprint = Fingerprint::from_digest(Digest::of_bytes(b"f"));
    complete_one(&store, &key(1), "short", Duration::from_millis(300)).await;
    complete_one(&store, &key(2), "again", Duration::from_millis(300)).await;
    assert!(store.weighted_size() > 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Key 2 expired and is completed anew, before any sweep.
    complete_one(&store, &key(2), "renewed", HOUR).await;
    let renewed = store.weighted_size();
    assert_eq!(
        renewed,
        u64::from(b"renewed".len() as u32) + "memory::capacity".len() as u64 + 192,
        "only the renewed record is left after the sweep"
    );
    match store
        .claim(&key(2), ClaimRequest::new(fingerprint, HOUR))
        .await
        .unwrap()
    {
        Claim::Completed { output, .. } => assert_eq!(&output[..], b"renewed"),
        other => panic!("the renewed record must replay, got {other:?}"),
    }
    assert!(matches!(
        store
            .claim(&key(1), ClaimRequest::new(fingerprint, HOUR))
            .await
            .unwrap(),
        Claim::Acquired { .. }
    ));
}

/// The longest durations a caller can give do not overflow a clock.
#[tokio::test]
async fn the_longest_ttl_and_lease_are_safe() {
    let store = MemoryStore::new();
    let fingerprint = Fingerprint::from_digest(Digest::of_bytes(b"f"));
    let Claim::Acquired { token, .. } = store
        .claim(&key(7), ClaimRequest::new(fingerprint, Duration::MAX))
        .await
        .unwrap()
    else {
        panic!("free");
    };
    store.renew(&key(7), &token, Duration::MAX).await.unwrap();
    store
        .complete(
            &key(7),
            Completion::new(token, fingerprint, Bytes::from_static(b"x"), Duration::MAX),
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .claim(&key(7), ClaimRequest::new(fingerprint, HOUR))
            .await
            .unwrap(),
        Claim::Completed { .. }
    ));
    assert!(store.get(&key(7)).await.unwrap().is_some());
}

/// Removing a key whose record expired reports that there was nothing to remove.
#[tokio::test]
async fn removing_an_expired_record_reports_none() {
    let store = MemoryStore::new();
    complete_one(&store, &key(9), "brief", Duration::from_millis(30)).await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(!store.remove(&key(9)).await.unwrap());
    complete_one(&store, &key(10), "live", HOUR).await;
    assert!(store.remove(&key(10)).await.unwrap());
}
