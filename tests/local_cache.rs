//! The executor's local replay cache (`IdempotencyBuilder::local_cache`) in front of real
//! Redis, PostgreSQL and SQLite, with every store call counted: the second replay of a key in
//! one process makes no round trip; the fingerprint is still checked; a key in progress is never
//! cached; `forget` through the executor drops the entry; an entry is served no longer than its
//! record's own expiry nor `local_ttl`; and the one documented staleness window (a record
//! removed through another process replays here until `local_ttl`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

mod counted_support;

use counted_support::Counted;
use idempotency::testing::{service_url, unreachable};
use idempotency::{
    Claim, ClaimRequest, Error, Fingerprint, How, Idempotency, InProgressPolicy, Key, RedisStore,
    SqlStore, Store, Token,
};

fn key(namespace: &str, material: &str) -> Key {
    Key::derive(namespace.to_owned(), 1, &material).expect("key")
}

fn fingerprint(of: &str) -> Fingerprint {
    Fingerprint::of(&of).expect("fingerprint")
}

/// One call of `key` with `args`, counting body runs in `runs`; its output is `n`.
async fn charge(
    exec: &Idempotency,
    key: &Key,
    args: &str,
    runs: &AtomicUsize,
    n: u64,
) -> Result<u64, Error> {
    exec.call(key.clone(), fingerprint(args))
        .on_in_progress(InProgressPolicy::Reject)
        .run(|| async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>(n)
        })
        .await
}

