//! Redis test support: the shared standalone server, test-owned `redis-server`s on free
//! loopback ports, a 3-master cluster from `scripts/redis-cluster.sh`, and command counting.
//!
//! Every server a test starts is stopped by a drop guard, so also when the test fails.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use idempotency::redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use idempotency::redis::cluster_async::ClusterConnection;
use idempotency::redis::{self, Client};
use idempotency::testing::{service_url, unreachable};
use idempotency::{RedisStore, Token};

/// A prefix no other run uses.
pub(crate) fn unique_prefix(suite: &str) -> String {
    format!("idempotency-test:{suite}:{}:", Token::random())
}

/// A connection manager with bounded connection and response times, connected now.
pub(crate) async fn manager(url: &str, timeout: Duration) -> redis::RedisResult<ConnectionManager> {
    let client = Client::open(url)?;
    ConnectionManager::new_with_config(client, manager_config(timeout)).await
}

pub(crate) fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(200))
}

/// The shared standalone Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`): `None` (and a
/// SKIPPED line, or a failure under `IDEMPOTENCY_REQUIRE_SERVICES=1`) when it is not there.
pub(crate) async fn standalone(suite: &str) -> Option<(String, ConnectionManager)> {
    let url = service_url("REDIS_URL", "redis://127.0.0.1:6379");
    match manager(&url, Duration::from_secs(2)).await {
        Ok(connection) => Some((url, connection)),
        Err(error) => {
            unreachable(suite, &url, &error);
            None
        }
    }
}

/// A store on the shared standalone Redis, under a fresh prefix.
pub(crate) async fn standalone_store(suite: &str) -> Option<RedisStore> {
    let (_, connection) = standalone(suite).await?;
    Some(
        RedisStore::builder(connection)
            .prefix(unique_prefix(suite))
            .build()
            .expect("prefix"),
    )
}

/// A plain multiplexed connection, for admin commands and raw checks.
pub(crate) async fn admin(url: &str) -> MultiplexedConnection {
    Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

fn scratch_dir(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "idempotency-{what}-{}-{}",
        std::process::id(),
        Token::random()
    ))
}

/// A `redis-server` this test started on a free loopback port; killed on drop.
pub(crate) struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// More `redis-server` arguments (`--maxmemory-policy allkeys-lru`, `--replicaof …`).
    args: Vec<String>,
}

impl RedisServer {
    /// Starts one, or returns `None` (skip; failure when services are required) when
    /// `redis-server` is not installed.
    pub(crate) fn start(suite: &str) -> Option<RedisServer> {
        RedisServer::start_with(suite, &[])
    }

    /// Starts one with more `redis-server` arguments.
    pub(crate) fn start_with(suite: &str, args: &[&str]) -> Option<RedisServer> {
        let dir = scratch_dir("redis");
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
        };
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn() {
                Ok(true) => return Some(server),
                Ok(false) => continue, // lost the port to someone else: try another
                Err(error) => {
                    unreachable(suite, "redis-server (not installed?)", &error);
                    return None;
                }
            }
        }
        panic!("could not start redis-server on a free port");
    }

    /// Spawns on `self.port`; `Ok(false)` if it did not come up.
    fn spawn(&mut self) -> std::io::Result<bool> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_exit)) = child.try_wait()
            {
                self.child = None;
                return Ok(false);
            }
            if ping(&self.url()) {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Ok(false)
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and waits for it to exit.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new server on the same port (empty: nothing is persisted).
    pub(crate) fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if self.spawn().expect("redis-server") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("could not restart redis-server on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ping(url: &str) -> bool {
    let Ok(client) = Client::open(url) else {
        return false;
    };
    let Ok(mut connection) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
        return false;
    };
    redis::cmd("PING")
        .query::<String>(&mut connection)
        .is_ok_and(|pong| pong == "PONG")
}

/// Counts round trips to a test-owned server: the commands that came over the wire from
/// clients other than this counter, by name.
///
/// `INFO commandstats` counts every command the server executed, including the `GET`/`SET`/
/// `TIME` our Lua scripts run inside one `EVALSHA`; so the counter also turns on the slow log
/// for every command (threshold 0), where a command run by a script is logged with the
/// address `?:0` and one sent by a client with the client's address. `end` reports both.
pub(crate) struct RoundTrips {
    admin: MultiplexedConnection,
    before: BTreeMap<String, u64>,
}

const COUNTER_NAME: &str = "round-trip-counter";

/// What [`RoundTrips::end`] saw.
#[derive(Debug)]
pub(crate) struct Sent {
    /// Commands clients sent (one a round trip), from the slow log.
    pub(crate) by_clients: BTreeMap<String, u64>,
    /// Commands the server executed, scripts' inner commands included, from `INFO commandstats`.
    pub(crate) executed: BTreeMap<String, u64>,
}

impl Sent {
    /// Asserts that exactly `expected` was sent, and that `INFO commandstats` counted the same
    /// number of each of those commands.
    pub(crate) fn assert(&self, expected: &[(&str, u64)], what: &str) {
        self.assert_executed(expected, expected, what);
    }

    /// Asserts that exactly `sent` came from clients, and that `INFO commandstats` counted
    /// `executed` of these commands (more than sent where a script runs the same command
    /// inside: `complete` ends with a `SET`).
    pub(crate) fn assert_executed(
        &self,
        sent: &[(&str, u64)],
        executed: &[(&str, u64)],
        what: &str,
    ) {
        let sent: BTreeMap<String, u64> = sent
            .iter()
            .map(|(command, n)| ((*command).to_owned(), *n))
            .collect();
        assert_eq!(self.by_clients, sent, "{what}: round trips");
        for (command, n) in executed {
            assert_eq!(
                self.executed.get(*command),
                Some(n),
                "{what}: INFO commandstats counts {n} {command} ({:?})",
                self.executed
            );
        }
    }
}

