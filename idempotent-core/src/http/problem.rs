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
}

impl Default for Problems {
    fn default() -> Self {
        Problems {
            base: Arc::from(PROBLEM_TYPE_BASE),
            link: false,
        }
    }
}

impl Problems {
    /// Problem types under `base` (checked: it goes into JSON and a `Link` header).
    pub(crate) fn under(base: &str, link: bool) -> Result<Problems, Error> {
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
    let status = kind.status();
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(wait) = retry_after {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    if let Some(link) = problems.link(kind) {
        headers.insert(LINK, link);
    }
    StoredResponse {
        status,
        headers,
        body: body(problems, kind, status, detail),
    }
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
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(location) = location {
        headers.insert(LOCATION, location.clone());
    }
    if let Some(link) = problems.link(kind) {
        headers.insert(LINK, link);
    }
    StoredResponse {
        status,
        headers,
        body: body(problems, kind, status, detail),
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
