//! How a record is laid out in its one Redis string, and how a [`Key`] names that string.
//!
//! ```text
//! kind token fingerprint time            [output]
//! 1    16    32          13 ASCII digits  rest (completed records only)
//! ```
//!
//! `kind` is `P` (in progress; `time` is `lease_until`), `C` (completed; `time` is
//! `expires_at`) or `Z` (completed, the output LZ4-compressed: see
//! [`compress_outputs_above`](super::RedisStoreBuilder::compress_outputs_above)); another
//! layout would take other letters (the one before this began `idem1`). Times are milliseconds since the Unix epoch: an in-progress record is
//! built here by the claiming client, with its clock; a completed one (and a renewed lease) by
//! the Lua scripts, with the Redis server's. The scripts read its fixed offsets; this module
//! reads it back for the client and refuses anything else as corrupt. The times are only
//! reported back: what frees a key is the record's own time to live (`PX`).
//!
//! Every byte counts: a record lives in Redis's memory for its whole time to live. The layout
//! stores nothing twice, and the key is 48 characters after the prefix (see [`redis_key`]).

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf as _, Bytes};
use sha2::{Digest as _, Sha256};

use crate::error::StoreError;
use crate::key::{Fingerprint, Key};
use crate::record::{Record, Token};

const IN_PROGRESS: &[u8; 1] = b"P";
const COMPLETED: &[u8; 1] = b"C";
const COMPRESSED: &[u8; 1] = b"Z";
const TOKEN_AT: usize = 1;
const FINGERPRINT_AT: usize = TOKEN_AT + 16;
const TIME_AT: usize = FINGERPRINT_AT + 32;
const TIME_DIGITS: usize = 13;
/// Bytes before the output: the whole of an in-progress record.
pub(super) const HEADER: usize = TIME_AT + TIME_DIGITS;

/// Longest duration sent to a script, in milliseconds (about 31 years): keeps `now + ttl`
/// within the 13 digits of the layout (until the year 2286) and exact in Lua's doubles.
const MAX_MILLIS: u64 = crate::defaults::LONGEST.as_millis() as u64;
/// Largest time the 13 digits hold.
const MAX_TIME: u64 = 9_999_999_999_999;

/// Bytes of `sha256(namespace, version)` in the Redis key (96 bits).
const NAMESPACE_HASH_BYTES: usize = 12;
/// Bytes of the key material's digest in the Redis key (192 bits: finding two key values
/// with one Redis key takes about 2^96 hashes).
const DIGEST_BYTES: usize = 24;
/// Characters of the Redis key after the prefix: base64url of 36 bytes, no padding.
pub(super) const KEY_CHARS: usize = (NAMESPACE_HASH_BYTES + DIGEST_BYTES) / 3 * 4;

/// `{prefix}{base64url(sha256(namespace, version)[..12] ‖ digest[..24])}`: the prefix and 48
/// characters.
///
/// The namespace is user text (spaces, newlines, braces, kilobytes); hashing it keeps every
/// Redis key short and free of `{`/`}` (base64url has neither), so no user text can form a
/// Redis Cluster hash tag and records spread over all slots. The digest is already a hash of
/// the key material; 24 of its 32 bytes name the record.
pub(super) fn redis_key(prefix: &str, key: &Key) -> String {
    let mut bytes = [0u8; NAMESPACE_HASH_BYTES + DIGEST_BYTES];
    bytes[..NAMESPACE_HASH_BYTES].copy_from_slice(&namespace_hash(key.namespace(), key.version()));
    bytes[NAMESPACE_HASH_BYTES..].copy_from_slice(&key.digest().as_bytes()[..DIGEST_BYTES]);
    let mut out = String::with_capacity(prefix.len() + KEY_CHARS);
    out.push_str(prefix);
    push_base64url(&mut out, &bytes);
    out
}

/// Characters of the Redis key after the prefix that name the namespace and version.
pub(super) const NAMESPACE_CHARS: usize = NAMESPACE_HASH_BYTES / 3 * 4;

/// The namespace part of every Redis key of `namespace` at `version` (what follows the
/// prefix): 16 base64url characters.
pub(super) fn namespace_part(namespace: &str, version: u32) -> String {
    let mut out = String::with_capacity(NAMESPACE_CHARS);
    push_base64url(&mut out, &namespace_hash(namespace, version));
    out
}

