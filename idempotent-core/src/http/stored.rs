//! A response as the layer stores it.
//!
//! Stored as compact JSON (the executor's output encoding):
//! `{"s":201,"h":[["content-type","application/json"]],"t":"{\"id\":\"ord_1\"}"}`. A body that is
//! UTF-8 is kept as text (`t`), any other body as base64 (`b`); header values that are not
//! UTF-8 go to `hb`, base64-encoded. Never an array of numbers.

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
