//! Whose key is it: keys are scoped per client, so one client never sees another's responses.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::header::COOKIE;
use http::request::Parts;
use http::{HeaderMap, HeaderName};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::canonical::CanonicalError;
use crate::key::Digest;

/// Who sent a request, as a digest: the layer derives each stored key from the client and the
/// `Idempotency-Key`, so two clients sending the same key never share a record.
///
/// ```
/// use idempotent_core::http::ClientId;
///
/// let alice = ClientId::from_bytes("api-key-alice");
/// assert_ne!(alice, ClientId::from_bytes("api-key-bob"));
/// assert_eq!(ClientId::of(&("tenant", 7)).unwrap(), ClientId::of(&("tenant", 7u8)).unwrap());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(Digest);

impl ClientId {
    /// The SHA-256 of `bytes` (an API key, a subject claim); the bytes themselves are not kept.
    pub fn from_bytes(bytes: impl AsRef<[u8]>) -> ClientId {
        ClientId(Digest::of_bytes(bytes.as_ref()))
    }

    /// The digest of `value`'s canonical encoding (a user id, a `(tenant, user)` pair).
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<ClientId, CanonicalError> {
        Digest::of(value).map(ClientId)
    }

    /// The digest.
    pub fn digest(&self) -> &Digest {
        &self.0
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({})", self.0.hex().as_str())
    }
}

type Extract = dyn Fn(&Parts) -> Result<Option<ClientId>, CanonicalError> + Send + Sync;

/// How the layer tells clients apart (see [`IdempotencyLayer::scope`](super::IdempotencyLayer::scope)).
///
/// A request whose client the scope cannot identify (no such header, cookie or extension) is
/// refused: `400` [unidentified-client](super#unidentified-client), and the handler does not
/// run. Its response is never put where another client could replay it. Sharing one scope is a
/// choice you write down: [`global`](Self::global) (every request shares one scope) or
/// [`share_anonymous`](Self::share_anonymous) (identified clients apart, the others together).
/// Put the layer after your authentication, so that the scope sees what it found.
///
/// A client whose credential changes between two tries (a rotated session cookie, a refreshed
/// OAuth token, a new API key) is a new client: its retry does not find the first response and
/// the handler runs again. If your credentials rotate, scope by what stays (the user or the
/// tenant that your authentication found) with [`extension`](Self::extension) or
/// [`from_fn`](Self::from_fn).
///
/// ```
/// use http::header::AUTHORIZATION;
/// use idempotent_core::http::{ClientId, ClientScope};
///
/// // The credential itself (the default): each API key has its own key space.
/// let by_credential = ClientScope::header(AUTHORIZATION);
///
/// // The session cookie of an app that authenticates by cookie.
/// let by_session = ClientScope::cookie("session");
///
/// // What your authentication put in the request's extensions.
/// #[derive(Clone, serde::Serialize)]
/// struct Subject(String);
/// let by_subject = ClientScope::extension::<Subject>();
///
/// // Anything else.
/// let by_tenant = ClientScope::from_fn(|request| {
///     request.headers.get("x-tenant").map(|tenant| ClientId::from_bytes(tenant.as_bytes()))
/// });
///
/// // Logged-in users apart; visitors without a session share one scope, on purpose.
/// let visitors_together = ClientScope::cookie("session").share_anonymous();
/// # let _ = (by_credential, by_session, by_subject, by_tenant, visitors_together);
/// ```
#[derive(Clone)]
pub struct ClientScope {
    kind: Kind,
    /// Whether requests whose client is not identified share one scope (else they are refused).
    share_anonymous: bool,
}

#[derive(Clone)]
enum Kind {
    Global,
    Header(HeaderName),
    Cookie(Cow<'static, str>),
    Custom(Arc<Extract>),
}

/// Whose scope a request is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Identity {
    /// A client of its own.
    Client(ClientId),
    /// The one scope shared on purpose: [`ClientScope::global`], or an anonymous request under
    /// [`ClientScope::share_anonymous`].
    Shared,
    /// Nobody the scope can tell: the request is refused.
    Unidentified,
}

