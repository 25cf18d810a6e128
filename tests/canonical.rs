//! The canonical encoding: golden vectors pin it across releases, properties pin its meaning.

use std::collections::{BTreeMap, HashMap};

use idempotency::Digest;
use proptest::prelude::*;
use serde::Serialize;

#[derive(Serialize)]
struct ChargeRequest {
    order_id: String,
    amount_cents: u64,
    currency: Currency,
    note: Option<String>,
}

#[derive(Serialize)]
enum Currency {
    Eur,
}

#[derive(Serialize)]
enum Event {
    Created,
    Paid(u64),
    Moved(i32, i32),
    Refunded { cents: u64, reason: String },
}

#[derive(Serialize)]
struct OrderId(u64);

#[derive(Serialize)]
struct Marker;

#[derive(Serialize)]
struct Line {
    sku: String,
    quantity: u32,
}

#[derive(Serialize)]
struct NestedOrder {
    id: OrderId,
    lines: Vec<Line>,
    charge: ChargeRequest,
}

struct Raw(&'static [u8]);

impl Serialize for Raw {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

fn hex<T: Serialize + ?Sized>(value: &T) -> String {
    Digest::of(value).expect("hashing").to_string()
}

/// Changing any of these digests changes every key derived from such values: stored records
/// would stop matching their retries. That needs a major release and a migration note (the
/// map vectors changed in 0.2, when entry digests went from summed to sorted: CHANGELOG.md).
#[test]
fn golden_vectors() {
    let map: BTreeMap<&str, u32> = [("a", 1), ("b", 2)].into_iter().collect();
    let empty: BTreeMap<&str, u32> = BTreeMap::new();
    let nested: BTreeMap<&str, BTreeMap<&str, u32>> =
        [("outer", map.clone()), ("empty", empty.clone())]
            .into_iter()
            .collect();
    // Over the 32 entries hashed without allocating: the heap path.
    let large: BTreeMap<String, u32> = (0..40).map(|i| (format!("k{i}"), i)).collect();
    let vectors: Vec<(&str, String)> = vec![
        ("0u8", hex(&0u8)),
        ("1i64", hex(&1i64)),
        ("-1i32", hex(&-1i32)),
        ("u64::MAX", hex(&u64::MAX)),
        ("i128::MIN", hex(&i128::MIN)),
        ("u128::MAX", hex(&u128::MAX)),
        ("1.5f64", hex(&1.5f64)),
        ("-0.0f64", hex(&-0.0f64)),
        ("NaN", hex(&f64::NAN)),
        ("inf", hex(&f64::INFINITY)),
        ("true", hex(&true)),
        ("'x'", hex(&'x')),
        ("\"\"", hex("")),
        ("\"hello\"", hex("hello")),
        ("\"ünïcödé\"", hex("ünïcödé")),
        ("bytes", hex(&Raw(b"\x00\x01\xff"))),
        ("None", hex(&None::<u32>)),
        ("Some(7)", hex(&Some(7))),
        ("()", hex(&())),
        ("Marker", hex(&Marker)),
        ("OrderId(42)", hex(&OrderId(42))),
        ("[1,2,3]", hex(&vec![1, 2, 3])),
        ("(\"ab\",\"\")", hex(&("ab", ""))),
        ("(\"a\",\"b\")", hex(&("a", "b"))),
        ("Event::Created", hex(&Event::Created)),
        ("Event::Paid", hex(&Event::Paid(5))),
        ("Event::Moved", hex(&Event::Moved(-1, 1))),
        (
            "Event::Refunded",
            hex(&Event::Refunded {
                cents: 250,
                reason: "damaged".into(),
            }),
        ),
        ("{a:1,b:2}", hex(&map)),
        ("{}", hex(&empty)),
        ("{outer:{a:1,b:2},empty:{}}", hex(&nested)),
        ("{k0:0..k39:39}", hex(&large)),
        (
            "ChargeRequest",
            hex(&ChargeRequest {
                order_id: "A-1".into(),
                amount_cents: 1999,
                currency: Currency::Eur,
                note: None,
            }),
        ),
        (
            "Order (nested structs)",
            hex(&NestedOrder {
                id: OrderId(7),
                lines: vec![
                    Line {
                        sku: "book".into(),
                        quantity: 2,
                    },
                    Line {
                        sku: "lamp".into(),
                        quantity: 1,
                    },
                ],
                charge: ChargeRequest {
                    order_id: "A-7".into(),
                    amount_cents: 4200,
                    currency: Currency::Eur,
                    note: Some("gift".into()),
                },
            }),
        ),
    ];
    let expected = [
        "0u8 9b4fb24edd6d1d8830e272398263cdbf026b97392cc35387b991dc0248a628f9",
        "1i64 d4ea3fc5537ce615543ea44f074bff451fb6c9749e9e8692c111f7070b4780c7",
        "-1i32 67294d0eff78c6dbf4ae91576d495f81ca8f9967119cff318132f79d41285dfc",
        "u64::MAX 3ed40262bf3e6af051e4660f623c94b1b0e058c8d03f13af65b657ae84c02e03",
        "i128::MIN 355c87a603ff2b1d4d3d15dae423a81e5f6d334d23969446f30b22b12f7bab1a",
        "u128::MAX 5e19ff9af820c6a17deb53395984741ab9586c1fe0ba1dae1579e70cd7d04331",
        "1.5f64 91de4b6edb4650ad75ea744325192d3819a76818d30eae9194dde0491f0f4a64",
        "-0.0f64 69c29c051218dbea38795b1cdfd816855c312a9cbc0b1daaa79bb9a0b895361a",
        "NaN 37d84ee0548c77f9e17bd7a8afaf70343a345e3570b98157895035ee9ead0040",
        "inf 7cb4d610b0d8c51af67bb282f087fd998555e928cee00bd8b7d046bd5d428d54",
        "true dbc1b4c900ffe48d575b5da5c638040125f65db0fe3e24494b76ea986457d986",
        "'x' 681fbc32437f1bdd7f24c214adf8d9c07afecf8e9aece160ec744600a6f7c061",
        "\"\" e545d395bb3fd971f91bf9a2b6722831df704efae6c1aa9da0989ed0970b77bb",
        "\"hello\" 191d880a7ff83c3e2fa0b4a1530950edcf8f9f552c6626208e60e0e20adac1f5",
        "\"ünïcödé\" cd2ffb917bdee17e80b918ce323f1c833757e8b90283ee76db3f2eac11ca02c1",
        "bytes bba866081fc10b3bcc8f2b3ea5969c74e727341dfb861fb9515df62d0f251795",
        "None 01ba4719c80b6fe911b091a7c05124b64eeece964e09c058ef8f9805daca546b",
        "Some(7) 4938c0762d1def3558c7fea14c5ce59c43caf015554edf477dbdf7589255c39b",
        "() 6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "Marker 6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "OrderId(42) 3373f27f67346f5aeeecf767d2f456e7506f12a077a9ce0d89dba643a7c1b059",
        "[1,2,3] 4376e7c91092d810a51caa8528f66d8556727a6bbbee26ba8959c21e8487b753",
        "(\"ab\",\"\") c72d0237e86ca574e57ee9d0a202867c9664e51f877971a567a94ff12549a23d",
        "(\"a\",\"b\") 5594320493697abbc60999fd27c4dd3280fcf0659d841f32e0d19e34c22b3c19",
        "Event::Created a900004b6319ccbe54504fdec8d6e3ec2401f29f081bf8234f13e7b749019663",
        "Event::Paid 676522820604f05258e8099f59f3dbd5e61c74ceda352cc4a372f674c56b0e06",
        "Event::Moved fed04e1aaf73db979144eb91100ddaa081fcfd3c93eae1c3ac3735ece4c51f4f",
        "Event::Refunded 1d760c47b50046b486e51932006f22a8c8ffd786a7faaf31be826a30761124de",
        "{a:1,b:2} 70d9f82f463292ee371c55ce3be80efcc0fbb29d829df9638b0acb70d10a2934",
        "{} d94e7f1e9bb1f8a9b90996ba12c461b84956f0e7f230145cc594c2f80b067aa0",
        "{outer:{a:1,b:2},empty:{}} ecefd188b6c908872659fd27e88b9deb76591a095ccb6c4aba07c221cd7297e8",
        "{k0:0..k39:39} d291d3701739a225fb08fc851d79e87375cef3232e7f3a289ce85c0c74ce95b0",
        "ChargeRequest e33df403c17036b4e313fad6cdbe993cf9562d133fd0db91f2b98da854b47350",
        "Order (nested structs) 3b7ed7e60bc0fdb8b979b034d929fe5d2973f40bbeb8a3201793a976cbb54941",
    ];
    let actual: Vec<String> = vectors
        .iter()
        .map(|(name, digest)| format!("{name} {digest}"))
        .collect();
    assert_eq!(
        actual,
        expected,
        "golden vectors changed:\n{}",
        actual.join("\n")
    );
}

/// The encoding spelled out byte by byte for a few values, computed independently of the
/// serializer: a tag byte, zigzag LEB128 integers, LEB128 length prefixes, an end tag.
#[test]
fn encoding_is_as_documented() {
    use sha2::{Digest as _, Sha256};
    let sha = |bytes: &[u8]| -> String { hex::encode(Sha256::digest(bytes)) };
    let string = |text: &str| -> Vec<u8> {
        assert!(text.len() < 128, "one-byte length in this helper");
        let mut out = vec![0x08, text.len() as u8];
        out.extend(text.as_bytes());
        out
    };
    assert_eq!(hex(&0u8), sha(&[0x03, 0x00]));
    assert_eq!(hex(&-1i32), sha(&[0x03, 0x01]));
    assert_eq!(hex(&1999u64), sha(&[0x03, 0x9E, 0x1F])); // zigzag 3998 = 0x0F9E
    assert_eq!(hex("hello"), sha(&string("hello")));
    let pair = [vec![0x0E], string("a"), string("b"), vec![0x0F]].concat();
    assert_eq!(hex(&("a", "b")), sha(&pair));
    assert_eq!(hex(&Some(7)), sha(&[0x0B, 0x03, 0x0E]));
    let long = "x".repeat(200);
    let mut long_encoding = vec![0x08, 0xC8, 0x01]; // 200 = 0b1_1001000
    long_encoding.extend(long.as_bytes());
    assert_eq!(hex(long.as_str()), sha(&long_encoding));
}

/// The canonical encoding of a string key and an integer value, written out by hand: a map
/// digest is checked against it below, independently of the serializer.
mod reference {
    use sha2::{Digest as _, Sha256};

    /// Unsigned LEB128.
    pub(super) fn varint(mut value: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    pub(super) fn string(text: &str, out: &mut Vec<u8>) {
        out.push(0x08);
        varint(text.len() as u64, out);
        out.extend(text.as_bytes());
    }

    pub(super) fn integer(value: i64, out: &mut Vec<u8>) {
        out.push(0x03);
        varint(((value << 1) ^ (value >> 63)) as u64, out);
    }

    /// A map: the tag, the entry count, then SHA-256 of each entry's encoding (key, then
    /// value), sorted bytewise.
    pub(super) fn map<'a>(entries: impl IntoIterator<Item = (&'a str, i64)>) -> Vec<u8> {
        let mut digests: Vec<[u8; 32]> = entries
            .into_iter()
            .map(|(key, value)| {
                let mut entry = Vec::new();
                string(key, &mut entry);
                integer(value, &mut entry);
                Sha256::digest(&entry).into()
            })
            .collect();
        digests.sort();
        let mut out = vec![0x11];
        varint(digests.len() as u64, &mut out);
        for digest in digests {
            out.extend(digest);
        }
        out
    }

    pub(super) fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }
}

