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

/// `tag`, then a varint of `continued` bytes `0xff` and a last `0x7f`.
fn varint_of(tag: u8, continued: usize) -> Vec<u8> {
    let mut bytes = vec![tag];
    bytes.extend(std::iter::repeat_n(0xff, continued));
    bytes.push(0x7f);
    bytes
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
    // A string length past the end of the record, and a varint longer than a `u64`.
    assert!(decode::<String>(&varint_of(tag::STR, 8)).is_err());
    assert!(decode::<u64>(&varint_of(tag::UINT, 9)).is_err());
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

/// Every envelope starts with the time it was recorded; a record of 0.1 (no time) reads the
/// same, without one.
#[test]
fn envelopes_carry_their_recording_time_and_old_ones_read_without() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::envelope::{self, MARK_LEN, MARK_OK, OutputMode, OutputsAndErrors, recorded_at};
    use crate::error::NotStored;

    let before = SystemTime::now() - Duration::from_millis(1);
    let result: Result<String, u8> = Ok("receipt".into());
    let stored = <OutputsAndErrors as OutputMode<String, u8>>::encode(&result)
        .expect("stored")
        .expect("encoded");
    let at = recorded_at(&stored).expect("a time");
    assert!(before <= at && at <= SystemTime::now(), "{at:?}");
    assert_eq!(stored.len(), MARK_LEN + encode(&"receipt").len());
    assert_eq!(
        envelope::encoded_len(&"receipt").expect("a length"),
        stored.len()
    );
    let back = <OutputsAndErrors as OutputMode<String, u8>>::decode(&stored).expect("decoded");
    assert_eq!(back, result);

    // 0.1's layout: the mark, then the value.
    let mut old = vec![MARK_OK];
    old.extend(encode(&"receipt"));
    assert_eq!(recorded_at(&old), None);
    let back = <OutputsAndErrors as OutputMode<String, u8>>::decode(&old).expect("decoded");
    assert_eq!(back, result);
    assert_eq!(
        envelope::to_json(&old).expect("json"),
        envelope::to_json(&stored).expect("json")
    );

    // A not-stored record keeps the time too, and fits its limit with it.
    let reason = NotStored::Unencodable {
        detail: "x".repeat(300),
    };
    let record = envelope::not_stored(&reason, 40);
    assert!(record.len() <= 40, "{}", record.len());
    assert!(recorded_at(&record).is_some());
    assert!(matches!(
        envelope::read_not_stored(&record),
        Some(Ok(NotStored::Unencodable { .. }))
    ));
    // A limit too small for the time: the record fits without it, and still reads.
    let record = envelope::not_stored(&reason, 20);
    assert!(record.len() <= 20, "{}", record.len());
    assert_eq!(recorded_at(&record), None);
    assert!(matches!(
        envelope::read_not_stored(&record),
        Some(Ok(NotStored::Unencodable { .. }))
    ));

    // A time far past the 6 bytes is clamped, never wrapped.
    let mut far = Vec::new();
    far.push(envelope::MARK_RECORDED);
    far.extend_from_slice(&[0xff; 6]);
    assert_eq!(
        recorded_at(&far),
        Some(UNIX_EPOCH + Duration::from_millis((1 << 48) - 1))
    );
    // Damaged: the mark without its time.
    assert_eq!(recorded_at(&[envelope::MARK_RECORDED, 1, 2]), None);
    assert!(
        <OutputsAndErrors as OutputMode<String, u8>>::decode(&[envelope::MARK_RECORDED, 1])
            .is_err()
    );
}
