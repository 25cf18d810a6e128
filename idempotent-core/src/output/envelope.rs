//! The envelope around a stored output: when it was recorded, one mark byte that says `Ok` or
//! `Err`, then the value in the [output encoding](crate::output). A store receives exactly
//! these bytes.
//!
//! The time comes first: the mark `0xB3`, then milliseconds since the Unix epoch in 6 bytes,
//! little-endian (until the year 10889), by the clock of the process that encoded the output.
//! Records written by 0.1 start with the `Ok`/`Err` mark and read the same, without a time.
//!
//! A third mark records a body that returned but whose output could not be stored
//! ([`NotStored`]): the mark, a reason byte, the size and the limit (`u64`, little-endian),
//! then at most 256 bytes of the encoder's message.
//!
//! Whether a call stores its `Err` outputs too is its [`OutputMode`]: [`OutputsOnly`] (the
//! default: an `Err` releases the claim) or [`OutputsAndErrors`] (`store_errors`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Count;
use super::{OutputError, decode, encode_into};
use crate::error::{BoxError, NotStored};

/// How many bytes the time and the mark take.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) const MARK_LEN: usize = RECORDED_LEN + 1;
/// The mark in front of the time an output was recorded.
pub(crate) const MARK_RECORDED: u8 = 0xB3;
/// Bytes of the time: milliseconds since the Unix epoch, little-endian.
const TIME_BYTES: usize = 6;
/// How many bytes the time takes, with its mark.
const RECORDED_LEN: usize = 1 + TIME_BYTES;
/// The mark in front of a stored `Ok` output.
pub(crate) const MARK_OK: u8 = 0xB0;
/// The mark in front of a stored `Err` output (`store_errors`).
pub(crate) const MARK_ERR: u8 = 0xB1;
/// The mark of a body that returned but whose output was not stored.
pub(crate) const MARK_NOT_STORED: u8 = 0xB2;
/// [`MARK_NOT_STORED`]'s reason bytes.
const TOO_LARGE: u8 = 0;
const UNENCODABLE: u8 = 1;
/// The longest encoder message kept in a not-stored record.
const DETAIL_MAX: usize = 256;
/// The mark, the reason, the size and the limit.
const NOT_STORED_HEAD: usize = 2 + 8 + 8;

/// The record of a body that returned but whose output was not stored, at most `fits` bytes
/// where the head fits (the encoder's message is cut to fit).
pub(crate) fn not_stored(reason: &NotStored, fits: usize) -> Vec<u8> {
    let (kind, size, limit, detail) = match reason {
        NotStored::TooLarge { size, limit } => (TOO_LARGE, *size, *limit, ""),
        NotStored::Unencodable { detail } => (UNENCODABLE, 0, 0, detail.as_str()),
    };
    // The time is left out where a limit is too small for it (the record then reads as one of
    // 0.1's): the record must fit, or the body could run again once its lease passes.
    let timed = fits >= RECORDED_LEN + NOT_STORED_HEAD;
    let head = if timed { RECORDED_LEN } else { 0 } + NOT_STORED_HEAD;
    let mut end = detail.len().min(DETAIL_MAX).min(fits.saturating_sub(head));
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(head + end);
    if timed {
        push_recorded(&mut out, SystemTime::now());
    }
    out.extend([MARK_NOT_STORED, kind]);
    out.extend((size as u64).to_le_bytes());
    out.extend((limit as u64).to_le_bytes());
    out.extend(&detail.as_bytes()[..end]);
    out
}

/// Why the output was not stored, when `bytes` is a not-stored record: `Some(Err)` when it
/// starts with the mark but does not read as one.
pub(crate) fn read_not_stored(bytes: &[u8]) -> Option<Result<NotStored, BoxError>> {
    let bytes = unrecorded(bytes);
    if bytes.first() != Some(&MARK_NOT_STORED) {
        return None;
    }
    let damaged = || -> BoxError { "a damaged not-stored record".into() };
    if bytes.len() < NOT_STORED_HEAD {
        return Some(Err(damaged()));
    }
    let number = |at: usize| {
        let mut le = [0; 8];
        le.copy_from_slice(&bytes[at..at + 8]);
        usize::try_from(u64::from_le_bytes(le)).unwrap_or(usize::MAX)
    };
    Some(match bytes[1] {
        TOO_LARGE => Ok(NotStored::TooLarge {
            size: number(2),
            limit: number(10),
        }),
        UNENCODABLE => Ok(NotStored::Unencodable {
            detail: String::from_utf8_lossy(&bytes[NOT_STORED_HEAD..]).into_owned(),
        }),
        _ => Err(damaged()),
    })
}

