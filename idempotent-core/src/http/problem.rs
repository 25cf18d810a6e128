//! The layer's own answers: RFC 9457 `application/problem+json` bodies.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, LINK, LOCATION, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Serialize;

use super::record::StoredResponse;
use crate::error::Error;

/// Where the problem types are described by default (the `http` module's docs, one heading
/// per type): a problem's `type` is this followed by its name, such as `key-reused`.
pub const PROBLEM_TYPE_BASE: &str =
    "https://docs.rs/idempotency/latest/idempotency/http/index.html#";

/// The longest base URI of problem types, in bytes.
const MAX_BASE: usize = 2048;

/// Where a layer's problem types are described, and whether its answers link there.
#[derive(Debug, Clone)]
pub(crate) struct Problems {
    base: Arc<str>,
    pub(crate) link: bool,
    /// Answer as gRPC does: a status and message in a trailers-only response.
    pub(crate) grpc: bool,
}

impl Default for Problems {
    fn default() -> Self {
        Problems {
            base: Arc::from(PROBLEM_TYPE_BASE),
            link: false,
            grpc: false,
        }
    }
}

impl Problems {
    /// Problem types under `base` (checked: it goes into JSON and a `Link` header).
    pub(crate) fn under(base: &str, link: bool, grpc: bool) -> Result<Problems, Error> {
        let invalid = |problem| Error::InvalidOption {
            option: "problem_types",
            problem,
        };
        if base.is_empty() || base.len() > MAX_BASE {
            return Err(invalid("must be a URI of 1 to 2048 bytes"));
        }
        let allowed = |byte: u8| byte.is_ascii_graphic() && !b"<>\"\\^`{|}".contains(&byte);
        if !base.bytes().all(allowed) {
            return Err(invalid(
                "must be a URI: visible ASCII, no spaces, quotes, `<`, `>`, `\\`, `^`, `` ` ``, `{`, `|` or `}` (percent-encode them)",
            ));
        }
        Ok(Problems {
            base: Arc::from(base),
            link,
            grpc,
        })
    }

    fn type_uri(&self, kind: Kind) -> String {
        format!("{}{}", self.base, kind.slug())
    }