impl ClientScope {
    fn of(kind: Kind) -> ClientScope {
        ClientScope {
            kind,
            share_anonymous: false,
        }
    }

    /// Clients are told apart by the value(s) of header `name`: `Authorization` (the default)
    /// or an API-key header. The credential is hashed, never stored. A request without the
    /// header, or with only empty values, is not identified.
    ///
    /// With `Authorization`, a client whose token changes (an OAuth token refreshed between
    /// two tries) gets a new key space; scope by the token's subject with
    /// [`extension`](Self::extension) or [`from_fn`](Self::from_fn) if that can happen.
    pub fn header(name: HeaderName) -> ClientScope {
        ClientScope::of(Kind::Header(name))
    }

    /// Clients are told apart by the cookie `name` (a session id), for apps that authenticate
    /// by cookie. The value is hashed, never stored.
    ///
    /// The cookie is looked for in every `Cookie` header (HTTP/2 may split them) and every
    /// `name=value` pair; the name matches exactly (cookie names are case-sensitive). A value
    /// in double quotes is the same client as the bare value. Several cookies with that name
    /// (set for different paths) are all part of the client. A request without the cookie,
    /// or with an empty value (a session cleared at logout), is not identified.
    ///
    /// A session id that rotates between two tries (at login, at a change of privileges, on
    /// renewal) starts a new scope: the retry runs the handler again. If your sessions rotate
    /// while requests may be retried, scope by the session's user with
    /// [`extension`](Self::extension).
    pub fn cookie(name: impl Into<Cow<'static, str>>) -> ClientScope {
        ClientScope::of(Kind::Cookie(name.into()))
    }

    /// Clients are told apart by the request extension of type `T` (an authenticated user or
    /// tenant that your authentication middleware inserted), hashed canonically.
    ///
    /// A request without the extension is not identified. A request whose value fails to
    /// serialize is refused (`500` [scope-failed](super#scope-failed), the handler does not
    /// run): it is never put in a scope another client could replay its response from.
    pub fn extension<T>() -> ClientScope
    where
        T: Serialize + Send + Sync + 'static,
    {
        ClientScope::of(Kind::Custom(Arc::new(|request: &Parts| {
            match request.extensions.get::<T>() {
                Some(value) => ClientId::of(value).map(Some),
                None => Ok(None),
            }
        })))
    }

    /// Clients are told apart by `extract`; `None` means the request is not identified.
    pub fn from_fn<F>(extract: F) -> ClientScope
    where
        F: Fn(&Parts) -> Option<ClientId> + Send + Sync + 'static,
    {
        ClientScope::of(Kind::Custom(Arc::new(move |request: &Parts| {
            Ok(extract(request))
        })))
    }

    /// Every request is in one scope: for a service with a single client (or one that already
    /// puts the client into the key). Any client that learns a key can replay its response,
    /// `Set-Cookie` and all.
    pub fn global() -> ClientScope {
        ClientScope::of(Kind::Global)
    }

    /// Requests whose client this scope cannot identify share one scope, instead of being
    /// refused; identified clients stay apart.
    ///
    /// For endpoints that serve anonymous visitors, where a response holds nothing private: any
    /// anonymous client that sends the same key and request gets the first one's response,
    /// headers (`Set-Cookie` too) and body, and its own request does not run.
    pub fn share_anonymous(mut self) -> ClientScope {
        self.share_anonymous = true;
        self
    }

    /// The request's scope; `Err` when the client's value cannot be encoded.
    pub(crate) fn identity(&self, request: &Parts) -> Result<Identity, CanonicalError> {
        let client = match &self.kind {
            Kind::Global => return Ok(Identity::Shared),
            Kind::Header(name) => digest_of(
                request
                    .headers
                    .get_all(name)
                    .iter()
                    .map(|value| value.as_bytes()),
            ),
            Kind::Cookie(name) => digest_of(cookies(&request.headers, name)),
            Kind::Custom(extract) => extract(request)?,
        };
        Ok(match client {
            Some(client) => Identity::Client(client),
            None if self.share_anonymous => Identity::Shared,
            None => Identity::Unidentified,
        })
    }

