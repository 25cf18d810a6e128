//! The Redis and Redis Cluster store on [redis-rs](https://docs.rs/redis): [`RedisStore`].
//!
//! # What is stored
//!
//! **One Redis string per record**, so every operation touches exactly one key and works
//! unchanged on Redis Cluster. Its name is
//!
//! ```text
//! {prefix}{hex(sha256(namespace))[..32]}:{version}:{hex(sha256(key material))}
//! ```
//!
//! The namespace is hashed: user text with spaces, newlines, `{}` braces or kilobytes of
//! characters never reaches Redis as a key, so it can neither form a Cluster hash tag (every
//! record spreads over all slots) nor make keys long. [`RedisStore::redis_key`] tells which key
//! holds a record. The value is a small binary header (token, fingerprint, a time) followed by
//! the output; anything else found under the prefix is reported as [`StoreError::Corrupt`],
//! never a panic.
//!
//! # Round trips
//!
//! `claim` is one native command, `SET key <in-progress record> NX GET PX <lease>`: it writes
//! the in-progress record if the key is free and hands back whatever record is there
//! otherwise, atomically, so a replay is as cheap for Redis as a `GET`. `complete`, `release`
//! and `renew` are Lua scripts run by `EVALSHA` (with the `NOSCRIPT` fallback: the first use
//! of a script on a server loads it once; call [`RedisStore::load_scripts`] at start-up to do
//! that ahead of time), each atomic and fenced by the owner's token. So a replay costs 1
//! round trip, a first execution 2 (claim, complete) and a failed body 2 (claim, release).
//! `get` is one `GET`, `remove` one `DEL`.
//!
//! # Leases and clocks
//!
//! An in-progress record lives exactly as long as its lease (`PX`), so Redis itself frees a
//! crashed or hung owner's key when the lease passes, by the server's clock, and the next
//! claim takes it with the same one command. (Such a takeover looks like a free key:
//! [`Claim::Acquired`] reports `took_over: false` on Redis.) The owner can still complete
//! while nobody has taken the key over: a token here is 8 random bytes and the end of its
//! lease, and a `complete` that finds no record stores the output only for a token whose lease
//! has passed (its record left with the lease, and a claim since would have written its own);
//! for any other token a missing record is [`StoreError::LeaseLost`]. A completed record lives
//! for its `ttl` (`PX`). The times written inside records (the lease's
//! end, the expiry) are only read back by [`Store::get`] and for the time left on a lease;
//! the lease end is the claiming client's clock, the expiry the server's.
//!
//! # Outages
//!
//! Every operation is bounded by [`response_timeout`](RedisStoreBuilder::response_timeout)
//! (default 1 s): past it the call fails with [`StoreError::Timeout`]; a refused or dropped
//! connection fails with [`StoreError::Unavailable`]. Either way the executor does not run the
//! body (fail closed). A [`ConnectionManager`] or a cluster connection reconnects by itself,
//! so calls succeed again once Redis is back, with no manual step. (The connection's own
//! response timeout, 500 ms by default in redis-rs, may fire first: that is reported as
//! [`StoreError::Unavailable`].) To start a service while Redis is down, build the manager
//! with `ConnectionManager::new_lazy_with_config`: `ConnectionManager::new` fails when it
//! cannot connect at once.
//!
//! A claim that times out may still have reached Redis, though its body never ran: the key
//! then reads as in progress until the lease passes and the next claim takes it over.
//!
//! The one-command claim needs Redis 7.0 or newer (`SET` with both `NX` and `GET`); on an older
//! server (5 or newer: the scripts read `TIME` and then write, which relies on effect
//! replication) the store notices the refusal on its first claim and claims with an
//! equivalent Lua script from then on ([`claim_by_script`](RedisStoreBuilder::claim_by_script)
//! chooses it up front). Tested on Redis 7.
//!
//! # Example
//!
//! ```no_run
//! use idempotent_core::{Error, Fingerprint, Idempotency, Key, RedisStore};
//! use redis::aio::ConnectionManager;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = redis::Client::open("redis://127.0.0.1:6379")?;
//! let store = RedisStore::builder(ConnectionManager::new(client).await?)
//!     .prefix("shop:idempotency:")
//!     .build()?;
//! let idempotency = Idempotency::new(store);
//!
//! let key = Key::derive("shop::charge", 1, &"order-42")?;
//! let fingerprint = Fingerprint::of(&("order-42", 1999u64))?;
//! let receipt: Result<String, Error> = idempotency
//!     .run(key, fingerprint, || async { Ok("receipt-1".to_string()) })
//!     .await;
//! println!("{}", receipt?);
//! # Ok(())
//! # }
//! ```
//!
//! Over Redis Cluster, the same store takes a cluster connection:
//!
//! ```no_run
//! use idempotent_core::RedisStore;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let nodes = ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001", "redis://127.0.0.1:7002"];
//! let cluster = redis::cluster::ClusterClient::new(nodes)?;
//! let store = RedisStore::new(cluster.get_async_connection().await?);
//! # let _ = store;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::{Cmd, ErrorKind, RedisError, Script, ServerErrorKind, Value};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::FutureExt as _;

