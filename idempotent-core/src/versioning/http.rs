//! Optimistic versioning over HTTP: versions as `ETag`s, updates conditional on `If-Match`,
//! and a stale update answered with `412 Precondition Failed` (RFC 9110 §13.1.1), over the
//! [`http`] crate's types, so it fits axum, hyper or any tower service.
//!
//! A client reads a resource and gets its version as a strong entity tag (`ETag: "7"`); it
//! sends its update with `If-Match: "7"`. The server compares-and-sets against version 7
//! ([`Versioned::update`](super::Versioned::update), or the SQL helper): if someone else
//! updated the resource in between, the update changes nothing and the client gets `412`
//! with the current `ETag`, re-reads and retries.
//!
//! | request | answer |
//! |---|---|
//! | `If-Match: "7"` and version 7 is current | the update runs; answer with the new `ETag` |
//! | `If-Match: "7"`, the resource moved on to 8 | [`PreconditionError::Failed`]: `412`, `ETag: "8"` |
//! | `If-Match: W/"7"` or a tag this server never issued | `412` (`If-Match` compares strongly) |
//! | no `If-Match` on an update that requires it | [`PreconditionError::Missing`]: `428 Precondition Required` |
//! | `If-Match: *`, or several tags, where one version is needed | [`PreconditionError::NotOneVersion`]: `428` |
//! | an unparsable `If-Match` | [`PreconditionError::Malformed`]: `400` |
//!
//! Refusals are `application/problem+json` bodies (RFC 9457), like the HTTP layer's.
//!
//! ```
//! use http::{HeaderMap, StatusCode, header::{ETAG, IF_MATCH}};
//! use idempotent_core::versioning::Versioned;
//! use idempotent_core::versioning::http::{etag, expected_version, PreconditionError};
//!
//! let mut document = Versioned::new(String::from("draft"), 7);
//!
//! // A PUT handler: the version the client read, compare-and-set, the new ETag or a 412.
//! let put = |document: &mut Versioned<String>, headers: &HeaderMap, text: &str| {
//!     let expected = expected_version(headers)?;
//!     let version = document.replace(expected, text.to_owned())?;
//!     Ok::<_, PreconditionError>(etag(version))
//! };
//!
//! let mut headers = HeaderMap::new();
//! headers.insert(IF_MATCH, etag(7));
//! assert_eq!(put(&mut document, &headers, "final").unwrap(), "\"8\"");
//!
//! // A second client still holding version 7:
//! let refused = put(&mut document, &headers, "lost update").unwrap_err();
//! let response = refused.into_response();
//! assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
//! assert_eq!(response.headers()[ETAG], "\"8\"");
//! assert_eq!(document.value, "final");
//! ```

use ::http::header::{CONTENT_TYPE, ETAG, IF_MATCH};
use ::http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::VersionConflict;

const TYPE_BASE: &str =
    "https://docs.rs/idempotency/latest/idempotency/versioning/http/index.html#";

/// The strong entity tag of `version`: `"7"`, for the `ETag` response header and the
/// client's `If-Match`.
///
/// ```
/// assert_eq!(idempotent_core::versioning::http::etag(7), "\"7\"");
/// ```
pub fn etag(version: i64) -> HeaderValue {
    // Digits and quotes only: always a valid header value.
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

/// A request's `If-Match` precondition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `If-Match: *`: any current version.
    Any,
    /// The versions named by strong entity tags this crate issues; weak and foreign tags can
    /// never match under strong comparison, so they are left out (an empty list matches
    /// nothing).
    Versions(Vec<i64>),
}

