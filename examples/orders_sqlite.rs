//! Orders on SQLite, exactly once, with the idempotency record in the order's transaction:
//! the shape of `orders_postgres`, with no server (a database file in the temp directory).
//!
//! ```sh
//! cargo run --example orders_sqlite --features sqlite
//! ```
//!
//! `create_order` inserts a row into `orders` inside the caller's transaction, and
//! `#[idempotent(transaction = tx, …)]` writes its idempotency record into the same
//! transaction: the row and the record commit together or not at all. A client then places
//! one order through a bad network — the server crashes once before committing, and two
//! responses are lost after the commit — and a user double-clicks five times at once. At the
//! end exactly one row exists for the order; the example prints it and checks it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idempotency::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use idempotency::sqlx::{self, Sqlite, SqlitePool, Transaction};
use idempotency::{SqliteStore, idempotent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize)]
struct NewOrder {
    client_order_id: String,
    sku: String,
    quantity: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: i64,
    client_order_id: String,
    sku: String,
    quantity: i32,
}

#[derive(Debug, thiserror::Error)]
enum ShopError {
    #[error(transparent)]
    Idempotency(#[from] idempotency::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("the server crashed before committing")]
    Crashed,
    #[error("the client timed out waiting for the response")]
    TimedOut,
}

/// Inserts the order, once per `client_order_id`, in the caller's transaction.
#[idempotent(
    key = order.client_order_id,
    transaction = tx,
    executor = store,
    skip(store),
    name = "shop.create_order"
)]
async fn create_order(
    tx: &mut Transaction<'_, Sqlite>,
    store: &SqliteStore,
    order: &NewOrder,
) -> Result<Order, ShopError> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO orders (client_order_id, sku, quantity) VALUES (?, ?, ?) RETURNING id",
    )
    .bind(&order.client_order_id)
    .bind(&order.sku)
    .bind(order.quantity)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Order {
        id,
        client_order_id: order.client_order_id.clone(),
        sku: order.sku.clone(),
        quantity: order.quantity,
    })
}

/// What goes wrong with one request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// The server process dies after the insert, before the commit.
    CrashBeforeCommit,
    /// The server commits, but the response never reaches the client.
    LostResponse,
}

/// The server's endpoint: one transaction per request.
async fn handle(
    pool: &SqlitePool,
    store: &SqliteStore,
    order: &NewOrder,
    fault: Fault,
) -> Result<Order, ShopError> {
    let mut tx = pool.begin().await?;
    let created = create_order(&mut tx, store, order).await?;
    if fault == Fault::CrashBeforeCommit {
        drop(tx); // what a crash does to an open transaction: it rolls back
        return Err(ShopError::Crashed);
    }
    tx.commit().await?;
    if fault == Fault::LostResponse {
        return Err(ShopError::TimedOut);
    }
    Ok(created)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros();
    let path = std::env::temp_dir().join(format!("idempotency-orders-{stamp}.sqlite"));
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .connect_with(options)
        .await?;
    let result = run(&pool).await;
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    result
}

async fn run(pool: &SqlitePool) -> Result<(), Box<dyn std::error::Error>> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS orders (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            client_order_id TEXT NOT NULL,
            sku TEXT NOT NULL,
            quantity INTEGER NOT NULL
        )",
    )
    .execute(pool)
    .await?;
    let store = SqliteStore::new(pool.clone());
    store.migrate().await?;

    let order = NewOrder {
        client_order_id: "client-order-1".to_owned(),
        sku: "sku-espresso-beans".to_owned(),
        quantity: 2,
    };

    // The client retries until it gets an answer.
    let faults = [
        Fault::CrashBeforeCommit,
        Fault::LostResponse,
        Fault::LostResponse,
        Fault::None,
    ];
    let mut placed = None;
    for (attempt, fault) in faults.into_iter().enumerate() {
        match handle(pool, &store, &order, fault).await {
            Ok(created) => {
                println!("attempt {}: placed {created:?}", attempt + 1);
                placed = Some(created);
                break;
            }
            Err(error) => println!("attempt {}: {error}; retrying", attempt + 1),
        }
    }
    let placed = placed.ok_or("the client never got an answer")?;

    // A user double-clicks "Order" five times at once.
    let clicks: Vec<_> = (0..5)
        .map(|_| {
            let (pool, store, order) = (pool.clone(), store.clone(), order.clone());
            tokio::spawn(async move { handle(&pool, &store, &order, Fault::None).await })
        })
        .collect();
    for click in clicks {
        let again = click.await??;
        assert_eq!(again, placed, "every retry gets the first order back");
    }

    let rows: Vec<(i64, String, i32)> = sqlx::query_as(
        "SELECT id, sku, quantity FROM orders WHERE client_order_id = ? ORDER BY id",
    )
    .bind(&order.client_order_id)
    .fetch_all(pool)
    .await?;
    println!("rows for {}: {rows:?}", order.client_order_id);
    if rows.len() != 1 {
        return Err(format!("expected exactly one order row, found {}", rows.len()).into());
    }
    println!("exactly one order row, id {}", rows[0].0);
    Ok(())
}
