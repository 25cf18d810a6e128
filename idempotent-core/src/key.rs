//! Keys name a call; fingerprints name its inputs.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::canonical::{self, CanonicalError};

/// A SHA-256 digest of a canonical encoding.
///
/// ```
/// use idempotent_core::Digest;
///
/// let a = Digest::of(&("order-42", 1999u64)).unwrap();
/// let b = Digest::of(&("order-42", 1999u32)).unwrap(); // integer width does not matter
/// assert_eq!(a, b);
/// assert_eq!(a.to_string().len(), 64);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    /// SHA-256 of the canonical encoding of `value` (see the crate docs for what is canonical).
    ///
    /// Fails only when the value's own `Serialize` impl reports an error.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Digest, CanonicalError> {
        canonical::digest(value).map(Digest)
    }

    /// SHA-256 of raw bytes (no canonical encoding): for material that already is bytes, such
    /// as an HTTP body.
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// Wraps 32 bytes that already are a digest.
    pub const fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    /// The digest's bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 64 hex digits.
    pub fn from_hex(hex_digits: &str) -> Option<Digest> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut bytes).ok()?;
        Some(Digest(bytes))
    }

    /// Lowercase hex into a fixed buffer, without allocating.
    pub fn hex(&self) -> HexDigest {
        let mut out = [0u8; 64];
        // Cannot fail: the buffer is exactly twice the input.
        let _ = hex::encode_to_slice(self.0, &mut out);
        HexDigest(out)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.hex().as_str())
    }
}

/// The 64 lowercase hex digits of a [`Digest`], on the stack.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexDigest([u8; 64]);

impl HexDigest {
    /// The hex digits.
    pub fn as_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for HexDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Streams several values into one digest, as the tuple of those values.
///
/// This is how `#[idempotent]` hashes a call's arguments without collecting them into a tuple
/// first: `DigestBuilder` fed `a` then `b` gives the same digest as `Digest::of(&(a, b))`.
///
/// ```
/// use idempotent_core::{Digest, DigestBuilder};
///
/// let mut builder = DigestBuilder::new();
/// builder.push(&"order-42");
/// builder.push(&1999u64);
/// assert_eq!(builder.finish().unwrap(), Digest::of(&("order-42", 1999u64)).unwrap());
/// ```
#[derive(Clone)]
pub struct DigestBuilder {
    sink: canonical::Sink,
    error: Option<CanonicalError>,
}

impl DigestBuilder {
    /// An empty tuple.
    #[inline]
    pub fn new() -> DigestBuilder {
        let mut sink = canonical::Sink::new();
        canonical::begin_tuple(&mut sink);
        DigestBuilder { sink, error: None }
    }

    /// Appends one value. The first error a value's `Serialize` impl reports is kept and
    /// returned by [`finish`](Self::finish).
    pub fn push<T: Serialize + ?Sized>(&mut self, value: &T) {
        if self.error.is_none()
            && let Err(error) = canonical::hash_into(&mut self.sink, value)
        {
            self.error = Some(error);
        }
    }

    /// The digest of the tuple of every pushed value.
    #[inline]
    pub fn finish(mut self) -> Result<Digest, CanonicalError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        canonical::end_tuple(&mut self.sink);
        Ok(Digest(self.sink.finalize()))
    }
}

impl Default for DigestBuilder {
    fn default() -> Self {
        DigestBuilder::new()
    }
}

impl fmt::Debug for DigestBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestBuilder")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// The fingerprint of a call's inputs: a stored record whose fingerprint differs from a call's
/// is a key reused for another request, never a replay.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(Digest);

impl Fingerprint {
    /// Fingerprint of `value`'s canonical encoding.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Result<Fingerprint, CanonicalError> {
        Digest::of(value).map(Fingerprint)
    }

    /// Wraps a digest.
    pub const fn from_digest(digest: Digest) -> Fingerprint {
        Fingerprint(digest)
    }

    /// Wraps 32 bytes (as read back from a store).
    pub const fn from_bytes(bytes: [u8; 32]) -> Fingerprint {
        Fingerprint(Digest(bytes))
    }

    /// The digest.
    pub const fn digest(&self) -> &Digest {
        &self.0
    }

    /// The 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }
}

