//! What the store asks of the server beyond records: that it does not evict them (checked by
//! `load_scripts`), and, where asked, that replicas have a completed record (`WAIT`).

use std::any::Any;
use std::time::Duration;

use ::redis::aio::ConnectionLike;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use ::redis::{Cmd, RedisError, Script, ServerErrorKind, Value};

use super::{RedisStore, fenced_reply, store_error, unexpected};
use crate::error::StoreError;
use crate::trace::event;

/// The server evicts keys when memory runs short (`maxmemory-policy` other than
/// `noeviction`), refused by [`RedisStore::load_scripts`](super::RedisStore::load_scripts)
/// unless [`allow_evicting_policy`](super::RedisStoreBuilder::allow_evicting_policy) is set.
///
/// An evicted record is a record lost: a retry of its call runs the body again. Every policy
/// but `noeviction` can evict ours: the `allkeys-*` ones any key, the `volatile-*` ones keys
/// with a time to live, which every record has. It comes inside
/// [`StoreError::Backend`](crate::StoreError::Backend); find it with `downcast_ref`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "redis{} evicts keys under `maxmemory-policy {policy}`, and an evicted record lets a retry run its body again: run `CONFIG SET maxmemory-policy noeviction` (and set it in redis.conf or the managed service's parameters), or accept the risk with `RedisStoreBuilder::allow_evicting_policy(true)`",
    node.as_deref().map(|node| format!(" node {node}")).unwrap_or_default()
)]
pub struct RedisEvictionPolicyError {
    policy: String,
    node: Option<String>,
}

impl RedisEvictionPolicyError {
    /// The server's `maxmemory-policy`.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// The node that has it, on Redis Cluster (`host:port`).
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }
}

/// What the policy check found wrong.
pub(super) enum PolicyRefused {
    /// An evicting policy.
    Evicting(RedisEvictionPolicyError),
    /// The server could not be asked (unreachable, timed out): not a server's refusal.
    Failed(RedisError),
}

/// Reads `maxmemory-policy` from the server (from every node of a cluster) and refuses an
/// evicting one. A server that refuses `CONFIG GET` (an ACL without `+config`, a managed Redis
/// that renames or hides `CONFIG`) or does not know the setting is let through with a warning:
/// the store cannot tell, and the operator may know.
pub(super) async fn check_eviction_policy<C>(connection: &C) -> Result<(), PolicyRefused>
where
    C: ConnectionLike + Clone + Send + 'static,
{
    let mut command = ::redis::cmd("CONFIG");
    command.arg("GET").arg("maxmemory-policy");
    // A cluster connection sends `CONFIG GET` to one random node by itself; every node must
    // be asked, replicas too (one is a master after a failover).
    if let Some(cluster) = (connection as &dyn Any).downcast_ref::<ClusterConnection>() {
        let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllNodes, None));
        let reply = cluster
            .clone()
            .route_command(command, routing)
            .await
            .map_err(PolicyRefused::Failed)?;
        let Value::Map(nodes) = reply else {
            return policy_of(None, reply);
        };
        for (node, reply) in nodes {
            let node = text(&node).unwrap_or_else(|| String::from("?"));
            policy_of(Some(node), reply)?;
        }
        return Ok(());
    }
    let mut connection = connection.clone();
    match command.query_async::<Value>(&mut connection).await {
        Ok(reply) => policy_of(None, reply),
        Err(error) if refused_by_server(&error) => {
            denied(None, &error);
            Ok(())
        }
        Err(error) => Err(PolicyRefused::Failed(error)),
    }
}

/// The policy in one node's reply to `CONFIG GET maxmemory-policy`: `[name, value]`, or a map
/// of the one setting (RESP3).
fn policy_of(node: Option<String>, reply: Value) -> Result<(), PolicyRefused> {
    let value = match reply {
        Value::Array(items) if items.len() == 2 => text(&items[1]),
        Value::Map(pairs) if pairs.len() == 1 => text(&pairs[0].1),
        Value::ServerError(error) => {
            denied(node.as_deref(), &RedisError::from(error));
            return Ok(());
        }
        _ => None,
    };
    match value {
        Some(policy) if policy.eq_ignore_ascii_case("noeviction") => Ok(()),
        Some(policy) => Err(PolicyRefused::Evicting(RedisEvictionPolicyError {
            policy,
            node,
        })),
        None => {
            event!(
                warn,
                node = node.as_deref().unwrap_or("redis"),
                "redis did not report its `maxmemory-policy`; make sure it is `noeviction`: an evicted record lets a retry run its body again"
            );
            Ok(())
        }
    }
}

