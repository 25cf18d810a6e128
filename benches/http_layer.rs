//! What the `Idempotency-Key` layer costs over real HTTP on loopback: a first `POST` (claim,
//! handler, store) and a replayed `POST`, against the same route without the layer, at 1 and
//! 64 concurrent connections. Memory store; the server runs on its own runtime thread, the
//! client (reqwest, in process) on criterion's.
//!
//! `cargo bench --bench http_layer --features axum` prints the ratios at the end (from
//! criterion's medians).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::serve::ListenerExt as _;
use axum::{Json, Router};
use criterion::Criterion;
use idempotency::http::IdempotencyLayer;
use idempotency::{Idempotency, MemoryStore};
use serde::{Deserialize, Serialize};

const GROUP: &str = "http_layer";
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

async fn create_order(
    State(next): State<Arc<AtomicU64>>,
    Json(new): Json<NewOrder>,
) -> impl IntoResponse {
    let id = format!("ord_{}", next.fetch_add(1, Ordering::Relaxed));
    let order = Order {
        id,
        item: new.item,
        quantity: new.quantity,
    };
    (StatusCode::CREATED, Json(order))
}

fn routes() -> Router {
    Router::new()
        .route("/orders", post(create_order))
        .with_state(Arc::new(AtomicU64::new(1)))
}

/// Starts the bare and the layered server; returns their base URLs.
fn servers(runtime: &tokio::runtime::Runtime) -> (String, String) {
    runtime.block_on(async {
        let bare = routes();
        let layered = routes()
            .layer(IdempotencyLayer::new(Idempotency::new(MemoryStore::new())).require_key(true));
        let mut bases = Vec::new();
        for router in [bare, layered] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a loopback port");
            bases.push(format!(
                "http://{}/orders",
                listener.local_addr().expect("address")
            ));
            // As a production server would: no Nagle delay on small responses.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            tokio::spawn(async move { axum::serve(listener, router).await });
        }
        (bases.remove(0), bases.remove(0))
    })
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

fn benches(c: &mut Criterion, client_runtime: &tokio::runtime::Runtime, bare: &str, layered: &str) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    let keys = AtomicU64::new(0);
    let fresh_key = || format!("bench-{}", keys.fetch_add(1, Ordering::Relaxed));
    client_runtime.block_on(send_order(&client, layered, "replayed"));

    for connections in [1usize, 64] {
        let mut group = c.benchmark_group(format!("{GROUP}/c{connections}"));
        group.measurement_time(Duration::from_secs(8));
        let batch = |url: &'static str, key: Option<&'static str>| {
            let client = client.clone();
            let fresh_key = &fresh_key;
            move || {
                let client = client.clone();
                let keys: Vec<String> = (0..connections)
                    .map(|_| key.map_or_else(fresh_key, str::to_owned))
                    .collect();
                async move {
                    let requests = keys.iter().map(|key| send_order(&client, url, key));
                    futures::future::join_all(requests).await;
                }
            }
        };
        let bare: &'static str = String::leak(bare.to_owned());
        let layered: &'static str = String::leak(layered.to_owned());
        group.bench_function("bare_route", |b| {
            b.to_async(client_runtime).iter(batch(bare, None))
        });
        group.bench_function("first_post", |b| {
            b.to_async(client_runtime).iter(batch(layered, None))
        });
        group.bench_function("replayed_post", |b| {
            b.to_async(client_runtime)
                .iter(batch(layered, Some("replayed")))
        });
        group.finish();
    }
}

fn median_ns(group: &str, name: &str) -> Option<f64> {
    let path = format!("target/criterion/{GROUP}_{group}/{name}/new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn print_ratios() {
    for connections in [1, 64] {
        let group = format!("c{connections}");
        println!("\n{connections} connection(s), median per batch of {connections} request(s):");
        for name in ["bare_route", "first_post", "replayed_post"] {
            if let Some(ns) = median_ns(&group, name) {
                println!(
                    "  {name:<14} {:>9.1} µs  ({:.1} µs per request)",
                    ns / 1e3,
                    ns / 1e3 / connections as f64
                );
            }
        }
        for name in ["first_post", "replayed_post"] {
            if let (Some(layered), Some(bare)) =
                (median_ns(&group, name), median_ns(&group, "bare_route"))
            {
                println!("  {name} / bare_route = {:.3}", layered / bare);
            }
        }
    }
    println!("target: first_post / bare_route <= 1.1");
}

/// The same three cases interleaved: round after round, a short burst of each in turn, so that
/// load from other processes on a shared machine falls on all three alike. Bounded: 60 rounds.
fn paired(runtime: &tokio::runtime::Runtime, bare: &str, layered: &str) {
    const ROUNDS: usize = 60;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    let mut fresh = 0u64;
    for (connections, bursts) in [(1usize, 100usize), (64, 8)] {
        let mut samples: [Vec<f64>; 3] = Default::default();
        for round in 0..ROUNDS {
            for turn in 0..3 {
                let case = (round + turn) % 3;
                let url = if case == 0 { bare } else { layered };
                for _ in 0..bursts {
                    let keys: Vec<String> = (0..connections)
                        .map(|_| {
                            if case == 2 {
                                "replayed".to_owned()
                            } else {
                                fresh += 1;
                                format!("paired-{fresh}")
                            }
                        })
                        .collect();
                    let started = std::time::Instant::now();
                    runtime.block_on(futures::future::join_all(
                        keys.iter().map(|key| send_order(&client, url, key)),
                    ));
                    samples[case].push(started.elapsed().as_secs_f64() * 1e6);
                }
            }
        }
        let median = |values: &mut Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let [mut bare_us, mut first_us, mut replay_us] = samples;
        let (bare_us, first_us, replay_us) = (
            median(&mut bare_us),
            median(&mut first_us),
            median(&mut replay_us),
        );
        println!(
            "\npaired, {connections} connection(s), median per batch: bare_route {bare_us:.1} µs, first_post {first_us:.1} µs ({:.3}×), replayed_post {replay_us:.1} µs ({:.3}×)",
            first_us / bare_us,
            replay_us / bare_us
        );
    }
}

fn main() {
    // The servers get a thread of their own; the client runs on criterion's thread.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let (bare, layered) = servers(&server_runtime);
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion, &client_runtime, &bare, &layered);
    criterion.final_summary();
    print_ratios();
    paired(&client_runtime, &bare, &layered);
}
