//! A client-generated idempotency key, reused across the attempts of one operation.

use std::fmt;

/// A client-generated idempotency key: a UUID v7 (time-ordered, so keys of one client sort by
/// creation and index well), sent as the `Idempotency-Key` header or a message id.
///
/// ```
/// use idempotent_core::retry::IdempotencyKey;
///
/// let key = IdempotencyKey::new();
/// assert_eq!(key.as_uuid().get_version_num(), 7);
/// assert_ne!(key, IdempotencyKey::new());
/// let text = key.to_string();
/// assert_eq!(text.parse::<IdempotencyKey>().unwrap(), key);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdempotencyKey(uuid::Uuid);

impl IdempotencyKey {
    /// A fresh key (UUID v7: a millisecond timestamp and random bits).
    pub fn new() -> IdempotencyKey {
        IdempotencyKey(uuid::Uuid::now_v7())
    }

    /// The UUID.
    pub fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }
}

impl Default for IdempotencyKey {
    fn default() -> Self {
        IdempotencyKey::new()
    }
}

impl From<uuid::Uuid> for IdempotencyKey {
    fn from(uuid: uuid::Uuid) -> Self {
        IdempotencyKey(uuid)
    }
}

impl fmt::Display for IdempotencyKey {
    /// The hyphenated lowercase form, 36 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({})", self.0.hyphenated())
    }
}

impl std::str::FromStr for IdempotencyKey {
    type Err = uuid::Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(text).map(IdempotencyKey)
    }
}

impl serde::Serialize for IdempotencyKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0.hyphenated())
    }
}
