//! The behaviour contract of `#[idempotent]` on the memory store, through the public API.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{AppError, DOWN, Recording, leak};
use idempotency::{
    Error, Idempotency, InProgressPolicy, MemoryStore, NotStored, Store as _, idempotent,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize)]
struct ChargeRequest {
    order_id: String,
    amount_cents: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Receipt {
    charge_id: usize,
    amount_cents: u64,
}

fn executor() -> (&'static Idempotency, std::sync::Arc<common::Counts>) {
    let (store, counts) = Recording::new(MemoryStore::new());
    (leak(Idempotency::new(store)), counts)
}

#[idempotent(key = req.order_id, store = exec, skip(exec, runs))]
async fn charge(
    req: ChargeRequest,
    exec: &Idempotency,
    runs: &AtomicUsize,
) -> Result<Receipt, AppError> {
    let charge_id = runs.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(Receipt {
        charge_id,
        amount_cents: req.amount_cents,
    })
}

fn request(order: &str) -> ChargeRequest {
    ChargeRequest {
        order_id: order.to_owned(),
        amount_cents: 1999,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_run_the_body_once() {
    let (exec, counts) = executor();
    let runs = leak(AtomicUsize::new(0));
    let calls: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(charge(request("order-1000"), exec, runs)))
        .collect();
    let mut receipts = Vec::new();
    for call in calls {
        receipts.push(call.await.expect("task").expect("call"));
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the body ran more than once"
    );
    assert!(receipts.iter().all(|receipt| *receipt == receipts[0]));
    let (claims, completes, releases) = counts.snapshot();
    assert_eq!((completes, releases), (1, 0));
    // Duplicates in one process wait on the owner's flight, not on the store. A call that
    // raced the owner's claim (before its flight started) asks the store once, or twice if its
    // first nap ended before the flight appeared, then follows the flight. Polling instead
    // would ask after every nap (2, 4, 8… ms) for the body's 50 ms: several claims a
    // call. How many race depends on the OS scheduling the owner's thread: usually a few, 224
    // once in CI on a loaded machine; the bound is what separates coalescing from polling.
    assert!(
        claims <= 2000,
        "{claims} claims for 1000 coalesced calls: duplicates polled the store"
    );
}

#[tokio::test]
async fn different_arguments_run_separately() {
    let (exec, _) = executor();
    let runs = AtomicUsize::new(0);
    let a = charge(request("order-a"), exec, &runs).await.unwrap();
    let b = charge(request("order-b"), exec, &runs).await.unwrap();
    assert_ne!(a.charge_id, b.charge_id);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_key_reused_with_other_arguments_is_refused() {
    let (exec, _) = executor();
    let runs = AtomicUsize::new(0);
    charge(request("order-reuse"), exec, &runs).await.unwrap();
    let mut other = request("order-reuse");
    other.amount_cents = 5;
    let error = charge(other, exec, &runs).await.unwrap_err();
    assert!(
        matches!(error.idempotency(), Some(Error::KeyReused { .. })),
        "expected KeyReused, got {error:?}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the body must not run on key reuse"
    );
}

#[tokio::test]
async fn round_trips_are_exact() {
    let (exec, counts) = executor();
    let runs = AtomicUsize::new(0);
    charge(request("order-rt"), exec, &runs).await.unwrap();
    assert_eq!(
        counts.snapshot(),
        (1, 1, 0),
        "first execution: claim + complete"
    );
    assert_eq!(counts.total(), 2);
    charge(request("order-rt"), exec, &runs).await.unwrap();
    assert_eq!(counts.total(), 3, "replay: one claim");

    let failing_runs = AtomicUsize::new(0);
    let _ = flaky(1, exec, &failing_runs, 1).await;
    assert_eq!(counts.snapshot(), (3, 1, 1), "failed body: claim + release");
    assert_eq!(counts.total(), 5);
}

#[idempotent(store = exec, skip(exec, runs, failures))]
async fn flaky(
    order: u32,
    exec: &Idempotency,
    runs: &AtomicUsize,
    failures: usize,
) -> Result<usize, AppError> {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    if run <= failures {
        return Err(AppError::Gateway(format!(
            "timeout on run {run} of order {order}"
        )));
    }
    Ok(run)
}

#[tokio::test]
async fn errors_are_not_stored_and_a_retry_runs_again() {
    let (exec, _) = executor();
    let runs = AtomicUsize::new(0);
    let first = flaky(7, exec, &runs, 1).await;
    assert!(matches!(first, Err(AppError::Gateway(_))));
    assert_eq!(
        flaky(7, exec, &runs, 1).await.unwrap(),
        2,
        "the retry runs the body"
    );
    assert_eq!(
        flaky(7, exec, &runs, 1).await.unwrap(),
        2,
        "then it is replayed"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[derive(Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
enum ChargeError {
    #[error("card declined")]
    Declined { attempt: usize },
    #[error("{0}")]
    Idempotency(String),
}

impl From<Error> for ChargeError {
    fn from(error: Error) -> Self {
        ChargeError::Idempotency(error.to_string())
    }
}

#[idempotent(store = exec, skip(exec, runs), store_errors)]
async fn declining_charge(
    card: String,
    exec: &Idempotency,
    runs: &AtomicUsize,
) -> Result<u64, ChargeError> {
    let attempt = runs.fetch_add(1, Ordering::SeqCst) + 1;
    let _ = card;
    Err(ChargeError::Declined { attempt })
}

#[tokio::test]
async fn with_store_errors_the_error_is_replayed() {
    let (exec, _) = executor();
    let runs = AtomicUsize::new(0);
    let first = declining_charge("4000-0000".into(), exec, &runs).await;
    let retry = declining_charge("4000-0000".into(), exec, &runs).await;
    assert_eq!(first, Err(ChargeError::Declined { attempt: 1 }));
    assert_eq!(retry, first, "the stored error is replayed");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[idempotent(store = exec, skip(exec, runs), ttl = "300ms")]
async fn short_lived(id: u32, exec: &Idempotency, runs: &AtomicUsize) -> Result<usize, AppError> {
    let _ = id;
    Ok(runs.fetch_add(1, Ordering::SeqCst) + 1)
}

#[tokio::test]
async fn after_the_ttl_the_call_runs_again() {
    let (exec, _) = executor();
    let runs = AtomicUsize::new(0);
    assert_eq!(short_lived(1, exec, &runs).await.unwrap(), 1);
    assert_eq!(short_lived(1, exec, &runs).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(short_lived(1, exec, &runs).await.unwrap(), 2);
}

#[idempotent(store = exec, skip(exec, runs, delay), lease = "200ms", max_run = "200ms")]
async fn slow(
    order: u32,
    exec: &Idempotency,
    runs: &AtomicUsize,
    delay: Duration,
) -> Result<String, AppError> {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(delay).await;
    Ok(format!("order {order}, run {run}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_owner_is_taken_over_and_its_late_result_is_refused() {
    let (exec, _) = executor();
    let runs = leak(AtomicUsize::new(0));
    let hung = tokio::spawn(slow(9, exec, runs, Duration::from_millis(900)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Renewal stops at `max_run` (200 ms); the taker waits for the lease (200 ms more) to
    // pass, then takes over.
    let taker = slow(9, exec, runs, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(taker, "order 9, run 2");
    let late = hung.await.unwrap().unwrap_err();
    assert!(
        matches!(late.idempotency(), Some(Error::LeaseLost { .. })),
        "expected LeaseLost, got {late:?}"
    );
    let replay = slow(9, exec, runs, Duration::ZERO).await.unwrap();
    assert_eq!(replay, "order 9, run 2", "the new owner's result stays");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[idempotent(store = exec, skip(exec, started, finished), on_in_progress = reject)]
async fn exclusive(
    job: u32,
    exec: &Idempotency,
    started: &tokio::sync::Notify,
    finished: &AtomicUsize,
) -> Result<u32, AppError> {
    started.notify_one();
    tokio::time::sleep(Duration::from_millis(300)).await;
    finished.fetch_add(1, Ordering::SeqCst);
    Ok(job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_answers_while_the_first_call_still_runs() {
    let (exec, _) = executor();
    let started = leak(tokio::sync::Notify::new());
    let finished = leak(AtomicUsize::new(0));
    let first = tokio::spawn(exclusive(3, exec, started, finished));
    started.notified().await;
    let error = exclusive(3, exec, started, finished).await.unwrap_err();
    assert!(
        matches!(error.idempotency(), Some(Error::InProgress { .. })),
        "expected InProgress, got {error:?}"
    );
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "reject must not wait for the owner"
    );
    assert_eq!(first.await.unwrap().unwrap(), 3);
}

#[idempotent(store = exec, skip(exec, runs))]
async fn panics_first(id: u32, exec: &Idempotency, runs: &AtomicUsize) -> Result<usize, AppError> {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    assert!(run > 1, "simulated bug in the body of call {id}");
    Ok(run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_body_releases_its_claim() {
    let (exec, counts) = executor();
    let runs = leak(AtomicUsize::new(0));
    let panicked = tokio::spawn(panics_first(5, exec, runs)).await;
    assert!(
        panicked.unwrap_err().is_panic(),
        "the panic is resumed to the caller"
    );
    assert_eq!(counts.snapshot(), (1, 0, 1), "the claim was released");
    assert_eq!(
        panics_first(5, exec, runs).await.unwrap(),
        2,
        "a retry runs at once"
    );
}

/// A call dropped mid-body (a timeout around it, a disconnected client) may already have had
/// its effect, so its claim is not released: the key stays claimed until the lease passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_mid_body_keeps_its_claim_until_the_lease_passes() {
    let (exec, counts) = executor();
    let runs = leak(AtomicUsize::new(0));
    let call = tokio::spawn(slow(11, exec, runs, Duration::from_secs(30)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    call.abort();
    let _ = call.await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        counts.snapshot(),
        (1, 0, 0),
        "no release after a cancellation"
    );
    let key = idempotency::Key::derive("behaviour::slow", 1, &(11u32,)).unwrap();
    assert!(
        matches!(
            exec.store().get(&key).await,
            Ok(Some(idempotency::Record::InProgress { .. }))
        ),
        "the key stays claimed"
    );
    // A retry waits for the lease (200 ms) to pass, then takes the key over.
    let retry = slow(11, exec, runs, Duration::ZERO).await.unwrap();
    assert_eq!(retry, "order 11, run 2");
}

#[tokio::test]
async fn an_unreachable_store_fails_closed() {
    let exec = Idempotency::new(DOWN);
    let runs = AtomicUsize::new(0);
    let error = charge(request("order-down"), &exec, &runs)
        .await
        .unwrap_err();
    match error.idempotency() {
        Some(Error::Store { op, source, .. }) => {
            assert_eq!(*op, idempotency::StoreOp::Claim);
            assert!(matches!(source, idempotency::StoreError::Unavailable(_)));
            assert!(
                error.to_string().contains("the body did not run"),
                "{error}"
            );
        }
        other => panic!("expected a store error, got {other:?}"),
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "fail closed: the body must not run"
    );
}

#[tokio::test]
async fn fail_open_is_an_explicit_opt_in() {
    let exec = Idempotency::builder(DOWN).fail_open(true).build();
    let runs = AtomicUsize::new(0);
    let receipt = charge(request("order-open"), &exec, &runs).await.unwrap();
    assert_eq!(receipt.charge_id, 1);
}

#[tokio::test]
async fn outputs_over_the_limit_run_once_and_are_recorded_as_not_stored() {
    let (store, counts) = Recording::new(MemoryStore::new());
    let exec = Idempotency::builder(store).max_output_bytes(64).build();
    let runs = AtomicUsize::new(0);
    let first = big_output(1, &exec, &runs).await;
    assert_eq!(first.expect("the first call gets its result").len(), 1001);
    let error = big_output(1, &exec, &runs).await.unwrap_err();
    assert!(
        matches!(
            error.idempotency(),
            Some(Error::OutputNotStored { reason: NotStored::TooLarge { size, limit: 64 }, .. }) if *size > 64
        ),
        "{error:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // claim + complete (the not-stored record), then the retry's claim.
    assert_eq!(counts.snapshot(), (2, 1, 0));
}

#[idempotent(store = exec, skip(exec, runs))]
async fn big_output(id: u32, exec: &Idempotency, runs: &AtomicUsize) -> Result<String, AppError> {
    runs.fetch_add(1, Ordering::SeqCst);
    Ok("x".repeat(1000 + id as usize))
}

// Methods, generics, references and `#[async_trait]`.

struct Ledger {
    idempotency: Idempotency,
    entries: AtomicUsize,
}

impl Ledger {
    #[idempotent(store = self.idempotency)]
    async fn post(&self, account: &str, cents: i64) -> Result<usize, AppError> {
        let _ = (account, cents);
        Ok(self.entries.fetch_add(1, Ordering::SeqCst) + 1)
    }

    #[idempotent(store = self.idempotency, key = tags.first())]
    async fn label<T: Serialize + Sync>(
        &self,
        tags: &[String],
        payload: &T,
    ) -> Result<usize, AppError> {
        let _ = payload;
        Ok(self.entries.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

#[tokio::test]
async fn methods_generics_and_references_work() {
    let ledger = Ledger {
        idempotency: Idempotency::new(MemoryStore::new()),
        entries: AtomicUsize::new(0),
    };
    assert_eq!(ledger.post("acct-1", 500).await.unwrap(), 1);
    assert_eq!(ledger.post("acct-1", 500).await.unwrap(), 1);
    assert_eq!(ledger.post("acct-2", 500).await.unwrap(), 2);
    let tags = vec!["t1".to_owned()];
    assert_eq!(ledger.label(&tags, &42u8).await.unwrap(), 3);
    assert_eq!(
        ledger.label(&tags, &42u64).await.unwrap(),
        3,
        "42u8 and 42u64 hash alike"
    );
    let error = ledger.label(&tags, &"other").await.unwrap_err();
    assert!(matches!(error.idempotency(), Some(Error::KeyReused { .. })));
}

#[idempotency::async_trait]
trait Payments: Send + Sync {
    async fn refund(&self, charge_id: u64, cents: u64) -> Result<usize, AppError>;
}

struct PaymentService {
    idempotency: Idempotency,
    refunds: AtomicUsize,
}

#[idempotency::async_trait]
impl Payments for PaymentService {
    #[idempotent(store = self.idempotency, key = charge_id)]
    async fn refund(&self, charge_id: u64, cents: u64) -> Result<usize, AppError> {
        let _ = (charge_id, cents);
        Ok(self.refunds.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

#[tokio::test]
async fn works_inside_async_trait_impls() {
    let service: Box<dyn Payments> = Box::new(PaymentService {
        idempotency: Idempotency::new(MemoryStore::new()),
        refunds: AtomicUsize::new(0),
    });
    assert_eq!(service.refund(1, 100).await.unwrap(), 1);
    assert_eq!(service.refund(1, 100).await.unwrap(), 1);
    assert_eq!(service.refund(2, 100).await.unwrap(), 2);
    let error = service.refund(1, 999).await.unwrap_err();
    assert!(matches!(error.idempotency(), Some(Error::KeyReused { .. })));
}

mod same_module {
    use super::*;

    pub(super) struct Invoices(pub(super) Idempotency);
    pub(super) struct Quotes(pub(super) Idempotency);

    impl Invoices {
        #[idempotent(store = self.0)]
        pub(super) async fn issue(&self, number: u32) -> Result<u32, AppError> {
            Ok(number)
        }
    }

    impl Quotes {
        #[idempotent(store = self.0)]
        pub(super) async fn issue(&self, number: u32) -> Result<u32, AppError> {
            Ok(number + 1000)
        }
    }
}

#[tokio::test]
async fn two_functions_sharing_a_namespace_are_caught() {
    let store = MemoryStore::new();
    let invoices = same_module::Invoices(Idempotency::new(store.clone()));
    let quotes = same_module::Quotes(Idempotency::new(store));
    let first = invoices.issue(1).await;
    let second = quotes.issue(1).await;
    let collided = match (&first, &second) {
        (Ok(_), Err(error)) | (Err(error), Ok(_)) => error,
        other => panic!("exactly one of the two must be refused, got {other:?}"),
    };
    assert!(
        matches!(
            collided.idempotency(),
            Some(Error::NamespaceCollision { .. })
        ),
        "{collided:?}"
    );
    assert!(collided.to_string().contains("name = "), "{collided}");
}

#[tokio::test]
async fn the_plain_api_matches_the_macro() {
    let idempotency = Idempotency::new(MemoryStore::new());
    let key = idempotency::Key::derive("plain::transfer", 1, &"tx-1").unwrap();
    let fingerprint = idempotency::Fingerprint::of(&("tx-1", 500u32)).unwrap();
    let runs = AtomicUsize::new(0);
    for _ in 0..3 {
        let out: Result<usize, Error> = idempotency
            .call(key.clone(), fingerprint)
            .on_in_progress(InProgressPolicy::Reject)
            .run(|| async { Ok(runs.fetch_add(1, Ordering::SeqCst) + 1) })
            .await;
        assert_eq!(out.unwrap(), 1);
    }
}

#[idempotent]
async fn on_the_default_store(n: u64) -> Result<u64, AppError> {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    Ok(n * 1000 + RUNS.fetch_add(1, Ordering::SeqCst) as u64)
}

#[tokio::test]
async fn the_default_store_is_used_without_store_option() {
    let first = on_the_default_store(4).await.unwrap();
    assert_eq!(on_the_default_store(4).await.unwrap(), first);
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Invoice {
    number: String,
    lines: Vec<u32>,
}

#[idempotent(store = exec, skip(exec))]
async fn load<T: Serialize + serde::de::DeserializeOwned + Default + Send>(
    id: u32,
    exec: &Idempotency,
) -> Result<T, AppError> {
    let _ = id;
    Ok(T::default())
}

/// Instantiations of one generic function share its namespace; a record written by one is
/// refused to another (never replayed as the wrong type).
#[tokio::test]
async fn generic_instantiations_never_replay_each_others_outputs() {
    let (exec, _) = executor();
    let invoice: Invoice = load(1, exec).await.unwrap();
    assert_eq!(invoice, Invoice::default());
    let again: Invoice = load(1, exec).await.unwrap();
    assert_eq!(again, invoice, "the same instantiation replays");
    let error = load::<Receipt>(1, exec).await.unwrap_err();
    assert!(
        matches!(error.idempotency(), Some(Error::KeyReused { .. })),
        "another instantiation must be refused, got {error:?}"
    );
}

#[tokio::test]
async fn zero_durations_are_refused() {
    let exec = Idempotency::new(MemoryStore::new());
    let key = idempotency::Key::derive("plain::zero", 1, &1).unwrap();
    let fingerprint = idempotency::Fingerprint::of(&1).unwrap();
    let out: Result<(), Error> = exec
        .call(key, fingerprint)
        .ttl(Duration::ZERO)
        .run(|| async { Ok(()) })
        .await;
    let error = out.unwrap_err();
    assert!(
        matches!(error, Error::InvalidOption { option: "ttl", .. }),
        "{error:?}"
    );
}

/// `name` fixes the namespace of the keys: the record is where that name says, whatever the
/// function's path.
#[idempotent(name = "billing.fixed_name", store = exec, skip(exec, runs))]
async fn renamed_freely(
    order: u32,
    exec: &Idempotency,
    runs: &AtomicUsize,
) -> Result<usize, AppError> {
    let _ = order;
    Ok(runs.fetch_add(1, Ordering::SeqCst) + 1)
}

#[tokio::test]
async fn name_fixes_the_namespace_of_the_key() {
    let (exec, _) = executor();
    let runs = AtomicUsize::new(0);
    assert_eq!(renamed_freely(7, exec, &runs).await.unwrap(), 1);
    let key = idempotency::Key::new(
        "billing.fixed_name",
        1,
        idempotency::Digest::of(&(7u32,)).unwrap(),
    );
    assert!(
        matches!(
            exec.store().get(&key).await,
            Ok(Some(idempotency::Record::Completed { .. }))
        ),
        "the record lives under the fixed name"
    );
}

/// `version` invalidates the records of earlier versions: the same call under version 2
/// runs its body again instead of replaying version 1's output.
mod versions {
    use super::*;

    #[idempotent(name = "billing.quote", version = 1, store = exec, skip(exec, runs))]
    pub(super) async fn quote_v1(
        order: u32,
        exec: &Idempotency,
        runs: &AtomicUsize,
    ) -> Result<usize, AppError> {
        let _ = order;
        Ok(runs.fetch_add(1, Ordering::SeqCst) + 1)
    }

    #[idempotent(name = "billing.quote", version = 2, store = exec, skip(exec, runs))]
    pub(super) async fn quote_v2(
        order: u32,
        exec: &Idempotency,
        runs: &AtomicUsize,
    ) -> Result<usize, AppError> {
        let _ = order;
        Ok(runs.fetch_add(1, Ordering::SeqCst) + 100)
    }
}

#[tokio::test]
async fn a_new_version_runs_again() {
    let (exec, _) = executor();
    let runs = AtomicUsize::new(0);
    assert_eq!(versions::quote_v1(3, exec, &runs).await.unwrap(), 1);
    assert_eq!(
        versions::quote_v1(3, exec, &runs).await.unwrap(),
        1,
        "v1 replays"
    );
    assert_eq!(
        versions::quote_v2(3, exec, &runs).await.unwrap(),
        101,
        "v2 runs its body"
    );
    assert_eq!(
        versions::quote_v2(3, exec, &runs).await.unwrap(),
        101,
        "v2 replays its own"
    );
}

/// `ttl` and `lease` also take `Duration` expressions.
#[idempotent(store = exec, skip(exec, runs), ttl = Duration::from_millis(300), lease = Duration::from_secs(5))]
async fn short_lived_by_expression(
    id: u32,
    exec: &Idempotency,
    runs: &AtomicUsize,
) -> Result<usize, AppError> {
    let _ = id;
    Ok(runs.fetch_add(1, Ordering::SeqCst) + 1)
}

#[tokio::test]
async fn ttl_as_a_duration_expression() {
    let (exec, _) = executor();
    let runs = AtomicUsize::new(0);
    assert_eq!(short_lived_by_expression(1, exec, &runs).await.unwrap(), 1);
    assert_eq!(short_lived_by_expression(1, exec, &runs).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(short_lived_by_expression(1, exec, &runs).await.unwrap(), 2);
}

/// A duplicate of a call that this process is running waits at most `wait_timeout`, then
/// answers `InProgress` (the owner goes on and completes).
#[tokio::test]
async fn a_local_duplicate_stops_waiting_at_the_wait_timeout() {
    let exec = leak(
        Idempotency::builder(MemoryStore::new())
            .wait_timeout(Duration::from_millis(100))
            .build(),
    );
    let runs = leak(AtomicUsize::new(0));
    let owner = tokio::spawn(slow(9, exec, runs, Duration::from_millis(150)));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = std::time::Instant::now();
    let duplicate = slow(9, exec, runs, Duration::ZERO).await;
    let waited = started.elapsed();
    assert!(
        matches!(
            duplicate.as_ref().map_err(AppError::idempotency),
            Err(Some(Error::InProgress { .. }))
        ),
        "{duplicate:?}"
    );
    assert!(
        waited >= Duration::from_millis(90) && waited < Duration::from_secs(2),
        "waited {waited:?}"
    );
    assert_eq!(owner.await.unwrap().unwrap(), "order 9, run 1");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Counts its clones, and holds a field that is never stored.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Tally {
    shown: String,
    #[serde(skip)]
    transient: u32,
}

static TALLY_CLONES: AtomicUsize = AtomicUsize::new(0);

impl Clone for Tally {
    fn clone(&self) -> Self {
        TALLY_CLONES.fetch_add(1, Ordering::SeqCst);
        Tally {
            shown: self.shown.clone(),
            transient: self.transient,
        }
    }
}

#[idempotent(store = exec, skip(exec, runs))]
async fn tally(id: u32, exec: &Idempotency, runs: &AtomicUsize) -> Result<Tally, AppError> {
    runs.fetch_add(1, Ordering::SeqCst);
    Ok(Tally {
        shown: format!("tally {id}"),
        transient: 7,
    })
}

/// A `Clone` output is replayed on the memory store by cloning the value kept beside the
/// record, and that value is the stored output decoded: a replay returns what decoding would
/// (here, without the field that is never stored), not a copy of the first call's value.
#[tokio::test]
async fn clone_outputs_replay_the_kept_value_as_it_decodes() {
    let (exec, _) = executor();
    let runs = AtomicUsize::new(0);
    let first = tally(1, exec, &runs).await.unwrap();
    assert_eq!(
        first.transient, 7,
        "the first call gets the body's own value"
    );
    let clones_before = TALLY_CLONES.load(Ordering::SeqCst);
    for _ in 0..3 {
        let replayed = tally(1, exec, &runs).await.unwrap();
        assert_eq!(
            replayed,
            Tally {
                shown: "tally 1".into(),
                transient: 0
            }
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        TALLY_CLONES.load(Ordering::SeqCst) - clones_before,
        3,
        "each replay clones the kept value"
    );
}

/// Not `Clone`: replays decode the stored output.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Unclonable {
    shown: String,
}

#[idempotent(store = exec, skip(exec, runs))]
async fn unclonable(
    id: u32,
    exec: &Idempotency,
    runs: &AtomicUsize,
) -> Result<Unclonable, AppError> {
    runs.fetch_add(1, Ordering::SeqCst);
    Ok(Unclonable {
        shown: format!("unclonable {id}"),
    })
}

#[tokio::test]
async fn outputs_that_are_not_clone_replay_by_decoding() {
    let (exec, _) = executor();
    let runs = AtomicUsize::new(0);
    let first = unclonable(2, exec, &runs).await.unwrap();
    let again = unclonable(2, exec, &runs).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// The memory store weighs a kept value as much as its encoded output, so a `Clone` output
/// counts twice against the capacity.
#[tokio::test]
async fn a_kept_value_weighs_as_much_as_its_output() {
    let store = MemoryStore::new();
    let exec = leak(Idempotency::new(store.clone()));
    let runs = AtomicUsize::new(0);
    tally(3, exec, &runs).await.unwrap();
    unclonable(3, exec, &runs).await.unwrap();
    let mut expected = 0;
    for (name, copies) in [("behaviour::tally", 2), ("behaviour::unclonable", 1)] {
        let key = idempotency::Key::new(name, 1, idempotency::Digest::of(&(3u32,)).unwrap());
        let Ok(Some(idempotency::Record::Completed { output, .. })) = store.get(&key).await else {
            panic!("{name} must be completed under {key}");
        };
        // Output (once more when kept), namespace, and the fixed overhead a record.
        expected += copies * output.len() + name.len() + 192;
    }
    assert_eq!(store.weighted_size(), expected as u64);
}

/// `Clone` outputs that are not `'static` by their spelling still compile and replay: a
/// generic output and one from a generic impl (decoded: no kept value), and a `Cow` whose
/// lifetime is elided next to a borrowing argument.
mod outputs_the_macro_cannot_keep {
    use std::borrow::Cow;

    use super::*;

    #[idempotent(store = exec, skip(exec))]
    pub(super) async fn echo<T: Clone + Serialize + serde::de::DeserializeOwned + Send + Sync>(
        value: T,
        exec: &Idempotency,
    ) -> Result<T, AppError> {
        Ok(value)
    }

    pub(super) struct Repo<T>(pub(super) std::marker::PhantomData<T>);

    impl<T: Clone + Serialize + serde::de::DeserializeOwned + Send + Sync + Default> Repo<T> {
        #[idempotent(store = exec, skip(self, exec))]
        pub(super) async fn load(&self, id: u32, exec: &Idempotency) -> Result<T, AppError> {
            let _ = id;
            Ok(T::default())
        }
    }

    pub(super) static SHOUTS: std::sync::LazyLock<Idempotency> =
        std::sync::LazyLock::new(|| Idempotency::new(MemoryStore::new()));

    // The elided lifetime is the point: `Cow<str>` borrows from `word` by its signature.
    #[allow(elided_lifetimes_in_paths, mismatched_lifetime_syntaxes)]
    #[idempotent(store = SHOUTS)]
    pub(super) async fn shout(word: &str) -> Result<Cow<str>, AppError> {
        Ok(Cow::Owned(word.to_uppercase()))
    }
}

#[tokio::test]
async fn outputs_the_macro_cannot_keep_still_replay() {
    use outputs_the_macro_cannot_keep::{Repo, echo, shout};
    let (exec, counts) = executor();
    assert_eq!(echo(5u32, exec).await.unwrap(), 5);
    assert_eq!(echo(5u32, exec).await.unwrap(), 5);
    let repo = Repo::<u64>(std::marker::PhantomData);
    assert_eq!(repo.load(1, exec).await.unwrap(), 0);
    assert_eq!(repo.load(1, exec).await.unwrap(), 0);
    assert_eq!(counts.complete.load(Ordering::SeqCst), 2, "each ran once");
    assert_eq!(shout("hi").await.unwrap(), "HI");
    assert_eq!(shout("hi").await.unwrap(), "HI");
}
