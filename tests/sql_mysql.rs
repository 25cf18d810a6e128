//! The MySQL / MariaDB store (`MYSQL_URL`, default `mysql://root@127.0.0.1:3306/test`): the
//! conformance suite, transactional mode (commit, rollback, a SIGKILLed writer), exactly once
//! across processes, outages, hostile input, size limits, expiry and exact statement counts.
//! Every test works in tables of its own and drops them.

#![cfg(feature = "mysql")]

mod at_most_once_support;
mod sql_support;

mod harness {
    use std::time::Duration;

    use idempotency::sqlx::{self, MySql, MySqlPool, mysql::MySqlPoolOptions};

    use crate::sql_support::{RoundTrips, run_detached};

    pub(crate) type Db = MySql;
    pub(crate) const SUITE: &str = "sql_mysql";
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
    /// at once (its refused insert holds a shared lock on the row the owner must update).
    pub(crate) const TX_WAITS_FOR_POOL_OWNER: bool = false;
    /// A claim on the pool that gives up waiting for an uncommitted transaction's row lock
    /// (`innodb_lock_wait_timeout`) answers in progress.
    pub(crate) const POOL_LOCK_WAIT_IS_IN_PROGRESS: bool = true;

    fn options(connections: u32) -> MySqlPoolOptions {
        MySqlPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(Duration::from_secs(60))
            .test_before_acquire(false)
    }

    pub(crate) async fn fresh(connections: u32) -> Option<(String, MySqlPool)> {
        let url =
            idempotency::testing::service_url("MYSQL_URL", "mysql://root@127.0.0.1:3306/test");
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

    /// A pool whose claims give up a lock wait after 1 s: MySQL has no per-statement bound,
    /// so the sessions of a pool of the store's own get a short `innodb_lock_wait_timeout`.
    pub(crate) async fn lock_bounded(url: &str) -> MySqlPool {
        options(2)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("SET SESSION innodb_lock_wait_timeout = 1")
                        .execute(conn)
                        .await
                        .map(|_| ())
                })
            })
            .connect(url)
            .await
            .expect("connect to MySQL")
    }

    pub(crate) async fn connect(url: &str, connections: u32) -> MySqlPool {
        options(connections)
            .connect(url)
            .await
            .expect("connect to MySQL")
    }

    pub(crate) fn cleanup(url: String, tables: Vec<String>) {
        run_detached(move || async move {
            if let Ok(pool) = MySqlPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
            {
                for table in tables {
                    let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
                        .execute(&pool)
                        .await;
                }
                pool.close().await;
            }
        });
    }

    pub(crate) fn unreachable() -> MySqlPool {
        MySqlPoolOptions::new()
            .acquire_timeout(Duration::from_secs(1))
            .connect_lazy("mysql://root@127.0.0.1:1/test")
            .expect("a lazy pool")
    }

    pub(crate) fn create_orders(table: &str) -> String {
        format!(
            "CREATE TABLE {table} (client_order_id VARCHAR(255) NOT NULL, quantity BIGINT NOT NULL) ENGINE = InnoDB"
        )
    }

    pub(crate) fn insert_order(table: &str) -> String {
        format!("INSERT INTO {table} (client_order_id, quantity) VALUES (?, ?)")
    }

    pub(crate) fn create_plain(table: &str) -> String {
        format!("CREATE TABLE {table} (id BIGINT) ENGINE = InnoDB")
    }

    pub(crate) fn count(table: &str) -> String {
        format!("SELECT COUNT(*) FROM {table}")
    }
}

sql_support::suite::sql_suite!();
