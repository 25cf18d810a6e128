//! Optimistic versioning on SQL: concurrent writers book into one account row with a
//! versioned compare-and-set, retry on conflict with backoff and full jitter, and lose no
//! update. Needs no server (SQLite in a temporary file).
//!
//! ```sh
//! cargo run --example optimistic_update --features sqlite
//! ```
//!
//! The same helper runs on PostgreSQL and MySQL (`sqlx::Postgres`, `sqlx::MySql`); over HTTP,
//! `idempotency::versioning::http` turns the version into an `ETag` and a stale `If-Match`
//! into `412 Precondition Failed`.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idempotency::retry::RetryPolicy;
use idempotency::retry_on_conflict;
use idempotency::versioning::sql::sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions,
};
use idempotency::versioning::sql::sqlx::{self, Sqlite, SqlitePool};
use idempotency::versioning::sql::{UpdateError, VersionedTable};

const WRITERS: i64 = 20;

/// One writer: read the balance and its version, add `cents`, compare-and-set; on a
/// conflict read again and retry.
async fn deposit(
    pool: &SqlitePool,
    accounts: &VersionedTable,
    cents: i64,
    conflicts: &AtomicUsize,
) -> Result<i64, UpdateError> {
    let policy = RetryPolicy::new()
        .max_attempts(200)
        .initial_delay(Duration::from_millis(2))
        .max_delay(Duration::from_millis(50));
    retry_on_conflict(&policy, || async {
        let (balance, version): (i64, i64) =
            sqlx::query_as("SELECT balance, version FROM accounts WHERE id = 1")
                .fetch_one(pool)
                .await
                .map_err(UpdateError::Database)?;
        let mut conn = pool.acquire().await.map_err(UpdateError::Database)?;
        let written = accounts
            .update::<Sqlite, _>(1i64, version)
            .set("balance", balance + cents)
            .execute(&mut conn)
            .await;
        if let Err(UpdateError::Conflict(_)) = &written {
            conflicts.fetch_add(1, Ordering::Relaxed);
        }
        written
    })
    .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let path = std::env::temp_dir().join(format!("optimistic-update-{nanos}.db"));
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    sqlx::query(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, version INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await?;
    sqlx::query("INSERT INTO accounts VALUES (1, 0, 1)")
        .execute(&pool)
        .await?;
    let accounts = Arc::new(VersionedTable::new("accounts")?);
    let conflicts = Arc::new(AtomicUsize::new(0));

    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let (pool, accounts, conflicts) = (pool.clone(), accounts.clone(), conflicts.clone());
        writers.push(tokio::spawn(async move {
            deposit(&pool, &accounts, 100, &conflicts).await
        }));
    }
    for writer in writers {
        writer.await??;
    }

    let (balance, version): (i64, i64) =
        sqlx::query_as("SELECT balance, version FROM accounts WHERE id = 1")
            .fetch_one(&pool)
            .await?;
    println!(
        "{WRITERS} concurrent deposits of 100: balance {balance}, version {version}, {} stale writes retried",
        conflicts.load(Ordering::Relaxed)
    );

    // A writer that read version 1 long ago: refused, told the current version.
    let mut conn = pool.acquire().await?;
    let stale = accounts
        .update::<Sqlite, _>(1i64, 1)
        .set("balance", 0i64)
        .execute(&mut conn)
        .await;
    println!(
        "a write computed from version 1: {}",
        match &stale {
            Err(error) => error.to_string(),
            Ok(version) => format!("unexpectedly landed as version {version}"),
        }
    );
    drop(conn);
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    if balance == 100 * WRITERS && stale.is_err() {
        println!("no update was lost");
        Ok(())
    } else {
        Err("an update was lost".into())
    }
}
