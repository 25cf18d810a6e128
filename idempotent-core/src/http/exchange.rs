//! One idempotent exchange, whichever server runs it: whose key it is, the body's limit, the
//! fingerprint, the call around the handler, and the layer's answer when the handler does not
//! run.
//!
//! The tower service (`service.rs`) and the actix-web middleware (`actix.rs`) each read the
//! request, run their handler and build their responses their own way; every decision is
//! taken here, once.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use sha2::{Digest as _, Sha256};

use super::config::Config;
use super::header::{parse_key, replayable};
use super::json;
use super::problem::{self, Kind, Problems};
use super::record::{ResponseRecord, StoredResponse};
use super::scope::{ClientId, Identity};
use crate::error::{Error, StoreOp};
use crate::key::{Digest, Fingerprint, Key};
use crate::trace::event;

/// The key this request is stored under (its client's scope and its header's key), or the
/// problem that refuses it before anything is read or claimed.
pub(crate) fn admit(config: &Config, parts: &Parts) -> Result<Digest, Box<StoredResponse>> {
    let header = &config.header;
    let key = match parse_key(&parts.headers, header, config.max_key_len) {
        Ok(Some(key)) => key,
        Ok(None) => {
            let detail = format!(
                "this endpoint requires an `{header}` header on `{}` requests",
                parts.method
            );
            return Err(Box::new(problem::response(
                &config.problems,
                Kind::MissingKey,
                &detail,
                None,
            )));
        }
        Err(problem) => {
            let detail = problem.detail(header);
            return Err(Box::new(problem::response(
                &config.problems,
                Kind::MalformedKey,
                &detail,
                None,
            )));
        }
    };
    let client = match config.scope.identity(parts) {
        Ok(Identity::Client(client)) => Some(client),
        Ok(Identity::Shared) => None,
        Ok(Identity::Unidentified) => {
            let detail = format!(
                "this request does not identify its client ({}), so it was not processed: send it with your credentials; a server that means to share one scope between unidentified clients builds its layer with `ClientScope::share_anonymous` or `ClientScope::global`",
                config.scope.lacking()
            );
            return Err(Box::new(problem::response(
                &config.problems,
                Kind::UnidentifiedClient,
                &detail,
                None,
            )));
        }
        Err(error) => {
            event!(error, error = %error, "the client scope failed; the handler did not run");
            let _ = error;
            let detail = "the client of this request could not be identified (its scope value failed to serialize), so the request was not processed";
            return Err(Box::new(problem::response(
                &config.problems,
                Kind::ScopeFailed,
                detail,
                None,
            )));
        }
    };
    Ok(key_digest(client, &key))
}

/// Whether the request's `Content-Length` is over the body limit: refused before reading.
pub(crate) fn declared_too_large(config: &Config, headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|length| length > config.max_body_bytes as u64)
}

/// `413`: the request body is over the limit; nothing was claimed or run.
pub(crate) fn body_too_large(config: &Config) -> StoredResponse {
    let detail = format!(
        "the request body is over the limit of {} bytes",
        config.max_body_bytes
    );
    problem::response(&config.problems, Kind::BodyTooLarge, &detail, None)
}

/// `400`: the request body failed before its end (the client went away).
pub(crate) fn body_unreadable(config: &Config) -> StoredResponse {
    let detail = "the request body could not be read to the end";
    problem::response(&config.problems, Kind::UnreadableBody, detail, None)
}

/// `500`: the server shut down while the handler ran; nothing was stored.
pub(crate) fn shut_down(problems: &Problems) -> StoredResponse {
    let detail = "the server shut down while the request was processed; retry with the same key";
    problem::response(problems, Kind::ResponseFailed, detail, None)
}

/// How much of a response body a server read, up to the response limit.
pub(crate) enum Read<'a> {
    /// The whole body, and its trailers (empty when none).
    Whole(&'a Bytes, &'a HeaderMap),
    /// Over the limit: the response goes to the client, a stand-in to the store.
    OverLimit,
    /// The body failed: there is no response to send.
    Failed,
}

/// What the store keeps for a handler's response with a stored status: the response, or the
/// problem standing in for one too large to store or whose body failed.
pub(crate) fn record(
    config: &Config,
    status: StatusCode,
    headers: &HeaderMap,
    read: Read<'_>,
) -> ResponseRecord {
    let limit = config.response_limit();
    let problems = &config.problems;
    match read {
        Read::Whole(body, trailers) => {
            let stored = ResponseRecord(Arc::new(StoredResponse {
                status,
                headers: replayable(headers),
                body: body.clone(),
                trailers: replayable(trailers),
            }));
            if stored.fits(limit) {
                stored
            } else {
                too_large(problems, status, headers, limit)
            }
        }
        Read::OverLimit => too_large(problems, status, headers, limit),
        Read::Failed => ResponseRecord(Arc::new(problem::stand_in(
            problems,
            Kind::ResponseFailed,
            status,
            None,
            "the request was processed, but its response failed before the end, so it cannot be sent or replayed; do not send it again under a new key",
        ))),
    }
}

