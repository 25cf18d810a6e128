//! The PostgreSQL store (`POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`):
//! the conformance suite, transactional mode (commit, rollback, a SIGKILLed writer), exactly
//! once across processes, outages, hostile input, size limits, expiry and exact statement
//! counts. Every test works in tables of its own and drops them.

#![cfg(feature = "postgres")]

mod at_most_once_support;
mod sql_support;

mod harness {
    use std::time::Duration;

    use idempotency::sqlx::{self, PgPool, Postgres, postgres::PgPoolOptions};

    use crate::sql_support::{RoundTrips, run_detached};

    pub(crate) type Db = Postgres;
    pub(crate) const SUITE: &str = "sql_postgres";
    pub(crate) const ROUND_TRIPS: RoundTrips = RoundTrips {
        first: 2,
        replay: 1,
        failed: 2,
        tx_first: 2,
        tx_replay: 1,
        tx_failed: 2,
        insert_first: [2, 1, 2],
    };
    /// A claim in a transaction that finds the key in progress on the pool waits for it (its
    /// read locks nothing the owner needs).
    pub(crate) const TX_WAITS_FOR_POOL_OWNER: bool = true;
    /// A claim on the pool that gives up waiting for an uncommitted transaction's row lock
    /// answers in progress.
    pub(crate) const POOL_LOCK_WAIT_IS_IN_PROGRESS: bool = true;

    fn options(connections: u32) -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(Duration::from_secs(60))
            .test_before_acquire(false)
    }

    pub(crate) async fn fresh(connections: u32) -> Option<(String, PgPool)> {
        let url = idempotency::testing::service_url(
            "POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        );
        let connecting = options(connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await;
        match connecting {
            Ok(pool) => Some((url, pool)),
            Err(error) => {
                idempotency::testing::unreachable(SUITE, &url, &error);
                None
            }
        }
    }

    /// A pool whose claims give up a lock wait quickly: the store's own `lock_timeout`
    /// bounds it on PostgreSQL, so any pool.
    pub(crate) async fn lock_bounded(url: &str) -> PgPool {
        connect(url, 2).await
    }

    pub(crate) async fn connect(url: &str, connections: u32) -> PgPool {
        options(connections)
            .connect(url)
            .await
            .expect("connect to PostgreSQL")
    }

    pub(crate) fn cleanup(url: String, tables: Vec<String>) {
        run_detached(move || async move {
            if let Ok(pool) = PgPoolOptions::new().max_connections(1).connect(&url).await {
                for table in tables {
                    let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
                        .execute(&pool)
                        .await;
                    // A store's table comes with its claim function.
                    let function = match table.split_once('.') {
                        Some((schema, name)) => format!("\"{schema}\".\"{name}_claim\""),
                        None => format!("\"{table}_claim\""),
                    };
                    let _ = sqlx::query(&format!(
                        "DROP FUNCTION IF EXISTS {function}(bytea, bytea, bytea, int8, int8, text, text, int8), {function}(bytea, bytea, bytea, int8, int8, text)"
                    ))
                        .execute(&pool)
                        .await;
                }
                pool.close().await;
            }
        });
    }

    pub(crate) fn unreachable() -> PgPool {
        PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(1))
            .connect_lazy("postgres://postgres@127.0.0.1:1/test")
            .expect("a lazy pool")
    }

    pub(crate) fn create_orders(table: &str) -> String {
        format!("CREATE TABLE {table} (client_order_id TEXT NOT NULL, quantity BIGINT NOT NULL)")
    }

    pub(crate) fn insert_order(table: &str) -> String {
        format!("INSERT INTO {table} (client_order_id, quantity) VALUES ($1, $2)")
    }

    pub(crate) fn create_plain(table: &str) -> String {
        format!("CREATE TABLE {table} (id BIGINT)")
    }

    pub(crate) fn count(table: &str) -> String {
        format!("SELECT COUNT(*) FROM {table}")
    }
}

sql_support::suite::sql_suite!();

