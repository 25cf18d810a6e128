//! The canonical form of a JSON text, for fingerprints that do not change when a client
//! re-serializes its request ([`IdempotencyLayer::fingerprint_json`]).
//!
//! Two JSON texts have the same canonical form exactly when they denote the same value as
//! RFC 8259 defines it: insignificant whitespace is dropped, object members are sorted by
//! their (unescaped) names, strings are written with the fewest escapes, and numbers are
//! compared by their exact decimal value (`1`, `1.0`, `10e-1` and `0.1E1` are one number;
//! no precision is lost to floating point, however many digits). A text that is not valid
//! JSON, nests deeper than [`MAX_DEPTH`], or has an object with a repeated name (which
//! RFC 8259 leaves undefined) has no canonical form: its raw bytes are used.
//!
//! [`IdempotencyLayer::fingerprint_json`]: super::IdempotencyLayer::fingerprint_json

/// How deep arrays and objects may nest.
pub(crate) const MAX_DEPTH: usize = 128;

/// The canonical form of `text`, or `None` when it is not a JSON text this form covers.
pub(crate) fn canonical(text: &[u8]) -> Option<Vec<u8>> {
    // JSON is UTF-8: checking it once lets strings be copied byte by byte.
    std::str::from_utf8(text).ok()?;
    let mut parser = Parser { text, at: 0 };
    let mut out = Vec::with_capacity(text.len());
    parser.value(&mut out, 0)?;
    parser.skip_space();
    (parser.at == text.len()).then_some(out)
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_space();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        self.skip_space();
        match self.peek()? {
            b'{' => self.object(out, depth + 1),
            b'[' => self.array(out, depth + 1),
            b'"' => {
                let string = self.string()?;
                write_string(out, &string);
                Some(())
            }
            b't' => self.literal(out, b"true"),
            b'f' => self.literal(out, b"false"),
            b'n' => self.literal(out, b"null"),
            b'-' | b'0'..=b'9' => self.number(out),
            _ => None,
        }
    }

    fn literal(&mut self, out: &mut Vec<u8>, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.text.get(self.at..end)? == word).then_some(())?;
        self.at = end;
        out.extend_from_slice(word);
        Some(())
    }

    fn object(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.at += 1; // `{`
        let mut members: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.skip_space();
        if self.peek()? == b'}' {
            self.at += 1;
        } else {
            loop {
                self.skip_space();
                if self.peek()? != b'"' {
                    return None;
                }
                let name = self.string()?;
                self.eat(b':')?;
                let mut value = Vec::new();
                self.value(&mut value, depth)?;
                members.push((name, value));
                self.skip_space();
                match self.peek()? {
                    b',' => self.at += 1,
                    b'}' => {
                        self.at += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if members.windows(2).any(|pair| pair[0].0 == pair[1].0) {
            return None;
        }
        out.push(b'{');
        for (index, (name, value)) in members.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_string(out, name);
            out.push(b':');
            out.extend_from_slice(value);
        }
        out.push(b'}');
        Some(())
    }

    fn array(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.at += 1; // `[`
        out.push(b'[');
        self.skip_space();
        if self.peek()? == b']' {
            self.at += 1;
            out.push(b']');
            return Some(());
        }
        loop {
            self.value(out, depth)?;
            self.skip_space();
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    out.push(b',');
                }
                b']' => {
                    self.at += 1;
                    out.push(b']');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string's value (UTF-8), escapes resolved.
    fn string(&mut self) -> Option<Vec<u8>> {
        self.at += 1; // `"`
        let mut value = Vec::new();
        loop {
            let byte = self.peek()?;
            self.at += 1;
            match byte {
                b'"' => return Some(value),
                b'\\' => {
                    let escaped = self.peek()?;
                    self.at += 1;
                    match escaped {
                        b'"' | b'\\' | b'/' => value.push(escaped),
                        b'b' => value.push(0x08),
                        b'f' => value.push(0x0c),
                        b'n' => value.push(b'\n'),
                        b'r' => value.push(b'\r'),
                        b't' => value.push(b'\t'),
                        b'u' => {
                            let c = self.unicode_escape()?;
                            let mut buffer = [0u8; 4];
                            value.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                        }
                        _ => return None,
                    }
                }
                0x00..=0x1f => return None,
                _ => value.push(byte),
            }
        }
    }

    /// The character of a `\u` escape (the `\u` read), a surrogate pair included.
    fn unicode_escape(&mut self) -> Option<char> {
        let first = self.hex4()?;
        let code = match first {
            0xd800..=0xdbff => {
                (self.text.get(self.at..self.at + 2)? == b"\\u").then_some(())?;
                self.at += 2;
                let second = self.hex4()?;
                if !(0xdc00..=0xdfff).contains(&second) {
                    return None;
                }
                0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
            }
            0xdc00..=0xdfff => return None,
            _ => first,
        };
        char::from_u32(code)
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = std::str::from_utf8(self.text.get(self.at..self.at + 4)?).ok()?;
        if !digits.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return None;
        }
        self.at += 4;
        u32::from_str_radix(digits, 16).ok()
    }

    /// A number, written as its exact decimal value: `0`, or `[-]digits` with no leading or
    /// trailing zero followed by `e` and the power of ten (`1.50` → `15e-1`).
    fn number(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let negative = self.peek()? == b'-';
        if negative {
            self.at += 1;
        }
        let integer = self.digits();
        if integer.is_empty() || (integer.len() > 1 && integer[0] == b'0') {
            return None;
        }
        let mut fraction: &[u8] = &[];
        if self.peek() == Some(b'.') {
            self.at += 1;
            fraction = self.digits();
            if fraction.is_empty() {
                return None;
            }
        }
        let mut exponent: i64 = 0;
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            let sign: i64 = match self.peek()? {
                b'-' => {
                    self.at += 1;
                    -1
                }
                b'+' => {
                    self.at += 1;
                    1
                }
                _ => 1,
            };
            let digits = self.digits();
            if digits.is_empty() {
                return None;
            }
            for digit in digits {
                // An exponent past ±10^15 has no place in a request: no canonical form.
                exponent = exponent
                    .checked_mul(10)?
                    .checked_add(i64::from(digit - b'0'))?;
                if exponent > 1_000_000_000_000_000 {
                    return None;
                }
            }
            exponent *= sign;
        }
        // value = integer.fraction × 10^exponent = all digits × 10^(exponent - fraction len)
        let all: Vec<u8> = integer.iter().chain(fraction).copied().collect();
        let Some(first) = all.iter().position(|digit| *digit != b'0') else {
            out.push(b'0');
            return Some(());
        };
        let last = all.iter().rposition(|digit| *digit != b'0')?;
        let fraction_len = i64::try_from(fraction.len()).ok()?;
        let trailing = i64::try_from(all.len() - 1 - last).ok()?;
        let power = exponent - fraction_len + trailing;
        if negative {
            out.push(b'-');
        }
        out.extend_from_slice(&all[first..=last]);
        out.push(b'e');
        out.extend_from_slice(power.to_string().as_bytes());
        Some(())
    }

    fn digits(&mut self) -> &'a [u8] {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        let text: &'a [u8] = self.text;
        &text[start..self.at]
    }
}

/// `value` as a JSON string with the fewest escapes: `"`, `\` and control characters.
fn write_string(out: &mut Vec<u8>, value: &[u8]) {
    out.push(b'"');
    for &byte in value {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x00..=0x1f => out.extend_from_slice(format!("\\u{byte:04x}").as_bytes()),
            _ => out.push(byte),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &str, b: &str) {
        let (ca, cb) = (canonical(a.as_bytes()), canonical(b.as_bytes()));
        assert!(ca.is_some(), "{a} is JSON");
        assert_eq!(ca, cb, "{a} and {b} are the same value");
    }

    fn different(a: &str, b: &str) {
        let (ca, cb) = (canonical(a.as_bytes()), canonical(b.as_bytes()));
        assert!(ca.is_some() && cb.is_some(), "{a}, {b} are JSON");
        assert_ne!(ca, cb, "{a} and {b} are different values");
    }

    #[test]
    fn order_and_whitespace_do_not_matter() {
        same(
            r#"{"amount":1999,"currency":"EUR","items":[1,2]}"#,
            "{ \"items\" : [ 1 , 2 ] ,\n\t\"currency\":\"EUR\", \"amount\" : 1999 }",
        );
        same(r#"{"a":{"y":1,"x":2}}"#, r#"{"a":{"x":2,"y":1}}"#);
        different(r#"[1,2]"#, r#"[2,1]"#);
        different(r#"{"a":1}"#, r#"{"a":1,"b":null}"#);
    }

    #[test]
    fn numbers_compare_by_exact_value() {
        for (a, b) in [
            ("1", "1.0"),
            ("1", "10e-1"),
            ("1", "0.1E1"),
            ("100", "1e2"),
            ("0", "-0.000"),
            ("0", "0e99"),
            ("-2.50", "-25E-1"),
            ("1999", "1.999e+3"),
        ] {
            same(a, b);
        }
        for (a, b) in [
            ("1", "2"),
            ("1", "-1"),
            ("0.1", "0.10000000000000001"),
            ("12345678901234567890", "12345678901234567891"),
            ("9007199254740993", "9007199254740992"),
        ] {
            different(a, b);
        }
        for bad in ["01", "1.", ".5", "+1", "1e", "--1", "1e9999999999999999999"] {
            assert_eq!(canonical(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn strings_compare_by_value() {
        same(r#""caf\u00e9""#, "\"café\"");
        same(r#""\/""#, r#""/""#);
        same(r#""\ud83d\ude00""#, "\"😀\"");
        different(r#""a""#, r#""A""#);
        for bad in [r#""\ud83d""#, r#""\x""#, "\"a\nb\"", r#""abc"#] {
            assert_eq!(canonical(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn what_has_no_canonical_form() {
        for bad in [
            "",
            "{",
            r#"{"a":1,}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a":1} x"#,
            "nul",
            "order=7",
        ] {
            assert_eq!(canonical(bad.as_bytes()), None, "{bad}");
        }
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(canonical(deep.as_bytes()), None);
        let fits = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(canonical(fits.as_bytes()).is_some());
        assert_eq!(canonical(&[0x22, 0xff, 0x22]), None, "not UTF-8");
    }
}
