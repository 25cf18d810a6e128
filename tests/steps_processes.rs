//! Kill at every boundary: a child process runs a 4-step operation and SIGKILLs itself, in
//! turn, at each of its 9 boundaries (after the journal starts, before step 1; after each
//! step's effect, before its journal write; after each journal write). Then a retry in another
//! child process, or the completer in the parent, finishes the call, and one more retry
//! replays its output.
//!
//! The steps: `reserve` and `receipt` write a row (local steps on the PostgreSQL and SQLite
//! stores: the row and the journal entry in one transaction; with the Redis store, a row
//! inserted by its derived key, which the table keeps once); `charge` and `ship` are HTTP
//! calls to a downstream service behind this crate's own `Idempotency-Key` layer, on a
//! loopback port of the parent, sent with their derived keys. Each effect is counted: rows
//! per call and step, handler runs per derived key. Every one must be 1, and the final
//! output the same for every retry.

#![cfg(all(
    feature = "redis",
    feature = "postgres",
    feature = "sqlite",
    feature = "http",
    feature = "memory",
    feature = "conformance"
))]

mod steps_support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
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
    BoxError, Fingerprint, Idempotency, Key, MemoryStore, RedisStore, SqlStore, Store,
};
use serde::{Deserialize, Serialize};
use steps_support::{pg_url, redis_url, sqlite_pool, unique};

const BACKEND: &str = "STEPS_PROCESS_BACKEND";
const TAG: &str = "STEPS_PROCESS_TAG";
const CALL: &str = "STEPS_PROCESS_CALL";
const KILL_AT: &str = "STEPS_PROCESS_KILL_AT";
const PORT: &str = "STEPS_PROCESS_PORT";
const NAMESPACE: &str = "checkout";

const BOUNDARIES: [&str; 9] = [
    "start",
    "effect:reserve",
    "journal:reserve",
    "effect:charge",
    "journal:charge",
    "effect:ship",
    "journal:ship",
    "effect:receipt",
    "journal:receipt",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: String,
    cents: u64,
}

/// Where the child's records, journal and rows are.
#[derive(Clone)]
enum Backend {
    Postgres(idempotency::PostgresStore),
    Sqlite(idempotency::SqliteStore),
    /// The Redis store; rows go to PostgreSQL.
    Redis(PgPool),
}

#[derive(Clone)]
struct Ctx {
    backend: Backend,
    effects: String,
    port: u16,
    kill_at: Option<String>,
    http: reqwest::Client,
}

impl Ctx {
    fn kill_point(&self, here: &str) {
        if self.kill_at.as_deref() == Some(here) {
            let _ = Command::new("kill")
                .arg("-9")
                .arg(std::process::id().to_string())
                .status();
            std::thread::sleep(Duration::from_secs(30));
        }
    }

    /// A row for this call and step: in the step's own transaction with its journal entry
    /// (SQL stores), or by its derived key, kept once by the table's key (Redis store).
    async fn row(&self, steps: &Steps, step: &'static str, call: &str) -> Result<String, BoxError> {
        // Kept once by the table's key only with the Redis store: a local step must be once
        // by its transaction alone.
        let once = match self.backend {
            Backend::Redis(_) => " ON CONFLICT (derived) DO NOTHING",
            _ => "",
        };
        let sql = format!(
            "INSERT INTO {} (derived, call, step) VALUES ('{}', '{call}', '{step}'){once}",
            self.effects,
            steps.key(step)
        );
        let here = format!("effect:{step}");
        let made = format!("{step}-row");
        match &self.backend {
            Backend::Postgres(store) => {
                let ctx = self.clone();
                steps
                    .local(step, store, move |tx| {
                        Box::pin(async move {
                            sqlx::query(&sql).execute(&mut **tx).await?;
                            ctx.kill_point(&here);
                            Ok::<_, BoxError>(made)
                        })
                    })
                    .await
            }
            Backend::Sqlite(store) => {
                let ctx = self.clone();
                steps
                    .local(step, store, move |tx| {
                        Box::pin(async move {
                            sqlx::query(&sql).execute(&mut **tx).await?;
                            ctx.kill_point(&here);
                            Ok::<_, BoxError>(made)
                        })
                    })
                    .await
            }
            Backend::Redis(pool) => {
                steps
                    .step(step, || async {
                        sqlx::query(&sql).execute(pool).await?;
                        self.kill_point(&here);
                        Ok::<_, BoxError>(made)
                    })
                    .await
            }
        }
    }