/// The status a response is stored by (see `StoredStatuses`): its own; under gRPC, the HTTP
/// status of the `grpc-status` in its headers (a trailers-only response), or `None` when that
/// is in the trailers, still to be read.
pub(crate) fn status_to_store(
    config: &Config,
    status: StatusCode,
    headers: &HeaderMap,
) -> Option<StatusCode> {
    if config.grpc_methods.is_none() {
        return Some(status);
    }
    headers
        .contains_key(GRPC_STATUS)
        .then(|| grpc_status(headers))
}

const GRPC_STATUS: &str = "grpc-status";

/// The HTTP status of the `grpc-status` in `fields`, as gRPC maps its codes (`CANCELLED` as
/// `408`, so it is not stored by default); none, or one that is not a code, is `UNKNOWN` (500).
pub(crate) fn grpc_status(fields: &HeaderMap) -> StatusCode {
    let code = fields
        .get(GRPC_STATUS)
        .and_then(|value| value.to_str().ok()?.trim().parse::<u8>().ok());
    let http = match code {
        Some(0) => 200,
        Some(1) => 408,
        Some(3 | 9 | 11) => 400,
        Some(4) => 504,
        Some(5) => 404,
        Some(6 | 10) => 409,
        Some(7) => 403,
        Some(8) => 429,
        Some(12) => 501,
        Some(14) => 503,
        Some(16) => 401,
        _ => 500,
    };
    StatusCode::from_u16(http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
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

/// How a run of the handler ended other than with a stored response.
pub(crate) enum Failure<R, E> {
    Idempotency(Error),
    /// The server's handler failed: its error is passed on.
    Service(E),
    /// A response whose status is not stored: passed on as is, the claim released.
    Unstored(R),
}

impl<R, E> From<Error> for Failure<R, E> {
    fn from(error: Error) -> Self {
        Failure::Idempotency(error)
    }
}

/// What the client gets: `R` is the server's own response type.
pub(crate) enum Answer<R> {
    /// The handler's response: it ran in this call (stored, or not stored when its status is
    /// not, or when the store failed to record it).
    Handled(R),
    /// The stored response of an earlier call, replayed.
    Replayed(ResponseRecord),
    /// The layer's problem: the handler did not run.
    Refused(Box<StoredResponse>),
}

/// Claims the key, runs `handler` once, stores the record it returns beside the response for
/// this client, and answers; a retry gets the stored record.
pub(crate) async fn exchange<R, E, H, Fut>(
    config: &Config,
    key_digest: Digest,
    fingerprint: Fingerprint,
    handler: H,
) -> Result<Answer<R>, E>
where
    H: FnOnce() -> Fut,
    Fut: Future<Output = Result<(ResponseRecord, R), Failure<R, E>>>,
{
    let key = Key::new(config.namespace.clone(), config.version, key_digest);
    let call = config
        .idempotency
        .call(key, fingerprint)
        .options(config.options);
    // The response for the client when the handler ran in this call; the record goes to the
    // store.
    let mut first: Option<R> = None;
    let slot = &mut first;
    let outcome: Result<ResponseRecord, Failure<R, E>> = call
        .run(|| async move {
            let (stored, response) = handler().await?;
            *slot = Some(response);
            Ok(stored)
        })
        .await;
    match (outcome, first) {
        (Ok(_), Some(response)) => Ok(Answer::Handled(response)),
        (Ok(stored), None) => Ok(Answer::Replayed(stored)),
        (Err(Failure::Unstored(response)), _) => Ok(Answer::Handled(response)),
        (Err(Failure::Service(error)), _) => Err(error),
        // The handler ran but its response could not be stored (store failure on `complete`,
        // lease lost): the client still gets it.
        (Err(Failure::Idempotency(error)), Some(response)) => {
            event!(warn, error = %error, "the response was sent but not stored");
            let _ = error;
            Ok(Answer::Handled(response))
        }
        (Err(Failure::Idempotency(error)), None) => {
            Ok(Answer::Refused(Box::new(refusal(config, error))))
        }
    }
}

/// The layer's answer when the handler did not run.
fn refusal(config: &Config, error: Error) -> StoredResponse {
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
pub(crate) fn fingerprint(config: &Config, parts: &Parts, body: &[u8]) -> Fingerprint {
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
