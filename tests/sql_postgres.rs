//! The PostgreSQL store (`POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`):
//! the conformance suite, transactional mode (commit, rollback, a SIGKILLed writer), exactly
//! once across processes, outages, hostile input, size limits, expiry and exact statement
//! counts. Every test works in tables of its own and drops them.

#![cfg(feature = "postgres")]

mod sql_support;

mod harness {
    use std::time::Duration;

    use idempotency::sqlx::{self, PgPool, Postgres, postgres::PgPoolOptions};

    use crate::sql_support::{RoundTrips, run_detached};

    pub(crate) type Db = Postgres;
    pub(crate) const SUITE: &str = "sql_postgres";
    pub(crate) const ROUND_TRIPS: RoundTrips = RoundTrips {
        first: 2,
        replay: 1,
        failed: 2,
        tx_first: 2,
        tx_replay: 1,
        tx_failed: 2,
        insert_first: [2, 1, 2],
    };
    /// A claim in a transaction that finds the key in progress on the pool waits for it (its
    /// read locks nothing the owner needs).
    pub(crate) const TX_WAITS_FOR_POOL_OWNER: bool = true;
    /// A claim on the pool that gives up waiting for an uncommitted transaction's row lock
    /// answers in progress.
    pub(crate) const POOL_LOCK_WAIT_IS_IN_PROGRESS: bool = true;

    fn options(connections: u32) -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(Duration::from_secs(60))
            .test_before_acquire(false)
    }

    pub(crate) async fn fresh(connections: u32) -> Option<(String, PgPool)> {
        let url = idempotency::testing::service_url(
            "POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        );
        let connecting = options(connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await;
        match connecting {
            Ok(pool) => Some((url, pool)),
            Err(error) => {
                idempotency::testing::unreachable(SUITE, &url, &error);
                None
            }
        }
    }

    /// A pool whose claims give up a lock wait quickly: the store's own `lock_timeout`
    /// bounds it on PostgreSQL, so any pool.
    pub(crate) async fn lock_bounded(url: &str) -> PgPool {
        connect(url, 2).await
    }

    pub(crate) async fn connect(url: &str, connections: u32) -> PgPool {
        options(connections)
            .connect(url)
            .await
            .expect("connect to PostgreSQL")
    }

    pub(crate) fn cleanup(url: String, tables: Vec<String>) {
        run_detached(move || async move {
            if let Ok(pool) = PgPoolOptions::new().max_connections(1).connect(&url).await {
                for table in tables {
                    let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
                        .execute(&pool)
                        .await;
                    // A store's table comes with its claim function.
                    let function = match table.split_once('.') {
                        Some((schema, name)) => format!("\"{schema}\".\"{name}_claim\""),
                        None => format!("\"{table}_claim\""),
                    };
                    let _ = sqlx::query(&format!("DROP FUNCTION IF EXISTS {function}"))
                        .execute(&pool)
                        .await;
                }
                pool.close().await;
            }
        });
    }

    pub(crate) fn unreachable() -> PgPool {
        PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(1))
            .connect_lazy("postgres://postgres@127.0.0.1:1/test")
            .expect("a lazy pool")
    }

    pub(crate) fn create_orders(table: &str) -> String {
        format!("CREATE TABLE {table} (client_order_id TEXT NOT NULL, quantity BIGINT NOT NULL)")
    }

    pub(crate) fn insert_order(table: &str) -> String {
        format!("INSERT INTO {table} (client_order_id, quantity) VALUES ($1, $2)")
    }

    pub(crate) fn create_plain(table: &str) -> String {
        format!("CREATE TABLE {table} (id BIGINT)")
    }

    pub(crate) fn count(table: &str) -> String {
        format!("SELECT COUNT(*) FROM {table}")
    }
}

sql_support::suite::sql_suite!();