    /// A downstream call with the step's derived key.
    async fn remote(&self, steps: &Steps, step: &'static str) -> Result<String, BoxError> {
        let key = steps.key(step);
        steps
            .step(step, || async {
                let response = self
                    .http
                    .post(format!("http://127.0.0.1:{}/{step}", self.port))
                    .header("idempotency-key", &key)
                    .send()
                    .await?
                    .error_for_status()?;
                let body = response.text().await?;
                self.kill_point(&format!("effect:{step}"));
                Ok::<_, BoxError>(body)
            })
            .await
    }
}

/// The operation: reserve, charge, ship, receipt.
async fn checkout(ctx: Ctx, order: Order, steps: Steps) -> Result<String, BoxError> {
    ctx.kill_point("start");
    let reserve = ctx.row(&steps, "reserve", &order.id).await?;
    ctx.kill_point("journal:reserve");
    let charge = ctx.remote(&steps, "charge").await?;
    ctx.kill_point("journal:charge");
    let ship = ctx.remote(&steps, "ship").await?;
    ctx.kill_point("journal:ship");
    let receipt = ctx.row(&steps, "receipt", &order.id).await?;
    ctx.kill_point("journal:receipt");
    Ok(format!("{reserve}|{charge}|{ship}|{receipt}"))
}

fn tables(tag: &str) -> (String, String) {
    (format!("sp_records_{tag}"), format!("sp_effects_{tag}"))
}

fn sqlite_url(tag: &str) -> String {
    let path = std::env::temp_dir().join(format!("steps-processes-{tag}.sqlite"));
    format!("sqlite://{}", path.display())
}

/// The store and context of `backend` for the run `tag` (a child or the parent).
async fn open(
    backend: &str,
    tag: &str,
    port: u16,
    kill_at: Option<String>,
) -> (Arc<dyn Store>, Ctx) {
    let (records, effects) = tables(tag);
    let (store, backend): (Arc<dyn Store>, Backend) = match backend {
        "postgres" => {
            let pool = PgPool::connect(&pg_url()).await.expect("postgres");
            let store = SqlStore::builder(pool)
                .table(records.as_str())
                .build()
                .expect("store");
            (Arc::new(store.clone()), Backend::Postgres(store))
        }
        "sqlite" => {
            let pool = sqlite_pool(&sqlite_url(tag)).await;
            let store = SqlStore::builder(pool)
                .table(records.as_str())
                .build()
                .expect("store");
            (Arc::new(store.clone()), Backend::Sqlite(store))
        }
        "redis" => {
            let client = idempotency::redis::Client::open(redis_url().as_str()).expect("url");
            let connection = idempotency::redis::aio::ConnectionManager::new(client)
                .await
                .expect("redis");
            let store = RedisStore::builder(connection)
                .prefix(format!("{records}:"))
                .build()
                .expect("prefix");
            let pool = PgPool::connect(&pg_url()).await.expect("postgres");
            (Arc::new(store), Backend::Redis(pool))
        }
        other => panic!("unknown backend {other}"),
    };
    let ctx = Ctx {
        backend,
        effects,
        port,
        kill_at,
        http: reqwest::Client::new(),
    };
    (store, ctx)
}

fn executor(store: Arc<dyn Store>) -> Idempotency {
    Idempotency::builder(store)
        .lease(Duration::from_millis(600))
        .build()
}

fn order(call: &str) -> Order {
    Order {
        id: call.to_owned(),
        cents: 1999,
    }
}

fn key_of(call: &str) -> Key {
    Key::derive(NAMESPACE, 1, &call).expect("key")
}

