//! The service: read the key and the body, claim, run the handler once, store, replay.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use sha2::{Digest as _, Sha256};
use tower_service::Service;

use super::body::{Collected, RequestBody, ResponseBody, collect_up_to};
use super::config::{Config, IDEMPOTENT_REPLAYED};
use super::header::{parse_key, replayable};
use super::json;
use super::problem::{self, Kind, Problems};
use super::record::{ResponseRecord, StoredResponse};
use super::scope::{ClientId, Identity};
use crate::error::{BoxError, Error, StoreOp};
use crate::key::{Digest, Fingerprint, Key};
use crate::trace::event;

/// The service [`IdempotencyLayer`](super::IdempotencyLayer) wraps around an inner service.
///
/// The inner service receives `Request<RequestBody<B>>` and may answer with any body of
/// [`Bytes`]; axum's `Router::layer` and `route_layer` accept it as is.
///
/// For a request the layer makes idempotent, the inner service's call runs in a spawned Tokio
/// task, so that a client going away cannot cancel a handler halfway (see
/// [the module docs](super#the-handler-runs-in-its-own-task)): hence the `Send + 'static`
/// bounds on the service, its future, its error and both bodies, which axum and
/// `tower::service_fn` over an `async` block meet.
pub struct IdempotencyService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> IdempotencyService<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        IdempotencyService { inner, config }
    }
}

impl<S: Clone> Clone for IdempotencyService<S> {
    fn clone(&self) -> Self {
        IdempotencyService {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for IdempotencyService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

type Managed<B, E> = Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

pin_project! {
    /// The future of [`IdempotencyService`]: the inner service's own future for requests the
    /// layer lets through, a boxed one for the requests it makes idempotent.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: FutureKind<F, B, E>,
    }
}

pin_project! {
    #[project = FutureKindProj]
    enum FutureKind<F, B, E> {
        Through { #[pin] future: F },
        Managed { future: Managed<B, E> },
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            FutureKind::Through { .. } => "ResponseFuture::Through",
            FutureKind::Managed { .. } => "ResponseFuture::Managed",
        })
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            FutureKindProj::Through { future } => future
                .poll(cx)
                .map_ok(|response| response.map(ResponseBody::stream)),
            FutureKindProj::Managed { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for IdempotencyService<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + Unpin + 'static,
    ResBody::Error: Send,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let config = &self.config;
        if !config.applies_to(request.method())
            || (!config.require_key && !request.headers().contains_key(&config.header))
        {
            return ResponseFuture {
                kind: FutureKind::Through {
                    future: self.inner.call(request.map(RequestBody::stream)),
                },
            };
        }
        // The ready service goes into the future; a fresh clone waits for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            kind: FutureKind::Managed {
                future: Box::pin(handle(Arc::clone(config), inner, request)),
            },
        }
    }
}

/// How a run of the handler ended other than with a stored response.
enum Failure<B, E> {
    Idempotency(Error),
    /// The inner service failed: the error is passed on.
    Service(E),
    /// A response whose status is not stored: passed on as is.
    Unstored(Response<ResponseBody<B>>),
}

impl<B, E> From<Error> for Failure<B, E> {
    fn from(error: Error) -> Self {
        Failure::Idempotency(error)
    }
}

async fn handle<S, ReqBody, ResBody>(
    config: Arc<Config>,
    inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + Unpin + 'static,
{
    let (parts, body) = request.into_parts();
    let header = &config.header;
    let key = match parse_key(&parts.headers, header, config.max_key_len) {
        Ok(Some(key)) => key,
        Ok(None) => {
            let detail = format!(
                "this endpoint requires an `{header}` header on `{}` requests",
                parts.method
            );
            return Ok(problem::response(
                &config.problems,
                Kind::MissingKey,
                &detail,
                None,
            ));
        }
        Err(problem) => {
            let detail = problem.detail(header);
            return Ok(problem::response(
                &config.problems,
                Kind::MalformedKey,
                &detail,
                None,
            ));
        }
    };
    let client = match config.scope.identity(&parts) {
        Ok(Identity::Client(client)) => Some(client),
        Ok(Identity::Shared) => None,
        Ok(Identity::Unidentified) => {
            let detail = format!(
                "this request does not identify its client ({}), so it was not processed: send it with your credentials; a server that means to share one scope between unidentified clients builds its layer with `ClientScope::share_anonymous` or `ClientScope::global`",
                config.scope.lacking()
            );
            return Ok(problem::response(
                &config.problems,
                Kind::UnidentifiedClient,
                &detail,
                None,
            ));
        }
        Err(error) => {
            event!(error, error = %error, "the client scope failed; the handler did not run");
            let _ = error;
            let detail = "the client of this request could not be identified (its scope value failed to serialize), so the request was not processed";
            return Ok(problem::response(
                &config.problems,
                Kind::ScopeFailed,
                detail,
                None,
            ));
        }
    };
    let key_digest = key_digest(client, &key);

    let limit = config.max_body_bytes;
    let too_large = || {
        let detail = format!("the request body is over the limit of {limit} bytes");
        problem::response(&config.problems, Kind::BodyTooLarge, &detail, None)
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Ok(too_large());
    }
    // Read in the request's own future: a client that goes away before its body is sent has
    // nothing claimed and nothing run.
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => return Ok(too_large()),
        Err(_) => {
            let detail = "the request body could not be read to the end";
            return Ok(problem::response(
                &config.problems,
                Kind::UnreadableBody,
                detail,
                None,
            ));
        }
    };

    let fingerprint = fingerprint(&config, &parts, &body);
    let request = Request::from_parts(parts, RequestBody::buffered(body));
    let problems = config.problems.clone();
    let run = execute(config, inner, key_digest, fingerprint, request);
    #[cfg(feature = "tracing")]
    let run = tracing::Instrument::in_current_span(run);
    // The claim, the handler and the storing of its response run in a task of their own: a
    // client that disconnects drops this future, not the handler, which finishes and stores
    // its response for the client's retry.
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => match runtime.spawn(run).await {
            Ok(response) => response,
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // The runtime is shutting down.
                Err(_) => {
                    let detail = "the server shut down while the request was processed; retry with the same key";
                    Ok(problem::response(
                        &problems,
                        Kind::ResponseFailed,
                        detail,
                        None,
                    ))
                }
            },
        },
        // No Tokio runtime: the call runs in the request's future.
        Err(_) => run.await,
    }
}

