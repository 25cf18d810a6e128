use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use ::redis::sentinel::SentinelClient;
use ::redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};
use ::redis::{RedisResult, ServerErrorKind};

/// A connection to the master of a Redis Sentinel group that follows failovers: the
/// connection for a [`RedisStore`](super::RedisStore) over Sentinel.
///
/// It asks the sentinels for the master's address on first use, and again after any error
/// that says the master it talks to is gone or no longer the master (a refused or dropped
/// connection, a timeout, `READONLY` from a demoted master, `MASTERDOWN`). The command that
/// met the error fails: it is not retried on the new master, so a call whose claim failed
/// does not run its body (fail closed), and the next call reaches the promoted master by
/// itself. Cloning shares the connection. See [Sentinel](super#sentinel) for the failover
/// timings and what asynchronous replication means for records.
///
/// `client` must be built for [`SentinelServerType::Master`](::redis::sentinel::SentinelServerType::Master):
/// records are written.
///
/// ```
/// use idempotent_core::RedisStore;
/// use idempotent_core::SentinelConnection;
/// use redis::sentinel::{SentinelClient, SentinelServerType};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sentinels = vec![
///     "redis://127.0.0.1:26379",
///     "redis://127.0.0.1:26380",
///     "redis://127.0.0.1:26381",
/// ];
/// let client = SentinelClient::build(sentinels, "mymaster".to_owned(), None, SentinelServerType::Master)?;
/// // Lazy: nothing is sent before the first call.
/// let store = RedisStore::builder(SentinelConnection::new(client))
///     .prefix("billing:idem:")
///     .build()?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SentinelConnection {
    shared: Arc<Shared>,
}

struct Shared {
    /// Asked for the master's address; a lock held while connecting, so that concurrent
    /// calls after a failover make one new connection, not one each.
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// The connection to the master as last resolved, with its generation (so that an error
    /// on an old connection does not drop a newer one).
    master: Mutex<Option<(u64, MultiplexedConnection)>>,
    config: AsyncConnectionConfig,
}

impl fmt::Debug for SentinelConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Neither the client nor the connection is printed: their settings hold passwords.
        let master = self.lock_master();
        f.debug_struct("SentinelConnection")
            .field("connected", &master.is_some())
            .field("generation", &master.as_ref().map_or(0, |(n, _)| *n))
            .finish_non_exhaustive()
    }
}

impl SentinelConnection {
    /// A connection to the master `client` names, with redis-rs's default connection
    /// settings; it connects on first use.
    pub fn new(client: SentinelClient) -> SentinelConnection {
        SentinelConnection::with_config(client, AsyncConnectionConfig::new())
    }

    /// The same, each connection to a master made with `config` (connection and response
    /// timeouts, …). Keep its timeouts below the store's
    /// [`response_timeout`](super::RedisStoreBuilder::response_timeout).
    pub fn with_config(
        client: SentinelClient,
        config: AsyncConnectionConfig,
    ) -> SentinelConnection {
        SentinelConnection {
            shared: Arc::new(Shared {
                sentinel: tokio::sync::Mutex::new(client),
                master: Mutex::new(None),
                config,
            }),
        }
    }

    fn lock_master(&self) -> std::sync::MutexGuard<'_, Option<(u64, MultiplexedConnection)>> {
        self.shared
            .master
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The current master connection, resolved through the sentinels when there is none.
    async fn master(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(current) = self.lock_master().clone() {
            return Ok(current);
        }
        let mut sentinel = self.shared.sentinel.lock().await;
        // Another call may have connected while this one waited for the lock.
        if let Some(current) = self.lock_master().clone() {
            return Ok(current);
        }
        let client = sentinel.async_get_client().await?;
        let connection = client
            .get_multiplexed_async_connection_with_config(&self.shared.config)
            .await?;
        let mut master = self.lock_master();
        let generation = master.as_ref().map_or(0, |(n, _)| *n) + 1;
        *master = Some((generation, connection.clone()));
        Ok((generation, connection))
    }

    /// Forgets connection `generation` after `error`, when the error says its master is gone
    /// or demoted; the next command asks the sentinels again.
    fn on_error(&self, generation: u64, error: &RedisError) {
        if master_lost(error) {
            let mut master = self.lock_master();
            if master.as_ref().is_some_and(|(n, _)| *n == generation) {
                *master = None;
            }
        }
    }
}

/// Whether `error` means the connection no longer leads to a writable master.
fn master_lost(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut connection) = self.master().await?;
            let reply = connection.req_packed_command(cmd).await;
            if let Err(error) = &reply {
                self.on_error(generation, error);
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut connection) = self.master().await?;
            let reply = connection
                .req_packed_commands(pipeline, offset, count)
                .await;
            if let Err(error) = &reply {
                self.on_error(generation, error);
            }
            reply
        })
    }

    fn get_db(&self) -> i64 {
        self.lock_master()
            .as_ref()
            .map_or(0, |(_, connection)| connection.get_db())
    }
}
