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

use std::fmt::Display;

use serde::de::{self, DeserializeSeed, IntoDeserializer as _, Visitor};
use serde::ser::{self, Serialize};

/// Deepest nesting of sequences, maps and options encoded or decoded (as serde_json's limit).
pub const MAX_DEPTH: usize = 128;

mod tag {
    pub(super) const UNIT: u8 = 0x00;
    pub(super) const FALSE: u8 = 0x01;
    pub(super) const TRUE: u8 = 0x02;
    pub(super) const UINT: u8 = 0x03;
    pub(super) const NINT: u8 = 0x04;
    pub(super) const U128: u8 = 0x05;
    pub(super) const I128: u8 = 0x06;
    pub(super) const F32: u8 = 0x07;
    pub(super) const F64: u8 = 0x08;
    pub(super) const CHAR: u8 = 0x09;
    pub(super) const STR: u8 = 0x0A;
    pub(super) const BYTES: u8 = 0x0B;
    pub(super) const NONE: u8 = 0x0C;
    pub(super) const SOME: u8 = 0x0D;
    pub(super) const SEQ: u8 = 0x0E;
    pub(super) const MAP: u8 = 0x0F;
    pub(super) const END: u8 = 0x10;
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

impl ser::Error for OutputError {
    fn custom<T: Display>(msg: T) -> Self {
        OutputError::Custom(msg.to_string())
    }
}

impl de::Error for OutputError {
    fn custom<T: Display>(msg: T) -> Self {
        OutputError::Custom(msg.to_string())
    }
}

/// Where encoded bytes go: a buffer, or a counter that only measures.
pub(crate) trait Out {
    fn byte(&mut self, byte: u8);
    fn bytes(&mut self, bytes: &[u8]);
}

impl Out for Vec<u8> {
    #[inline]
    fn byte(&mut self, byte: u8) {
        self.push(byte);
    }

    #[inline]
    fn bytes(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts the bytes an encoding would take (the HTTP layer measures its records with it).
#[cfg_attr(not(feature = "http"), allow(dead_code))]
#[derive(Debug, Default)]
pub(crate) struct Count(pub(crate) usize);

impl Out for Count {
    fn byte(&mut self, _byte: u8) {
        self.0 += 1;
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// Appends the encoding of `value` to `out`.
pub(crate) fn encode_into<W: Out, T: Serialize + ?Sized>(
    out: &mut W,
    value: &T,
) -> Result<(), OutputError> {
    value.serialize(&mut Encoder { out, depth: 0 })
}

/// Decodes one value that must fill `bytes` exactly.
pub(crate) fn decode<'de, T: de::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, OutputError> {
    let mut decoder = Decoder {
        input: bytes,
        at: 0,
        depth: 0,
    };
    let value = T::deserialize(&mut decoder)?;
    match bytes.len() - decoder.at {
        0 => Ok(value),
        left => Err(OutputError::TrailingBytes { left }),
    }
}

/// A stored output (as the executor stores it: its one-byte `Ok`/`Err` mark, then the value) as
/// JSON, to look at a record read from a store's CLI. Bytes show as arrays of numbers.
///
/// ```
/// use idempotent_core::output::to_json;
///
/// // What a store holds for `Ok(Receipt { charge_id: "ch_1", amount_cents: 1999 })`.
/// let record = b"\xb0\x0f\x0a\x09charge_id\x0a\x04ch_1\x0a\x0camount_cents\x03\xcf\x0f\x10";
/// let json = to_json(record).unwrap();
/// assert_eq!(json.to_string(), r#"{"ok":{"amount_cents":1999,"charge_id":"ch_1"}}"#);
/// ```
pub fn to_json(record: &[u8]) -> Result<serde_json::Value, OutputError> {
    let (mark, value) = match record.split_first() {
        Some((&crate::executor::MARK_OK, value)) => ("ok", value),
        Some((&crate::executor::MARK_ERR, value)) => ("err", value),
        Some((&byte, _)) => return Err(OutputError::UnexpectedByte { byte, at: 0 }),
        None => return Err(OutputError::Truncated { at: 0 }),
    };
    let value: serde_json::Value = decode(value)?;
    let mut object = serde_json::Map::new();
    object.insert(mark.to_owned(), value);
    Ok(serde_json::Value::Object(object))
}

struct Encoder<'a, W: Out> {
    out: &'a mut W,
    depth: usize,
}

impl<W: Out> Encoder<'_, W> {
    #[inline]
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.out.byte((value as u8) | 0x80);
            value >>= 7;
        }
        self.out.byte(value as u8);
    }