#[test]
fn a_map_is_its_sorted_entry_digests() {
    let map: BTreeMap<&str, u32> = [("a", 1), ("b", 2)].into_iter().collect();
    let expected = reference::sha(&reference::map([("a", 1), ("b", 2)]));
    assert_eq!(hex(&map), expected);
    let empty: HashMap<&str, u32> = HashMap::new();
    assert_eq!(hex(&empty), reference::sha(&[0x11, 0x00]));
}

/// A map whose `Serialize` impl gives the same entry more than once: every copy counts.
struct Repeated(usize);

impl Serialize for Repeated {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(None)?;
        for _ in 0..self.0 {
            map.serialize_entry("k", &1)?;
        }
        map.end()
    }
}

#[test]
fn repeated_entries_count_each_time() {
    let digests: Vec<String> = (0..4).map(|n| hex(&Repeated(n))).collect();
    for (n, digest) in digests.iter().enumerate() {
        assert_eq!(
            *digest,
            reference::sha(&reference::map(std::iter::repeat_n(("k", 1), n)))
        );
    }
    let distinct: std::collections::BTreeSet<&String> = digests.iter().collect();
    assert_eq!(distinct.len(), 4, "{digests:?}");
}

/// What changes a value's digest, and so a key or fingerprint built from it: field names,
/// their order, an added field (even `None`); not a type's name, a `#[serde(rename)]` that
/// keeps the old field name, or a newtype around a value.
#[test]
fn fields_count_by_name_and_order_types_not_by_name() {
    #[derive(Serialize)]
    struct Refund {
        charge: u64,
        cents: u32,
    }
    #[derive(Serialize)]
    struct RefundRequest {
        charge: u64,
        cents: u64,
    }
    #[derive(Serialize)]
    struct Reordered {
        cents: u32,
        charge: u64,
    }
    #[derive(Serialize)]
    struct Extended {
        charge: u64,
        cents: u32,
        reason: Option<String>,
    }
    #[derive(Serialize)]
    struct Renamed {
        charge: u64,
        #[serde(rename = "cents")]
        amount_cents: u32,
    }
    #[derive(Serialize)]
    struct Cents(u32);
    #[derive(Serialize)]
    struct Wrapped {
        charge: u64,
        cents: Cents,
    }
    let refund = hex(&Refund {
        charge: 1,
        cents: 250,
    });
    let same = [
        hex(&RefundRequest {
            charge: 1,
            cents: 250,
        }),
        hex(&Renamed {
            charge: 1,
            amount_cents: 250,
        }),
        hex(&Wrapped {
            charge: 1,
            cents: Cents(250),
        }),
    ];
    assert!(same.iter().all(|digest| *digest == refund), "{same:?}");
    let other = [
        hex(&Reordered {
            cents: 250,
            charge: 1,
        }),
        hex(&Extended {
            charge: 1,
            cents: 250,
            reason: None,
        }),
    ];
    assert!(other.iter().all(|digest| *digest != refund), "{other:?}");
}

