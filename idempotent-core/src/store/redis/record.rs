//! How a record is laid out in its one Redis string, and how a [`Key`] names that string.
//!
//! ```text
//! 'idem1' kind token fingerprint time            [output]
//!  5      1    16    32          15 ASCII digits  rest (completed records only)
//! ```
//!
//! `kind` is `P` (in progress; `time` is `lease_until`) or `C` (completed; `time` is
//! `expires_at`), times in milliseconds since the Unix epoch: an in-progress record is built
//! here by the claiming client, with its clock; a completed one (and a renewed lease) by the
//! Lua scripts, with the Redis server's. The scripts read its fixed offsets; this module reads
//! it back for the client and refuses anything else as corrupt. The times are only reported
//! back: what frees a key is the record's own time to live (`PX`).

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf as _, Bytes};
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
const MAX_MILLIS: u64 = crate::defaults::LONGEST.as_millis() as u64;
/// Largest time the 15 digits hold.
const MAX_TIME: u64 = 999_999_999_999_999;

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
    out.push(':');
    push_decimal(&mut out, key.version());
    out.push(':');
    out.push_str(key.digest().hex().as_str());
    out
}

/// `n` in decimal (what `write!` would give, without its formatting machinery).
fn push_decimal(out: &mut String, n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend(digits[at..].iter().map(|&d| char::from(d)));
}

/// A fresh token for a claim whose lease ends at `lease_until`: 8 random bytes, then that end
/// (milliseconds since the Unix epoch, big-endian), so `complete` can tell an owner whose
/// lease passed (its record left with the lease) from one whose record was removed.
pub(super) fn token(lease_until: SystemTime) -> Token {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&rand::random::<[u8; 8]>());
    bytes[8..].copy_from_slice(&epoch_millis(lease_until).to_be_bytes());
    Token::from_bytes(bytes)
}

/// Whether the lease that `token` (from [`token`]) was issued for has passed at `now`.
pub(super) fn lease_passed(token: &Token, now: SystemTime) -> bool {
    let mut end = [0u8; 8];
    end.copy_from_slice(&token.as_bytes()[8..]);
    u64::from_be_bytes(end) <= epoch_millis(now)
}

fn epoch_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// A new in-progress record: `'idem1P' token fingerprint lease_until`, the lease's end by the
/// claiming client's clock (only reported back, as the time left; Redis frees the key by the
/// record's own time to live).
pub(super) fn in_progress(
    token: &Token,
    fingerprint: &Fingerprint,
    lease_until: SystemTime,
) -> [u8; HEADER] {
    let mut record = [0u8; HEADER];
    record[..MAGIC.len()].copy_from_slice(MAGIC);
    record[MAGIC.len()] = b'P';
    record[TOKEN_AT..FINGERPRINT_AT].copy_from_slice(token.as_bytes());
    record[FINGERPRINT_AT..TIME_AT].copy_from_slice(fingerprint.as_bytes());
    let mut rest = epoch_millis(lease_until).min(MAX_TIME);
    for digit in record[TIME_AT..HEADER].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    record
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

/// Parses a record read back from `redis_key`; anything not in the layout is corrupt.
pub(super) fn decode(redis_key: &str, value: Bytes) -> Result<Record, StoreError> {
    let len = value.len();
    let corrupt = || {
        StoreError::corrupt(format!(
            "redis key `{redis_key}` holds {len} bytes that are not an idempotency record"
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
        b'P' if value.len() == HEADER => Ok(Record::InProgress {
            token,
            fingerprint,
            lease_until: time,
        }),
        b'C' => Ok(Record::Completed {
            token,
            fingerprint,
            expires_at: time,
            // Advanced rather than sliced: the reply's buffer is not shared yet, and
            // slicing it would allocate to share it.
            output: {
                let mut output = value;
                output.advance(HEADER);
                output
            },
        }),
        _ => Err(corrupt()),
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
        match decode(
            "k",
            encode(b'P', &token, &fingerprint, 1_795_434_931_530, b""),
        ) {
            Ok(Record::InProgress {
                token: t,
                fingerprint: f,
                lease_until: l,
            }) => {
                assert_eq!((t, f, l), (token, fingerprint, lease_until));
            }
            other => panic!("{other:?}"),
        }
        match decode("k", encode(b'C', &token, &fingerprint, 7, b"\0out\xff")) {
            Ok(Record::Completed { output, .. }) => assert_eq!(&output[..], b"\0out\xff"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn versions_are_written_in_decimal() {
        for n in [0, 7, 10, 99, 1234, u32::MAX] {
            let mut out = String::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }

    #[test]
    fn tokens_carry_their_lease_end() {
        let now = UNIX_EPOCH + Duration::from_millis(1_795_434_931_530);
        let token = token(now + Duration::from_secs(30));
        assert!(!lease_passed(&token, now));
        assert!(!lease_passed(&token, now + Duration::from_millis(29_999)));
        assert!(lease_passed(&token, now + Duration::from_secs(30)));
        assert_ne!(
            token.as_bytes()[..8],
            super::token(now + Duration::from_secs(30)).as_bytes()[..8]
        );
    }

    #[test]
    fn a_new_claim_is_an_in_progress_record() {
        let token = Token::random();
        let fingerprint = Fingerprint::from_digest(Digest::of_bytes(b"f"));
        let lease_until = UNIX_EPOCH + Duration::from_millis(1_795_434_931_530);
        let value = in_progress(&token, &fingerprint, lease_until);
        assert_eq!(
            Bytes::copy_from_slice(&value),
            encode(b'P', &token, &fingerprint, 1_795_434_931_530, b"")
        );
        assert!(matches!(
            decode("k", Bytes::copy_from_slice(&value)),
            Ok(Record::InProgress { token: t, lease_until: l, .. }) if t == token && l == lease_until
        ));
        let far = in_progress(
            &token,
            &fingerprint,
            UNIX_EPOCH + Duration::from_secs(1 << 40),
        );
        assert_eq!(&far[TIME_AT..], b"999999999999999");
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
            match decode("k", value.clone()) {
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
