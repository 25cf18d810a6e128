//! A response as the layer stores it.
//!
//! ResponseRecord in the executor's [output encoding](crate::output) as
//! `{s: status, h: [(name, value bytes)…], b: body bytes}`: header values and the body are
//! kept as they are, bytes for bytes, whatever they hold (text, binary, escapes).
//!
//! The store receives that behind the executor's envelope (the recording time and the `Ok`
//! mark); [`ResponseRecord::fits`]
//! measures exactly that record, so the layer's limit and the executor's and store's
//! `max_output_bytes` count the same bytes.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::de::{Error as _, Visitor};
use serde::ser::{SerializeSeq as _, SerializeStruct as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::output::envelope;

/// A response the layer stored, shared between the request that produced it and its replays.
#[derive(Debug, Clone)]
pub(crate) struct ResponseRecord(pub(crate) Arc<StoredResponse>);

#[derive(Debug)]
pub(crate) struct StoredResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// What followed the body (gRPC's `grpc-status`, `grpc-message`, trailing metadata);
    /// empty for most HTTP responses, and then not written.
    pub(crate) trailers: HeaderMap,
}

/// At most what the record takes besides the header names and values and the body: the
/// struct, its three keys, the status, and a length of at most 10 bytes for the body.
const FIXED_MAX: usize = 32;
/// At most what the trailers' key and sequence take besides their headers.
const TRAILERS_MAX: usize = 16;
/// At most what one header takes besides its name and value: a tuple, two tags, two lengths.
const HEADER_MAX: usize = 24;

impl ResponseRecord {
    /// Whether the record the store receives for this response (the executor's mark and the
    /// encoded response) is at most `limit` bytes. A cheap bound first; the record is measured
    /// only when the bound is over the limit.
    pub(crate) fn fits(&self, limit: usize) -> bool {
        self.bound() <= limit || self.record_len() <= limit
    }

    /// At least the record's length.
    pub(crate) fn bound(&self) -> usize {
        let response = &*self.0;
        let fields = response.headers.iter().chain(response.trailers.iter());
        let headers = fields.fold(0usize, |sum, (name, value)| {
            sum.saturating_add(HEADER_MAX + name.as_str().len() + value.len())
        });
        (envelope::MARK_LEN + FIXED_MAX + TRAILERS_MAX)
            .saturating_add(headers)
            .saturating_add(response.body.len())
    }

    /// The record's exact length.
    pub(crate) fn record_len(&self) -> usize {
        // Our `Serialize` never fails, and neither does the counter.
        envelope::encoded_len(self).unwrap_or(usize::MAX)
    }
}

/// Bytes, written with `serialize_bytes`.
struct Raw<'a>(&'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Serialize for Headers<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for (name, value) in self.0 {
            seq.serialize_element(&(name.as_str(), Raw(value.as_bytes())))?;
        }
        seq.end()
    }
}

impl Serialize for ResponseRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let response = &*self.0;
        let trailers = !response.trailers.is_empty();
        let mut out = serializer.serialize_struct("ResponseRecord", 3 + usize::from(trailers))?;
        out.serialize_field("s", &response.status.as_u16())?;
        out.serialize_field("h", &Headers(&response.headers))?;
        out.serialize_field("b", &Raw(&response.body))?;
        if trailers {
            out.serialize_field("t", &Headers(&response.trailers))?;
        }
        out.end()
    }
}

/// Bytes read back: from `serialize_bytes`, or a sequence of numbers.
struct Blob(Vec<u8>);

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BlobVisitor;

        impl<'de> Visitor<'de> for BlobVisitor {
            type Value = Blob;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }

            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Blob, E> {
                Ok(Blob(bytes.to_vec()))
            }

            fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(bytes))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Blob, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(byte) = seq.next_element::<u8>()? {
                    bytes.push(byte);
                }
                Ok(Blob(bytes))
            }
        }

        deserializer.deserialize_bytes(BlobVisitor)
    }
}

#[derive(Deserialize)]
struct Wire {
    s: u16,
    h: Vec<(String, Blob)>,
    b: Blob,
    /// Records of responses without trailers (and of versions before them) have none.
    #[serde(default)]
    t: Vec<(String, Blob)>,
}

impl<'de> Deserialize<'de> for ResponseRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        let status = StatusCode::from_u16(wire.s)
            .map_err(|_| D::Error::custom(format_args!("stored status {} is invalid", wire.s)))?;
        Ok(ResponseRecord(Arc::new(StoredResponse {
            status,
            headers: header_map::<D>(wire.h)?,
            body: Bytes::from(wire.b.0),
            trailers: header_map::<D>(wire.t)?,
        })))
    }
}

fn header_map<'de, D: Deserializer<'de>>(
    fields: Vec<(String, Blob)>,
) -> Result<HeaderMap, D::Error> {
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, Blob(value)) in fields {
        let value = HeaderValue::from_bytes(&value)
            .map_err(|_| D::Error::custom(format_args!("stored header `{name}` is invalid")))?;
        headers.append(header_name::<D>(&name)?, value);
    }
    Ok(headers)
}

