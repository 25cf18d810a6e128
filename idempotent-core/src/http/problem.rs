//! The layer's own answers: RFC 9457 `application/problem+json` bodies.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use serde::Serialize;

use super::body::ResponseBody;

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
}

impl Kind {
    fn status(self) -> StatusCode {
        match self {
            Kind::MissingKey | Kind::MalformedKey | Kind::UnreadableBody => StatusCode::BAD_REQUEST,
            Kind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::InProgress => StatusCode::CONFLICT,
            Kind::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::StoredResponseUnreadable | Kind::ResponseFailed => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
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
    let body = Body {
        kind: format!("{TYPE_BASE}{}", kind.slug()),
        title: kind.title(),
        status: status.as_u16(),
        detail,
    };
    // Serializing strings and a number into a Vec cannot fail.
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = Response::new(ResponseBody::full(Bytes::from(bytes)));
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
