//! The Redis store on a 3-master Redis Cluster: the shared conformance suite, linearizable
//! histories, records spread over every master whatever the user's key text, and exact round
//! trips.
//!
//! Each test starts its own cluster with `scripts/redis-cluster.sh` on free loopback ports and
//! stops it when done (or uses the nodes in `REDIS_CLUSTER_URLS`). Without `redis-server` the
//! tests print SKIPPED; `IDEMPOTENCY_REQUIRE_SERVICES=1` makes that a failure.

#[allow(unused_macros, unused_imports)]
mod at_most_once_support;
mod redis_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency::redis::{self, aio::MultiplexedConnection};
use idempotency::{
    Digest, Error, Fingerprint, Idempotency, Key, RedisStore, Store as _, conformance,
};
use redis_support::{RedisCluster, RoundTrips, admin, unique_prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_three_master_cluster() {
    let Some(cluster) = RedisCluster::start("redis conformance (cluster)").await else {
        return;
    };
    let store = RedisStore::builder(cluster.connection(Duration::from_secs(2)).await)
        .prefix(unique_prefix("cluster-conformance"))
        .build()
        .expect("prefix");
    conformance::run_all(&store).await;
    // And with the claim run as a Lua script, as on servers older than Redis 7: its one key
    // routes the script to the record's node.
    let by_script = RedisStore::builder(cluster.connection(Duration::from_secs(2)).await)
        .prefix(unique_prefix("cluster-conformance-script"))
        .claim_by_script(true)
        .build()
        .expect("prefix");
    conformance::run_all(&by_script).await;
    // Concurrent random operations over keys spread across the masters: each key's history
    // has a linearization in the sequential `Store` model.
    let linearizable = RedisStore::builder(cluster.connection(Duration::from_secs(2)).await)
        .prefix(unique_prefix("cluster-linearizability"))
        .build()
        .expect("prefix");
    let seed = at_most_once_support::linearizability::seed();
    println!("linearizability seed {seed}");
    at_most_once_support::linearizability::check(
        std::sync::Arc::new(linearizable),
        seed,
        16,
        4,
        10,
        false,
    )
    .await;
}

async fn masters(cluster: &RedisCluster) -> Vec<MultiplexedConnection> {
    let mut nodes = Vec::new();
    for url in cluster.urls() {
        nodes.push(admin(url).await);
    }
    let topology: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut nodes[0])
        .await
        .expect("CLUSTER NODES");
    let masters = topology
        .lines()
        .filter(|line| line.contains("master"))
        .count();
    assert_eq!(masters, 3, "a 3-master cluster:\n{topology}");
    nodes
}

