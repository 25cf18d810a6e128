//! The SQLite store, on a database file (WAL) and in memory: the conformance suite,
//! transactional mode (commit, rollback, a SIGKILLed writer), exactly once across processes,
//! outages, hostile input, size limits, expiry and exact statement counts. Needs no server;
//! every test uses a database file of its own and deletes it.

#![cfg(feature = "sqlite")]

mod at_most_once_support;
mod sql_support;

mod harness {
    use std::str::FromStr as _;
    use std::time::Duration;

    use idempotency::sqlx::Sqlite;
    use idempotency::sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    };

    use crate::sql_support::{RoundTrips, unique};

    pub(crate) type Db = Sqlite;
    pub(crate) const SUITE: &str = "sql_sqlite";
    pub(crate) const ROUND_TRIPS: RoundTrips = RoundTrips {
        first: 3,
        replay: 1,
        failed: 3,
        tx_first: 2,
        tx_replay: 2,
        tx_failed: 2,
        insert_first: [2, 2, 2],
    };
    /// A claim in a transaction that finds the key in progress on the pool answers in progress
    /// at once (its insert took the database's write lock, which the owner needs).
    pub(crate) const TX_WAITS_FOR_POOL_OWNER: bool = false;
    /// A claim on the pool waits for the write lock of an uncommitted transaction up to the
    /// busy timeout, then fails with a store error (the lock is the whole database's).
    pub(crate) const POOL_LOCK_WAIT_IS_IN_PROGRESS: bool = false;

    /// A new database file for one test.
    pub(crate) async fn fresh(connections: u32) -> Option<(String, SqlitePool)> {
        let path = std::env::temp_dir().join(format!("{}.sqlite", unique("idempotency")));
        let url = format!("sqlite://{}", path.display());
        Some((url.clone(), connect(&url, connections).await))
    }

    pub(crate) async fn connect(url: &str, connections: u32) -> SqlitePool {
        connect_waiting(url, connections, Duration::from_secs(60)).await
    }

    /// A pool whose statements wait for the write lock 300 ms at most.
    pub(crate) async fn lock_bounded(url: &str) -> SqlitePool {
        connect_waiting(url, 2, Duration::from_millis(300)).await
    }

    async fn connect_waiting(url: &str, connections: u32, busy: Duration) -> SqlitePool {
        let options = SqliteConnectOptions::from_str(url)
            .expect("a SQLite URL")
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(busy);
        SqlitePoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(Duration::from_secs(60))
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .expect("open the SQLite file")
    }

    /// Deletes the database file (its tables with it).
    pub(crate) fn cleanup(url: String, _tables: Vec<String>) {
        if let Some(path) = url.strip_prefix("sqlite://") {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
        }
    }

    pub(crate) fn unreachable() -> SqlitePool {
        SqlitePoolOptions::new()
            .acquire_timeout(Duration::from_secs(1))
            .connect_lazy("sqlite:///nonexistent-idempotency-directory/records.sqlite")
            .expect("a lazy pool")
    }

    pub(crate) fn create_orders(table: &str) -> String {
        format!("CREATE TABLE {table} (client_order_id TEXT NOT NULL, quantity INTEGER NOT NULL)")
    }

    pub(crate) fn insert_order(table: &str) -> String {
        format!("INSERT INTO {table} (client_order_id, quantity) VALUES (?, ?)")
    }

    pub(crate) fn create_plain(table: &str) -> String {
        format!("CREATE TABLE {table} (id INTEGER)")
    }

    pub(crate) fn count(table: &str) -> String {
        format!("SELECT COUNT(*) FROM {table}")
    }
}

sql_support::suite::sql_suite!();

/// The conformance suite on an in-memory database (`sqlite::memory:`: one database shared by
/// the pool's connections, gone with the pool).
mod in_memory {
    idempotency::conformance_tests!(|| async {
        let pool = idempotency::sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(4)
            .connect("sqlite::memory:")
            .await
            .expect("an in-memory database");
        let store = idempotency::SqliteStore::new(pool);
        store.migrate().await.expect("migrate");
        Some(store)
    });
}

/// `transaction = tx` on a method of an `#[async_trait]` impl.
mod async_trait_method {
    use idempotency::sqlx::{self, Sqlite, SqlitePool, Transaction};
    use idempotency::{SqliteStore, async_trait, idempotent};

    #[derive(Debug, thiserror::Error)]
    enum ShopError {
        #[error(transparent)]
        Idempotency(#[from] idempotency::Error),
        #[error(transparent)]
        Database(#[from] sqlx::Error),
    }

    #[async_trait]
    trait Orders {
        async fn create(
            &self,
            tx: &mut Transaction<'_, Sqlite>,
            client_order_id: String,
        ) -> Result<i64, ShopError>;
    }

    struct Shop {
        store: SqliteStore,
    }

    #[async_trait]
    impl Orders for Shop {
        #[idempotent(key = client_order_id, transaction = tx, store = self.store)]
        async fn create(
            &self,
            tx: &mut Transaction<'_, Sqlite>,
            client_order_id: String,
        ) -> Result<i64, ShopError> {
            let id =
                sqlx::query_scalar("INSERT INTO orders (client_order_id) VALUES (?) RETURNING id")
                    .bind(&client_order_id)
                    .fetch_one(&mut **tx)
                    .await?;
            Ok(id)
        }
    }

    #[tokio::test]
    async fn creates_once_across_retries() {
        let pool = SqlitePool::connect("sqlite::memory:")
            .await
            .expect("an in-memory database");
        sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, client_order_id TEXT)")
            .execute(&pool)
            .await
            .expect("create orders");
        let shop = Shop {
            store: SqliteStore::new(pool.clone()),
        };
        shop.store.migrate().await.expect("migrate");
        for _ in 0..3 {
            let mut tx = pool.begin().await.expect("begin");
            let id = shop
                .create(&mut tx, "client-order-1".to_owned())
                .await
                .expect("create");
            tx.commit().await.expect("commit");
            assert_eq!(id, 1);
        }
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(rows, 1);
    }
}