async fn run_call(exec: &Idempotency, ctx: &Ctx, call: &str) -> Result<String, BoxError> {
    let input = order(call);
    let ctx = ctx.clone();
    exec.call(key_of(call), Fingerprint::of(&input).expect("fingerprint"))
        .run_steps(input, move |order, steps| checkout(ctx, order, steps))
        .await
}

/// The child: one call, killed where `STEPS_PROCESS_KILL_AT` says (or run to its end, its
/// output printed).
#[test]
fn child() {
    let (Ok(backend), Ok(tag), Ok(call), Ok(port)) = (
        std::env::var(BACKEND),
        std::env::var(TAG),
        std::env::var(CALL),
        std::env::var(PORT),
    ) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let port = port.parse().expect("a port");
        let (store, ctx) = open(&backend, &tag, port, std::env::var(KILL_AT).ok()).await;
        let output = run_call(&executor(store), &ctx, &call)
            .await
            .expect("the call");
        println!("OUTPUT {output}");
    });
}

/// Runs a child for `call`; its output line, if it finished.
fn spawn_child(
    backend: &str,
    tag: &str,
    port: u16,
    call: &str,
    kill_at: Option<&str>,
) -> Option<String> {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args(["--exact", "child", "--nocapture", "--test-threads", "1"])
        .env(BACKEND, backend)
        .env(TAG, tag)
        .env(CALL, call)
        .env(PORT, port.to_string())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped());
    if let Some(kill_at) = kill_at {
        command.env(KILL_AT, kill_at);
    }
    let output = command.output().expect("run a child");
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().find_map(|line| {
        line.split_once("OUTPUT ")
            .map(|(_, output)| output.to_owned())
    });
    let errors = String::from_utf8_lossy(&output.stderr);
    if kill_at.is_some() {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(
            output.status.signal(),
            Some(9),
            "killed at {kill_at:?}: {text}\n{errors}"
        );
    } else {
        assert!(output.status.success(), "{text}\n{errors}");
    }
    line
}

/// Handler runs per `Idempotency-Key`, per route.
type Runs = Arc<Mutex<HashMap<(String, String), usize>>>;

/// The downstream: `/charge` and `/ship` behind the `Idempotency-Key` layer.
async fn downstream() -> (u16, Runs) {
    let runs: Runs = Arc::default();
    async fn handle(route: &str, runs: &Runs, headers: &HeaderMap) -> String {
        let key = headers
            .get("idempotency-key")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        *runs
            .lock()
            .expect("runs")
            .entry((route.to_owned(), key))
            .or_default() += 1;
        format!("{route}-{}", idempotency::Token::random())
    }
    let app = Router::new()
        .route(
            "/charge",
            post(|State(runs): State<Runs>, headers: HeaderMap| async move {
                handle("charge", &runs, &headers).await
            }),
        )
        .route(
            "/ship",
            post(|State(runs): State<Runs>, headers: HeaderMap| async move {
                handle("ship", &runs, &headers).await
            }),
        )
        .with_state(Arc::clone(&runs))
        .layer(
            IdempotencyLayer::new(Idempotency::new(MemoryStore::new()))
                .require_key(true)
                .scope(ClientScope::global()),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, runs)
}

