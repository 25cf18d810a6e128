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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::StoreError;
use crate::key::{Digest, Fingerprint, Key};
use crate::record::{Claim, Record, Token};
use crate::store::{ClaimRequest, Completion, Store};

mod claims;
mod completion;
mod leases;
mod marks;

pub use claims::{
    claim_acquires_a_free_key, claim_now_agrees_with_claim, claim_of_a_key_in_progress_reports_it,
    concurrent_claims_acquire_once, keys_are_independent, missing_keys_are_empty,
};
pub use completion::{
    complete_is_fenced, complete_then_claim_replays, complete_twice_by_the_owner_is_a_no_op,
    complete_with_keep_completes, completed_records_expire, odd_namespaces_are_safe,
    outputs_round_trip_byte_exact, remove_deletes_any_record,
};
pub use leases::{
    late_complete_without_takeover_succeeds, lease_passes_then_claim_takes_over,
    release_frees_the_key, release_is_fenced, renew_extends_the_lease,
};
pub use marks::{
    concurrent_mark_swaps_succeed_once, marks_are_listed_by_namespace, marks_expire,
    marks_swap_only_from_what_they_hold,
};

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

/// The fingerprint every case's owner claims with.
fn owner() -> Fingerprint {
    fingerprint("a")
}

/// A claim of `key` by `claimant` that must acquire it: its token and `took_over`.
async fn claim_acquires(
    store: &dyn Store,
    key: &Key,
    claimant: &Fingerprint,
    lease: Duration,
    what: &str,
) -> (Token, bool) {
    match store.claim(key, ClaimRequest::new(*claimant, lease)).await {
        Ok(Claim::Acquired { token, took_over }) => (token, took_over),
        other => panic!("{what} must be Acquired, got {other:?}"),
    }
}

/// The owner's claim of the free `key`: its token.
async fn acquire(store: &dyn Store, key: &Key, lease: Duration) -> Token {
    let what = format!("claim of a free key {key}");
    claim_acquires(store, key, &owner(), lease, &what).await.0
}

/// A claim of `key` by `claimant` that must find it in progress: the owner's fingerprint and
/// the lease left.
async fn claim_in_progress(
    store: &dyn Store,
    key: &Key,
    claimant: &Fingerprint,
    what: &str,
) -> (Fingerprint, Duration) {
    match store.claim(key, ClaimRequest::new(*claimant, LONG)).await {
        Ok(Claim::InProgress {
            fingerprint,
            lease_remaining,
        }) => (fingerprint, lease_remaining),
        other => panic!("{what} must be InProgress, got {other:?}"),
    }
}

/// A claim of `key` by `claimant` answers `Completed` with `output`, stored by the owner.
async fn assert_replays(
    store: &dyn Store,
    key: &Key,
    claimant: &Fingerprint,
    output: &[u8],
    what: &str,
) {
    match store.claim(key, ClaimRequest::new(*claimant, LONG)).await {
        Ok(Claim::Completed {
            fingerprint: stored,
            output: replayed,
            expires_at,
        }) => {
            assert_eq!(stored, owner(), "{what}: the stored fingerprint");
            if let Some(expires_at) = expires_at {
                assert!(
                    expires_at > std::time::SystemTime::now() - std::time::Duration::from_secs(1),
                    "{what}: a live record's expiry is not in the past: {expires_at:?}"
                );
            }
            assert!(
                replayed == *output,
                "{what}: the stored output ({} bytes) differs",
                output.len()
            );
        }
        other => panic!("{what} must be Completed, got {other:?}"),
    }
}

/// `complete` of `output` by `token`, with the owner's fingerprint.
async fn complete(
    store: &dyn Store,
    key: &Key,
    token: &Token,
    output: impl Into<Bytes>,
    ttl: Duration,
) -> Result<(), StoreError> {
    store
        .complete(key, Completion::new(*token, owner(), output.into(), ttl))
        .await
}

/// The same `complete`, which must succeed.
async fn assert_completes(
    store: &dyn Store,
    key: &Key,
    token: &Token,
    output: impl Into<Bytes>,
    ttl: Duration,
    what: &str,
) {
    let done = complete(store, key, token, output, ttl).await;
    assert!(done.is_ok(), "{what} must succeed, got {done:?}");
}

fn assert_lease_lost(result: Result<(), StoreError>, what: &str) {
    assert!(
        matches!(result, Err(StoreError::LeaseLost)),
        "{what} must fail with LeaseLost, got {result:?}"
    );
}

/// What `get` reads for `key`, which must not fail.
async fn read(store: &dyn Store, key: &Key) -> Option<Record> {
    store
        .get(key)
        .await
        .unwrap_or_else(|error| panic!("get of {key} must succeed: {error}"))
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
            complete_with_keep_completes,
            missing_keys_are_empty,
            marks_swap_only_from_what_they_hold,
            concurrent_mark_swaps_succeed_once,
            marks_expire,
            marks_are_listed_by_namespace
        );
    };
}