    #[inline]
    fn str(&mut self, text: &str) {
        self.out.byte(tag::STR);
        self.varint(text.len() as u64);
        self.out.bytes(text.as_bytes());
    }

    fn int(&mut self, v: i64) {
        if v >= 0 {
            self.out.byte(tag::UINT);
            self.varint(v as u64);
        } else {
            self.out.byte(tag::NINT);
            self.varint(!(v as u64));
        }
    }

    /// Opens a sequence or map (`open`), one level deeper.
    fn open(&mut self, open: u8) -> Result<(), OutputError> {
        if self.depth >= MAX_DEPTH {
            return Err(OutputError::TooDeep);
        }
        self.depth += 1;
        self.out.byte(open);
        Ok(())
    }

    fn close(&mut self) {
        self.depth -= 1;
        self.out.byte(tag::END);
    }
}

impl<'w, W: Out> Encoder<'w, W> {
    /// A tuple or struct variant: a one-entry map from its name to its content (`content`
    /// opens a sequence or a map), closed by the returned compound.
    fn variant<'a>(
        &'a mut self,
        variant: &'static str,
        content: u8,
    ) -> Result<Compound<'a, 'w, W>, OutputError> {
        self.open(tag::MAP)?;
        self.str(variant);
        self.open(content)?;
        Ok(Compound {
            encoder: self,
            closes: 2,
        })
    }
}

impl<'a, 'w, W: Out> ser::Serializer for &'a mut Encoder<'w, W> {
    type Ok = ();
    type Error = OutputError;
    type SerializeSeq = Compound<'a, 'w, W>;
    type SerializeTuple = Compound<'a, 'w, W>;
    type SerializeTupleStruct = Compound<'a, 'w, W>;
    type SerializeTupleVariant = Compound<'a, 'w, W>;
    type SerializeMap = Compound<'a, 'w, W>;
    type SerializeStruct = Compound<'a, 'w, W>;
    type SerializeStructVariant = Compound<'a, 'w, W>;

    fn serialize_bool(self, v: bool) -> Result<(), OutputError> {
        self.out.byte(if v { tag::TRUE } else { tag::FALSE });
        Ok(())
    }

    fn serialize_i8(self, v: i8) -> Result<(), OutputError> {
        self.int(i64::from(v));
        Ok(())
    }

    fn serialize_i16(self, v: i16) -> Result<(), OutputError> {
        self.int(i64::from(v));
        Ok(())
    }

    fn serialize_i32(self, v: i32) -> Result<(), OutputError> {
        self.int(i64::from(v));
        Ok(())
    }

    fn serialize_i64(self, v: i64) -> Result<(), OutputError> {
        self.int(v);
        Ok(())
    }

    fn serialize_i128(self, v: i128) -> Result<(), OutputError> {
        if let Ok(small) = i64::try_from(v) {
            self.int(small);
        } else if let Ok(unsigned) = u64::try_from(v) {
            self.out.byte(tag::UINT);
            self.varint(unsigned);
        } else {
            self.out.byte(tag::I128);
            self.out.bytes(&v.to_le_bytes());
        }
        Ok(())
    }

    fn serialize_u8(self, v: u8) -> Result<(), OutputError> {
        self.serialize_u64(u64::from(v))
    }

    fn serialize_u16(self, v: u16) -> Result<(), OutputError> {
        self.serialize_u64(u64::from(v))
    }

    fn serialize_u32(self, v: u32) -> Result<(), OutputError> {
        self.serialize_u64(u64::from(v))
    }