use crate::error::StoreError;
use crate::key::{Fingerprint, Key};
use crate::record::{Claim, Record, Token};
use crate::store::Store;

mod record;

use record::{Stored, millis};

const DEFAULT_PREFIX: &str = "idempotency:";
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_MAX_OUTPUT_BYTES: usize = 1 << 20;

struct Scripts {
    claim: Script,
    complete: Script,
    release: Script,
    renew: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    claim: Script::new(include_str!("claim.lua")),
    complete: Script::new(include_str!("complete.lua")),
    release: Script::new(include_str!("release.lua")),
    renew: Script::new(include_str!("renew.lua")),
});

/// The store on Redis or Redis Cluster: atomic one-command claims, Lua-scripted completions
/// fenced by token, one key a record. See the [module docs](self) for the layout, round trips and outage behaviour.
///
/// `C` is the connection: a [`ConnectionManager`] (the default; it reconnects by itself), a
/// [`ClusterConnection`](::redis::cluster_async::ClusterConnection) (Redis Cluster), or
/// any other cheap-to-clone [`ConnectionLike`]. Cloning the store clones the connection
/// handle, which shares the underlying connection.
///
/// ```
/// use std::time::Duration;
/// use idempotent_core::RedisStore;
/// use redis::aio::{ConnectionManager, ConnectionManagerConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // A lazy manager connects on first use: nothing is sent here.
/// let client = redis::Client::open("redis://127.0.0.1:6379")?;
/// let connection = ConnectionManager::new_lazy_with_config(client, ConnectionManagerConfig::new())?;
/// let store = RedisStore::builder(connection)
///     .prefix("billing:idem:")
///     .response_timeout(Duration::from_millis(250))
///     .max_output_bytes(64 << 10)
///     .build()?;
/// assert_eq!(store.prefix(), "billing:idem:");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore<C = ConnectionManager> {
    connection: C,
    config: Arc<Config>,
}

#[derive(Debug)]
struct Config {
    prefix: Box<str>,
    response_timeout: Duration,
    max_output_bytes: usize,
    /// Claim with the Lua script instead of `SET … NX GET` (set up front, or on the first
    /// claim a server older than Redis 7 refused).
    claim_by_script: AtomicBool,
}

impl<C> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("connection", &std::any::type_name::<C>())
            .field("prefix", &self.config.prefix)
            .field("response_timeout", &self.config.response_timeout)
            .field("max_output_bytes", &self.config.max_output_bytes)
            .field(
                "claim_by_script",
                &self.config.claim_by_script.load(Ordering::Relaxed),
            )
            .finish()
    }
}

/// Configures a [`RedisStore`]; from [`RedisStore::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct RedisStoreBuilder<C> {
    connection: C,
    prefix: String,
    response_timeout: Duration,
    max_output_bytes: usize,
    claim_by_script: bool,
}

/// A key prefix that [`RedisStoreBuilder::build`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the redis key prefix {prefix:?} contains `{{` or `}}`: in redis cluster that can form a hash tag and put every record in one slot"
)]
pub struct RedisPrefixError {
    prefix: String,
}

impl RedisPrefixError {
    /// The refused prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl<C> RedisStoreBuilder<C> {
    /// What every Redis key of this store starts with (default `"idempotency:"`). Give each
    /// application or environment sharing a Redis its own. It may not contain `{` or `}`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one operation may take, connecting included, before it fails with
    /// [`StoreError::Timeout`] (default 1 s). A claim that times out does not run the body.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Largest output stored, in bytes (default 1 MiB). A larger one fails `complete` with
    /// [`StoreError::TooLarge`] before anything is sent; the executor then releases the claim.
    pub fn max_output_bytes(mut self, limit: usize) -> Self {
        self.max_output_bytes = limit;
        self
    }