/// Only `Ok` outputs are stored; an `Err` releases the claim so a retry runs again (the
/// default).
#[derive(Debug, Clone, Copy)]
pub struct OutputsOnly;

/// `Err` outputs are stored and replayed like `Ok` ones (`store_errors`): for deterministic
/// business outcomes such as "card declined".
#[derive(Debug, Clone, Copy)]
pub struct OutputsAndErrors;

/// The old name of [`OutputsOnly`].
#[deprecated(since = "0.2.0", note = "renamed to `OutputsOnly`")]
pub type DropErrors = OutputsOnly;

/// The old name of [`OutputsAndErrors`] (one letter away from [`StoreError`](crate::StoreError),
/// with an unrelated meaning).
#[deprecated(since = "0.2.0", note = "renamed to `OutputsAndErrors`")]
pub type StoreErrors = OutputsAndErrors;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::OutputsOnly {}
    impl Sealed for super::OutputsAndErrors {}
}

/// Which results a call stores: [`OutputsOnly`] or [`OutputsAndErrors`].
#[diagnostic::on_unimplemented(
    message = "`store_errors` needs the error type `{E}` to implement `Serialize` and `DeserializeOwned`",
    label = "the error is stored and replayed, so it must be serializable",
    note = "derive `serde::Serialize` and `serde::Deserialize` for `{E}`, or drop `store_errors`"
)]
pub trait OutputMode<T, E>: sealed::Sealed {
    /// `None` when the result is not stored.
    #[doc(hidden)]
    fn encode(result: &Result<T, E>) -> Option<Result<Vec<u8>, OutputError>>;
    /// Decodes what `encode` stored.
    #[doc(hidden)]
    fn decode(bytes: &[u8]) -> Result<Result<T, E>, BoxError>;
}

impl<T: Serialize + DeserializeOwned, E> OutputMode<T, E> for OutputsOnly {
    fn encode(result: &Result<T, E>) -> Option<Result<Vec<u8>, OutputError>> {
        match result {
            Ok(value) => Some(encode_marked(MARK_OK, value)),
            Err(_) => None,
        }
    }

    fn decode(bytes: &[u8]) -> Result<Result<T, E>, BoxError> {
        match unmark(bytes)? {
            (MARK_OK, value) => Ok(Ok(decode(value)?)),
            _ => Err(Box::new(EnvelopeError::ErrorNotExpected)),
        }
    }
}

impl<T, E> OutputMode<T, E> for OutputsAndErrors
where
    T: Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned,
{
    fn encode(result: &Result<T, E>) -> Option<Result<Vec<u8>, OutputError>> {
        Some(match result {
            Ok(value) => encode_marked(MARK_OK, value),
            Err(error) => encode_marked(MARK_ERR, error),
        })
    }

    fn decode(bytes: &[u8]) -> Result<Result<T, E>, BoxError> {
        match unmark(bytes)? {
            (MARK_OK, value) => Ok(Ok(decode(value)?)),
            (_, value) => Ok(Err(decode(value)?)),
        }
    }
}

fn encode_marked<V: Serialize + ?Sized>(mark: u8, value: &V) -> Result<Vec<u8>, OutputError> {
    let mut out = Vec::with_capacity(128);
    push_recorded(&mut out, SystemTime::now());
    out.push(mark);
    encode_into(&mut out, value)?;
    Ok(out)
}

/// How many bytes the envelope of `value` as an `Ok` output takes, without encoding it (the
/// HTTP layer measures a response against the store's limit with it).
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) fn encoded_len<V: Serialize + ?Sized>(value: &V) -> Result<usize, OutputError> {
    let mut count = Count::default();
    count.0 += MARK_LEN;
    encode_into(&mut count, value)?;
    Ok(count.0)
}

/// Writes when an output is recorded: [`MARK_RECORDED`] and the time.
fn push_recorded(out: &mut Vec<u8>, at: SystemTime) {
    let millis = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
        .min((1 << (8 * TIME_BYTES)) - 1);
    out.push(MARK_RECORDED);
    out.extend_from_slice(&millis.to_le_bytes()[..TIME_BYTES]);
}

