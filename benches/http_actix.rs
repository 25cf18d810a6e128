//! What the layer costs as actix-web middleware, over real HTTP on loopback: a first `POST`
//! (claim, handler, store) and a replayed `POST`, against the same route without the
//! middleware. Memory store; the two servers run on one actix worker each, in their own
//! thread; the client (reqwest, in process) on criterion's thread, one connection.
//!
//! `cargo bench --bench http_actix --features actix` prints the ratios at the end (from
//! criterion's medians).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use criterion::Criterion;
use idempotency::http::IdempotencyLayer;
use idempotency::{Idempotency, MemoryStore};
use serde::{Deserialize, Serialize};

const GROUP: &str = "http_actix";
const BODY: &str = r#"{"item":"book","quantity":2}"#;

#[derive(Deserialize)]
struct NewOrder {
    item: String,
    quantity: u32,
}

#[derive(Serialize)]
struct Order {
    id: String,
    item: String,
    quantity: u32,
}

async fn create_order(next: web::Data<AtomicU64>, new: web::Json<NewOrder>) -> HttpResponse {
    let new = new.into_inner();
    let id = format!("ord_{}", next.fetch_add(1, Ordering::Relaxed));
    HttpResponse::Created().json(Order {
        id,
        item: new.item,
        quantity: new.quantity,
    })
}

/// Starts an actix-web server on its own thread, with the middleware or without; returns the
/// route's URL.
fn server(layer: Option<IdempotencyLayer>) -> String {
    // One worker, a loopback port; `$app` builds the app.
    macro_rules! run {
        ($sender:expr, $app:expr) => {{
            let server = HttpServer::new($app)
                .workers(1)
                .disable_signals()
                .bind(("127.0.0.1", 0))
                .expect("bind a loopback port");
            $sender.send(server.addrs()[0]).expect("the bench waits");
            server.run().await.expect("the server runs");
        }};
    }
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let next = web::Data::new(AtomicU64::new(1));
            match layer {
                Some(layer) => run!(sender, move || App::new()
                    .app_data(next.clone())
                    .wrap(layer.clone())
                    .route("/orders", web::post().to(create_order))),
                None => run!(sender, move || App::new()
                    .app_data(next.clone())
                    .route("/orders", web::post().to(create_order))),
            }
        });
    });
    let addr = receiver
        .recv_timeout(Duration::from_secs(20))
        .expect("the server starts");
    format!("http://{addr}/orders")
}

async fn send_order(client: &reqwest::Client, url: &str, key: &str) {
    let response = client
        .post(url)
        .header("authorization", "Bearer bench-client")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .expect("the server answers");
    assert_eq!(response.status(), 201);
    black_box(response.bytes().await.expect("a body"));
}

fn median_ns(name: &str) -> Option<f64> {
    let path = format!("target/criterion/{GROUP}/{name}/new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn main() {
    let bare = server(None);
    let layered = server(Some(
        IdempotencyLayer::new(Idempotency::new(MemoryStore::new())).require_key(true),
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    runtime.block_on(send_order(&client, &layered, "replayed"));
    let keys = Arc::new(AtomicU64::new(0));

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group(GROUP);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("bare_route", |b| {
        b.to_async(&runtime)
            .iter(|| send_order(&client, &bare, "bare"))
    });
    group.bench_function("first_post", |b| {
        b.to_async(&runtime).iter(|| {
            let key = format!("bench-{}", keys.fetch_add(1, Ordering::Relaxed));
            let client = &client;
            let layered = &layered;
            async move { send_order(client, layered, &key).await }
        })
    });
    group.bench_function("replayed_post", |b| {
        b.to_async(&runtime)
            .iter(|| send_order(&client, &layered, "replayed"))
    });
    group.finish();
    criterion.final_summary();

    for name in ["bare_route", "first_post", "replayed_post"] {
        if let Some(ns) = median_ns(name) {
            println!("  {name:<14} {:>9.1} µs", ns / 1e3);
        }
    }
    for name in ["first_post", "replayed_post"] {
        if let (Some(layered), Some(bare)) = (median_ns(name), median_ns("bare_route")) {
            println!("  {name} / bare_route = {:.3}", layered / bare);
        }
    }
}
