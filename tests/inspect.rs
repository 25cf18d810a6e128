//! Inspecting and forgetting keys, as support tooling does: the key of an `#[idempotent]`
//! function found with `Key::derive` from its name, version and key value; its record read
//! without its output (or with it), its outcome told apart (`Ok`, `Err` stored, not stored),
//! a key in progress refused unless forced, and a forgotten key running its body again.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use idempotency::{
    Error, Idempotency, Inspection, Key, MemoryStore, NotStored, StoredOutcome, idempotent, output,
};

#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
enum ChargeError {
    #[error("declined")]
    Declined,
    #[error("idempotency: {0}")]
    #[serde(skip)]
    Idempotency(#[from] Error),
}

#[idempotent(name = "support.charge", key = order_id, store = exec, skip(exec, runs), store_errors)]
async fn charge(
    order_id: &str,
    cents: u64,
    exec: &Idempotency,
    runs: &AtomicU32,
) -> Result<u64, ChargeError> {
    runs.fetch_add(1, Ordering::SeqCst);
    if cents == 0 {
        return Err(ChargeError::Declined);
    }
    Ok(cents)
}

#[tokio::test]
async fn support_finds_a_functions_key_reads_it_and_forgets_it() {
    let exec = Idempotency::new(MemoryStore::new());
    let runs = AtomicU32::new(0);
    let before = SystemTime::now() - Duration::from_millis(1);
    assert_eq!(
        charge("order-1234", 1999, &exec, &runs)
            .await
            .expect("charge"),
        1999
    );

    // The same key the macro derived, from the function's name, version and key value.
    let key = Key::derive("support.charge", 1, &"order-1234").expect("key");
    let found = exec.inspect(&key).await.expect("inspect");
    let Some(Inspection::Completed {
        outcome,
        recorded_at,
        expires_at,
        output_len,
        output,
        ..
    }) = found
    else {
        panic!("{found:?}");
    };
    assert_eq!(outcome, StoredOutcome::Ok);
    let recorded_at = recorded_at.expect("when the output was recorded");
    assert!(
        before <= recorded_at && recorded_at <= SystemTime::now(),
        "{recorded_at:?}"
    );
    assert!(output.is_none(), "no output bytes unless asked");
    assert!(output_len > 0);
    let left = expires_at
        .duration_since(SystemTime::now())
        .expect("in the future");
    assert!(left > Duration::from_secs(23 * 3600), "{left:?}");
    let Some(Inspection::Completed {
        output: Some(bytes),
        ..
    }) = exec.inspect_with_output(&key).await.expect("inspect")
    else {
        panic!("with its output");
    };
    assert_eq!(
        output::to_json(&bytes).expect("json").to_string(),
        r#"{"ok":1999}"#
    );

    // A retry replays; once forgotten, the key runs again.
    assert_eq!(
        charge("order-1234", 1999, &exec, &runs)
            .await
            .expect("replay"),
        1999
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(exec.forget(&key).await.expect("forget"));
    assert!(exec.inspect(&key).await.expect("inspect").is_none());
    assert!(!exec.forget(&key).await.expect("nothing left"));
    assert_eq!(
        charge("order-1234", 1999, &exec, &runs)
            .await
            .expect("again"),
        1999
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    // A stored error is told apart.
    let declined = charge("order-0", 0, &exec, &runs).await;
    assert!(matches!(declined, Err(ChargeError::Declined)));
    let key = Key::derive("support.charge", 1, &"order-0").expect("key");
    let found = exec.inspect(&key).await.expect("inspect");
    assert!(
        matches!(
            found,
            Some(Inspection::Completed {
                outcome: StoredOutcome::Err,
                ..
            })
        ),
        "{found:?}"
    );
}

#[tokio::test]
async fn a_key_in_progress_is_kept_unless_forced_and_not_stored_outputs_show() {
    let exec = Idempotency::builder(MemoryStore::new())
        .max_output_bytes(64)
        .build();
    let key = Key::derive("support.export", 1, &"export-7").expect("key");
    let fingerprint = idempotency::Fingerprint::of(&"export-7").expect("fingerprint");

    let (started, release) = (tokio::sync::Notify::new(), tokio::sync::Notify::new());
    let running = exec.run(key.clone(), fingerprint, || async {
        started.notify_one();
        release.notified().await;
        Ok::<_, Error>(())
    });
    let support = async {
        started.notified().await;
        let found = exec.inspect(&key).await.expect("inspect");
        let Some(Inspection::InProgress { lease_until, .. }) = found else {
            panic!("{found:?}");
        };
        assert!(lease_until > SystemTime::now());
        let refused = exec.forget(&key).await;
        assert!(
            matches!(refused, Err(Error::InProgress { .. })),
            "{refused:?}"
        );
        assert!(exec.inspect(&key).await.expect("inspect").is_some(), "kept");
        assert!(exec.forget_forced(&key).await.expect("forced"));
        release.notify_one();
    };
    let (ran, ()) = tokio::join!(running, support);
    // Its claim was taken away: its result could not be recorded.
    assert!(ran.is_err(), "{ran:?}");

    // An output over the limit: recorded as run, not stored.
    let big = Key::derive("support.export", 1, &"export-8").expect("key");
    let fingerprint = idempotency::Fingerprint::of(&"export-8").expect("fingerprint");
    let output = exec
        .run(big.clone(), fingerprint, || async {
            Ok::<_, Error>("x".repeat(500))
        })
        .await
        .expect("the body's own result");
    assert_eq!(output.len(), 500);
    let found = exec.inspect(&big).await.expect("inspect");
    assert!(
        matches!(
            found,
            Some(Inspection::Completed {
                outcome: StoredOutcome::NotStored(NotStored::TooLarge { .. }),
                ..
            })
        ),
        "{found:?}"
    );
}