async fn kill_at_every_boundary(backend: &str) {
    let tag = unique(backend).to_lowercase();
    let (records, effects) = tables(&tag);
    let (port, runs) = downstream().await;
    let (store, ctx) = open(backend, &tag, port, None).await;
    match &ctx.backend {
        Backend::Postgres(sql) => sql.migrate().await.expect("migrate"),
        Backend::Sqlite(sql) => sql.migrate().await.expect("migrate"),
        Backend::Redis(_) => {}
    }
    let unique_key = match ctx.backend {
        Backend::Redis(_) => " UNIQUE",
        _ => "",
    };
    let create = format!(
        "CREATE TABLE {effects} (derived TEXT NOT NULL{unique_key}, call TEXT NOT NULL, step TEXT NOT NULL)"
    );
    let effect_rows = async |call: &str, step: &str| -> i64 {
        let count =
            format!("SELECT COUNT(*) FROM {effects} WHERE call = '{call}' AND step = '{step}'");
        match &ctx.backend {
            Backend::Sqlite(sql) => sqlx::query_scalar(&count).fetch_one(sql.pool()).await,
            Backend::Postgres(sql) => sqlx::query_scalar(&count).fetch_one(sql.pool()).await,
            Backend::Redis(pool) => sqlx::query_scalar(&count).fetch_one(pool).await,
        }
        .expect("count")
    };
    match &ctx.backend {
        Backend::Sqlite(sql) => sqlx::query(&create).execute(sql.pool()).await.map(drop),
        Backend::Postgres(sql) => sqlx::query(&create).execute(sql.pool()).await.map(drop),
        Backend::Redis(pool) => sqlx::query(&create).execute(pool).await.map(drop),
    }
    .expect("create the effects table");
    let exec = executor(Arc::clone(&store));
    let completer_ctx = ctx.clone();
    let completer =
        Completer::new(exec.clone()).register(NAMESPACE, 1, move |order: Order, steps| {
            checkout(completer_ctx.clone(), order, steps)
        });
    for (n, boundary) in BOUNDARIES.into_iter().enumerate() {
        let call = format!("call-{n}");
        assert_eq!(
            spawn_child(backend, &tag, port, &call, Some(boundary)),
            None
        );
        // Finished by a retry from another process, or by the completer.
        let output = if n % 2 == 0 {
            spawn_child(backend, &tag, port, &call, None).expect("the retry's output")
        } else {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let mut finished = false;
            for _ in 0..20 {
                let pass = completer.run_once().await.expect("a completer pass");
                if pass.finished.contains(&key_of(&call)) {
                    finished = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert!(
                finished,
                "the completer finished {call} (killed at {boundary})"
            );
            run_call(&exec, &ctx, &call).await.expect("a replay")
        };
        let again = spawn_child(backend, &tag, port, &call, None).expect("a replay's output");
        assert_eq!(
            again, output,
            "killed at {boundary}: the output is the same on every retry"
        );
        for step in ["reserve", "receipt"] {
            assert_eq!(
                effect_rows(&call, step).await,
                1,
                "{step} of {call}, killed at {boundary}"
            );
        }
        let runs = runs.lock().expect("runs").clone();
        for step in ["charge", "ship"] {
            let key = idempotency::steps::derived_key(&key_of(&call), step);
            assert_eq!(
                runs.get(&(step.to_owned(), key)).copied(),
                Some(1),
                "{step} of {call}, killed at {boundary}: {runs:?}"
            );
        }
    }
    let drop = format!("DROP TABLE IF EXISTS {effects}");
    match &ctx.backend {
        Backend::Postgres(sql) => {
            for statement in [
                drop,
                format!("DROP TABLE IF EXISTS \"{records}\""),
                format!(
                    "DROP FUNCTION IF EXISTS \"{records}_claim\"(bytea, bytea, bytea, int8, int8, text, text, int8), \"{records}_claim\"(bytea, bytea, bytea, int8, int8, text)"
                ),
            ] {
                let _ = sqlx::query(&statement).execute(sql.pool()).await;
            }
        }
        Backend::Redis(pool) => {
            let _ = sqlx::query(&drop).execute(pool).await;
        }
        Backend::Sqlite(_) => {
            let _ = std::fs::remove_file(sqlite_url(&tag).trim_start_matches("sqlite://"));
        }
    }
}

fn reachable(backend: &str) -> bool {
    use idempotency::testing::unreachable;
    let check = |url: String, address: &str| match std::net::TcpStream::connect(address) {
        Ok(_) => true,
        Err(error) => {
            unreachable(&format!("steps processes ({backend})"), &url, &error);
            false
        }
    };
    match backend {
        "postgres" => check(pg_url(), "127.0.0.1:5432"),
        "redis" => check(redis_url(), "127.0.0.1:6379") && check(pg_url(), "127.0.0.1:5432"),
        _ => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_at_every_boundary_on_postgres() {
    if reachable("postgres") {
        kill_at_every_boundary("postgres").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_at_every_boundary_on_redis() {
    if reachable("redis") {
        kill_at_every_boundary("redis").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_at_every_boundary_on_sqlite() {
    kill_at_every_boundary("sqlite").await;
}
