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
/// would stop matching their retries. That needs a major release and a migration note.
#[test]
fn golden_vectors() {
    let map: BTreeMap<&str, u32> = [("a", 1), ("b", 2)].into_iter().collect();
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
        (
            "ChargeRequest",
            hex(&ChargeRequest {
                order_id: "A-1".into(),
                amount_cents: 1999,
                currency: Currency::Eur,
                note: None,
            }),
        ),
    ];
    let expected = [
        "0u8 dc4c8669df128318c5790c414c870cc76c585268552851e78d3ee8604dbec0e3",
        "1i64 ae8fbec16aca5626b12c71fc716df9bfeed7412a6fe0328331a557fcdc5b264e",
        "-1i32 339eed010a5e07b4314cb00f1234d636dc30df8fce73917165c299c6b4811804",
        "u64::MAX 3ed40262bf3e6af051e4660f623c94b1b0e058c8d03f13af65b657ae84c02e03",
        "i128::MIN 355c87a603ff2b1d4d3d15dae423a81e5f6d334d23969446f30b22b12f7bab1a",
        "u128::MAX 5e19ff9af820c6a17deb53395984741ab9586c1fe0ba1dae1579e70cd7d04331",
        "1.5f64 91de4b6edb4650ad75ea744325192d3819a76818d30eae9194dde0491f0f4a64",
        "-0.0f64 69c29c051218dbea38795b1cdfd816855c312a9cbc0b1daaa79bb9a0b895361a",
        "NaN 37d84ee0548c77f9e17bd7a8afaf70343a345e3570b98157895035ee9ead0040",
        "inf 7cb4d610b0d8c51af67bb282f087fd998555e928cee00bd8b7d046bd5d428d54",
        "true dbc1b4c900ffe48d575b5da5c638040125f65db0fe3e24494b76ea986457d986",
        "'x' 681fbc32437f1bdd7f24c214adf8d9c07afecf8e9aece160ec744600a6f7c061",
        "\"\" 92c0a3cd8b571ac5634aa066fcc63d7b62155c36126a29231d97692ff2944875",
        "\"hello\" 030d51967ac2eefa2f661eae5149caac63badeda7173629f5f6cf3587586eaad",
        "\"ünïcödé\" a1bb82f76ede6875075459f61d9a7518723f28e2665f6d44a7a4a85c887beca6",
        "bytes c1fcf5b9e1e4012fa97cdfe95c0c8e9b03bfc82316b60738c669a22d8642de5d",
        "None 01ba4719c80b6fe911b091a7c05124b64eeece964e09c058ef8f9805daca546b",
        "Some(7) b008d219294e7eded900db037a66bde176a851b8f2d97320155988db9d06c770",
        "() 6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "Marker 6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "OrderId(42) db40d530a39f25b7c4cb009aade03fe5705c49cfa4bdda701d3b2784a31e75b9",
        "[1,2,3] 65a7de614612dad9da7db005978cd742722da2dbb57c017ef1b2c8fbe669203a",
        "(\"ab\",\"\") eafefa335a2d3cf46df715ca6625b1648040d9fbc37eb90ad5a0742daa914065",
        "(\"a\",\"b\") dd5cc726edc91d8014322411f5b2fa13d6a592b110e315c6540bf0e70785011a",
        "Event::Created d2b3524b072e4c2e7332cb4d64374347adea00fc80c2d73900c8b66f70bc967b",
        "Event::Paid 62c8bbf39dae49032be3f876d48ed196cc9d6174b537fe98b1601ce2a8092b5f",
        "Event::Moved f1231933b36b89be38115034fd2630f86938b70e2654bddfe25e0b02ec43f7e2",
        "Event::Refunded 22ab568efb65020bf70c824e0715f8ced605d26fabde3d78ce9eb0632154e32e",
        "{a:1,b:2} a909b6759959f2906e49c40b264b2420d279a2fd8cc9d0e753e39f6be0fefd07",
        "ChargeRequest 4d55223ad2306e04c2ddc246de8f3c0c89e5b837f13fc56a3abd43b6ad3fdad9",
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
/// serializer: a tag byte, little-endian integers, `u64` length prefixes, an end tag.
#[test]
fn encoding_is_as_documented() {
    use sha2::{Digest as _, Sha256};
    let sha = |bytes: &[u8]| -> String { hex::encode(Sha256::digest(bytes)) };
    let string = |text: &str| -> Vec<u8> {
        let mut out = vec![0x08];
        out.extend((text.len() as u64).to_le_bytes());
        out.extend(text.as_bytes());
        out
    };
    assert_eq!(hex(&0u8), sha(&[0x03, 0, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(hex("hello"), sha(&string("hello")));
    let pair = [vec![0x0E], string("a"), string("b"), vec![0x0F]].concat();
    assert_eq!(hex(&("a", "b")), sha(&pair));
    let option = [vec![0x0B, 0x03], 7i64.to_le_bytes().to_vec()].concat();
    assert_eq!(hex(&Some(7)), sha(&option));
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
}
