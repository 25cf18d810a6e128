//! A checkout in three steps that survives its worker's crash: reserve the stock (a local SQL
//! step: the row and its recovery point commit together), charge the card at a payment
//! service (a remote step, sent with the step's derived key as its `Idempotency-Key`), and
//! record the shipment (local again).
//!
//! ```sh
//! cargo run --example checkout_steps --features sqlite,postgres,http              # SQLite file
//! cargo run --example checkout_steps --features sqlite,postgres,http -- --postgres # POSTGRES_URL
//! cargo run --example checkout_steps --features sqlite,postgres,http -- --check    # asserts
//! ```
//!
//! The program starts the payment service (this crate's `Idempotency-Key` layer in front of a
//! handler that counts charges), then runs the checkout of two orders in worker processes
//! (itself, with `--worker`), each exiting abruptly midway (`process::exit`, no cleanup):
//!
//! * `order-1` exits after the payment service charged it, before the charge was journaled.
//!   A rerun of the worker skips `reserve` (journaled), sends the charge again with the same
//!   derived key (the payment service replays its first answer: one charge), and ships.
//! * `order-2` exits after the charge was journaled. Nobody reruns it: the [`Completer`] finds
//!   its journal once the lease passed and finishes it in this process.
//!
//! Then a client retry of each order replays its receipt. It prints the counts: one
//! reservation, one charge and one shipment per order.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use idempotency::http::{ClientScope, IdempotencyLayer};
use idempotency::sqlx::{self, PgPool};
use idempotency::steps::{Completer, Steps};
use idempotency::{
    BoxError, Fingerprint, Idempotency, Key, MemoryStore, PostgresStore, SqlStore, SqliteStore,
    Store,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: String,
    sku: String,
    cents: u64,
}

/// The checkout's database: the idempotency records, the journals and the shop's tables.
#[derive(Clone)]
enum Db {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

#[derive(Clone)]
struct Shop {
    db: Db,
    /// This run's suffix of every table name.
    run: String,
    payments: String,
    http: reqwest::Client,
    /// Where this worker kills itself: `effect:charge` or `journal:charge`.
    crash_at: Option<String>,
}

impl Shop {
    fn crash_point(&self, here: &str) {
        if self.crash_at.as_deref() == Some(here) {
            eprintln!("worker: crashing at {here}");
            // As abrupt as a crash: no destructor runs, nothing is committed or rolled back
            // by this process (the databases roll back what its closed connections left open).
            std::process::exit(70);
        }
    }

    /// A local step: `sql` and the step's recovery point in one transaction.
    async fn local(&self, steps: &Steps, name: &str, sql: String) -> Result<String, BoxError> {
        let done = format!("{name} done");
        match &self.db {
            Db::Sqlite(store) => {
                steps
                    .local(name, store, move |tx| {
                        Box::pin(async move {
                            sqlx::query(&sql).execute(&mut **tx).await?;
                            Ok::<_, BoxError>(done)
                        })
                    })
                    .await
            }
            Db::Postgres(store) => {
                steps
                    .local(name, store, move |tx| {
                        Box::pin(async move {
                            sqlx::query(&sql).execute(&mut **tx).await?;
                            Ok::<_, BoxError>(done)
                        })
                    })
                    .await
            }
        }
    }
}

/// The checkout: the same function for the worker, its rerun and the completer.
async fn checkout(shop: Shop, order: Order, steps: Steps) -> Result<String, BoxError> {
    let reserve = format!(
        "INSERT INTO reservations_{} (order_id, sku) VALUES ('{}', '{}')",
        shop.run, order.id, order.sku
    );
    shop.local(&steps, "reserve", reserve).await?;
    let charge_key = steps.key("charge"); // the same on every run of this order
    let charge: String = steps
        .step("charge", || async {
            let charge = shop
                .http
                .post(format!("{}/charges", shop.payments))
                .header("idempotency-key", &charge_key)
                .body(order.cents.to_string())
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            shop.crash_point("effect:charge");
            Ok::<_, BoxError>(charge)
        })
        .await?;
    shop.crash_point("journal:charge");
    let ship = format!(
        "INSERT INTO shipments_{} (order_id, charge) VALUES ('{}', '{charge}')",
        shop.run, order.id
    );
    shop.local(&steps, "ship", ship).await?;
    Ok(format!("{}: charged {charge}, shipped", order.id))
}

fn order(id: &str) -> Order {
    Order {
        id: id.to_owned(),
        sku: "book-42".to_owned(),
        cents: 1999,
    }
}

async fn check_out(
    idempotency: &Idempotency,
    shop: &Shop,
    order: Order,
) -> Result<String, BoxError> {
    let key = Key::derive("shop::checkout", 1, &order.id)?;
    let shop = shop.clone();
    idempotency
        .call(key, Fingerprint::of(&order)?)
        .run_steps(order, move |order, steps| checkout(shop, order, steps))
        .await
}

/// Opens the database at `url` (`sqlite://…` or `postgres://…`), with the run's records
/// table.
async fn open(url: &str, run: &str) -> Result<(Db, Arc<dyn Store>), BoxError> {
    let table = format!("checkout_records_{run}");
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc")).await?;
        let store = SqlStore::builder(pool).table(table.as_str()).build()?;
        Ok((Db::Sqlite(store.clone()), Arc::new(store)))
    } else {
        let store = SqlStore::builder(PgPool::connect(url).await?)
            .table(table.as_str())
            .build()?;
        Ok((Db::Postgres(store.clone()), Arc::new(store)))
    }
}

