//! `Call::run_obtained`: the output and how it was obtained — executed, replayed at once, or
//! replayed after waiting for another call (of this process, or of another executor polling
//! the store).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use idempotency::{
    Error, Fingerprint, How, Idempotency, InProgressPolicy, Key, MemoryStore, Obtained,
};
use tokio::sync::Notify;

fn key(name: &str) -> (Key, Fingerprint) {
    (
        Key::derive("orders::confirm", 1, &name).expect("a key"),
        Fingerprint::of(&name).expect("a fingerprint"),
    )
}

/// Holds `key` in `holder` until `release` is notified, then answers `"first"`.
fn hold(
    holder: &Idempotency,
    key: Key,
    fingerprint: Fingerprint,
    started: Arc<Notify>,
    release: Arc<Notify>,
) -> tokio::task::JoinHandle<Result<Obtained<String>, Error>> {
    let holder = holder.clone();
    tokio::spawn(async move {
        holder
            .call(key, fingerprint)
            .run_obtained(|| async move {
                started.notify_one();
                release.notified().await;
                Ok::<_, Error>("first".to_owned())
            })
            .await
    })
}

async fn waits_for(holder: Idempotency, waiter: Idempotency) {
    let (key, fingerprint) = key("order-wait");
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let first = hold(
        &holder,
        key.clone(),
        fingerprint,
        Arc::clone(&started),
        Arc::clone(&release),
    );
    started.notified().await;
    let second = tokio::spawn(async move {
        waiter
            .call(key, fingerprint)
            .on_in_progress(InProgressPolicy::Wait)
            .run_obtained(|| async { Ok::<_, Error>("second".to_owned()) })
            .await
    });
    // Time for the waiter to find the key held and start waiting (generous: a busy CI machine).
    tokio::time::sleep(Duration::from_millis(250)).await;
    release.notify_one();
    let first = first.await.expect("the holder").expect("its output");
    let second = second.await.expect("the waiter").expect("the replay");
    assert_eq!(first.how, How::Executed);
    assert!(!first.replayed());
    assert_eq!(second.how, How::ReplayedAfterWaiting);
    assert!(second.replayed());
    assert_eq!(second.output, "first");
    // The waiter reads when the holder recorded its output, from the record itself.
    let recorded = first.recorded_at.expect("the execution's recording time");
    assert_eq!(second.recorded_at, Some(recorded));
}

