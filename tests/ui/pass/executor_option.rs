use idempotency::sqlx::{self, Sqlite, Transaction};
use idempotency::{Idempotency, MemoryStore, SqliteStore, idempotent};

struct Payments {
    idempotency: Idempotency,
}

impl Payments {
    #[idempotent(executor = self.idempotency)]
    async fn refund(&self, charge_id: u64) -> Result<u64, idempotency::Error> {
        Ok(charge_id)
    }
}

// `store` is another name for `executor`.
#[idempotent(store = idempotency, skip(idempotency))]
async fn capture(idempotency: &Idempotency, charge_id: u64) -> Result<u64, idempotency::Error> {
    Ok(charge_id)
}

// With `transaction`, the executor is the `SqlStore` of the transaction's database.
#[idempotent(transaction = tx, executor = store, skip(store))]
async fn order(
    tx: &mut Transaction<'_, Sqlite>,
    store: &SqliteStore,
    sku: &str,
) -> Result<u64, idempotency::Error> {
    let _ = &mut **tx;
    Ok(sku.len() as u64)
}

#[idempotent(transaction = tx, store = store, skip(store))]
async fn order_with_alias(
    tx: &mut Transaction<'_, Sqlite>,
    store: &SqliteStore,
    sku: &str,
) -> Result<u64, idempotency::Error> {
    let _ = &mut **tx;
    Ok(sku.len() as u64)
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let payments = Payments { idempotency: Idempotency::new(MemoryStore::new()) };
        assert_eq!(payments.refund(7).await.unwrap(), 7);
        assert_eq!(capture(&payments.idempotency, 8).await.unwrap(), 8);

        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let store = SqliteStore::new(pool.clone());
        store.migrate().await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        assert_eq!(order(&mut tx, &store, "sku-1").await.unwrap(), 5);
        assert_eq!(order_with_alias(&mut tx, &store, "sku-22").await.unwrap(), 6);
        tx.commit().await.unwrap();
    });
}