    /// Claim with a Lua script (`EVALSHA`) rather than the native `SET … NX GET` (default
    /// `false`). Both are one atomic round trip with the same effect; the script is for Redis
    /// older than 7.0, which refuses `NX` with `GET`. Without this option the store switches
    /// to the script by itself when a server refuses the native claim, so set it only to skip
    /// that first refused command, or to test the script.
    pub fn claim_by_script(mut self, by_script: bool) -> Self {
        self.claim_by_script = by_script;
        self
    }

    /// The store, or an error if the prefix contains `{` or `}`.
    ///
    /// ```
    /// # use idempotent_core::RedisStore;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// # let connection = redis::aio::ConnectionManager::new_lazy_with_config(client, Default::default())?;
    /// let refused = RedisStore::builder(connection).prefix("app:{env}:").build();
    /// assert!(refused.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn build(self) -> Result<RedisStore<C>, RedisPrefixError> {
        if self.prefix.contains(['{', '}']) {
            return Err(RedisPrefixError {
                prefix: self.prefix,
            });
        }
        Ok(RedisStore {
            connection: self.connection,
            config: Arc::new(Config {
                prefix: self.prefix.into_boxed_str(),
                response_timeout: self.response_timeout,
                max_output_bytes: self.max_output_bytes,
                claim_by_script: AtomicBool::new(self.claim_by_script),
            }),
        })
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A store over `connection` with the defaults: prefix `"idempotency:"`, 1 s response
    /// timeout, outputs up to 1 MiB.
    pub fn new(connection: C) -> RedisStore<C> {
        RedisStore {
            connection,
            config: Arc::new(Config {
                prefix: DEFAULT_PREFIX.into(),
                response_timeout: DEFAULT_RESPONSE_TIMEOUT,
                max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
                claim_by_script: AtomicBool::new(false),
            }),
        }
    }

    /// Configure a store over `connection`.
    pub fn builder(connection: C) -> RedisStoreBuilder<C> {
        RedisStoreBuilder {
            connection,
            prefix: DEFAULT_PREFIX.to_owned(),
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            claim_by_script: false,
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.config.prefix
    }

    /// The connection handle (a clone shares the store's connection).
    pub fn connection(&self) -> &C {
        &self.connection
    }

    /// The Redis key that holds `key`'s record: for operators (`redis-cli GET`, `DEL`).
    ///
    /// ```
    /// # use idempotent_core::{Digest, Key, RedisStore};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// # let connection = redis::aio::ConnectionManager::new_lazy_with_config(client, Default::default())?;
    /// let store = RedisStore::builder(connection).prefix("app:").build()?;
    /// let key = Key::new("{tag} and\nnewline", 2, Digest::of(&"order-42")?);
    /// let redis_key = store.redis_key(&key);
    /// assert!(redis_key.starts_with("app:"));
    /// assert!(!redis_key.contains(['{', '}', ' ', '\n'])); // the namespace is hashed
    /// assert!(redis_key.ends_with(&format!(":2:{}", key.digest())));
    /// # Ok(())
    /// # }
    /// ```
    pub fn redis_key(&self, key: &Key) -> String {
        record::redis_key(&self.config.prefix, key)
    }

    /// Loads the four scripts into the server (into every node of a cluster) ahead of their
    /// first use, which otherwise pays one extra `SCRIPT LOAD` round trip a script. Optional:
    /// a server that lost its scripts (restart, `SCRIPT FLUSH`) gets them back on first use.
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        let scripts = &*SCRIPTS;
        for script in [
            &scripts.claim,
            &scripts.complete,
            &scripts.release,
            &scripts.renew,
        ] {
            let mut connection = self.connection.clone();
            self.bounded("", script.load_async(&mut connection)).await?;
        }
        Ok(())
    }

