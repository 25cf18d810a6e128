//! Stores for the steps suites: memory, Redis (a prefix of the run's own), PostgreSQL (a table
//! of the run's own, dropped by `Fixture::drop_tables`), SQLite (a file of the run's own).

#![allow(dead_code)]

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use idempotency::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use idempotency::sqlx::{PgPool, SqlitePool};
use idempotency::testing::{service_url, unreachable};
use idempotency::{MemoryStore, PostgresStore, RedisStore, SqlStore, SqliteStore, Store, Token};

pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        &Token::random().to_string()[..10]
    )
}

pub(crate) fn pg_url() -> String {
    service_url("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
}

pub(crate) fn redis_url() -> String {
    service_url("REDIS_URL", "redis://127.0.0.1:6379")
}

/// One store of one test, with what else the test needs from its backend.
pub(crate) struct Fixture {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) postgres: Option<(PgPool, PostgresStore, String)>,
    pub(crate) sqlite: Option<(SqlitePool, SqliteStore)>,
}

impl Fixture {
    pub(crate) fn memory() -> Fixture {
        Fixture {
            store: Arc::new(MemoryStore::new()),
            postgres: None,
            sqlite: None,
        }
    }

    pub(crate) async fn redis(suite: &str) -> Option<Fixture> {
        let url = redis_url();
        let connection = match idempotency::redis::Client::open(url.as_str()) {
            Ok(client) => idempotency::redis::aio::ConnectionManager::new(client).await,
            Err(error) => Err(error),
        };
        let connection = match connection {
            Ok(connection) => connection,
            Err(error) => {
                unreachable(suite, &url, &error);
                return None;
            }
        };
        let store = RedisStore::builder(connection)
            .prefix(format!("{}:", unique("idempotency-steps")))
            .build()
            .expect("prefix");
        Some(Fixture {
            store: Arc::new(store),
            postgres: None,
            sqlite: None,
        })
    }

    pub(crate) async fn postgres(suite: &str) -> Option<Fixture> {
        let url = pg_url();
        let pool = match PgPool::connect(&url).await {
            Ok(pool) => pool,
            Err(error) => {
                unreachable(suite, &url, &error);
                return None;
            }
        };
        let table = unique("steps");
        let store = SqlStore::builder(pool.clone())
            .table(table.as_str())
            .build()
            .expect("table");
        store.migrate().await.expect("migrate");
        Some(Fixture {
            store: Arc::new(store.clone()),
            postgres: Some((pool, store, table)),
            sqlite: None,
        })
    }

    pub(crate) async fn sqlite() -> Fixture {
        let path = std::env::temp_dir().join(format!("{}.sqlite", unique("idempotency-steps")));
        let pool = sqlite_pool(&format!("sqlite://{}", path.display())).await;
        let store = SqlStore::builder(pool.clone()).build().expect("store");
        store.migrate().await.expect("migrate");
        Fixture {
            store: Arc::new(store.clone()),
            postgres: None,
            sqlite: Some((pool, store)),
        }
    }

    /// Drops the run's PostgreSQL table and its claim functions.
    pub(crate) async fn drop_tables(&self) {
        let Some((pool, _, table)) = &self.postgres else {
            return;
        };
        for drop in [
            format!("DROP TABLE IF EXISTS \"{table}\""),
            format!(
                "DROP FUNCTION IF EXISTS \"{table}_claim\"(bytea, bytea, bytea, int8, int8, text, text, int8), \"{table}_claim\"(bytea, bytea, bytea, int8, int8, text)"
            ),
        ] {
            let _ = idempotency::sqlx::query(&drop).execute(pool).await;
        }
    }
}

pub(crate) async fn sqlite_pool(url: &str) -> SqlitePool {
    let options = SqliteConnectOptions::from_str(url)
        .expect("a SQLite URL")
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    idempotency::sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .expect("sqlite")
}
