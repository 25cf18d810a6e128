//! The store conformance suite: every clause of the [`Store`] contract as a test any store
//! can run, ours and third-party ones alike.
//!
//! Each case is an `async fn(&dyn Store)` that panics (like `assert!`) on a violation, uses
//! its own random namespace, and bounds every wait, so cases can share one store and one
//! server. Run them all from one test with [`run_all`], or generate one `#[test]` a case with
//! [`conformance_tests!`](crate::conformance_tests):
//!
//! ```
//! use idempotent_core::MemoryStore;
//!
//! idempotent_core::conformance_tests!(|| async { Some(MemoryStore::new()) });
//! ```
//!
//! The factory returns `None` to skip (a server that is not reachable on a developer's
//! machine; see [`testing`](crate::testing)).

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::join_all;

use crate::error::StoreError;
use crate::key::{Digest, Fingerprint, Key};
use crate::record::{Claim, ClaimNow, Keep, Record, Token};
use crate::store::Store;

/// Lease used where a case does not wait for it to pass.
const LONG: Duration = Duration::from_secs(60);
/// Lease or TTL a case waits out. Long enough for a slow CI server's round trip.
const SHORT: Duration = Duration::from_millis(400);
const PAST_SHORT: Duration = Duration::from_millis(700);

fn fresh(case: &str) -> Key {
    let nonce = Token::random();
    Key::new(
        format!("conformance:{case}:{nonce}"),
        1,
        Digest::of_bytes(b"key material"),
    )
}

fn fingerprint(tag: &str) -> Fingerprint {
    Fingerprint::from_digest(Digest::of_bytes(tag.as_bytes()))
}

async fn acquire(store: &dyn Store, key: &Key, lease: Duration) -> Token {
    match store.claim(key, &fingerprint("a"), lease).await {
        Ok(Claim::Acquired { token, .. }) => token,
        other => panic!("claim of a free key {key} must be Acquired, got {other:?}"),
    }
}

/// A claim of `key` by `claimant` answers `Completed` with `output`, stored by `a`.
async fn assert_replays(
    store: &dyn Store,
    key: &Key,
    claimant: &Fingerprint,
    output: &Bytes,
    what: &str,
) {
    match store.claim(key, claimant, LONG).await {
        Ok(Claim::Completed {
            fingerprint: stored,
            output: replayed,
        }) => {
            assert_eq!(stored, fingerprint("a"), "{what}: the stored fingerprint");
            assert_eq!(&replayed, output, "{what}: the stored output");
        }
        other => panic!("{what} must be Completed, got {other:?}"),
    }
}

fn assert_lease_lost(result: Result<(), StoreError>, what: &str) {
    assert!(
        matches!(result, Err(StoreError::LeaseLost)),
        "{what} must fail with LeaseLost, got {result:?}"
    );
}

