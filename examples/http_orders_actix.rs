//! The orders API of `http_orders.rs` on actix-web: `POST /orders` is idempotent through the
//! same `IdempotencyLayer`, wrapped as actix-web middleware.
//!
//! ```sh
//! cargo run --example http_orders_actix --features actix   # listens on 127.0.0.1:$PORT (3000)
//! ```
//!
//! * `POST /orders` with `Idempotency-Key` and a JSON body `{"item": "book", "quantity": 2}`:
//!   `201 Created` with the order. The same key and body again: the same `201` and order,
//!   marked `Idempotent-Replayed: true`. The same key with another body: `422`. No key: `400`.
//!   Errors are `application/problem+json`.
//! * Every `POST` names its client with `Authorization: Bearer <token>`; without it: `400`.
//! * `GET /orders/{id}`: the order, or `404`.
//!
//! `scripts/http-orders-smoke.sh` sends it the same requests as the axum example.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpResponse, HttpServer, web};
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

async fn create_order(orders: web::Data<Orders>, new: web::Json<NewOrder>) -> HttpResponse {
    let new = new.into_inner();
    if new.quantity == 0 {
        return HttpResponse::UnprocessableEntity().body("`quantity` must be at least 1");
    }
    let created_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
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
    HttpResponse::Created()
        .insert_header(("location", format!("/orders/{id}")))
        .json(order)
}

async fn read_order(orders: web::Data<Orders>, id: web::Path<String>) -> HttpResponse {
    let id = id.into_inner();
    let order = orders
        .by_id
        .lock()
        .ok()
        .and_then(|by_id| by_id.get(&id).cloned());
    match order {
        Some(order) => HttpResponse::Ok().json(order),
        None => HttpResponse::NotFound().body(format!("no order `{id}`")),
    }
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let idempotency = Idempotency::new(MemoryStore::new());
    // POST and PATCH need an `Idempotency-Key`; keys are kept per client, named by the bearer
    // token (see `http_orders.rs` for why).
    let layer = IdempotencyLayer::new(idempotency.clone())
        .require_key(true)
        .scope(ClientScope::header(http::header::AUTHORIZATION));
    let orders = web::Data::new(Orders::default());

    let port = match std::env::var("PORT") {
        Ok(port) => port
            .parse::<u16>()
            .map_err(|_| format!("PORT must be a port number, not `{port}`"))?,
        Err(_) => 3000,
    };
    let server = HttpServer::new(move || {
        App::new()
            .app_data(orders.clone())
            .wrap(layer.clone())
            .route("/orders", web::post().to(create_order))
            .route("/orders/{id}", web::get().to(read_order))
    })
    .workers(2)
    .bind(("127.0.0.1", port))?;
    println!(
        "orders API (actix-web) on http://{} (memory store); Ctrl-C stops it",
        server.addrs()[0]
    );
    server.run().await?;
    // Handlers of clients that hung up may still run: wait for them before the process ends.
    idempotency
        .shutdown(std::time::Duration::from_secs(10))
        .await?;
    Ok(())
}
