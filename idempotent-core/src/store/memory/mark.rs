//! The memory store's marks (see [`Store::load_mark`](crate::Store::load_mark)): one map
//! under one lock, each value with its expiry. Marks are few (one per producer), so expired
//! ones are dropped when the map is next written.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::key::Key;

#[derive(Debug, Default)]
pub(super) struct Marks {
    map: Mutex<HashMap<Key, (Bytes, Instant)>>,
}

impl Marks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (Bytes, Instant)>> {
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn load(&self, key: &Key) -> Option<Bytes> {
        let now = Instant::now();
        let map = self.lock();
        map.get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(value, _)| value.clone())
    }

    pub(super) fn swap(
        &self,
        key: &Key,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Duration,
    ) -> bool {
        let now = Instant::now();
        let mut map = self.lock();
        let current = map
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(value, _)| &value[..]);
        if current != expected {
            return false;
        }
        let expires = now
            .checked_add(ttl)
            .unwrap_or(now + crate::protocol::defaults::LONGEST);
        map.retain(|_, (_, at)| *at > now);
        map.insert(key.clone(), (Bytes::copy_from_slice(new), expires));
        true
    }

    pub(super) fn count(&self) -> usize {
        let now = Instant::now();
        self.lock().values().filter(|(_, at)| *at > now).count()
    }
}
