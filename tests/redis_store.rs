//! The Redis store on standalone Redis: the shared conformance suite, exact round trips
//! (counted by the server), exactly-once across OS processes, outages, corrupt values and
//! bad input.
//!
//! Uses the Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`) under a fresh key prefix,
//! and `redis-server`s that the tests start on free loopback ports and kill when done. Without
//! them the tests print SKIPPED; `IDEMPOTENCY_REQUIRE_SERVICES=1` makes that a failure.

mod at_most_once_support;
mod redis_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idempotency::redis::aio::ConnectionManager;
use idempotency::redis::{self, AsyncCommands as _, Client};
use idempotency::{
    Bytes, Claim, Digest, Error, Fingerprint, Idempotency, Key, Record, RedisStore, Store,
    StoreError, StoreOp, Token,
};
use idempotency::{ClaimRequest, Completion};
use redis_support::{
    RedisServer, RoundTrips, admin, manager, manager_config, standalone, standalone_store,
    unique_prefix,
};

async fn at_most_once_open(locator: Option<String>) -> Option<(Arc<dyn Store>, String)> {
    let (_, connection) = standalone("redis at most once").await?;
    let prefix = locator.unwrap_or_else(|| unique_prefix("at-most-once"));
    let store = RedisStore::builder(connection)
        .prefix(prefix.clone())
        .build()
        .expect("prefix");
    Some((Arc::new(store), prefix))
}

at_most_once_support::at_most_once_suite!(at_most_once_open, cross_process = true);

mod conformance {
    idempotency::conformance_tests!(|| async {
        super::redis_support::standalone_store("redis conformance (standalone)").await
    });
}

/// The same suite with the claim run as a Lua script, as it is on servers older than Redis 7.
mod conformance_claim_by_script {
    idempotency::conformance_tests!(|| async {
        let (_, connection) =
            super::redis_support::standalone("redis conformance (claim by script)").await?;
        Some(
            idempotency::RedisStore::builder(connection)
                .prefix(super::redis_support::unique_prefix("claim-by-script"))
                .claim_by_script(true)
                .build()
                .expect("prefix"),
        )
    });
}

/// An application error: the body's own failure, or the SDK's.
#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error("the body failed")]
    Body,
    #[error(transparent)]
    Idempotency(#[from] Error),
}

fn key_of(namespace: &str, material: &str) -> Key {
    Key::derive(namespace.to_owned(), 1, &material).expect("key")
}

fn fingerprint(tag: &str) -> Fingerprint {
    Fingerprint::from_digest(Digest::of_bytes(tag.as_bytes()))
}

const HOUR: Duration = Duration::from_secs(3600);

/// Runs `key` through `idempotency`; the body counts its runs and answers `output`.
async fn call(
    idempotency: &Idempotency,
    key: &Key,
    runs: &AtomicUsize,
    output: &str,
) -> Result<String, AppError> {
    idempotency
        .run(key.clone(), fingerprint("call"), || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(output.to_owned())
        })
        .await
}