    fn serialize_u64(self, v: u64) -> Result<(), OutputError> {
        self.out.byte(tag::UINT);
        self.varint(v);
        Ok(())
    }

    fn serialize_u128(self, v: u128) -> Result<(), OutputError> {
        match u64::try_from(v) {
            Ok(small) => self.serialize_u64(small),
            Err(_) => {
                self.out.byte(tag::U128);
                self.out.bytes(&v.to_le_bytes());
                Ok(())
            }
        }
    }

    fn serialize_f32(self, v: f32) -> Result<(), OutputError> {
        self.out.byte(tag::F32);
        self.out.bytes(&v.to_bits().to_le_bytes());
        Ok(())
    }

    fn serialize_f64(self, v: f64) -> Result<(), OutputError> {
        self.out.byte(tag::F64);
        self.out.bytes(&v.to_bits().to_le_bytes());
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), OutputError> {
        self.out.byte(tag::CHAR);
        self.varint(u64::from(u32::from(v)));
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<(), OutputError> {
        self.str(v);
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), OutputError> {
        self.out.byte(tag::BYTES);
        self.varint(v.len() as u64);
        self.out.bytes(v);
        Ok(())
    }

    fn serialize_none(self) -> Result<(), OutputError> {
        self.out.byte(tag::NONE);
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), OutputError> {
        if self.depth >= MAX_DEPTH {
            return Err(OutputError::TooDeep);
        }
        self.out.byte(tag::SOME);
        self.depth += 1;
        value.serialize(&mut *self)?;
        self.depth -= 1;
        Ok(())
    }

    fn serialize_unit(self) -> Result<(), OutputError> {
        self.out.byte(tag::UNIT);
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), OutputError> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), OutputError> {
        self.str(variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), OutputError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), OutputError> {
        self.open(tag::MAP)?;
        self.str(variant);
        value.serialize(&mut *self)?;
        self.close();
        Ok(())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, OutputError> {
        self.open(tag::SEQ)?;
        Ok(Compound {
            encoder: self,
            closes: 1,
        })
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, OutputError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, OutputError> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, OutputError> {
        self.variant(variant, tag::SEQ)
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, OutputError> {
        self.open(tag::MAP)?;
        Ok(Compound {
            encoder: self,
            closes: 1,
        })
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, OutputError> {
        self.serialize_map(Some(len))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, OutputError> {
        self.variant(variant, tag::MAP)
    }
}

/// An open sequence or map; `closes` end tags finish it (two for a variant's content).
struct Compound<'a, 'w, W: Out> {
    encoder: &'a mut Encoder<'w, W>,
    closes: u8,
}

impl<W: Out> Compound<'_, '_, W> {
    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), OutputError> {
        value.serialize(&mut *self.encoder)
    }

    fn finish(self) -> Result<(), OutputError> {
        for _ in 0..self.closes {
            self.encoder.close();
        }
        Ok(())
    }
}

macro_rules! elements {
    ($($trait:ident :: $method:ident),*) => {$(
        impl<W: Out> ser::$trait for Compound<'_, '_, W> {
            type Ok = ();
            type Error = OutputError;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), OutputError> {
                self.value(value)
            }

            fn end(self) -> Result<(), OutputError> {
                self.finish()
            }
        }
    )*};
}

elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

macro_rules! fields {
    ($($trait:ident),*) => {$(
        impl<W: Out> ser::$trait for Compound<'_, '_, W> {
            type Ok = ();
            type Error = OutputError;

            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), OutputError> {
                self.encoder.str(key);
                self.value(value)
            }

            fn end(self) -> Result<(), OutputError> {
                self.finish()
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);

impl<W: Out> ser::SerializeMap for Compound<'_, '_, W> {
    type Ok = ();
    type Error = OutputError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), OutputError> {
        self.value(key)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), OutputError> {
        self.value(value)
    }

    fn end(self) -> Result<(), OutputError> {
        self.finish()
    }
}

struct Decoder<'de> {
    input: &'de [u8],
    at: usize,
    depth: usize,
}

impl<'de> Decoder<'de> {
    #[inline]
    fn peek(&self) -> Result<u8, OutputError> {
        self.input
            .get(self.at)
            .copied()
            .ok_or(OutputError::Truncated { at: self.at })
    }

    #[inline]
    fn next(&mut self) -> Result<u8, OutputError> {
        let byte = self.peek()?;
        self.at += 1;
        Ok(byte)
    }

    fn unexpected(&self, byte: u8) -> OutputError {
        OutputError::UnexpectedByte {
            byte,
            at: self.at.saturating_sub(1),
        }
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, OutputError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.next()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.unexpected(byte));
            }
            value |= bits << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(self.unexpected(0x80))
    }

    #[inline]
    fn take(&mut self, len: u64) -> Result<&'de [u8], OutputError> {
        let start = self.at;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|&end| end <= self.input.len())
            .ok_or(OutputError::Truncated {
                at: self.input.len(),
            })?;
        self.at = end;
        Ok(&self.input[start..end])
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], OutputError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    /// The bytes of a string whose tag was read.
    #[inline]
    fn str_body(&mut self) -> Result<&'de str, OutputError> {
        let start = self.at;
        let len = self.varint()?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| OutputError::InvalidUtf8 { at: start })
    }

    fn descend(&mut self) -> Result<(), OutputError> {
        if self.depth >= MAX_DEPTH {
            return Err(OutputError::TooDeep);
        }
        self.depth += 1;
        Ok(())
    }

    /// Reads the end tag of a variant's one-entry map.
    fn end_of_variant(&mut self) -> Result<(), OutputError> {
        match self.next()? {
            tag::END => {
                self.depth -= 1;
                Ok(())
            }
            other => Err(self.unexpected(other)),
        }
    }

    fn visit_seq<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, OutputError> {
        self.descend()?;
        let mut access = Elements {
            decoder: self,
            done: false,
        };
        let value = visitor.visit_seq(&mut access)?;
        access.finish()?;
        self.depth -= 1;
        Ok(value)
    }

    fn visit_map<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, OutputError> {
        self.descend()?;
        let mut access = Elements {
            decoder: self,
            done: false,
        };
        let value = visitor.visit_map(&mut access)?;
        access.finish()?;
        self.depth -= 1;
        Ok(value)
    }
}

