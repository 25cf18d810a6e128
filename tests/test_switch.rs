//! The unit-test switch (feature `test-util`): annotated functions, unchanged, run inside
//! `test_util::isolated` with a store of the test's own, and inside
//! `test_util::without_deduplication` with none; outside, as in production.

mod common;

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{AppError, DOWN, Recording};
use idempotency::{Idempotency, MemoryStore, idempotent, set_default_store, test_util};

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[idempotent]
async fn charge(order: u32) -> Result<usize, AppError> {
    let _ = order;
    Ok(RUNS.fetch_add(1, Ordering::SeqCst) + 1)
}

/// An executor of its own, over a store that is down: a unit test must not need it.
static PAYMENTS: LazyLock<Idempotency> = LazyLock::new(|| Idempotency::new(DOWN));
static REFUNDS: AtomicUsize = AtomicUsize::new(0);

#[idempotent(store = PAYMENTS)]
async fn refund(order: u32) -> Result<usize, AppError> {
    let _ = order;
    Ok(REFUNDS.fetch_add(1, Ordering::SeqCst) + 1)
}

fn runs() -> usize {
    RUNS.load(Ordering::SeqCst)
}

#[tokio::test]
async fn each_scope_has_its_own_store_or_none_and_production_is_untouched() {
    let (store, counts) = Recording::new(MemoryStore::new());
    set_default_store(store).expect("the first set");

    // Outside any scope: the default store, deduplicating.
    charge(1).await.expect("a charge");
    charge(1).await.expect("a replay");
    assert_eq!(runs(), 1);
    assert_eq!(
        counts.snapshot().0,
        2,
        "both calls claimed in the default store"
    );

    // A fresh store per scope: deduplicates inside, never sees the default store's record.
    for scope in 0..2 {
        test_util::isolated(async {
            let before = runs();
            charge(1).await.expect("a charge");
            charge(1).await.expect("a replay");
            assert_eq!(runs(), before + 1, "scope {scope}: ran once, then replayed");
        })
        .await;
    }
    assert_eq!(runs(), 3);

    // No deduplication: every call runs.
    test_util::without_deduplication(async {
        charge(1).await.expect("a charge");
        charge(1).await.expect("a charge");
    })
    .await;
    assert_eq!(runs(), 5);
    assert_eq!(
        counts.snapshot().0,
        2,
        "no call inside a scope reached the default store"
    );

    // A function with a store of its own is switched too: its store is never asked.
    let refunded = test_util::isolated(async {
        refund(7).await.expect("a refund");
        refund(7).await.expect("a replay")
    })
    .await;
    assert_eq!(refunded, 1);
    assert!(
        refund(7).await.is_err(),
        "outside the scope its store is down"
    );

    // After the scopes, the default store again: the first record still replays.
    charge(1).await.expect("a replay");
    assert_eq!(runs(), 5);
}
