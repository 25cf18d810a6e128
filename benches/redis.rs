//! What `#[idempotent]` on the Redis store costs against raw Redis commands on the same
//! connection, measured in one run:
//!
//! * replay latency vs one raw `GET` of the same bytes (target ratio ≤ 1.15);
//! * replay throughput with 64 concurrent calls vs 64 concurrent `GET`s (target ≥ 0.8);
//! * first executions vs a raw `SET NX` + `SET` (the two round trips a hand-rolled claim and
//!   store take; target ≥ 0.8 of their throughput).
//!
//! The function borrows its request, so neither side of a ratio builds an argument (a raw
//! command takes none; by value, each replay would also clone the request: ~0.16 µs).
//!
//! `cargo bench --bench redis --features redis` against `REDIS_URL` (default
//! `redis://127.0.0.1:6379`). At the end it prints the ratios twice: from criterion's medians,
//! and from paired rounds that alternate the two sides, which load from other processes on a
//! shared machine skews much less. Without Redis it prints SKIPPED and measures nothing.

#[path = "support/paired.rs"]
mod paired;
use paired::paired;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::Criterion;
use futures::future::join_all;
use idempotency::ClaimRequest;
use idempotency::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use idempotency::redis::{self, AsyncCommands as _};
use idempotency::{Fingerprint, Idempotency, Key, RedisStore, Store as _, Token, idempotent};
use serde::{Deserialize, Serialize};

const GROUP: &str = "redis";
const CONCURRENCY: usize = 64;

#[derive(Debug, Clone, Serialize)]
struct ChargeRequest {
    order_id: String,
    amount_cents: u64,
    currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    charge_id: String,
    amount_cents: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PaymentError(String);

impl From<idempotency::Error> for PaymentError {
    fn from(error: idempotency::Error) -> Self {
        PaymentError(error.to_string())
    }
}

fn request(n: u64) -> ChargeRequest {
    ChargeRequest {
        order_id: format!("order-{n}"),
        amount_cents: 1999,
        currency: "EUR".into(),
    }
}

struct Payments {
    idempotency: Idempotency,
}

impl Payments {
    #[idempotent(store = self.idempotency, key = req.order_id, name = "bench.charge", ttl = "2m")]
    async fn charge(&self, req: &ChargeRequest) -> Result<Receipt, PaymentError> {
        Ok(Receipt {
            charge_id: format!("ch_{}", req.amount_cents),
            amount_cents: req.amount_cents,
        })
    }
}

/// The same function as a free function: `#[idempotent]` replays a `Clone` output of a free
/// function from the value a local cache entry (or the memory store) keeps, instead of decoding.
/// Its own name: its record is its own (the first call runs it, and caches its output).
#[idempotent(store = payments.idempotency, key = req.order_id, name = "bench.charge.fn", ttl = "2m", skip(payments))]
async fn charge_fn(payments: &Payments, req: &ChargeRequest) -> Result<Receipt, PaymentError> {
    Ok(Receipt {
        charge_id: format!("ch_{}", req.amount_cents),
        amount_cents: req.amount_cents,
    })
}

struct Setup {
    payments: &'static Payments,
    /// The same function on an executor with a local replay cache in front of the store.
    cached: &'static Payments,
    /// The same function on the in-process memory store (the default store).
    in_memory: &'static Payments,
    store: RedisStore,
    connection: ConnectionManager,
    /// A completed record: replays read it; raw `GET`s read its Redis key, the same bytes.
    replayed: ChargeRequest,
    record_key: String,
    record: Vec<u8>,
    raw_prefix: String,
}

async fn setup() -> Result<Setup, String> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url.as_str()).map_err(|e| format!("{url}: {e}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let connection = ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let prefix = format!("idempotency-bench:{}:", Token::random());
    let store = RedisStore::builder(connection.clone())
        .prefix(prefix.as_str())
        .response_timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    store.load_scripts().await.map_err(|e| e.to_string())?;
    let payments: &'static Payments = Box::leak(Box::new(Payments {
        idempotency: Idempotency::new(store.clone()),
    }));
    let cached: &'static Payments = Box::leak(Box::new(Payments {
        idempotency: Idempotency::builder(store.clone())
            .local_cache(64 << 20, Duration::from_secs(60))
            .build(),
    }));
    let in_memory: &'static Payments = Box::leak(Box::new(Payments {
        idempotency: Idempotency::new(idempotency::MemoryStore::new()),
    }));
    let replayed = request(1);
    for payments in [payments, cached, in_memory] {
        payments
            .charge(&replayed)
            .await
            .map_err(|e| e.to_string())?;
    }
    let key = Key::derive("bench.charge", 1, &replayed.order_id).map_err(|e| e.to_string())?;
    let record_key = store.redis_key(&key);
    let mut raw = connection.clone();
    let record: Vec<u8> = raw.get(&record_key).await.map_err(|e| e.to_string())?;
    Ok(Setup {
        payments,
        cached,
        in_memory,
        store,
        connection,
        replayed,
        record_key,
        record,
        raw_prefix: format!("{prefix}raw:"),
    })
}

