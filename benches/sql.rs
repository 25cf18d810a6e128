//! What `#[idempotent]` on the SQL stores costs against raw statements on the same pool and
//! the same table layout, measured in one run for each database:
//!
//! * replay latency vs one raw prepared `SELECT fingerprint, output … WHERE id = ?` by primary
//!   key, reading the same row (target ratio ≤ 1.2);
//! * first executions vs a raw `INSERT` + `UPDATE` of such a row (the two statements a
//!   hand-rolled claim and completion take; target ≥ 0.8 of their throughput).
//!
//! ```sh
//! cargo bench --bench sql --features postgres,mysql,sqlite   # SQL_BENCH=postgres,mysql,sqlite (default all)
//! ```
//!
//! PostgreSQL from `POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`), MariaDB
//! from `MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`), SQLite on a WAL file in the
//! temp directory. A database that cannot be reached is reported SKIPPED. At the end the
//! ratios are printed twice: from criterion's medians, and from paired rounds that alternate
//! the two sides (less skewed by load from other processes on a shared machine).

#[path = "support/paired.rs"]
mod paired;
use paired::paired;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::Criterion;
use idempotency::ClaimRequest;
use idempotency::sqlx::{self, Database, Pool};
use idempotency::{
    Fingerprint, Idempotency, Key, SqlDialect, SqlStore, Store as _, Token, idempotent,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

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
    #[idempotent(store = self.idempotency, key = req.order_id, name = "bench.sql.charge")]
    async fn charge(&self, req: ChargeRequest) -> Result<Receipt, PaymentError> {
        Ok(Receipt {
            charge_id: format!("ch_{}", req.amount_cents),
            amount_cents: req.amount_cents,
        })
    }
}

/// The raw statements of one database, on a copy of the store's table.
struct Raw {
    select: String,
    insert: String,
    update: String,
    copy: String,
    drop: Vec<String>,
}

/// What one database's benches need.
struct Setup<DB: SqlDialect> {
    group: &'static str,
    pool: Pool<DB>,
    payments: &'static Payments,
    /// The same calls on a store that claims by inserting first (MySQL, SQLite only).
    insert_first: Option<&'static Payments>,
    /// The same calls with the local replay cache in front of the store.
    cached: &'static Payments,
    /// The same calls on the memory store.
    in_memory: &'static Payments,
    /// The store under `payments`, to time its claim alone.
    store: SqlStore<DB>,
    /// The row id of the replayed key, as the store computes it (SHA-256 of the key's text).
    replayed_id: Vec<u8>,
    raw: Raw,
}

fn row_id(key: &Key) -> Vec<u8> {
    Sha256::digest(key.to_string().as_bytes()).to_vec()
}

fn suffix() -> String {
    Token::random().to_string()[..10].to_owned()
}