impl RoundTrips {
    pub(crate) async fn new(url: &str) -> RoundTrips {
        let mut admin = admin(url).await;
        for (parameter, value) in [
            ("slowlog-log-slower-than", "0"),
            ("slowlog-max-len", "100000"),
        ] {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(parameter)
                .arg(value)
                .query_async(&mut admin)
                .await
                .expect("CONFIG SET");
        }
        let _: () = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(COUNTER_NAME)
            .query_async(&mut admin)
            .await
            .expect("CLIENT SETNAME");
        RoundTrips {
            admin,
            before: BTreeMap::new(),
        }
    }

    pub(crate) async fn begin(&mut self) {
        self.before = command_counts(&mut self.admin).await;
        let _: () = redis::cmd("SLOWLOG")
            .arg("RESET")
            .query_async(&mut self.admin)
            .await
            .expect("SLOWLOG RESET");
    }

    pub(crate) async fn end(&mut self) -> Sent {
        let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
            .arg("GET")
            .arg(-1)
            .query_async(&mut self.admin)
            .await
            .expect("SLOWLOG GET");
        let mut by_clients = BTreeMap::new();
        for entry in entries {
            let redis::Value::Array(fields) = entry else {
                panic!("a slow log entry: {entry:?}");
            };
            let text = |value: &redis::Value| match value {
                redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                redis::Value::SimpleString(text) => text.clone(),
                other => panic!("a slow log field: {other:?}"),
            };
            let (Some(redis::Value::Array(args)), Some(address), Some(name)) =
                (fields.get(3), fields.get(4), fields.get(5))
            else {
                panic!("a slow log entry with arguments, address and name: {fields:?}");
            };
            if text(address) == "?:0" || text(name) == COUNTER_NAME {
                continue; // run by a script, or one of ours
            }
            let mut command = args.first().map(text).unwrap_or_default().to_lowercase();
            if command == "script" || command == "client" || command == "config" {
                command = format!(
                    "{command}|{}",
                    args.get(1).map(text).unwrap_or_default().to_lowercase()
                );
            }
            *by_clients.entry(command).or_insert(0) += 1;
        }
        let after = command_counts(&mut self.admin).await;
        Sent {
            by_clients,
            executed: executed(&self.before, &after),
        }
    }
}

/// Commands the server executed, by name (`calls + rejected_calls` from `INFO commandstats`).
pub(crate) async fn command_counts(admin: &mut MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(admin)
        .await
        .expect("INFO commandstats");
    let mut counts = BTreeMap::new();
    for line in info.lines() {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|rest| rest.split_once(':'))
        else {
            continue;
        };
        let mut total = 0;
        for field in fields.split(',') {
            if let Some(("calls" | "rejected_calls", n)) = field.split_once('=') {
                total += n.trim().parse::<u64>().expect("a count");
            }
        }
        counts.insert(name.to_owned(), total);
    }
    counts
}

/// Commands run between two `command_counts`, without the admin connection's `INFO`s.
pub(crate) fn executed(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "info" | "slowlog|reset" | "slowlog|get"))
        .filter_map(|(name, &n)| {
            let diff = n - before.get(name).copied().unwrap_or(0);
            (diff > 0).then(|| (name.clone(), diff))
        })
        .collect()
}

/// A 3-master Redis Cluster: the one in `REDIS_CLUSTER_URLS` (comma-separated node URLs), or
/// one started by `scripts/redis-cluster.sh` for this test and stopped on drop.
pub(crate) struct RedisCluster {
    urls: Vec<String>,
    owned: Option<PathBuf>,
    /// Held while a test uses the shared cluster of `REDIS_CLUSTER_URLS`: the tests count the
    /// commands each node runs, so they take turns on it.
    _turn: Option<tokio::sync::MutexGuard<'static, ()>>,
}

static SHARED_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CLUSTER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redis-cluster.sh");

impl RedisCluster {
    pub(crate) async fn start(suite: &str) -> Option<RedisCluster> {
        if let Ok(urls) = std::env::var("REDIS_CLUSTER_URLS") {
            let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
            let turn = SHARED_CLUSTER.lock().await;
            return Some(RedisCluster {
                urls,
                owned: None,
                _turn: Some(turn),
            });
        }
        let dir = scratch_dir("redis-cluster");
        let output = Command::new("bash")
            .arg(CLUSTER_SCRIPT)
            .arg("start")
            .arg(&dir)
            .stdin(Stdio::null())
            .output();
        match output {
            Ok(output) if output.status.success() => {
                let urls = String::from_utf8_lossy(&output.stdout)
                    .trim()
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                Some(RedisCluster {
                    urls,
                    owned: Some(dir),
                    _turn: None,
                })
            }
            // 3: redis-server or redis-cli is not installed.
            Ok(output) if output.status.code() == Some(3) => {
                let why = String::from_utf8_lossy(&output.stderr).trim().to_owned();
                unreachable(suite, "a redis cluster from scripts/redis-cluster.sh", &why);
                None
            }
            Ok(output) => panic!(
                "scripts/redis-cluster.sh start failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => {
                unreachable(suite, "bash scripts/redis-cluster.sh", &error);
                None
            }
        }
    }

    pub(crate) fn urls(&self) -> &[String] {
        &self.urls
    }

    /// An async cluster connection with bounded connection and response times.
    pub(crate) async fn connection(&self, timeout: Duration) -> ClusterConnection {
        redis::cluster::ClusterClient::builder(self.urls.clone())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .build()
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("cluster connection")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if let Some(dir) = self.owned.take() {
            let _ = Command::new("bash")
                .arg(CLUSTER_SCRIPT)
                .arg("stop")
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