impl IfMatch {
    /// Reads `If-Match` from `headers`: `None` when absent.
    ///
    /// ```
    /// use http::{HeaderMap, HeaderValue, header::IF_MATCH};
    /// use idempotent_core::versioning::http::IfMatch;
    ///
    /// let mut headers = HeaderMap::new();
    /// assert_eq!(IfMatch::from_headers(&headers).unwrap(), None);
    /// headers.insert(IF_MATCH, HeaderValue::from_static(r#""3", W/"4", "x""#));
    /// assert_eq!(IfMatch::from_headers(&headers).unwrap(), Some(IfMatch::Versions(vec![3])));
    /// headers.insert(IF_MATCH, HeaderValue::from_static("*"));
    /// assert_eq!(IfMatch::from_headers(&headers).unwrap(), Some(IfMatch::Any));
    /// ```
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<IfMatch>, PreconditionError> {
        let mut values = headers.get_all(IF_MATCH).iter().peekable();
        if values.peek().is_none() {
            return Ok(None);
        }
        let mut versions = Vec::new();
        let mut any = false;
        let mut tags = 0usize;
        for value in values {
            let text = value.to_str().map_err(|_| PreconditionError::Malformed)?;
            for item in text.split(',') {
                let item = item.trim_matches([' ', '\t']);
                if item.is_empty() {
                    continue; // RFC 9110 §5.6.1: empty list elements are ignored
                }
                tags += 1;
                if item == "*" {
                    any = true;
                    continue;
                }
                let (weak, tag) = match item.strip_prefix("W/") {
                    Some(rest) => (true, rest),
                    None => (false, item),
                };
                let opaque = tag
                    .strip_prefix('"')
                    .and_then(|rest| rest.strip_suffix('"'))
                    .filter(|opaque| !opaque.contains('"'))
                    .ok_or(PreconditionError::Malformed)?;
                if weak {
                    continue;
                }
                if let Some(version) = parse_version(opaque) {
                    versions.push(version);
                }
            }
        }
        match (any, tags) {
            (_, 0) => Err(PreconditionError::Malformed),
            (true, 1) => Ok(Some(IfMatch::Any)),
            (true, _) => Err(PreconditionError::Malformed), // `*` must stand alone
            (false, _) => Ok(Some(IfMatch::Versions(versions))),
        }
    }

    /// Whether the precondition holds for the resource's `current` version (`None`: the
    /// resource does not exist, which nothing matches, not even `*`).
    pub fn matches(&self, current: Option<i64>) -> bool {
        match (self, current) {
            (_, None) => false,
            (IfMatch::Any, Some(_)) => true,
            (IfMatch::Versions(versions), Some(current)) => versions.contains(&current),
        }
    }
}

/// Only canonical decimal versions are ours: `"07"` is a different tag from `"7"`.
fn parse_version(opaque: &str) -> Option<i64> {
    let version: i64 = opaque.parse().ok()?;
    (version.to_string() == opaque).then_some(version)
}

/// Evaluates `If-Match` for a resource whose `current` version is known (read before the
/// update, e.g. under a lock): `Ok` when there is no `If-Match` or it matches.
///
/// ```
/// use http::{HeaderMap, header::IF_MATCH};
/// use idempotent_core::versioning::http::{check_if_match, etag, PreconditionError};
///
/// let mut headers = HeaderMap::new();
/// assert!(check_if_match(&headers, Some(3)).is_ok()); // unconditional request
/// headers.insert(IF_MATCH, etag(3));
/// assert!(check_if_match(&headers, Some(3)).is_ok());
/// assert!(matches!(check_if_match(&headers, Some(4)), Err(PreconditionError::Failed { current: Some(4) })));
/// ```
pub fn check_if_match(headers: &HeaderMap, current: Option<i64>) -> Result<(), PreconditionError> {
    match IfMatch::from_headers(headers)? {
        None => Ok(()),
        Some(condition) if condition.matches(current) => Ok(()),
        Some(_) => Err(PreconditionError::Failed { current }),
    }
}

/// The one version an update was computed from, from `If-Match`, for a compare-and-set
/// ([`Versioned::update`](super::Versioned::update), the SQL helper's `update`). Updates
/// without it are refused with `428`, so a client cannot overwrite what it never read.
///
/// ```
/// use http::{HeaderMap, HeaderValue, header::IF_MATCH};
/// use idempotent_core::versioning::http::{expected_version, PreconditionError};
///
/// let mut headers = HeaderMap::new();
/// assert!(matches!(expected_version(&headers), Err(PreconditionError::Missing)));
/// headers.insert(IF_MATCH, HeaderValue::from_static("\"12\""));
/// assert_eq!(expected_version(&headers).unwrap(), 12);
/// headers.insert(IF_MATCH, HeaderValue::from_static("*"));
/// assert!(matches!(expected_version(&headers), Err(PreconditionError::NotOneVersion)));
/// ```
pub fn expected_version(headers: &HeaderMap) -> Result<i64, PreconditionError> {
    match IfMatch::from_headers(headers)? {
        None => Err(PreconditionError::Missing),
        Some(IfMatch::Any) => Err(PreconditionError::NotOneVersion),
        Some(IfMatch::Versions(versions)) => match versions.as_slice() {
            [version] => Ok(*version),
            // Only weak or foreign tags: none can match any version of ours.
            [] => Err(PreconditionError::Failed { current: None }),
            _ => Err(PreconditionError::NotOneVersion),
        },
    }
}

