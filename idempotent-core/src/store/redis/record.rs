//! How a record is laid out in its one Redis string, and how a [`Key`] names that string.
//!
//! ```text
//! 'idem1' kind token fingerprint time            [output]
//!  5      1    16    32          15 ASCII digits  rest (completed records only)
//! ```
//!
//! `kind` is `P` (in progress; `time` is `lease_until`) or `C` (completed; `time` is
//! `expires_at`), times in milliseconds since the Unix epoch by the Redis server's clock. The
//! Lua scripts write this layout and read its fixed offsets; this module reads it back for the
//! client and refuses anything else as corrupt.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use crate::error::StoreError;
use crate::key::{Fingerprint, Key};
use crate::record::{Record, Token};

const MAGIC: &[u8; 5] = b"idem1";
const TOKEN_AT: usize = 6;
const FINGERPRINT_AT: usize = TOKEN_AT + 16;
const TIME_AT: usize = FINGERPRINT_AT + 32;
const TIME_DIGITS: usize = 15;
/// Bytes before the output: the whole of an in-progress record.
pub(super) const HEADER: usize = TIME_AT + TIME_DIGITS;

/// Longest duration sent to a script, in milliseconds (about 31 years): keeps `now + ttl`
/// within the 15 digits of the layout and exact in Lua's doubles.
const MAX_MILLIS: u64 = 1_000_000_000_000;

/// Bytes of the namespace's SHA-256 kept in the Redis key (128 bits).
const NAMESPACE_HASH_BYTES: usize = 16;

/// `{prefix}{hex(sha256(namespace))[..32]}:{version}:{hex(digest)}`.
///
/// The namespace is user text (spaces, newlines, braces, kilobytes); hashing it keeps every
/// Redis key short and free of `{`/`}`, so no user text can form a Redis Cluster hash tag and
/// records spread over all slots. The digest is already a hash of the key material.
pub(super) fn redis_key(prefix: &str, key: &Key) -> String {
    let namespace_hex = namespace_hex(key.namespace());
    let mut out = String::with_capacity(prefix.len() + namespace_hex.len() + 12 + 64);
    out.push_str(prefix);
    out.push_str(std::str::from_utf8(&namespace_hex).unwrap_or_default());
    // Writing to a `String` cannot fail.
    let _ = write!(out, ":{}:", key.version());
    out.push_str(key.digest().hex().as_str());
    out
}

/// `'idem1P' token fingerprint`: a new in-progress record without its time, which the claim
/// script appends from the server's clock.
pub(super) fn in_progress_head(token: &Token, fingerprint: &Fingerprint) -> [u8; TIME_AT] {
    let mut head = [0u8; TIME_AT];
    head[..MAGIC.len()].copy_from_slice(MAGIC);
    head[MAGIC.len()] = b'P';
    head[TOKEN_AT..FINGERPRINT_AT].copy_from_slice(token.as_bytes());
    head[FINGERPRINT_AT..TIME_AT].copy_from_slice(fingerprint.as_bytes());
    head
}

type NamespaceHex = [u8; 2 * NAMESPACE_HASH_BYTES];

/// Namespaces this long or shorter are remembered by [`namespace_hex`].
const CACHED_NAMESPACE_LEN: usize = 256;
const CACHED_NAMESPACES: usize = 8;

thread_local! {
    /// The namespaces this thread hashed last, with their hashes: a service calls a handful
    /// of idempotent functions, and comparing their names is cheaper than SHA-256.
    static RECENT_NAMESPACES: RefCell<RecentNamespaces> = RefCell::default();
}

#[derive(Default)]
struct RecentNamespaces {
    entries: Vec<(Box<str>, NamespaceHex)>,
    next: usize,
}