/// Every rule, on one store. `ns` keeps this run's keys apart.
async fn rules(store: Arc<dyn Store>, ns: &str) {
    let counted = Arc::new(Counted {
        inner: Arc::clone(&store),
        calls: AtomicUsize::new(0),
    });
    let cached = Idempotency::builder(Arc::clone(&counted))
        .local_cache(1 << 20, Duration::from_secs(60))
        .build();
    let plain = Idempotency::from_shared(Arc::clone(&store));
    let runs = AtomicUsize::new(0);

    // An execution stores its output and keeps it: every replay after it is local.
    let a = key(ns, "a");
    assert_eq!(charge(&cached, &a, "x", &runs, 1).await.expect("run"), 1);
    assert!(counted.take() >= 2, "claim and complete went to the store");
    for _ in 0..3 {
        assert_eq!(charge(&cached, &a, "x", &runs, 9).await.expect("replay"), 1);
    }
    assert_eq!(counted.take(), 0, "replays of a cached key: no round trip");
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // The fingerprint is checked on a hit: other arguments are a key reuse.
    let reused = charge(&cached, &a, "other", &runs, 9).await;
    assert!(matches!(reused, Err(Error::KeyReused { .. })), "{reused:?}");
    assert_eq!(counted.take(), 0);

    // A record another executor wrote: the first replay asks the store, the next do not.
    let b = key(ns, "b");
    assert_eq!(charge(&plain, &b, "x", &runs, 2).await.expect("run"), 2);
    assert_eq!(charge(&cached, &b, "x", &runs, 9).await.expect("replay"), 2);
    assert_eq!(counted.take(), 1, "one claim found the completed record");
    assert_eq!(charge(&cached, &b, "x", &runs, 9).await.expect("replay"), 2);
    assert_eq!(
        counted.take(),
        0,
        "the second replay of the key in this process"
    );

    // A replay says when its record expires: from the store's claim answer, and from the
    // local copy.
    for (exec, from) in [(&plain, "the store"), (&cached, "the local cache")] {
        let obtained = exec
            .call(b.clone(), fingerprint("x"))
            .run_obtained(|| async { Ok::<_, Error>(9u64) })
            .await
            .expect("replay");
        assert_eq!((obtained.output, obtained.how), (2, How::Replayed));
        let expires_at = obtained.expires_at.expect("an expiry");
        let left = expires_at
            .duration_since(SystemTime::now())
            .expect("in the future");
        assert!(
            left > Duration::from_secs(23 * 3600) && left <= Duration::from_secs(24 * 3600 + 5),
            "{from}: {left:?}"
        );
    }
    counted.take();

    // A key in progress is never cached: every call asks the store.
    let c = key(ns, "c");
    let held = store
        .claim(
            &c,
            ClaimRequest::new(fingerprint("x"), Duration::from_secs(60)),
        )
        .await
        .expect("claim");
    assert!(matches!(held, Claim::Acquired { .. }), "{held:?}");
    for _ in 0..2 {
        let busy = charge(&cached, &c, "x", &runs, 9).await;
        assert!(matches!(busy, Err(Error::InProgress { .. })), "{busy:?}");
        assert_eq!(counted.take(), 1, "in progress: asked the store again");
    }

    // `forget` through this executor drops the entry: the key runs again.
    cached.forget(&a).await.expect("forget");
    counted.take();
    assert_eq!(charge(&cached, &a, "x", &runs, 3).await.expect("run"), 3);
    assert_eq!(runs.load(Ordering::SeqCst), 3, "a, b and a again");

    // The one staleness window, as documented: removed through another executor (another
    // process), the record still replays here until `local_ttl`.
    plain.forget(&a).await.expect("forget elsewhere");
    counted.take();
    assert_eq!(charge(&cached, &a, "x", &runs, 9).await.expect("stale"), 3);
    assert_eq!(counted.take(), 0);

    // An entry never outlives its record: a 1 s TTL in the store ends the local copy too.
    let short_ttl = Idempotency::builder(Arc::clone(&counted))
        .ttl(Duration::from_secs(1))
        .local_cache(1 << 20, Duration::from_secs(60))
        .build();
    let d = key(ns, "d");
    assert_eq!(charge(&short_ttl, &d, "x", &runs, 4).await.expect("run"), 4);
    assert_eq!(
        charge(&short_ttl, &d, "x", &runs, 9).await.expect("replay"),
        4
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        charge(&short_ttl, &d, "x", &runs, 5).await.expect("run"),
        5,
        "the record expired: the body runs again"
    );

    // Nor `local_ttl`: after it the store is asked again (and replays).
    let short_local = Idempotency::builder(Arc::clone(&counted))
        .local_cache(1 << 20, Duration::from_millis(500))
        .build();
    let e = key(ns, "e");
    assert_eq!(
        charge(&short_local, &e, "x", &runs, 6).await.expect("run"),
        6
    );
    counted.take();
    assert_eq!(
        charge(&short_local, &e, "x", &runs, 9)
            .await
            .expect("replay"),
        6
    );
    assert_eq!(counted.take(), 0);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        charge(&short_local, &e, "x", &runs, 9)
            .await
            .expect("replay"),
        6
    );
    assert_eq!(
        counted.take(),
        1,
        "past local_ttl: one claim, a replay from the store"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 6, "a twice, b, d twice, e");
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        &Token::random().to_string()[..10]
    )
}

#[tokio::test]
async fn the_local_cache_in_front_of_redis() {
    let url = service_url("REDIS_URL", "redis://127.0.0.1:6379");
    let connection = match idempotency::redis::Client::open(url.as_str()) {
        Ok(client) => idempotency::redis::aio::ConnectionManager::new(client).await,
        Err(error) => Err(error),
    };
    let connection = match connection {
        Ok(connection) => connection,
        Err(error) => return unreachable("local cache (redis)", &url, &error),
    };
    let store = RedisStore::builder(connection)
        .prefix(format!("{}:", unique("idempotency-local")))
        .build()
        .expect("prefix");
    rules(Arc::new(store), "local.redis").await;
}