    /// The `Link` header to the description of `kind`, when asked for.
    fn link(&self, kind: Kind) -> Option<HeaderValue> {
        if !self.link {
            return None;
        }
        let link = format!("<{}>; rel=\"describedby\"", self.type_uri(kind));
        // The base was checked when it was set: the value is valid.
        HeaderValue::from_str(&link).ok()
    }
}

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

    /// The gRPC status code of the problem, for a layer in gRPC mode.
    fn grpc_code(self) -> u8 {
        match self {
            Kind::MissingKey
            | Kind::MalformedKey
            | Kind::UnreadableBody
            | Kind::UnidentifiedClient => 3, // INVALID_ARGUMENT
            Kind::BodyTooLarge => 8,      // RESOURCE_EXHAUSTED
            Kind::KeyReused => 6,         // ALREADY_EXISTS
            Kind::ResponseTooLarge => 9,  // FAILED_PRECONDITION: do not send it again
            Kind::InProgress => 10,       // ABORTED: retry with the same key
            Kind::StoreUnavailable => 14, // UNAVAILABLE
            Kind::StoredResponseUnreadable
            | Kind::ResponseFailed
            | Kind::ScopeFailed
            | Kind::Misconfigured => 13, // INTERNAL
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
pub(crate) fn response(
    problems: &Problems,
    kind: Kind,
    detail: &str,
    retry_after: Option<Duration>,
) -> StoredResponse {
    let mut answer = problem(problems, kind, kind.status(), detail);
    if let Some(wait) = retry_after {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        answer
            .headers
            .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    answer
}

/// A problem stored in place of a response the handler gave but the layer cannot store, so
/// that a retry gets it instead of running the handler again: `response-failed` (its own
/// `500`), or `response-too-large` with `status`, the status of the response it stands in
/// for, and that response's `Location` (where the created resource can be read).
pub(crate) fn stand_in(
    problems: &Problems,
    kind: Kind,
    status: StatusCode,
    location: Option<&HeaderValue>,
    detail: &str,
) -> StoredResponse {
    let status = match kind {
        Kind::ResponseTooLarge => status,
        _ => kind.status(),
    };
    let mut answer = problem(problems, kind, status, detail);
    if !problems.grpc
        && let Some(location) = location
    {
        answer.headers.insert(LOCATION, location.clone());
    }
    answer
}

/// The problem `kind` with `status`: an RFC 9457 body with its `Link` when asked for, or in
/// gRPC mode a gRPC status.
fn problem(problems: &Problems, kind: Kind, status: StatusCode, detail: &str) -> StoredResponse {
    if problems.grpc {
        return grpc(problems, kind, detail);
    }
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(link) = problems.link(kind) {
        headers.insert(LINK, link);
    }
    StoredResponse {
        status,
        headers,
        body: body(problems, kind, status, detail),
        trailers: HeaderMap::new(),
    }
}

fn body(problems: &Problems, kind: Kind, status: StatusCode, detail: &str) -> Bytes {
    let body = Body {
        kind: problems.type_uri(kind),
        title: kind.title(),
        status: status.as_u16(),
        detail,
    };
    // Serializing strings and a number into a Vec cannot fail.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// The header naming a problem's type in a gRPC answer, beside `grpc-status`.
const GRPC_PROBLEM: &str = "idempotency-problem";

/// A problem as gRPC answers: `200` with no body and the status in the headers (a
/// trailers-only response): `grpc-status`, `grpc-message` (the detail, percent-encoded) and
/// `idempotency-problem` (the problem's type URI).
fn grpc(problems: &Problems, kind: Kind, detail: &str) -> StoredResponse {
    let mut headers = HeaderMap::with_capacity(5);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(
        "grpc-status",
        HeaderValue::from(u16::from(kind.grpc_code())),
    );
    if let Ok(message) = HeaderValue::from_str(&grpc_message(detail)) {
        headers.insert("grpc-message", message);
    }
    // The base was checked when it was set: the value is valid.
    if let Ok(uri) = HeaderValue::from_str(&problems.type_uri(kind)) {
        headers.insert(GRPC_PROBLEM, uri);
    }
    StoredResponse {
        status: StatusCode::OK,
        headers,
        body: Bytes::new(),
        trailers: HeaderMap::new(),
    }
}

/// `grpc-message` as the gRPC protocol writes it: UTF-8, with `%` and every byte outside
/// printable ASCII percent-encoded.
fn grpc_message(detail: &str) -> String {
    use std::fmt::Write as _;
    let mut encoded = String::with_capacity(detail.len());
    for byte in detail.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_percent_encoded_as_grpc_writes_them() {
        assert_eq!(grpc_message("plain text, 100"), "plain text, 100");
        assert_eq!(grpc_message("50% off"), "50%25 off");
        assert_eq!(grpc_message("caf\u{e9}\n"), "caf%C3%A9%0A");
    }

    #[test]
    fn a_grpc_problem_is_a_trailers_only_status() {
        let problems = Problems::under(PROBLEM_TYPE_BASE, false, true).expect("a base");
        let answer = response(
            &problems,
            Kind::InProgress,
            "still running",
            Some(Duration::from_millis(1500)),
        );
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.body.is_empty());
        assert_eq!(answer.headers["content-type"], "application/grpc");
        assert_eq!(answer.headers["grpc-status"], "10");
        assert_eq!(answer.headers["grpc-message"], "still running");
        assert_eq!(answer.headers["retry-after"], "2");
        assert!(
            answer.headers["idempotency-problem"]
                .to_str()
                .expect("ASCII")
                .ends_with("#in-progress")
        );
        let stand_in = stand_in(
            &problems,
            Kind::ResponseTooLarge,
            StatusCode::OK,
            None,
            "too large",
        );
        assert_eq!(stand_in.headers["grpc-status"], "9");
    }
}
