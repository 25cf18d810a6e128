//! The SQL inbox on real databases: the processed-mark is written in the handler's own
//! transaction, on PostgreSQL, MariaDB / MySQL and SQLite. Duplicates are skipped; a crash
//! between the handler's write and the commit leaves neither the write nor the mark, and the
//! redelivery books the message once; a failed handler is rolled back and redelivered;
//! concurrent deliveries of one message book it once.
//!
//! PostgreSQL at `POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`), MySQL at
//! `MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`), each with fresh tables dropped
//! afterwards; SQLite in a fresh database file. Without a server its suite prints SKIPPED;
//! `IDEMPOTENCY_REQUIRE_SERVICES=1` makes that a failure.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idempotency::Error;
use idempotency::consumer::Outcome;
use idempotency::consumer::inbox::Inbox;
use idempotency::store::sql::SqlStore;

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("database step")
        .as_nanos();
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

#[derive(Debug, thiserror::Error)]
enum BookError {
    #[error("the payment provider is down (simulated)")]
    ProviderDown,
    #[error("database: {0}")]
    Database(#[from] idempotency::store::sql::sqlx::Error),
    #[error(transparent)]
    Idempotency(#[from] Error),
}

/// The scenario, written once per database (sqlx's executors are concrete types).
macro_rules! inbox_suite {
    ($db:ty, $pool:ty, $p:literal) => {
        use super::*;
        use idempotency::store::sql::sqlx::{self, Transaction};

        /// Books `event` into `ledger` in `tx` through the inbox.
        async fn book(
            inbox: &Inbox<$db>,
            tx: &mut Transaction<'static, $db>,
            ledger: &str,
            event: &str,
            fail: bool,
        ) -> Result<Outcome<u32>, BookError> {
            let (ledger, event_id) = (ledger.to_owned(), event.to_owned());
            inbox
                .handle(tx, event, move |tx| {
                    Box::pin(async move {
                        sqlx::query(&format!("INSERT INTO {ledger} (event_id) VALUES ({})", $p))
                            .bind(event_id)
                            .execute(&mut **tx)
                            .await?;
                        if fail {
                            return Err(BookError::ProviderDown);
                        }
                        Ok(1999)
                    })
                })
                .await
        }

        async fn booked(pool: &$pool, ledger: &str, event: Option<&str>) -> i64 {
            let sql = match event {
                Some(_) => format!("SELECT count(*) FROM {ledger} WHERE event_id = {}", $p),
                None => format!("SELECT count(*) FROM {ledger}"),
            };
            let mut query = sqlx::query_scalar::<_, i64>(&sql);
            if let Some(event) = event {
                query = query.bind(event.to_owned());
            }
            query.fetch_one(pool).await.expect("count the ledger")
        }

        pub(crate) async fn run(pool: $pool, prefix: &str) {
            let ledger = format!("{prefix}_ledger");
            sqlx::query(&format!(
                "CREATE TABLE {ledger} (event_id VARCHAR(64) NOT NULL)"
            ))
            .execute(&pool)
            .await
            .expect("create the ledger");
            let store = SqlStore::builder(pool.clone())
                .table(format!("{prefix}_records"))
                .build()
                .expect("store");
            store.migrate().await.expect("migrate");
            let inbox = Inbox::new(store, "test.ledger").window(Duration::from_secs(3600));

            // Every message delivered twice: booked once, the second delivery skipped.
            for round in 0..2 {
                for n in 0..5 {
                    let mut tx = pool.begin().await.expect("database step");
                    let outcome = book(&inbox, &mut tx, &ledger, &format!("evt-{n}"), false)
                        .await
                        .expect("book");
                    tx.commit().await.expect("database step");
                    assert_eq!(outcome.is_duplicate(), round == 1);
                    assert_eq!(outcome.into_inner(), 1999);
                }
            }
            assert_eq!(booked(&pool, &ledger, None).await, 5);

            // The consumer dies after its write, before the commit: neither write nor mark.
            let mut tx = pool.begin().await.expect("database step");
            let outcome = book(&inbox, &mut tx, &ledger, "crash-1", false)
                .await
                .expect("database step");
            assert!(!outcome.is_duplicate());
            drop(tx); // the process died: the transaction never commits
            assert_eq!(booked(&pool, &ledger, Some("crash-1")).await, 0);
            // The redelivery is new again, and books it once.
            let mut tx = pool.begin().await.expect("database step");
            let outcome = book(&inbox, &mut tx, &ledger, "crash-1", false)
                .await
                .expect("database step");
            assert!(!outcome.is_duplicate(), "no mark survived the crash");
            tx.commit().await.expect("database step");
            let mut tx = pool.begin().await.expect("database step");
            let outcome = book(&inbox, &mut tx, &ledger, "crash-1", false)
                .await
                .expect("database step");
            assert!(outcome.is_duplicate());
            tx.rollback().await.expect("database step");
            assert_eq!(booked(&pool, &ledger, Some("crash-1")).await, 1);

            // A failed handler: rolled back, unmarked, redelivered and booked once.
            let mut tx = pool.begin().await.expect("database step");
            let failed = book(&inbox, &mut tx, &ledger, "flaky-1", true).await;
            assert!(matches!(failed, Err(BookError::ProviderDown)), "{failed:?}");
            tx.rollback().await.expect("database step");
            let mut tx = pool.begin().await.expect("database step");
            let outcome = book(&inbox, &mut tx, &ledger, "flaky-1", false)
                .await
                .expect("database step");
            assert!(!outcome.is_duplicate());
            tx.commit().await.expect("database step");
            assert_eq!(booked(&pool, &ledger, Some("flaky-1")).await, 1);

            // Eight deliveries of one message at once, each in its own transaction.
            let mut deliveries = Vec::new();
            for _ in 0..8 {
                let (pool, inbox, ledger) = (pool.clone(), inbox.clone(), ledger.clone());
                deliveries.push(tokio::spawn(async move {
                    let mut tx = pool.begin().await?;
                    let outcome = book(&inbox, &mut tx, &ledger, "burst-1", false).await?;
                    tx.commit().await?;
                    Ok::<_, BookError>(outcome.is_duplicate())
                }));
            }
            let mut processed = 0;
            for delivery in deliveries {
                processed +=
                    usize::from(!delivery.await.expect("database step").expect("delivery"));
            }
            assert_eq!(processed, 1);
            assert_eq!(booked(&pool, &ledger, Some("burst-1")).await, 1);
            assert_eq!(booked(&pool, &ledger, None).await, 8);

            sqlx::query(&format!("DROP TABLE {ledger}"))
                .execute(&pool)
                .await
                .expect("database step");
            sqlx::query(&format!("DROP TABLE {prefix}_records"))
                .execute(&pool)
                .await
                .expect("database step");
            if <$db as sqlx::Database>::NAME == "PostgreSQL" {
                // The store's table comes with its claim function.
                sqlx::query(&format!(
                    "DROP FUNCTION IF EXISTS \"{prefix}_records_claim\"(bytea, bytea, bytea, int8, int8, text, text, int8), \"{prefix}_records_claim\"(bytea, bytea, bytea, int8, int8, text)"
                ))
                .execute(&pool)
                .await
                .expect("database step");
            }
        }
    };
}

#[cfg(feature = "postgres")]
mod postgres {
    inbox_suite!(sqlx::Postgres, sqlx::PgPool, "$1");

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_mark_commits_with_the_handlers_writes_on_postgres() {
        let url = idempotency::testing::service_url(
            "POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        );
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy(&url)
            .expect("a valid url");
        // Reachable within 5 s, or skipped (failed under IDEMPOTENCY_REQUIRE_SERVICES=1).
        match tokio::time::timeout(Duration::from_secs(5), pool.acquire()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                return idempotency::testing::unreachable("inbox on postgres", &url, &error);
            }
            Err(elapsed) => {
                return idempotency::testing::unreachable("inbox on postgres", &url, &elapsed);
            }
        }
        run(pool, &unique("inbox_pg")).await;
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    inbox_suite!(sqlx::MySql, sqlx::MySqlPool, "?");

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_mark_commits_with_the_handlers_writes_on_mysql() {
        let url =
            idempotency::testing::service_url("MYSQL_URL", "mysql://root@127.0.0.1:3306/test");
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy(&url)
            .expect("a valid url");
        // Reachable within 5 s, or skipped (failed under IDEMPOTENCY_REQUIRE_SERVICES=1).
        match tokio::time::timeout(Duration::from_secs(5), pool.acquire()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                return idempotency::testing::unreachable("inbox on mysql", &url, &error);
            }
            Err(elapsed) => {
                return idempotency::testing::unreachable("inbox on mysql", &url, &elapsed);
            }
        }
        run(pool, &unique("inbox_my")).await;
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    inbox_suite!(sqlx::Sqlite, sqlx::SqlitePool, "?");

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_mark_commits_with_the_handlers_writes_on_sqlite() {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

        let path = std::env::temp_dir().join(format!("{}.db", unique("inbox_sqlite")));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(5)
            .connect_with(options)
            .await
            .expect("open a database file");
        run(pool.clone(), "inbox").await;
        pool.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
