//! The layer and its options.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use tower_layer::Layer;

use super::scope::ClientScope;
use super::service::IdempotencyService;
use crate::executor::Idempotency;
use crate::key::Namespace;
use crate::protocol::InProgressPolicy;

/// The default key header, `Idempotency-Key`.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The header a replayed response carries: `Idempotent-Replayed: true`.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Which response statuses are stored and replayed; the others are passed through and their
/// claim released, so a retry with the same key runs the handler again.
///
/// ```
/// use http::StatusCode;
/// use idempotent_core::http::StoredStatuses;
///
/// let default = StoredStatuses::default();
/// assert!(default.stores(StatusCode::CREATED));
/// assert!(default.stores(StatusCode::UNPROCESSABLE_ENTITY)); // a deterministic refusal
/// assert!(!default.stores(StatusCode::TOO_MANY_REQUESTS)); // transient: retry may succeed
/// assert!(!default.stores(StatusCode::SERVICE_UNAVAILABLE));
///
/// assert!(!StoredStatuses::successful().stores(StatusCode::NOT_FOUND));
/// assert!(StoredStatuses::all().stores(StatusCode::INTERNAL_SERVER_ERROR));
/// assert!(StoredStatuses::custom(|s| s == StatusCode::CREATED).stores(StatusCode::CREATED));
/// ```
#[derive(Clone, Copy)]
pub struct StoredStatuses(Rule);

#[derive(Clone, Copy)]
enum Rule {
    Final,
    Successful,
    All,
    Custom(fn(StatusCode) -> bool),
}

impl StoredStatuses {
    /// Every final response except the ones a retry may change: 5xx, `408 Request Timeout`,
    /// `409 Conflict`, `425 Too Early` and `429 Too Many Requests` (the default).
    pub const fn except_transient() -> StoredStatuses {
        StoredStatuses(Rule::Final)
    }

    /// `2xx` only: every failure can be retried with the same key.
    pub const fn successful() -> StoredStatuses {
        StoredStatuses(Rule::Successful)
    }

    /// Every final response, `5xx` included, as Stripe's v1 API does: the first outcome is
    /// the outcome.
    pub const fn all() -> StoredStatuses {
        StoredStatuses(Rule::All)
    }

    /// The statuses for which `stores` returns `true` (informational `1xx` never are).
    pub const fn custom(stores: fn(StatusCode) -> bool) -> StoredStatuses {
        StoredStatuses(Rule::Custom(stores))
    }

    /// Whether a response with `status` is stored.
    pub fn stores(&self, status: StatusCode) -> bool {
        if status.is_informational() {
            return false;
        }
        match self.0 {
            Rule::Final => {
                !status.is_server_error() && !matches!(status.as_u16(), 408 | 409 | 425 | 429)
            }
            Rule::Successful => status.is_success(),
            Rule::All => true,
            Rule::Custom(stores) => stores(status),
        }
    }
}

impl Default for StoredStatuses {
    fn default() -> Self {
        StoredStatuses::except_transient()
    }
}

impl fmt::Debug for StoredStatuses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Rule::Final => "StoredStatuses::ExceptTransient",
            Rule::Successful => "StoredStatuses::Successful",
            Rule::All => "StoredStatuses::All",
            Rule::Custom(_) => "StoredStatuses::Custom(..)",
        })
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) idempotency: Idempotency,
    pub(crate) header: HeaderName,
    pub(crate) methods: Vec<Method>,
    pub(crate) require_key: bool,
    pub(crate) max_key_len: usize,
    pub(crate) fingerprint_headers: Vec<HeaderName>,
    pub(crate) scope: ClientScope,
    pub(crate) stored: StoredStatuses,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_response_bytes: usize,
    pub(crate) ttl: Option<Duration>,
    pub(crate) lease: Option<Duration>,
    pub(crate) wait_timeout: Option<Duration>,
    pub(crate) on_in_progress: InProgressPolicy,
    pub(crate) namespace: Namespace,
    pub(crate) version: u32,
    /// The smallest limit the executor or the store reported when it refused a stored
    /// response (`usize::MAX` until one does). Shared by every layer built from one `new`,
    /// which all use the same executor.
    pub(crate) refused_over: Arc<AtomicUsize>,
}

impl Config {
    pub(crate) fn applies_to(&self, method: &Method) -> bool {
        self.methods.iter().any(|m| m == method)
    }

    /// The largest stored record: `max_response_bytes`, or less once the executor or the
    /// store refused a record under it.
    pub(crate) fn response_limit(&self) -> usize {
        self.max_response_bytes
            .min(self.refused_over.load(Ordering::Relaxed))
    }

    /// The executor or the store refused a record over `limit` bytes.
    pub(crate) fn refused(&self, limit: usize) {
        self.refused_over.fetch_min(limit, Ordering::Relaxed);
    }
}

/// A tower [`Layer`] that makes `POST` and `PATCH` requests carrying an `Idempotency-Key`
/// header idempotent (see the [module docs](super) for what each client gets).
///
/// Cheap to clone. Every option has a default; the executor's store decides where responses
/// are kept.
///
/// ```
/// use std::time::Duration;
/// use http::header::HeaderName;
/// use idempotent_core::http::{ClientScope, IdempotencyLayer, StoredStatuses};
/// use idempotent_core::{Idempotency, InProgressPolicy, MemoryStore};
///
/// let layer = IdempotencyLayer::new(Idempotency::new(MemoryStore::new()))
///     .require_key(true)
///     .scope(ClientScope::header(HeaderName::from_static("x-api-key")))
///     .fingerprint_headers([http::header::CONTENT_TYPE])
///     .stored_statuses(StoredStatuses::successful())
///     .ttl(Duration::from_secs(24 * 3600))
///     .on_in_progress(InProgressPolicy::Wait)
///     .namespace("orders-api");
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer {
    config: Arc<Config>,
}