#[tokio::test]
async fn the_local_cache_in_front_of_postgres() {
    let url = service_url("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test");
    let pool = match idempotency::sqlx::PgPool::connect(&url).await {
        Ok(pool) => pool,
        Err(error) => return unreachable("local cache (postgres)", &url, &error),
    };
    let table = unique("local");
    let store = SqlStore::builder(pool.clone())
        .table(table.as_str())
        .build()
        .expect("table");
    store.migrate().await.expect("migrate");
    rules(Arc::new(store), "local.postgres").await;
    for drop in [
        format!("DROP TABLE \"{table}\""),
        format!(
            "DROP FUNCTION \"{table}_claim\"(bytea, bytea, bytea, int8, int8, text, text, int8), \"{table}_claim\"(bytea, bytea, bytea, int8, int8, text)"
        ),
    ] {
        idempotency::sqlx::query(&drop)
            .execute(&pool)
            .await
            .expect("drop");
    }
}

#[tokio::test]
async fn the_local_cache_in_front_of_sqlite() {
    let pool = idempotency::sqlx::SqlitePool::connect("sqlite::memory:")
        .await
        .expect("sqlite");
    let store = SqlStore::builder(pool).build().expect("store");
    store.migrate().await.expect("migrate");
    rules(Arc::new(store), "local.sqlite").await;
}

/// An `#[idempotent]` function with a `Clone` output: repeat hits clone the value the entry
/// keeps (decoded once, by the first hit), with the same answers as decoding: the same output,
/// and another call's arguments under the key are still a key reuse.
mod kept_values {
    use super::*;
    use idempotency::idempotent;
    use serde::{Deserialize, Deserializer, Serialize};

    /// Decodes of a `Receipt`'s charge: how many times a stored output was decoded.
    static DECODES: AtomicUsize = AtomicUsize::new(0);

    fn counted<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        DECODES.fetch_add(1, Ordering::SeqCst);
        String::deserialize(deserializer)
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Receipt {
        #[serde(deserialize_with = "counted")]
        charge: String,
        cents: u64,
    }

    #[idempotent(store = idempotency, key = order, name = "local.kept.charge", skip(idempotency, runs))]
    async fn charge(
        idempotency: &Idempotency,
        runs: &AtomicUsize,
        order: String,
        cents: u64,
    ) -> Result<Receipt, Error> {
        let n = runs.fetch_add(1, Ordering::SeqCst);
        Ok(Receipt {
            charge: format!("ch_{order}_{n}"),
            cents,
        })
    }

    #[tokio::test]
    async fn repeat_hits_clone_the_kept_value() {
        let path = std::env::temp_dir().join(format!("{}.sqlite", unique("local-kept")));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = idempotency::sqlx::SqlitePool::connect(&url)
            .await
            .expect("sqlite");
        let store = SqlStore::builder(pool).build().expect("store");
        store.migrate().await.expect("migrate");
        let counted = Arc::new(Counted {
            inner: Arc::new(store),
            calls: AtomicUsize::new(0),
        });
        let idempotency = Idempotency::builder(Arc::clone(&counted))
            .local_cache(1 << 20, Duration::from_secs(60))
            .build();
        let runs = AtomicUsize::new(0);
        let order = unique("order");
        let first = charge(&idempotency, &runs, order.clone(), 1999)
            .await
            .expect("run");
        counted.take();
        let decodes = DECODES.load(Ordering::SeqCst);
        for _ in 0..3 {
            let replayed = charge(&idempotency, &runs, order.clone(), 1999).await;
            assert_eq!(replayed.expect("replay"), first);
        }
        assert_eq!(counted.take(), 0, "repeat hits: no round trip");
        assert_eq!(
            DECODES.load(Ordering::SeqCst) - decodes,
            1,
            "decoded once, by the first hit; the others cloned it"
        );
        let reused = charge(&idempotency, &runs, order.clone(), 5).await;
        assert!(matches!(reused, Err(Error::KeyReused { .. })), "{reused:?}");
        assert_eq!(counted.take(), 0);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let _ = std::fs::remove_file(path);
    }
}
