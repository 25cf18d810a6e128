//! The canonical encoding: a serde `Serializer` that streams any `Serialize` value straight into
//! SHA-256.
//!
//! The encoding is type-tagged and length-prefixed so that different values can never produce
//! the same byte stream (`("ab", "")` and `("a", "b")` differ), and it is normalised where Rust
//! types differ but values are the same, so that harmless refactors keep keys stable:
//!
//! * every integer type encodes the same value the same way (`5u8` = `5i64` = `5u128`): a tag
//!   and the zigzag LEB128 varint of the value when it fits an `i64`, else 16 little-endian
//!   bytes; lengths are unsigned LEB128 varints, so small values cost one byte each and a
//!   typical request fits one SHA-256 block;
//! * `f32` widens to `f64`, `-0.0` encodes as `0.0`, every NaN as one NaN;
//! * newtype structs are transparent (`OrderId(5)` = `5`);
//! * struct and type names are not encoded, field and variant names are;
//! * map entries are order-independent: each entry (its key, then its value) is hashed on its
//!   own, and the map is its tag, its entry count and the entry digests **sorted** bytewise, so
//!   a `HashMap` and a `BTreeMap` with the same entries agree. Two maps with different entries
//!   give different sorted lists, so making two maps collide is making SHA-256 collide. (Up
//!   to 0.1 the digests were summed mod 2^256; sums fall to generalized-birthday attacks.)
//!
//! Nothing here allocates on the success path for maps of up to `INLINE_MAP_ENTRIES` (32)
//! entries: their digests are sorted in a buffer on the stack. A larger map moves its digests
//! to one heap buffer; an error from a value's own `Serialize` impl also allocates. The golden
//! vectors in `tests/canonical.rs` pin the encoding: a change that alters them changes every
//! stored key and needs a major release.

use std::fmt::{self, Display, Write as _};

use serde::ser::{self, Serialize};

use crate::encoding::{
    serialize_compound, serialize_named, serialize_widened, serializer_types, tags,
};

/// A value's `Serialize` impl failed while it was being hashed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CanonicalError {
    message: String,
}

impl ser::Error for CanonicalError {
    fn custom<T: Display>(msg: T) -> Self {
        CanonicalError {
            message: msg.to_string(),
        }
    }
}

tags! {
    /// One-byte tags of the encoding. They never change meaning once released.
    mod tag {
        UNIT = 0x00, FALSE = 0x01, TRUE = 0x02,
        INT64 = 0x03, INT128 = 0x04, UINT128 = 0x05, FLOAT = 0x06, CHAR = 0x07,
        STR = 0x08, BYTES = 0x09, NONE = 0x0A, SOME = 0x0B,
        UNIT_VARIANT = 0x0C, NEWTYPE_VARIANT = 0x0D, SEQ = 0x0E, END = 0x0F,
        TUPLE_VARIANT = 0x10, MAP = 0x11, STRUCT = 0x12, STRUCT_VARIANT = 0x13,
    }
}

/// Where the encoding goes: SHA-256 directly, through a sink built for small writes.
pub(crate) use crate::sink::Sink;

/// Streams the canonical encoding of `value` into `sink`.
pub(crate) fn hash_into<T: Serialize + ?Sized>(
    sink: &mut Sink,
    value: &T,
) -> Result<(), CanonicalError> {
    value.serialize(Canon { h: sink })
}

/// SHA-256 of the canonical encoding of `value`.
pub(crate) fn digest<T: Serialize + ?Sized>(value: &T) -> Result<[u8; 32], CanonicalError> {
    let mut sink = Sink::new();
    hash_into(&mut sink, value)?;
    Ok(sink.finalize())
}

/// Start of a tuple of values hashed one by one (the arguments of a call).
#[inline]
pub(crate) fn begin_tuple(sink: &mut Sink) {
    sink.byte(tag::SEQ);
}

