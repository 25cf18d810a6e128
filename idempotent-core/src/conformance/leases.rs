use super::{
    LONG, PAST_SHORT, SHORT, acquire, assert_completes, assert_lease_lost, assert_replays,
    claim_acquires, claim_in_progress, complete, fingerprint, fresh, owner, read,
};
use crate::record::{Record, Token};
use crate::store::Store;

/// `release` by the owner frees the key: the next claim is a fresh acquisition.
pub async fn release_frees_the_key(store: &dyn Store) {
    let key = fresh("release_frees_the_key");
    let token = acquire(store, &key, LONG).await;
    let released = store.release(&key, &token).await;
    assert!(
        released.is_ok(),
        "the owner's release must succeed: {released:?}"
    );
    assert!(
        read(store, &key).await.is_none(),
        "a released key has no record"
    );
    let what = "a claim of a released key";
    let (_, took_over) = claim_acquires(store, &key, &fingerprint("b"), LONG, what).await;
    assert!(!took_over);
}

/// `release` by a non-owner fails and changes nothing; a completed record cannot be released.
pub async fn release_is_fenced(store: &dyn Store) {
    let key = fresh("release_is_fenced");
    let token = acquire(store, &key, LONG).await;
    assert_lease_lost(
        store.release(&key, &Token::random()).await,
        "release with a foreign token",
    );
    assert!(matches!(
        read(store, &key).await,
        Some(Record::InProgress { .. })
    ));
    assert_completes(store, &key, &token, "done", LONG, "the owner's complete").await;
    assert_lease_lost(
        store.release(&key, &token).await,
        "release of a completed record",
    );
    assert!(matches!(
        read(store, &key).await,
        Some(Record::Completed { .. })
    ));
}

/// Once the lease passes, a claim takes the key over; the old owner is fenced out and the new
/// owner's output is the one stored.
pub async fn lease_passes_then_claim_takes_over(store: &dyn Store) {
    let key = fresh("lease_passes_then_claim_takes_over");
    let old = acquire(store, &key, SHORT).await;
    tokio::time::sleep(PAST_SHORT).await;
    let what = "a claim after the lease passed";
    let (new, _) = claim_acquires(store, &key, &owner(), LONG, what).await;
    assert_ne!(old, new);
    assert_lease_lost(
        complete(store, &key, &old, "late", LONG).await,
        "complete by an owner that was taken over",
    );
    assert_lease_lost(
        store.release(&key, &old).await,
        "release by an owner that was taken over",
    );
    assert_lease_lost(
        store.renew(&key, &old, LONG).await,
        "renew by an owner that was taken over",
    );
    assert_completes(
        store,
        &key,
        &new,
        "new owner",
        LONG,
        "the new owner's complete",
    )
    .await;
    assert_replays(
        store,
        &key,
        &owner(),
        b"new owner",
        "the new owner's output",
    )
    .await;
}

/// A lease that passed without a takeover still lets its owner complete.
pub async fn late_complete_without_takeover_succeeds(store: &dyn Store) {
    let key = fresh("late_complete_without_takeover_succeeds");
    let token = acquire(store, &key, SHORT).await;
    tokio::time::sleep(PAST_SHORT).await;
    let what = "complete after the lease passed, with no takeover";
    assert_completes(store, &key, &token, "slow but alone", LONG, what).await;
    assert_replays(store, &key, &owner(), b"slow but alone", "a claim after it").await;
}

/// `renew` pushes the lease out; a non-owner cannot renew.
pub async fn renew_extends_the_lease(store: &dyn Store) {
    let key = fresh("renew_extends_the_lease");
    let token = acquire(store, &key, SHORT).await;
    let renewed = store.renew(&key, &token, LONG).await;
    assert!(
        renewed.is_ok(),
        "the owner's renew must succeed: {renewed:?}"
    );
    assert_lease_lost(
        store.renew(&key, &Token::random(), LONG).await,
        "renew with a foreign token",
    );
    tokio::time::sleep(PAST_SHORT).await;
    let what = "a claim after the original lease passed (a renewed lease must still hold)";
    claim_in_progress(store, &key, &owner(), what).await;
}
