//! The layer as actix-web middleware: `App::new().wrap(IdempotencyLayer::new(…))`.
//!
//! The same options, decisions and problems as the tower service (they are taken in
//! `exchange.rs`); only reading the request, running the handler and building responses are
//! actix-web's own here. actix-web speaks `http` 0.2, the layer `http` 1: method, path, query
//! and headers are copied across by their bytes.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::error::InternalError;
use actix_web::{Error as ActixError, HttpMessage as _, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use http::request::Parts;
use pin_project_lite::pin_project;

use super::config::Config;
use super::exchange::{self, Answer, Failure, Read};
use super::layer::IdempotencyLayer;
use super::record::StoredResponse;
use crate::key::{Digest, Fingerprint};

/// The body of a response that passed through [`IdempotencyMiddleware`]: the handler's own
/// (left), or one the middleware built (right): a replay, a problem, a response it read.
pub type ActixBody<B> = EitherBody<B, BoxBody>;

/// [`IdempotencyLayer`] as actix-web middleware (feature `actix`): `App::wrap`,
/// `Scope::wrap` or `Resource::wrap` it, with the same options and answers as the tower layer.
///
/// ```
/// use actix_web::{App, HttpResponse, web};
/// use idempotent_core::http::{ClientScope, IdempotencyLayer};
/// use idempotent_core::{Idempotency, MemoryStore};
///
/// let layer = IdempotencyLayer::new(Idempotency::new(MemoryStore::new()))
///     .require_key(true)
///     .scope(ClientScope::header(http::header::AUTHORIZATION));
/// let app = App::new()
///     .wrap(layer)
///     .route("/orders", web::post().to(|| async { HttpResponse::Created().body("order 1") }));
/// # let _ = app;
/// ```
///
/// The handler runs in a task of its own on the worker's thread (`actix_web::rt::spawn`), so
/// a client that disconnects does not cancel it: it finishes and its response is stored for
/// the retry. Its request body was read whole (up to `max_body_bytes`) before and is given to
/// it again, so extractors (`web::Json`, `Bytes`) read it as usual.
///
/// [`ClientScope::header`](super::ClientScope::header), `cookie`, `global` and `from_fn` see
/// the request as under tower (`from_fn` gets its method, URI and headers); the request's
/// extensions are actix-web's own, so [`ClientScope::extension`](super::ClientScope::extension)
/// finds nothing there and every request is refused as `unidentified-client`: identify clients
/// by a header or cookie, or with `from_fn`.
impl<S, B> Transform<S, ServiceRequest> for IdempotencyLayer
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = ActixError> + 'static,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<ActixBody<B>>;
    type Error = ActixError;
    type Transform = IdempotencyMiddleware<S>;
    type InitError = ();
    type Future = std::future::Ready<Result<IdempotencyMiddleware<S>, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        std::future::ready(Ok(IdempotencyMiddleware {
            service: Rc::new(service),
            config: Arc::clone(self.config()),
        }))
    }
}

/// The service [`IdempotencyLayer`] wraps around an actix-web service.
pub struct IdempotencyMiddleware<S> {
    service: Rc<S>,
    config: Arc<Config>,
}

impl<S> std::fmt::Debug for IdempotencyMiddleware<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyMiddleware")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

type Managed<B> = Pin<Box<dyn Future<Output = Result<ServiceResponse<ActixBody<B>>, ActixError>>>>;

pin_project! {
    /// The future of [`IdempotencyMiddleware`]: the inner service's own for requests the layer
    /// lets through, a boxed one for those it makes idempotent.
    pub struct ActixFuture<F, B> {
        #[pin]
        kind: FutureKind<F, B>,
    }
}

pin_project! {
    #[project = FutureKindProj]
    enum FutureKind<F, B> {
        Through { #[pin] future: F },
        Managed { future: Managed<B> },
    }
}

impl<F, B> std::fmt::Debug for ActixFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            FutureKind::Through { .. } => "ActixFuture::Through",
            FutureKind::Managed { .. } => "ActixFuture::Managed",
        })
    }
}