/// End of a tuple started with [`begin_tuple`].
#[inline]
pub(crate) fn end_tuple(sink: &mut Sink) {
    sink.byte(tag::END);
}

struct Canon<'a> {
    h: &'a mut Sink,
}

impl<'a> Canon<'a> {
    // The integer writers return the `Serializer`'s result, so that its methods forward to them.
    #[inline]
    fn int(self, v: i64) -> Result<(), CanonicalError> {
        self.h.byte(tag::INT64);
        // Zigzag: small magnitudes of either sign stay short.
        self.h.varint(((v << 1) ^ (v >> 63)) as u64);
        Ok(())
    }

    /// An integer beyond 64 bits: `tag`, then its 16 bytes, little-endian.
    fn wide(self, tag: u8, le_bytes: [u8; 16]) -> Result<(), CanonicalError> {
        self.h.byte(tag);
        self.h.bytes(&le_bytes);
        Ok(())
    }

    fn int128(self, v: i128) -> Result<(), CanonicalError> {
        match i64::try_from(v) {
            Ok(small) => self.int(small),
            Err(_) => self.wide(tag::INT128, v.to_le_bytes()),
        }
    }

    fn uint128(self, v: u128) -> Result<(), CanonicalError> {
        // Up to `i128::MAX`, the bytes of the same value as an `i128`.
        match i128::try_from(v) {
            Ok(signed) => self.int128(signed),
            Err(_) => self.wide(tag::UINT128, v.to_le_bytes()),
        }
    }

    /// Sequences and structs: `tag`, then the elements or fields.
    #[inline]
    fn compound(self, tag: u8) -> Result<Compound<'a>, CanonicalError> {
        self.h.byte(tag);
        Ok(Compound { h: self.h })
    }

    /// Variants: `tag`, the variant's name, then its content.
    #[inline]
    fn variant(self, name: &'static str, tag: u8) -> Result<Compound<'a>, CanonicalError> {
        self.h.byte(tag);
        write_str(self.h, name);
        Ok(Compound { h: self.h })
    }

    #[inline]
    fn unit_variant(self, name: &'static str) -> Result<(), CanonicalError> {
        self.variant(name, tag::UNIT_VARIANT)?;
        Ok(())
    }

    fn newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), CanonicalError> {
        let content = self.variant(name, tag::NEWTYPE_VARIANT)?;
        value.serialize(Canon { h: content.h })
    }
}

#[inline]
fn write_str(h: &mut Sink, s: &str) {
    h.tagged(tag::STR, s.as_bytes());
}

/// Counts the bytes a `Display` impl writes (first pass of `collect_str`).
struct CountingWriter(usize);

impl fmt::Write for CountingWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

/// Hashes the bytes a `Display` impl writes (second pass of `collect_str`).
struct HashingWriter<'a>(&'a mut Sink);

impl fmt::Write for HashingWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.bytes(s.as_bytes());
        Ok(())
    }
}

impl<'a> ser::Serializer for Canon<'a> {
    serializer_types!(Error = CanonicalError, Compound = Compound<'a>, Map = MapState<'a>);

    // Every integer type encodes the same value the same way, and `f32` widens to `f64`.
    serialize_widened! {
        int(i64) <- serialize_i8(i8), serialize_i16(i16), serialize_i32(i32), serialize_i64(i64),
            serialize_u8(u8), serialize_u16(u16), serialize_u32(u32);
        int128(i128) <- serialize_i128(i128);
        uint128(u128) <- serialize_u128(u128);
        serialize_f64(f64) <- serialize_f32(f32);
    }