/// Runs a database's cases. A macro, because sqlx's executor bounds are per database.
macro_rules! bench_database {
    ($c:expr, $runtime:expr, $setup:expr) => {{
        let setup = $setup;
        let runtime = $runtime;
        let payments = setup.payments;
        runtime.block_on(async {
            sqlx::query(&setup.raw.copy)
                .bind(&setup.replayed_id[..])
                .execute(&setup.pool)
                .await
                .expect("copy the record")
        });
        let mut group = $c.benchmark_group(setup.group);
        group
            .sample_size(60)
            .measurement_time(Duration::from_secs(6));
        group.bench_function("raw_select", |b| {
            b.to_async(runtime).iter(|| async {
                let row: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(&setup.raw.select)
                    .bind(&setup.replayed_id[..])
                    .fetch_optional(&setup.pool)
                    .await
                    .expect("SELECT");
                black_box(row)
            })
        });
        group.bench_function("replay", |b| {
            b.to_async(runtime)
                .iter(|| async { black_box(payments.charge(request(0)).await.expect("replay")) })
        });
        let (cached, in_memory) = (setup.cached, setup.in_memory);
        group.bench_function("replay_local_cache", |b| {
            b.to_async(runtime)
                .iter(|| async { black_box(cached.charge(request(0)).await.expect("replay")) })
        });
        group.bench_function("replay_memory_store", |b| {
            b.to_async(runtime)
                .iter(|| async { black_box(in_memory.charge(request(0)).await.expect("replay")) })
        });
        group.bench_function("raw_select_x64", |b| {
            b.to_async(runtime).iter(|| {
                futures::future::join_all((0..64).map(|_| async {
                    let row: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(&setup.raw.select)
                        .bind(&setup.replayed_id[..])
                        .fetch_optional(&setup.pool)
                        .await
                        .expect("SELECT");
                    black_box(row)
                }))
            })
        });
        group.bench_function("replay_local_cache_x64", |b| {
            b.to_async(runtime).iter(|| {
                futures::future::join_all((0..64).map(|_| async {
                    black_box(cached.charge(request(0)).await.expect("replay"))
                }))
            })
        });
        let next = AtomicU64::new(1);
        group.bench_function("raw_insert_update", |b| {
            b.to_async(runtime).iter(|| {
                let n = next.fetch_add(1, Ordering::Relaxed);
                async move { black_box(insert_update!(setup, n)) }
            })
        });
        let next = AtomicU64::new(1);
        group.bench_function("first_execution", |b| {
            b.to_async(runtime).iter(|| {
                let req = request(next.fetch_add(1, Ordering::Relaxed));
                async move { black_box(payments.charge(req).await.expect("first execution")) }
            })
        });
        if let Some(insert_first) = setup.insert_first {
            group.bench_function("replay_insert_first", |b| {
                b.to_async(runtime).iter(|| async {
                    black_box(insert_first.charge(request(0)).await.expect("replay"))
                })
            });
            let next = AtomicU64::new(20_000_000);
            group.bench_function("first_execution_insert_first", |b| {
                b.to_async(runtime).iter(|| {
                    let req = request(next.fetch_add(1, Ordering::Relaxed));
                    async move {
                        black_box(insert_first.charge(req).await.expect("first execution"))
                    }
                })
            });
        }
        group.finish();

        println!("\n{} paired rounds (alternating, median [quartiles]):", setup.group);
        let select = || async {
            let row: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(&setup.raw.select)
                .bind(&setup.replayed_id[..])
                .fetch_optional(&setup.pool)
                .await
                .expect("SELECT");
            row
        };
        let replay = || async { payments.charge(request(0)).await.expect("replay") };
        let (low, median, high) = paired(runtime, 200, 20, replay, select);
        println!(
            "  replay latency / raw SELECT latency        = {median:.3} [{low:.3} {high:.3}]  (target <= 1.2)"
        );
        // Where the replay's time goes: the store's claim alone (no executor: no hashing of
        // the arguments, no decoding of the output) against the same SELECT.
        let key = Key::derive("bench.sql.charge", 1, &request(0).order_id).expect("key");
        let fingerprint = Fingerprint::of(&(request(0),)).expect("fingerprint");
        let claim = || async {
            setup
                .store
                .claim(&key, ClaimRequest::new(fingerprint, Duration::from_secs(30)))
                .await
                .expect("claim")
        };
        let (low, median, high) = paired(runtime, 200, 20, claim, select);
        println!(
            "  (store.claim alone / raw SELECT)           = {median:.3} [{low:.3} {high:.3}]"
        );
        let raw_next = AtomicU64::new(10_000_000);
        let next = AtomicU64::new(10_000_000);
        let (low, median, high) = paired(
            runtime,
            100,
            10,
            || {
                let n = raw_next.fetch_add(1, Ordering::Relaxed);
                async move { insert_update!(setup, n) }
            },
            || {
                let req = request(next.fetch_add(1, Ordering::Relaxed));
                async move { payments.charge(req).await.expect("first execution") }
            },
        );
        println!(
            "  first executions / raw INSERT + UPDATE     = {median:.3} [{low:.3} {high:.3}]  (target >= 0.8)"
        );
        if let Some(insert_first) = setup.insert_first {
            let replay = || async { insert_first.charge(request(0)).await.expect("replay") };
            let (low, median, high) = paired(runtime, 200, 20, replay, select);
            println!(
                "  insert_first: replay / raw SELECT          = {median:.3} [{low:.3} {high:.3}]  (target <= 1.2)"
            );
            let raw_next = AtomicU64::new(30_000_000);
            let next = AtomicU64::new(30_000_000);
            let (low, median, high) = paired(
                runtime,
                100,
                10,
                || {
                    let n = raw_next.fetch_add(1, Ordering::Relaxed);
                    async move { insert_update!(setup, n) }
                },
                || {
                    let req = request(next.fetch_add(1, Ordering::Relaxed));
                    async move { insert_first.charge(req).await.expect("first execution") }
                },
            );
            println!(
                "  insert_first: first executions / raw       = {median:.3} [{low:.3} {high:.3}]  (target >= 0.8)"
            );
        }
        print_medians(setup.group);
        runtime.block_on(async {
            for statement in &setup.raw.drop {
                let _ = sqlx::query(statement).execute(&setup.pool).await;
            }
        });
    }};
}