/// A free key is acquired with a fresh token, and reads back as in progress.
pub async fn claim_acquires_a_free_key(store: &dyn Store) {
    let key = fresh("claim_acquires_a_free_key");
    let before = SystemTime::now();
    let claim = store.claim(&key, &fingerprint("a"), LONG).await;
    let Ok(Claim::Acquired { token, took_over }) = claim else {
        panic!("claim of a free key must be Acquired, got {claim:?}");
    };
    assert!(!took_over, "a free key is not a takeover");
    match store.get(&key).await {
        Ok(Some(Record::InProgress {
            token: owner,
            fingerprint: stored,
            lease_until,
        })) => {
            assert_eq!(owner, token);
            assert_eq!(stored, fingerprint("a"));
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
        match store.claim(&key, &fingerprint(caller), LONG).await {
            Ok(Claim::InProgress {
                fingerprint: owner,
                lease_remaining,
            }) => {
                assert_eq!(
                    owner,
                    fingerprint("a"),
                    "the owner's fingerprint is reported"
                );
                assert!(
                    lease_remaining <= LONG,
                    "lease_remaining must not exceed the lease"
                );
                assert!(
                    lease_remaining >= LONG - Duration::from_secs(10),
                    "lease_remaining must be about the lease, got {lease_remaining:?}"
                );
            }
            other => panic!("claim of a key in progress must be InProgress, got {other:?}"),
        }
    }
    let record = store.get(&key).await.ok().flatten();
    assert_eq!(
        record.as_ref().map(Record::token),
        Some(&token),
        "the owner is unchanged"
    );
}

/// After `complete`, a claim returns the stored fingerprint and output, byte for byte.
pub async fn complete_then_claim_replays(store: &dyn Store) {
    let key = fresh("complete_then_claim_replays");
    let token = acquire(store, &key, LONG).await;
    let output = Bytes::from_static(b"{\"Ok\":\"receipt-1\"}");
    store
        .complete(&key, &token, &fingerprint("a"), output.clone(), LONG)
        .await
        .unwrap_or_else(|error| panic!("the owner's complete must succeed: {error}"));
    for _ in 0..2 {
        assert_replays(
            store,
            &key,
            &fingerprint("b"),
            &output,
            "claim of a completed key",
        )
        .await;
    }
    match store.get(&key).await {
        Ok(Some(Record::Completed {
            token: done_by,
            output: stored,
            expires_at,
            ..
        })) => {
            assert_eq!(done_by, token);
            assert_eq!(stored, output);
            assert!(expires_at > SystemTime::now());
        }
        other => panic!("a completed key must read as Completed, got {other:?}"),
    }
}

/// `complete` with a token that does not own the record fails and changes nothing.
pub async fn complete_is_fenced(store: &dyn Store) {
    let key = fresh("complete_is_fenced");
    let token = acquire(store, &key, LONG).await;
    assert_lease_lost(
        store
            .complete(
                &key,
                &Token::random(),
                &fingerprint("a"),
                Bytes::from_static(b"x"),
                LONG,
            )
            .await,
        "complete with a foreign token",
    );
    assert!(
        matches!(store.get(&key).await, Ok(Some(Record::InProgress { token: t, .. })) if t == token)
    );
    assert_lease_lost(
        store
            .complete(
                &fresh("complete_is_fenced"),
                &token,
                &fingerprint("a"),
                Bytes::from_static(b"x"),
                LONG,
            )
            .await,
        "complete of a key never claimed",
    );
    store
        .complete(
            &key,
            &token,
            &fingerprint("a"),
            Bytes::from_static(b"mine"),
            LONG,
        )
        .await
        .unwrap_or_else(|error| panic!("the owner's complete must succeed: {error}"));
}

/// A retried `complete` by the token that completed the record is `Ok` and changes nothing.
pub async fn complete_twice_by_the_owner_is_a_no_op(store: &dyn Store) {
    let key = fresh("complete_twice_by_the_owner_is_a_no_op");
    let token = acquire(store, &key, LONG).await;
    let first = Bytes::from_static(b"first");
    let outcome = store
        .complete(&key, &token, &fingerprint("a"), first.clone(), LONG)
        .await;
    assert!(outcome.is_ok(), "first complete: {outcome:?}");
    let again = store
        .complete(
            &key,
            &token,
            &fingerprint("a"),
            Bytes::from_static(b"second"),
            LONG,
        )
        .await;
    assert!(
        again.is_ok(),
        "a retried complete by the same token must be Ok, got {again:?}"
    );
    match store.claim(&key, &fingerprint("a"), LONG).await {
        Ok(Claim::Completed { output, .. }) => assert_eq!(output, first, "the first output stays"),
        other => panic!("expected Completed, got {other:?}"),
    }
}

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
        matches!(store.get(&key).await, Ok(None)),
        "a released key has no record"
    );
    match store.claim(&key, &fingerprint("b"), LONG).await {
        Ok(Claim::Acquired { took_over, .. }) => assert!(!took_over),
        other => panic!("a released key must be acquirable, got {other:?}"),
    }
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
        store.get(&key).await,
        Ok(Some(Record::InProgress { .. }))
    ));
    let done = store
        .complete(
            &key,
            &token,
            &fingerprint("a"),
            Bytes::from_static(b"done"),
            LONG,
        )
        .await;
    assert!(done.is_ok(), "{done:?}");
    assert_lease_lost(
        store.release(&key, &token).await,
        "release of a completed record",
    );
    assert!(matches!(
        store.get(&key).await,
        Ok(Some(Record::Completed { .. }))
    ));
}

