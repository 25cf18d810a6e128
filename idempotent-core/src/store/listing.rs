//! What a store answers to operators: the records of a namespace, page by page
//! ([`Store::list`](super::Store::list)), counts by namespace and state
//! ([`Store::stats`](super::Store::stats)), and the purge of expired records
//! ([`Store::purge_expired`](super::Store::purge_expired)). The `idempotency` command-line
//! tool (feature `cli`) is built on these.

use std::fmt;
use std::time::SystemTime;

/// Which records [`Store::list`](super::Store::list) returns: those of one namespace (and
/// version), or all, `limit` at a time, from where the previous page ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRequest {
    pub(crate) namespace: Option<(String, u32)>,
    pub(crate) after: Option<Cursor>,
    pub(crate) limit: u32,
}

impl ListRequest {
    /// The first page of every record, 100 at a time.
    pub fn all() -> ListRequest {
        ListRequest {
            namespace: None,
            after: None,
            limit: 100,
        }
    }

    /// The first page of the records of `namespace` at `version` (an `#[idempotent]`
    /// function's `name` and `version`, an HTTP route's namespace and version 1), 100 at a
    /// time.
    pub fn namespace(namespace: impl Into<String>, version: u32) -> ListRequest {
        ListRequest {
            namespace: Some((namespace.into(), version)),
            ..ListRequest::all()
        }
    }

    /// Records a page (at least 1, at most 10,000): at most that many on SQL; on Redis the
    /// `COUNT` of its `SCAN`s, which a page may pass by one `SCAN`'s worth.
    pub fn limit(mut self, limit: u32) -> ListRequest {
        self.limit = limit.clamp(1, 10_000);
        self
    }

    /// The page after the one that answered `cursor` ([`Listing::next`]).
    pub fn after(mut self, cursor: Cursor) -> ListRequest {
        self.after = Some(cursor);
        self
    }

    /// The namespace and version asked for, if any.
    pub fn namespace_filter(&self) -> Option<(&str, u32)> {
        self.namespace
            .as_ref()
            .map(|(name, version)| (name.as_str(), *version))
    }

    /// The cursor this page starts after, if any.
    pub fn cursor(&self) -> Option<&Cursor> {
        self.after.as_ref()
    }

    /// The most records a page holds.
    pub fn page_limit(&self) -> u32 {
        self.limit
    }
}

/// Where a page of [`Store::list`](super::Store::list) ended: pass it to
/// [`ListRequest::after`] for the next page. Its text (`Display`, `From<String>`) is the
/// store's own (a row id, a `SCAN` cursor), to be handed back as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor(String);

impl Cursor {
    /// The cursor's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for Cursor {
    fn from(text: String) -> Self {
        Cursor(text)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One page of [`Store::list`](super::Store::list).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Listing {
    /// The records of this page.
    pub records: Vec<ListedRecord>,
    /// Where to go on from (`None`: this was the last page). A page may hold fewer records
    /// than asked for, even none, and still have a next one (Redis: `SCAN` looked at keys of
    /// other namespaces).
    pub next: Option<Cursor>,
}

/// One page of [`Store::list_marks`](super::Store::list_marks): the values of a namespace's
/// marks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MarkPage {
    /// The live marks' values of this page (a mark that expired may still be listed: read it
    /// again with [`Store::load_mark`](super::Store::load_mark) before relying on it).
    pub values: Vec<bytes::Bytes>,
    /// Where to go on from (`None`: this was the last page); a page may be empty and still
    /// have a next one.
    pub next: Option<Cursor>,
}

/// What [`Store::list_marks`](super::Store::list_marks) answers a request without a
/// namespace.
#[cfg(any(
    feature = "memory",
    feature = "redis",
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite"
))]
pub(crate) fn marks_need_a_namespace() -> crate::error::StoreError {
    crate::error::StoreError::InvalidRequest(
        "marks are listed one namespace at a time: pass `ListRequest::namespace(name, version)`"
            .to_owned(),
    )
}

/// One record of a [`Listing`]: how the store names it and what it holds, without its output.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListedRecord {
    /// The store's name for the record: the row id in hex (SQL), the Redis key (Redis).
    pub id: String,
    /// The namespace it belongs to, as far as the store knows it.
    pub namespace: ListedNamespace,
    /// Its state.
    pub state: ListedState,
}

/// The namespace of a listed record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ListedNamespace {
    /// The namespace and version (SQL stores keep both in their rows).
    Named {
        /// The namespace.
        name: String,
        /// Its version.
        version: u32,
    },
    /// A hash of the namespace and version (Redis keys hold only that: the 16 base64url
    /// characters after the prefix). [`RedisStore::namespace_hash`] gives the hash of a name.
    ///
    /// [`RedisStore::namespace_hash`]: crate::RedisStore::namespace_hash
    Hashed(String),
    /// Not known: a row written before the table had its `namespace` column (before 0.2), or
    /// a mark of producer-sequence deduplication.
    Unknown,
}

impl fmt::Display for ListedNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListedNamespace::Named { name, version } => write!(f, "{name}@{version}"),
            ListedNamespace::Hashed(hash) => write!(f, "#{hash}"),
            ListedNamespace::Unknown => f.write_str("(unknown)"),
        }
    }
}

/// The state of a listed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListedState {
    /// A call holds the key (or held it: the key is free once `lease_until` passes).
    InProgress {
        /// When its lease passes, unless renewed.
        lease_until: SystemTime,
    },
    /// Done: replayed until `expires_at`, after which the store drops it (Redis, memory) or
    /// a purge deletes it (SQL).
    Completed {
        /// When the record expires.
        expires_at: SystemTime,
    },
    /// A value under the store's prefix that is not a record (a mark of producer-sequence
    /// deduplication, or bytes another writer left).
    Other,
}

/// Counts of records by namespace and state: [`Store::stats`](super::Store::stats).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StoreStats {
    /// One entry a namespace, in the namespaces' order.
    pub namespaces: Vec<NamespaceStats>,
    /// Whether every record was counted: `false` when a store that counts by scanning (Redis)
    /// stopped at the bound it was given.
    pub complete: bool,
}

/// The records of one namespace, by state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NamespaceStats {
    /// The namespace.
    pub namespace: ListedNamespace,
    /// Records of calls in progress whose lease has not passed.
    pub in_progress: u64,
    /// Records of calls in progress whose lease passed (crashed or hung owners): the next
    /// claim takes the key over.
    pub lease_passed: u64,
    /// Completed records, replayed to retries.
    pub completed: u64,
    /// Records past their expiry that the store has not deleted yet (SQL: purged by
    /// [`purge_expired`](super::Store::purge_expired) or a sweeper).
    pub expired: u64,
    /// Values that are not records ([`ListedState::Other`]).
    pub other: u64,
}

impl NamespaceStats {
    /// Zero counts for `namespace`.
    pub fn new(namespace: ListedNamespace) -> NamespaceStats {
        NamespaceStats {
            namespace,
            in_progress: 0,
            lease_passed: 0,
            completed: 0,
            expired: 0,
            other: 0,
        }
    }

    /// Every record counted.
    pub fn total(&self) -> u64 {
        self.in_progress + self.lease_passed + self.completed + self.expired + self.other
    }
}

/// What [`Store::purge_expired`](super::Store::purge_expired) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Purged {
    /// It deleted this many expired records.
    Deleted(u64),
    /// Nothing to do: the store drops expired records itself (Redis by their time to live,
    /// the memory store by its own expiry).
    ExpiresItself,
}