impl<'de> de::Deserializer<'de> for &mut Decoder<'de> {
    type Error = OutputError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, OutputError> {
        match self.next()? {
            tag::UNIT => visitor.visit_unit(),
            tag::FALSE => visitor.visit_bool(false),
            tag::TRUE => visitor.visit_bool(true),
            tag::UINT => visitor.visit_u64(self.varint()?),
            tag::NINT => {
                let magnitude = self.varint()?;
                if magnitude > i64::MAX as u64 {
                    return Err(self.unexpected(tag::NINT));
                }
                visitor.visit_i64(!(magnitude as i64))
            }
            tag::U128 => visitor.visit_u128(u128::from_le_bytes(self.fixed()?)),
            tag::I128 => visitor.visit_i128(i128::from_le_bytes(self.fixed()?)),
            tag::F32 => visitor.visit_f32(f32::from_bits(u32::from_le_bytes(self.fixed()?))),
            tag::F64 => visitor.visit_f64(f64::from_bits(u64::from_le_bytes(self.fixed()?))),
            tag::CHAR => {
                let code = self.varint()?;
                match u32::try_from(code).ok().and_then(char::from_u32) {
                    Some(c) => visitor.visit_char(c),
                    None => Err(self.unexpected(tag::CHAR)),
                }
            }
            tag::STR => visitor.visit_borrowed_str(self.str_body()?),
            tag::BYTES => {
                let len = self.varint()?;
                visitor.visit_borrowed_bytes(self.take(len)?)
            }
            tag::NONE => visitor.visit_none(),
            tag::SOME => {
                self.descend()?;
                let value = visitor.visit_some(&mut *self)?;
                self.depth -= 1;
                Ok(value)
            }
            tag::SEQ => self.visit_seq(visitor),
            tag::MAP => self.visit_map(visitor),
            other => Err(self.unexpected(other)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, OutputError> {
        match self.peek()? {
            tag::NONE => {
                self.at += 1;
                visitor.visit_none()
            }
            tag::SOME => self.deserialize_any(visitor),
            // A value written without `Some` (by a type that serializes itself by hand).
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, OutputError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, OutputError> {
        match self.next()? {
            tag::STR => {
                let name = self.str_body()?;
                visitor.visit_enum(name.into_deserializer())
            }
            tag::MAP => {
                self.descend()?;
                visitor.visit_enum(Variant { decoder: self })
            }
            other => Err(self.unexpected(other)),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, OutputError> {
        if self.peek()? == tag::BYTES {
            // Bytes written with `serialize_bytes`, read by a type that wants a sequence.
            self.at += 1;
            let len = self.varint()?;
            let bytes = self.take(len)?;
            return visitor.visit_seq(de::value::SeqDeserializer::new(bytes.iter().copied()));
        }
        self.deserialize_any(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, OutputError> {
        self.deserialize_any(de::IgnoredAny)?;
        visitor.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        true
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct tuple tuple_struct map struct identifier
    }
}

/// The elements of a sequence, or the entries of a map, up to the end tag.
struct Elements<'a, 'de> {
    decoder: &'a mut Decoder<'de>,
    done: bool,
}

impl Elements<'_, '_> {
    /// Whether the end tag is next (and consumes it).
    fn at_end(&mut self) -> Result<bool, OutputError> {
        if self.done {
            return Ok(true);
        }
        if self.decoder.peek()? == tag::END {
            self.decoder.at += 1;
            self.done = true;
        }
        Ok(self.done)
    }

    /// The visitor returned: it must have read every element.
    fn finish(&mut self) -> Result<(), OutputError> {
        if self.at_end()? {
            Ok(())
        } else {
            Err(OutputError::Custom(
                "the stored output has more elements than its type reads".to_owned(),
            ))
        }
    }
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de> {
    type Error = OutputError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, OutputError> {
        if self.at_end()? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.decoder).map(Some)
    }
}

impl<'de> de::MapAccess<'de> for Elements<'_, 'de> {
    type Error = OutputError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, OutputError> {
        if self.at_end()? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.decoder).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, OutputError> {
        seed.deserialize(&mut *self.decoder)
    }
}

/// A variant written as a one-entry map from its name to its content.
struct Variant<'a, 'de> {
    decoder: &'a mut Decoder<'de>,
}

impl<'de> de::EnumAccess<'de> for Variant<'_, 'de> {
    type Error = OutputError;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self), OutputError> {
        let name = seed.deserialize(&mut *self.decoder)?;
        Ok((name, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, 'de> {
    type Error = OutputError;

    fn unit_variant(self) -> Result<(), OutputError> {
        <() as de::Deserialize>::deserialize(&mut *self.decoder)?;
        self.decoder.end_of_variant()
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, OutputError> {
        let value = seed.deserialize(&mut *self.decoder)?;
        self.decoder.end_of_variant()?;
        Ok(value)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, OutputError> {
        let value = de::Deserializer::deserialize_seq(&mut *self.decoder, visitor)?;
        self.decoder.end_of_variant()?;
        Ok(value)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, OutputError> {
        let value = de::Deserializer::deserialize_map(&mut *self.decoder, visitor)?;
        self.decoder.end_of_variant()?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::fmt::Debug;

    use proptest::prelude::*;
    use serde::{Deserialize, Serialize, de::DeserializeOwned};

    use super::{MAX_DEPTH, OutputError, decode, encode_into, tag};

    fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(&mut out, value).unwrap();
        out
    }

    #[track_caller]
    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: T) {
        let bytes = encode(&value);
        let back: T = decode(&bytes).unwrap_or_else(|e| panic!("{value:?}: {e}"));
        assert_eq!(back, value);
        // The same value as JSON and as our encoding reads back the same through
        // `serde_json::Value` (the JSON data model is preserved).
        let via_ours: serde_json::Value = decode(&bytes).unwrap();
        let via_json = serde_json::to_value(&value).unwrap();
        if via_json.to_string().len() < 10_000 {
            assert_eq!(via_ours, via_json, "{value:?}");
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Receipt {
        charge_id: String,
        amount_cents: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Outcome {
        Declined,
        Charged(u64),
        Split(u64, i32),
        Refund { id: String, cents: i64 },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Event {
        Paid { cents: u64 },
        Failed { reason: String },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(untagged)]
    enum Loose {
        Number(i64),
        Text(String),
        Pair { a: bool, b: Option<u8> },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Inner {
        x: u32,
        y: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Outer {
        id: u32,
        #[serde(flatten)]
        inner: Inner,
        #[serde(flatten)]
        extra: BTreeMap<String, serde_json::Value>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Newtype(String);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Unit;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Tuple(u8, String, Option<()>);

    #[test]
    fn serde_features_round_trip() {
        round_trip(Receipt {
            charge_id: "ch_1".into(),
            amount_cents: 1999,
            note: None,
            tags: vec![],
        });
        round_trip(Receipt {
            charge_id: "caf\u{e9} \"quoted\" \\ \n".into(),
            amount_cents: u64::MAX,
            note: Some("n".into()),
            tags: vec!["a".into(), String::new()],
        });
        for outcome in [
            Outcome::Declined,
            Outcome::Charged(5),
            Outcome::Split(1, -2),
            Outcome::Refund {
                id: "r".into(),
                cents: i64::MIN,
            },
        ] {
            round_trip(outcome);
        }
        round_trip(Event::Paid { cents: 3 });
        round_trip(Event::Failed {
            reason: "card".into(),
        });
        round_trip(Loose::Number(-7));
        round_trip(Loose::Text("t".into()));
        round_trip(Loose::Pair {
            a: true,
            b: Some(3),
        });
        let mut extra = BTreeMap::new();
        extra.insert(
            "more".to_owned(),
            serde_json::json!({"k": [1, 2.5, null, "s"]}),
        );
        round_trip(Outer {
            id: 1,
            inner: Inner {
                x: 2,
                y: "y".into(),
            },
            extra,
        });
        round_trip(Newtype("n".into()));
        round_trip(Unit);
        round_trip(Tuple(1, "two".into(), Some(())));
        round_trip(());
        round_trip(Some(Some(3u8)));
        round_trip((true, false, 'x', '\u{1f980}'));
        round_trip(vec![Some(1i16), None, Some(-1)]);
        round_trip(serde_json::json!({"a": {"b": [1, -1, 1.5, true, null, "x"]}}));
    }

    #[test]
    fn numbers_are_exact() {
        let back: (u128, i128, u128, i128) =
            decode(&encode(&(u128::MAX, i128::MIN, 5u128, -5i128))).unwrap();
        assert_eq!(back, (u128::MAX, i128::MIN, 5, -5));
        let floats: (f64, f64, f64, f32, f64) =
            decode(&encode(&(f64::NAN, f64::INFINITY, -0.0, 0.1f32, 0.1 + 0.2))).unwrap();
        assert!(floats.0.is_nan());
        assert_eq!(floats.1, f64::INFINITY);
        assert!(floats.2 == 0.0 && floats.2.is_sign_negative());
        assert_eq!(floats.3, 0.1f32);
        assert_eq!(floats.4, 0.1 + 0.2);
        // Integers read into any integer type that holds them, and refuse the rest.
        let small: u8 = decode(&encode(&200u64)).unwrap();
        assert_eq!(small, 200);
        assert!(decode::<u8>(&encode(&300u64)).is_err());
        assert!(decode::<u64>(&encode(&-1i64)).is_err());
    }

    #[test]
    fn maps_keep_their_key_types() {
        let map: HashMap<u32, String> = (0..20).map(|i| (i, format!("v{i}"))).collect();
        let back: HashMap<u32, String> = decode(&encode(&map)).unwrap();
        assert_eq!(back, map);
    }

    #[test]
    fn strings_are_borrowed_from_the_record() {
        struct Raw(&'static [u8]);
        impl Serialize for Raw {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        let bytes = encode(&("borrowed", Raw(b"raw")));
        let (text, raw): (&str, &[u8]) = decode(&bytes).unwrap();
        assert_eq!((text, raw), ("borrowed", b"raw".as_slice()));
    }

    #[test]
    fn another_type_is_an_error_not_a_panic() {
        let bytes = encode(&Outcome::Charged(5));
        assert!(decode::<Receipt>(&bytes).is_err());
        assert!(decode::<Vec<u8>>(&bytes).is_err());
        assert!(decode::<String>(&encode(&5u8)).is_err());
        // Fewer fields than the record has: refused (the record is for another type).
        assert!(decode::<(u8, u8)>(&encode(&(1u8, 2u8, 3u8))).is_err());
    }

    #[test]
    fn damaged_records_are_errors() {
        let good = encode(&Receipt {
            charge_id: "ch_1".into(),
            amount_cents: 1999,
            note: Some("n".into()),
            tags: vec!["t".into()],
        });
        for cut in 0..good.len() {
            assert!(decode::<Receipt>(&good[..cut]).is_err(), "cut at {cut}");
            let _ = decode::<serde_json::Value>(&good[..cut]);
        }
        let mut trailing = good.clone();
        trailing.push(tag::UNIT);
        assert_eq!(
            decode::<Receipt>(&trailing).unwrap_err(),
            OutputError::TrailingBytes { left: 1 }
        );
        for byte in 0..=u8::MAX {
            let mut flipped = good.clone();
            for at in 0..flipped.len() {
                flipped[at] = byte;
                let _ = decode::<Receipt>(&flipped);
                let _ = decode::<serde_json::Value>(&flipped);
                flipped[at] = good[at];
            }
        }
        let not_utf8 = [tag::STR, 2, 0xff, 0xfe];
        assert!(matches!(
            decode::<String>(&not_utf8),
            Err(OutputError::InvalidUtf8 { .. })
        ));
        let huge_length = [
            tag::STR,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x7f,
        ];
        assert!(decode::<String>(&huge_length).is_err());
        let long_varint = [
            tag::UINT,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x7f,
        ];
        assert!(decode::<u64>(&long_varint).is_err());
    }

    #[test]
    fn nesting_is_bounded_both_ways() {
        let deep = vec![tag::SEQ; 100_000];
        assert_eq!(
            decode::<serde_json::Value>(&deep).unwrap_err(),
            OutputError::TooDeep
        );
        let mut options = vec![tag::SOME; 100_000];
        options.push(tag::UNIT);
        assert!(decode::<serde_json::Value>(&options).is_err());
        let mut value = serde_json::json!(1);
        for _ in 0..MAX_DEPTH + 1 {
            value = serde_json::json!([value]);
        }
        let mut out = Vec::new();
        assert_eq!(
            encode_into(&mut out, &value).unwrap_err(),
            OutputError::TooDeep
        );
        let mut value = serde_json::json!(1);
        for _ in 0..MAX_DEPTH - 1 {
            value = serde_json::json!([value]);
        }
        let back: serde_json::Value = decode(&encode(&value)).unwrap();
        assert_eq!(back, value);
    }

    type Mixed = (
        String,
        Vec<u8>,
        i64,
        u64,
        i128,
        Vec<Option<u32>>,
        BTreeMap<String, i32>,
    );

    proptest! {
        #[test]
        fn any_value_round_trips(
            text in ".*",
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            n in any::<i64>(),
            u in any::<u64>(),
            wide in any::<i128>(),
            float in any::<f64>(),
            list in proptest::collection::vec(any::<Option<u32>>(), 0..16),
            map in proptest::collection::btree_map(".{0,8}", any::<i32>(), 0..8),
        ) {
            let value = (text, bytes, n, u, wide, list, map);
            let back: Mixed =
                decode(&encode(&value)).unwrap();
            prop_assert_eq!(back, value);
            let back: f64 = decode(&encode(&float)).unwrap();
            prop_assert_eq!(back.to_bits(), float.to_bits());
        }
    }
}