impl IdempotencyLayer {
    /// A layer storing responses through `idempotency`'s store, with the defaults: header
    /// `Idempotency-Key`, methods `POST` and `PATCH`, key optional, keys up to 255
    /// characters, clients told apart by `Authorization`, statuses
    /// [`StoredStatuses::except_transient`], request bodies up to 1 MiB, responses stored up to
    /// 1 MiB, the executor's `ttl` and `lease`, and a duplicate in flight answered `409` at
    /// once.
    pub fn new(idempotency: Idempotency) -> IdempotencyLayer {
        IdempotencyLayer {
            config: Arc::new(Config {
                idempotency,
                header: IDEMPOTENCY_KEY,
                methods: vec![Method::POST, Method::PATCH],
                require_key: false,
                max_key_len: 255,
                fingerprint_headers: Vec::new(),
                scope: ClientScope::default(),
                stored: StoredStatuses::default(),
                max_body_bytes: 1 << 20,
                max_response_bytes: 1 << 20,
                ttl: None,
                lease: None,
                wait_timeout: None,
                on_in_progress: InProgressPolicy::Reject,
                namespace: Namespace::from_static("http"),
                version: 1,
                refused_over: Arc::new(AtomicUsize::new(usize::MAX)),
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// The header that carries the key (default `Idempotency-Key`).
    pub fn header_name(self, name: HeaderName) -> Self {
        self.with(|c| c.header = name)
    }

    /// The methods the layer applies to (default `POST` and `PATCH`); other requests pass
    /// through untouched, key or not.
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        let methods = methods.into_iter().collect();
        self.with(|c| c.methods = methods)
    }

    /// Answer `400` to a request of those methods without a key (default `false`: such a
    /// request passes through, not idempotent).
    pub fn require_key(self, require: bool) -> Self {
        self.with(|c| c.require_key = require)
    }

    /// The longest key accepted, in characters (default 255).
    pub fn max_key_len(self, max: usize) -> Self {
        self.with(|c| c.max_key_len = max)
    }

    /// Request headers that are part of the fingerprint besides the method, path, query and
    /// body (default none): a retry whose value differs is a key reused for another request.
    pub fn fingerprint_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        let names = names.into_iter().collect();
        self.with(|c| c.fingerprint_headers = names)
    }

    /// How clients are told apart (default: the `Authorization` header). A key is only ever
    /// looked up within its client's scope.
    pub fn scope(self, scope: ClientScope) -> Self {
        self.with(|c| c.scope = scope)
    }

    /// Which statuses are stored and replayed (default [`StoredStatuses::except_transient`]).
    pub fn stored_statuses(self, statuses: StoredStatuses) -> Self {
        self.with(|c| c.stored = statuses)
    }

    /// The largest request body read (default 1 MiB); a larger one is answered `413` and
    /// nothing is stored. The body is read in full before the handler runs, to fingerprint it.
    pub fn max_body_bytes(self, limit: usize) -> Self {
        self.with(|c| c.max_body_bytes = limit)
    }

    /// The largest response stored, measured as the record the store receives: status,
    /// headers and the body, byte for byte, plus a few dozen bytes of framing, in the
    /// executor's [output encoding](crate::output) (default 1 MiB, the default `max_output_bytes` of
    /// the executor and of the Redis and SQL stores). Keep it at most the executor's and the
    /// store's limit.
    ///
    /// A larger response is still sent to the first client, whole, but not stored: the key
    /// records a small problem in its place, so a retry gets `response-too-large` (with the
    /// first response's status) and the handler does not run again. If the executor or the
    /// store refuses a response under this limit (theirs is lower), the layer stores that
    /// problem instead too and measures later responses against their limit.
    pub fn max_response_bytes(self, limit: usize) -> Self {
        self.with(|c| c.max_response_bytes = limit)
    }

    /// How long a stored response is replayed (default: the executor's `ttl`, 24 h unless set).
    pub fn ttl(self, ttl: Duration) -> Self {
        self.with(|c| c.ttl = Some(ttl))
    }

    /// How long a claim holds before a retry may take the key over (default: the executor's
    /// `lease`). Make it longer than the handler ever runs.
    pub fn lease(self, lease: Duration) -> Self {
        self.with(|c| c.lease = Some(lease))
    }

    /// A duplicate that arrives while the first request runs: [`InProgressPolicy::Reject`]
    /// (the default) answers `409` with `Retry-After`; [`InProgressPolicy::Wait`] waits for the
    /// first's response (up to [`wait_timeout`](Self::wait_timeout)) and replays it.
    pub fn on_in_progress(self, policy: InProgressPolicy) -> Self {
        self.with(|c| c.on_in_progress = policy)
    }

    /// How long a duplicate waits under [`InProgressPolicy::Wait`] before it is answered `409`
    /// (default: the executor's `wait_timeout`).
    pub fn wait_timeout(self, wait: Duration) -> Self {
        self.with(|c| c.wait_timeout = Some(wait))
    }

    /// The namespace of the stored keys (default `"http"`). Give each service its own when
    /// several share one store.
    pub fn namespace(self, namespace: impl Into<Namespace>) -> Self {
        let namespace = namespace.into();
        self.with(|c| c.namespace = namespace)
    }

    /// The version of the stored keys (default 1): bump it to stop replaying what an older
    /// release of the service stored.
    pub fn version(self, version: u32) -> Self {
        self.with(|c| c.version = version)
    }
}

impl fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService::new(inner, Arc::clone(&self.config))
    }
}
