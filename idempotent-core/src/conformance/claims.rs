use std::time::{Duration, SystemTime};

use futures_util::future::join_all;

use super::{
    LONG, acquire, assert_completes, assert_lease_lost, claim_acquires, claim_in_progress,
    fingerprint, fresh, owner, read,
};
use crate::key::{Digest, Fingerprint, Key};
use crate::record::{Claim, ClaimNow, Record, Token};
use crate::store::{ClaimRequest, Store};

/// A free key is acquired with a fresh token, and reads back as in progress.
pub async fn claim_acquires_a_free_key(store: &dyn Store) {
    let key = fresh("claim_acquires_a_free_key");
    let before = SystemTime::now();
    let (token, took_over) =
        claim_acquires(store, &key, &owner(), LONG, "claim of a free key").await;
    assert!(!took_over, "a free key is not a takeover");
    match read(store, &key).await {
        Some(Record::InProgress {
            token: current,
            fingerprint: stored,
            lease_until,
        }) => {
            assert_eq!(current, token);
            assert_eq!(stored, owner());
            assert!(
                lease_until > before
                    && lease_until <= SystemTime::now() + LONG + Duration::from_secs(5),
                "lease_until must be about now + lease"
            );
        }
        other => panic!("a claimed key must read as InProgress, got {other:?}"),
    }
    let other = acquire(store, &fresh("claim_acquires_a_free_key"), LONG).await;
    assert_ne!(token, other, "tokens must be fresh");
}

/// A second claim sees the owner's fingerprint and remaining lease, and changes nothing.
pub async fn claim_of_a_key_in_progress_reports_it(store: &dyn Store) {
    let key = fresh("claim_of_a_key_in_progress_reports_it");
    let token = acquire(store, &key, LONG).await;
    for caller in ["a", "b"] {
        let (current, lease_remaining) = claim_in_progress(
            store,
            &key,
            &fingerprint(caller),
            "claim of a key in progress",
        )
        .await;
        assert_eq!(current, owner(), "the owner's fingerprint is reported");
        assert!(
            lease_remaining <= LONG,
            "lease_remaining must not exceed the lease"
        );
        assert!(
            lease_remaining >= LONG - Duration::from_secs(10),
            "lease_remaining must be about the lease, got {lease_remaining:?}"
        );
    }
    let record = read(store, &key).await;
    assert_eq!(
        record.as_ref().map(Record::token),
        Some(&token),
        "the owner is unchanged"
    );
}

/// Keys that differ only in namespace, version or digest are separate records.
pub async fn keys_are_independent(store: &dyn Store) {
    let base = fresh("keys_are_independent");
    let digest = *base.digest();
    let keys = [
        base.clone(),
        Key::new(format!("{}-other", base.namespace()), 1, digest),
        Key::new(base.namespace().to_owned(), 2, digest),
        Key::new(
            base.namespace().to_owned(),
            1,
            Digest::of_bytes(b"other material"),
        ),
    ];
    for key in &keys {
        acquire(store, key, LONG).await;
    }
}

/// [`Store::claim_now`], where the store answers it, answers as `claim` does: it acquires a
/// free key (once), reports a key in progress, and replays a completed one. A store that
/// answers `None` (it needs I/O) passes.
pub async fn claim_now_agrees_with_claim(store: &dyn Store) {
    let key = fresh("claim_now_agrees_with_claim");
    let now = |fingerprint: &Fingerprint| {
        store
            .claim_now(&key, ClaimRequest::new(*fingerprint, LONG))
            .map(|answer| answer.map(ClaimNow::into_claim))
    };
    let Some(first) = now(&owner()) else {
        return;
    };
    let token = match first {
        Ok(Claim::Acquired { token, took_over }) => {
            assert!(!took_over, "a free key is not a takeover");
            token
        }
        other => panic!("claim_now of a free key must be Acquired, got {other:?}"),
    };
    match now(&fingerprint("b")) {
        Some(Ok(Claim::InProgress { fingerprint: f, .. })) => assert_eq!(f, owner()),
        other => panic!("claim_now of a key in progress must be InProgress, got {other:?}"),
    }
    let (current, _) =
        claim_in_progress(store, &key, &fingerprint("b"), "claim after claim_now").await;
    assert_eq!(current, owner());
    let output = "answered at once";
    assert_completes(store, &key, &token, output, LONG, "the owner's complete").await;
    match now(&owner()) {
        Some(Ok(Claim::Completed {
            fingerprint: f,
            output: back,
            ..
        })) => {
            assert_eq!(f, owner());
            assert_eq!(back, output.as_bytes());
        }
        other => panic!("claim_now of a completed key must replay it, got {other:?}"),
    }
}

/// Of 64 concurrent claims of one free key, exactly one acquires it.
pub async fn concurrent_claims_acquire_once(store: &dyn Store) {
    for round in 0..5 {
        let key = fresh("concurrent_claims_acquire_once");
        let owner = owner();
        let claims =
            join_all((0..64).map(|_| store.claim(&key, ClaimRequest::new(owner, LONG)))).await;
        let acquired = claims
            .iter()
            .filter(|claim| matches!(claim, Ok(Claim::Acquired { .. })))
            .count();
        let in_progress = claims
            .iter()
            .filter(|claim| matches!(claim, Ok(Claim::InProgress { .. })))
            .count();
        assert_eq!(
            acquired, 1,
            "round {round}: exactly one claim may acquire, got {acquired}"
        );
        assert_eq!(
            in_progress, 63,
            "round {round}: the others must see it in progress"
        );
    }
}

/// A key that was never claimed reads as `None`, and releasing or renewing it fails.
pub async fn missing_keys_are_empty(store: &dyn Store) {
    let key = fresh("missing_keys_are_empty");
    assert!(read(store, &key).await.is_none());
    assert_lease_lost(
        store.release(&key, &Token::random()).await,
        "release of a missing key",
    );
    assert_lease_lost(
        store.renew(&key, &Token::random(), LONG).await,
        "renew of a missing key",
    );
}