    /// What an unidentified request lacks, for the client: names a header or a cookie, never a
    /// type of the server's.
    pub(crate) fn lacking(&self) -> Cow<'static, str> {
        match &self.kind {
            Kind::Header(name) => format!("no `{name}` header").into(),
            Kind::Cookie(name) => format!("no `{name}` cookie").into(),
            Kind::Global | Kind::Custom(_) => {
                "none of the credentials this service identifies clients by".into()
            }
        }
    }
}

/// The digest of the non-empty `values`, each length-prefixed, in order; `None` when there is
/// none.
fn digest_of<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<ClientId> {
    let mut values = values.filter(|value| !value.is_empty()).peekable();
    values.peek()?;
    let mut hasher = Sha256::new();
    for value in values {
        hasher.update((value.len() as u64).to_le_bytes());
        hasher.update(value);
    }
    Some(ClientId(Digest::from_bytes(hasher.finalize().into())))
}

/// The values of the cookies named `name`, in the order sent, over every `Cookie` header
/// (`a=1; b=2`), without surrounding whitespace or double quotes.
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|header| header.as_bytes().split(|&byte| byte == b';'))
        .filter_map(move |pair| {
            let equals = pair.iter().position(|&byte| byte == b'=')?;
            let (pair_name, value) = pair.split_at(equals);
            (trim(pair_name) == name.as_bytes()).then(|| unquote(trim(&value[1..])))
        })
}

fn trim(bytes: &[u8]) -> &[u8] {
    let is_space = |byte: &u8| *byte == b' ' || *byte == b'\t';
    let start = bytes
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |end| end + 1);
    &bytes[start..end]
}

fn unquote(value: &[u8]) -> &[u8] {
    match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    }
}

impl Default for ClientScope {
    /// By the `Authorization` header; a request without one is refused.
    fn default() -> Self {
        ClientScope::header(http::header::AUTHORIZATION)
    }
}

