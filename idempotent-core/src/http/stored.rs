//! A response as the layer stores it.
//!
//! Stored as compact JSON (the executor's output encoding):
//! `{"s":201,"h":[["content-type","application/json"]],"t":"{\"id\":\"ord_1\"}"}`. A body that is
//! UTF-8 is kept as text (`t`), any other body as base64 (`b`); header values that are not
//! UTF-8 go to `hb`, base64-encoded. Never an array of numbers.
//!
//! The store receives that JSON behind the executor's one-byte `O` tag; [`Stored::fits`]
//! measures exactly that record, so the layer's limit and the executor's and store's
//! `max_output_bytes` count the same bytes.

use std::io;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::de::Error as _;
use serde::ser::{SerializeSeq as _, SerializeStruct as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A response the layer stored, shared between the request that produced it and its replays.
#[derive(Debug, Clone)]
pub(crate) struct Stored(pub(crate) Arc<StoredResponse>);

#[derive(Debug)]
pub(crate) struct StoredResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// The executor's tag in front of the JSON (`O` for an `Ok` output).
const TAG_LEN: usize = 1;

impl Stored {
    /// Whether the record the store receives for this response (the executor's tag and the
    /// compact JSON) is at most `limit` bytes. A cheap bound first; the JSON is measured only
    /// when the bound is over the limit.
    pub(crate) fn fits(&self, limit: usize) -> bool {
        self.bound() <= limit || self.record_len() <= limit
    }

    /// At least the record's length: every byte of a header value or of the body takes at most
    /// 6 bytes in JSON (`\u001f`) and base64 takes fewer; the fixed fields take 31 bytes, a
    /// header's brackets, quotes and comma 8.
    fn bound(&self) -> usize {
        let response = &*self.0;
        let headers = response.headers.iter().fold(0usize, |sum, (name, value)| {
            sum.saturating_add(8 + name.as_str().len())
                .saturating_add(value.len().saturating_mul(6))
        });
        (TAG_LEN + 40)
            .saturating_add(headers)
            .saturating_add(response.body.len().saturating_mul(6))
    }

    /// The record's exact length.
    pub(crate) fn record_len(&self) -> usize {
        struct Count(usize);
        impl io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        // Our `Serialize` never fails, and neither does the counter.
        match serde_json::to_writer(&mut count, self) {
            Ok(()) => TAG_LEN + count.0,
            Err(_) => usize::MAX,
        }
    }
}

struct TextHeaders<'a>(&'a HeaderMap);
struct BinaryHeaders<'a>(&'a HeaderMap);

fn text(value: &HeaderValue) -> Option<&str> {
    std::str::from_utf8(value.as_bytes()).ok()
}

impl Serialize for TextHeaders<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        for (name, value) in self.0 {
            if let Some(value) = text(value) {
                seq.serialize_element(&(name.as_str(), value))?;
            }
        }
        seq.end()
    }
}

impl Serialize for BinaryHeaders<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        for (name, value) in self.0 {
            if text(value).is_none() {
                seq.serialize_element(&(name.as_str(), BASE64.encode(value.as_bytes())))?;
            }
        }
        seq.end()
    }
}

impl Serialize for Stored {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let response = &*self.0;
        let binary_headers = response.headers.values().any(|v| text(v).is_none());
        let body_text = std::str::from_utf8(&response.body).ok();
        let fields = 3 + usize::from(binary_headers);
        let mut out = serializer.serialize_struct("Stored", fields)?;
        out.serialize_field("s", &response.status.as_u16())?;
        out.serialize_field("h", &TextHeaders(&response.headers))?;
        if binary_headers {
            out.serialize_field("hb", &BinaryHeaders(&response.headers))?;
        }
        match body_text {
            Some(body) => out.serialize_field("t", body)?,
            None => out.serialize_field("b", &BASE64.encode(&response.body))?,
        }
        out.end()
    }
}

#[derive(Deserialize)]
struct Wire {
    s: u16,
    h: Vec<(String, String)>,
    #[serde(default)]
    hb: Vec<(String, String)>,
    #[serde(default)]
    t: Option<String>,
    #[serde(default)]
    b: Option<String>,
}