/// Why a conditional update is refused; [`into_response`](Self::into_response) gives the
/// HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PreconditionError {
    /// `412 Precondition Failed`: the version in `If-Match` is not current.
    #[error("the resource changed since it was read (`If-Match` does not match)")]
    Failed {
        /// The current version, sent back as the `ETag` (`None`: unknown, or no resource).
        current: Option<i64>,
    },
    /// `428 Precondition Required`: the update needs an `If-Match`.
    #[error("`If-Match` is required: send the `ETag` of the version the update is based on")]
    Missing,
    /// `428 Precondition Required`: `If-Match` names no single version (`*` or a list).
    #[error(
        "`If-Match` must name exactly one version: send the `ETag` of the version the update is based on"
    )]
    NotOneVersion,
    /// `400 Bad Request`: `If-Match` is not a list of entity tags.
    #[error("`If-Match` is not `*` or a list of quoted entity tags")]
    Malformed,
}

impl From<VersionConflict> for PreconditionError {
    fn from(conflict: VersionConflict) -> Self {
        PreconditionError::Failed {
            current: conflict.current,
        }
    }
}

impl PreconditionError {
    /// The status: `412`, `428` or `400`.
    pub fn status(&self) -> StatusCode {
        match self {
            PreconditionError::Failed { .. } => StatusCode::PRECONDITION_FAILED,
            PreconditionError::Missing | PreconditionError::NotOneVersion => {
                StatusCode::PRECONDITION_REQUIRED
            }
            PreconditionError::Malformed => StatusCode::BAD_REQUEST,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            PreconditionError::Failed { .. } => "precondition-failed",
            PreconditionError::Missing => "precondition-required",
            PreconditionError::NotOneVersion => "one-version-required",
            PreconditionError::Malformed => "malformed-if-match",
        }
    }

    /// The answer: the status, an `application/problem+json` body, and for `412` the current
    /// `ETag` so the client can tell what it missed.
    pub fn into_response(self) -> Response<String> {
        let status = self.status();
        let body = serde_json::json!({
            "type": format!("{TYPE_BASE}{}", self.slug()),
            "title": status.canonical_reason().unwrap_or("precondition"),
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        let mut response = Response::new(body.to_string());
        *response.status_mut() = status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let PreconditionError::Failed {
            current: Some(current),
        } = self
        {
            response.headers_mut().insert(ETAG, etag(current));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(IF_MATCH, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn if_match_parses_lists_across_lines_and_ignores_weak_and_foreign_tags() {
        let parsed = IfMatch::from_headers(&headers(&["\"1\", W/\"2\"", " \"3\" ,, \"abc\""]));
        assert_eq!(parsed, Ok(Some(IfMatch::Versions(vec![1, 3]))));
        assert_eq!(
            IfMatch::from_headers(&headers(&["\"07\""])),
            Ok(Some(IfMatch::Versions(vec![])))
        );
    }

    #[test]
    fn malformed_if_match_is_refused() {
        for bad in [
            "3",
            "\"3",
            "3\"",
            "\"a\"b\"",
            "*, \"3\"",
            "W/3",
            ",",
            "\"1\" \"2\"",
        ] {
            assert_eq!(
                IfMatch::from_headers(&headers(&[bad])),
                Err(PreconditionError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn nothing_matches_a_missing_resource() {
        assert!(!IfMatch::Any.matches(None));
        assert!(IfMatch::Any.matches(Some(1)));
        assert!(!IfMatch::Versions(vec![1]).matches(Some(2)));
    }

    #[test]
    fn statuses_and_bodies() {
        let failed = PreconditionError::Failed { current: Some(9) }.into_response();
        assert_eq!(failed.status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(failed.headers()[ETAG], "\"9\"");
        assert_eq!(failed.headers()[CONTENT_TYPE], "application/problem+json");
        let body: serde_json::Value = serde_json::from_str(failed.body()).unwrap_or_default();
        assert_eq!(body["status"], 412);
        assert_eq!(
            PreconditionError::Missing.into_response().status(),
            StatusCode::PRECONDITION_REQUIRED
        );
        assert_eq!(
            PreconditionError::Malformed.status(),
            StatusCode::BAD_REQUEST
        );
    }
}