#[test]
fn maps_agree_whatever_their_type_and_order() {
    let mut hash = HashMap::new();
    let mut tree = BTreeMap::new();
    for i in 0..100u32 {
        hash.insert(format!("sku-{i}"), i * 3);
        tree.insert(format!("sku-{i}"), u64::from(i * 3));
    }
    assert_eq!(hex(&hash), hex(&tree));
}

#[test]
fn hashing_arguments_does_not_allocate() {
    let request = ChargeRequest {
        order_id: "A-1".into(),
        amount_cents: 1999,
        currency: Currency::Eur,
        note: Some("gift".into()),
    };
    let map: BTreeMap<&str, u32> = [("a", 1), ("b", 2)].into_iter().collect();
    let event = Event::Refunded {
        cents: 1,
        reason: "r".into(),
    };
    let before = allocations::count();
    let mut builder = idempotency::DigestBuilder::new();
    builder.push(&request);
    builder.push(&map);
    builder.push(&event);
    let digest = builder.finish();
    let after = allocations::count();
    assert!(digest.is_ok());
    assert_eq!(
        after - before,
        0,
        "hashing allocated {} times",
        after - before
    );
}

/// Maps of up to 32 entries are hashed without allocating (their entry digests are sorted on
/// the stack), nested ones too.
#[test]
fn hashing_maps_of_up_to_32_entries_does_not_allocate() {
    let largest: HashMap<String, u64> = (0..32).map(|i| (format!("sku-{i}"), i)).collect();
    let nested: BTreeMap<u32, BTreeMap<String, u64>> = (0..3)
        .map(|i| (i, largest.iter().map(|(k, v)| (k.clone(), *v)).collect()))
        .collect();
    let before = allocations::count();
    let digests = (Digest::of(&largest), Digest::of(&nested));
    let after = allocations::count();
    assert!(digests.0.is_ok() && digests.1.is_ok());
    assert_eq!(
        after - before,
        0,
        "hashing allocated {} times",
        after - before
    );
}