/// `hex(sha256(namespace))[..32]`.
fn namespace_hex(namespace: &str) -> NamespaceHex {
    let hash = || {
        let digest = Sha256::digest(namespace.as_bytes());
        let mut hex_digits = [0u8; 2 * NAMESPACE_HASH_BYTES];
        // Cannot fail: the buffer is exactly twice the input.
        let _ = hex::encode_to_slice(&digest[..NAMESPACE_HASH_BYTES], &mut hex_digits);
        hex_digits
    };
    if namespace.len() > CACHED_NAMESPACE_LEN {
        return hash();
    }
    let remembered = RECENT_NAMESPACES.try_with(|recent| {
        let Ok(mut recent) = recent.try_borrow_mut() else {
            return hash();
        };
        if let Some((_, hex_digits)) = recent.entries.iter().find(|(name, _)| **name == *namespace)
        {
            return *hex_digits;
        }
        let hex_digits = hash();
        let entry = (Box::from(namespace), hex_digits);
        if recent.entries.len() < CACHED_NAMESPACES {
            recent.entries.push(entry);
        } else {
            let next = recent.next;
            recent.entries[next] = entry;
            recent.next = (next + 1) % CACHED_NAMESPACES;
        }
        hex_digits
    });
    // The thread is exiting and its locals are gone: hash without remembering.
    remembered.unwrap_or_else(|_| hash())
}

/// A duration as whole milliseconds for a script: at least 1 (Redis refuses `PX 0`), at most
/// [`MAX_MILLIS`].
pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(MAX_MILLIS)
        .clamp(1, MAX_MILLIS)
}

/// A record read back from Redis.
#[derive(Debug)]
pub(super) enum Stored {
    InProgress {
        token: Token,
        fingerprint: Fingerprint,
        lease_until: SystemTime,
    },
    Completed {
        token: Token,
        fingerprint: Fingerprint,
        expires_at: SystemTime,
        output: Bytes,
    },
}

impl Stored {
    /// Parses a value read from `redis_key`; anything not in the layout is corrupt.
    pub(super) fn decode(redis_key: &str, value: Bytes) -> Result<Stored, StoreError> {
        let corrupt = || {
            StoreError::corrupt(format!(
                "redis key `{redis_key}` holds {} bytes that are not an idempotency record",
                value.len()
            ))
        };
        if value.len() < HEADER || &value[..MAGIC.len()] != MAGIC {
            return Err(corrupt());
        }
        let mut token = [0u8; 16];
        token.copy_from_slice(&value[TOKEN_AT..FINGERPRINT_AT]);
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(&value[FINGERPRINT_AT..TIME_AT]);
        let time = parse_millis(&value[TIME_AT..HEADER]).ok_or_else(corrupt)?;
        let (token, fingerprint) = (
            Token::from_bytes(token),
            Fingerprint::from_bytes(fingerprint),
        );
        match value[MAGIC.len()] {
            b'P' if value.len() == HEADER => Ok(Stored::InProgress {
                token,
                fingerprint,
                lease_until: time,
            }),
            b'C' => Ok(Stored::Completed {
                token,
                fingerprint,
                expires_at: time,
                output: value.slice(HEADER..),
            }),
            _ => Err(corrupt()),
        }
    }

    pub(super) fn into_record(self) -> Record {
        match self {
            Stored::InProgress {
                token,
                fingerprint,
                lease_until,
            } => Record::InProgress {
                token,
                fingerprint,
                lease_until,
            },
            Stored::Completed {
                token,
                fingerprint,
                expires_at,
                output,
            } => Record::Completed {
                token,
                fingerprint,
                output,
                expires_at,
            },
        }
    }
}