    /// Runs one Redis operation within the response timeout, mapping its errors. A plain
    /// function returning the timeout's future, mapped: an `async fn` would keep `operation`
    /// twice in its state (the argument and inside the timeout), and every claim's future
    /// is boxed.
    fn bounded<'a, T: 'a>(
        &self,
        redis_key: &'a str,
        operation: impl Future<Output = Result<T, RedisError>> + 'a,
    ) -> impl Future<Output = Result<T, StoreError>> + 'a {
        let limit = self.config.response_timeout;
        tokio::time::timeout(limit, operation).map(move |outcome| match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(store_error(redis_key, error)),
            Err(_elapsed) => Err(StoreError::Timeout(limit)),
        })
    }

    /// Runs `EVALSHA` (built by [`evalsha`]) within the response timeout; on `NOSCRIPT` (a
    /// restarted or flushed server) loads the script and runs it again.
    async fn eval(
        &self,
        script: &Script,
        redis_key: &str,
        command: &Cmd,
    ) -> Result<Value, StoreError> {
        let mut connection = self.connection.clone();
        let operation = eval_loading(&mut connection, script, command);
        self.bounded(redis_key, operation).await
    }

    /// The claim: `SET <key> <record> NX GET PX <lease>`, or its script on a server that
    /// refuses that (older than Redis 7.0; noticed once, then the script is used directly).
    async fn claim_reply(
        &self,
        redis_key: &str,
        record: &[u8],
        lease_ms: u64,
    ) -> Result<Value, StoreError> {
        let config = &*self.config;
        let script = &SCRIPTS.claim;
        let by_script = || {
            let mut command = evalsha(script, redis_key, 2, record.len() + 20);
            command.arg(record).arg(lease_ms);
            command
        };
        // The script paths are boxed: they are rare, and inline they would more than double
        // the size of every claim's future (which the store's caller boxes).
        if config.claim_by_script.load(Ordering::Relaxed) {
            return Box::pin(self.eval(script, redis_key, &by_script())).await;
        }
        let mut command = Cmd::with_capacity(7, 32 + redis_key.len() + record.len());
        command
            .arg("SET")
            .arg(redis_key)
            .arg(record)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(lease_ms);
        let mut connection = self.connection.clone();
        let operation = async {
            match command.query_async::<Value>(&mut connection).await {
                // Refused without running: nothing was written, the script does the same.
                Err(error) if refuses_set_nx_get(&error) => {
                    config.claim_by_script.store(true, Ordering::Relaxed);
                    Box::pin(eval_loading(&mut connection, script, &by_script())).await
                }
                reply => reply,
            }
        };
        self.bounded(redis_key, operation).await
    }

    /// Runs a fencing script (`complete`, `release`, `renew`) and maps its integer reply.
    async fn fenced(
        &self,
        name: &'static str,
        script: &Script,
        redis_key: &str,
        command: &Cmd,
    ) -> Result<(), StoreError> {
        match self.eval(script, redis_key, command).await? {
            Value::Int(1 | 2) => Ok(()),
            Value::Int(0) => Err(StoreError::LeaseLost),
            Value::Int(-1) => Err(not_a_record(redis_key)),
            other => Err(unexpected(name, &other)),
        }
    }
}

/// `EVALSHA`, and on `NOSCRIPT` `SCRIPT LOAD` then `EVALSHA` again.
async fn eval_loading<C: ConnectionLike>(
    connection: &mut C,
    script: &Script,
    command: &Cmd,
) -> Result<Value, RedisError> {
    match command.query_async::<Value>(connection).await {
        Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(connection).await?;
            command.query_async(connection).await
        }
        reply => reply,
    }
}

/// Whether a server refused `SET … NX GET` as a command it does not know (Redis 6.2 refuses
/// `NX` with `GET`, older versions `GET` itself, both as a syntax error).
fn refuses_set_nx_get(error: &RedisError) -> bool {
    error.code() == Some("ERR") && error.detail().is_some_and(|d| d.contains("syntax error"))
}

/// `EVALSHA <script> 1 <redis_key>`, ready for `arguments` arguments of about `bytes` bytes in
/// all: one buffer, no intermediate copies.
fn evalsha(script: &Script, redis_key: &str, arguments: usize, bytes: usize) -> Cmd {
    let mut command = Cmd::with_capacity(4 + arguments, 64 + redis_key.len() + bytes);
    command
        .arg("EVALSHA")
        .arg(script.get_hash())
        .arg(1)
        .arg(redis_key);
    command
}

fn store_error(redis_key: &str, error: RedisError) -> StoreError {
    if error.code() == Some("WRONGTYPE") {
        return not_a_record(redis_key);
    }
    let unreachable = error.is_io_error()
        || error.is_cluster_error()
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        );
    if unreachable {
        StoreError::unavailable(error)
    } else {
        StoreError::backend(error)
    }
}

fn not_a_record(redis_key: &str) -> StoreError {
    StoreError::corrupt(format!(
        "redis key `{redis_key}` holds a value that is not an idempotency record (another redis type, or damaged)"
    ))
}

