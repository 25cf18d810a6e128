//! What a journaled step costs: first executions of a bare call (claim, body, complete)
//! against the same call run with `run_steps` and 1 or 4 steps (claim, the journal started,
//! one journal write per step, complete), on the memory store, Redis, PostgreSQL and SQLite,
//! each in one run on a current-thread runtime. Every iteration is a new key.
//!
//! ```sh
//! cargo bench --bench steps --features memory,redis,postgres,sqlite   # STEPS_BENCH=memory,redis,… to choose
//! ```
//!
//! Round trips (counted exactly in `tests/steps.rs`): bare 2; steps 3 + one per step. At the
//! end the ratios are printed from paired rounds that alternate the sides.

#[path = "support/paired.rs"]
mod paired;
use paired::paired;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::Criterion;
use idempotency::steps::Steps;
use idempotency::{Error, Fingerprint, Idempotency, Key, MemoryStore, RedisStore, SqlStore, Store};

static NEXT: AtomicU64 = AtomicU64::new(0);

fn next_key(ns: &str) -> (Key, Fingerprint) {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (
        Key::derive(ns.to_owned(), 1, &n).expect("key"),
        Fingerprint::of(&n).expect("fingerprint"),
    )
}

async fn bare(exec: &Idempotency, ns: &str) -> u64 {
    let (key, fingerprint) = next_key(ns);
    exec.call(key, fingerprint)
        .run(|| async { Ok::<_, Error>(7u64) })
        .await
        .expect("bare")
}

async fn stepped(exec: &Idempotency, ns: &str, steps: usize) -> u64 {
    let (key, fingerprint) = next_key(ns);
    exec.call(key, fingerprint)
        .run_steps(steps as u64, move |count: u64, journal: Steps| async move {
            let mut total = 0;
            for n in 0..count {
                total += journal
                    .step(NAMES[n as usize], || async move { Ok::<_, Error>(n) })
                    .await?;
            }
            Ok::<_, Error>(total)
        })
        .await
        .expect("steps")
}

const NAMES: [&str; 4] = ["reserve", "charge", "ship", "receipt"];

fn bench_store(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    store: Arc<dyn Store>,
) {
    // Records and journals expire a minute after the run: a bench leaves no keys behind for
    // long (Redis keeps what it is given for its TTL).
    let exec = Idempotency::builder(store)
        .ttl(Duration::from_secs(60))
        .build();
    let ns = format!("bench.steps.{name}.{}", std::process::id());
    let mut group = c.benchmark_group(format!("steps/{name}"));
    group.bench_function("bare_first_execution", |b| {
        b.to_async(runtime).iter(|| bare(&exec, &ns))
    });
    group.bench_function("one_step", |b| {
        b.to_async(runtime).iter(|| stepped(&exec, &ns, 1))
    });
    group.bench_function("four_steps", |b| {
        b.to_async(runtime).iter(|| stepped(&exec, &ns, 4))
    });
    group.finish();
    let calls = if name == "memory" { 2000 } else { 50 };
    let one = paired(
        runtime,
        40,
        calls,
        || stepped(&exec, &ns, 1),
        || bare(&exec, &ns),
    );
    let four = paired(
        runtime,
        40,
        calls,
        || stepped(&exec, &ns, 4),
        || bare(&exec, &ns),
    );
    println!("{name}: paired median [quartiles], first executions");
    println!(
        "  one step   / bare call = {:.2} [{:.2} {:.2}]  (round trips 4 / 2)",
        one.1, one.0, one.2
    );
    println!(
        "  four steps / bare call = {:.2} [{:.2} {:.2}]  (round trips 7 / 2)",
        four.1, four.0, four.2
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut criterion = Criterion::default().configure_from_args();
    let only = std::env::var("STEPS_BENCH").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|n| n.trim() == name);

    if wanted("memory") {
        bench_store(
            &mut criterion,
            &runtime,
            "memory",
            Arc::new(MemoryStore::new()),
        );
    }
    if wanted("redis") {
        let url =
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let connection = runtime.block_on(async {
            let client = idempotency::redis::Client::open(url.as_str())?;
            idempotency::redis::aio::ConnectionManager::new(client).await
        });
        match connection {
            Ok(connection) => {
                let store = RedisStore::builder(connection)
                    .prefix(format!("bench-steps-{}:", std::process::id()))
                    .build()
                    .expect("prefix");
                bench_store(&mut criterion, &runtime, "redis", Arc::new(store));
            }
            Err(error) => println!("SKIPPED redis ({url}): {error}"),
        }
    }
    if wanted("postgres") {
        let url = std::env::var("POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        match runtime.block_on(idempotency::sqlx::PgPool::connect(&url)) {
            Ok(pool) => {
                let table = format!("bench_steps_{}", std::process::id());
                let store = SqlStore::builder(pool.clone())
                    .table(table.as_str())
                    .build()
                    .expect("store");
                runtime.block_on(store.migrate()).expect("migrate");
                bench_store(&mut criterion, &runtime, "postgres", Arc::new(store));
                runtime.block_on(async {
                    for drop in [
                        format!("DROP TABLE {table}"),
                        format!("DROP FUNCTION {table}_claim(bytea, bytea, bytea, int8, int8, text, text, int8), {table}_claim(bytea, bytea, bytea, int8, int8, text)"),
                    ] {
                        let _ = idempotency::sqlx::query(&drop).execute(&pool).await;
                    }
                });
            }
            Err(error) => println!("SKIPPED postgres ({url}): {error}"),
        }
    }
    if wanted("sqlite") {
        let path = std::env::temp_dir().join(format!("bench-steps-{}.sqlite", std::process::id()));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = runtime
            .block_on(idempotency::sqlx::SqlitePool::connect(&url))
            .expect("sqlite");
        runtime
            .block_on(idempotency::sqlx::query("PRAGMA journal_mode = WAL").execute(&pool))
            .expect("wal");
        let store = SqlStore::builder(pool).build().expect("store");
        runtime.block_on(store.migrate()).expect("migrate");
        bench_store(&mut criterion, &runtime, "sqlite", Arc::new(store));
        let _ = std::fs::remove_file(path);
    }
    criterion.final_summary();
}