fn denied(node: Option<&str>, error: &RedisError) {
    let _ = (node, error);
    event!(
        warn,
        node = node.unwrap_or("redis"),
        error = %error,
        "redis refused `CONFIG GET maxmemory-policy`, so the store cannot check that it does not evict records; make sure the policy is `noeviction`"
    );
}

/// An error reply of the server (`NOPERM`, `ERR unknown command`), not a failure to reach it.
fn refused_by_server(error: &RedisError) -> bool {
    error.code().is_some() && !error.is_io_error() && !error.is_timeout()
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// `WAIT <replicas> <timeout>` after a completion, and what to do with its answer.
#[derive(Debug, Clone, Copy)]
pub(super) struct WaitForReplicas {
    pub(super) replicas: u32,
    /// At least 1 ms: `WAIT n 0` blocks until `n` replicas answer, however long.
    pub(super) timeout_ms: u64,
}

impl WaitForReplicas {
    pub(super) fn command(self) -> Cmd {
        let mut command = ::redis::cmd("WAIT");
        command.arg(self.replicas).arg(self.timeout_ms);
        command
    }

    /// Reads `WAIT`'s reply; fewer replicas than asked is a warning (the record is on the
    /// master and stays: the body ran and must not run again).
    pub(super) fn acknowledged(self, redis_key: &str, reply: &Value) {
        let acknowledged = match reply {
            Value::Int(n) => Some(*n),
            _ => None,
        };
        if acknowledged.is_some_and(|n| n >= i64::from(self.replicas)) {
            return;
        }
        let _ = redis_key;
        event!(
            warn,
            redis_key,
            replicas = self.replicas,
            acknowledged = ?acknowledged,
            timeout_ms = self.timeout_ms,
            "fewer redis replicas than asked acknowledged a completed record in time; it is on the master, and a failover before it reaches a replica would lose it"
        );
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// The completion's `EVALSHA` and a `WAIT`, pipelined: one round trip, on one connection
    /// (so the `WAIT` counts this write), to the record's node. Bounded by the response timeout
    /// plus the `WAIT`'s.
    pub(super) async fn complete_and_wait(
        &self,
        script: &Script,
        redis_key: &str,
        command: Cmd,
        wait: WaitForReplicas,
    ) -> Result<(), StoreError> {
        let mut pipeline = ::redis::pipe();
        pipeline
            .add_command(command)
            .add_command(wait.command())
            .ignore_errors();
        let mut connection = self.connection.clone();
        let operation = async {
            let replies: Vec<Value> = pipeline.query_async(&mut connection).await?;
            match replies.first() {
                Some(Value::ServerError(error))
                    if error.kind() == Some(ServerErrorKind::NoScript) =>
                {
                    // Nothing ran: load the script and send both again.
                    script.load_async(&mut connection).await?;
                    pipeline.query_async(&mut connection).await
                }
                _ => Ok(replies),
            }
        };
        let limit = self.config.response_timeout + Duration::from_millis(wait.timeout_ms);
        let replies = match tokio::time::timeout(limit, operation).await {
            Ok(Ok(replies)) => replies,
            Ok(Err(error)) => return Err(store_error(redis_key, error)),
            Err(_elapsed) => return Err(StoreError::Timeout(limit)),
        };
        let mut replies = replies.into_iter();
        let completed = match replies.next() {
            Some(Value::ServerError(error)) => {
                return Err(store_error(redis_key, RedisError::from(error)));
            }
            Some(reply) => fenced_reply("complete", redis_key, &reply),
            None => Err(unexpected("complete", &Value::Nil)),
        };
        if completed.is_ok() {
            wait.acknowledged(redis_key, &replies.next().unwrap_or(Value::Nil));
        }
        completed
    }
}