    serialize_named!(
        struct = tag::STRUCT,
        tuple_variant = tag::TUPLE_VARIANT,
        struct_variant = tag::STRUCT_VARIANT,
    );

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), CanonicalError> {
        self.h.byte(if v { tag::TRUE } else { tag::FALSE });
        Ok(())
    }

    #[inline]
    fn serialize_u64(self, v: u64) -> Result<(), CanonicalError> {
        // The same bytes as through `uint128`, without its two range checks for the values
        // that fit an `i64` (nearly all).
        match i64::try_from(v) {
            Ok(small) => self.int(small),
            Err(_) => self.uint128(u128::from(v)),
        }
    }

    #[inline]
    fn serialize_f64(self, v: f64) -> Result<(), CanonicalError> {
        let canonical = if v.is_nan() {
            f64::NAN
        } else if v == 0.0 {
            0.0
        } else {
            v
        };
        self.h.byte(tag::FLOAT);
        self.h.bytes(&canonical.to_bits().to_le_bytes());
        Ok(())
    }

    #[inline]
    fn serialize_char(self, v: char) -> Result<(), CanonicalError> {
        self.h.byte(tag::CHAR);
        self.h.bytes(&u32::from(v).to_le_bytes());
        Ok(())
    }

    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), CanonicalError> {
        write_str(self.h, v);
        Ok(())
    }

    #[inline]
    fn serialize_bytes(self, v: &[u8]) -> Result<(), CanonicalError> {
        self.h.byte(tag::BYTES);
        self.h.varint(v.len() as u64);
        self.h.bytes(v);
        Ok(())
    }

    #[inline]
    fn serialize_none(self) -> Result<(), CanonicalError> {
        self.h.byte(tag::NONE);
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), CanonicalError> {
        self.h.byte(tag::SOME);
        value.serialize(self)
    }

    #[inline]
    fn serialize_unit(self) -> Result<(), CanonicalError> {
        self.h.byte(tag::UNIT);
        Ok(())
    }

    #[inline]
    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a>, CanonicalError> {
        self.compound(tag::SEQ)
    }

    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<MapState<'a>, CanonicalError> {
        Ok(MapState {
            parent: self.h,
            entry: Sink::new(),
            digests: EntryDigests::for_len(len),
        })
    }

    // serde's default `collect_str` formats into a `String`; two passes over `Display` (count,
    // then hash) give the same bytes as `serialize_str` without allocating.
    fn collect_str<T: Display + ?Sized>(self, value: &T) -> Result<(), CanonicalError> {
        let mut counter = CountingWriter(0);
        write!(counter, "{value}").map_err(ser::Error::custom)?;
        self.h.byte(tag::STR);
        self.h.varint(counter.0 as u64);
        write!(HashingWriter(self.h), "{value}").map_err(ser::Error::custom)?;
        Ok(())
    }
}

/// Sequences, tuples and structs: elements in order, then an end tag.
struct Compound<'a> {
    h: &'a mut Sink,
}

impl Compound<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonicalError> {
        value.serialize(Canon { h: self.h })
    }

    fn field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), CanonicalError> {
        write_str(self.h, name);
        value.serialize(Canon { h: self.h })
    }

    fn finish(self) -> Result<(), CanonicalError> {
        self.h.byte(tag::END);
        Ok(())
    }
}