#[tokio::test]
async fn executed_then_replayed() {
    {
        let idempotency = Idempotency::new(MemoryStore::new());
        let (key, fingerprint) = key("order-1");
        let mut seen = Vec::new();
        let mut expiries = Vec::new();
        let mut recorded = Vec::new();
        let before = SystemTime::now();
        for _ in 0..3 {
            let obtained = idempotency
                .call(key.clone(), fingerprint)
                .ttl(Duration::from_secs(3600))
                .run_obtained(|| async { Ok::<_, Error>(7u32) })
                .await
                .expect("an output");
            assert_eq!(obtained.output, 7);
            seen.push(obtained.how);
            expiries.push(obtained.expires_at.expect("the record's expiry"));
            recorded.push(obtained.recorded_at.expect("when the output was recorded"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(seen, [How::Executed, How::Replayed, How::Replayed]);
        // Every replay tells when the first call recorded the output (to the millisecond the
        // record keeps), not when the replay happened.
        assert_eq!(recorded[1], recorded[0], "{recorded:?}");
        assert_eq!(recorded[2], recorded[0], "{recorded:?}");
        let first = recorded[0];
        assert!(
            first + Duration::from_millis(1) >= before && first <= SystemTime::now(),
            "{first:?} not within the call"
        );
        // The execution's expiry is now + ttl by this clock; the replays read the record's,
        // which the store set at the same moment (the memory store adds a margin of its own).
        let hour = SystemTime::now() + Duration::from_secs(3600);
        for at in &expiries {
            let off = at
                .duration_since(hour)
                .unwrap_or_else(|before| before.duration());
            assert!(off < Duration::from_secs(5), "{expiries:?}");
        }
        let failed = idempotency
            .call(
                key.clone(),
                Fingerprint::of(&"other").expect("a fingerprint"),
            )
            .run_obtained(|| async { Ok::<_, Error>(8u32) })
            .await;
        assert!(matches!(failed, Err(Error::KeyReused { .. })));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_after_waiting_for_a_flight_of_this_process() {
    let idempotency = Idempotency::new(MemoryStore::new());
    waits_for(idempotency.clone(), idempotency).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_after_polling_a_store_another_executor_holds() {
    // Two executors over one store: the waiter has no flight to follow and polls the store.
    let store = MemoryStore::new();
    let holder = Idempotency::new(store.clone());
    let waiter = Idempotency::new(store);
    waits_for(holder, waiter).await;
}

mod macro_functions {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use idempotency::{Error, How, Obtained, idempotent};

    static EMAILS: AtomicUsize = AtomicUsize::new(0);
    static CHARGES: AtomicUsize = AtomicUsize::new(0);

    #[idempotent(key = order)]
    async fn charge(order: u64, cents: u64) -> Result<Obtained<String>, Error> {
        CHARGES.fetch_add(1, Ordering::SeqCst);
        Ok(Obtained::executed(format!("receipt for {order}: {cents}")))
    }

    /// Sends the receipt email only when the charge ran in this call.
    async fn checkout(order: u64) -> Result<String, Error> {
        let charged = charge(order, 1250).await?;
        if !charged.replayed() {
            EMAILS.fetch_add(1, Ordering::SeqCst);
        }
        Ok(charged.output)
    }

    #[tokio::test]
    async fn a_function_returning_obtained_tells_a_replay_apart() {
        let first = charge(41, 500).await.expect("a charge");
        assert_eq!(first.how, How::Executed);
        let again = charge(41, 500).await.expect("a replay");
        assert_eq!(again.how, How::Replayed);
        assert_eq!(again.output, first.output);

        for _ in 0..3 {
            assert_eq!(
                checkout(42).await.expect("a checkout"),
                "receipt for 42: 1250"
            );
        }
        assert_eq!(
            EMAILS.load(Ordering::SeqCst),
            1,
            "one email for three checkouts"
        );
        assert_eq!(CHARGES.load(Ordering::SeqCst), 2);

        // The record's times: the replay tells when the charge was recorded and until when.
        let recorded = first.recorded_at.expect("the execution's recording time");
        assert_eq!(again.recorded_at, Some(recorded));
        let expires = first.expires_at.expect("the execution's expiry");
        let replayed = again.expires_at.expect("the record's expiry");
        // The store's own expiry (set as it stored the record, with the memory store's margin).
        let off = replayed
            .duration_since(expires)
            .unwrap_or_else(|before| before.duration());
        assert!(
            off < Duration::from_secs(5),
            "{replayed:?} against {expires:?}"
        );
        let ttl = expires
            .duration_since(recorded)
            .expect("expiry after recording");
        assert_eq!(ttl, idempotency::defaults::TTL);
    }

    #[idempotent(key = order, skip(started, release))]
    async fn slow_charge(
        order: u64,
        started: &tokio::sync::Notify,
        release: &tokio::sync::Notify,
    ) -> Result<Obtained<u64>, Error> {
        started.notify_one();
        release.notified().await;
        Ok(Obtained::executed(order * 100))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_function_returning_obtained_tells_a_replay_after_waiting() {
        let started = std::sync::Arc::new(tokio::sync::Notify::new());
        let release = std::sync::Arc::new(tokio::sync::Notify::new());
        let (s, r) = (started.clone(), release.clone());
        let first = tokio::spawn(async move { slow_charge(77, &s, &r).await });
        started.notified().await;
        let (s, r) = (started.clone(), release.clone());
        let second = tokio::spawn(async move { slow_charge(77, &s, &r).await });
        // Time for the duplicate to find the key held and start waiting (generous for CI).
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        release.notify_one();
        let first = first.await.expect("the first").expect("its output");
        let second = second.await.expect("the duplicate").expect("the replay");
        assert_eq!(first.how, How::Executed);
        assert_eq!(second.how, How::ReplayedAfterWaiting);
        assert_eq!(second.output, 7700);
        assert_eq!(second.recorded_at, first.recorded_at);
        assert!(first.recorded_at.is_some());
        // Right after: a plain replay.
        let third = slow_charge(77, &started, &release).await.expect("a replay");
        assert_eq!(third.how, How::Replayed);
    }

    /// A one-argument alias of `Result`, as `anyhow::Result<T>` is.
    type Charged<T> = Result<T, Error>;

    #[idempotent(key = order)]
    async fn charge_aliased(order: u64) -> Charged<Obtained<u64>> {
        Ok(Obtained::executed(order + 1))
    }

    #[tokio::test]
    async fn a_result_spelled_by_an_alias_is_told_too() {
        let first = charge_aliased(5).await.expect("a charge");
        assert_eq!(first.how, How::Executed);
        assert!(first.recorded_at.is_some() && first.expires_at.is_some());
        let again = charge_aliased(5).await.expect("a replay");
        assert_eq!(again.how, How::Replayed);
        assert_eq!(again.recorded_at, first.recorded_at);
        assert!(again.expires_at.is_some());
    }
}