fn executor(store: Arc<dyn Store>) -> Idempotency {
    // A short lease, so that a crashed worker's call is taken over within a second.
    Idempotency::builder(store)
        .lease(Duration::from_millis(800))
        .build()
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|at| args.get(at + 1).cloned())
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    if flag("--worker") {
        let url = arg("--db").ok_or("--db")?;
        let run = arg("--run").ok_or("--run")?;
        let (db, store) = open(&url, &run).await?;
        let shop = Shop {
            db,
            run,
            payments: arg("--payments").ok_or("--payments")?,
            http: reqwest::Client::new(),
            crash_at: arg("--crash-at"),
        };
        let receipt = check_out(
            &executor(store),
            &shop,
            order(&arg("--order").ok_or("--order")?),
        )
        .await?;
        println!("{receipt}");
        return Ok(());
    }
    let url = if flag("--postgres") {
        std::env::var("POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    } else {
        let path = std::env::temp_dir().join(format!("checkout-steps-{}.db", std::process::id()));
        format!("sqlite://{}", path.display())
    };
    let run = std::process::id().to_string();
    let (db, store) = open(&url, &run).await?;
    let execute = |sql: String| {
        let db = db.clone();
        async move {
            match &db {
                Db::Sqlite(store) => sqlx::query(&sql).execute(store.pool()).await.map(drop),
                Db::Postgres(store) => sqlx::query(&sql).execute(store.pool()).await.map(drop),
            }
        }
    };
    match &db {
        Db::Sqlite(store) => store.migrate().await?,
        Db::Postgres(store) => store.migrate().await?,
    }
    execute(format!(
        "CREATE TABLE reservations_{run} (order_id TEXT, sku TEXT)"
    ))
    .await?;
    execute(format!(
        "CREATE TABLE shipments_{run} (order_id TEXT, charge TEXT)"
    ))
    .await?;

    // The payment service: charges counted per idempotency key, behind the layer.
    let charges: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let app =
        Router::new()
            .route(
                "/charges",
                post(
                    |State(charges): State<Arc<Mutex<HashMap<String, u32>>>>,
                     headers: HeaderMap| async move {
                        let key = headers
                            .get("idempotency-key")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        let mut charges = charges.lock().unwrap_or_else(|p| p.into_inner());
                        *charges.entry(key.to_owned()).or_default() += 1;
                        format!("ch_{}", &key[..12.min(key.len())])
                    },
                ),
            )
            .with_state(Arc::clone(&charges))
            .layer(
                IdempotencyLayer::new(Idempotency::new(MemoryStore::new()))
                    .require_key(true)
                    .scope(ClientScope::global()),
            );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let payments = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let worker = |order: &str, crash_at: Option<&str>| {
        let mut command = Command::new(std::env::current_exe().expect("this program"));
        command.args([
            "--worker",
            "--db",
            &url,
            "--run",
            &run,
            "--payments",
            &payments,
        ]);
        command.args(["--order", order]);
        if let Some(crash_at) = crash_at {
            command.args(["--crash-at", crash_at]);
        }
        let output = command.output().expect("a worker");
        let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        (output.status.success(), text)
    };

    // order-1: dies after the charge, before its recovery point; a rerun finishes it.
    let (ok, _) = worker("order-1", Some("effect:charge"));
    println!("order-1: worker crashed after the charge, before journaling it (exit ok: {ok})");
    let (ok, receipt_1) = worker("order-1", None);
    println!("order-1: rerun -> {receipt_1} (ok: {ok})");

    // order-2: dies after the charge's recovery point; nobody reruns it, the completer does.
    let (ok, _) = worker("order-2", Some("journal:charge"));
    println!("order-2: worker crashed after journaling the charge (exit ok: {ok})");
    tokio::time::sleep(Duration::from_millis(900)).await;
    let shop = Shop {
        db: db.clone(),
        run: run.clone(),
        payments: payments.clone(),
        http: reqwest::Client::new(),
        crash_at: None,
    };
    let idempotency = executor(store);
    let completer_shop = shop.clone();
    let completer = Completer::new(idempotency.clone()).register(
        "shop::checkout",
        1,
        move |order: Order, steps| checkout(completer_shop.clone(), order, steps),
    );
    let pass = completer.run_once().await?;
    println!(
        "completer: finished {} call(s), {} journal(s) of completed calls cleared",
        pass.finished.len(),
        pass.cleared
    );

    // Client retries replay.
    let replay_1 = check_out(&idempotency, &shop, order("order-1")).await?;
    let replay_2 = check_out(&idempotency, &shop, order("order-2")).await?;
    println!("retry order-1 -> {replay_1}");
    println!("retry order-2 -> {replay_2}");

    let count = |table: &str, id: &str| {
        let sql = format!("SELECT COUNT(*) FROM {table}_{run} WHERE order_id = '{id}'");
        let db = db.clone();
        async move {
            match &db {
                Db::Sqlite(store) => {
                    sqlx::query_scalar::<_, i64>(&sql)
                        .fetch_one(store.pool())
                        .await
                }
                Db::Postgres(store) => {
                    sqlx::query_scalar::<_, i64>(&sql)
                        .fetch_one(store.pool())
                        .await
                }
            }
        }
    };
    let charged: Vec<u32> = charges
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .copied()
        .collect();
    let mut counts = Vec::new();
    for id in ["order-1", "order-2"] {
        counts.push((
            id,
            count("reservations", id).await?,
            count("shipments", id).await?,
        ));
    }
    println!("charges per key at the payment service: {charged:?}");
    for (id, reserved, shipped) in &counts {
        println!("{id}: {reserved} reservation(s), {shipped} shipment(s)");
    }
    if flag("--check") {
        assert_eq!(
            receipt_1, replay_1,
            "order-1: the retry replays the rerun's receipt"
        );
        assert_eq!(pass.finished.len(), 1, "the completer finished order-2");
        assert!(replay_2.starts_with("order-2: charged ch_"), "{replay_2}");
        assert_eq!(charged, vec![1, 1], "one charge per order");
        for (id, reserved, shipped) in counts {
            assert_eq!((reserved, shipped), (1, 1), "{id}");
        }
        println!("check: ok");
    }
    match url.strip_prefix("sqlite://") {
        Some(path) => {
            let _ = std::fs::remove_file(path);
        }
        None => {
            for table in ["reservations", "shipments", "checkout_records"] {
                execute(format!("DROP TABLE {table}_{run}")).await?;
            }
            execute(format!(
                "DROP FUNCTION checkout_records_{run}_claim(bytea, bytea, bytea, int8, int8, text, text, int8), \
                 checkout_records_{run}_claim(bytea, bytea, bytea, int8, int8, text)"
            ))
            .await?;
        }
    }
    Ok(())
}
