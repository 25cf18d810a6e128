//! An orders API whose `POST /orders` is idempotent: a client that retries with the same
//! `Idempotency-Key` gets the first order back instead of creating a second one.
//!
//! ```sh
//! cargo run --example http_orders --features http      # listens on 127.0.0.1:$PORT (3000)
//! ```
//!
//! * `POST /orders` with `Idempotency-Key` and a JSON body `{"item": "book", "quantity": 2}`:
//!   `201 Created` with the order and its server-generated id. The same key and body again:
//!   the same `201` and order, marked `Idempotent-Replayed: true`. The same key with another
//!   body: `422`. No key: `400`. Errors are `application/problem+json`.
//! * Every `POST` names its client with `Authorization: Bearer <token>`; without it: `400`
//!   (`unidentified-client`).
//! * `GET /orders/{id}`: the order, or `404`.
//!
//! The idempotency records live in the in-process memory store; with `REDIS_URL` (and the
//! `redis` feature: `--features http,redis`) in Redis; with `POSTGRES_URL` (and the `postgres`
//! feature: `--features http,postgres`) in a PostgreSQL table, created at start-up.
//!
//! Keys are scoped per client by the `Authorization` header, chosen in `main` (see there why).
//!
//! With the `metrics` feature, `GET /metrics` shows the layer's counters (replays, executions,
//! key reuses…) in Prometheus's text format.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use idempotency::http::{ClientScope, IdempotencyLayer};
use idempotency::{Idempotency, MemoryStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
struct NewOrder {
    item: String,
    quantity: u32,
}

#[derive(Debug, Clone, Serialize)]
struct Order {
    id: String,
    item: String,
    quantity: u32,
    created_at: u64,
}

#[derive(Clone, Default)]
struct Orders {
    by_id: Arc<Mutex<HashMap<String, Order>>>,
    next: Arc<AtomicU64>,
}

async fn create_order(State(orders): State<Orders>, Json(new): Json<NewOrder>) -> Response {
    if new.quantity == 0 {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "`quantity` must be at least 1",
        )
            .into_response();
    }
    let created_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    // Unique across restarts of the example (a persistent store may replay older orders).
    let sequence = orders.next.fetch_add(1, Ordering::Relaxed) + 1;
    let id = format!("ord_{created_at:x}{sequence:04}");
    let order = Order {
        id: id.clone(),
        item: new.item,
        quantity: new.quantity,
        created_at,
    };
    println!("created {id}: {} × {}", order.quantity, order.item);
    if let Ok(mut by_id) = orders.by_id.lock() {
        by_id.insert(id.clone(), order.clone());
    }
    (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/orders/{id}"))],
        Json(order),
    )
        .into_response()
}

async fn read_order(State(orders): State<Orders>, Path(id): Path<String>) -> Response {
    let order = orders
        .by_id
        .lock()
        .ok()
        .and_then(|by_id| by_id.get(&id).cloned());
    match order {
        Some(order) => Json(order).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no order `{id}`")).into_response(),
    }
}

/// The store: the in-process memory store, PostgreSQL when `POSTGRES_URL` is set (built with
/// the `postgres` feature), or Redis when `REDIS_URL` is set (built with the `redis` feature).
/// A URL the build cannot use is refused, never silently ignored.
async fn idempotency() -> Result<(Idempotency, &'static str), Box<dyn std::error::Error>> {
    if let Ok(url) = std::env::var("POSTGRES_URL") {
        #[cfg(feature = "postgres")]
        {
            let pool = idempotency::sqlx::postgres::PgPoolOptions::new()
                .test_before_acquire(false)
                .acquire_timeout(std::time::Duration::from_secs(2))
                .connect(&url)
                .await?;
            let store = idempotency::PostgresStore::builder(pool)
                .table("http_orders_idempotency")
                .build()?;
            store.migrate().await?;
            return Ok((Idempotency::new(store), "PostgreSQL"));
        }
        #[cfg(not(feature = "postgres"))]
        return Err(format!(
            "POSTGRES_URL is set ({url}), but the example was built without PostgreSQL: add `--features http,postgres`"
        )
        .into());
    }
    if let Ok(url) = std::env::var("REDIS_URL") {
        #[cfg(feature = "redis")]
        {
            let client = idempotency::redis::Client::open(url)?;
            let connection = idempotency::redis::aio::ConnectionManager::new(client).await?;
            let store = idempotency::RedisStore::new(connection);
            return Ok((Idempotency::new(store), "Redis"));
        }
        #[cfg(not(feature = "redis"))]
        return Err(format!(
            "REDIS_URL is set ({url}), but the example was built without Redis: add `--features http,redis`"
        )
        .into());
    }
    Ok((Idempotency::new(MemoryStore::new()), "memory"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (idempotency, store) = idempotency().await?;
    let app = Router::new();
    // The idempotency metrics for Prometheus to scrape (feature `metrics`).
    #[cfg(feature = "metrics")]
    let app = {
        let prometheus =
            metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
        app.route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        )
    };
    let app = app
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(read_order))
        .with_state(Orders::default())
        // POST and PATCH need an `Idempotency-Key`; GET passes through.
        //
        // Whose key is it: an order belongs to the client that sent it, and a replay carries
        // that client's order, so keys are kept per client. This API's clients send a bearer
        // token (a real service checks it in an authentication layer outside this one), so the
        // token names the client; a request without one is refused (`400`), never served
        // another client's order. `ClientScope::global()` would let any client that learns a
        // key read its order; an app that authenticates by cookie would use
        // `ClientScope::cookie("session")`.
        .layer(
            IdempotencyLayer::new(idempotency.clone())
                .require_key(true)
                .scope(ClientScope::header(header::AUTHORIZATION)),
        );

    let port = match std::env::var("PORT") {
        Ok(port) => port
            .parse::<u16>()
            .map_err(|_| format!("PORT must be a port number, not `{port}`"))?,
        Err(_) => 3000,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "orders API on http://{} ({store} store); Ctrl-C stops it",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // The server stopped taking requests. Handlers of clients that hung up may still run, and
    // responses may still be on their way to the store: wait for them before the runtime
    // ends, or a retry would run the handler again.
    idempotency
        .shutdown(std::time::Duration::from_secs(10))
        .await?;
    Ok(())
}
