//! HTTP: an `Idempotency-Key` [tower layer](IdempotencyLayer) for axum and any tower service
//! over [`http`] types, with the semantics of the IETF draft
//! *The Idempotency-Key HTTP Header Field*.
//!
//! A client sends a unique key with a `POST` (or `PATCH`); the handler runs once for that key,
//! its response is stored, and every retry with the same key and the same request gets that
//! response back, marked `Idempotent-Replayed: true`.
//!
//! ```
//! use axum::{Router, routing::post, http::{Request, StatusCode}, body::Body};
//! use idempotent_core::http::IdempotencyLayer;
//! use idempotent_core::{Idempotency, MemoryStore};
//! use tower::ServiceExt as _;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let orders = Router::new()
//!     .route("/orders", post(|| async { (StatusCode::CREATED, "order 1") }))
//!     .layer(IdempotencyLayer::new(Idempotency::new(MemoryStore::new())).require_key(true));
//!
//! let order = || {
//!     Request::post("/orders")
//!         .header("authorization", "Bearer alice") // the client: keys are kept per client
//!         .header("idempotency-key", "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"")
//!         .body(Body::from(r#"{"item":"book"}"#))
//!         .unwrap()
//! };
//! let first = orders.clone().oneshot(order()).await.unwrap();
//! assert_eq!(first.status(), StatusCode::CREATED);
//! let retry = orders.clone().oneshot(order()).await.unwrap();
//! assert_eq!(retry.status(), StatusCode::CREATED);
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//!
//! let keyless = Request::post("/orders").body(Body::empty()).unwrap();
//! assert_eq!(orders.clone().oneshot(keyless).await.unwrap().status(), StatusCode::BAD_REQUEST);
//!
//! // No `Authorization`: the client is not identified, so the request is refused.
//! let mut anonymous = order();
//! anonymous.headers_mut().remove("authorization");
//! assert_eq!(orders.oneshot(anonymous).await.unwrap().status(), StatusCode::BAD_REQUEST);
//! # }
//! ```
//!
//! # What a request gets
//!
//! | request | response |
//! |---|---|
//! | method not covered (`GET`, …), or no key and `require_key(false)` | the handler's, untouched |
//! | no key, `require_key(true)` | `400` [missing-key](#missing-key) |
//! | key empty, over 255 characters, not printable ASCII, repeated, bad quoting | `400` [malformed-key](#malformed-key) |
//! | the [`ClientScope`] cannot identify the client (no `Authorization` header by default; no such cookie or extension) | `400` [unidentified-client](#unidentified-client); the handler does **not** run. With [`ClientScope::share_anonymous`] or [`ClientScope::global`], the one scope shared on purpose instead |
//! | body over `max_body_bytes` | `413` [body-too-large](#body-too-large), nothing stored |
//! | first request with this key | the handler's response; stored if its status is (see [`StoredStatuses`]) |
//! | the client goes away (disconnects, times out) while the handler runs | nothing to the client; the handler finishes and its response is stored |
//! | same key and request, first finished | the stored status, headers and body, plus `Idempotent-Replayed: true` |
//! | same key and request, first's response too large to store | the first's status with a [response-too-large](#response-too-large) problem, `Idempotent-Replayed: true`; the handler does not run again |
//! | same key and request, first still running | `409` [in-progress](#in-progress) with `Retry-After`; with [`InProgressPolicy::Wait`](crate::InProgressPolicy::Wait) the replay once the first finishes |
//! | same key, another method, path, query, body or fingerprinted header | `422` [key-reused](#key-reused) |
//! | the store cannot be reached | `503` [store-unavailable](#store-unavailable); the handler does **not** run |
//! | the [`ClientScope`] cannot tell the client (its value fails to serialize) | `500` [scope-failed](#scope-failed); the handler does **not** run |
//!
//! The key is accepted in the draft's structured-field string form (`Idempotency-Key:
//! "8e03…"`) and in the bare form most clients send (`Idempotency-Key: 8e03…`): both name the
//! same key. Keys are scoped per client ([`ClientScope`], by default the `Authorization`
//! header), so one client can never replay another's response, whatever key it sends. A
//! request whose client cannot be identified is refused rather than put in a scope that
//! other clients share; sharing one is written down ([`ClientScope::share_anonymous`],
//! [`ClientScope::global`]). Apps that authenticate by cookie scope by it
//! ([`ClientScope::cookie`]). A client whose credential rotates between two tries is a new
//! client: its retry runs the handler again.
//!
//! A response is not stored when its status is `5xx`, `408`, `409`, `425` or `429` (the
//! default; [`StoredStatuses`] changes it): the claim is released and a retry runs the handler
//! again.
//!
//! A handler whose response has a stored status never runs again because that response could
//! not be stored. The response's record (status, headers and body, bytes as they are, in the
//! executor's [output encoding](crate::output)) is measured against
//! [`max_response_bytes`](IdempotencyLayer::max_response_bytes) (1 MiB by default), or the
//! executor's limit when lower: the layer asks the executor up front
//! ([`Idempotency::max_output_bytes`](crate::Idempotency::max_output_bytes): the lower of its
//! own and its store's [`Store::max_output_bytes`](crate::Store::max_output_bytes)), so what it
//! decides to store fits. A larger response is sent
//! to the first client whole (streamed as it comes), and a small
//! [response-too-large](#response-too-large) problem is stored in its place; a response whose
//! body fails while the layer reads it is answered and stored as
//! [response-failed](#response-failed). Either way the handler ran: a retry gets the problem,
//! not a second run. If the handler ran but the store then failed to record its response, the
//! client still gets that response (and the key stays claimed until its lease passes).
//!
//! # The handler runs in its own task
//!
//! The claim, the handler and the storing of its response run in a task of their own
//! (`tokio::spawn`), which the request's future awaits. A client that disconnects or times
//! out drops the request's future, not that task: the handler runs to its end, its response is
//! stored, and the client's retry with the same key gets `409` while it runs and the replay
//! after. The request body is read before, in the request's future: a client that goes away
//! while sending it has nothing claimed and nothing run. Requests the layer lets through run
//! in the request's future, as without the layer.
//!
//! This asks of the inner service what axum's handlers and `tower::service_fn` with an
//! `async` block already give: `Send + 'static` futures, bodies and errors (the bounds of
//! [`IdempotencyService`]'s `Service` impl). Task-local values of the request's task are not
//! seen by the handler (the current `tracing` span is carried over with the `tracing`
//! feature), and a panicking handler's panic resumes in the request's future as before.
//! Outside a Tokio runtime the call runs in the request's future.
//!
//! Replays carry the stored headers except hop-by-hop ones, `Date` and `Content-Length`
//! (recomputed). Response trailers are stored and replayed after the body (gRPC's status is
//! one). Header values and bodies are stored byte
//! for byte, text or binary alike, in the executor's [output encoding](crate::output).
//!
//! The fingerprint is SHA-256 over the method, path, query, the headers named in
//! [`IdempotencyLayer::fingerprint_headers`] and the body, each length-prefixed; the request
//! body is read in full (up to `max_body_bytes`) before the handler runs.
//!
//! # actix-web
//!
//! With the `actix` feature the same [`IdempotencyLayer`] is actix-web middleware
//! (`App::new().wrap(layer)`, `IdempotencyMiddleware`): the same options, answers and
//! problems, decided by the same code. The handler's call continues in a task of its own on the
//! worker (`actix_web::rt::spawn`) when it has to wait, so a client that hangs up does not cancel
//! it; [`ClientScope::extension`] cannot see actix-web's request extensions.
//!
//! # gRPC (tonic)
//!
//! [`IdempotencyLayer::grpc`] puts the layer in gRPC mode for a tonic server
//! (`Server::builder().layer(layer)`): the unary methods it names are covered, every other call
//! passes through; the key is the `idempotency-key` metadata; responses are stored and replayed
//! with their trailers (`grpc-status`, `grpc-message`, trailing metadata), stored or not by their
//! `grpc-status`; refusals are gRPC statuses (`ALREADY_EXISTS`, `ABORTED`,
//! `INVALID_ARGUMENT`, `UNAVAILABLE`…) carrying the problem's detail and type.
//!
//! # Problems
//!
//! Every refusal is an RFC 9457 `application/problem+json` body with `type` (a link to the
//! heading below, or to the service's own documentation:
//! [`problem_types`](IdempotencyLayer::problem_types); with
//! [`link_problem_types`](IdempotencyLayer::link_problem_types), also as a
//! `Link: <…>; rel="describedby"` header), `title`, `status` and `detail`:
//!
//! ```json
//! {"type":"https://docs.rs/idempotency/latest/idempotency/http/index.html#key-reused",
//!  "title":"idempotency key reused for another request","status":422,
//!  "detail":"this `idempotency-key` was used for a request with another method, path, query, body or fingerprinted header; use a new key for a new request"}
//! ```
//!
//! ### missing-key
//! `400`: the endpoint requires a key and the request has none. Send one.
//!
//! ### malformed-key
//! `400`: the key is empty, too long, not printable ASCII, sent in several headers, or a
//! quoted string that is not a valid structured-field string.
//!
//! ### body-too-large
//! `413`: the request body is over the layer's `max_body_bytes`. Nothing was run or stored.
//!
//! ### unreadable-body
//! `400`: the request body failed before its end (the client went away).
//!
//! ### in-progress
//! `409`, with `Retry-After`: a request with this key is still being processed. Retry later
//! with the same key.
//!
//! ### key-reused
//! `422`: the key was used for a different request. Use a new key for a new request.
//!
//! ### store-unavailable
//! `503`, with `Retry-After`: the store could not be reached, so the request was not
//! processed (the layer fails closed). Retry with the same key.
//!
//! ### stored-response-unreadable
//! `500`: the stored record for this key could not be decoded (written by something else, or
//! damaged). The handler did not run.
//!
//! ### response-failed
//! `500`: the handler ran, but its response body failed while the layer read it, so there is
//! no response to send. This problem is stored in the response's place: a retry with the key
//! gets it again (`Idempotent-Replayed: true`) and the handler does not run again. Do not send
//! the request again under a new key: it was processed. (Also, not stored, when the server
//! shuts down while the handler runs: retry with the same key.)
//!
//! ### response-too-large
//! The handler ran and its response was sent to the first client, but its record was over
//! `max_response_bytes` (or over the store's limit), so it was not stored. This problem is
//! stored in its place and replayed to every retry with the key, with the **first response's
//! status** (a `201` stays a `201`: the request succeeded) and its `Location` header, if it
//! had one; the handler does not run again. Do not send the request again under a new key:
//! read the result another way (its `Location`), or raise the limits.
//!
//! ### unidentified-client
//! `400`: the request does not identify its client the way the layer's [`ClientScope`] looks
//! for it (by default an `Authorization` header; or the configured header, cookie or request
//! extension), so it was not processed: keys are kept per client, and the layer puts no
//! request where another client could replay its response. The handler did not run. Send the
//! request with your credentials. A server that means to share one scope between clients it
//! cannot tell apart says so: [`ClientScope::share_anonymous`] or [`ClientScope::global`].
//!
//! ### scope-failed
//! `500`: the layer's [`ClientScope`] could not identify the client (with
//! [`ClientScope::extension`], the extension's value failed to serialize), so the request was
//! not processed: it is never put in a shared scope instead. The handler did not run.
//!
//! ### misconfigured
//! `500`: the layer's own options are invalid (a zero [`ttl`](IdempotencyLayer::ttl) or
//! [`lease`](IdempotencyLayer::lease)), so no request is processed. The handler did not run;
//! fix the server's configuration.

#[cfg(feature = "actix")]
mod actix;
mod body;
mod config;
mod exchange;
mod header;
mod json;
mod layer;
mod problem;
mod record;
mod scope;
mod service;

#[cfg(feature = "actix")]
pub use actix::{ActixBody, ActixFuture, IdempotencyMiddleware};
pub use body::{RequestBody, ResponseBody};
pub use config::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, StoredStatuses};
pub use layer::IdempotencyLayer;
pub use problem::PROBLEM_TYPE_BASE;
pub use scope::{ClientId, ClientScope};
pub use service::{IdempotencyService, ResponseFuture};
