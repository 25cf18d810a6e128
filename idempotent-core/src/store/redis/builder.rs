use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::RedisStore;
#[cfg(doc)]
use super::server::RedisEvictionPolicyError;
use super::server::WaitForReplicas;
#[cfg(doc)]
use crate::error::StoreError;

const DEFAULT_PREFIX: &str = "idempotency:";
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_MAX_OUTPUT_BYTES: usize = crate::defaults::MAX_OUTPUT_BYTES;

/// A store's settings, shared by its clones.
#[derive(Debug)]
pub(super) struct Config {
    pub(super) prefix: Box<str>,
    pub(super) response_timeout: Duration,
    pub(super) max_output_bytes: usize,
    /// Claim with the Lua script instead of `SET … NX GET` (set up front, or on the first
    /// claim a server older than Redis 7 refused).
    pub(super) claim_by_script: AtomicBool,
    /// `load_scripts` lets a server that evicts keys through.
    pub(super) allow_evicting_policy: bool,
    /// `WAIT` for replicas after each completion.
    pub(super) wait_for_replicas: Option<WaitForReplicas>,
    /// Outputs of at least this many bytes are stored LZ4-compressed (when that is shorter).
    pub(super) compress_above: usize,
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
    allow_evicting_policy: bool,
    wait_for_replicas: Option<(u32, Duration)>,
    compress_above: usize,
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
    /// The defaults (what [`RedisStore::new`] uses): prefix `"idempotency:"`, 1 s response
    /// timeout, outputs up to 1 MiB, the native claim.
    pub(super) fn new(connection: C) -> RedisStoreBuilder<C> {
        RedisStoreBuilder {
            connection,
            prefix: DEFAULT_PREFIX.to_owned(),
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            claim_by_script: false,
            allow_evicting_policy: false,
            wait_for_replicas: None,
            compress_above: usize::MAX,
        }
    }

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
    /// [`StoreError::TooLarge`] before anything is sent; the executor then records that the
    /// body ran with its output not stored (retries get `Error::OutputNotStored`).
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

    /// Let [`RedisStore::load_scripts`] accept a server whose `maxmemory-policy` evicts keys
    /// (default `false`: it fails with [`RedisEvictionPolicyError`]). An evicted record is a
    /// record lost, and a retry of its call runs the body again; allow it only where that is
    /// acceptable, or where memory can never run short.
    pub fn allow_evicting_policy(mut self, allow: bool) -> Self {
        self.allow_evicting_policy = allow;
        self
    }

    /// After each `complete`, wait until `replicas` replicas have the record, up to `timeout`
    /// (`WAIT replicas timeout`, sent with the completion in one round trip; default: no
    /// wait). Fewer replicas in time is a `tracing` warning, not an error: the record is on
    /// the master and stays, and the body must not run again. It narrows the window in which a
    /// failover loses a just-completed record; it does not close it (Redis is no consensus
    /// store). `replicas = 0` turns it off; a zero `timeout` is taken as 1 ms (`WAIT` with 0
    /// would block for ever). A completion may then take up to `timeout` longer, on top of
    /// [`response_timeout`](Self::response_timeout); give the connection a response timeout
    /// longer than both. On Redis Cluster the `WAIT` goes to the record's master.
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_for_replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// Store outputs of `bytes` or more LZ4-compressed, when that makes them shorter (default:
    /// never). Redis keeps every record in memory for its whole TTL: for large, repetitive
    /// outputs (JSON bodies, reports) compression can cut that several times, for some CPU on
    /// each completion and each replay of such a record. Small outputs seldom shrink and are
    /// never worth it: pick a threshold of a kilobyte or more. [`max_output_bytes`] limits the
    /// output before compression. A store without the option still reads compressed records.
    ///
    /// [`max_output_bytes`]: Self::max_output_bytes
    pub fn compress_outputs_above(mut self, bytes: usize) -> Self {
        self.compress_above = bytes;
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
        Ok(self.into_store())
    }

    /// The store, its prefix already checked.
    pub(super) fn into_store(self) -> RedisStore<C> {
        RedisStore {
            connection: self.connection,
            config: Arc::new(Config {
                prefix: self.prefix.into_boxed_str(),
                response_timeout: self.response_timeout,
                max_output_bytes: self.max_output_bytes,
                claim_by_script: AtomicBool::new(self.claim_by_script),
                allow_evicting_policy: self.allow_evicting_policy,
                wait_for_replicas: self.wait_for_replicas.map(|(replicas, timeout)| {
                    WaitForReplicas {
                        replicas,
                        timeout_ms: super::record::millis(timeout).max(1),
                    }
                }),
                compress_above: self.compress_above,
            }),
        }
    }
}
