#![doc = include_str!("docs.md")]

use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::{Cmd, ErrorKind, FromRedisValue, RedisError, Script, ServerErrorKind, Value};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::FutureExt as _;

use crate::error::StoreError;
use crate::key::Key;
use crate::record::{Claim, Record, Token};
use crate::store::{ClaimRequest, Completion, ListRequest, Listing, MarkPage, MarkSwap};
use crate::store::{Purged, Store, StoreStats, fits};

mod builder;
mod listing;
mod mark;
mod record;
mod sentinel;
mod server;

use builder::Config;
pub use builder::{RedisPrefixError, RedisStoreBuilder};
use record::millis;
pub use sentinel::SentinelConnection;
use server::PolicyRefused;
pub use server::RedisEvictionPolicyError;

struct Scripts {
    claim: Script,
    complete: Script,
    release: Script,
    renew: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    claim: Script::new(include_str!("claim.lua")),
    complete: Script::new(include_str!("complete.lua")),
    release: Script::new(concat!(
        include_str!("owned.lua"),
        include_str!("release.lua")
    )),
    renew: Script::new(concat!(
        include_str!("owned.lua"),
        include_str!("renew.lua")
    )),
});

/// The store on Redis or Redis Cluster: atomic one-command claims, Lua-scripted completions
/// fenced by token, one key a record. See the [module docs](self) for the layout, round trips and outage behaviour.
///
/// `C` is the connection: a [`ConnectionManager`] (the default; it reconnects by itself), a
/// [`ClusterConnection`](::redis::cluster_async::ClusterConnection) (Redis Cluster), a
/// [`SentinelConnection`] (the master of a Sentinel group, followed across failovers), or
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
            .field("allow_evicting_policy", &self.config.allow_evicting_policy)
            .field("wait_for_replicas", &self.config.wait_for_replicas)
            .finish()
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A store over `connection` with the defaults: prefix `"idempotency:"`, 1 s response
    /// timeout, outputs up to 1 MiB.
    pub fn new(connection: C) -> RedisStore<C> {
        RedisStoreBuilder::new(connection).into_store()
    }

    /// Configure a store over `connection`.
    pub fn builder(connection: C) -> RedisStoreBuilder<C> {
        RedisStoreBuilder::new(connection)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.config.prefix
    }

    /// The connection handle (a clone shares the store's connection).
    pub fn connection(&self) -> &C {
        &self.connection
    }

    /// The Redis key that holds `key`'s record: for operators (`redis-cli GET`, `DEL`). It is
    /// the prefix and 48 characters of base64url: a hash of the key's namespace and version
    /// (96 bits), then the first 24 bytes of its digest. To find a call's record, derive its
    /// [`Key`] as the call does (`Key::derive(namespace, version, &key_value)`) and ask this.
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
    /// assert_eq!(redis_key.len(), "app:".len() + 48);
    /// # Ok(())
    /// # }
    /// ```
    pub fn redis_key(&self, key: &Key) -> String {
        record::redis_key(&self.config.prefix, key)
    }

    /// Checks the server at start-up, then loads the four scripts into it (into every node of
    /// a cluster) ahead of their first use, which otherwise pays one extra `SCRIPT LOAD` round
    /// trip a script. Call it once before serving.
    ///
    /// The check: `CONFIG GET maxmemory-policy` (on every node of a cluster). A policy that
    /// evicts keys (anything but `noeviction`) fails with [`StoreError::Backend`] around a
    /// [`RedisEvictionPolicyError`], unless the builder's
    /// [`allow_evicting_policy`](RedisStoreBuilder::allow_evicting_policy) is set. A server
    /// that refuses `CONFIG` (an ACL user without `+config`, a managed Redis that renames it)
    /// only makes a `tracing` warning: the store cannot tell, so the policy is yours to check.
    /// Loading the scripts is optional: a server that lost them (restart, `SCRIPT FLUSH`) gets
    /// them back on first use.
    ///
    /// ```no_run
    /// # use idempotent_core::{RedisEvictionPolicyError, RedisStore, StoreError};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// # let connection = redis::aio::ConnectionManager::new(client).await?;
    /// let store = RedisStore::new(connection);
    /// match store.load_scripts().await {
    ///     Ok(()) => {}
    ///     Err(StoreError::Backend(error)) if error.is::<RedisEvictionPolicyError>() => {
    ///         panic!("fix the redis configuration: {error}")
    ///     }
    ///     Err(other) => return Err(other.into()),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        if !self.config.allow_evicting_policy {
            let check = server::check_eviction_policy(&self.connection);
            match self.bounded("", check.map(Ok)).await? {
                Ok(()) => {}
                Err(PolicyRefused::Evicting(error)) => return Err(StoreError::backend(error)),
                Err(PolicyRefused::Failed(error)) => return Err(store_error("", error)),
            }
        }
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

    /// Runs `command` with `redis_key` as its one argument (`GET`, `DEL`) within the response
    /// timeout.
    async fn on_key<T: FromRedisValue>(
        &self,
        command: &str,
        redis_key: &str,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        let mut command = ::redis::cmd(command);
        command.arg(redis_key);
        self.bounded(redis_key, command.query_async(&mut connection))
            .await
    }

    /// Runs a fencing script (`complete`, `release`, `renew`) and maps its integer reply.
    async fn fenced(
        &self,
        name: &'static str,
        script: &Script,
        redis_key: &str,
        command: &Cmd,
    ) -> Result<(), StoreError> {
        let reply = self.eval(script, redis_key, command).await?;
        fenced_reply(name, redis_key, &reply)
    }
}