impl fmt::Debug for ClientScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Global => f.write_str("ClientScope::Global")?,
            Kind::Header(name) => write!(f, "ClientScope::Header({name})")?,
            Kind::Cookie(name) => write!(f, "ClientScope::Cookie({name})")?,
            Kind::Custom(_) => f.write_str("ClientScope::Custom(..)")?,
        }
        if self.share_anonymous {
            f.write_str(".share_anonymous()")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, Request};

    use super::*;

    fn parts(headers: &[(&str, &[u8])]) -> Parts {
        let mut request = Request::post("/orders");
        for (name, value) in headers {
            request = request.header(*name, HeaderValue::from_bytes(value).unwrap());
        }
        request.body(()).unwrap().into_parts().0
    }

    fn identity(scope: &ClientScope, headers: &[(&str, &[u8])]) -> Identity {
        scope.identity(&parts(headers)).unwrap()
    }

    fn client(scope: &ClientScope, headers: &[(&str, &[u8])]) -> ClientId {
        match identity(scope, headers) {
            Identity::Client(client) => client,
            other => panic!("{other:?} for {headers:?}"),
        }
    }

    #[test]
    fn a_cookie_is_found_in_any_header_and_any_pair() {
        let scope = ClientScope::cookie("session");
        let alone = client(&scope, &[("cookie", b"session=abc")]);
        for headers in [
            &[("cookie", &b"theme=dark; session=abc"[..])][..],
            &[("cookie", b"session=abc; theme=dark")],
            &[("cookie", b"theme=dark;session=abc ;lang=en")],
            &[("cookie", b"theme=dark"), ("cookie", b"session=abc")],
            &[("cookie", b"session=\"abc\"")],
            &[(
                "cookie",
                b"session2=xyz; SESSION=xyz; session=abc; xsession=xyz",
            )],
        ] {
            assert_eq!(client(&scope, headers), alone, "{headers:?}");
        }
        assert_ne!(client(&scope, &[("cookie", b"session=abd")]), alone);
        // The value is hashed, and a cookie is not a header of the same value.
        assert_ne!(alone.digest().hex().as_str(), "abc");
    }

    #[test]
    fn every_cookie_of_that_name_is_part_of_the_client() {
        let scope = ClientScope::cookie("session");
        let both = client(&scope, &[("cookie", b"session=a; session=b")]);
        assert_eq!(
            client(
                &scope,
                &[("cookie", b"session=a"), ("cookie", b"session=b")]
            ),
            both
        );
        assert_ne!(client(&scope, &[("cookie", b"session=a")]), both);
        assert_ne!(client(&scope, &[("cookie", b"session=ab")]), both);
    }

    #[test]
    fn no_cookie_or_an_empty_one_is_unidentified() {
        let scope = ClientScope::cookie("session");
        for headers in [
            &[][..],
            &[("cookie", &b"theme=dark"[..])],
            &[("cookie", b"session=")],
            &[("cookie", b"session=\"\"")],
            &[("cookie", b"session")],
            &[("cookie", b"Session=abc; sessions=abc")],
            &[("authorization", b"Bearer abc")],
        ] {
            assert_eq!(
                identity(&scope, headers),
                Identity::Unidentified,
                "{headers:?}"
            );
        }
        let shared = scope.share_anonymous();
        assert_eq!(identity(&shared, &[]), Identity::Shared);
        assert!(matches!(
            identity(&shared, &[("cookie", b"session=abc")]),
            Identity::Client(_)
        ));
    }

    #[test]
    fn a_missing_or_empty_header_is_unidentified_unless_shared() {
        let scope = ClientScope::default();
        assert_eq!(identity(&scope, &[]), Identity::Unidentified);
        assert_eq!(
            identity(&scope, &[("authorization", b"")]),
            Identity::Unidentified
        );
        let alice = client(&scope, &[("authorization", b"Bearer alice")]);
        assert_ne!(client(&scope, &[("authorization", b"Bearer bob")]), alice);
        assert_eq!(
            identity(&scope.clone().share_anonymous(), &[]),
            Identity::Shared
        );
        let global = ClientScope::global();
        assert_eq!(identity(&global, &[]), Identity::Shared);
        assert_eq!(
            identity(&global, &[("authorization", b"Bearer alice")]),
            Identity::Shared
        );
    }

    #[test]
    fn extractors_that_find_nobody_are_unidentified() {
        #[derive(Clone, serde::Serialize)]
        struct Subject(&'static str);
        let extension = ClientScope::extension::<Subject>();
        assert_eq!(identity(&extension, &[]), Identity::Unidentified);
        let mut request = parts(&[]);
        request.extensions.insert(Subject("ann"));
        assert!(matches!(
            extension.identity(&request),
            Ok(Identity::Client(_))
        ));
        let nobody = ClientScope::from_fn(|_| None);
        assert_eq!(identity(&nobody, &[]), Identity::Unidentified);
        assert_eq!(identity(&nobody.share_anonymous(), &[]), Identity::Shared);
    }

    #[test]
    fn what_an_unidentified_request_lacks_names_no_server_type() {
        assert_eq!(
            ClientScope::default().lacking(),
            "no `authorization` header"
        );
        assert_eq!(ClientScope::cookie("sid").lacking(), "no `sid` cookie");
        #[derive(serde::Serialize)]
        struct Tenant;
        let lacking = ClientScope::extension::<Tenant>().lacking();
        assert!(!lacking.contains("Tenant"), "{lacking}");
        assert_eq!(
            format!("{:?}", ClientScope::cookie("sid").share_anonymous()),
            "ClientScope::Cookie(sid).share_anonymous()"
        );
    }
}
