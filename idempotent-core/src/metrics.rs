//! Metrics behind the `metrics` feature, on the [`metrics`](https://docs.rs/metrics) crate's
//! facade, so any exporter (Prometheus, StatsD, OpenTelemetry…) reads them. Without the
//! feature every function here is empty and compiles to nothing.
//!
//! Every metric is labelled by `namespace` (the function's path or `name`, the HTTP layer's
//! namespace, a consumer's), never by key:
//!
//! | metric | kind | counts |
//! |---|---|---|
//! | `idempotency_executions_total` | counter | bodies run (a first execution, or a takeover's) |
//! | `idempotency_replays_total` | counter | calls answered with a stored output (from the store, or a flight of this process) |
//! | `idempotency_key_reuses_total` | counter | calls refused because the key was used with another fingerprint |
//! | `idempotency_in_progress_total` | counter | calls refused because another call held the key (`Error::InProgress`) |
//! | `idempotency_waits_total` | counter | calls that waited for another call holding the key (once per call) |
//! | `idempotency_takeovers_total` | counter | claims taken over from an owner whose lease had passed |
//! | `idempotency_leases_lost_total` | counter | owners that found their key taken over (renewal or `complete` answered `LeaseLost`) |
//! | `idempotency_renewals_total` | counter | lease renewals that the store accepted |
//! | `idempotency_releases_total` | counter | claims released (the body failed with an error that is not stored, or panicked) |
//! | `idempotency_store_errors_total` | counter, also by `op` (`claim`, `complete`, `release`, `renew`) | store calls that failed |
//! | `idempotency_store_seconds` | histogram, also by `op` | how long a store call took (remote calls; an in-process store's answer at once is not timed) |
//! | `idempotency_body_seconds` | histogram | how long a body ran |

use std::future::Future;

use crate::error::{StoreError, StoreOp};
use crate::key::Key;

/// The counters, by what they count (see the module docs).
#[derive(Debug, Clone, Copy)]
// `LeasesLost` is counted where a store call is timed, with the feature only.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) enum Counter {
    Executions,
    Replays,
    KeyReuses,
    InProgress,
    Waits,
    Takeovers,
    LeasesLost,
    Renewals,
    Releases,
}

impl Counter {
    #[cfg(feature = "metrics")]
    const fn name(self) -> &'static str {
        match self {
            Counter::Executions => "idempotency_executions_total",
            Counter::Replays => "idempotency_replays_total",
            Counter::KeyReuses => "idempotency_key_reuses_total",
            Counter::InProgress => "idempotency_in_progress_total",
            Counter::Waits => "idempotency_waits_total",
            Counter::Takeovers => "idempotency_takeovers_total",
            Counter::LeasesLost => "idempotency_leases_lost_total",
            Counter::Renewals => "idempotency_renewals_total",
            Counter::Releases => "idempotency_releases_total",
        }
    }
}

/// Adds one to `counter` for `key`'s namespace.
#[inline]
pub(crate) fn count(counter: Counter, key: &Key) {
    #[cfg(feature = "metrics")]
    labelled::increment(counter.name(), key);
    #[cfg(not(feature = "metrics"))]
    let _ = (counter, key);
}

/// A store call that failed.
#[cfg(feature = "metrics")]
fn store_error(op: StoreOp, key: &Key) {
    ::metrics::counter!(
        "idempotency_store_errors_total",
        "namespace" => key.namespace_label(),
        "op" => op_label(op),
    )
    .increment(1);
}

/// Metric keys labelled by namespace without an allocation or a hash per call, for the counters
/// of the hot paths (a replay counts one): the key of a counter for a namespace that is a
/// literal (every `#[idempotent]` function's) is built once and leaked (one per counter and
/// literal: bounded by the program), and found again by a short per-thread list.
#[cfg(feature = "metrics")]
mod labelled {
    use std::cell::RefCell;
    use std::sync::Mutex;

    use metrics::{Label, Level, Metadata};

    use crate::key::Key;

