//! How outputs are stored: a compact, self-describing binary encoding of serde's data model.
//!
//! Every value starts with a one-byte tag; what follows depends on it:
//!
//! | tag | value | then |
//! |---|---|---|
//! | `0x00` | unit | — |
//! | `0x01` / `0x02` | `false` / `true` | — |
//! | `0x03` | integer ≥ 0 | unsigned LEB128 varint |
//! | `0x04` | integer < 0 | varint of `-1 - v` |
//! | `0x05` / `0x06` | `u128` / `i128` beyond 64 bits | 16 bytes, little-endian |
//! | `0x07` / `0x08` | `f32` / `f64` | 4 / 8 bytes, little-endian (exact: NaN and infinities too) |
//! | `0x09` | `char` | varint of its code point |
//! | `0x0A` / `0x0B` | string / bytes | varint length, then the bytes |
//! | `0x0C` / `0x0D` | `None` / `Some` | `Some`: the value |
//! | `0x0E` | sequence, tuple | values, then `0x10` |
//! | `0x0F` | map, struct | key, value, key, value …, then `0x10` |
//!
//! Structs are maps keyed by field name and enums take the shapes JSON gives them (a unit
//! variant is its name; any other variant a one-entry map from its name to its content), so
//! every serde feature that works with JSON works here — `flatten`, `untagged`,
//! `skip_serializing_if`, `serde_json::Value` outputs — while a replay decodes without parsing
//! text: no escapes, no number parsing, strings borrowed from the record. Like JSON it reports
//! itself human-readable, so types encode as they would in JSON (a `Uuid` as its text).
//!
//! A record that does not decode (damaged, written by something else, or for another output
//! type) is an [`OutputError`], never a panic; nesting is bounded at [`MAX_DEPTH`] levels on
//! both sides, so no record can exhaust the stack.

mod de;
pub mod envelope;
mod ser;
#[cfg(test)]
mod tests;

pub(crate) use de::decode;
#[allow(deprecated)]
pub use envelope::{DropErrors, StoreErrors};
pub use envelope::{OutputMode, OutputsAndErrors, OutputsOnly, recorded_at, to_json};
pub(crate) use ser::{Count, encode_into};

/// Deepest nesting of sequences, maps and options encoded or decoded (as serde_json's limit).
pub const MAX_DEPTH: usize = 128;

crate::encoding::tags! {
    /// The tag that starts each encoded value (the table above).
    mod tag {
        UNIT = 0x00, FALSE = 0x01, TRUE = 0x02,
        UINT = 0x03, NINT = 0x04, U128 = 0x05, I128 = 0x06,
        F32 = 0x07, F64 = 0x08, CHAR = 0x09,
        STR = 0x0A, BYTES = 0x0B, NONE = 0x0C, SOME = 0x0D,
        SEQ = 0x0E, MAP = 0x0F, END = 0x10,
    }
}

/// An output could not be encoded for storage, or a stored output could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    /// The value's own `Serialize` or `Deserialize` impl reported this (for a decode, usually
    /// a record written for another output type).
    #[error("{0}")]
    Custom(String),
    /// The record ends in the middle of a value.
    #[error("the stored output ends early (at byte {at})")]
    Truncated {
        /// Where the input ended.
        at: usize,
    },
    /// A byte that starts no value here.
    #[error("the stored output has an unexpected byte 0x{byte:02x} at byte {at}")]
    UnexpectedByte {
        /// The byte.
        byte: u8,
        /// Its offset.
        at: usize,
    },
    /// Bytes left over after the value.
    #[error("the stored output has {left} bytes after its value")]
    TrailingBytes {
        /// How many.
        left: usize,
    },
    /// A string that is not UTF-8.
    #[error("the stored output has a string that is not UTF-8 at byte {at}")]
    InvalidUtf8 {
        /// Where the string starts.
        at: usize,
    },
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("the output nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
}
