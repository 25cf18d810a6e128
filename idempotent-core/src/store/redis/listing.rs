//! Listing and counting records for operators ([`Store::list`](crate::Store::list),
//! [`Store::stats`](crate::Store::stats)) by `SCAN` over the store's prefix, or over a
//! namespace's: every Redis key is the prefix, 16 characters of the namespace's hash, then 32
//! of the key's (see [`record`](super::record)). Each page reads the records' headers with one
//! pipelined `GETRANGE` a key, never their outputs. A Redis Cluster spreads keys over nodes
//! that one `SCAN` does not visit: there, listing is refused rather than partial.

use std::time::SystemTime;

use ::redis::aio::ConnectionLike;
use ::redis::{Value, cmd, pipe};
use bytes::Bytes;

use super::RedisStore;
use super::record::{HEADER, KEY_CHARS, NAMESPACE_CHARS, header_state, namespace_part};
use crate::error::StoreError;
use crate::store::listing::marks_need_a_namespace;
use crate::store::{
    Cursor, ListRequest, ListedNamespace, ListedRecord, ListedState, Listing, MarkPage,
    NamespaceStats, StoreStats,
};

/// `SCAN` calls one page makes at most while looking for records of its namespace.
const SCANS_PER_PAGE: usize = 64;
/// Keys one `SCAN` of [`RedisStore::stats`](crate::Store::stats) asks for.
const STATS_BATCH: u64 = 1000;

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// The 16 characters after the prefix in every Redis key of `namespace` at `version`:
    /// what [`ListedNamespace::Hashed`] holds for its records.
    ///
    /// ```
    /// # use idempotent_core::RedisStore;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// # let connection = redis::aio::ConnectionManager::new_lazy_with_config(client, Default::default())?;
    /// let store = RedisStore::new(connection); // lazy: nothing is sent
    /// let hash = store.namespace_hash("billing.charge", 1);
    /// assert_eq!(hash.len(), 16);
    /// # Ok(())
    /// # }
    /// ```
    pub fn namespace_hash(&self, namespace: &str, version: u32) -> String {
        namespace_part(namespace, version)
    }

    pub(super) async fn list_keys(&self, request: ListRequest) -> Result<Listing, StoreError> {
        let (keys, cursor) = self.scan_page(&request).await?;
        let headers = self.headers(&keys).await?;
        let records = keys
            .into_iter()
            .zip(headers)
            .filter_map(|(key, header)| {
                let header = header?;
                Some(ListedRecord {
                    namespace: self.namespace_of(&key),
                    state: state_of(&header),
                    id: String::from_utf8_lossy(&key).into_owned(),
                })
            })
            .collect();
        Ok(Listing {
            records,
            next: (cursor != 0).then(|| Cursor::from(cursor.to_string())),
        })
    }

    /// The values of one page of a namespace's marks: the keys of a [`scan_page`], read
    /// with one pipelined `GET` each.
    ///
    /// [`scan_page`]: RedisStore::scan_page
    pub(super) async fn list_mark_values(
        &self,
        request: ListRequest,
    ) -> Result<MarkPage, StoreError> {
        if request.namespace_filter().is_none() {
            return Err(marks_need_a_namespace());
        }
        let (keys, cursor) = self.scan_page(&request).await?;
        let mut values = Vec::with_capacity(keys.len());
        if !keys.is_empty() {
            let mut pipeline = pipe();
            for key in &keys {
                pipeline.cmd("GET").arg(key);
            }
            let mut connection = self.connection.clone();
            let replies: Vec<Option<Vec<u8>>> = self
                .bounded("", pipeline.query_async(&mut connection))
                .await?;
            values.extend(replies.into_iter().flatten().map(Bytes::from));
        }
        Ok(MarkPage {
            values,
            next: (cursor != 0).then(|| Cursor::from(cursor.to_string())),
        })
    }

    /// The keys of one page of `request` (at most [`SCANS_PER_PAGE`] `SCAN`s, until the
    /// page's limit) and the cursor to go on from (0: done). Refused on a cluster.
    async fn scan_page(&self, request: &ListRequest) -> Result<(Vec<Vec<u8>>, u64), StoreError> {
        self.refuse_cluster().await?;
        let mut cursor = match request.cursor() {
            None => 0,
            Some(cursor) => cursor.as_str().parse::<u64>().map_err(|_| {
                StoreError::InvalidRequest(format!(
                    "`{cursor}` is not a cursor of this Redis store (a SCAN cursor, a number a \
                     listing's `next` gave): start without one, or pass the `next` of the \
                     previous page"
                ))
            })?,
        };
        let mut pattern = glob_escaped(self.prefix());
        if let Some((namespace, version)) = request.namespace_filter() {
            pattern.push_str(&namespace_part(namespace, version));
        }
        pattern.push('*');
        let limit = request.page_limit() as usize;
        let mut keys = Vec::new();
        for _ in 0..SCANS_PER_PAGE {
            let (next, batch) = self.scan(cursor, &pattern, limit as u64).await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 || keys.len() >= limit {
                break;
            }
        }
        Ok((keys, cursor))
    }

    pub(super) async fn count_keys(&self, max_records: u64) -> Result<StoreStats, StoreError> {
        self.refuse_cluster().await?;
        let pattern = format!("{}*", glob_escaped(self.prefix()));
        let now = SystemTime::now();
        let mut namespaces: Vec<NamespaceStats> = Vec::new();
        // Where each namespace's counts are in `namespaces`.
        let mut index: std::collections::HashMap<ListedNamespace, usize> =
            std::collections::HashMap::new();
        let (mut cursor, mut seen) = (0u64, 0u64);
        loop {
            let (next, keys) = self.scan(cursor, &pattern, STATS_BATCH).await?;
            cursor = next;
            seen += keys.len() as u64;
            let headers = self.headers(&keys).await?;
            for (key, header) in keys.iter().zip(headers) {
                let Some(header) = header else { continue };
                let namespace = self.namespace_of(key);
                let at = *index.entry(namespace.clone()).or_insert_with(|| {
                    namespaces.push(NamespaceStats::new(namespace));
                    namespaces.len() - 1
                });
                let stats = &mut namespaces[at];
                match state_of(&header) {
                    ListedState::InProgress { lease_until } if lease_until > now => {
                        stats.in_progress += 1;
                    }
                    ListedState::InProgress { .. } => stats.lease_passed += 1,
                    ListedState::Completed { .. } => stats.completed += 1,
                    ListedState::Other => stats.other += 1,
                }
            }
            if cursor == 0 || seen >= max_records {
                break;
            }
        }
        namespaces.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        Ok(StoreStats {
            namespaces,
            complete: cursor == 0,
        })
    }

    /// Refuses a Redis Cluster (`INFO cluster` says `cluster_enabled:1`, from any node): one
    /// `SCAN` visits one node. A server that refuses `INFO` is taken for a single one.
    async fn refuse_cluster(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let mut info = cmd("INFO");
        info.arg("cluster");
        let reply = self
            .bounded("", info.query_async::<Value>(&mut connection))
            .await;
        if reply.is_ok_and(|reply| mentions(&reply, "cluster_enabled:1")) {
            return Err(StoreError::Unsupported(
                "listing or counting the records of a Redis Cluster (SCAN visits one node); \
                 list each node with a store connected to it alone",
            ));
        }
        Ok(())
    }

    /// One `SCAN cursor MATCH pattern COUNT count`: the next cursor and the keys.
    async fn scan(
        &self,
        cursor: u64,
        pattern: &str,
        count: u64,
    ) -> Result<(u64, Vec<Vec<u8>>), StoreError> {
        let mut connection = self.connection.clone();
        let mut scan = cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        self.bounded("", scan.query_async(&mut connection)).await
    }

    /// The first [`HEADER`] bytes of each key's value, pipelined; `None` for a key that went
    /// away since the scan (an empty string).
    async fn headers(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipeline = pipe();
        for key in keys {
            pipeline.cmd("GETRANGE").arg(key).arg(0).arg(HEADER - 1);
        }
        let mut connection = self.connection.clone();
        let replies: Vec<Vec<u8>> = self
            .bounded("", pipeline.query_async(&mut connection))
            .await?;
        Ok(replies
            .into_iter()
            .map(|header| (!header.is_empty()).then_some(header))
            .collect())
    }

    /// The namespace a Redis key names: the hash after the prefix, or unknown for a key of
    /// another shape under the prefix.
    fn namespace_of(&self, key: &[u8]) -> ListedNamespace {
        match key.strip_prefix(self.prefix().as_bytes()) {
            Some(rest) if rest.len() == KEY_CHARS && rest.is_ascii() => ListedNamespace::Hashed(
                String::from_utf8_lossy(&rest[..NAMESPACE_CHARS]).into_owned(),
            ),
            _ => ListedNamespace::Unknown,
        }
    }
}

fn state_of(header: &[u8]) -> ListedState {
    match header_state(header) {
        Some((false, lease_until)) => ListedState::InProgress { lease_until },
        Some((true, expires_at)) => ListedState::Completed { expires_at },
        None => ListedState::Other,
    }
}

/// `text` with Redis glob's special characters escaped, to match itself.
fn glob_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether any string in `reply` (a map of nodes' replies included) contains `needle`.
fn mentions(reply: &Value, needle: &str) -> bool {
    match reply {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).contains(needle),
        Value::SimpleString(text) => text.contains(needle),
        Value::VerbatimString { text, .. } => text.contains(needle),
        Value::Array(items) | Value::Set(items) => items.iter().any(|item| mentions(item, needle)),
        Value::Map(pairs) => pairs
            .iter()
            .any(|(key, value)| mentions(key, needle) || mentions(value, needle)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_themselves() {
        assert_eq!(glob_escaped("app:idem:"), "app:idem:");
        assert_eq!(glob_escaped(r"a*b?[c]\"), r"a\*b\?\[c\]\\");
    }
}