impl<F, B> Future for ActixFuture<F, B>
where
    F: Future<Output = Result<ServiceResponse<B>, ActixError>>,
{
    type Output = Result<ServiceResponse<ActixBody<B>>, ActixError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            FutureKindProj::Through { future } => {
                future.poll(cx).map_ok(ServiceResponse::map_into_left_body)
            }
            FutureKindProj::Managed { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S, B> Service<ServiceRequest> for IdempotencyMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = ActixError> + 'static,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<ActixBody<B>>;
    type Error = ActixError;
    type Future = ActixFuture<S::Future, B>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let config = &self.config;
        let applies = http::Method::from_bytes(request.method().as_str().as_bytes())
            .is_ok_and(|method| config.applies_to(&method, request.path()));
        if !applies
            || (!config.require_key && !request.headers().contains_key(config.header.as_str()))
        {
            return ActixFuture {
                kind: FutureKind::Through {
                    future: self.service.call(request),
                },
            };
        }
        ActixFuture {
            kind: FutureKind::Managed {
                future: Box::pin(handle(
                    Arc::clone(config),
                    Rc::clone(&self.service),
                    request,
                )),
            },
        }
    }
}

async fn handle<S, B>(
    config: Arc<Config>,
    service: Rc<S>,
    mut request: ServiceRequest,
) -> Result<ServiceResponse<ActixBody<B>>, ActixError>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = ActixError> + 'static,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    // The layer's answer when nothing is claimed or run.
    let refuse = |request: ServiceRequest, problem: &StoredResponse| {
        Ok(request.into_response(render(problem, false).map_into_right_body()))
    };
    let parts = parts_of(&request);
    let key_digest = match exchange::admit(&config, &parts) {
        Ok(digest) => digest,
        Err(problem) => return refuse(request, &problem),
    };
    if exchange::declared_too_large(&config, &parts.headers) {
        return refuse(request, &exchange::body_too_large(&config));
    }
    // Read in the request's own future: a client that goes away before its body is sent has
    // nothing claimed and nothing run.
    let body = match read_payload(request.take_payload(), config.max_body_bytes).await {
        Ok(body) => body,
        Err(BodyProblem::TooLarge) => return refuse(request, &exchange::body_too_large(&config)),
        Err(BodyProblem::Unreadable) => {
            return refuse(request, &exchange::body_unreadable(&config));
        }
    };
    let fingerprint = exchange::fingerprint(&config, &parts, &body);
    request.set_payload(Payload::from(body));
    let problems = config.problems.clone();
    let run = execute(config, service, key_digest, fingerprint, request);
    #[cfg(feature = "tracing")]
    let run = tracing::Instrument::in_current_span(run);
    // The claim, the handler and the storing of its response run in a task of their own on
    // this worker: a client that disconnects drops this future, not the handler. A call that
    // ends without waiting (a replay from an in-process store, a handler that never waits)
    // ends in its first poll, here, and needs no task: a task costs this worker about as much
    // as the rest of a replay. Polled once, it is moved to its task only when it must wait, and
    // that task's first poll hands every resource it waits on the task's waker.
    let mut run = Box::pin(run);
    if let Poll::Ready(response) =
        std::future::poll_fn(|cx| Poll::Ready(run.as_mut().poll(cx))).await
    {
        return response;
    }
    match actix_web::rt::spawn(run).await {
        Ok(response) => response,
        Err(error) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // The worker is shutting down.
            Err(_) => {
                let problem = exchange::shut_down(&problems);
                Err(InternalError::from_response("shut down", render(&problem, false)).into())
            }
        },
    }
}

/// Claims the key, runs the handler once, stores its response (or a problem standing in for
/// it) and answers.
async fn execute<S, B>(
    config: Arc<Config>,
    service: Rc<S>,
    key_digest: Digest,
    fingerprint: Fingerprint,
    request: ServiceRequest,
) -> Result<ServiceResponse<ActixBody<B>>, ActixError>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = ActixError> + 'static,
    S::Future: 'static,
    B: MessageBody + 'static,
{
    // The request stays here until the handler takes it: an answer that does not run the
    // handler is built from it. (No clone of its `HttpRequest` is kept while the handler runs:
    // actix-web's router needs the only one.)
    let mut unused = Some(request);
    let slot = &mut unused;
    let settings = &*config;
    let handler = || async move {
        let Some(request) = slot.take() else {
            unreachable!("the handler runs once")
        };
        let response = service.call(request).await.map_err(Failure::Service)?;
        let status = http_status(response.status());
        if !settings.stored.stores(status) {
            return Err(Failure::Unstored(response.map_into_left_body()));
        }
        // From here the handler ran and answered with a status that is stored: whatever
        // happens to its body, the key records something, so a retry never runs it again.
        let (request, response) = response.into_parts();
        let (head, body) = response.into_parts();
        let headers = http_headers(head.headers());
        Ok(match collect(body, settings.response_limit()).await {
            Collected::Whole(bytes) => {
                let read = Read::Whole(&bytes, &http::HeaderMap::new());
                let stored = exchange::record(settings, status, &headers, read);
                let response = head.set_body(BoxBody::new(bytes)).map_into_right_body();
                (stored, ServiceResponse::new(request, response))
            }
            Collected::OverLimit(prefix, rest, size) => {
                let stored = exchange::record(settings, status, &headers, Read::OverLimit);
                let body = BoxBody::new(Prefixed {
                    prefix: Some(prefix),
                    rest,
                    size,
                });
                let response = head.set_body(body).map_into_right_body();
                (stored, ServiceResponse::new(request, response))
            }
            Collected::Failed => {
                let stored = exchange::record(settings, status, &headers, Read::Failed);
                let response = render(&stored.0, false).map_into_right_body();
                (stored, ServiceResponse::new(request, response))
            }
        })
    };
    let answer = exchange::exchange(settings, key_digest, fingerprint, handler).await?;
    let response = match answer {
        Answer::Handled(response) => return Ok(response),
        Answer::Replayed(stored) => render(&stored.0, true),
        Answer::Refused(problem) => render(&problem, false),
    };
    match unused {
        Some(request) => Ok(request.into_response(response.map_into_right_body())),
        None => Err(InternalError::from_response("no request", response).into()),
    }
}

