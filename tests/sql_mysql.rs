//! The MySQL / MariaDB store (`MYSQL_URL`, default `mysql://root@127.0.0.1:3306/test`): the
//! conformance suite, transactional mode (commit, rollback, a SIGKILLed writer), exactly once
//! across processes, outages, hostile input, size limits, expiry and exact statement counts.
//! Every test works in tables of its own and drops them.

#![cfg(feature = "mysql")]

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