/// A reply no script of ours gives: a bug, or a proxy in between that rewrites replies.
#[derive(Debug, thiserror::Error)]
#[error("unexpected reply to the redis `{operation}` operation: {reply}")]
struct UnexpectedReply {
    operation: &'static str,
    reply: String,
}

fn unexpected(operation: &'static str, reply: &Value) -> StoreError {
    let mut reply = format!("{reply:?}");
    if reply.len() > 200 {
        let mut end = 200;
        while !reply.is_char_boundary(end) {
            end -= 1;
        }
        reply.truncate(end);
        reply.push('…');
    }
    StoreError::backend(UnexpectedReply { operation, reply })
}

#[async_trait]
impl<C> Store for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn claim(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let redis_key = self.redis_key(key);
        let lease_ms = millis(lease);
        let now = SystemTime::now();
        let lease_until = now + Duration::from_millis(lease_ms);
        let token = record::token(lease_until);
        let record = record::in_progress(&token, fingerprint, lease_until);
        match self.claim_reply(&redis_key, &record, lease_ms).await? {
            // The key was free (never used, released, expired, or its owner's lease passed).
            Value::Nil | Value::Int(0) => Ok(Claim::Acquired {
                token,
                took_over: false,
            }),
            Value::Int(-1) => Err(not_a_record(&redis_key)),
            Value::BulkString(value) => match Stored::decode(&redis_key, Bytes::from(value))? {
                Stored::Completed {
                    fingerprint,
                    output,
                    ..
                } => Ok(Claim::Completed {
                    fingerprint,
                    output,
                }),
                Stored::InProgress {
                    fingerprint,
                    lease_until,
                    ..
                } => Ok(Claim::InProgress {
                    fingerprint,
                    // By the owner's clock; zero when that is behind ours (Redis frees the key
                    // at the lease's end by its own clock).
                    lease_remaining: lease_until.duration_since(now).unwrap_or_default(),
                }),
            },
            other => Err(unexpected("claim", &other)),
        }
    }

    async fn complete(
        &self,
        key: &Key,
        token: &Token,
        fingerprint: &Fingerprint,
        output: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if output.len() > self.config.max_output_bytes {
            return Err(StoreError::TooLarge {
                size: output.len(),
                limit: self.config.max_output_bytes,
            });
        }
        let redis_key = self.redis_key(key);
        let script = &SCRIPTS.complete;
        let mut command = evalsha(script, &redis_key, 5, 80 + output.len());
        let lease_passed = record::lease_passed(token, SystemTime::now());
        command
            .arg(&token.as_bytes()[..])
            .arg(millis(ttl))
            .arg(&output[..])
            .arg(&fingerprint.as_bytes()[..])
            .arg(if lease_passed { "1" } else { "0" });
        self.fenced("complete", script, &redis_key, &command).await
    }

    async fn release(&self, key: &Key, token: &Token) -> Result<(), StoreError> {
        let redis_key = self.redis_key(key);
        let script = &SCRIPTS.release;
        let mut command = evalsha(script, &redis_key, 1, 16);
        command.arg(&token.as_bytes()[..]);
        self.fenced("release", script, &redis_key, &command).await
    }

    async fn renew(&self, key: &Key, token: &Token, lease: Duration) -> Result<(), StoreError> {
        let redis_key = self.redis_key(key);
        let script = &SCRIPTS.renew;
        let mut command = evalsha(script, &redis_key, 2, 40);
        command.arg(&token.as_bytes()[..]).arg(millis(lease));
        self.fenced("renew", script, &redis_key, &command).await
    }

    async fn get(&self, key: &Key) -> Result<Option<Record>, StoreError> {
        let redis_key = self.redis_key(key);
        let mut connection = self.connection.clone();
        let mut command = ::redis::cmd("GET");
        command.arg(&redis_key);
        let reply: Value = self
            .bounded(&redis_key, command.query_async(&mut connection))
            .await?;
        match reply {
            Value::Nil => Ok(None),
            Value::BulkString(value) => {
                Stored::decode(&redis_key, Bytes::from(value)).map(|s| Some(s.into_record()))
            }
            other => Err(unexpected("get", &other)),
        }
    }

    async fn remove(&self, key: &Key) -> Result<bool, StoreError> {
        let redis_key = self.redis_key(key);
        let mut connection = self.connection.clone();
        let mut command = ::redis::cmd("DEL");
        command.arg(&redis_key);
        let removed: i64 = self
            .bounded(&redis_key, command.query_async(&mut connection))
            .await?;
        Ok(removed > 0)
    }
}
