//! Marks: the compare-and-set values of producer-sequence deduplication
//! ([`Store::load_mark`], [`Store::swap_mark`]).

use futures_util::future::join_all;

use super::{LONG, PAST_SHORT, SHORT, fresh};
use crate::error::StoreError;
use crate::store::Store;

/// Whether `store` keeps marks: an optional part of the contract, so a store that answers
/// [`StoreError::Unsupported`] skips these cases (said on stderr).
async fn keeps_marks(store: &dyn Store, case: &str) -> bool {
    let probe = fresh(case);
    match store.load_mark(&probe).await {
        Err(StoreError::Unsupported(_)) => {
            eprintln!("{case}: SKIPPED, the store does not keep marks (optional)");
            false
        }
        _ => true,
    }
}

async fn load(store: &dyn Store, key: &crate::key::Key) -> Option<Vec<u8>> {
    store
        .load_mark(key)
        .await
        .unwrap_or_else(|error| panic!("load_mark of {key} must succeed: {error}"))
        .map(|bytes| bytes.to_vec())
}

async fn swap(
    store: &dyn Store,
    key: &crate::key::Key,
    expected: Option<&[u8]>,
    new: &[u8],
    ttl: std::time::Duration,
) -> bool {
    store
        .swap_mark(key, crate::store::MarkSwap::new(expected, new, ttl))
        .await
        .unwrap_or_else(|error| panic!("swap_mark of {key} must succeed: {error}"))
}

/// A mark starts absent; a swap succeeds only from the value the mark holds, and replaces it
/// whole.
pub async fn marks_swap_only_from_what_they_hold(store: &dyn Store) {
    if !keeps_marks(store, "marks_swap_only_from_what_they_hold").await {
        return;
    }
    let key = fresh("marks_swap_only_from_what_they_hold");
    assert_eq!(load(store, &key).await, None, "a new mark is absent");
    assert!(swap(store, &key, None, b"first", LONG).await, "create");
    assert!(
        !swap(store, &key, None, b"other", LONG).await,
        "a create over a live mark is refused"
    );
    assert!(
        !swap(store, &key, Some(b"stale"), b"other", LONG).await,
        "a swap from a value the mark does not hold is refused"
    );
    assert_eq!(load(store, &key).await.as_deref(), Some(&b"first"[..]));
    let longer = [7u8; 42];
    assert!(
        swap(store, &key, Some(b"first"), &longer, LONG).await,
        "swap"
    );
    assert_eq!(load(store, &key).await.as_deref(), Some(&longer[..]));
    assert!(
        !swap(store, &key, Some(b"first"), b"again", LONG).await,
        "a swap from the value before is refused"
    );
}

/// Of many concurrent swaps from one value, exactly one succeeds.
pub async fn concurrent_mark_swaps_succeed_once(store: &dyn Store) {
    if !keeps_marks(store, "concurrent_mark_swaps_succeed_once").await {
        return;
    }
    let key = fresh("concurrent_mark_swaps_succeed_once");
    let values: Vec<[u8; 8]> = (0u64..16).map(u64::to_be_bytes).collect();
    let creates = join_all(
        values
            .iter()
            .map(|value| swap(store, &key, None, value, LONG)),
    )
    .await;
    assert_eq!(
        creates.iter().filter(|won| **won).count(),
        1,
        "one create of 16 succeeds: {creates:?}"
    );
    let held = load(store, &key).await.expect("a mark after a create");
    let others: Vec<[u8; 8]> = (100u64..116).map(u64::to_be_bytes).collect();
    let swaps = join_all(
        others
            .iter()
            .map(|value| swap(store, &key, Some(&held), value, LONG)),
    )
    .await;
    assert_eq!(
        swaps.iter().filter(|won| **won).count(),
        1,
        "one swap of 16 from the same value succeeds: {swaps:?}"
    );
}

/// A mark expires after its TTL, and can then be created again.
pub async fn marks_expire(store: &dyn Store) {
    if !keeps_marks(store, "marks_expire").await {
        return;
    }
    let key = fresh("marks_expire");
    assert!(swap(store, &key, None, b"short-lived", SHORT).await);
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(load(store, &key).await, None, "an expired mark is absent");
    assert!(
        !swap(store, &key, Some(b"short-lived"), b"late", LONG).await,
        "a swap from an expired value is refused"
    );
    assert!(
        swap(store, &key, None, b"again", LONG).await,
        "an expired mark is created again"
    );
    assert_eq!(load(store, &key).await.as_deref(), Some(&b"again"[..]));
}

/// The marks of one namespace and version are listed, page by page, and no others
/// ([`Store::list_marks`], optional: a store that answers [`StoreError::Unsupported`] skips).
pub async fn marks_are_listed_by_namespace(store: &dyn Store) {
    use crate::key::{Digest, Key};
    use crate::store::ListRequest;

    let case = "marks_are_listed_by_namespace";
    if !keeps_marks(store, case).await {
        return;
    }
    let namespace = fresh(case).namespace().to_owned();
    let key = |namespace: &str, version: u32, n: u32| {
        Key::new(
            namespace.to_owned(),
            version,
            Digest::of_bytes(&n.to_le_bytes()),
        )
    };
    let mut wanted = std::collections::BTreeSet::new();
    for n in 0..5u32 {
        let value = format!("listed-{n}").into_bytes();
        assert!(swap(store, &key(&namespace, 1, n), None, &value, LONG).await);
        wanted.insert(value);
    }
    assert!(swap(store, &key(&namespace, 2, 0), None, b"other version", LONG).await);
    let other = format!("{namespace}-other");
    assert!(swap(store, &key(&other, 1, 0), None, b"other namespace", LONG).await);
    // Small pages (a store that scans, as Redis, may need many to cover its keyspace: a few
    // are read, and whatever they hold must be the namespace's), then pages large enough to
    // finish.
    for (limit, pages) in [(2, 20), (1000, 10_000)] {
        let mut request = ListRequest::namespace(namespace.clone(), 1).limit(limit);
        let mut listed = std::collections::BTreeSet::new();
        let mut finished = false;
        for _ in 0..pages {
            let page = match store.list_marks(request.clone()).await {
                Err(StoreError::Unsupported(_)) => {
                    eprintln!("{case}: SKIPPED, the store does not list marks (optional)");
                    return;
                }
                other => other.unwrap_or_else(|error| panic!("list_marks must succeed: {error}")),
            };
            listed.extend(page.values.iter().map(|value| value.to_vec()));
            match page.next {
                Some(next) => request = request.after(next),
                None => {
                    finished = true;
                    break;
                }
            }
        }
        assert!(
            listed.is_subset(&wanted),
            "only the namespace's marks at its version"
        );
        if finished {
            assert_eq!(listed, wanted, "every mark of the namespace at its version");
        } else {
            assert!(
                limit < 1000,
                "a listing in pages of 1000 ends within 10,000 pages"
            );
        }
    }
    assert!(
        matches!(
            store.list_marks(ListRequest::all()).await,
            Err(StoreError::InvalidRequest(_) | StoreError::Unsupported(_))
        ),
        "a listing of marks without a namespace is refused"
    );
}