/// A raw claim and completion of the row for `n`: the `INSERT` and the `UPDATE`.
macro_rules! insert_update {
    ($setup:expr, $n:expr) => {{
        let id = Sha256::digest(format!("raw-{}", $n).as_bytes()).to_vec();
        let token = Token::random();
        sqlx::query(&$setup.raw.insert)
            .bind(&id[..])
            .bind(&token.as_bytes()[..])
            .bind(&[7u8; 32][..])
            .execute(&$setup.pool)
            .await
            .expect("INSERT");
        sqlx::query(&$setup.raw.update)
            .bind(&br#"O{"charge_id":"ch_1999","amount_cents":1999}"#[..])
            .bind(&id[..])
            .execute(&$setup.pool)
            .await
            .expect("UPDATE")
            .rows_affected()
    }};
}

/// The store on `pool` in a fresh table, the replayed record written, and a copy of the
/// table for the raw statements.
async fn prepare<DB: SqlDialect>(
    group: &'static str,
    pool: Pool<DB>,
    raw: impl FnOnce(&str) -> Raw,
) -> Setup<DB> {
    let table = format!("bench_records_{}", suffix());
    let raw_table = format!("bench_raw_{}", suffix());
    let store = SqlStore::builder(pool.clone())
        .table(&table)
        .build()
        .expect("table");
    store.migrate().await.expect("migrate");
    // The raw statements run against a table of the same layout and indexes.
    SqlStore::builder(pool.clone())
        .table(&raw_table)
        .build()
        .expect("table")
        .migrate()
        .await
        .expect("migrate the raw table");
    let payments: &'static Payments = Box::leak(Box::new(Payments {
        idempotency: Idempotency::new(store.clone()),
    }));
    let insert_first = (DB::NAME != "PostgreSQL").then(|| {
        let store = SqlStore::builder(pool.clone())
            .table(&table)
            .insert_first(true)
            .build()
            .expect("table");
        let payments: &'static Payments = Box::leak(Box::new(Payments {
            idempotency: Idempotency::new(store),
        }));
        payments
    });
    payments.charge(request(0)).await.expect("first charge");
    let cached: &'static Payments = Box::leak(Box::new(Payments {
        idempotency: Idempotency::builder(store.clone())
            .local_cache(64 << 20, Duration::from_secs(60))
            .build(),
    }));
    let in_memory: &'static Payments = Box::leak(Box::new(Payments {
        idempotency: Idempotency::new(idempotency::MemoryStore::new()),
    }));
    // Each cached once: every replay timed after this is a repeat replay.
    cached.charge(request(0)).await.expect("a replay, cached");
    in_memory
        .charge(request(0))
        .await
        .expect("a first charge in memory");
    let key = Key::derive("bench.sql.charge", 1, &request(0).order_id).expect("key");
    let mut raw = raw(&raw_table);
    raw.drop = vec![
        format!("DROP TABLE IF EXISTS {table}"),
        format!("DROP TABLE IF EXISTS {raw_table}"),
    ];
    if DB::NAME == "PostgreSQL" {
        // Each store's table comes with its claim function.
        for name in [&table, &raw_table] {
            raw.drop
                .push(format!(
                    "DROP FUNCTION IF EXISTS \"{name}_claim\"(bytea, bytea, bytea, int8, int8, text, text, int8), \"{name}_claim\"(bytea, bytea, bytea, int8, int8, text)"
                ));
        }
    }
    // The raw SELECT reads the same bytes the replay reads: the record, copied across.
    raw.copy = format!(
        "INSERT INTO {raw_table} SELECT * FROM {table} WHERE id = {}",
        placeholder::<DB>()
    );
    Setup {
        group,
        pool,
        payments,
        insert_first,
        cached,
        in_memory,
        store,
        replayed_id: row_id(&key),
        raw,
    }
}

fn placeholder<DB: Database>() -> &'static str {
    if DB::NAME == "PostgreSQL" { "$1" } else { "?" }
}