/// When a stored output was recorded, by the clock of the process that encoded it: `None` for
/// a record written by 0.1 (or not by this crate's executor).
pub fn recorded_at(record: &[u8]) -> Option<SystemTime> {
    match record {
        [MARK_RECORDED, time @ ..] if time.len() >= TIME_BYTES => {
            let mut le = [0u8; 8];
            le[..TIME_BYTES].copy_from_slice(&time[..TIME_BYTES]);
            UNIX_EPOCH.checked_add(Duration::from_millis(u64::from_le_bytes(le)))
        }
        _ => None,
    }
}

/// A stored output without the time it was recorded, where it has one.
#[inline]
fn unrecorded(record: &[u8]) -> &[u8] {
    match record.first() {
        Some(&MARK_RECORDED) => record.get(RECORDED_LEN..).unwrap_or_default(),
        _ => record,
    }
}

/// The value of an `Ok` envelope, decoded; `None` for an `Err` envelope or one that does not
/// decode as `T`.
pub(crate) fn decode_ok<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    match unmark(bytes) {
        Ok((MARK_OK, value)) => decode(value).ok(),
        _ => None,
    }
}

/// A stored output whose envelope does not fit the call.
#[derive(Debug, thiserror::Error)]
enum EnvelopeError {
    #[error("the stored output is an error, but this call does not use `store_errors`")]
    ErrorNotExpected,
    #[error("the stored output does not start with an `Ok`/`Err` mark (first byte {0:?})")]
    UnknownMark(Option<u8>),
}

/// Splits a stored output into its mark and its value.
pub(crate) fn unmark(bytes: &[u8]) -> Result<(u8, &[u8]), BoxError> {
    match unrecorded(bytes).split_first() {
        Some((&mark, value)) if mark == MARK_OK || mark == MARK_ERR => Ok((mark, value)),
        other => Err(Box::new(EnvelopeError::UnknownMark(
            other.map(|(mark, _)| *mark),
        ))),
    }
}

/// A stored output (as the executor stores it: when it was recorded, its one-byte `Ok`/`Err`
/// mark, then the value) as JSON, to look at a record read from a store's CLI. Bytes show as
/// arrays of numbers; the time is left out ([`recorded_at`] reads it).
///
/// ```
/// use idempotent_core::output::{recorded_at, to_json};
/// use std::time::{Duration, UNIX_EPOCH};
///
/// // What a store holds for `Ok(Receipt { charge_id: "ch_1", amount_cents: 1999 })`, recorded
/// // at 2026-12-06 11:00:00 UTC.
/// let record = b"\xb3\x80\xbb\x02\x4b\xa2\x01\xb0\x0f\x0a\x09charge_id\x0a\x04ch_1\x0a\x0camount_cents\x03\xcf\x0f\x10";
/// let json = to_json(record).unwrap();
/// assert_eq!(json.to_string(), r#"{"ok":{"amount_cents":1999,"charge_id":"ch_1"}}"#);
/// assert_eq!(recorded_at(record), Some(UNIX_EPOCH + Duration::from_secs(1_796_554_800)));
/// ```
pub fn to_json(record: &[u8]) -> Result<serde_json::Value, OutputError> {
    if let Some(not_stored) = read_not_stored(record) {
        let reason = not_stored.map_err(|_| OutputError::Truncated { at: 0 })?;
        let reason = match reason {
            NotStored::TooLarge { size, limit } => {
                serde_json::json!({ "too_large": { "size": size, "limit": limit } })
            }
            NotStored::Unencodable { detail } => serde_json::json!({ "unencodable": detail }),
        };
        return Ok(serde_json::json!({ "not_stored": reason }));
    }
    let unmarked = unrecorded(record);
    let at = record.len() - unmarked.len();
    let (mark, value) = match unmarked.split_first() {
        Some((&MARK_OK, value)) => ("ok", value),
        Some((&MARK_ERR, value)) => ("err", value),
        Some((&byte, _)) => return Err(OutputError::UnexpectedByte { byte, at }),
        None => return Err(OutputError::Truncated { at }),
    };
    let value: serde_json::Value = decode(value)?;
    let mut object = serde_json::Map::new();
    object.insert(mark.to_owned(), value);
    Ok(serde_json::Value::Object(object))
}