/// Claims the key, runs the handler once, stores its response (or a problem standing in for
/// it) and answers.
async fn execute<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    key_digest: Digest,
    fingerprint: Fingerprint,
    request: Request<RequestBody<ReqBody>>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Unpin,
{
    let key = Key::new(config.namespace.clone(), config.version, key_digest);
    let call = config
        .idempotency
        .call(key, fingerprint)
        .options(config.options);

    // The response for the client, when the handler ran in this call: the handler's own (with
    // its own headers, streamed if too large to store), while its replayable part, or the
    // problem standing in for it, is stored.
    let mut first: Option<Response<ResponseBody<ResBody>>> = None;
    let slot = &mut first;
    let stored_statuses = config.stored;
    let limit = config.response_limit();
    let problems = &config.problems;
    let outcome: Result<ResponseRecord, Failure<ResBody, S::Error>> = call
        .run(|| async move {
            let response = inner.call(request).await.map_err(Failure::Service)?;
            let (parts, body) = response.into_parts();
            if !stored_statuses.stores(parts.status) {
                return Err(Failure::Unstored(Response::from_parts(
                    parts,
                    ResponseBody::stream(body),
                )));
            }
            // From here the handler ran and answered with a status that is stored: whatever
            // happens to its body, the key records something, so a retry never runs it again.
            let (stored, response) = match collect_up_to(body, limit).await {
                Collected::Whole(bytes) => {
                    let stored = ResponseRecord(Arc::new(StoredResponse {
                        status: parts.status,
                        headers: replayable(&parts.headers),
                        body: bytes.clone(),
                    }));
                    let stored = if stored.fits(limit) {
                        stored
                    } else {
                        too_large(problems, parts.status, &parts.headers, limit)
                    };
                    (stored, Response::from_parts(parts, ResponseBody::full(bytes)))
                }
                Collected::OverLimit(read, rest) => (
                    too_large(problems, parts.status, &parts.headers, limit),
                    Response::from_parts(parts, ResponseBody::prefixed(read, rest)),
                ),
                Collected::Failed(_) => {
                    let stored = ResponseRecord(Arc::new(problem::stand_in(
                        problems,
                        Kind::ResponseFailed,
                        parts.status,
                        None,
                        "the request was processed, but its response failed before the end, so it cannot be sent or replayed; do not send it again under a new key",
                    )));
                    (stored.clone(), answer(&stored, false))
                }
            };
            *slot = Some(response);
            Ok(stored)
        })
        .await;

    match (outcome, first) {
        (Ok(_), Some(response)) => Ok(response),
        (Ok(stored), None) => Ok(answer(&stored, true)),
        (Err(Failure::Unstored(response)), _) => Ok(response),
        (Err(Failure::Service(error)), _) => Err(error),
        // The handler ran but its response could not be stored (store failure on `complete`,
        // lease lost): the client still gets it.
        (Err(Failure::Idempotency(error)), Some(response)) => {
            event!(warn, error = %error, "the response was sent but not stored");
            let _ = error;
            Ok(response)
        }
        (Err(Failure::Idempotency(error)), None) => Ok(refusal(&config, error)),
    }
}