impl<'de> Deserialize<'de> for Stored {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        let status = StatusCode::from_u16(wire.s)
            .map_err(|_| D::Error::custom(format_args!("stored status {} is invalid", wire.s)))?;
        let mut headers = HeaderMap::with_capacity(wire.h.len() + wire.hb.len());
        for (name, value) in wire.h {
            let value = HeaderValue::from_str(&value)
                .map_err(|_| D::Error::custom(format_args!("stored header `{name}` is invalid")))?;
            headers.append(header_name::<D>(&name)?, value);
        }
        for (name, value) in wire.hb {
            let bytes = BASE64
                .decode(value)
                .map_err(|_| D::Error::custom(format_args!("stored header `{name}` is invalid")))?;
            let value = HeaderValue::from_bytes(&bytes)
                .map_err(|_| D::Error::custom(format_args!("stored header `{name}` is invalid")))?;
            headers.append(header_name::<D>(&name)?, value);
        }
        let body = match (wire.t, wire.b) {
            (Some(text), None) => Bytes::from(text),
            (None, Some(base64)) => Bytes::from(
                BASE64
                    .decode(base64)
                    .map_err(|_| D::Error::custom("stored body is not valid base64"))?,
            ),
            _ => return Err(D::Error::custom("stored response has no body field")),
        };
        Ok(Stored(Arc::new(StoredResponse {
            status,
            headers,
            body,
        })))
    }
}

fn header_name<'de, D: Deserializer<'de>>(name: &str) -> Result<HeaderName, D::Error> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| D::Error::custom(format_args!("stored header name `{name}` is invalid")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(response: StoredResponse) -> (String, StoredResponse) {
        let json = serde_json::to_string(&Stored(Arc::new(response))).unwrap();
        let back: Stored = serde_json::from_str(&json).unwrap();
        (json, Arc::try_unwrap(back.0).unwrap())
    }

    #[test]
    fn text_bodies_are_stored_as_text() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.append(http::header::SET_COOKIE, HeaderValue::from_static("a=1"));
        headers.append(http::header::SET_COOKIE, HeaderValue::from_static("b=2"));
        let (json, back) = round_trip(StoredResponse {
            status: StatusCode::CREATED,
            headers: headers.clone(),
            body: Bytes::from_static(br#"{"id":"ord_1"}"#),
        });
        assert_eq!(
            json,
            r#"{"s":201,"h":[["content-type","application/json"],["set-cookie","a=1"],["set-cookie","b=2"]],"t":"{\"id\":\"ord_1\"}"}"#
        );
        assert_eq!(back.status, StatusCode::CREATED);
        assert_eq!(back.headers, headers);
        assert_eq!(back.body, Bytes::from_static(br#"{"id":"ord_1"}"#));
    }

    #[test]
    fn binary_bodies_and_headers_are_base64() {
        let mut headers = HeaderMap::new();
        headers.insert("x-raw", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        let body = Bytes::from_static(&[0, 159, 146, 150, 255]);
        let (json, back) = round_trip(StoredResponse {
            status: StatusCode::OK,
            headers: headers.clone(),
            body: body.clone(),
        });
        assert_eq!(
            json,
            r#"{"s":200,"h":[],"hb":[["x-raw","//4="]],"b":"AJ+Slv8="}"#
        );
        assert_eq!(back.headers, headers);
        assert_eq!(back.body, body);
    }

    #[test]
    fn the_measured_length_is_the_executors_record() {
        use crate::executor::{DropErrors, OutputMode};

        let mut headers = HeaderMap::new();
        headers.insert("x-raw", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        headers.insert("x-tab", HeaderValue::from_static("a\tb\"c\\"));
        headers.insert(http::header::LOCATION, HeaderValue::from_static("/o/1"));
        let bodies: [&[u8]; 6] = [
            b"",
            b"plain text",
            b"\x00\x01\x1f\"\\\n control and escapes",
            "caf\u{e9} \u{1f980}".as_bytes(),
            &[0xff; 1],
            &[0xff, 0, 1, 2, 3, 4, 5, 6],
        ];
        for headers in [HeaderMap::new(), headers] {
            for body in bodies {
                let stored = Stored(Arc::new(StoredResponse {
                    status: StatusCode::CREATED,
                    headers: headers.clone(),
                    body: Bytes::copy_from_slice(body),
                }));
                let record =
                    <DropErrors as OutputMode<Stored, crate::Error>>::encode(&Ok(stored.clone()))
                        .unwrap()
                        .unwrap();
                let len = record.len();
                assert_eq!(stored.record_len(), len, "{body:?}");
                assert!(stored.bound() >= len, "{body:?}");
                assert!(stored.fits(len));
                assert!(!stored.fits(len - 1));
            }
        }
    }

    #[test]
    fn damaged_records_are_errors() {
        for json in [
            r#"{"s":99,"h":[],"t":""}"#,
            r#"{"s":200,"h":[["bad name","x"]],"t":""}"#,
            r#"{"s":200,"h":[]}"#,
            r#"{"s":200,"h":[],"b":"***"}"#,
            r#"[1,2,3]"#,
        ] {
            assert!(serde_json::from_str::<Stored>(json).is_err(), "{json}");
        }
    }
}
