//! The layer and its options.

use std::fmt;
use std::sync::Arc;

use http::{HeaderName, Method};
use tower_layer::Layer;

use super::config::{Config, IDEMPOTENCY_KEY, StoredStatuses};
use super::problem::Problems;
use super::scope::ClientScope;
use super::service::IdempotencyService;
use crate::error::Error;
use crate::executor::Idempotency;
use crate::key::Namespace;
use crate::protocol::{CallOptions, InProgressPolicy, call_option_setters};

/// A tower [`Layer`] that makes `POST` and `PATCH` requests carrying an `Idempotency-Key`
/// header idempotent (see the [module docs](super) for what each client gets).
///
/// Cheap to clone. Every option has a default; the executor's store decides where responses
/// are kept.
///
/// The calls' options are [`CallOptions`](crate::CallOptions), set one by one or as one value,
/// over the executor's: `ttl` (how long a stored response is replayed), `lease` (longer than
/// the handler ever runs), and for a duplicate that arrives while the first request runs,
/// [`InProgressPolicy::Reject`] (the layer's default: `409` with `Retry-After`) or
/// [`InProgressPolicy::Wait`] (wait up to `wait_timeout` for the first's response and replay
/// it, then `409`).
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
    /// The options every service of this layer shares.
    #[cfg(feature = "actix")]
    pub(crate) fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// A layer storing responses through `idempotency`'s store, with the defaults: header
    /// `Idempotency-Key`, methods `POST` and `PATCH`, key optional, keys up to 255
    /// characters, clients told apart by `Authorization` (a request without one is refused:
    /// [`scope`](Self::scope)), statuses
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
                fingerprint_json: false,
                scope: ClientScope::default(),
                stored: StoredStatuses::default(),
                max_body_bytes: 1 << 20,
                max_response_bytes: 1 << 20,
                options: CallOptions::new().on_in_progress(InProgressPolicy::Reject),
                namespace: Namespace::from_static("http"),
                version: 1,
                problems: Problems::default(),
                grpc_methods: None,
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

    /// Fingerprints a JSON body by its value rather than its bytes (default: off), so that
    /// a client that re-serializes its request between retries (another key order, other
    /// whitespace, `1.0` for `1`) gets its replay, not `422 key-reused`: object members are
    /// sorted, insignificant whitespace dropped, strings and numbers compared by value (exact
    /// decimals, no floating point). It applies to a body whose `Content-Type` is
    /// `application/json` or a `+json` type; any other body, and a body that is not valid
    /// JSON, nests deeper than 128 levels or repeats an object member's name, is
    /// fingerprinted by its raw bytes. Turning it on changes the fingerprints of JSON
    /// requests: a retry that straddles the change gets `422`.
    ///
    /// Selected request headers join the fingerprint with
    /// [`fingerprint_headers`](Self::fingerprint_headers).
    pub fn fingerprint_json(self, on: bool) -> Self {
        self.with(|c| c.fingerprint_json = on)
    }

    /// How clients are told apart (default: the `Authorization` header). A key is only ever
    /// looked up within its client's scope, and a request whose client the scope cannot
    /// identify is refused (`400` [unidentified-client](super#unidentified-client)) unless the
    /// scope shares one on purpose ([`ClientScope::share_anonymous`], [`ClientScope::global`]).
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
    /// first response's status) and the handler does not run again. When the executor's limit
    /// (its own, or its store's [`max_output_bytes`](crate::Store::max_output_bytes)) is
    /// lower, that limit applies: the layer asks for it up front.
    pub fn max_response_bytes(self, limit: usize) -> Self {
        self.with(|c| c.max_response_bytes = limit)
    }

    fn apply(&mut self, options: CallOptions) {
        let config = Arc::make_mut(&mut self.config);
        config.options = options.or(config.options);
    }

    call_option_setters!();

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

    /// Where the layer's problem types are described: each problem's `type` is `base`
    /// followed by its name (`missing-key`, `key-reused`, … as listed in the
    /// [module docs](super)), so that error responses point at the service's own
    /// documentation. The default is [`PROBLEM_TYPE_BASE`](super::PROBLEM_TYPE_BASE), this
    /// crate's docs. [`Error::InvalidOption`] when `base` cannot be a URI in JSON and in a
    /// header (empty, over 2048 bytes, spaces, quotes, `<`, `>`…).
    ///
    /// ```
    /// # use idempotent_core::{Idempotency, MemoryStore};
    /// use idempotent_core::http::IdempotencyLayer;
    ///
    /// let layer = IdempotencyLayer::new(Idempotency::new(MemoryStore::new()))
    ///     .problem_types("https://api.example.com/problems/")?
    ///     .link_problem_types(true); // and `Link: <…key-reused>; rel="describedby"`
    /// assert!(IdempotencyLayer::new(Idempotency::new(MemoryStore::new()))
    ///     .problem_types("not a uri")
    ///     .is_err());
    /// # Ok::<(), idempotent_core::Error>(())
    /// ```
    pub fn problem_types(self, base: &str) -> Result<Self, Error> {
        let current = &self.config.problems;
        let problems = Problems::under(base, current.link, current.grpc)?;
        Ok(self.with(|c| c.problems = problems))
    }

    /// Adds `Link: <{the problem's type}>; rel="describedby"` to every problem the layer
    /// answers with (default: off), as the IETF draft suggests.
    pub fn link_problem_types(self, link: bool) -> Self {
        self.with(|c| c.problems.link = link)
    }

    /// gRPC mode, for a tonic server (`Server::builder().layer(…)`): the layer covers the unary
    /// methods named here by path (`/package.Service/Method`) and passes every other call
    /// through, streaming calls included (name only unary methods: a covered call's request and
    /// response are read whole).
    ///
    /// The key is the `idempotency-key` metadata (the [`header_name`](Self::header_name)); a
    /// covered call's response is stored with its trailers (`grpc-status`, `grpc-message`,
    /// trailing metadata) and replayed with them, plus `idempotent-replayed: true` metadata.
    /// Whether it is stored is decided by its `grpc-status` read as the HTTP status gRPC maps it
    /// to (`OK` 200, `INVALID_ARGUMENT` 400, `NOT_FOUND` 404, `ALREADY_EXISTS` and `ABORTED`
    /// 409, `RESOURCE_EXHAUSTED` 429, `CANCELLED` 408, `UNAVAILABLE` 503, `INTERNAL` and the
    /// unknown 500…) under [`stored_statuses`](Self::stored_statuses): by default an `OK` or a
    /// deterministic error is stored, a transient one is not. The layer's refusals are gRPC
    /// statuses with the problem's detail as `grpc-message` and its type URI as
    /// `idempotency-problem` metadata: `INVALID_ARGUMENT` (missing or malformed key,
    /// unidentified client), `ALREADY_EXISTS` (key reused for another request), `ABORTED`
    /// (still in progress: retry with the same key), `UNAVAILABLE` (store unreachable),
    /// `RESOURCE_EXHAUSTED` (request over `max_body_bytes`), `FAILED_PRECONDITION` (processed,
    /// but its response was too large to store: do not send it again), `INTERNAL` otherwise.
    ///
    /// ```
    /// # use idempotent_core::{Idempotency, MemoryStore};
    /// use idempotent_core::http::IdempotencyLayer;
    ///
    /// let layer = IdempotencyLayer::new(Idempotency::new(MemoryStore::new()))
    ///     .grpc(["/shop.Orders/Create", "/shop.Payments/Charge"]);
    /// # let _ = layer;
    /// ```
    pub fn grpc<I>(self, unary_methods: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let paths: Arc<[String]> = unary_methods.into_iter().map(Into::into).collect();
        self.with(|c| {
            c.grpc_methods = Some(paths);
            c.problems.grpc = true;
        })
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
