//! The Redis store over Redis Sentinel ([`SentinelConnection`]): a master, a replica and 3
//! sentinels started by `scripts/redis-sentinel.sh` on free loopback ports; calls run, the
//! master is killed (SIGKILL), calls fail closed (a typed store error, the body not run) until
//! the sentinels promote the replica, and then the store reaches the new master by itself
//! within [`FAILOVER_BOUND`]. A record replicated before the failover (`WAIT`) is replayed
//! from the new master.
//!
//! Without `redis-server` / `redis-cli` the test prints SKIPPED;
//! `IDEMPOTENCY_REQUIRE_SERVICES=1` makes that a failure. The group is stopped on drop.

mod tls_support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idempotency::redis::sentinel::{SentinelClient, SentinelServerType};
use idempotency::redis::{self, AsyncConnectionConfig, Client};
use idempotency::testing::unreachable;
use idempotency::{Error, Idempotency, RedisStore, SentinelConnection, StoreError, Token};

const SUITE: &str = "redis_sentinel";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redis-sentinel.sh");
/// What the store's docs promise with the script's `down-after-milliseconds 1000`: the store
/// writes to the promoted master within this long after the master died (measured here: about
/// 2–3 s; the bound leaves room for a loaded CI machine).
const FAILOVER_BOUND: Duration = Duration::from_secs(15);

/// A sentinel group from `scripts/redis-sentinel.sh`; stopped on drop.
struct SentinelGroup {
    dir: PathBuf,
    urls: Vec<String>,
}

impl SentinelGroup {
    fn start() -> Option<SentinelGroup> {
        let dir = std::env::temp_dir().join(format!(
            "idempotency-sentinel-{}-{}",
            std::process::id(),
            Token::random()
        ));
        let output = Command::new("bash")
            .arg(SCRIPT)
            .arg("start")
            .arg(&dir)
            .stdin(Stdio::null())
            .output();
        match output {
            Ok(output) if output.status.success() => Some(SentinelGroup {
                urls: String::from_utf8_lossy(&output.stdout)
                    .trim()
                    .split(',')
                    .map(str::to_owned)
                    .collect(),
                dir,
            }),
            // 3: redis-server or redis-cli is not installed.
            Ok(output) if output.status.code() == Some(3) => {
                let why = String::from_utf8_lossy(&output.stderr).trim().to_owned();
                unreachable(
                    SUITE,
                    "a sentinel group from scripts/redis-sentinel.sh",
                    &why,
                );
                None
            }
            Ok(output) => panic!(
                "scripts/redis-sentinel.sh start failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => {
                unreachable(SUITE, "bash scripts/redis-sentinel.sh", &error);
                None
            }
        }
    }

    fn master_port(&self) -> u16 {
        std::fs::read_to_string(self.dir.join("master"))
            .expect("DIR/master")
            .trim()
            .parse()
            .expect("a port")
    }

    /// SIGKILLs the server on `port`: no goodbye to its clients, no shutdown save.
    fn kill(&self, port: u16) {
        let pid = std::fs::read_to_string(self.dir.join(format!("{port}.pid"))).expect("pid");
        let killed = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("kill");
        assert!(killed.success(), "kill -9 {pid}");
    }

    /// The master's port as the first sentinel reports it.
    async fn reported_master(&self) -> u16 {
        let mut sentinel = Client::open(self.urls[0].as_str())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("a sentinel");
        let (_host, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mymaster")
            .query_async(&mut sentinel)
            .await
            .expect("get-master-addr-by-name");
        port
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn connection(urls: &[String]) -> SentinelConnection {
    let client = SentinelClient::build(
        urls.to_vec(),
        String::from("mymaster"), // a `String`: what `build` takes with and without `redis-tls`
        None,
        SentinelServerType::Master,
    )
    .expect("sentinel client");
    let timeout = Duration::from_millis(500);
    SentinelConnection::with_config(
        client,
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_follows_a_failover_and_fails_closed_in_between() {
    let Some(group) = SentinelGroup::start() else {
        return;
    };
    let old_master = group.master_port();
    let store = RedisStore::builder(connection(&group.urls))
        .prefix(format!("idempotency-test:sentinel:{}:", Token::random()))
        .response_timeout(Duration::from_secs(2))
        // Over the Sentinel connection too: each completion is pipelined with a `WAIT` (under
        // the connection's 500 ms response timeout), and after the failover, with no replica
        // left, it only warns.
        .wait_for_replicas(1, Duration::from_millis(300))
        .build()
        .expect("prefix");
    store.load_scripts().await.expect("the master: noeviction");
    let idempotency = Idempotency::new(store);

    let runs = Arc::new(AtomicUsize::new(0));
    let first = tls_support::charge(&idempotency, &runs, "redis_sentinel::charge", "before")
        .await
        .expect("first");
    let replay = tls_support::charge(&idempotency, &runs, "redis_sentinel::charge", "before")
        .await
        .expect("replay");
    assert_eq!(
        (first.as_str(), replay.as_str()),
        ("receipt for before, run 1", "receipt for before, run 1")
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the body ran once");

    // Replication is asynchronous: a record is on the replica only once it has been copied.
    // `WAIT` makes sure this one was, so the failover below cannot lose it (the store's own
    // `WAIT` may have timed out on a replica that has not acknowledged anything yet).
    let mut master = Client::open(format!("redis://127.0.0.1:{old_master}"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("the master");
    let copies: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query_async(&mut master)
        .await
        .expect("WAIT");
    assert_eq!(copies, 1, "the replica has the record");
    drop(master);

    group.kill(old_master);
    let killed_at = Instant::now();

    // Calls until one succeeds: every one before fails with a typed store error and never
    // runs its body.
    let during = Arc::new(AtomicUsize::new(0));
    let mut refused = 0;
    let recovered_after = loop {
        let elapsed = killed_at.elapsed();
        assert!(
            elapsed < FAILOVER_BOUND,
            "the store did not reach the promoted master within {FAILOVER_BOUND:?} ({refused} calls refused)"
        );
        match tls_support::charge(
            &idempotency,
            &during,
            "redis_sentinel::charge",
            &format!("during-{refused}"),
        )
        .await
        {
            Ok(receipt) => {
                assert_eq!(receipt, format!("receipt for during-{refused}, run 1"));
                break elapsed;
            }
            Err(Error::Store {
                source: StoreError::Unavailable(_) | StoreError::Timeout(_),
                ..
            }) => {
                assert_eq!(during.load(Ordering::SeqCst), 0, "fail closed: no body ran");
                refused += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("expected a typed store error while failing over, got {other:?}"),
        }
    };
    assert!(refused >= 1, "a call right after the kill is refused");
    assert_eq!(
        during.load(Ordering::SeqCst),
        1,
        "only the successful call ran its body"
    );
    let new_master = group.reported_master().await;
    assert_ne!(new_master, old_master, "the sentinels promoted the replica");
    eprintln!(
        "{SUITE}: master killed, {refused} calls refused, the store wrote to the promoted master after {recovered_after:?}"
    );

    // The record replicated before the failover is replayed from the new master.
    let replay = tls_support::charge(&idempotency, &runs, "redis_sentinel::charge", "before")
        .await
        .expect("replay after failover");
    assert_eq!(replay, "receipt for before, run 1");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "not run again after the failover"
    );
}
