//! Whose key is it: keys are scoped per client, so one client never sees another's responses.

use std::fmt;
use std::sync::Arc;

use http::HeaderName;
use http::request::Parts;
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
/// A request whose client cannot be identified (no such header, no such extension) is in the
/// *anonymous* scope, shared by every unidentified request. Put the layer after your
/// authentication so that only anonymous endpoints are anonymous.
///
/// ```
/// use http::header::AUTHORIZATION;
/// use idempotent_core::http::{ClientId, ClientScope};
///
/// // The credential itself (the default): each API key has its own key space.
/// let by_credential = ClientScope::header(AUTHORIZATION);
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
/// # let _ = (by_credential, by_subject, by_tenant);
/// ```
#[derive(Clone)]
pub struct ClientScope(Kind);

#[derive(Clone)]
enum Kind {
    Global,
    Header(HeaderName),
    Custom(Arc<Extract>),
}

impl ClientScope {
    /// Clients are told apart by the value(s) of header `name`: `Authorization` (the default)
    /// or an API-key header. The credential is hashed, never stored.
    ///
    /// With `Authorization`, a client whose token changes (an OAuth token refreshed between
    /// two tries) gets a new key space; scope by the token's subject with
    /// [`extension`](Self::extension) or [`from_fn`](Self::from_fn) if that can happen.
    pub fn header(name: HeaderName) -> ClientScope {
        ClientScope(Kind::Header(name))
    }

    /// Clients are told apart by the request extension of type `T` (an authenticated user or
    /// tenant that your authentication middleware inserted), hashed canonically.
    ///
    /// A request without the extension is in the anonymous scope. A request whose value fails
    /// to serialize is refused (`500` [scope-failed](super#scope-failed), the handler does
    /// not run): it is never put in the anonymous scope, where another client could replay
    /// its response.
    pub fn extension<T>() -> ClientScope
    where
        T: Serialize + Send + Sync + 'static,
    {
        ClientScope(Kind::Custom(Arc::new(|request: &Parts| {
            match request.extensions.get::<T>() {
                Some(value) => ClientId::of(value).map(Some),
                None => Ok(None),
            }
        })))
    }

    /// Clients are told apart by `extract`; `None` puts the request in the anonymous scope.
    pub fn from_fn<F>(extract: F) -> ClientScope
    where
        F: Fn(&Parts) -> Option<ClientId> + Send + Sync + 'static,
    {
        ClientScope(Kind::Custom(Arc::new(move |request: &Parts| {
            Ok(extract(request))
        })))
    }

    /// Every request is in one scope: for a service with a single client (or one that already
    /// puts the client into the key). Any client that learns a key can replay its response.
    pub fn global() -> ClientScope {
        ClientScope(Kind::Global)
    }

    /// The request's client: `None` for the anonymous scope, `Err` when it cannot be told.
    pub(crate) fn client(&self, request: &Parts) -> Result<Option<ClientId>, CanonicalError> {
        match &self.0 {
            Kind::Global => Ok(None),
            Kind::Header(name) => {
                let mut values = request.headers.get_all(name).iter().peekable();
                if values.peek().is_none() {
                    return Ok(None);
                }
                let mut hasher = Sha256::new();
                for value in values {
                    hasher.update((value.len() as u64).to_le_bytes());
                    hasher.update(value.as_bytes());
                }
                Ok(Some(ClientId(Digest::from_bytes(hasher.finalize().into()))))
            }
            Kind::Custom(extract) => extract(request),
        }
    }
}

impl Default for ClientScope {
    /// By the `Authorization` header.
    fn default() -> Self {
        ClientScope::header(http::header::AUTHORIZATION)
    }
}

impl fmt::Debug for ClientScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Global => f.write_str("ClientScope::Global"),
            Kind::Header(name) => write!(f, "ClientScope::Header({name})"),
            Kind::Custom(_) => f.write_str("ClientScope::Custom(..)"),
        }
    }
}
