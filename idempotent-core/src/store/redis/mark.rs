//! Marks on Redis (see [`Store::load_mark`](crate::Store::load_mark)): a plain string under
//! the store's prefix, read with `GET` and swapped by `mark.lua`, one key each, so Cluster
//! serves them like records.

use std::sync::LazyLock;

use ::redis::aio::ConnectionLike;
use ::redis::{Script, Value};
use bytes::Bytes;

use super::record::millis;
use super::{RedisStore, evalsha, unexpected};
use crate::error::StoreError;
use crate::key::Key;
use crate::store::MarkSwap;

static SWAP: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("mark.lua")));

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    pub(super) async fn load_mark_here(&self, key: &Key) -> Result<Option<Bytes>, StoreError> {
        let redis_key = self.redis_key(key);
        match self.on_key::<Value>("GET", &redis_key).await? {
            Value::Nil => Ok(None),
            Value::BulkString(value) => Ok(Some(Bytes::from(value))),
            other => Err(unexpected("load mark", &other)),
        }
    }

    pub(super) async fn swap_mark_here(
        &self,
        key: &Key,
        swap: MarkSwap<'_>,
    ) -> Result<bool, StoreError> {
        let MarkSwap { expected, new, ttl } = swap;
        let redis_key = self.redis_key(key);
        let script = &*SWAP;
        let mut command = evalsha(script, &redis_key, 4, 2 * new.len() + 24);
        command
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(new)
            .arg(millis(ttl));
        match self.eval(script, &redis_key, &command).await? {
            Value::Int(1) => Ok(true),
            Value::Int(0) => Ok(false),
            other => Err(unexpected("swap mark", &other)),
        }
    }
}
