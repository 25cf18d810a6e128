//! The service: read the key and the body, claim, run the handler once, store, replay.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::{Collected, RequestBody, ResponseBody, collect_up_to};
use super::config::{Config, IDEMPOTENT_REPLAYED};
use super::exchange::{self, Answer, Failure, Read};
use super::record::StoredResponse;
use crate::error::BoxError;
use crate::key::{Digest, Fingerprint};

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
        if !config.applies_to(request.method(), request.uri().path())
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
    let key_digest = match exchange::admit(&config, &parts) {
        Ok(digest) => digest,
        Err(problem) => return Ok(answer(&problem, false)),
    };
    if exchange::declared_too_large(&config, &parts.headers) {
        return Ok(answer(&exchange::body_too_large(&config), false));
    }
    // Read in the request's own future: a client that goes away before its body is sent has
    // nothing claimed and nothing run.
    let body = match Limited::new(body, config.max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => {
            return Ok(answer(&exchange::body_too_large(&config), false));
        }
        Err(_) => return Ok(answer(&exchange::body_unreadable(&config), false)),
    };

    let fingerprint = exchange::fingerprint(&config, &parts, &body);
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
                Err(_) => Ok(answer(&exchange::shut_down(&problems), false)),
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
    let stored_statuses = config.stored;
    let limit = config.response_limit();
    let settings = &*config;
    // The handler's own response for the client (its own headers, streamed if too large to
    // store), and its replayable part, or the problem standing in for it, for the store.
    let handler = || async move {
        let response = inner.call(request).await.map_err(Failure::Service)?;
        let (parts, body) = response.into_parts();
        // The status that decides whether the response is stored: known now, or (gRPC) only
        // from the trailers after the body.
        let known = exchange::status_to_store(settings, parts.status, &parts.headers);
        if let Some(status) = known
            && !stored_statuses.stores(status)
        {
            return Err(Failure::Unstored(Response::from_parts(
                parts,
                ResponseBody::stream(body),
            )));
        }
        // From here the handler ran and answered with a status that is stored: whatever
        // happens to its body, the key records something, so a retry never runs it again.
        Ok(match collect_up_to(body, limit).await {
            Collected::Whole(bytes, trailers) => {
                let response = |parts, bytes, trailers| {
                    Response::from_parts(parts, ResponseBody::full_with(bytes, Some(trailers)))
                };
                if known.is_none() && !stored_statuses.stores(exchange::grpc_status(&trailers)) {
                    return Err(Failure::Unstored(response(parts, bytes, trailers)));
                }
                let read = Read::Whole(&bytes, &trailers);
                let stored = exchange::record(settings, parts.status, &parts.headers, read);
                (stored, response(parts, bytes, trailers))
            }
            Collected::OverLimit(read, rest) => (
                exchange::record(settings, parts.status, &parts.headers, Read::OverLimit),
                Response::from_parts(parts, ResponseBody::prefixed(read, rest)),
            ),
            Collected::Failed(_) => {
                let stored = exchange::record(settings, parts.status, &parts.headers, Read::Failed);
                let response = answer(&stored.0, false);
                (stored, response)
            }
        })
    };
    Ok(
        match exchange::exchange(&config, key_digest, fingerprint, handler).await? {
            Answer::Handled(response) => response,
            Answer::Replayed(stored) => answer(&stored.0, true),
            Answer::Refused(problem) => answer(&problem, false),
        },
    )
}

/// A stored response, or the layer's problem, as the client gets it; a replay carries
/// `Idempotent-Replayed: true`.
fn answer<B>(stored: &StoredResponse, replayed: bool) -> Response<ResponseBody<B>> {
    let trailers = (!stored.trailers.is_empty()).then(|| stored.trailers.clone());
    let mut response = Response::new(ResponseBody::full_with(stored.body.clone(), trailers));
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