/// What the first [`HEADER`] bytes of a value say, without its output: in progress until, or
/// completed until, or `None` for a value that is not a record.
pub(super) fn header_state(header: &[u8]) -> Option<(bool, SystemTime)> {
    if header.len() < HEADER {
        return None;
    }
    let time = parse_millis(&header[TIME_AT..HEADER])?;
    match &header[..TOKEN_AT] {
        kind if kind == IN_PROGRESS => Some((false, time)),
        kind if kind == COMPLETED || kind == COMPRESSED => Some((true, time)),
        _ => None,
    }
}

/// Base64url of `bytes` (whose length is a multiple of 3, at most 36: no padding), written
/// into a stack buffer and appended at once: a claim names its key on every call.
fn push_base64url(out: &mut String, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut text = [0u8; KEY_CHARS];
    let mut at = 0;
    for group in bytes.chunks_exact(3).take(KEY_CHARS / 4) {
        let n = u32::from(group[0]) << 16 | u32::from(group[1]) << 8 | u32::from(group[2]);
        for (slot, shift) in text[at..at + 4].iter_mut().zip([18, 12, 6, 0]) {
            *slot = ALPHABET[(n >> shift) as usize & 63];
        }
        at += 4;
    }
    // Only alphabet bytes were written: always ASCII.
    out.push_str(std::str::from_utf8(&text[..at]).unwrap_or_default());
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

/// A new in-progress record: `P token fingerprint lease_until`, the lease's end by the
/// claiming client's clock (only reported back, as the time left; Redis frees the key by the
/// record's own time to live).
pub(super) fn in_progress(
    token: &Token,
    fingerprint: &Fingerprint,
    lease_until: SystemTime,
) -> [u8; HEADER] {
    let mut record = [0u8; HEADER];
    record[..TOKEN_AT].copy_from_slice(IN_PROGRESS);
    record[TOKEN_AT..FINGERPRINT_AT].copy_from_slice(token.as_bytes());
    record[FINGERPRINT_AT..TIME_AT].copy_from_slice(fingerprint.as_bytes());
    let mut rest = epoch_millis(lease_until).min(MAX_TIME);
    for digit in record[TIME_AT..HEADER].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    record
}

type NamespaceHash = [u8; NAMESPACE_HASH_BYTES];

/// Namespaces this long or shorter are remembered by [`namespace_hash`].
const CACHED_NAMESPACE_LEN: usize = 256;
const CACHED_NAMESPACES: usize = 8;

thread_local! {
    /// The namespaces this thread hashed last, with their versions and hashes: a service calls
    /// a handful of idempotent functions, and comparing their names is cheaper than SHA-256.
    static RECENT_NAMESPACES: RefCell<RecentNamespaces> = RefCell::default();
}

#[derive(Default)]
struct RecentNamespaces {
    entries: Vec<(Box<str>, u32, NamespaceHash)>,
    next: usize,
}

/// `sha256(len(namespace) ‖ namespace ‖ version)[..12]`, the length and the version as
/// big-endian integers: the length first, so that no two (namespace, version) pairs hash the
/// same bytes.
fn namespace_hash(namespace: &str, version: u32) -> NamespaceHash {
    let hash = || {
        let mut sha = Sha256::new();
        sha.update((namespace.len() as u64).to_be_bytes());
        sha.update(namespace.as_bytes());
        sha.update(version.to_be_bytes());
        let digest = sha.finalize();
        let mut out = [0u8; NAMESPACE_HASH_BYTES];
        out.copy_from_slice(&digest[..NAMESPACE_HASH_BYTES]);
        out
    };
    if namespace.len() > CACHED_NAMESPACE_LEN {
        return hash();
    }
    let remembered = RECENT_NAMESPACES.try_with(|recent| {
        let Ok(mut recent) = recent.try_borrow_mut() else {
            return hash();
        };
        if let Some((_, _, known)) = recent
            .entries
            .iter()
            .find(|(name, v, _)| *v == version && **name == *namespace)
        {
            return *known;
        }
        let hashed = hash();
        let entry = (Box::from(namespace), version, hashed);
        if recent.entries.len() < CACHED_NAMESPACES {
            recent.entries.push(entry);
        } else {
            let next = recent.next;
            recent.entries[next] = entry;
            recent.next = (next + 1) % CACHED_NAMESPACES;
        }
        hashed
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

/// Parses a record read back from `redis_key`; anything not in the layout is corrupt. A
/// compressed output is decompressed, up to `max_output` bytes.
pub(super) fn decode(
    redis_key: &str,
    value: Bytes,
    max_output: usize,
) -> Result<Record, StoreError> {
    let len = value.len();
    let corrupt = || {
        StoreError::corrupt(format!(
            "redis key `{redis_key}` holds {len} bytes that are not an idempotency record"
        ))
    };
    if value.len() < HEADER {
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
    let kind = &value[..TOKEN_AT];
    if kind == IN_PROGRESS && value.len() == HEADER {
        return Ok(Record::InProgress {
            token,
            fingerprint,
            lease_until: time,
        });
    }
    let output = if kind == COMPLETED {
        // Advanced rather than sliced: the reply's buffer is not shared yet, and slicing it
        // would allocate to share it.
        let mut output = value;
        output.advance(HEADER);
        output
    } else if kind == COMPRESSED {
        decompress(&value[HEADER..], max_output).ok_or_else(corrupt)?
    } else {
        return Err(corrupt());
    };
    Ok(Record::Completed {
        token,
        fingerprint,
        expires_at: time,
        output,
    })
}

/// `output`, LZ4-compressed behind its length (4 bytes, little-endian), when that is shorter.
pub(super) fn compress(output: &[u8]) -> Option<Vec<u8>> {
    let compressed = lz4_flex::compress_prepend_size(output);
    (compressed.len() < output.len()).then_some(compressed)
}

/// What [`compress`] compressed, refused (`None`) when damaged or longer than `max_output`.
fn decompress(compressed: &[u8], max_output: usize) -> Option<Bytes> {
    let size = u32::from_le_bytes(compressed.get(..4)?.try_into().ok()?);
    if usize::try_from(size).ok()? > max_output {
        return None;
    }
    lz4_flex::decompress_size_prepended(compressed)
        .ok()
        .map(Bytes::from)
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

    const MAX: usize = 1 << 20;

    fn encode(
        kind: &[u8; 1],
        token: &Token,
        fingerprint: &Fingerprint,
        millis: u64,
        out: &[u8],
    ) -> Bytes {
        let mut value = Vec::new();
        value.extend_from_slice(kind);
        value.extend_from_slice(token.as_bytes());
        value.extend_from_slice(fingerprint.as_bytes());
        value.extend_from_slice(format!("{millis:013}").as_bytes());
        value.extend_from_slice(out);
        Bytes::from(value)
    }

    fn parts() -> (Token, Fingerprint) {
        (
            Token::random(),
            Fingerprint::from_digest(Digest::of_bytes(b"f")),
        )
    }

    #[test]
    fn records_decode() {
        let (token, fingerprint) = parts();
        let lease_until = UNIX_EPOCH + Duration::from_millis(1_795_434_931_530);
        let in_progress = encode(IN_PROGRESS, &token, &fingerprint, 1_795_434_931_530, b"");
        assert_eq!(in_progress.len(), 62);
        match decode("k", in_progress, MAX) {
            Ok(Record::InProgress {
                token: t,
                fingerprint: f,
                lease_until: l,
            }) => {
                assert_eq!((t, f, l), (token, fingerprint, lease_until));
            }
            other => panic!("{other:?}"),
        }
        match decode(
            "k",
            encode(COMPLETED, &token, &fingerprint, 7, b"\0out\xff"),
            MAX,
        ) {
            Ok(Record::Completed { output, .. }) => assert_eq!(&output[..], b"\0out\xff"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn compressed_outputs_decode_to_the_output() {
        let (token, fingerprint) = parts();
        let output = b"a receipt, a receipt, a receipt, a receipt, a receipt".repeat(20);
        let compressed = compress(&output).expect("repetitive text compresses");
        assert!(compressed.len() < output.len() / 4, "{}", compressed.len());
        let value = encode(COMPRESSED, &token, &fingerprint, 7, &compressed);
        match decode("k", value.clone(), MAX) {
            Ok(Record::Completed { output: out, .. }) => assert_eq!(&out[..], &output[..]),
            other => panic!("{other:?}"),
        }
        // Larger than the store's limit, or damaged: corrupt, not a huge allocation.
        assert!(matches!(
            decode("k", value, output.len() - 1),
            Err(StoreError::Corrupt { .. })
        ));
        let mut claims_4_gib = compressed.clone();
        claims_4_gib[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let damaged = encode(COMPRESSED, &token, &fingerprint, 7, &claims_4_gib);
        assert!(matches!(
            decode("k", damaged, MAX),
            Err(StoreError::Corrupt { .. })
        ));
        // What does not shrink is sent as it is.
        assert_eq!(compress(b"short"), None);
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
        let (token, fingerprint) = parts();
        let lease_until = UNIX_EPOCH + Duration::from_millis(1_795_434_931_530);
        let value = in_progress(&token, &fingerprint, lease_until);
        assert_eq!(
            Bytes::copy_from_slice(&value),
            encode(IN_PROGRESS, &token, &fingerprint, 1_795_434_931_530, b"")
        );
        assert!(matches!(
            decode("k", Bytes::copy_from_slice(&value), MAX),
            Ok(Record::InProgress { token: t, lease_until: l, .. }) if t == token && l == lease_until
        ));
        let far = in_progress(
            &token,
            &fingerprint,
            UNIX_EPOCH + Duration::from_secs(1 << 40),
        );
        assert_eq!(&far[TIME_AT..], b"9999999999999");
    }

    #[test]
    fn anything_else_is_corrupt() {
        let (token, fingerprint) = parts();
        let mut bad_digits = encode(IN_PROGRESS, &token, &fingerprint, 1, b"").to_vec();
        bad_digits[HEADER - 1] = b'x';
        for value in [
            Bytes::from_static(b""),
            Bytes::from_static(b"hello"),
            Bytes::from(vec![b'i'; 200]),
            encode(IN_PROGRESS, &token, &fingerprint, 1, b"trailing"),
            encode(b"X", &token, &fingerprint, 1, b""),
            encode(b"i", &token, &fingerprint, 1, b"dem1C"),
            encode(COMPRESSED, &token, &fingerprint, 1, b"not lz4"),
            Bytes::from(bad_digits),
            encode(COMPLETED, &token, &fingerprint, 1, b"").slice(..HEADER - 1),
        ] {
            match decode("k", value.clone(), MAX) {
                Err(StoreError::Corrupt { detail }) => assert!(detail.contains("`k`"), "{detail}"),
                other => panic!("{value:?} must be corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn redis_keys_are_short_hashed_and_brace_free() {
        let key = Key::new("{tag} with\nnewline", 7, Digest::of_bytes(b"m"));
        let redis_key = redis_key("app:", &key);
        assert!(redis_key.starts_with("app:"));
        assert_eq!(redis_key.len(), 4 + KEY_CHARS);
        assert_eq!(KEY_CHARS, 48);
        assert!(
            redis_key[4..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        // Every part of the key counts: the namespace, the version and the digest.
        for other in [
            Key::new("{tag} with\nnewline", 8, *key.digest()),
            Key::new("{tag} with newline", 7, *key.digest()),
            Key::new("{tag} with\nnewline", 7, Digest::of_bytes(b"n")),
        ] {
            assert_ne!(redis_key, super::redis_key("app:", &other));
        }
        // The digest's first 24 bytes, in base64url, end the key.
        let mut tail = String::new();
        push_base64url(&mut tail, &key.digest().as_bytes()[..DIGEST_BYTES]);
        assert!(redis_key.ends_with(&tail));
    }

    #[test]
    fn base64url_is_the_standard_alphabet_without_padding() {
        let mut out = String::new();
        push_base64url(&mut out, b"\xfb\xff\xbfany");
        assert_eq!(out, "-_-_YW55");
    }

    #[test]
    fn remembered_namespace_hashes_are_the_hashes() {
        let names: Vec<String> = (0..3 * CACHED_NAMESPACES)
            .map(|n| format!("namespace {n}"))
            .chain(["x".repeat(CACHED_NAMESPACE_LEN + 1)])
            .collect();
        for _ in 0..3 {
            for name in &names {
                for version in [1, 2] {
                    let mut sha = Sha256::new();
                    sha.update((name.len() as u64).to_be_bytes());
                    sha.update(name.as_bytes());
                    sha.update(u32::to_be_bytes(version));
                    let digest = sha.finalize();
                    assert_eq!(
                        namespace_hash(name, version)[..],
                        digest[..NAMESPACE_HASH_BYTES]
                    );
                }
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
