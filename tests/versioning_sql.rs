//! Optimistic versioning on real databases: the versioned `UPDATE … WHERE id = ? AND version
//! = ?` on PostgreSQL, MariaDB / MySQL and SQLite. Fifty concurrent read-increment-write
//! cycles of one row through the helper and `retry_on_conflict` end at exactly 50 (no lost
//! update); a caller holding a stale version gets `VersionConflict` and changes nothing.
//!
//! PostgreSQL at `POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`), MySQL at
//! `MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`), each in a fresh table dropped
//! afterwards; SQLite in a fresh database file. Without a server its suite prints SKIPPED;
//! `IDEMPOTENCY_REQUIRE_SERVICES=1` makes that a failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idempotency::retry::RetryPolicy;
use idempotency::versioning::sql::{UpdateError, VersionedTable};
use idempotency::{VersionConflict, retry_on_conflict};

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

fn policy() -> RetryPolicy {
    RetryPolicy::new()
        .max_attempts(1000)
        .initial_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(20))
        .max_elapsed(Duration::from_secs(120))
}

/// The scenario, written once per database (sqlx's executors are concrete types).
macro_rules! versioning_suite {
    ($db:ty, $pool:ty) => {
        use super::*;
        use idempotency::versioning::sql::sqlx;

        const WRITERS: usize = 50;

        pub(crate) async fn run(pool: $pool, table: &str) {
            sqlx::query(&format!(
                "CREATE TABLE {table} (id BIGINT PRIMARY KEY, counter BIGINT NOT NULL, version BIGINT NOT NULL)"
            ))
            .execute(&pool)
            .await
            .expect("create table");
            sqlx::query(&format!("INSERT INTO {table} VALUES (1, 0, 1), (2, 0, 1)"))
                .execute(&pool)
                .await
                .expect("insert");
            let rows = VersionedTable::new(table).expect("table name");

            // Every writer's first read happens before any write: 49 of the 50 first writes are
            // stale, so without the version check updates would be lost.
            let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
            let conflicts = Arc::new(AtomicUsize::new(0));
            let mut writers = Vec::new();
            for _ in 0..WRITERS {
                let (pool, rows, barrier, conflicts) = (
                    pool.clone(),
                    rows.clone(),
                    Arc::clone(&barrier),
                    Arc::clone(&conflicts),
                );
                let table = table.to_owned();
                writers.push(tokio::spawn(async move {
                    let mut first = true;
                    retry_on_conflict(&policy(), || {
                        let wait_for_all = std::mem::take(&mut first);
                        let (pool, rows, barrier, conflicts, table) =
                            (&pool, &rows, &barrier, &conflicts, &table);
                        async move {
                            let (counter, version): (i64, i64) = sqlx::query_as(&format!(
                                "SELECT counter, version FROM {table} WHERE id = 1"
                            ))
                            .fetch_one(pool)
                            .await
                            .map_err(UpdateError::Database)?;
                            if wait_for_all {
                                barrier.wait().await;
                            }
                            let mut conn = pool.acquire().await.map_err(UpdateError::Database)?;
                            let written = rows
                                .update::<$db, _>(1i64, version)
                                .set("counter", counter + 1)
                                .execute(&mut conn)
                                .await;
                            if matches!(written, Err(UpdateError::Conflict(_))) {
                                conflicts.fetch_add(1, Ordering::SeqCst);
                            }
                            written
                        }
                    })
                    .await
                }));
            }
            let mut versions = Vec::new();
            for writer in writers {
                versions.push(writer.await.expect("writer task").expect("update lands"));
            }
            versions.sort_unstable();
            assert_eq!(versions, (2..=51).collect::<Vec<i64>>(), "each write bumped the version once");
            assert!(conflicts.load(Ordering::SeqCst) >= WRITERS - 1);

            let (counter, version): (i64, i64) =
                sqlx::query_as(&format!("SELECT counter, version FROM {table} WHERE id = 1"))
                    .fetch_one(&pool)
                    .await
                    .expect("read back");
            assert_eq!((counter, version), (50, 51), "no lost update");

            // A caller still holding version 1 gets a conflict naming the current version.
            let mut conn = pool.acquire().await.expect("acquire");
            let stale = rows
                .update::<$db, _>(1i64, 1)
                .set("counter", 999i64)
                .execute(&mut conn)
                .await;
            match stale {
                Err(UpdateError::Conflict(conflict)) => assert_eq!(
                    conflict,
                    VersionConflict { expected: 1, current: Some(51) }
                ),
                other => panic!("expected a version conflict, got {other:?}"),
            }
            assert_eq!(rows.current_version::<$db, _>(&mut conn, 1i64).await.expect("database step"), Some(51));
            let unchanged: i64 =
                sqlx::query_scalar(&format!("SELECT counter FROM {table} WHERE id = 1"))
                    .fetch_one(&mut *conn)
                    .await
                    .expect("database step");
            assert_eq!(unchanged, 50);

            // A missing row is not a conflict; a hostile column name is refused.
            let missing = rows.update::<$db, _>(404i64, 1).set("counter", 1i64).execute(&mut conn).await;
            assert!(matches!(missing, Err(UpdateError::NotFound { .. })), "{missing:?}");
            let hostile = rows
                .update::<$db, _>(2i64, 1)
                .set("counter = 0; DROP TABLE x; --", 1i64)
                .execute(&mut conn)
                .await;
            assert!(matches!(hostile, Err(UpdateError::InvalidIdentifier(_))), "{hostile:?}");
            drop(conn);

            // In a transaction: the update joins it and goes with its rollback.
            let mut tx = pool.begin().await.expect("begin");
            let bumped = rows
                .update::<$db, _>(2i64, 1)
                .set("counter", 7i64)
                .execute(&mut tx)
                .await
                .expect("update in a transaction");
            assert_eq!(bumped, 2);
            tx.rollback().await.expect("rollback");
            let (counter, version): (i64, i64) =
                sqlx::query_as(&format!("SELECT counter, version FROM {table} WHERE id = 2"))
                    .fetch_one(&pool)
                    .await
                    .expect("database step");
            assert_eq!((counter, version), (0, 1));
        }
    };
}

#[cfg(feature = "postgres")]
mod postgres {
    versioning_suite!(sqlx::Postgres, sqlx::PgPool);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_concurrent_increments_and_a_stale_version_on_postgres() {
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
                return idempotency::testing::unreachable("versioning on postgres", &url, &error);
            }
            Err(elapsed) => {
                return idempotency::testing::unreachable("versioning on postgres", &url, &elapsed);
            }
        }
        let table = unique("versioned_pg");
        run(pool.clone(), &table).await;
        sqlx::query(&format!("DROP TABLE {table}"))
            .execute(&pool)
            .await
            .expect("database step");
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    versioning_suite!(sqlx::MySql, sqlx::MySqlPool);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_concurrent_increments_and_a_stale_version_on_mysql() {
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
                return idempotency::testing::unreachable("versioning on mysql", &url, &error);
            }
            Err(elapsed) => {
                return idempotency::testing::unreachable("versioning on mysql", &url, &elapsed);
            }
        }
        let table = unique("versioned_my");
        run(pool.clone(), &table).await;
        sqlx::query(&format!("DROP TABLE {table}"))
            .execute(&pool)
            .await
            .expect("database step");
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    versioning_suite!(sqlx::Sqlite, sqlx::SqlitePool);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifty_concurrent_increments_and_a_stale_version_on_sqlite() {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

        let path = std::env::temp_dir().join(format!("{}.db", unique("versioned_sqlite")));
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
        run(pool.clone(), "counters").await;
        pool.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
