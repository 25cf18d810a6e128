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

/// Tasks spawned inside a scope: `test_util::spawn` and `test_util::carry` take the switch
/// along; a plain `tokio::spawn` runs outside it (and reaches the function's own store).
static SHIPMENTS: AtomicUsize = AtomicUsize::new(0);

#[idempotent(store = PAYMENTS)]
async fn ship(order: u32) -> Result<usize, AppError> {
    let _ = order;
    Ok(SHIPMENTS.fetch_add(1, Ordering::SeqCst) + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_tasks_carry_the_switch_when_asked() {
    test_util::isolated(async {
        let spawned = test_util::spawn(async { ship(21).await })
            .await
            .expect("the task");
        assert_eq!(spawned.expect("a shipment in the test's store"), 1);
        // The same store as the test's own calls: the task's record replays here.
        assert_eq!(ship(21).await.expect("a replay"), 1);

        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..3 {
            tasks.spawn(test_util::carry(async { ship(22).await }));
        }
        let mut answers = Vec::new();
        while let Some(done) = tasks.join_next().await {
            answers.push(done.expect("the task").expect("a shipment or its replay"));
        }
        assert_eq!(
            answers,
            [2, 2, 2],
            "one shipment, replayed to the other tasks"
        );

        let outside = tokio::spawn(async { ship(23).await })
            .await
            .expect("the task");
        assert!(
            outside.is_err(),
            "a plain spawn is not switched: {outside:?}"
        );
    })
    .await;
}

/// Transactional functions: no claim and no record under `without_deduplication`; under
/// `isolated`, their record goes into the caller's transaction as in production.
#[cfg(feature = "sqlite")]
mod transactional {
    use idempotency::sqlx::sqlite::SqlitePoolOptions;
    use idempotency::sqlx::{self, Sqlite, SqlitePool, Transaction};
    use idempotency::{SqliteStore, idempotent, test_util};

    #[derive(Debug, thiserror::Error)]
    enum ShopError {
        #[error(transparent)]
        Idempotency(#[from] idempotency::Error),
        #[error(transparent)]
        Database(#[from] sqlx::Error),
    }

    #[idempotent(key = client_order_id, transaction = tx, store = store, skip(store))]
    async fn create(
        tx: &mut Transaction<'_, Sqlite>,
        store: &SqliteStore,
        client_order_id: &str,
    ) -> Result<i64, ShopError> {
        let id = sqlx::query_scalar("INSERT INTO orders (client_order_id) VALUES (?) RETURNING id")
            .bind(client_order_id)
            .fetch_one(&mut **tx)
            .await?;
        Ok(id)
    }

    async fn count(pool: &SqlitePool, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .expect("count")
    }

    #[tokio::test]
    async fn record_nothing_without_deduplication_and_in_the_transaction_when_isolated() {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("an in-memory database");
        sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, client_order_id TEXT)")
            .execute(&pool)
            .await
            .expect("create orders");
        let store = SqliteStore::new(pool.clone());
        store.migrate().await.expect("migrate");
        let records = store.table();

        test_util::without_deduplication(async {
            for expected in 1..=2 {
                let mut tx = pool.begin().await.expect("begin");
                let id = create(&mut tx, &store, "order-1").await.expect("create");
                tx.commit().await.expect("commit");
                assert_eq!(id, expected, "the body ran again");
            }
        })
        .await;
        assert_eq!(count(&pool, "orders").await, 2);
        assert_eq!(count(&pool, &records).await, 0, "no claim, no record");

        test_util::isolated(async {
            for _ in 0..2 {
                let mut tx = pool.begin().await.expect("begin");
                let id = create(&mut tx, &store, "order-2").await.expect("create");
                tx.commit().await.expect("commit");
                assert_eq!(id, 3, "ran once, then replayed");
            }
        })
        .await;
        assert_eq!(count(&pool, "orders").await, 3);
        assert_eq!(
            count(&pool, &records).await,
            1,
            "recorded in the transaction"
        );
    }
}