/// The problem stored in place of a response too large to store.
fn too_large(
    problems: &Problems,
    status: StatusCode,
    headers: &HeaderMap,
    limit: usize,
) -> ResponseRecord {
    let detail = format!(
        "the request was processed, but its response was too large to store (over {limit} bytes), so it cannot be replayed; do not send the request again under a new key"
    );
    ResponseRecord(Arc::new(problem::stand_in(
        problems,
        Kind::ResponseTooLarge,
        status,
        headers.get(LOCATION),
        &detail,
    )))
}

/// The layer's answer when the handler did not run.
fn refusal<B>(config: &Config, error: Error) -> Response<ResponseBody<B>> {
    let header = &config.header;
    match error {
        Error::InProgress { retry_after, .. } => {
            let detail = format!(
                "a request with this `{header}` is still being processed; retry after it finishes"
            );
            problem::response(
                &config.problems,
                Kind::InProgress,
                &detail,
                Some(retry_after),
            )
        }
        Error::KeyReused { .. } => {
            let detail = format!(
                "this `{header}` was used for a request with another method, path, query, body or fingerprinted header; use a new key for a new request"
            );
            problem::response(&config.problems, Kind::KeyReused, &detail, None)
        }
        Error::Store {
            op: StoreOp::Claim, ..
        } => {
            event!(error, error = %error, "idempotency store failed; the handler did not run");
            let detail = "the idempotency store could not be reached, so the request was not processed; retry later";
            problem::response(
                &config.problems,
                Kind::StoreUnavailable,
                detail,
                Some(std::time::Duration::from_secs(1)),
            )
        }
        Error::InvalidOption { option, problem } => {
            event!(
                error,
                option,
                problem,
                "the layer's options are invalid; the handler did not run"
            );
            let detail = format!(
                "the idempotency layer's `{option}` {problem}, so the request was not processed; this is the server's configuration, not the request"
            );
            problem::response(&config.problems, Kind::Misconfigured, &detail, None)
        }
        other => {
            event!(error, error = %other, "idempotent request failed; the handler did not run");
            let _ = other;
            let detail =
                "the stored response for this key could not be read; the request was not processed";
            problem::response(
                &config.problems,
                Kind::StoredResponseUnreadable,
                detail,
                None,
            )
        }
    }
}

/// A stored response as the client gets it; a replay carries `Idempotent-Replayed: true`.
fn answer<B>(stored: &ResponseRecord, replayed: bool) -> Response<ResponseBody<B>> {
    let stored = &*stored.0;
    let mut response = Response::new(ResponseBody::full(stored.body.clone()));
    *response.status_mut() = stored.status;
    let headers = response.headers_mut();
    headers.reserve(stored.headers.len() + 1);
    for (name, value) in &stored.headers {
        headers.append(name.clone(), value.clone());
    }
    if replayed {
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// The stored key: the client's scope and the header's key, so equal keys of two clients
/// never meet. `None` is the one shared scope (`ClientScope::global`, or an anonymous request
/// under `share_anonymous`), written as the anonymous scope of 0.1 was.
fn key_digest(client: Option<ClientId>, key: &str) -> Digest {
    let mut hasher = Sha256::new();
    match client {
        Some(client) => {
            hasher.update([1]);
            hasher.update(client.digest().as_bytes());
        }
        None => hasher.update([0]),
    }
    hasher.update(key.as_bytes());
    Digest::from_bytes(hasher.finalize().into())
}

/// Method, path, query, the configured headers and the body, each length-prefixed.
fn fingerprint(config: &Config, parts: &http::request::Parts, body: &[u8]) -> Fingerprint {
    fn field(hasher: &mut Sha256, bytes: &[u8]) {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    let mut hasher = Sha256::new();
    field(&mut hasher, parts.method.as_str().as_bytes());
    field(&mut hasher, parts.uri.path().as_bytes());
    match parts.uri.query() {
        Some(query) => {
            hasher.update([1]);
            field(&mut hasher, query.as_bytes());
        }
        None => hasher.update([0]),
    }
    for name in &config.fingerprint_headers {
        let values = parts.headers.get_all(name);
        hasher.update((values.iter().count() as u64).to_le_bytes());
        for value in values {
            field(&mut hasher, value.as_bytes());
        }
    }
    // A JSON body by its canonical form (`fingerprint_json`), framed apart from raw bytes: a
    // raw body is one field, a canonical one a tag field and then itself.
    let canonical = (config.fingerprint_json && is_json(&parts.headers))
        .then(|| json::canonical(body))
        .flatten();
    match canonical {
        Some(canonical) => {
            field(&mut hasher, b"canonical json");
            field(&mut hasher, &canonical);
        }
        None => field(&mut hasher, body),
    }
    Fingerprint::from_bytes(hasher.finalize().into())
}

/// Whether the request says its body is JSON: `application/json`, or a `+json` type.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let essence = essence.to_ascii_lowercase();
    essence == "application/json"
        || essence
            .split_once('/')
            .is_some_and(|(_, subtype)| subtype.ends_with("+json"))
}
