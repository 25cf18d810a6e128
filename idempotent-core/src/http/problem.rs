//! The layer's own answers: RFC 9457 `application/problem+json` bodies.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde::Serialize;

use super::body::ResponseBody;
use super::record::StoredResponse;

/// Where the problem types are described (the `http` module's docs, one heading per type).
const TYPE_BASE: &str = "https://docs.rs/idempotency/latest/idempotency/http/index.html#";

/// Every problem the layer answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    MissingKey,
    MalformedKey,
    BodyTooLarge,
    UnreadableBody,
    InProgress,
    KeyReused,
    StoreUnavailable,
    StoredResponseUnreadable,
    ResponseFailed,
    /// Stands in for a response too large to store: replayed with that response's status.
    ResponseTooLarge,
    UnidentifiedClient,
    ScopeFailed,
    Misconfigured,
}

impl Kind {
    /// The problem's own status (`response-too-large` takes the status of the response it
    /// stands in for: see [`stand_in`]).
    fn status(self) -> StatusCode {
        match self {
            Kind::MissingKey
            | Kind::MalformedKey
            | Kind::UnreadableBody
            | Kind::UnidentifiedClient => StatusCode::BAD_REQUEST,
            Kind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::InProgress => StatusCode::CONFLICT,
            Kind::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::StoredResponseUnreadable
            | Kind::ResponseFailed
            | Kind::ResponseTooLarge
            | Kind::ScopeFailed
            | Kind::Misconfigured => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Kind::MissingKey => "missing-key",
            Kind::MalformedKey => "malformed-key",
            Kind::BodyTooLarge => "body-too-large",
            Kind::UnreadableBody => "unreadable-body",
            Kind::InProgress => "in-progress",
            Kind::KeyReused => "key-reused",
            Kind::StoreUnavailable => "store-unavailable",
            Kind::StoredResponseUnreadable => "stored-response-unreadable",
            Kind::ResponseFailed => "response-failed",
            Kind::ResponseTooLarge => "response-too-large",
            Kind::UnidentifiedClient => "unidentified-client",
            Kind::ScopeFailed => "scope-failed",
            Kind::Misconfigured => "misconfigured",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Kind::MissingKey => "idempotency key missing",
            Kind::MalformedKey => "idempotency key malformed",
            Kind::BodyTooLarge => "request body too large",
            Kind::UnreadableBody => "request body unreadable",
            Kind::InProgress => "request with this idempotency key in progress",
            Kind::KeyReused => "idempotency key reused for another request",
            Kind::StoreUnavailable => "idempotency store unavailable",
            Kind::StoredResponseUnreadable => "stored response unreadable",
            Kind::ResponseFailed => "response failed",
            Kind::ResponseTooLarge => "response too large to replay",
            Kind::UnidentifiedClient => "client not identified",
            Kind::ScopeFailed => "client scope failed",
            Kind::Misconfigured => "idempotency layer misconfigured",
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

/// A problem response; `retry_after` adds a `Retry-After` header (whole seconds, at least 1).
pub(crate) fn response<B>(
    kind: Kind,
    detail: &str,
    retry_after: Option<Duration>,
) -> Response<ResponseBody<B>> {
    let status = kind.status();
    let mut response = Response::new(ResponseBody::full(body(kind, status, detail)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(wait) = retry_after {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    response
}

/// A problem stored in place of a response the handler gave but the layer cannot store, so
/// that a retry gets it instead of running the handler again: `response-failed` (its own
/// `500`), or `response-too-large` with `status`, the status of the response it stands in
/// for, and that response's `Location` (where the created resource can be read).
pub(crate) fn stand_in(
    kind: Kind,
    status: StatusCode,
    location: Option<&HeaderValue>,
    detail: &str,
) -> StoredResponse {
    let status = match kind {
        Kind::ResponseTooLarge => status,
        _ => kind.status(),
    };
    let mut headers = HeaderMap::with_capacity(2);
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(location) = location {
        headers.insert(LOCATION, location.clone());
    }
    StoredResponse {
        status,
        headers,
        body: body(kind, status, detail),
    }
}

fn body(kind: Kind, status: StatusCode, detail: &str) -> Bytes {
    let body = Body {
        kind: format!("{TYPE_BASE}{}", kind.slug()),
        title: kind.title(),
        status: status.as_u16(),
        detail,
    };
    // Serializing strings and a number into a Vec cannot fail.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}