impl From<Digest> for Fingerprint {
    fn from(digest: Digest) -> Self {
        Fingerprint(digest)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.0.hex().as_str())
    }
}

/// The namespace part of a key: a function's path by default, or a fixed `name = "…"`.
#[derive(Clone)]
pub struct Namespace(NamespaceRepr);

#[derive(Clone)]
enum NamespaceRepr {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Namespace {
    /// A namespace from a string literal (no allocation).
    pub const fn from_static(name: &'static str) -> Namespace {
        Namespace(NamespaceRepr::Static(name))
    }

    /// The namespace text.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            NamespaceRepr::Static(name) => name,
            NamespaceRepr::Shared(name) => name,
        }
    }
}

impl From<&'static str> for Namespace {
    fn from(name: &'static str) -> Self {
        Namespace::from_static(name)
    }
}

impl From<String> for Namespace {
    fn from(name: String) -> Self {
        Namespace(NamespaceRepr::Shared(name.into()))
    }
}

impl From<Arc<str>> for Namespace {
    fn from(name: Arc<str>) -> Self {
        Namespace(NamespaceRepr::Shared(name))
    }
}

impl PartialEq for Namespace {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        let (this, that) = (self.as_str(), other.as_str());
        // One function's keys share its literal: equal without comparing the text.
        std::ptr::eq(this, that) || this == that
    }
}

impl Eq for Namespace {}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one logical call: `{namespace}:{version}:{hex(sha256(key material))}`.
///
/// Held as parts with a fixed-size digest, so building and comparing keys allocates nothing;
/// [`Display`](fmt::Display) gives the string form that remote stores use.
///
/// ```
/// use idempotent_core::{Digest, Key};
///
/// let key = Key::derive("payments::charge", 1, &"order-42").unwrap();
/// assert_eq!(key.namespace(), "payments::charge");
/// assert!(key.to_string().starts_with("payments::charge:1:"));
/// assert_eq!(key, Key::new("payments::charge", 1, Digest::of(&"order-42").unwrap()));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    digest: Digest,
    version: u32,
    namespace: Namespace,
}

impl Key {
    /// A key from its parts.
    pub fn new(namespace: impl Into<Namespace>, version: u32, digest: Digest) -> Key {
        Key {
            digest,
            version,
            namespace: namespace.into(),
        }
    }

    /// A key whose material is `material`'s canonical encoding.
    pub fn derive<T: Serialize + ?Sized>(
        namespace: impl Into<Namespace>,
        version: u32,
        material: &T,
    ) -> Result<Key, CanonicalError> {
        Ok(Key::new(namespace, version, Digest::of(material)?))
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        self.namespace.as_str()
    }

    /// The namespace as a metric label: a literal is borrowed, a shared name shared.
    #[cfg(feature = "metrics")]
    #[inline]
    pub(crate) fn namespace_label(&self) -> ::metrics::SharedString {
        match &self.namespace.0 {
            NamespaceRepr::Static(name) => ::metrics::SharedString::const_str(name),
            NamespaceRepr::Shared(name) => ::metrics::SharedString::from(Arc::clone(name)),
        }
    }

    /// The namespace, when it is a literal.
    #[cfg(feature = "metrics")]
    #[inline]
    pub(crate) fn static_namespace(&self) -> Option<&'static str> {
        match self.namespace.0 {
            NamespaceRepr::Static(name) => Some(name),
            NamespaceRepr::Shared(_) => None,
        }
    }

    /// The version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The digest of the key material.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
}

// Hashing the digest alone is consistent with `Eq` (equal keys have equal digests) and spreads
// well: the digest is already uniformly random.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.digest.0);
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.namespace.as_str(),
            self.version,
            self.digest.hex().as_str()
        )
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}
