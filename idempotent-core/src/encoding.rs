//! What the two encodings of serde's data model share: the canonical encoding (keys and
//! fingerprints, hashed) and the output encoding (stored records, decoded again).
//!
//! Their bytes differ and stay apart, each with its own tags. What they share is the shape serde
//! and Rust make each of them spell out one item at a time: a table of tag constants, the
//! `Serializer` methods that only widen a value or drop a name neither encoding writes, and the
//! six compound traits. These macros write those once; each encoding keeps the methods that
//! decide its bytes.

/// A module of one-byte tags, `NAME = byte,` each. Tags never change meaning once released; a
/// byte given to two tags fails the build.
macro_rules! tags {
    ($(#[$doc:meta])* mod $module:ident { $($name:ident = $byte:literal,)* }) => {
        $(#[$doc])*
        mod $module {
            $(pub(super) const $name: u8 = $byte;)*

            const _: () = {
                let all = [$($name),*];
                let mut i = 0;
                while i < all.len() {
                    let mut j = i + 1;
                    while j < all.len() {
                        assert!(all[i] != all[j], "two tags share a byte");
                        j += 1;
                    }
                    i += 1;
                }
            };
        }
    };
}

/// The associated types of a `serde::Serializer` whose sequences, tuples and structs share one
/// compound type.
macro_rules! serializer_types {
    (Error = $error:ty, Compound = $compound:ty, Map = $map:ty $(,)?) => {
        type Ok = ();
        type Error = $error;
        type SerializeSeq = $compound;
        type SerializeTuple = $compound;
        type SerializeTupleStruct = $compound;
        type SerializeTupleVariant = $compound;
        type SerializeMap = $map;
        type SerializeStruct = $compound;
        type SerializeStructVariant = $compound;
    };
}

/// serde has one `Serializer` method per primitive type; an encoding that writes several types
/// alike forwards the narrow ones to the wide one (`serialize_i64(i64) <- serialize_i8(i8), …;`).
macro_rules! serialize_widened {
    ($($wide_method:ident($wide:ty) <- $($method:ident($narrow:ty)),+;)+) => {$($(
        #[inline]
        fn $method(self, v: $narrow) -> Result<Self::Ok, Self::Error> {
            self.$wide_method(<$wide>::from(v))
        }
    )+)+};
}

/// The `Serializer` methods for named types, whose type names, variant indices and lengths
/// neither encoding writes. Newtype structs are transparent, unit structs are `()`, tuple
/// structs are tuples; the rest forward to the encoding's own inherent methods:
///
/// * `compound(tag)`: opens a compound that `tag` starts (`struct` gives the tag of a struct);
/// * `variant(name, tag)`: opens a variant's compound (`tuple_variant` / `struct_variant` give
///   the tag of its content);
/// * `unit_variant(name)` and `newtype_variant(name, value)`.
macro_rules! serialize_named {
    (struct = $struct:expr, tuple_variant = $tuple:expr, struct_variant = $fields:expr $(,)?) => {
        #[inline]
        fn serialize_unit_struct(self, _name: &'static str) -> Result<Self::Ok, Self::Error> {
            self.serialize_unit()
        }

        #[inline]
        fn serialize_newtype_struct<T: ::serde::Serialize + ?Sized>(
            self,
            _name: &'static str,
            value: &T,
        ) -> Result<Self::Ok, Self::Error> {
            value.serialize(self)
        }

        #[inline]
        fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, Self::Error> {
            self.serialize_seq(Some(len))
        }

        #[inline]
        fn serialize_tuple_struct(
            self,
            _name: &'static str,
            len: usize,
        ) -> Result<Self::SerializeTupleStruct, Self::Error> {
            self.serialize_seq(Some(len))
        }

        #[inline]
        fn serialize_struct(
            self,
            _name: &'static str,
            _len: usize,
        ) -> Result<Self::SerializeStruct, Self::Error> {
            self.compound($struct)
        }

        #[inline]
        fn serialize_unit_variant(
            self,
            _name: &'static str,
            _index: u32,
            variant: &'static str,
        ) -> Result<Self::Ok, Self::Error> {
            self.unit_variant(variant)
        }

        #[inline]
        fn serialize_newtype_variant<T: ::serde::Serialize + ?Sized>(
            self,
            _name: &'static str,
            _index: u32,
            variant: &'static str,
            value: &T,
        ) -> Result<Self::Ok, Self::Error> {
            self.newtype_variant(variant, value)
        }

        serialize_named!(@variants
            serialize_tuple_variant -> SerializeTupleVariant = $tuple,
            serialize_struct_variant -> SerializeStructVariant = $fields
        );
    };
    (@variants $($method:ident -> $compound:ident = $content:expr),*) => {$(
        #[inline]
        fn $method(
            self,
            _name: &'static str,
            _index: u32,
            variant: &'static str,
            _len: usize,
        ) -> Result<Self::$compound, Self::Error> {
            self.variant(variant, $content)
        }
    )*};
}

/// serde splits sequences and structs over six traits with the same two methods. Each encoding's
/// compound type (`$generics` in brackets) has inherent `element(value)`, `field(name, value)`
/// and `finish()`, and these impls forward to them.
macro_rules! serialize_compound {
    ($generics:tt $compound:ty, Error = $error:ty) => {
        serialize_compound!(@each $generics $compound, $error;
            SerializeSeq: element serialize_element,
            SerializeTuple: element serialize_element,
            SerializeTupleStruct: element serialize_field,
            SerializeTupleVariant: element serialize_field,
            SerializeStruct: field serialize_field,
            SerializeStructVariant: field serialize_field
        );
    };
    (@each $generics:tt $compound:ty, $error:ty; $($trait:ident: $kind:ident $method:ident),*) => {
        $(serialize_compound!(@impl $generics $compound, $error, $trait: $kind $method);)*
    };
    (@impl [$($generics:tt)*] $compound:ty, $error:ty, $trait:ident: $kind:ident $method:ident) => {
        impl<$($generics)*> ::serde::ser::$trait for $compound {
            type Ok = ();
            type Error = $error;

            serialize_compound!(@$kind $method);

            fn end(self) -> Result<(), $error> {
                self.finish()
            }
        }
    };
    (@element $method:ident) => {
        fn $method<T: ::serde::Serialize + ?Sized>(
            &mut self,
            value: &T,
        ) -> Result<(), Self::Error> {
            self.element(value)
        }
    };
    (@field $method:ident) => {
        fn $method<T: ::serde::Serialize + ?Sized>(
            &mut self,
            key: &'static str,
            value: &T,
        ) -> Result<(), Self::Error> {
            self.field(key, value)
        }
    };
}

pub(crate) use {serialize_compound, serialize_named, serialize_widened, serializer_types, tags};
