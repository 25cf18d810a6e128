//! What the Redis store asks of its server, on test-owned `redis-server`s (free loopback
//! ports, killed on drop): `load_scripts` refuses a server that evicts keys unless the builder
//! allows it, lets a server that refuses `CONFIG` through (renamed away, or an ACL user
//! without it), and `wait_for_replicas` sends a
//! `WAIT` with each completion (a master and its replica) without failing the call when the
//! replica is gone.
//!
//! Without `redis-server` the tests print SKIPPED; `IDEMPOTENCY_REQUIRE_SERVICES=1` makes that
//! a failure.

mod redis_support;

use std::time::{Duration, Instant};

use idempotency::redis::{self, AsyncCommands as _};
use idempotency::{
    Digest, Error, Fingerprint, Idempotency, Key, Record, RedisEvictionPolicyError, RedisStore,
    Store, StoreError,
};
use redis_support::{RedisServer, RoundTrips, admin, manager, unique_prefix};

const TIMEOUT: Duration = Duration::from_secs(2);
/// How long a completion waits for its replica (below [`TIMEOUT`], the connection's).
const WAIT: Duration = Duration::from_millis(800);

async fn store_on(server: &RedisServer) -> RedisStore {
    let connection = manager(&server.url(), TIMEOUT).await.expect("connect");
    RedisStore::builder(connection)
        .prefix(unique_prefix("server"))
        .build()
        .expect("prefix")
}

/// The policy refused by `load_scripts`, or a panic saying what came instead.
fn refused_policy(outcome: Result<(), StoreError>) -> RedisEvictionPolicyError {
    match outcome {
        Err(StoreError::Backend(source)) => match source.downcast_ref::<RedisEvictionPolicyError>()
        {
            Some(error) => error.clone(),
            None => panic!("expected an eviction policy error, got {source:?}"),
        },
        other => panic!("expected an eviction policy error, got {other:?}"),
    }
}

async fn set_policy(url: &str, policy: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg(policy)
        .query_async(&mut admin(url).await)
        .await
        .expect("CONFIG SET");
}

/// Whether the store's four scripts are loaded (the server caches nothing else here).
async fn scripts_loaded(url: &str) -> bool {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut admin(url).await)
        .await
        .expect("INFO memory");
    info.lines()
        .find_map(|line| line.strip_prefix("number_of_cached_scripts:"))
        .is_some_and(|n| n.trim().parse::<u32>().unwrap_or(0) >= 4)
}

#[tokio::test]
async fn an_evicting_policy_is_refused_at_start() {
    let Some(server) = RedisServer::start_with(
        "redis eviction policy",
        &["--maxmemory-policy", "allkeys-lru"],
    ) else {
        return;
    };
    let store = store_on(&server).await;
    let error = refused_policy(store.load_scripts().await);
    assert_eq!(error.policy(), "allkeys-lru");
    let message = error.to_string();
    assert!(
        message.contains("CONFIG SET maxmemory-policy noeviction")
            && message.contains("allow_evicting_policy(true)"),
        "the error says what to do: {message}"
    );
    assert!(
        !scripts_loaded(&server.url()).await,
        "refused before loading"
    );

    // `volatile-*` evicts keys with a time to live: every record has one.
    set_policy(&server.url(), "volatile-ttl").await;
    assert_eq!(
        refused_policy(store.load_scripts().await).policy(),
        "volatile-ttl"
    );

    // Opting in.
    let connection = manager(&server.url(), TIMEOUT).await.expect("connect");
    let allowed = RedisStore::builder(connection)
        .prefix(unique_prefix("server"))
        .allow_evicting_policy(true)
        .build()
        .expect("prefix");
    allowed.load_scripts().await.expect("allowed");
    assert!(scripts_loaded(&server.url()).await);

    set_policy(&server.url(), "noeviction").await;
    store.load_scripts().await.expect("noeviction");
}