fn header_name<'de, D: Deserializer<'de>>(name: &str) -> Result<HeaderName, D::Error> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| D::Error::custom(format_args!("stored header name `{name}` is invalid")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output;

    fn round_trip(response: StoredResponse) -> StoredResponse {
        let mut record = Vec::new();
        output::encode_into(&mut record, &ResponseRecord(Arc::new(response))).unwrap();
        let back: ResponseRecord = output::decode(&record).unwrap();
        Arc::try_unwrap(back.0).unwrap()
    }

    #[test]
    fn responses_round_trip_byte_for_byte() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.append(http::header::SET_COOKIE, HeaderValue::from_static("a=1"));
        headers.append(http::header::SET_COOKIE, HeaderValue::from_static("b=2"));
        headers.insert("x-raw", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        let mut grpc = HeaderMap::new();
        grpc.insert("grpc-status", HeaderValue::from_static("5"));
        grpc.insert("grpc-message", HeaderValue::from_static("no%20such%20sku"));
        grpc.insert("x-trace-bin", HeaderValue::from_bytes(b"\xff").unwrap());
        for trailers in [HeaderMap::new(), grpc] {
            for body in [
                Bytes::from_static(br#"{"id":"ord_1"}"#),
                Bytes::from_static(&[0, 159, 146, 150, 255]),
                Bytes::new(),
            ] {
                let back = round_trip(StoredResponse {
                    status: StatusCode::CREATED,
                    headers: headers.clone(),
                    body: body.clone(),
                    trailers: trailers.clone(),
                });
                assert_eq!(back.status, StatusCode::CREATED);
                assert_eq!(back.headers, headers);
                assert_eq!(back.body, body);
                assert_eq!(back.trailers, trailers);
            }
        }
    }

    #[test]
    fn the_measured_length_is_the_executors_record() {
        use crate::output::{OutputMode, OutputsOnly};

        let mut headers = HeaderMap::new();
        headers.insert("x-raw", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        headers.insert("x-tab", HeaderValue::from_static("a\tb\"c\\"));
        headers.insert(http::header::LOCATION, HeaderValue::from_static("/o/1"));
        let big = vec![0xA5u8; 70_000];
        let bodies: [&[u8]; 7] = [
            b"",
            b"plain text",
            b"\x00\x01\x1f\"\\\n control and escapes",
            "caf\u{e9} \u{1f980}".as_bytes(),
            &[0xff; 1],
            &[0xff, 0, 1, 2, 3, 4, 5, 6],
            &big,
        ];
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let cases = [
            (HeaderMap::new(), HeaderMap::new()),
            (headers.clone(), HeaderMap::new()),
            (headers, trailers),
        ];
        for (headers, trailers) in cases {
            for body in bodies {
                let stored = ResponseRecord(Arc::new(StoredResponse {
                    status: StatusCode::CREATED,
                    headers: headers.clone(),
                    body: Bytes::copy_from_slice(body),
                    trailers: trailers.clone(),
                }));
                let record = <OutputsOnly as OutputMode<ResponseRecord, crate::Error>>::encode(
                    &Ok(stored.clone()),
                )
                .unwrap()
                .unwrap();
                let len = record.len();
                assert_eq!(stored.record_len(), len, "{} body bytes", body.len());
                assert!(stored.bound() >= len, "{} body bytes", body.len());
                assert!(stored.fits(len));
                assert!(!stored.fits(len - 1));
            }
        }
    }

    fn encode<T: Serialize>(value: &T) -> Vec<u8> {
        let mut record = Vec::new();
        output::encode_into(&mut record, value).unwrap();
        record
    }

    #[test]
    fn damaged_records_are_errors() {
        #[derive(Serialize)]
        struct Fake<'a> {
            s: u16,
            h: Vec<(&'a str, Raw<'a>)>,
            b: Raw<'a>,
        }
        #[derive(Serialize)]
        struct NoBody {
            s: u16,
            h: [u8; 0],
        }
        let records = [
            encode(&Fake {
                s: 99,
                h: vec![],
                b: Raw(b""),
            }),
            encode(&Fake {
                s: 200,
                h: vec![("bad name", Raw(b"x"))],
                b: Raw(b""),
            }),
            encode(&Fake {
                s: 200,
                h: vec![("x-ok", Raw(b"bad\nvalue"))],
                b: Raw(b""),
            }),
            encode(&NoBody { s: 200, h: [] }),
            encode(&[1, 2, 3]),
        ];
        for record in records {
            assert!(
                output::decode::<ResponseRecord>(&record).is_err(),
                "{record:?}"
            );
        }
        let good = encode(&Fake {
            s: 200,
            h: vec![("x-ok", Raw(b"fine"))],
            b: Raw(b""),
        });
        assert!(output::decode::<ResponseRecord>(&good).is_ok());
    }
}