#[tokio::test]
async fn round_trips_are_exact() {
    let Some(server) = RedisServer::start("redis round trips") else {
        return;
    };
    let connection = manager(&server.url(), Duration::from_secs(2))
        .await
        .expect("connect");
    let store = RedisStore::builder(connection)
        .prefix(unique_prefix("round-trips"))
        .build()
        .expect("prefix");
    let idempotency = Idempotency::new(store.clone());
    let mut counter = RoundTrips::new(&server.url()).await;
    let runs = AtomicUsize::new(0);

    // Loading the scripts ahead of time is a CONFIG GET (the eviction policy) and 4 SCRIPT
    // LOADs (the claim script is only for servers older than Redis 7); from then on a claim
    // is one SET, and complete, release and renew one EVALSHA each.
    counter.begin().await;
    store.load_scripts().await.expect("load scripts");
    counter
        .end()
        .await
        .assert(&[("config|get", 1), ("script|load", 4)], "load_scripts");

    let first = key_of("round-trips", "first");
    counter.begin().await;
    let output = call(&idempotency, &first, &runs, "receipt-1").await;
    let sent = counter.end().await;
    assert_eq!(output.expect("first"), "receipt-1");
    sent.assert_executed(
        &[("set", 1), ("evalsha", 1)],
        &[("set", 2), ("evalsha", 1)],
        "first execution = claim (SET NX GET) + complete (EVALSHA, which SETs inside)",
    );

    counter.begin().await;
    let replayed = call(&idempotency, &first, &runs, "receipt-2").await;
    let sent = counter.end().await;
    assert_eq!(replayed.expect("replay"), "receipt-1");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    sent.assert(&[("set", 1)], "replay = claim");

    let failing = key_of("round-trips", "failing");
    counter.begin().await;
    let failed: Result<String, AppError> = idempotency
        .run(failing.clone(), fingerprint("call"), || async {
            Err(AppError::Body)
        })
        .await;
    let sent = counter.end().await;
    assert!(matches!(failed, Err(AppError::Body)), "{failed:?}");
    sent.assert(
        &[("set", 1), ("evalsha", 1)],
        "failed body = claim + release",
    );
    assert!(
        store.get(&failing).await.expect("get").is_none(),
        "released"
    );

    counter.begin().await;
    let reused: Result<String, AppError> = idempotency
        .run(first.clone(), fingerprint("other arguments"), || async {
            Ok("never".to_owned())
        })
        .await;
    let sent = counter.end().await;
    assert!(
        matches!(reused, Err(AppError::Idempotency(Error::KeyReused { .. }))),
        "{reused:?}"
    );
    sent.assert(&[("set", 1)], "key reuse = claim");

    // A server that lost its scripts (restart, SCRIPT FLUSH) gets them back on first use:
    // EVALSHA answers NOSCRIPT, the script is loaded, EVALSHA runs again.
    let mut admin = admin(&server.url()).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .expect("SCRIPT FLUSH");
    let after_flush = key_of("round-trips", "after flush");
    counter.begin().await;
    let output = call(&idempotency, &after_flush, &runs, "receipt-3").await;
    let sent = counter.end().await;
    assert_eq!(output.expect("first after the flush"), "receipt-3");
    sent.assert_executed(
        &[("set", 1), ("evalsha", 2), ("script|load", 1)],
        &[("set", 2), ("evalsha", 2), ("script|load", 1)],
        "NOSCRIPT fallback",
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    counter.begin().await;
    assert!(store.get(&first).await.expect("get").is_some());
    assert!(store.remove(&first).await.expect("remove"));
    counter
        .end()
        .await
        .assert(&[("get", 1), ("del", 1)], "get + remove");
}

/// Writes `value` under the Redis key of `key`, as something other than this crate would.
async fn plant(url: &str, store: &RedisStore, key: &Key, value: &[u8]) {
    let mut admin = admin(url).await;
    let _: () = admin
        .set(store.redis_key(key), value)
        .await
        .expect("SET a foreign value");
}

fn assert_corrupt<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::Corrupt { detail }) => {
            assert!(detail.contains("redis key"), "{what}: {detail}")
        }
        other => panic!("{what}: expected a corrupt-record error, got {other:?}"),
    }
}