// Sequences, tuples and structs: elements in order, or named fields in order.
serialize_compound!([] Compound<'_>, Error = CanonicalError);

/// How many entries a map may have for its hashing to allocate nothing: up to this many, the
/// entry digests are sorted in a buffer on the stack (1 KiB); a larger map moves them to one
/// heap buffer.
pub(crate) const INLINE_MAP_ENTRIES: usize = 32;

/// The largest capacity taken from a map's own length hint, so that a wrong hint cannot ask
/// for a huge buffer up front.
const LARGEST_HINT: usize = 4096;

/// The digests of a map's entries: on the stack up to [`INLINE_MAP_ENTRIES`], then all of
/// them on the heap.
struct EntryDigests {
    inline: [[u8; 32]; INLINE_MAP_ENTRIES],
    len: usize,
    /// Empty (and unallocated, unless the map's length hint was over the inline size) until
    /// the inline buffer overflows; then every digest.
    heap: Vec<[u8; 32]>,
}

impl EntryDigests {
    /// A buffer for a map of `len` entries, if its `Serialize` impl says.
    fn for_len(len: Option<usize>) -> EntryDigests {
        let heap = match len {
            Some(len) if len > INLINE_MAP_ENTRIES => Vec::with_capacity(len.min(LARGEST_HINT)),
            _ => Vec::new(),
        };
        EntryDigests {
            inline: [[0; 32]; INLINE_MAP_ENTRIES],
            len: 0,
            heap,
        }
    }

    fn push(&mut self, digest: [u8; 32]) {
        if !self.heap.is_empty() {
            self.heap.push(digest);
        } else if self.len < INLINE_MAP_ENTRIES {
            self.inline[self.len] = digest;
            self.len += 1;
        } else {
            self.heap.reserve(2 * INLINE_MAP_ENTRIES);
            self.heap.extend_from_slice(&self.inline);
            self.heap.push(digest);
        }
    }

    fn as_mut_slice(&mut self) -> &mut [[u8; 32]] {
        if self.heap.is_empty() {
            &mut self.inline[..self.len]
        } else {
            &mut self.heap
        }
    }
}

/// Maps: every entry hashed on its own; at the end the map tag, the entry count and the entry
/// digests in ascending order go to the parent (order-independent, and as hard to make collide
/// as SHA-256).
struct MapState<'a> {
    parent: &'a mut Sink,
    entry: Sink,
    digests: EntryDigests,
}

impl ser::SerializeMap for MapState<'_> {
    type Ok = ();
    type Error = CanonicalError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Self::Error> {
        key.serialize(Canon { h: &mut self.entry })
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Self::Error> {
        value.serialize(Canon { h: &mut self.entry })?;
        self.digests.push(self.entry.finalize_reset());
        Ok(())
    }

    #[inline]
    fn end(mut self) -> Result<(), CanonicalError> {
        let digests = self.digests.as_mut_slice();
        digests.sort_unstable();
        self.parent.byte(tag::MAP);
        self.parent.varint(digests.len() as u64);
        for digest in digests.iter() {
            self.parent.bytes(digest);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::digest;

    #[test]
    fn integer_types_agree() {
        let five = digest(&5u8).unwrap();
        assert_eq!(five, digest(&5i64).unwrap());
        assert_eq!(five, digest(&5u128).unwrap());
        assert_ne!(five, digest(&5.0f64).unwrap());
        assert_eq!(
            digest(&u64::MAX).unwrap(),
            digest(&u128::from(u64::MAX)).unwrap()
        );
        assert_ne!(digest(&u128::MAX).unwrap(), digest(&i128::MAX).unwrap());
    }

    #[test]
    fn zeroes_and_nans_are_normalised() {
        assert_eq!(digest(&0.0f64).unwrap(), digest(&-0.0f64).unwrap());
        assert_eq!(digest(&f64::NAN).unwrap(), digest(&-f64::NAN).unwrap());
        assert_eq!(digest(&1.5f32).unwrap(), digest(&1.5f64).unwrap());
    }

    #[test]
    fn maps_are_order_independent() {
        let hash: HashMap<String, u32> = (0..50).map(|i| (format!("k{i}"), i)).collect();
        let tree: BTreeMap<String, u32> = hash.clone().into_iter().collect();
        assert_eq!(digest(&hash).unwrap(), digest(&tree).unwrap());
    }

    #[test]
    fn string_boundaries_matter() {
        assert_ne!(digest(&("ab", "")).unwrap(), digest(&("a", "b")).unwrap());
        assert_ne!(
            digest(&vec!["ab"]).unwrap(),
            digest(&vec!["a", "b"]).unwrap()
        );
    }

    #[test]
    fn collect_str_equals_serialize_str() {
        struct Shown;
        impl serde::Serialize for Shown {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&format_args!("{}-{}", "order", 42))
            }
        }
        assert_eq!(digest(&Shown).unwrap(), digest("order-42").unwrap());
    }
}