#[tokio::test]
async fn a_server_that_refuses_config_is_let_through() {
    // `CONFIG` renamed away, as some managed services do: the policy cannot be read.
    let Some(server) = RedisServer::start_with(
        "redis without CONFIG",
        &[
            "--maxmemory-policy",
            "allkeys-lru",
            "--rename-command",
            "CONFIG",
            "",
        ],
    ) else {
        return;
    };
    let store = store_on(&server).await;
    let warnings = warnings::capture();
    store
        .load_scripts()
        .await
        .expect("a refused CONFIG is a warning");
    warnings.assert_warned("refused `CONFIG GET maxmemory-policy`");
    assert!(scripts_loaded(&server.url()).await);
}

#[tokio::test]
async fn an_acl_user_without_config_is_let_through() {
    let Some(server) = RedisServer::start_with(
        "redis ACL user without CONFIG",
        &["--user", "app", "on", "nopass", "~*", "+@all", "-config"],
    ) else {
        return;
    };
    let url = format!("redis://app:any@127.0.0.1:{}", server.port());
    let connection = manager(&url, TIMEOUT).await.expect("connect as app");
    let store = RedisStore::builder(connection)
        .prefix(unique_prefix("server"))
        .build()
        .expect("prefix");
    let warnings = warnings::capture();
    store
        .load_scripts()
        .await
        .expect("NOPERM on CONFIG is a warning");
    warnings.assert_warned("refused `CONFIG GET maxmemory-policy`");
    assert!(scripts_loaded(&server.url()).await);
}

/// The `tracing` warnings of this thread, with the `tracing` feature (without it they compile
/// out and nothing is checked).
mod warnings {
    use std::sync::{Arc, Mutex};

    #[cfg(feature = "tracing")]
    pub(crate) struct Capture(Arc<Mutex<Vec<String>>>);

    #[cfg(feature = "tracing")]
    impl tracing::Subscriber for Capture {
        fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
            *metadata.level() == tracing::Level::WARN
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            struct Message(String);
            impl tracing::field::Visit for Message {
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut message = Message(String::new());
            event.record(&mut message);
            self.0.lock().expect("lock").push(message.0);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// Records warnings on this thread until the guard drops.
    pub(crate) struct Warnings {
        seen: Arc<Mutex<Vec<String>>>,
        #[cfg(feature = "tracing")]
        _guard: tracing::subscriber::DefaultGuard,
    }

    pub(crate) fn capture() -> Warnings {
        let seen = Arc::new(Mutex::new(Vec::new()));
        Warnings {
            #[cfg(feature = "tracing")]
            _guard: tracing::subscriber::set_default(Capture(Arc::clone(&seen))),
            seen,
        }
    }

