//! The encoder: serde's data model into the output encoding, into a buffer or a counter.

use std::fmt::Display;

use serde::ser::{self, Serialize};

use super::{MAX_DEPTH, OutputError, tag};
use crate::encoding::{serialize_compound, serialize_named, serialize_widened, serializer_types};

impl ser::Error for OutputError {
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

    /// Returns the `Serializer`'s result, so that its methods forward here.
    fn int(&mut self, v: i64) -> Result<(), OutputError> {
        if v >= 0 {
            self.out.byte(tag::UINT);
            self.varint(v as u64);
        } else {
            self.out.byte(tag::NINT);
            self.varint(!(v as u64));
        }
        Ok(())
    }

    /// An integer beyond 64 bits: `tag`, then its 16 bytes, little-endian.
    fn wide(&mut self, tag: u8, le_bytes: [u8; 16]) -> Result<(), OutputError> {
        self.out.byte(tag);
        self.out.bytes(&le_bytes);
        Ok(())
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
    /// A sequence or map (`open`), closed by the returned compound.
    fn compound<'a>(&'a mut self, open: u8) -> Result<Compound<'a, 'w, W>, OutputError> {
        self.open(open)?;
        Ok(Compound {
            encoder: self,
            closes: 1,
        })
    }

    /// A tuple or struct variant: a one-entry map from its name to its content (`content`
    /// opens a sequence or a map), closed by the returned compound.
    fn variant<'a>(
        &'a mut self,
        variant: &'static str,
        content: u8,
    ) -> Result<Compound<'a, 'w, W>, OutputError> {
        self.open(tag::MAP)?;
        self.str(variant);
        let mut compound = self.compound(content)?;
        compound.closes = 2;
        Ok(compound)
    }

    /// A unit variant is its name.
    fn unit_variant(&mut self, variant: &'static str) -> Result<(), OutputError> {
        self.str(variant);
        Ok(())
    }

    /// A newtype variant is a one-entry map from its name to its value.
    fn newtype_variant<T: Serialize + ?Sized>(
        &mut self,
        variant: &'static str,
        value: &T,
    ) -> Result<(), OutputError> {
        self.open(tag::MAP)?;
        self.str(variant);
        value.serialize(&mut *self)?;
        self.close();
        Ok(())
    }
}

impl<'a, 'w, W: Out> ser::Serializer for &'a mut Encoder<'w, W> {
    serializer_types!(
        Error = OutputError,
        Compound = Compound<'a, 'w, W>,
        Map = Compound<'a, 'w, W>,
    );

    serialize_widened! {
        int(i64) <- serialize_i8(i8), serialize_i16(i16), serialize_i32(i32), serialize_i64(i64);
        serialize_u64(u64) <- serialize_u8(u8), serialize_u16(u16), serialize_u32(u32);
    }

    serialize_named!(
        struct = tag::MAP,
        tuple_variant = tag::SEQ,
        struct_variant = tag::MAP,
    );

    fn serialize_bool(self, v: bool) -> Result<(), OutputError> {
        self.out.byte(if v { tag::TRUE } else { tag::FALSE });
        Ok(())
    }

    fn serialize_i128(self, v: i128) -> Result<(), OutputError> {
        if let Ok(small) = i64::try_from(v) {
            self.int(small)
        } else if let Ok(unsigned) = u64::try_from(v) {
            self.serialize_u64(unsigned)
        } else {
            self.wide(tag::I128, v.to_le_bytes())
        }
    }

    fn serialize_u64(self, v: u64) -> Result<(), OutputError> {
        self.out.byte(tag::UINT);
        self.varint(v);
        Ok(())
    }

    fn serialize_u128(self, v: u128) -> Result<(), OutputError> {
        if let Ok(small) = u64::try_from(v) {
            self.serialize_u64(small)
        } else {
            self.wide(tag::U128, v.to_le_bytes())
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

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, OutputError> {
        self.compound(tag::SEQ)
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, OutputError> {
        self.compound(tag::MAP)
    }
}

/// An open sequence or map; `closes` end tags finish it (two for a variant's content).
struct Compound<'a, 'w, W: Out> {
    encoder: &'a mut Encoder<'w, W>,
    closes: u8,
}

impl<W: Out> Compound<'_, '_, W> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), OutputError> {
        value.serialize(&mut *self.encoder)
    }

    fn field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), OutputError> {
        self.encoder.str(name);
        self.element(value)
    }

    fn finish(self) -> Result<(), OutputError> {
        for _ in 0..self.closes {
            self.encoder.close();
        }
        Ok(())
    }
}

// Sequences and tuples are elements in order, structs are maps keyed by field name.
serialize_compound!([W: Out] Compound<'_, '_, W>, Error = OutputError);

impl<W: Out> ser::SerializeMap for Compound<'_, '_, W> {
    type Ok = ();
    type Error = OutputError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), OutputError> {
        self.element(key)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), OutputError> {
        self.element(value)
    }

    fn end(self) -> Result<(), OutputError> {
        self.finish()
    }
}
