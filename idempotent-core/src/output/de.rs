//! The decoder: a stored output back into serde's data model, strings borrowed.

use std::fmt::Display;

use serde::de::{self, DeserializeSeed, IntoDeserializer as _, Visitor};

use super::{MAX_DEPTH, OutputError, tag};

impl de::Error for OutputError {
    fn custom<T: Display>(msg: T) -> Self {
        OutputError::Custom(msg.to_string())
    }
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

    /// A sequence's elements or a map's entries, one level deeper, up to the end tag: `visit`
    /// is the visitor's `visit_seq` or `visit_map`.
    fn visit_elements<T>(
        &mut self,
        visit: impl FnOnce(&mut Elements<'_, 'de>) -> Result<T, OutputError>,
    ) -> Result<T, OutputError> {
        self.descend()?;
        let mut access = Elements {
            decoder: self,
            done: false,
        };
        let value = visit(&mut access)?;
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
            tag::SEQ => self.visit_elements(|elements| visitor.visit_seq(elements)),
            tag::MAP => self.visit_elements(|entries| visitor.visit_map(entries)),
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

/// serde reads a sequence's elements and a map's keys through two traits with the same step: a
/// value, unless the end tag comes first. `{ … }` holds the trait's other methods.
macro_rules! next_unless_end {
    ($($trait:ident::$method:ident { $($more:tt)* })*) => {$(
        impl<'de> de::$trait<'de> for Elements<'_, 'de> {
            type Error = OutputError;

            fn $method<T: DeserializeSeed<'de>>(
                &mut self,
                seed: T,
            ) -> Result<Option<T::Value>, OutputError> {
                if self.at_end()? {
                    return Ok(None);
                }
                seed.deserialize(&mut *self.decoder).map(Some)
            }

            $($more)*
        }
    )*};
}

next_unless_end! {
    SeqAccess::next_element_seed {}
    MapAccess::next_key_seed {
        fn next_value_seed<V: DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, OutputError> {
            seed.deserialize(&mut *self.decoder)
        }
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