    impl Warnings {
        /// With the `tracing` feature, that one warning contains `text`.
        pub(crate) fn assert_warned(&self, text: &str) {
            let seen = self.seen.lock().expect("lock");
            if cfg!(feature = "tracing") {
                assert!(
                    seen.iter().any(|warning| warning.contains(text)),
                    "a warning containing {text:?}: {seen:?}"
                );
            }
        }
    }
}

fn key(material: &str) -> Key {
    Key::new(
        "redis_server::wait",
        1,
        Digest::of_bytes(material.as_bytes()),
    )
}

async fn complete(idempotency: &Idempotency, material: &str) -> Result<String, Error> {
    let fingerprint = Fingerprint::from_digest(Digest::of_bytes(b"call"));
    let output = material.to_owned();
    idempotency
        .run(key(material), fingerprint, || async move { Ok(output) })
        .await
}

/// Waits (bounded) until the master reports `replicas` replicas online (synchronised).
async fn connected_replicas(master_url: &str, replicas: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut master = admin(master_url).await;
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut master)
            .await
            .expect("INFO replication");
        let connected = info
            .lines()
            .find_map(|line| line.strip_prefix("connected_slaves:"))
            .and_then(|n| n.trim().parse::<usize>().ok());
        let online = info
            .lines()
            .filter(|line| line.starts_with("slave") && line.contains("state=online"))
            .count();
        if connected == Some(replicas) && online == replicas {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the master did not report {replicas} replicas: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until the replica acknowledges a write: after a full sync Redis streams
/// writes to it only from its first acknowledgement, up to a second later.
async fn acknowledging(master_url: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut master = admin(master_url).await;
    loop {
        let _: () = redis::cmd("SET")
            .arg("idempotency-test:wait:probe")
            .arg(1)
            .query_async(&mut master)
            .await
            .expect("SET");
        let acknowledged: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(100)
            .query_async(&mut master)
            .await
            .expect("WAIT");
        if acknowledged == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "the replica never acknowledged");
    }
}

/// Waits (bounded) until the replica reports its link to the master up and no sync running.
async fn link_up(replica_url: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut replica = admin(replica_url).await;
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut replica)
            .await
            .expect("INFO replication");
        if info.contains("master_link_status:up") && info.contains("master_sync_in_progress:0") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica did not synchronise: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn wait_for_replicas_sends_wait_with_each_completion() {
    // Without the 5 s default delay before a diskless full sync.
    let Some(master) =
        RedisServer::start_with("redis WAIT (master)", &["--repl-diskless-sync-delay", "0"])
    else {
        return;
    };
    let port = master.port().to_string();
    let Some(mut replica) =
        RedisServer::start_with("redis WAIT (replica)", &["--replicaof", "127.0.0.1", &port])
    else {
        return;
    };
    connected_replicas(&master.url(), 1).await;
    link_up(&replica.url()).await;
    acknowledging(&master.url()).await;
    let connection = manager(&master.url(), TIMEOUT).await.expect("connect");
    let store = RedisStore::builder(connection)
        .prefix(unique_prefix("wait"))
        .wait_for_replicas(1, WAIT)
        .build()
        .expect("prefix");
    store.load_scripts().await.expect("load scripts");
    let idempotency = Idempotency::new(store.clone());
    let mut counter = RoundTrips::new(&master.url()).await;

    counter.begin().await;
    assert_eq!(complete(&idempotency, "first").await.unwrap(), "first");
    let mut sent = counter.end().await;
    // The replica's own `REPLCONF ACK`s come as a client's. `WAIT` is in the slow log only
    // when it did not block (a blocked command is left out), so it is counted by `INFO
    // commandstats` alone.
    sent.by_clients.remove("replconf");
    sent.by_clients.remove("wait");
    sent.assert_executed(
        &[("set", 1), ("evalsha", 1)],
        &[("evalsha", 1), ("wait", 1)],
        "claim, then the completion and its WAIT pipelined",
    );
    // WAIT returned: the replica has the record now.
    let on_replica: Option<Vec<u8>> = admin(&replica.url())
        .await
        .get(store.redis_key(&key("first")))
        .await
        .expect("GET on the replica");
    assert!(on_replica.is_some(), "the replica has the completed record");

    // No replica: WAIT gives up after its timeout; the call still succeeds and its record
    // stays (a warning, not an error: the body ran).
    replica.kill();
    connected_replicas(&master.url(), 0).await;
    let started = Instant::now();
    let warnings = warnings::capture();
    assert_eq!(complete(&idempotency, "second").await.unwrap(), "second");
    warnings.assert_warned("fewer redis replicas than asked");
    assert!(
        started.elapsed() >= WAIT - Duration::from_millis(50),
        "WAIT waited for its timeout ({:?})",
        started.elapsed()
    );
    assert!(matches!(
        store.get(&key("second")).await.expect("get"),
        Some(Record::Completed { .. })
    ));
    // And it replays.
    assert_eq!(complete(&idempotency, "second").await.unwrap(), "second");
}

/// What one record costs Redis (`MEMORY USAGE`) for three shapes of output, with the default
/// prefix, on a test-owned server: the budgets `BENCHMARKS.md` and the store's docs state. A
/// short string's record cost 184 bytes, as a peer's (AWS Powertools' Redis layer), until the
/// output kept the time it was recorded (7 bytes, which take its value from jemalloc's 80-byte
/// class to the 96-byte one): 200. The larger shapes stay in their classes.
#[tokio::test]
async fn redis_record_bytes() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Order {
        id: String,
        customer: String,
        items: Vec<u64>,
        note: String,
    }
    let Some(server) = RedisServer::start("redis record bytes") else {
        return;
    };
    let connection = manager(&server.url(), TIMEOUT).await.expect("connect");
    let plain = RedisStore::builder(connection.clone())
        .build()
        .expect("prefix");
    let compressing = RedisStore::builder(connection)
        .compress_outputs_above(1024)
        .build()
        .expect("prefix");
    let order = Order {
        id: "9f1c2a4e-0d7b-4c1e-9a35-6b2f8e0c4d17".into(),
        customer: "customer-000000000000000000000000000042".into(),
        items: (1..=10).map(|n| n * 1_000_003).collect(),
        note: "door".into(),
    };
    let body: String = (0..10_240)
        .map(|n| char::from(b"{\"sku\":\"A-1\",\"qty\":2},"[n % 22]))
        .collect();

