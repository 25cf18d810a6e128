//! The layer's configuration, shared by the layer and its services, and what it stores.

use std::fmt;

use http::{HeaderName, Method, StatusCode};

use super::scope::ClientScope;
use crate::executor::Idempotency;
use crate::key::Namespace;
use crate::protocol::CallOptions;

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
    pub(crate) fingerprint_json: bool,
    pub(crate) scope: ClientScope,
    pub(crate) stored: StoredStatuses,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_response_bytes: usize,
    /// The calls' options over the executor's: `on_in_progress` defaults to `Reject`.
    pub(crate) options: CallOptions,
    pub(crate) namespace: Namespace,
    pub(crate) version: u32,
    pub(crate) problems: super::problem::Problems,
    /// gRPC mode: the unary methods covered, by path (`/package.Service/Method`).
    pub(crate) grpc_methods: Option<std::sync::Arc<[String]>>,
}

impl Config {
    /// Whether a request with this method and path is made idempotent (the others pass
    /// through).
    pub(crate) fn applies_to(&self, method: &Method, path: &str) -> bool {
        match &self.grpc_methods {
            Some(paths) => method == Method::POST && paths.iter().any(|covered| covered == path),
            None => self.methods.iter().any(|m| m == method),
        }
    }

    /// The largest stored record: `max_response_bytes`, or the executor's limit (its own or
    /// its store's) when lower, known up front.
    pub(crate) fn response_limit(&self) -> usize {
        self.max_response_bytes
            .min(self.idempotency.max_output_bytes())
    }
}
