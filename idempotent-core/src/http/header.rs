//! Reading the `Idempotency-Key` header, and choosing which response headers are replayed.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName};

/// Why a key header was refused (the `detail` of the 400 problem).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyProblem {
    Repeated,
    Empty,
    TooLong { len: usize, max: usize },
    NotPrintable,
    BadString(&'static str),
}

impl KeyProblem {
    pub(crate) fn detail(&self, header: &HeaderName) -> String {
        match self {
            KeyProblem::Repeated => format!("send one `{header}` header, not several"),
            KeyProblem::Empty => format!("the `{header}` header is empty"),
            KeyProblem::TooLong { len, max } => {
                format!("the `{header}` key is {len} characters long; the limit is {max}")
            }
            KeyProblem::NotPrintable => {
                format!("the `{header}` key may contain printable ASCII characters only")
            }
            KeyProblem::BadString(why) => {
                format!("the `{header}` header is not a valid structured-field string: {why}")
            }
        }
    }
}

/// The key in `name`: `None` when absent. Accepts the draft's structured-field string
/// (`"8e03…"`, with `\"` and `\\` escapes) and the bare token most clients send (`8e03…`),
/// which name the same key.
pub(crate) fn parse_key<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
    max_len: usize,
) -> Result<Option<Cow<'h, str>>, KeyProblem> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(KeyProblem::Repeated);
    }
    let raw = value.as_bytes().trim_ascii();
    let key: Cow<'h, str> = if raw.first() == Some(&b'"') {
        unquote(raw)?
    } else {
        if !raw.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return Err(KeyProblem::NotPrintable);
        }
        // Printable ASCII is UTF-8.
        Cow::Borrowed(std::str::from_utf8(raw).map_err(|_| KeyProblem::NotPrintable)?)
    };
    if key.is_empty() {
        return Err(KeyProblem::Empty);
    }
    if key.len() > max_len {
        return Err(KeyProblem::TooLong {
            len: key.len(),
            max: max_len,
        });
    }
    Ok(Some(key))
}

/// An RFC 8941 sf-string: `DQUOTE *( unescaped / "\" ( DQUOTE / "\" ) ) DQUOTE`, nothing after
/// it (parameters are not part of the draft's key).
fn unquote(raw: &[u8]) -> Result<Cow<'_, str>, KeyProblem> {
    let inner = &raw[1..];
    let mut owned: Option<Vec<u8>> = None;
    let mut index = 0;
    while index < inner.len() {
        let byte = inner[index];
        match byte {
            b'"' => {
                if index + 1 != inner.len() {
                    return Err(KeyProblem::BadString("text after the closing quote"));
                }
                let text = match owned {
                    Some(bytes) => {
                        Cow::Owned(String::from_utf8(bytes).map_err(|_| KeyProblem::NotPrintable)?)
                    }
                    None => Cow::Borrowed(
                        std::str::from_utf8(&inner[..index])
                            .map_err(|_| KeyProblem::NotPrintable)?,
                    ),
                };
                return Ok(text);
            }
            b'\\' => {
                let escaped = match inner.get(index + 1) {
                    Some(&next @ (b'"' | b'\\')) => next,
                    Some(_) => {
                        return Err(KeyProblem::BadString(
                            "only `\\\"` and `\\\\` may be escaped",
                        ));
                    }
                    None => return Err(KeyProblem::BadString("no closing quote")),
                };
                owned
                    .get_or_insert_with(|| inner[..index].to_vec())
                    .push(escaped);
                index += 2;
            }
            0x20..=0x7e => {
                if let Some(bytes) = owned.as_mut() {
                    bytes.push(byte);
                }
                index += 1;
            }
            _ => return Err(KeyProblem::NotPrintable),
        }
    }
    Err(KeyProblem::BadString("no closing quote"))
}

/// Headers that are not replayed: hop-by-hop headers (RFC 9110 §7.6.1), those a `Connection`
/// header names, `Date` (the replay is a new message) and `Content-Length` (recomputed from the
/// stored body, so it cannot disagree with it).
pub(crate) fn replayable(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::with_capacity(headers.keys_len());
    for (name, value) in headers {
        if !is_hop_by_hop(name) && !named_by_connection(headers, name) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == header::DATE
        || name == header::CONTENT_LENGTH
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

fn named_by_connection(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|value| {
        value
            .to_str()
            .unwrap_or_default()
            .split(',')
            .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const KEY: HeaderName = HeaderName::from_static("idempotency-key");

    fn parse(values: &[&[u8]]) -> Result<Option<String>, KeyProblem> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(KEY, HeaderValue::from_bytes(value).unwrap());
        }
        parse_key(&headers, &KEY, 16).map(|key| key.map(Cow::into_owned))
    }

    #[test]
    fn bare_and_quoted_forms_name_the_same_key() {
        assert_eq!(parse(&[b"8e03-978e"]), Ok(Some("8e03-978e".into())));
        assert_eq!(parse(&[b"\"8e03-978e\""]), Ok(Some("8e03-978e".into())));
        assert_eq!(parse(&[b"\"a\\\"b\\\\c\""]), Ok(Some("a\"b\\c".into())));
        assert_eq!(parse(&[b"with space"]), Ok(Some("with space".into())));
        assert_eq!(parse(&[]), Ok(None));
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert_eq!(parse(&[b""]), Err(KeyProblem::Empty));
        assert_eq!(parse(&[b"\"\""]), Err(KeyProblem::Empty));
        assert_eq!(parse(&[b"a", b"b"]), Err(KeyProblem::Repeated));
        assert!(matches!(parse(&[b"\"abc"]), Err(KeyProblem::BadString(_))));
        assert!(matches!(
            parse(&[b"\"abc\";p=1"]),
            Err(KeyProblem::BadString(_))
        ));
        assert!(matches!(
            parse(&[b"\"a\\bc\""]),
            Err(KeyProblem::BadString(_))
        ));
        assert_eq!(parse(&[b"tab\there"]), Err(KeyProblem::NotPrintable));
        assert_eq!(parse(&[b"caf\xc3\xa9"]), Err(KeyProblem::NotPrintable));
        assert_eq!(parse(&[b"\"caf\xc3\xa9\""]), Err(KeyProblem::NotPrintable));
        assert_eq!(
            parse(&[b"0123456789abcdefg"]),
            Err(KeyProblem::TooLong { len: 17, max: 16 })
        );
        assert_eq!(
            parse(&[b"0123456789abcdef"]),
            Ok(Some("0123456789abcdef".into()))
        );
    }

    #[test]
    fn hop_by_hop_and_date_are_not_replayed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::DATE,
            HeaderValue::from_static("Tue, 01 Dec 2026 00:00:00 GMT"),
        );
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-trace"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-trace", HeaderValue::from_static("abc"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.append(header::SET_COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::SET_COOKIE, HeaderValue::from_static("b=2"));
        let kept = replayable(&headers);
        let names: Vec<&str> = kept.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "set-cookie"]);
        assert_eq!(kept.get_all(header::SET_COOKIE).iter().count(), 2);
    }
}