fn benches(c: &mut Criterion, runtime: &tokio::runtime::Runtime, setup: &Setup) {
    let mut group = c.benchmark_group(GROUP);
    let payments = setup.payments;

    group.bench_function("raw_get", |b| {
        b.to_async(runtime).iter(|| {
            let mut connection = setup.connection.clone();
            async move {
                let value: Vec<u8> = connection.get(&setup.record_key).await.expect("GET");
                black_box(value)
            }
        })
    });
    group.bench_function("replay", |b| {
        b.to_async(runtime)
            .iter(|| async { black_box(payments.charge(&setup.replayed).await.expect("replay")) })
    });

    let (cached, in_memory) = (setup.cached, setup.in_memory);
    group.bench_function("replay_local_cache", |b| {
        b.to_async(runtime)
            .iter(|| async { black_box(cached.charge(&setup.replayed).await.expect("replay")) })
    });
    group.bench_function("replay_memory_store", |b| {
        b.to_async(runtime)
            .iter(|| async { black_box(in_memory.charge(&setup.replayed).await.expect("replay")) })
    });

    group.bench_function("raw_get_x64", |b| {
        b.to_async(runtime).iter(|| {
            join_all((0..CONCURRENCY).map(|_| {
                let mut connection = setup.connection.clone();
                async move {
                    let value: Vec<u8> = connection.get(&setup.record_key).await.expect("GET");
                    black_box(value)
                }
            }))
        })
    });
    group.bench_function("replay_x64", |b| {
        b.to_async(runtime).iter(|| {
            join_all((0..CONCURRENCY).map(|_| async {
                black_box(payments.charge(&setup.replayed).await.expect("replay"))
            }))
        })
    });

    group.bench_function("replay_local_cache_kept", |b| {
        b.to_async(runtime)
            .iter(|| async { black_box(charge_fn(cached, &setup.replayed).await.expect("replay")) })
    });
    group.bench_function("replay_local_cache_kept_x64", |b| {
        b.to_async(runtime).iter(|| {
            join_all((0..CONCURRENCY).map(|_| async {
                black_box(charge_fn(cached, &setup.replayed).await.expect("replay"))
            }))
        })
    });
    group.bench_function("replay_local_cache_x64", |b| {
        b.to_async(runtime).iter(|| {
            join_all((0..CONCURRENCY).map(|_| async {
                black_box(cached.charge(&setup.replayed).await.expect("replay"))
            }))
        })
    });

    let next = AtomicU64::new(0);
    let header = &setup.record[..69];
    group.bench_function("raw_set_nx_then_set", |b| {
        b.to_async(runtime).iter(|| {
            let key = format!(
                "{}{}",
                setup.raw_prefix,
                next.fetch_add(1, Ordering::Relaxed)
            );
            let mut connection = setup.connection.clone();
            async move {
                black_box(set_nx_then_set(&mut connection, &key, header, &setup.record).await)
            }
        })
    });
    let next = AtomicU64::new(1_000_000);
    group.bench_function("first_execution", |b| {
        b.to_async(runtime).iter(|| {
            let req = request(next.fetch_add(1, Ordering::Relaxed));
            async move { black_box(payments.charge(&req).await.expect("first execution")) }
        })
    });
    group.finish();
}