/// A process of the previous version calls the claim function without namespace and version:
/// after `migrate` that signature still claims (a rolling upgrade leaves no process without
/// claims), its row names no namespace, and a second claim of the key finds it in progress.
#[tokio::test]
async fn the_claim_function_of_the_previous_version_still_claims() {
    let Some((url, pool)) = harness::fresh(2).await else {
        return;
    };
    let table = unique("previous_claim");
    let _scratch = scratch(&url, &[&table]);
    let _store = store_on(&pool, &table).await;
    let call =
        format!("SELECT acquired FROM \"{table}_claim\"($1, $2, $3, 30000000, 30000000, NULL)");
    let claim = |id: &'static [u8; 32], token: u8| {
        let (pool, call) = (pool.clone(), call.clone());
        async move {
            sqlx::query_scalar::<_, bool>(&call)
                .bind(&id[..])
                .bind(&[token; 16][..])
                .bind(&[9u8; 32][..])
                .fetch_one(&pool)
                .await
                .expect("the six-argument claim function")
        }
    };
    assert!(claim(&[1u8; 32], 7).await, "acquired");
    assert!(
        !claim(&[1u8; 32], 8).await,
        "in progress: another claim does not acquire it"
    );
    let namespace: Option<String> =
        sqlx::query_scalar(&format!("SELECT namespace FROM \"{table}\""))
            .fetch_one(&pool)
            .await
            .expect("the row");
    assert_eq!(namespace, None);
}

/// A replay is a plain read: the table's claim function is never entered for it. Shown by
/// replacing the function with one that fails: replays still answer, a new key fails, and
/// `migrate` puts the real function back.
#[tokio::test]
async fn a_replay_never_enters_the_claim_function() {
    let Some((url, pool)) = harness::fresh(2).await else {
        return;
    };
    let table = unique("replay_reads");
    let _scratch = scratch(&url, &[&table]);
    let store = store_on(&pool, &table).await;
    let idempotency = Idempotency::new(store.clone());
    let call = |order: &'static str, output: u64| {
        idempotency.run(
            Key::derive("sql::replay_reads", 1, &order).expect("key"),
            fingerprint("a"),
            move || async move { Ok::<_, Error>(output) },
        )
    };
    assert_eq!(call("order-1", 1).await.expect("first execution"), 1);
    sqlx::query(&format!(
        "CREATE OR REPLACE FUNCTION \"{table}_claim\"(
    p_id bytea, p_token bytea, p_fingerprint bytea, p_lease int8, p_expiry int8, p_lock text,
    p_namespace text, p_version int8,
    OUT acquired bool, OUT completed bool, OUT fingerprint bytea, OUT output bytea,
    OUT remaining int8, OUT took_over bool
) LANGUAGE plpgsql AS $body$ BEGIN RAISE EXCEPTION 'the claim function was entered'; END $body$"
    ))
    .execute(&pool)
    .await
    .expect("replace the claim function");
    for _ in 0..5 {
        assert_eq!(call("order-1", 2).await.expect("a replay reads only"), 1);
    }
    let entered = call("order-2", 3).await;
    assert!(
        matches!(
            &entered,
            Err(Error::Store {
                op: StoreOp::Claim,
                ..
            })
        ) && format!("{entered:?}").contains("the claim function was entered"),
        "a new key goes through the function: {entered:?}"
    );
    store.migrate().await.expect("migrate again");
    assert_eq!(
        call("order-2", 3).await.expect("the real function is back"),
        3
    );
}

/// `migrate` is safe to run at every start-up, from several processes at once (its claim
/// function included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_runs_again_and_concurrently() {
    let Some((url, pool)) = harness::fresh(8).await else {
        return;
    };
    let table = unique("migrate_again");
    let _scratch = scratch(&url, &[&table]);
    let stores: Vec<Sql> = (0..4)
        .map(|_| {
            SqlStore::builder(pool.clone())
                .table(&table)
                .build()
                .expect("table")
        })
        .collect();
    let migrations: Vec<_> = stores
        .iter()
        .cloned()
        .map(|store| tokio::spawn(async move { store.migrate().await }))
        .collect();
    for migration in migrations {
        migration
            .await
            .expect("task")
            .expect("a concurrent migrate");
    }
    stores[0].migrate().await.expect("migrate once more");
    let out: Result<u64, Error> = Idempotency::new(stores[1].clone())
        .run(
            Key::derive("sql::migrate_again", 1, &"order").expect("key"),
            fingerprint("a"),
            || async { Ok(9) },
        )
        .await;
    assert_eq!(out.expect("claims work after the migrations"), 9);
}