fn median_ns(group: &str, name: &str) -> Option<f64> {
    let path = format!("target/criterion/{group}/{name}/new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn print_medians(group: &str) {
    println!("{group} medians:");
    for name in [
        "raw_select",
        "replay",
        "raw_insert_update",
        "first_execution",
        "replay_insert_first",
        "first_execution_insert_first",
        "replay_local_cache",
        "replay_memory_store",
        "raw_select_x64",
        "replay_local_cache_x64",
    ] {
        if let Some(ns) = median_ns(group, name) {
            println!("  {name:<30} {:>9.1} µs", ns / 1000.0);
        }
    }
    let medians = (
        median_ns(group, "raw_select"),
        median_ns(group, "replay"),
        median_ns(group, "raw_insert_update"),
        median_ns(group, "first_execution"),
    );
    let local = (
        median_ns(group, "raw_select"),
        median_ns(group, "replay_local_cache"),
        median_ns(group, "replay_memory_store"),
        median_ns(group, "raw_select_x64"),
        median_ns(group, "replay_local_cache_x64"),
    );
    if let (Some(select), Some(local), Some(memory), Some(select64), Some(local64)) = local {
        println!(
            "  local-cache replay / raw SELECT latency    = {:.4}  (no round trip)",
            local / select
        );
        println!(
            "  local-cache replay / memory-store replay   = {:.3}  (target <= 1.5)",
            local / memory
        );
        println!(
            "  local-cache replay throughput / raw SELECT throughput, x64 = {:.1}  (target >= 5)",
            select64 / local64
        );
    }
    if let (Some(select), Some(replay), Some(raw), Some(first)) = medians {
        println!(
            "  replay / raw SELECT (medians)             = {:.3}  (target <= 1.2)",
            replay / select
        );
        println!(
            "  first executions / raw INSERT + UPDATE    = {:.3}  (target >= 0.8)",
            raw / first
        );
    }
}

fn skipped(what: &str, error: &dyn std::fmt::Display) {
    println!("SKIPPED {what}: {error}");
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut criterion = Criterion::default().configure_from_args();

    // `SQL_BENCH=postgres,sqlite` runs some databases only.
    let only = std::env::var("SQL_BENCH").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|n| n.trim() == name);

    let url = std::env::var("POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pool = runtime.block_on(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url),
    );
    match pool {
        _ if !wanted("postgres") => {}
        Ok(pool) => {
            let setup = runtime.block_on(prepare("sql_postgres", pool, |t| Raw {
                select: format!("SELECT fingerprint, output FROM {t} WHERE id = $1"),
                insert: format!(
                    "INSERT INTO {t} (id, token, fingerprint, completed, lease_until, expires_at, output)
                     VALUES ($1, $2, $3, FALSE, now() + INTERVAL '30 seconds', now() + INTERVAL '90 minutes', NULL)"
                ),
                update: format!(
                    "UPDATE {t} SET completed = TRUE, output = $1, lease_until = NULL, expires_at = now() + INTERVAL '1 day'
                     WHERE id = $2"
                ),
                copy: String::new(),
                drop: Vec::new(),
            }));
            bench_database!(&mut criterion, &runtime, &setup);
        }
        Err(error) => skipped(&format!("sql_postgres ({url})"), &error),
    }

    let url = std::env::var("MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    let pool = runtime.block_on(
        sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(2)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url),
    );
    match pool {
        _ if !wanted("mysql") => {}
        Ok(pool) => {
            let setup = runtime.block_on(prepare("sql_mysql", pool, |t| Raw {
                select: format!("SELECT fingerprint, output FROM {t} WHERE id = ?"),
                insert: format!(
                    "INSERT INTO {t} (id, token, fingerprint, completed, lease_until, expires_at, output)
                     VALUES (?, ?, ?, FALSE, UTC_TIMESTAMP(6) + INTERVAL 30 SECOND, UTC_TIMESTAMP(6) + INTERVAL 90 MINUTE, NULL)"
                ),
                update: format!(
                    "UPDATE {t} SET completed = TRUE, output = ?, lease_until = NULL, expires_at = UTC_TIMESTAMP(6) + INTERVAL 1 DAY
                     WHERE id = ?"
                ),
                copy: String::new(),
                drop: Vec::new(),
            }));
            bench_database!(&mut criterion, &runtime, &setup);
        }
        Err(error) => skipped(&format!("sql_mysql ({url})"), &error),
    }

    let path = std::env::temp_dir().join(format!("idempotency-bench-{}.sqlite", suffix()));
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = runtime.block_on(
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(2)
            .test_before_acquire(false)
            .connect_with(options),
    );
    match pool {
        _ if !wanted("sqlite") => {}
        Ok(pool) => {
            // SQLite's times are bound by the store; the raw statements use constants.
            let setup = runtime.block_on(prepare("sql_sqlite", pool, |t| Raw {
                select: format!("SELECT fingerprint, output FROM {t} WHERE id = ?"),
                insert: format!(
                    "INSERT INTO {t} (id, token, fingerprint, completed, lease_until, expires_at, output)
                     VALUES (?, ?, ?, 0, 4102444800000000, 4102444800000000, NULL)"
                ),
                update: format!(
                    "UPDATE {t} SET completed = 1, output = ?, lease_until = NULL, expires_at = 4102444800000000
                     WHERE id = ?"
                ),
                copy: String::new(),
                drop: Vec::new(),
            }));
            bench_database!(&mut criterion, &runtime, &setup);
            runtime.block_on(setup.pool.close());
        }
        Err(error) => skipped("sql_sqlite", &error),
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    criterion.final_summary();
}