fn median_ns(name: &str) -> Option<f64> {
    let path = format!("target/criterion/{GROUP}/{name}/new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn print_ratios() {
    let names = [
        "raw_get",
        "replay",
        "replay_local_cache",
        "replay_memory_store",
        "raw_get_x64",
        "replay_x64",
        "replay_local_cache_x64",
        "replay_local_cache_kept",
        "replay_local_cache_kept_x64",
        "raw_set_nx_then_set",
        "first_execution",
    ];
    println!("\nmedians:");
    for name in names {
        if let Some(ns) = median_ns(name) {
            println!("  {name:<22} {:>9.1} µs", ns / 1000.0);
        }
    }
    if let (Some(get), Some(local), Some(memory)) = (
        median_ns("raw_get"),
        median_ns("replay_local_cache"),
        median_ns("replay_memory_store"),
    ) {
        println!("ratios of the local replay cache:");
        println!(
            "  replay from the local cache / raw GET       = {:.3}  (no round trip)",
            local / get
        );
        println!(
            "  replay from the local cache / memory store  = {:.3}  (target <= 1.5)",
            local / memory
        );
    }
    for (case, what) in [
        ("replay_local_cache_x64", "a method (decodes)"),
        ("replay_local_cache_kept_x64", "a free function (clones)"),
    ] {
        if let (Some(get64), Some(local64)) = (median_ns("raw_get_x64"), median_ns(case)) {
            println!(
                "  local-cache replay throughput / raw GET throughput, x64, {what} = {:.1}  (target >= 5)",
                get64 / local64
            );
        }
    }
    let (Some(get), Some(replay), Some(get64), Some(replay64), Some(set), Some(first)) = (
        median_ns("raw_get"),
        median_ns("replay"),
        median_ns("raw_get_x64"),
        median_ns("replay_x64"),
        median_ns("raw_set_nx_then_set"),
        median_ns("first_execution"),
    ) else {
        println!("(run every case of the group to get the ratios)");
        return;
    };
    let per_second = |ns: f64, calls: usize| calls as f64 * 1e9 / ns;
    println!("ratios:");
    println!(
        "  replay latency / raw GET latency             = {:.3}  (target <= 1.15)",
        replay / get
    );
    println!(
        "  replay throughput / raw GET throughput, x64  = {:.3}  (target >= 0.8; {:.0} vs {:.0} calls/s)",
        get64 / replay64,
        per_second(replay64, CONCURRENCY),
        per_second(get64, CONCURRENCY)
    );
    println!(
        "  first executions / raw SET NX + SET          = {:.3}  (target >= 0.8; {:.0} vs {:.0} /s)",
        set / first,
        per_second(first, 1),
        per_second(set, 1)
    );
}

fn print_paired(runtime: &tokio::runtime::Runtime, setup: &Setup) {
    let payments = setup.payments;
    let get = || {
        let mut connection = setup.connection.clone();
        async move {
            let value: Vec<u8> = connection.get(&setup.record_key).await.expect("GET");
            value
        }
    };
    let replay = || async { payments.charge(&setup.replayed).await.expect("replay") };
    println!("\npaired rounds (alternating, median [quartiles]):");
    let (low, median, high) = paired(runtime, 200, 50, replay, get);
    println!(
        "  replay latency / raw GET latency             = {median:.3} [{low:.3} {high:.3}]  (target <= 1.15)"
    );
    let (low, median, high) = paired(
        runtime,
        100,
        4,
        || join_all((0..CONCURRENCY).map(|_| get())),
        || join_all((0..CONCURRENCY).map(|_| replay())),
    );
    println!(
        "  replay throughput / raw GET throughput, x64  = {median:.3} [{low:.3} {high:.3}]  (target >= 0.8)"
    );
    // Where the replay's time goes: the store's claim alone (no executor: no hashing of the
    // arguments, no decoding of the output) against the same GETs.
    let key = Key::derive("bench.charge", 1, &setup.replayed.order_id).expect("key");
    let fingerprint = Fingerprint::of(&(&setup.replayed,)).expect("fingerprint");
    let claim = || async {
        setup
            .store
            .claim(
                &key,
                ClaimRequest::new(fingerprint, Duration::from_secs(30)),
            )
            .await
            .expect("claim")
    };
    let (low, median, high) = paired(runtime, 200, 50, claim, get);
    println!("  (store.claim alone latency / raw GET)        = {median:.3} [{low:.3} {high:.3}]");
    let (low, median, high) = paired(
        runtime,
        100,
        4,
        || join_all((0..CONCURRENCY).map(|_| get())),
        || join_all((0..CONCURRENCY).map(|_| claim())),
    );
    println!("  (store.claim alone throughput / raw GET, x64) = {median:.3} [{low:.3} {high:.3}]");
    let next = AtomicU64::new(2_000_000);
    let raw_next = AtomicU64::new(2_000_000);
    let header = &setup.record[..69];
    let (low, median, high) = paired(
        runtime,
        200,
        20,
        || {
            let key = format!(
                "{}{}",
                setup.raw_prefix,
                raw_next.fetch_add(1, Ordering::Relaxed)
            );
            let mut connection = setup.connection.clone();
            async move { set_nx_then_set(&mut connection, &key, header, &setup.record).await }
        },
        || {
            let req = request(next.fetch_add(1, Ordering::Relaxed));
            async move { payments.charge(&req).await.expect("first execution") }
        },
    );
    println!(
        "  first executions / raw SET NX + SET          = {median:.3} [{low:.3} {high:.3}]  (target >= 0.8)"
    );
}

async fn set_nx_then_set(
    connection: &mut ConnectionManager,
    key: &str,
    header: &[u8],
    record: &[u8],
) -> bool {
    let claimed = redis::cmd("SET")
        .arg(key)
        .arg(header)
        .arg("NX")
        .arg("PX")
        .arg(120_000)
        .query_async::<Option<String>>(connection)
        .await
        .expect("SET NX")
        .is_some();
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(record)
        .arg("PX")
        .arg(120_000)
        .query_async(connection)
        .await
        .expect("SET");
    claimed
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let setup = match runtime.block_on(setup()) {
        Ok(setup) => setup,
        Err(error) => {
            println!("SKIPPED redis bench: cannot reach Redis: {error} (set REDIS_URL)");
            return;
        }
    };
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion, &runtime, &setup);
    criterion.final_summary();
    print_ratios();
    print_paired(&runtime, &setup);
}