#[tokio::test]
async fn values_we_did_not_write_are_corrupt_records_not_panics() {
    let Some((url, connection)) = standalone("redis corrupt values").await else {
        return;
    };
    let store = RedisStore::builder(connection)
        .prefix(unique_prefix("corrupt"))
        .build()
        .expect("prefix");
    let idempotency = Idempotency::new(store.clone());
    let mut admin = admin(&url).await;
    let token = Token::random();
    let valid_looking_in_progress = {
        let mut value = b"idem1P".to_vec();
        value.extend_from_slice(&[7; 48]);
        value.extend_from_slice(b"00000000000000x");
        value
    };
    let foreign: [(&str, Vec<u8>); 5] = [
        ("a plain string", b"hello".to_vec()),
        ("an empty string", Vec::new()),
        ("a truncated in-progress record", b"idem1P\x01\x02".to_vec()),
        (
            "an in-progress record with a bad time",
            valid_looking_in_progress,
        ),
        ("a truncated completed record", b"idem1Cshort".to_vec()),
    ];
    for (what, value) in foreign {
        let key = key_of("corrupt", what);
        plant(&url, &store, &key, &value).await;
        assert_corrupt(
            store
                .claim(&key, ClaimRequest::new(fingerprint("a"), HOUR))
                .await,
            what,
        );
        assert_corrupt(
            store
                .complete(
                    &key,
                    Completion::new(token, fingerprint("a"), Bytes::from_static(b"x"), HOUR),
                )
                .await,
            what,
        );
        assert_corrupt(store.release(&key, &token).await, what);
        assert_corrupt(store.renew(&key, &token, HOUR).await, what);
        assert_corrupt(store.get(&key).await, what);

        let runs = AtomicUsize::new(0);
        match call(&idempotency, &key, &runs, "never").await {
            Err(AppError::Idempotency(Error::CorruptRecord { detail, .. })) => {
                assert!(detail.contains(&store.redis_key(&key)), "{detail}")
            }
            other => panic!("{what}: expected CorruptRecord, got {other:?}"),
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            0,
            "{what}: the body must not run"
        );
        let raw: Vec<u8> = admin.get(store.redis_key(&key)).await.expect("GET");
        assert_eq!(raw, value, "{what}: a foreign value is left alone");
        assert!(
            store.remove(&key).await.expect("remove"),
            "remove deletes anything"
        );
    }

    // Another Redis type under our key.
    let key = key_of("corrupt", "a hash");
    let _: () = admin
        .hset(store.redis_key(&key), "field", "value")
        .await
        .expect("HSET");
    assert_corrupt(
        store
            .claim(&key, ClaimRequest::new(fingerprint("a"), HOUR))
            .await,
        "a hash",
    );
    assert_corrupt(
        store
            .complete(
                &key,
                Completion::new(token, fingerprint("a"), Bytes::new(), HOUR),
            )
            .await,
        "a hash",
    );
    assert_corrupt(store.release(&key, &token).await, "a hash");
    assert_corrupt(store.renew(&key, &token, HOUR).await, "a hash");
    assert_corrupt(store.get(&key).await, "a hash");
    let runs = AtomicUsize::new(0);
    assert!(matches!(
        call(&idempotency, &key, &runs, "never").await,
        Err(AppError::Idempotency(Error::CorruptRecord { .. }))
    ));
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert!(store.remove(&key).await.expect("remove"));
}

#[tokio::test]
async fn odd_keys_are_hashed_and_run_once() {
    let Some((url, connection)) = standalone("redis odd keys").await else {
        return;
    };
    let prefix = unique_prefix("odd-keys");
    let store = RedisStore::builder(connection)
        .prefix(prefix.clone())
        .build()
        .expect("prefix");
    let idempotency = Idempotency::new(store.clone());
    let mut admin = admin(&url).await;
    let long = "k".repeat(10 * 1024);
    let odd = [
        "with spaces",
        "new\nline\r\n",
        "{hash-tag}",
        "}{",
        "{}",
        "quote'\"; DEL *",
        long.as_str(),
    ];
    for text in odd {
        // Odd text as the namespace and as the key material.
        for key in [key_of(text, "material"), key_of("odd-keys", text)] {
            let redis_key = store.redis_key(&key);
            let suffix = &redis_key[prefix.len()..];
            assert!(
                suffix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{redis_key:?}"
            );
            assert_eq!(suffix.len(), 48, "{redis_key:?}");
            let runs = AtomicUsize::new(0);
            let first = call(&idempotency, &key, &runs, text).await.expect("first");
            let again = call(&idempotency, &key, &runs, "other")
                .await
                .expect("replay");
            assert_eq!((first.as_str(), again.as_str()), (text, text));
            assert_eq!(runs.load(Ordering::SeqCst), 1);
            let exists: bool = admin.exists(&redis_key).await.expect("EXISTS");
            assert!(exists, "the record lives at {redis_key:?}");
        }
    }
}