    let mut measured = Vec::new();
    measured.push((
        "11-character string",
        record_bytes(&server, &plain, "string", "receipt-042".to_owned()).await,
        200,
    ));
    measured.push((
        "200-byte struct",
        record_bytes(&server, &plain, "struct", encoded(&order)).await,
        424,
    ));
    measured.push((
        "10 KB body",
        record_bytes(&server, &plain, "body", body.clone()).await,
        12_392,
    ));
    measured.push((
        "10 KB body, compress_outputs_above(1024)",
        record_bytes(&server, &compressing, "compressed body", body).await,
        264,
    ));
    for (shape, bytes, budget) in &measured {
        println!("{shape}: {bytes} bytes (budget {budget})");
    }
    for (shape, bytes, budget) in measured {
        assert!(
            bytes <= budget,
            "{shape}: {bytes} bytes, over its budget of {budget}"
        );
    }
}

/// The order as its stored output holds it: the struct's own encoding, as a string, so every
/// shape stores a `String` and only its length differs.
fn encoded<T: serde::Serialize>(value: &T) -> String {
    let text = serde_json::to_string(value).expect("json");
    assert!((190..=210).contains(&text.len()), "{}", text.len());
    text
}

/// Completes one call whose output is `output` and reads `MEMORY USAGE` of its record.
async fn record_bytes(
    server: &RedisServer,
    store: &RedisStore,
    label: &str,
    output: String,
) -> u64 {
    let idempotency = Idempotency::new(store.clone());
    let key = Key::derive("shop::orders::create", 1, &(output.len(), label)).expect("key");
    let fingerprint = Fingerprint::from_digest(Digest::of_bytes(output.as_bytes()));
    let returned = idempotency
        .call(key.clone(), fingerprint)
        .run(|| async { Ok::<_, Error>(output.clone()) })
        .await
        .expect("first call");
    assert_eq!(returned, output);
    let replayed = idempotency
        .call(key.clone(), fingerprint)
        .run(|| async { Ok::<_, Error>(String::new()) })
        .await
        .expect("replay");
    assert_eq!(replayed, output, "the record replays the output");
    let redis_key = store.redis_key(&key);
    assert_eq!(redis_key.len(), "idempotency:".len() + 48);
    let stored: u64 = redis::cmd("STRLEN")
        .arg(&redis_key)
        .query_async(&mut admin(&server.url()).await)
        .await
        .expect("STRLEN");
    println!(
        "{label}: the value holds {stored} bytes for a {}-character output",
        output.len()
    );
    redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&redis_key)
        .query_async(&mut admin(&server.url()).await)
        .await
        .expect("MEMORY USAGE")
}