/// Counts this thread's heap allocations, so the test above measures only its own work.
mod allocations {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    thread_local! {
        static COUNT: Cell<usize> = const { Cell::new(0) };
    }

    #[allow(unsafe_code)]
    // SAFETY: forwards to the system allocator unchanged; only counts.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = COUNT.try_with(|count| count.set(count.get() + 1));
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: same contract as the caller's.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    pub(super) fn count() -> usize {
        COUNT.with(Cell::get)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Order {
    id: String,
    cents: u64,
    lines: Vec<(String, u32)>,
    gift: Option<bool>,
    discount: i64,
}

fn order() -> impl Strategy<Value = Order> {
    (
        ".{0,12}",
        any::<u64>(),
        prop::collection::vec((".{0,6}", any::<u32>()), 0..4),
        any::<Option<bool>>(),
        any::<i64>(),
    )
        .prop_map(|(id, cents, lines, gift, discount)| Order {
            id,
            cents,
            lines,
            gift,
            discount,
        })
}

proptest! {
    #[test]
    fn equal_values_give_equal_digests(order in order()) {
        prop_assert_eq!(hex(&order), hex(&order.clone()));
    }

    #[test]
    fn any_changed_field_gives_another_digest(order in order(), field in 0..5usize, bump in 1..1000u64) {
        let mut changed = order.clone();
        match field {
            0 => changed.id.push('x'),
            1 => changed.cents = changed.cents.wrapping_add(bump),
            2 => changed.lines.push(("extra".into(), 1)),
            3 => changed.gift = match changed.gift { None => Some(true), Some(flag) => Some(!flag) },
            _ => changed.discount = changed.discount.wrapping_add(bump as i64),
        }
        prop_assert_ne!(&changed, &order);
        prop_assert_ne!(hex(&changed), hex(&order));
    }

    #[test]
    fn string_boundaries_are_part_of_the_value(text in ".{0,16}", split_a in 0..17usize, split_b in 0..17usize) {
        let chars: Vec<char> = text.chars().collect();
        let (a, b) = (split_a.min(chars.len()), split_b.min(chars.len()));
        prop_assume!(a != b);
        let pair = |at: usize| -> (String, String) {
            (chars[..at].iter().collect(), chars[at..].iter().collect())
        };
        prop_assert_ne!(hex(&pair(a)), hex(&pair(b)));
    }

    #[test]
    fn map_digests_ignore_insertion_order(entries in prop::collection::vec((".{0,8}", any::<i32>()), 0..20)) {
        let forward: HashMap<String, i32> = entries.iter().cloned().collect();
        let mut reversed: Vec<(String, i32)> = forward.iter().map(|(k, v)| (k.clone(), *v)).collect();
        reversed.reverse();
        let backward: HashMap<String, i32> = reversed.into_iter().collect();
        let sorted: BTreeMap<String, i32> = forward.clone().into_iter().collect();
        prop_assert_eq!(hex(&forward), hex(&backward));
        prop_assert_eq!(hex(&forward), hex(&sorted));
    }

    /// Up to 70 entries: on both sides of the 32 hashed on the stack.
    #[test]
    fn a_map_digest_is_the_sorted_entry_digests(entries in prop::collection::btree_map(".{0,8}", any::<i32>(), 0..70)) {
        let hashed: HashMap<&str, i32> = entries.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let expected = reference::sha(&reference::map(entries.iter().map(|(k, v)| (k.as_str(), i64::from(*v)))));
        prop_assert_eq!(hex(&hashed), expected.clone());
        prop_assert_eq!(hex(&entries), expected);
    }

    #[test]
    fn maps_with_other_entries_give_other_digests(
        entries in prop::collection::btree_map(".{0,8}", any::<i32>(), 1..40),
        pick in any::<prop::sample::Index>(),
        bump in 1..1000i32,
    ) {
        let key = pick.get(&entries.keys().cloned().collect::<Vec<_>>()).clone();
        let mut changed = entries.clone();
        changed.insert(key.clone(), entries[&key].wrapping_add(bump));
        let mut removed = entries.clone();
        removed.remove(&key);
        prop_assert_ne!(hex(&changed), hex(&entries));
        prop_assert_ne!(hex(&removed), hex(&entries));
    }
}