/// Once the lease passes, a claim takes the key over; the old owner is fenced out and the new
/// owner's output is the one stored.
pub async fn lease_passes_then_claim_takes_over(store: &dyn Store) {
    let key = fresh("lease_passes_then_claim_takes_over");
    let old = acquire(store, &key, SHORT).await;
    tokio::time::sleep(PAST_SHORT).await;
    let new = match store.claim(&key, &fingerprint("a"), LONG).await {
        Ok(Claim::Acquired { token, .. }) => token,
        other => panic!("a claim after the lease passed must be Acquired, got {other:?}"),
    };
    assert_ne!(old, new);
    assert_lease_lost(
        store
            .complete(
                &key,
                &old,
                &fingerprint("a"),
                Bytes::from_static(b"late"),
                LONG,
            )
            .await,
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
    let done = store
        .complete(
            &key,
            &new,
            &fingerprint("a"),
            Bytes::from_static(b"new owner"),
            LONG,
        )
        .await;
    assert!(done.is_ok(), "{done:?}");
    match store.claim(&key, &fingerprint("a"), LONG).await {
        Ok(Claim::Completed { output, .. }) => assert_eq!(&output[..], b"new owner"),
        other => panic!("expected the new owner's output, got {other:?}"),
    }
}

/// A lease that passed without a takeover still lets its owner complete.
pub async fn late_complete_without_takeover_succeeds(store: &dyn Store) {
    let key = fresh("late_complete_without_takeover_succeeds");
    let token = acquire(store, &key, SHORT).await;
    tokio::time::sleep(PAST_SHORT).await;
    let done = store
        .complete(
            &key,
            &token,
            &fingerprint("a"),
            Bytes::from_static(b"slow but alone"),
            LONG,
        )
        .await;
    assert!(
        done.is_ok(),
        "complete after the lease passed, with no takeover: {done:?}"
    );
    assert!(matches!(
        store.claim(&key, &fingerprint("a"), LONG).await,
        Ok(Claim::Completed { .. })
    ));
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
    assert!(
        matches!(
            store.claim(&key, &fingerprint("a"), LONG).await,
            Ok(Claim::InProgress { .. })
        ),
        "a renewed lease must still hold after the original lease passed"
    );
}

/// A completed record expires after its TTL; the key is then free.
pub async fn completed_records_expire(store: &dyn Store) {
    let key = fresh("completed_records_expire");
    let token = acquire(store, &key, LONG).await;
    let done = store
        .complete(
            &key,
            &token,
            &fingerprint("a"),
            Bytes::from_static(b"short-lived"),
            SHORT,
        )
        .await;
    assert!(done.is_ok(), "{done:?}");
    tokio::time::sleep(PAST_SHORT).await;
    assert!(
        matches!(store.get(&key).await, Ok(None)),
        "an expired record must read as None"
    );
    match store.claim(&key, &fingerprint("b"), LONG).await {
        Ok(Claim::Acquired { .. }) => {}
        other => panic!("an expired key must be acquirable, got {other:?}"),
    }
}

/// `remove` deletes a record in any state and says whether there was one.
pub async fn remove_deletes_any_record(store: &dyn Store) {
    let key = fresh("remove_deletes_any_record");
    let token = acquire(store, &key, LONG).await;
    assert!(
        matches!(store.remove(&key).await, Ok(true)),
        "remove of an in-progress record"
    );
    assert_lease_lost(
        store
            .complete(
                &key,
                &token,
                &fingerprint("a"),
                Bytes::from_static(b"x"),
                LONG,
            )
            .await,
        "complete of a removed record",
    );
    let token = acquire(store, &key, LONG).await;
    let done = store
        .complete(
            &key,
            &token,
            &fingerprint("a"),
            Bytes::from_static(b"x"),
            LONG,
        )
        .await;
    assert!(done.is_ok(), "{done:?}");
    assert!(
        matches!(store.remove(&key).await, Ok(true)),
        "remove of a completed record"
    );
    assert!(
        matches!(store.remove(&key).await, Ok(false)),
        "remove of nothing"
    );
    assert!(matches!(store.get(&key).await, Ok(None)));
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

/// Outputs come back byte-exact: empty, every byte value, and 256 KiB.
pub async fn outputs_round_trip_byte_exact(store: &dyn Store) {
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let large: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    for output in [Bytes::new(), Bytes::from(every_byte), Bytes::from(large)] {
        let key = fresh("outputs_round_trip_byte_exact");
        let token = acquire(store, &key, LONG).await;
        let done = store
            .complete(&key, &token, &fingerprint("a"), output.clone(), LONG)
            .await;
        assert!(done.is_ok(), "complete of {} bytes: {done:?}", output.len());
        match store.claim(&key, &fingerprint("a"), LONG).await {
            Ok(Claim::Completed { output: back, .. }) => {
                assert!(back == output, "{} bytes did not round-trip", output.len());
            }
            other => panic!("expected Completed, got {other:?}"),
        }
    }
}

/// [`Store::claim_now`], where the store answers it, answers as `claim` does: it acquires a
/// free key (once), reports a key in progress, and replays a completed one. A store that
/// answers `None` (it needs I/O) passes.
pub async fn claim_now_agrees_with_claim(store: &dyn Store) {
    let key = fresh("claim_now_agrees_with_claim");
    let now = |fingerprint: &Fingerprint| {
        store
            .claim_now(&key, fingerprint, LONG)
            .map(|answer| answer.map(ClaimNow::into_claim))
    };
    let Some(first) = now(&fingerprint("a")) else {
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
        Some(Ok(Claim::InProgress { fingerprint: f, .. })) => assert_eq!(f, fingerprint("a")),
        other => panic!("claim_now of a key in progress must be InProgress, got {other:?}"),
    }
    match store.claim(&key, &fingerprint("b"), LONG).await {
        Ok(Claim::InProgress { fingerprint: f, .. }) => assert_eq!(f, fingerprint("a")),
        other => panic!("claim after claim_now must see it in progress, got {other:?}"),
    }
    let output = Bytes::from_static(b"answered at once");
    let done = store
        .complete(&key, &token, &fingerprint("a"), output.clone(), LONG)
        .await;
    assert!(done.is_ok(), "the owner's complete must succeed: {done:?}");
    match now(&fingerprint("a")) {
        Some(Ok(Claim::Completed {
            fingerprint: f,
            output: back,
        })) => {
            assert_eq!(f, fingerprint("a"));
            assert_eq!(back, output);
        }
        other => panic!("claim_now of a completed key must replay it, got {other:?}"),
    }
}

/// [`Store::complete_keeping`] completes as `complete` does, fenced the same way; a store that
/// keeps the value lends it with the record from `claim_now`, the value `Keep::value` gave.
pub async fn complete_keeping_completes(store: &dyn Store) {
    let key = fresh("complete_keeping_completes");
    let keep = Keep::new(|output| Some(Box::new(output.len()) as Box<dyn Any + Send + Sync>));
    let output = Bytes::from_static(b"kept beside its bytes");
    let token = acquire(store, &key, LONG).await;
    let stale = store
        .complete_keeping(
            &key,
            &Token::random(),
            &fingerprint("a"),
            output.clone(),
            LONG,
            keep,
        )
        .await;
    assert_lease_lost(stale, "complete_keeping with another token");
    let done = store
        .complete_keeping(&key, &token, &fingerprint("a"), output.clone(), LONG, keep)
        .await;
    assert!(
        done.is_ok(),
        "the owner's complete_keeping must succeed: {done:?}"
    );
    assert_replays(
        store,
        &key,
        &fingerprint("a"),
        &output,
        "claim after complete_keeping",
    )
    .await;
    if let Some(Ok(ClaimNow::Held(held))) = store.claim_now(&key, &fingerprint("a"), LONG) {
        assert_eq!(held.fingerprint(), &fingerprint("a"));
        assert_eq!(held.output(), &output);
        if let Some(kept) = held.kept() {
            assert_eq!(
                kept.downcast_ref::<usize>(),
                Some(&output.len()),
                "a kept value must be the one `Keep::value` gave"
            );
        }
    }
}

/// Namespaces with spaces, newlines, braces, quotes, or 10 KB of text are stored safely and
/// kept apart.
pub async fn odd_namespaces_are_safe(store: &dyn Store) {
    let nonce = Token::random();
    let long = "n".repeat(10 * 1024);
    let names = [
        format!("with spaces {nonce}"),
        format!("new\nline\r\n{nonce}"),
        format!("{{hash-tag}}:{{x}}{nonce}"),
        format!("quote'\"; drop table x; --{nonce}"),
        format!("{long}{nonce}"),
        format!("ünïcödé ✓ {nonce}"),
    ];
    for name in &names {
        let key = Key::new(name.clone(), 1, Digest::of_bytes(b"material"));
        let token = acquire(store, &key, LONG).await;
        let done = store
            .complete(
                &key,
                &token,
                &fingerprint("a"),
                Bytes::from(name.clone().into_bytes()),
                LONG,
            )
            .await;
        assert!(done.is_ok(), "complete under an odd namespace: {done:?}");
    }
    for name in &names {
        let key = Key::new(name.clone(), 1, Digest::of_bytes(b"material"));
        match store.claim(&key, &fingerprint("a"), LONG).await {
            Ok(Claim::Completed { output, .. }) => assert_eq!(&output[..], name.as_bytes()),
            other => panic!("expected Completed under an odd namespace, got {other:?}"),
        }
    }
}

/// Of 64 concurrent claims of one free key, exactly one acquires it.
pub async fn concurrent_claims_acquire_once(store: &dyn Store) {
    for round in 0..5 {
        let key = fresh("concurrent_claims_acquire_once");
        let owner = fingerprint("a");
        let claims = join_all((0..64).map(|_| store.claim(&key, &owner, LONG))).await;
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
    assert!(matches!(store.get(&key).await, Ok(None)));
    assert_lease_lost(
        store.release(&key, &Token::random()).await,
        "release of a missing key",
    );
    assert_lease_lost(
        store.renew(&key, &Token::random(), LONG).await,
        "renew of a missing key",
    );
}

crate::__conformance_cases!(run_all);

/// Runs one case on a fresh multi-threaded runtime (used by [`conformance_tests!`](crate::conformance_tests)).
#[doc(hidden)]
pub fn __run<F, Fut, S>(
    make: &F,
    case: impl FnOnce(Arc<dyn Store>) -> Pin<Box<dyn Future<Output = ()>>>,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<S>>,
    S: Store,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|error| panic!("cannot start a tokio runtime: {error}"));
    runtime.block_on(async {
        if let Some(store) = make().await {
            case(Arc::new(store)).await;
        }
    });
}

/// Generates one `#[test]` a conformance case, each against a store from `$make` (an
/// `async` factory returning `Option<impl Store>`; `None` skips).
///
/// ```
/// mod memory_store_conformance {
///     idempotent_core::conformance_tests!(|| async { Some(idempotent_core::MemoryStore::new()) });
/// }
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::__conformance_cases!(tests $make);
    };
}