/// How many keys under `prefix` each node holds.
async fn keys_per_node(nodes: &mut [MultiplexedConnection], prefix: &str) -> Vec<usize> {
    let mut counts = Vec::new();
    for node in nodes {
        let mut cursor = 0u64;
        let mut count = 0;
        for _ in 0..10_000 {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(node)
                .await
                .expect("SCAN");
            count += keys.len();
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        counts.push(count);
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_spread_over_every_master_whatever_the_key_text() {
    let Some(cluster) = RedisCluster::start("redis cluster slotting").await else {
        return;
    };
    let mut nodes = masters(&cluster).await;
    let prefix = unique_prefix("cluster-slots");
    let store = RedisStore::builder(cluster.connection(Duration::from_secs(2)).await)
        .prefix(prefix.clone())
        .build()
        .expect("prefix");
    store
        .load_scripts()
        .await
        .expect("load scripts on every node");
    let idempotency = Idempotency::new(store.clone());
    let fingerprint = Fingerprint::from_digest(Digest::of_bytes(b"call"));
    let long = "n".repeat(10 * 1024);

    // Every namespace carries the same `{tag}`: as raw Redis keys they would all share one
    // slot. Hashed, they spread.
    let namespaces: Vec<String> = (0..60)
        .map(|n| match n % 4 {
            0 => format!("{{tag}} with spaces {n}"),
            1 => format!("{{tag}}\nnew line {n}"),
            2 => format!("{{tag}}{{}}}}{{ {n}"),
            _ => format!("{{tag}}{long}{n}"),
        })
        .collect();
    let runs = AtomicUsize::new(0);
    for namespace in &namespaces {
        let key = Key::new(namespace.clone(), 1, Digest::of_bytes(b"material"));
        for _ in 0..2 {
            let output: Result<String, Error> = idempotency
                .run(key.clone(), fingerprint, || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok(namespace.clone())
                })
                .await;
            assert_eq!(output.expect("call"), *namespace);
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), namespaces.len(), "once a key");
    let per_node = keys_per_node(&mut nodes, &prefix).await;
    assert_eq!(
        per_node.iter().sum::<usize>(),
        namespaces.len(),
        "one redis key a record"
    );
    assert!(
        per_node.iter().all(|&n| n > 0),
        "records on every master: {per_node:?}"
    );
    // One SCAN visits one node: listing a cluster is refused, not partial.
    let listed = store.list(idempotency::store::ListRequest::all()).await;
    assert!(
        matches!(listed, Err(idempotency::StoreError::Unsupported(_))),
        "{listed:?}"
    );
    let counted = store.stats(1000).await;
    assert!(
        matches!(counted, Err(idempotency::StoreError::Unsupported(_))),
        "{counted:?}"
    );

    // Exact round trips, counted on every node of the cluster.
    let mut counters = Vec::new();
    for url in cluster.urls() {
        counters.push(RoundTrips::new(url).await);
    }
    let key = Key::new("cluster round trips", 1, Digest::of_bytes(b"m"));
    for counter in &mut counters {
        counter.begin().await;
    }
    let first: Result<u32, Error> = idempotency
        .run(key.clone(), fingerprint, || async { Ok(7) })
        .await;
    assert_eq!(first.expect("first"), 7);
    let mut owner = None;
    for (node, counter) in counters.iter_mut().enumerate() {
        let sent = counter.end().await;
        if sent.by_clients.is_empty() {
            continue;
        }
        sent.assert_executed(
            &[("set", 1), ("evalsha", 1)],
            &[("set", 2), ("evalsha", 1)],
            "first execution on the cluster",
        );
        assert!(owner.replace(node).is_none(), "one node serves the key");
    }
    let owner = owner.expect("a node served the key");
    for counter in &mut counters {
        counter.begin().await;
    }
    let replay: Result<u32, Error> = idempotency.run(key, fingerprint, || async { Ok(8) }).await;
    assert_eq!(replay.expect("replay"), 7);
    for (node, counter) in counters.iter_mut().enumerate() {
        let expected: &[(&str, u64)] = if node == owner { &[("set", 1)] } else { &[] };
        counter
            .end()
            .await
            .assert(expected, "replay on the cluster");
    }
}

/// `load_scripts` asks every node for its eviction policy (a cluster connection alone would ask
/// one at random), and `wait_for_replicas` pipelines its `WAIT` to the record's node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_is_checked_and_wait_goes_to_the_records_node() {
    let Some(cluster) = RedisCluster::start("redis cluster server checks").await else {
        return;
    };
    let store = RedisStore::builder(cluster.connection(Duration::from_secs(2)).await)
        .prefix(unique_prefix("cluster-checks"))
        // No replicas here: each completion waits 50 ms, warns, and keeps its record.
        .wait_for_replicas(1, Duration::from_millis(50))
        .build()
        .expect("prefix");
    store.load_scripts().await.expect("every node: noeviction");

    let last = cluster.urls().last().expect("nodes").clone();
    let set_policy = |policy: &'static str| {
        let url = last.clone();
        async move {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory-policy")
                .arg(policy)
                .query_async(&mut admin(&url).await)
                .await
                .expect("CONFIG SET");
        }
    };
    set_policy("allkeys-lfu").await;
    let refused = store.load_scripts().await;
    set_policy("noeviction").await;
    let error = match &refused {
        Err(idempotency::StoreError::Backend(source)) => source
            .downcast_ref::<idempotency::RedisEvictionPolicyError>()
            .unwrap_or_else(|| panic!("an eviction policy error, got {source:?}")),
        other => panic!("one evicting node refuses the cluster, got {other:?}"),
    };
    assert_eq!(error.policy(), "allkeys-lfu");
    let port = last.rsplit(':').next().expect("a port");
    assert!(
        error.node().is_some_and(|node| node.ends_with(port)),
        "names the node {last}: {error}"
    );

    let idempotency = Idempotency::new(store);
    let fingerprint = Fingerprint::from_digest(Digest::of_bytes(b"call"));
    let runs = AtomicUsize::new(0);
    for n in 0..12 {
        let key = Key::new(
            "cluster-wait",
            1,
            Digest::of_bytes(format!("{n}").as_bytes()),
        );
        for _ in 0..2 {
            let output: Result<u32, Error> = idempotency
                .run(key.clone(), fingerprint, || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok(n)
                })
                .await;
            assert_eq!(output.expect("complete with WAIT, then replay"), n);
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), 12, "once a key");
}