/// The integer reply of a fencing script.
fn fenced_reply(name: &'static str, redis_key: &str, reply: &Value) -> Result<(), StoreError> {
    match reply {
        Value::Int(1 | 2) => Ok(()),
        Value::Int(0) => Err(StoreError::LeaseLost),
        Value::Int(-1) => Err(not_a_record(redis_key)),
        other => Err(unexpected(name, other)),
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
                | ErrorKind::MasterNameNotFoundBySentinel
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

/// The claim's answer from its reply. A record holding the caller's own token is the
/// caller's: a claim re-sent after a lost reply (a reconnect, a cluster redirect) finds the
/// record its first send wrote, and owns it rather than waiting out its own lease (the caller
/// then renews that lease from now: the protocol model in `tests/protocol_model.rs` found that
/// an owner otherwise counts on a longer lease than the store holds).
fn claim_answer(
    redis_key: &str,
    reply: Value,
    token: Token,
    now: SystemTime,
    max_output: usize,
) -> Result<(Claim, bool), StoreError> {
    let claim = match reply {
        // The key was free (never used, released, expired, or its owner's lease passed).
        Value::Nil | Value::Int(0) => Claim::Acquired {
            token,
            took_over: false,
        },
        Value::Int(-1) => return Err(not_a_record(redis_key)),
        Value::BulkString(value) => {
            match record::decode(redis_key, Bytes::from(value), max_output)? {
                Record::Completed {
                    fingerprint,
                    output,
                    expires_at,
                    ..
                } => Claim::Completed {
                    fingerprint,
                    output,
                    expires_at: Some(expires_at),
                },
                Record::InProgress { token: owner, .. } if owner == token => {
                    let acquired = Claim::Acquired {
                        token,
                        took_over: false,
                    };
                    return Ok((acquired, true));
                }
                Record::InProgress {
                    fingerprint,
                    lease_until,
                    ..
                } => Claim::InProgress {
                    fingerprint,
                    // By the owner's clock; zero when that is behind ours (Redis frees the key
                    // at the lease's end by its own clock).
                    lease_remaining: lease_until.duration_since(now).unwrap_or_default(),
                },
            }
        }
        other => return Err(unexpected("claim", &other)),
    };
    Ok((claim, false))
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
    async fn claim(&self, key: &Key, request: ClaimRequest) -> Result<Claim, StoreError> {
        let ClaimRequest { fingerprint, lease } = request;
        let redis_key = self.redis_key(key);
        let lease_ms = millis(lease);
        let now = SystemTime::now();
        let lease_until = now + Duration::from_millis(lease_ms);
        let token = record::token(lease_until);
        let record = record::in_progress(&token, &fingerprint, lease_until);
        let reply = self.claim_reply(&redis_key, &record, lease_ms).await?;
        let limit = self.config.max_output_bytes;
        let (claim, own_record) = claim_answer(&redis_key, reply, token, now, limit)?;
        if own_record {
            // Our first send wrote it, and its lease started then: renew it from now, as the
            // owner counts its lease from this answer.
            Box::pin(self.renew(key, &token, lease)).await?;
        }
        Ok(claim)
    }

    async fn complete(&self, key: &Key, completion: Completion) -> Result<(), StoreError> {
        fits(&completion.output, self.config.max_output_bytes)?;
        let redis_key = self.redis_key(key);
        let script = &SCRIPTS.complete;
        let compressed = (completion.output.len() >= self.config.compress_above)
            .then(|| record::compress(&completion.output))
            .flatten();
        let (output, kind) = match &compressed {
            Some(compressed) => (&compressed[..], "Z"),
            None => (&completion.output[..], "C"),
        };
        let mut command = evalsha(script, &redis_key, 6, 80 + output.len());
        let lease_passed = record::lease_passed(&completion.token, SystemTime::now());
        command
            .arg(&completion.token.as_bytes()[..])
            .arg(millis(completion.ttl))
            .arg(output)
            .arg(&completion.fingerprint.as_bytes()[..])
            .arg(if lease_passed { "1" } else { "0" })
            .arg(kind);
        match self.config.wait_for_replicas {
            None => self.fenced("complete", script, &redis_key, &command).await,
            Some(wait) => Box::pin(self.complete_and_wait(script, &redis_key, command, wait)).await,
        }
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
        match self.on_key::<Value>("GET", &redis_key).await? {
            Value::Nil => Ok(None),
            Value::BulkString(value) => {
                record::decode(&redis_key, Bytes::from(value), self.config.max_output_bytes)
                    .map(Some)
            }
            other => Err(unexpected("get", &other)),
        }
    }

    async fn remove(&self, key: &Key) -> Result<bool, StoreError> {
        let redis_key = self.redis_key(key);
        let removed: i64 = self.on_key("DEL", &redis_key).await?;
        Ok(removed > 0)
    }

    fn max_output_bytes(&self) -> usize {
        self.config.max_output_bytes
    }

    async fn load_mark(&self, key: &Key) -> Result<Option<Bytes>, StoreError> {
        self.load_mark_here(key).await
    }

    async fn swap_mark(&self, key: &Key, swap: MarkSwap<'_>) -> Result<bool, StoreError> {
        self.swap_mark_here(key, swap).await
    }

    async fn list(&self, request: ListRequest) -> Result<Listing, StoreError> {
        self.list_keys(request).await
    }

    async fn list_marks(&self, request: ListRequest) -> Result<MarkPage, StoreError> {
        self.list_mark_values(request).await
    }

    async fn stats(&self, max_records: u64) -> Result<StoreStats, StoreError> {
        self.count_keys(max_records).await
    }

    async fn purge_expired(&self, _limit: u32) -> Result<Purged, StoreError> {
        Ok(Purged::ExpiresItself)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Digest, Fingerprint};

    /// A claim re-sent after a lost reply finds the record its first send wrote: it owns the
    /// key, instead of reading its own record as another owner's and waiting out the lease.
    #[test]
    fn a_claim_that_finds_its_own_record_owns_the_key() {
        let now = SystemTime::now();
        let lease_until = now + Duration::from_secs(30);
        let fingerprint = Fingerprint::from_digest(Digest::of_bytes(b"args"));
        let ours = record::token(lease_until);
        let written = record::in_progress(&ours, &fingerprint, lease_until);
        let answer = claim_answer("k", Value::BulkString(written.to_vec()), ours, now, 1 << 20);
        assert!(
            matches!(answer, Ok((Claim::Acquired { token, took_over: false }, true)) if token == ours),
            "{answer:?}"
        );
        let another = record::token(lease_until);
        let answer = claim_answer(
            "k",
            Value::BulkString(written.to_vec()),
            another,
            now,
            1 << 20,
        );
        assert!(
            matches!(answer, Ok((Claim::InProgress { lease_remaining, .. }, false)) if lease_remaining > Duration::from_secs(29)),
            "{answer:?}"
        );
    }
}