fn parse_millis(digits: &[u8]) -> Option<SystemTime> {
    let mut millis: u64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        millis = millis
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
    }
    UNIX_EPOCH.checked_add(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Digest;

    fn encode(
        kind: u8,
        token: &Token,
        fingerprint: &Fingerprint,
        millis: u64,
        out: &[u8],
    ) -> Bytes {
        let mut value = Vec::new();
        value.extend_from_slice(MAGIC);
        value.push(kind);
        value.extend_from_slice(token.as_bytes());
        value.extend_from_slice(fingerprint.as_bytes());
        value.extend_from_slice(format!("{millis:015}").as_bytes());
        value.extend_from_slice(out);
        Bytes::from(value)
    }

    #[test]
    fn records_decode() {
        let token = Token::random();
        let fingerprint = Fingerprint::from_digest(Digest::of_bytes(b"f"));
        let lease_until = UNIX_EPOCH + Duration::from_millis(1_795_434_931_530);
        match Stored::decode(
            "k",
            encode(b'P', &token, &fingerprint, 1_795_434_931_530, b""),
        ) {
            Ok(Stored::InProgress {
                token: t,
                fingerprint: f,
                lease_until: l,
            }) => {
                assert_eq!((t, f, l), (token, fingerprint, lease_until));
            }
            other => panic!("{other:?}"),
        }
        match Stored::decode("k", encode(b'C', &token, &fingerprint, 7, b"\0out\xff")) {
            Ok(Stored::Completed { output, .. }) => assert_eq!(&output[..], b"\0out\xff"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_claim_head_is_an_in_progress_record_without_its_time() {
        let token = Token::random();
        let fingerprint = Fingerprint::from_digest(Digest::of_bytes(b"f"));
        let mut value = in_progress_head(&token, &fingerprint).to_vec();
        value.extend_from_slice(b"001795434931530");
        assert_eq!(value.len(), HEADER);
        assert_eq!(
            Bytes::from(value.clone()),
            encode(b'P', &token, &fingerprint, 1_795_434_931_530, b"")
        );
        assert!(matches!(
            Stored::decode("k", Bytes::from(value)),
            Ok(Stored::InProgress { token: t, .. }) if t == token
        ));
    }

    #[test]
    fn anything_else_is_corrupt() {
        let token = Token::random();
        let fingerprint = Fingerprint::from_digest(Digest::of_bytes(b"f"));
        let mut bad_digits = encode(b'P', &token, &fingerprint, 1, b"").to_vec();
        bad_digits[HEADER - 1] = b'x';
        for value in [
            Bytes::from_static(b""),
            Bytes::from_static(b"hello"),
            Bytes::from(vec![b'i'; 200]),
            encode(b'P', &token, &fingerprint, 1, b"trailing"),
            encode(b'X', &token, &fingerprint, 1, b""),
            Bytes::from(bad_digits),
            encode(b'C', &token, &fingerprint, 1, b"").slice(..HEADER - 1),
        ] {
            match Stored::decode("k", value.clone()) {
                Err(StoreError::Corrupt { detail }) => assert!(detail.contains("`k`"), "{detail}"),
                other => panic!("{value:?} must be corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn redis_keys_are_hashed_and_brace_free() {
        let key = Key::new("{tag} with\nnewline", 7, Digest::of_bytes(b"m"));
        let redis_key = redis_key("app:", &key);
        assert!(redis_key.starts_with("app:"));
        assert!(redis_key.ends_with(&format!(":7:{}", key.digest())));
        assert_eq!(redis_key.len(), 4 + 32 + 3 + 64);
        assert!(
            redis_key[4..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':')
        );
        assert_ne!(
            redis_key,
            super::redis_key("app:", &Key::new("{tag} with\nnewline", 8, *key.digest()))
        );
    }

    #[test]
    fn remembered_namespace_hashes_are_the_hashes() {
        let names: Vec<String> = (0..3 * CACHED_NAMESPACES)
            .map(|n| format!("namespace {n}"))
            .chain(["x".repeat(CACHED_NAMESPACE_LEN + 1)])
            .collect();
        for _ in 0..3 {
            for name in &names {
                let digest = Sha256::digest(name.as_bytes());
                assert_eq!(
                    &namespace_hex(name)[..],
                    hex::encode(&digest[..NAMESPACE_HASH_BYTES]).as_bytes()
                );
            }
        }
    }

    #[test]
    fn durations_become_whole_milliseconds() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 1);
        assert_eq!(millis(Duration::from_secs(30)), 30_000);
        assert_eq!(millis(Duration::MAX), MAX_MILLIS);
    }
}