/// A stored response, or the layer's problem, as the client gets it; a replay carries
/// `Idempotent-Replayed: true`.
fn render(stored: &StoredResponse, replayed: bool) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(stored.status.as_u16())
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::with_body(status, BoxBody::new(stored.body.clone()));
    let headers = response.headers_mut();
    for (name, value) in &stored.headers {
        if let (Ok(name), Ok(value)) = (
            actix_web::http::header::HeaderName::from_bytes(name.as_str().as_bytes()),
            actix_web::http::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(name, value);
        }
    }
    if replayed {
        headers.insert(
            actix_web::http::header::HeaderName::from_static("idempotent-replayed"),
            actix_web::http::header::HeaderValue::from_static("true"),
        );
    }
    response
}

/// The request's method, path, query and headers as `http` 1 parts, for the key, the scope
/// and the fingerprint.
fn parts_of(request: &ServiceRequest) -> Parts {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    if let Ok(method) = http::Method::from_bytes(request.method().as_str().as_bytes()) {
        parts.method = method;
    }
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", |target| target.as_str());
    if let Ok(uri) = http::Uri::try_from(target) {
        parts.uri = uri;
    }
    parts.headers = http_headers(request.headers());
    parts
}

fn http_headers(headers: &actix_web::http::header::HeaderMap) -> http::HeaderMap {
    let mut converted = http::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_str().as_bytes()),
            http::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            converted.append(name, value);
        }
    }
    converted
}

fn http_status(status: actix_web::http::StatusCode) -> http::StatusCode {
    http::StatusCode::from_u16(status.as_u16()).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR)
}

enum BodyProblem {
    TooLarge,
    Unreadable,
}

/// The request body, whole, up to `limit` bytes.
async fn read_payload(mut payload: Payload, limit: usize) -> Result<Bytes, BodyProblem> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| BodyProblem::Unreadable)?;
        if body.len().saturating_add(chunk.len()) > limit {
            return Err(BodyProblem::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A response body read up to the response limit.
enum Collected<B> {
    Whole(Bytes),
    /// Over the limit: what was read, the rest, still to be sent, and the whole body's size.
    OverLimit(Bytes, Pin<Box<B>>, BodySize),
    Failed,
}

async fn collect<B: MessageBody>(body: B, limit: usize) -> Collected<B> {
    let body = match body.try_into_bytes() {
        Ok(bytes) => return Collected::Whole(bytes),
        Err(body) => body,
    };
    let size = body.size();
    let mut body = Box::pin(body);
    let mut read = BytesMut::new();
    loop {
        if read.len() > limit {
            return Collected::OverLimit(read.freeze(), body, size);
        }
        match std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await {
            None => return Collected::Whole(read.freeze()),
            Some(Err(_)) => return Collected::Failed,
            Some(Ok(chunk)) => read.extend_from_slice(&chunk),
        }
    }
}

/// What was read of a response too large to store, then the rest of it.
struct Prefixed<B> {
    prefix: Option<Bytes>,
    rest: Pin<Box<B>>,
    /// The whole body's size, as it was before any of it was read.
    size: BodySize,
}

impl<B: MessageBody> MessageBody for Prefixed<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.size
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(prefix)));
        }
        self.rest.as_mut().poll_next(cx)
    }
}
