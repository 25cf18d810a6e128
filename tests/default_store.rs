//! `set_default_store` at start-up: `#[idempotent]` functions without `store = …` use it. A
//! process of its own, as the default store is set once per process.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::{AppError, Recording};
use idempotency::{Error, MemoryStore, idempotent, set_default_store};

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[idempotent]
async fn book(room: u32) -> Result<usize, AppError> {
    let _ = room;
    Ok(RUNS.fetch_add(1, Ordering::SeqCst) + 1)
}

#[tokio::test]
async fn the_store_set_at_start_up_serves_calls_without_a_store_option() {
    let (store, counts) = Recording::new(MemoryStore::new());
    set_default_store(store).expect("the first set");
    assert!(matches!(
        set_default_store(MemoryStore::new()),
        Err(Error::DefaultStoreAlreadySet)
    ));
    assert_eq!(book(12).await.unwrap(), 1);
    assert_eq!(
        book(12).await.unwrap(),
        1,
        "replayed from the default store"
    );
    let (claims, completes, releases) = counts.snapshot();
    assert_eq!(
        (claims, completes, releases),
        (2, 1, 0),
        "both calls went to the set store"
    );
}
