use std::any::Any;
use std::time::SystemTime;

use bytes::Bytes;

use super::{
    LONG, PAST_SHORT, SHORT, acquire, assert_completes, assert_lease_lost, assert_replays,
    claim_acquires, complete, fingerprint, fresh, owner, read,
};
use crate::key::{Digest, Key};
use crate::record::{ClaimNow, Keep, Record, Token};
use crate::store::{ClaimRequest, Completion, Store};

/// After `complete`, a claim returns the stored fingerprint and output, byte for byte.
pub async fn complete_then_claim_replays(store: &dyn Store) {
    let key = fresh("complete_then_claim_replays");
    let token = acquire(store, &key, LONG).await;
    let output = b"{\"Ok\":\"receipt-1\"}";
    assert_completes(
        store,
        &key,
        &token,
        &output[..],
        LONG,
        "the owner's complete",
    )
    .await;
    for _ in 0..2 {
        assert_replays(
            store,
            &key,
            &fingerprint("b"),
            output,
            "claim of a completed key",
        )
        .await;
    }
    match read(store, &key).await {
        Some(Record::Completed {
            token: done_by,
            output: stored,
            expires_at,
            ..
        }) => {
            assert_eq!(done_by, token);
            assert_eq!(stored, &output[..]);
            assert!(expires_at > SystemTime::now());
        }
        other => panic!("a completed key must read as Completed, got {other:?}"),
    }
}

/// `complete` with a token that does not own the record fails and changes nothing.
pub async fn complete_is_fenced(store: &dyn Store) {
    let key = fresh("complete_is_fenced");
    let token = acquire(store, &key, LONG).await;
    assert_lease_lost(
        complete(store, &key, &Token::random(), "x", LONG).await,
        "complete with a foreign token",
    );
    assert!(
        matches!(read(store, &key).await, Some(Record::InProgress { token: t, .. }) if t == token)
    );
    let never_claimed = fresh("complete_is_fenced");
    assert_lease_lost(
        complete(store, &never_claimed, &token, "x", LONG).await,
        "complete of a key never claimed",
    );
    assert_completes(store, &key, &token, "mine", LONG, "the owner's complete").await;
}

/// A retried `complete` by the token that completed the record is `Ok` and changes nothing.
pub async fn complete_twice_by_the_owner_is_a_no_op(store: &dyn Store) {
    let key = fresh("complete_twice_by_the_owner_is_a_no_op");
    let token = acquire(store, &key, LONG).await;
    assert_completes(store, &key, &token, "first", LONG, "the first complete").await;
    let what = "a retried complete by the same token";
    assert_completes(store, &key, &token, "second", LONG, what).await;
    assert_replays(store, &key, &owner(), b"first", "the first output stays").await;
}

/// A [`Completion`] that carries a [`Keep`] completes as one without does, fenced the same way; a store that
/// keeps the value lends it with the record from `claim_now`, the value `Keep::value` gave.
pub async fn complete_with_keep_completes(store: &dyn Store) {
    let key = fresh("complete_with_keep_completes");
    let keep = Keep::new(|output| Some(Box::new(output.len()) as Box<dyn Any + Send + Sync>));
    let output = Bytes::from_static(b"kept beside its bytes");
    let token = acquire(store, &key, LONG).await;
    let stale = store
        .complete(
            &key,
            Completion::new(Token::random(), owner(), output.clone(), LONG).keeping(Some(keep)),
        )
        .await;
    assert_lease_lost(stale, "complete with a keep, by another token");
    let done = store
        .complete(
            &key,
            Completion::new(token, owner(), output.clone(), LONG).keeping(Some(keep)),
        )
        .await;
    assert!(
        done.is_ok(),
        "the owner's complete with a keep must succeed: {done:?}"
    );
    assert_replays(
        store,
        &key,
        &owner(),
        &output,
        "claim after complete with a keep",
    )
    .await;
    if let Some(Ok(ClaimNow::Held(held))) = store.claim_now(&key, ClaimRequest::new(owner(), LONG))
    {
        assert_eq!(held.fingerprint(), &owner());
        assert_eq!(held.output(), &output);
        if let Some(kept) = held.kept() {
            assert_eq!(
                kept.downcast_ref::<usize>(),
                Some(&output.len()),
                "a kept value must be the one `Keep::value` gave"
            );
        }
    }
}

/// A completed record expires after its TTL; the key is then free.
pub async fn completed_records_expire(store: &dyn Store) {
    let key = fresh("completed_records_expire");
    let token = acquire(store, &key, LONG).await;
    assert_completes(
        store,
        &key,
        &token,
        "short-lived",
        SHORT,
        "the owner's complete",
    )
    .await;
    tokio::time::sleep(PAST_SHORT).await;
    assert!(
        read(store, &key).await.is_none(),
        "an expired record must read as None"
    );
    let what = "a claim of an expired key";
    claim_acquires(store, &key, &fingerprint("b"), LONG, what).await;
}

/// `remove` deletes a record in any state and says whether there was one.
pub async fn remove_deletes_any_record(store: &dyn Store) {
    let key = fresh("remove_deletes_any_record");
    let token = acquire(store, &key, LONG).await;
    assert!(
        matches!(store.remove(&key).await, Ok(true)),
        "remove of an in-progress record"
    );
    assert_lease_lost(
        complete(store, &key, &token, "x", LONG).await,
        "complete of a removed record",
    );
    let token = acquire(store, &key, LONG).await;
    assert_completes(store, &key, &token, "x", LONG, "the owner's complete").await;
    assert!(
        matches!(store.remove(&key).await, Ok(true)),
        "remove of a completed record"
    );
    assert!(
        matches!(store.remove(&key).await, Ok(false)),
        "remove of nothing"
    );
    assert!(read(store, &key).await.is_none());
}

/// Outputs come back byte-exact: empty, every byte value, and 256 KiB.
pub async fn outputs_round_trip_byte_exact(store: &dyn Store) {
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let large: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    for output in [Bytes::new(), Bytes::from(every_byte), Bytes::from(large)] {
        let key = fresh("outputs_round_trip_byte_exact");
        let token = acquire(store, &key, LONG).await;
        let what = format!("complete of {} bytes", output.len());
        assert_completes(store, &key, &token, output.clone(), LONG, &what).await;
        let what = format!("claim of {} bytes", output.len());
        assert_replays(store, &key, &owner(), &output, &what).await;
    }
}

/// Namespaces with spaces, newlines, braces, quotes, or 10 KB of text are stored safely and
/// kept apart.
pub async fn odd_namespaces_are_safe(store: &dyn Store) {
    let nonce = Token::random();
    let long = "n".repeat(10 * 1024);
    let names = [
        format!("with spaces {nonce}"),
        format!("new\nline\r\n{nonce}"),
        format!("{{hash-tag}}:{{x}}{nonce}"),
        format!("quote'\"; drop table x; --{nonce}"),
        format!("{long}{nonce}"),
        format!("ünïcödé ✓ {nonce}"),
    ];
    let key = |name: &String| Key::new(name.clone(), 1, Digest::of_bytes(b"material"));
    for name in &names {
        let token = acquire(store, &key(name), LONG).await;
        let output = name.clone().into_bytes();
        let what = "complete under an odd namespace";
        assert_completes(store, &key(name), &token, output, LONG, what).await;
    }
    for name in &names {
        let what = "claim under an odd namespace";
        assert_replays(store, &key(name), &owner(), name.as_bytes(), what).await;
    }
}