#[tokio::test]
async fn outputs_over_the_limit_run_once_and_are_recorded_as_not_stored() {
    let Some((_, connection)) = standalone("redis output limit").await else {
        return;
    };
    let store = RedisStore::builder(connection)
        .prefix(unique_prefix("limit"))
        .max_output_bytes(1024)
        .build()
        .expect("prefix");
    let idempotency = Idempotency::new(store.clone());
    let key = key_of("limit", "big");
    let big = "x".repeat(2000);
    let runs = AtomicUsize::new(0);
    let first = call(&idempotency, &key, &runs, &big).await;
    assert_eq!(first.expect("the first call gets its result"), big);
    for retry in [big.as_str(), "fits"] {
        match call(&idempotency, &key, &runs, retry).await {
            Err(AppError::Idempotency(error @ Error::OutputNotStored { .. })) => {
                assert!(
                    error.to_string().contains("over the limit of 1024"),
                    "{error}"
                );
            }
            other => panic!("expected OutputNotStored, got {other:?}"),
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the body ran once");
    assert!(
        matches!(
            store.get(&key).await.expect("get"),
            Some(Record::Completed { .. })
        ),
        "the record says the body ran"
    );

    // The store itself refuses before sending anything.
    let other = key_of("limit", "direct");
    let Claim::Acquired { token, .. } = store
        .claim(&other, ClaimRequest::new(fingerprint("a"), HOUR))
        .await
        .expect("claim")
    else {
        panic!("a fresh key is acquired");
    };
    let refused = store
        .complete(
            &other,
            Completion::new(token, fingerprint("a"), Bytes::from(vec![0; 1025]), HOUR),
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(StoreError::TooLarge {
                size: 1025,
                limit: 1024
            })
        ),
        "{refused:?}"
    );
    store
        .complete(
            &other,
            Completion::new(token, fingerprint("a"), Bytes::from(vec![0; 1024]), HOUR),
        )
        .await
        .expect("at the limit");
}

#[tokio::test]
async fn abandoned_in_progress_records_leave_with_their_lease() {
    let Some((_, connection)) = standalone("redis lease expiry").await else {
        return;
    };
    let store = RedisStore::builder(connection)
        .prefix(unique_prefix("lease-expiry"))
        .build()
        .expect("prefix");
    let key = key_of("lease expiry", "abandoned");
    let Claim::Acquired { .. } = store
        .claim(
            &key,
            ClaimRequest::new(fingerprint("a"), Duration::from_millis(200)),
        )
        .await
        .expect("claim")
    else {
        panic!("acquired");
    };
    assert!(store.get(&key).await.expect("get").is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        store.get(&key).await.expect("get").is_none(),
        "redis dropped the in-progress record when its lease passed"
    );
}

/// A late owner whose lease passed and whose key nobody claimed still completes; once another
/// caller has claimed the key, the late owner is fenced out.
#[tokio::test]
async fn a_late_owner_completes_unless_taken_over() {
    let Some(store) = standalone_store("redis late owner").await else {
        return;
    };
    let lease = Duration::from_millis(200);
    let alone = key_of("late owner", "alone");
    let Claim::Acquired { token, .. } = store
        .claim(&alone, ClaimRequest::new(fingerprint("a"), lease))
        .await
        .expect("claim")
    else {
        panic!("acquired");
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    store
        .complete(
            &alone,
            Completion::new(token, fingerprint("a"), Bytes::from_static(b"late"), HOUR),
        )
        .await
        .expect("a late owner nobody took over completes");
    match store
        .claim(&alone, ClaimRequest::new(fingerprint("a"), HOUR))
        .await
    {
        Ok(Claim::Completed {
            fingerprint: stored,
            output,
            ..
        }) => {
            assert_eq!(stored, fingerprint("a"));
            assert_eq!(&output[..], b"late");
        }
        other => panic!("the late owner's output, got {other:?}"),
    }

    let taken = key_of("late owner", "taken over");
    let Claim::Acquired { token: old, .. } = store
        .claim(&taken, ClaimRequest::new(fingerprint("a"), lease))
        .await
        .expect("claim")
    else {
        panic!("acquired");
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let Claim::Acquired { token: new, .. } = store
        .claim(&taken, ClaimRequest::new(fingerprint("a"), HOUR))
        .await
        .expect("claim")
    else {
        panic!("the lease passed: acquired");
    };
    assert!(matches!(
        store
            .complete(
                &taken,
                Completion::new(old, fingerprint("a"), Bytes::from_static(b"late"), HOUR)
            )
            .await,
        Err(StoreError::LeaseLost)
    ));
    store
        .complete(
            &taken,
            Completion::new(new, fingerprint("a"), Bytes::from_static(b"new"), HOUR),
        )
        .await
        .expect("the new owner completes");
}

#[tokio::test]
async fn a_prefix_with_braces_is_refused() {
    let client = Client::open("redis://127.0.0.1:1").expect("url");
    let connection =
        ConnectionManager::new_lazy_with_config(client, manager_config(Duration::from_secs(1)))
            .expect("lazy manager");
    for prefix in ["app:{env}:", "{", "x}"] {
        let refused = RedisStore::builder(connection.clone())
            .prefix(prefix)
            .build();
        let error = refused.expect_err("braces are refused");
        assert_eq!(error.prefix(), prefix);
        assert!(error.to_string().contains("hash tag"), "{error}");
    }
    assert!(
        RedisStore::builder(connection)
            .prefix("app:env:")
            .build()
            .is_ok()
    );
}

fn assert_fails_closed(result: &Result<String, AppError>, op: StoreOp, what: &str) {
    match result {
        Err(AppError::Idempotency(Error::Store {
            op: failed,
            source: StoreError::Unavailable(_) | StoreError::Timeout(_),
            ..
        })) if *failed == op => {}
        other => panic!("{what}: expected a typed store error on {op}, got {other:?}"),
    }
}

/// Generous bound on how far past the configured timeout a failure may come (a loaded CI
/// machine); without the store's own timeout the manager would retry for much longer.
const SLACK: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn a_dead_port_fails_closed_within_the_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port(); // the listener is dropped: nothing listens there now
    let client = Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    // Lazy: the store is built while Redis is down, as at a service's start during an outage.
    let connection = ConnectionManager::new_lazy_with_config(
        client,
        manager_config(Duration::from_secs(5)).set_number_of_retries(6),
    )
    .expect("lazy manager");
    let timeout = Duration::from_millis(400);
    let store = RedisStore::builder(connection)
        .response_timeout(timeout)
        .build()
        .expect("prefix");
    let idempotency = Idempotency::new(store.clone());
    let runs = AtomicUsize::new(0);
    for attempt in 0..3 {
        let started = Instant::now();
        let result = call(&idempotency, &key_of("dead", "port"), &runs, "never").await;
        let took = started.elapsed();
        assert_fails_closed(&result, StoreOp::Claim, &format!("attempt {attempt}"));
        assert!(took < timeout + SLACK, "attempt {attempt} took {took:?}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the body never runs");
    let claim = store
        .claim(
            &key_of("dead", "port"),
            ClaimRequest::new(fingerprint("a"), HOUR),
        )
        .await;
    assert!(
        matches!(
            claim,
            Err(StoreError::Unavailable(_) | StoreError::Timeout(_))
        ),
        "{claim:?}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // Accepts connections and reads nothing back: every request hangs.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let holder = std::thread::spawn({
        let done = Arc::clone(&done);
        move || {
            let mut held = Vec::new();
            listener.set_nonblocking(true).expect("nonblocking");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && held.len() < 16 && !done.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((socket, _)) => held.push(socket),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    });
    let client = Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let config = idempotency::redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(None);
    let connection = ConnectionManager::new_lazy_with_config(client, config).expect("lazy manager");
    let timeout = Duration::from_millis(300);
    let store = RedisStore::builder(connection)
        .response_timeout(timeout)
        .build()
        .expect("prefix");
    let idempotency = Idempotency::new(store.clone());
    let runs = AtomicUsize::new(0);
    let started = Instant::now();
    let result = call(&idempotency, &key_of("silent", "server"), &runs, "never").await;
    let took = started.elapsed();
    match &result {
        Err(AppError::Idempotency(Error::Store {
            op: StoreOp::Claim,
            source: StoreError::Timeout(after),
            ..
        })) => assert_eq!(*after, timeout),
        other => panic!("expected a claim timeout, got {other:?}"),
    }
    assert!(took < timeout + SLACK, "took {took:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    drop(idempotency);
    drop(store);
    done.store(true, Ordering::SeqCst);
    let _ = holder.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_run_then_restarted() {
    let Some(mut server) = RedisServer::start("redis outage") else {
        return;
    };
    let timeout = Duration::from_millis(500);
    let connection = manager(&server.url(), timeout).await.expect("connect");
    let store = RedisStore::builder(connection)
        .prefix(unique_prefix("outage"))
        .response_timeout(timeout)
        .build()
        .expect("prefix");
    let idempotency = Arc::new(Idempotency::new(store));
    let runs = Arc::new(AtomicUsize::new(0));

    let before = call(&idempotency, &key_of("outage", "before"), &runs, "ok").await;
    assert_eq!(before.expect("while up"), "ok");

    // Killed while a body runs: the body already ran, its result cannot be stored.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let during = tokio::spawn({
        let idempotency = Arc::clone(&idempotency);
        let runs = Arc::clone(&runs);
        async move {
            idempotency
                .run(
                    key_of("outage", "during"),
                    fingerprint("call"),
                    || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let _ = started_tx.send(());
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, AppError>("ran".to_owned())
                    },
                )
                .await
        }
    });
    started_rx.await.expect("the body started");
    server.kill();
    let during = during.await.expect("task");
    assert_fails_closed(&during, StoreOp::Complete, "complete after the kill");
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    // While down: fail closed, within the timeout, the body does not run.
    for attempt in 0..3 {
        let started = Instant::now();
        let result = call(&idempotency, &key_of("outage", "down"), &runs, "never").await;
        let took = started.elapsed();
        assert_fails_closed(&result, StoreOp::Claim, &format!("down, attempt {attempt}"));
        assert!(
            took < timeout + SLACK,
            "down, attempt {attempt} took {took:?}"
        );
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "no body ran while Redis was down"
    );

    // Back on the same port: the same store recovers by itself.
    server.restart();
    let after = key_of("outage", "after");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failures = 0;
    let output = loop {
        match call(&idempotency, &after, &runs, "recovered").await {
            Ok(output) => break output,
            Err(error) => {
                assert!(
                    matches!(
                        &error,
                        AppError::Idempotency(Error::Store {
                            op: StoreOp::Claim,
                            ..
                        })
                    ),
                    "only claims may fail while reconnecting: {error:?}"
                );
                failures += 1;
                assert!(
                    Instant::now() < deadline && failures < 200,
                    "no recovery after {failures} attempts: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(output, "recovered");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "the body ran once after the restart"
    );
    let replay = call(&idempotency, &after, &runs, "again")
        .await
        .expect("replay");
    assert_eq!(replay, "recovered");
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

/// Set in the environment of the child processes of `exactly_once_across_four_processes`.
const WORKER_ENV: &str = "IDEMPOTENCY_REDIS_WORKER";
const PROCESSES: usize = 4;
const TASKS: usize = 100;

/// One child process: `TASKS` concurrent calls with one key. Each task has its own executor,
/// so nothing coalesces in process and every task's claim races in Redis. Prints one
/// `OUTPUT <value>` line a call.
#[test]
#[ignore = "a child process of exactly_once_across_four_processes"]
fn process_worker() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        return;
    };
    let mut parts = spec.split('|');
    let (Some(url), Some(prefix), Some(start_at)) = (parts.next(), parts.next(), parts.next())
    else {
        panic!("bad {WORKER_ENV}: {spec}");
    };
    let start_at: u64 = start_at.parse().expect("start time");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let connection = manager(url, Duration::from_secs(5)).await.expect("connect");
        let store = RedisStore::builder(connection.clone())
            .prefix(prefix)
            .response_timeout(Duration::from_secs(5))
            .build()
            .expect("prefix");
        let counter = format!("{prefix}body-runs");
        let the_key = key_of("processes", "one key");
        // Start together with the other processes.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        tokio::time::sleep(Duration::from_millis(start_at.saturating_sub(now))).await;
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let idempotency = Idempotency::new(store.clone());
                let mut connection = connection.clone();
                let counter = counter.clone();
                let the_key = the_key.clone();
                tokio::spawn(async move {
                    idempotency
                        .run(the_key, fingerprint("same inputs"), || async move {
                            let _: i64 = connection
                                .incr(&counter, 1)
                                .await
                                .map_err(|_| AppError::Body)?;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            Ok::<_, AppError>(format!(
                                "pid {} token {}",
                                std::process::id(),
                                Token::random()
                            ))
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            match task.await.expect("task") {
                Ok(output) => println!("OUTPUT {output}"),
                Err(error) => println!("ERROR {error}"),
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_across_four_processes() {
    let Some((url, mut admin)) = standalone("redis exactly once across processes").await else {
        return;
    };
    let prefix = unique_prefix("processes");
    let start_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
        + 1500;
    let exe = std::env::current_exe().expect("the test binary");
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            tokio::process::Command::new(&exe)
                .args(["process_worker", "--exact", "--ignored", "--nocapture"])
                .args(["--test-threads", "1"])
                .env(WORKER_ENV, format!("{url}|{prefix}|{start_at}"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn a worker process")
        })
        .collect();
    let mut outputs = Vec::new();
    for child in children {
        let finished = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("a worker process finishes within 2 minutes")
            .expect("worker output");
        let stdout = String::from_utf8_lossy(&finished.stdout);
        assert!(
            finished.status.success(),
            "worker failed: {stdout}\n{}",
            String::from_utf8_lossy(&finished.stderr)
        );
        // The harness prints `test process_worker ... ` before the first line of output.
        for line in stdout.lines() {
            assert!(!line.contains("ERROR "), "a call failed: {line}");
            if let Some((_, output)) = line.split_once("OUTPUT ") {
                outputs.push(output.to_owned());
            }
        }
    }
    assert_eq!(outputs.len(), PROCESSES * TASKS, "every call answered");
    assert!(
        outputs.iter().all(|output| *output == outputs[0]),
        "every caller gets the same output"
    );
    let runs: i64 = admin
        .get(format!("{prefix}body-runs"))
        .await
        .expect("GET the run counter");
    assert_eq!(
        runs, 1,
        "the body ran exactly once across {PROCESSES} processes"
    );
    let _: () = admin.del(format!("{prefix}body-runs")).await.expect("DEL");
}

#[tokio::test]
async fn renew_and_takeover_through_the_store() {
    let Some(store) = standalone_store("redis renew").await else {
        return;
    };
    let key = key_of("renew", "long body");
    let lease = Duration::from_secs(1);
    let Claim::Acquired { token, took_over } = store
        .claim(&key, ClaimRequest::new(fingerprint("a"), lease))
        .await
        .expect("claim")
    else {
        panic!("acquired");
    };
    assert!(!took_over);
    // Renewed three times, the claim holds past its first lease.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        store.renew(&key, &token, lease).await.expect("renew");
    }
    assert!(matches!(
        store
            .claim(&key, ClaimRequest::new(fingerprint("a"), HOUR))
            .await,
        Ok(Claim::InProgress { .. })
    ));
    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    // Redis freed the key when the lease passed: the takeover is a plain claim (it cannot
    // tell a takeover from a free key, so it reports none).
    match store
        .claim(&key, ClaimRequest::new(fingerprint("a"), HOUR))
        .await
    {
        Ok(Claim::Acquired { took_over, .. }) => assert!(!took_over),
        other => panic!("expected a takeover, got {other:?}"),
    }
    assert!(matches!(
        store.renew(&key, &token, lease).await,
        Err(StoreError::LeaseLost)
    ));
}

/// A server older than Redis 7 refuses `SET … NX GET` as a syntax error: the store notices on
/// its first claim, claims with the script instead (the refused command wrote nothing), and
/// from then on sends the script directly. Played by a fake server on loopback that answers
/// like Redis 6.2.
#[tokio::test]
async fn a_server_older_than_redis_7_gets_the_claim_script() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let commands = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&commands);
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        let (read, mut write) = socket.into_split();
        let mut read = BufReader::new(read);
        // A number after a one-byte RESP marker (`*3`, `$69`), up to its CRLF.
        async fn number(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<usize> {
            let mut line = Vec::new();
            if read.read_until(b'\n', &mut line).await.ok()? == 0 {
                return None;
            }
            std::str::from_utf8(&line[1..]).ok()?.trim().parse().ok()
        }
        // RESP arrays of bulk strings (arguments may be binary: read them by length).
        while let Some(count) = number(&mut read).await {
            let mut args = Vec::with_capacity(count);
            for _ in 0..count {
                let length = number(&mut read).await.expect("a bulk length");
                let mut arg = vec![0u8; length + 2];
                read.read_exact(&mut arg).await.expect("an argument");
                arg.truncate(length);
                args.push(arg);
            }
            let name = String::from_utf8_lossy(&args[0]).to_uppercase();
            seen.lock().expect("lock").push(name.clone());
            let reply: &[u8] = match name.as_str() {
                "SET" if args.iter().any(|a| a.eq_ignore_ascii_case(b"GET")) => {
                    b"-ERR syntax error\r\n"
                }
                // The claim script: the key was free.
                "EVALSHA" => b":0\r\n",
                _ => b"+OK\r\n",
            };
            write.write_all(reply).await.expect("write");
        }
    });
    let connection = redis_support::manager(&format!("redis://{address}"), Duration::from_secs(2))
        .await
        .expect("connect to the fake server");
    let store = RedisStore::builder(connection)
        .prefix(unique_prefix("old-server"))
        .build()
        .expect("prefix");
    for n in 0..2 {
        match store
            .claim(
                &key_of("old server", &n.to_string()),
                ClaimRequest::new(fingerprint("a"), HOUR),
            )
            .await
        {
            Ok(Claim::Acquired { .. }) => {}
            other => panic!("claim {n} on an old server: {other:?}"),
        }
    }
    let commands = commands.lock().expect("lock").clone();
    let claims: Vec<&str> = commands
        .iter()
        .map(String::as_str)
        .filter(|c| matches!(*c, "SET" | "EVALSHA"))
        .collect();
    assert_eq!(
        claims,
        ["SET", "EVALSHA", "EVALSHA"],
        "one refused SET, then the script for both claims ({commands:?})"
    );
    assert!(format!("{store:?}").contains("claim_by_script: true"));
    server.abort();
}

/// Linearizable through a proxy that delays replies and cuts connections between a request
/// and its reply: an operation whose reply was lost may have happened or not, never anything
/// else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_are_linearizable_through_a_faulty_proxy() {
    use at_most_once_support::{linearizability, proxy};
    let Some((url, _)) = standalone("redis linearizability").await else {
        return;
    };
    let seed = linearizability::seed();
    println!("linearizability seed {seed}");
    let (proxy, proxied) = proxy::in_front_of(&url, seed, 8).await;
    let connection = manager(&proxied, Duration::from_millis(300))
        .await
        .expect("a connection through the proxy");
    proxy.arm();
    let store = RedisStore::builder(connection)
        .prefix(unique_prefix("linearizability"))
        .response_timeout(Duration::from_millis(300))
        .build()
        .expect("prefix");
    let unknown = linearizability::check(Arc::new(store), seed, 8, 4, 14, true).await;
    println!("{} cuts, {unknown} outcomes unknown", proxy.cuts());
    assert!(proxy.cuts() > 0, "seed {seed}: the proxy cut no connection");
}

/// Linearizable across a killed and restarted server that fsyncs each write
/// (`appendfsync always`): what was acknowledged survives, Lua scripts are loaded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_survive_a_restart_with_appendfsync_always() {
    use at_most_once_support::linearizability;
    let Some(mut server) = RedisServer::start_with(
        "redis restart",
        &["--appendonly", "yes", "--appendfsync", "always"],
    ) else {
        return;
    };
    let connection = manager(&server.url(), Duration::from_millis(300))
        .await
        .expect("a connection");
    let store = RedisStore::builder(connection)
        .prefix(unique_prefix("restart"))
        .response_timeout(Duration::from_millis(300))
        .build()
        .expect("prefix");
    let seed = linearizability::seed();
    println!("linearizability seed {seed}");
    let run = tokio::spawn(linearizability::check(
        Arc::new(store),
        seed,
        8,
        4,
        14,
        true,
    ));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .expect("restart");
    let unknown = run.await.expect("linearizable across the restart");
    println!("{unknown} outcomes unknown");
    assert!(unknown > 0, "seed {seed}: no operation met the restart");
    drop(server);
}
