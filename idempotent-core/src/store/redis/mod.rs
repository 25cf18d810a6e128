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
//! holds a record. The value is a small binary header (token, fingerprint, a time by the
//! Redis server's clock) followed by the output; anything else found under the prefix is
//! reported as [`StoreError::Corrupt`], never a panic.
//!
//! # Round trips
//!
//! `claim`, `complete`, `release` and `renew` are Lua scripts run by `EVALSHA` (with the
//! `NOSCRIPT` fallback: the first use of a script on a server loads it once; call
//! [`RedisStore::load_scripts`] at start-up to do that ahead of time). Each is one round trip
//! and atomic, so a replay costs 1 round trip, a first execution 2 (claim, complete) and a
//! failed body 2 (claim, release). `get` is one `GET`, `remove` one `DEL`.
//!
//! # Leases and clocks
//!
//! Lease ends and expiry times come from the Redis server's `TIME`, inside the scripts, so the
//! clients' clocks do not matter. A completed record lives for its `ttl` (`PX`). An
//! in-progress record lives for its lease plus [`lease_grace`](RedisStoreBuilder::lease_grace)
//! (default 60 s): once its lease passes a claim takes it over, but while nobody has, its
//! owner can still complete it; after the grace Redis drops it.
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
//! Needs Redis 5 or newer (scripts that read `TIME` and then write rely on effect
//! replication); tested on Redis 7.
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
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::{Cmd, ErrorKind, RedisError, Script, ServerErrorKind, Value};
use async_trait::async_trait;
use bytes::Bytes;

use crate::error::StoreError;
use crate::key::{Fingerprint, Key};
use crate::record::{Claim, Record, Token};
use crate::store::Store;

mod record;

use record::{Stored, millis};

const DEFAULT_PREFIX: &str = "idempotency:";
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_MAX_OUTPUT_BYTES: usize = 1 << 20;
const DEFAULT_LEASE_GRACE: Duration = Duration::from_secs(60);

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

/// The store on Redis or Redis Cluster: atomic Lua-scripted claims, fenced by token, one key a
/// record. See the [module docs](self) for the layout, round trips and outage behaviour.
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
    lease_grace: Duration,
}

impl<C> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("connection", &std::any::type_name::<C>())
            .field("prefix", &self.config.prefix)
            .field("response_timeout", &self.config.response_timeout)
            .field("max_output_bytes", &self.config.max_output_bytes)
            .field("lease_grace", &self.config.lease_grace)
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
    lease_grace: Duration,
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

    /// How long an in-progress record is kept after its lease passed (default 60 s): until a
    /// claim takes it over, its owner may still complete it. Past the grace, Redis drops it.
    pub fn lease_grace(mut self, grace: Duration) -> Self {
        self.lease_grace = grace;
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
                lease_grace: self.lease_grace,
            }),
        })
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A store over `connection` with the defaults: prefix `"idempotency:"`, 1 s response
    /// timeout, outputs up to 1 MiB, 60 s lease grace.
    pub fn new(connection: C) -> RedisStore<C> {
        RedisStore {
            connection,
            config: Arc::new(Config {
                prefix: DEFAULT_PREFIX.into(),
                response_timeout: DEFAULT_RESPONSE_TIMEOUT,
                max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
                lease_grace: DEFAULT_LEASE_GRACE,
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
            lease_grace: DEFAULT_LEASE_GRACE,
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

    /// Runs one Redis operation within the response timeout, mapping its errors.
    async fn bounded<T>(
        &self,
        redis_key: &str,
        operation: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.config.response_timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(store_error(redis_key, error)),
            Err(_elapsed) => Err(StoreError::Timeout(self.config.response_timeout)),
        }
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
        let operation = async {
            match command.query_async::<Value>(&mut connection).await {
                Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    script.load_async(&mut connection).await?;
                    command.query_async(&mut connection).await
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
        let token = Token::random();
        let script = &SCRIPTS.claim;
        let mut command = evalsha(script, &redis_key, 3, 100);
        command
            .arg(&record::in_progress_head(&token, fingerprint)[..])
            .arg(millis(lease))
            .arg(millis(self.config.lease_grace));
        match self.eval(script, &redis_key, &command).await? {
            Value::Int(0) => Ok(Claim::Acquired {
                token,
                took_over: false,
            }),
            Value::Int(1) => Ok(Claim::Acquired {
                token,
                took_over: true,
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
                // The script only hands back an in-progress record it could not read.
                Stored::InProgress { .. } => Err(not_a_record(&redis_key)),
            },
            Value::Array(items) => match <[Value; 2]>::try_from(items) {
                Ok([Value::BulkString(value), Value::Int(left)]) => {
                    match Stored::decode(&redis_key, Bytes::from(value))? {
                        Stored::InProgress { fingerprint, .. } => Ok(Claim::InProgress {
                            fingerprint,
                            lease_remaining: Duration::from_millis(
                                u64::try_from(left).unwrap_or(0),
                            ),
                        }),
                        Stored::Completed { .. } => Err(not_a_record(&redis_key)),
                    }
                }
                Ok(items) => Err(unexpected("claim", &Value::Array(Vec::from(items)))),
                Err(items) => Err(unexpected("claim", &Value::Array(items))),
            },
            other => Err(unexpected("claim", &other)),
        }
    }

    async fn complete(
        &self,
        key: &Key,
        token: &Token,
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
        let mut command = evalsha(script, &redis_key, 3, 40 + output.len());
        command
            .arg(&token.as_bytes()[..])
            .arg(millis(ttl))
            .arg(&output[..]);
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
        let mut command = evalsha(script, &redis_key, 3, 60);
        command
            .arg(&token.as_bytes()[..])
            .arg(millis(lease))
            .arg(millis(self.config.lease_grace));
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
