//! The memory store's marks (see [`Store::load_mark`](crate::Store::load_mark)): one map
//! under one lock, each value with its expiry. Marks are few (one per producer); expired ones
//! are dropped by a write once the map has doubled since the last sweep.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::key::Key;

#[derive(Debug, Default)]
pub(super) struct Marks {
    map: Mutex<Map>,
}

#[derive(Debug, Default)]
struct Map {
    marks: HashMap<Key, (Bytes, Instant)>,
    /// Sweep expired marks when the map grows past this (twice its size after a sweep).
    sweep_above: usize,
}

impl Marks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn load(&self, key: &Key) -> Option<Bytes> {
        let now = Instant::now();
        let map = self.lock();
        map.marks
            .get(key)
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
            .marks
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(value, _)| &value[..]);
        if current != expected {
            return false;
        }
        let expires = now
            .checked_add(ttl)
            .unwrap_or(now + crate::protocol::defaults::LONGEST);
        if map.marks.len() >= map.sweep_above {
            map.marks.retain(|_, (_, at)| *at > now);
            map.sweep_above = (map.marks.len() * 2).max(64);
        }
        map.marks
            .insert(key.clone(), (Bytes::copy_from_slice(new), expires));
        true
    }

    /// Up to `limit` live marks of `namespace` at `version` whose key's digest (hex) sorts
    /// after `after`, in that order, and the last one's digest when there may be more.
    pub(super) fn list(
        &self,
        (namespace, version): (&str, u32),
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<Bytes>, Option<String>) {
        let now = Instant::now();
        let map = self.lock();
        let mut found: Vec<(String, Bytes)> = map
            .marks
            .iter()
            .filter(|(key, (_, expires))| {
                *expires > now && key.namespace() == namespace && key.version() == version
            })
            .map(|(key, (value, _))| (key.digest().hex().as_str().to_owned(), value.clone()))
            .filter(|(digest, _)| after.is_none_or(|after| digest.as_str() > after))
            .collect();
        drop(map);
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let more = found.len() > limit;
        found.truncate(limit);
        let next = more
            .then(|| found.last().map(|(digest, _)| digest.clone()))
            .flatten();
        (found.into_iter().map(|(_, value)| value).collect(), next)
    }

    pub(super) fn count(&self) -> usize {
        let now = Instant::now();
        let map = self.lock();
        map.marks.values().filter(|(_, at)| *at > now).count()
    }
}