/// The list of cases, expanded either into `run_all` or into one test a case.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    (@expand (run_all) $($case:ident),*) => {
        /// Runs every case, one after another, against `store`.
        pub async fn run_all(store: &dyn Store) {
            $( $case(store).await; )*
        }
    };
    (@expand (tests $make:expr) $($case:ident),*) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::__run(&$make, |store| {
                    ::std::boxed::Box::pin(async move { $crate::conformance::$case(&*store).await })
                });
            }
        )*
    };
    ($($how:tt)+) => {
        $crate::__conformance_cases!(@expand ($($how)+)
            claim_acquires_a_free_key,
            claim_of_a_key_in_progress_reports_it,
            complete_then_claim_replays,
            complete_is_fenced,
            complete_twice_by_the_owner_is_a_no_op,
            release_frees_the_key,
            release_is_fenced,
            lease_passes_then_claim_takes_over,
            late_complete_without_takeover_succeeds,
            renew_extends_the_lease,
            completed_records_expire,
            remove_deletes_any_record,
            keys_are_independent,
            outputs_round_trip_byte_exact,
            odd_namespaces_are_safe,
            concurrent_claims_acquire_once,
            claim_now_agrees_with_claim,
            complete_keeping_completes,
            missing_keys_are_empty
        );
    };
}