    pub(super) static METADATA: Metadata<'static> =
        Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

    /// A counter's name, a namespace, and their key.
    type Entry = (&'static str, &'static str, &'static metrics::Key);

    /// Every key built, shared by the threads.
    static LEAKED: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

    thread_local! {
        static SEEN: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
    }

    /// The most keys a thread remembers; past them, the shared list answers.
    const SEEN_MAX: usize = 256;

    /// Adds one to counter `name` of `key`'s namespace.
    pub(super) fn increment(name: &'static str, key: &Key) {
        let register = |metric: &metrics::Key| {
            metrics::with_recorder(|recorder| recorder.register_counter(metric, &METADATA))
                .increment(1);
        };
        match key.static_namespace() {
            Some(namespace) => register(leaked(name, namespace)),
            None => register(&metrics::Key::from_parts(
                name,
                vec![Label::new("namespace", key.namespace_label())],
            )),
        }
    }

    fn same(a: &'static str, b: &'static str) -> bool {
        std::ptr::eq(a, b) || a == b
    }

    fn find(entries: &[Entry], name: &'static str, namespace: &'static str) -> Option<Entry> {
        entries
            .iter()
            .find(|(n, ns, _)| std::ptr::eq(*n, name) && same(ns, namespace))
            .copied()
    }

    fn leaked(name: &'static str, namespace: &'static str) -> &'static metrics::Key {
        SEEN.with(|seen| {
            if let Ok(seen) = seen.try_borrow()
                && let Some((_, _, key)) = find(&seen, name, namespace)
            {
                return key;
            }
            let entry = shared(name, namespace);
            if let Ok(mut seen) = seen.try_borrow_mut()
                && seen.len() < SEEN_MAX
            {
                seen.push(entry);
            }
            entry.2
        })
    }

    fn shared(name: &'static str, namespace: &'static str) -> Entry {
        let mut leaked = LEAKED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = find(&leaked, name, namespace) {
            return entry;
        }
        let labels: &'static [Label] =
            Box::leak(Box::new([Label::from_static_parts("namespace", namespace)]));
        let key: &'static metrics::Key =
            Box::leak(Box::new(metrics::Key::from_static_parts(name, labels)));
        let entry = (name, namespace, key);
        leaked.push(entry);
        entry
    }
}

/// Awaits a store call, timing it; counts it when it fails, or the lease lost when it answers
/// `LeaseLost` (the key was taken over: not a failure of the store).
#[inline]
pub(crate) async fn store_call<T, F>(op: StoreOp, key: &Key, call: F) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, StoreError>>,
{
    #[cfg(feature = "metrics")]
    {
        let started = std::time::Instant::now();
        let answer = call.await;
        ::metrics::histogram!(
            "idempotency_store_seconds",
            "namespace" => key.namespace_label(),
            "op" => op_label(op),
        )
        .record(started.elapsed());
        match &answer {
            Ok(_) => {}
            Err(StoreError::LeaseLost) => count(Counter::LeasesLost, key),
            Err(_) => store_error(op, key),
        }
        answer
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = (op, key);
        call.await
    }
}

/// Runs a body, timing it.
#[inline]
pub(crate) async fn body<F: Future>(key: &Key, body: F) -> F::Output {
    count(Counter::Executions, key);
    #[cfg(feature = "metrics")]
    {
        let started = std::time::Instant::now();
        let output = body.await;
        ::metrics::histogram!("idempotency_body_seconds", "namespace" => key.namespace_label())
            .record(started.elapsed());
        output
    }
    #[cfg(not(feature = "metrics"))]
    body.await
}

#[cfg(feature = "metrics")]
const fn op_label(op: StoreOp) -> &'static str {
    match op {
        StoreOp::Claim => "claim",
        StoreOp::Complete => "complete",
        StoreOp::Release => "release",
        StoreOp::Renew => "renew",
        StoreOp::Get => "get",
        StoreOp::Remove => "remove",
        StoreOp::Journal => "journal",
    }
}
