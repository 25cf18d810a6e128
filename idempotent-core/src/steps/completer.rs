//! The completer: finds multi-step calls abandoned midway by the journals they left, and
//! re-drives each through the handler registered for its namespace, as any caller would (a
//! fenced claim; a live owner keeps its key).

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::journal::{self, Journal, PARKED, SETTLED};
use super::{Driver, Steps};
use crate::InProgressPolicy;
use crate::error::{Error, StoreError, StoreOp};
use crate::executor::{How, Idempotency};
use crate::key::Key;
use crate::store::{ListRequest, MarkSwap};
use crate::trace::event;

/// Pages of one namespace's journals a pass reads at most.
const MAX_PAGES: usize = 1000;

/// Finishes multi-step calls that were abandoned midway: their caller crashed or gave up,
/// their lease passed, and a [journal](super) exists. Register a handler per namespace (the
/// same function the callers run), then [`run_once`](Self::run_once) or
/// [`spawn`](Self::spawn).
///
/// Each pass lists the journals of every registered namespace
/// ([`Store::list_marks`](crate::Store::list_marks): the memory, SQL and Redis stores; not a
/// Redis Cluster) and, for each one not settled or parked, claims the call with the
/// `reject` policy (a live owner keeps it) and runs the handler with the journaled input:
/// journaled steps replay, the rest run, the output is stored as by any caller.
///
/// * A journal whose call already completed is replaced by an empty one that expires at once.
/// * A call whose last caller got an error back is left alone (settled): the caller has its
///   answer, and a retry of its own resumes it.
/// * On Redis a pass `SCAN`s the database's whole keyspace for the namespace's keys (the keys
///   of other prefixes too): give the store a database of its own when it holds many keys.
/// * Each re-drive counts one attempt in the journal; after `max_attempts` the call is parked
///   with its last error and not driven again by the completer (a caller's retry still runs
///   it).
#[must_use = "a completer does nothing until `run_once` or `spawn`"]
pub struct Completer {
    idempotency: Idempotency,
    handlers: HashMap<(String, u32), Handler>,
    batch: usize,
    max_attempts: u32,
    interval: Duration,
    per_second: Option<u32>,
}

type Handler = Arc<dyn Fn(Idempotency, Journal) -> BoxFuture<'static, Driven> + Send + Sync>;

/// How one re-drive ended.
enum Driven {
    Done(How),
    Failed(String),
}

impl std::fmt::Debug for Completer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completer")
            .field("namespaces", &self.handlers.keys().collect::<Vec<_>>())
            .field("batch", &self.batch)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// What one pass of a [`Completer`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompleterPass {
    /// Calls the completer ran to the end (their output is stored).
    pub finished: Vec<Key>,
    /// Journals of calls that had completed already, cleared.
    pub cleared: usize,
    /// Calls whose re-drive failed this pass (its error; a call a live owner holds fails with
    /// [`Error::InProgress`]), tried again by a later pass.
    pub failed: Vec<(Key, String)>,
    /// Calls parked this pass, after `max_attempts`, with their last error.
    pub parked: Vec<(Key, String)>,
    /// Journals left alone: settled, parked before, or unreadable.
    pub skipped: usize,
}

impl Completer {
    /// A completer over `idempotency`'s store, with no handler yet: batches of 100, 5
    /// attempts, a pass every 5 s when spawned.
    pub fn new(idempotency: Idempotency) -> Completer {
        Completer {
            idempotency,
            handlers: HashMap::new(),
            batch: 100,
            max_attempts: 5,
            interval: Duration::from_secs(5),
            per_second: None,
        }
    }

    /// Re-drives the calls of `namespace` at `version` (the key's namespace and version)
    /// with `handler`: the function its callers pass to
    /// [`Call::run_steps`](crate::Call::run_steps), given the journaled input.
    pub fn register<I, T, E, F, Fut>(
        mut self,
        namespace: impl Into<String>,
        version: u32,
        handler: F,
    ) -> Self
    where
        I: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: From<Error> + Display + Send + 'static,
        F: Fn(I, Steps) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let drive: Handler = Arc::new(move |idempotency: Idempotency, journal: Journal| {
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                let input: I = match crate::output::decode(&journal.input) {
                    Ok(input) => input,
                    Err(error) => {
                        return Driven::Failed(format!(
                            "its journaled input does not decode as this handler's input: {error}"
                        ));
                    }
                };
                let call = idempotency
                    .call(journal.key.clone(), journal.fingerprint)
                    .ttl(journal.ttl)
                    .on_in_progress(InProgressPolicy::Reject);
                let describe: fn(&E) -> String = |error| error.to_string();
                match call
                    .drive(
                        input,
                        |input, steps| handler(input, steps),
                        Driver::Completer(describe),
                    )
                    .await
                {
                    Ok(obtained) => Driven::Done(obtained.how),
                    Err(error) => Driven::Failed(error.to_string()),
                }
            })
        });
        self.handlers.insert((namespace.into(), version), drive);
        self
    }

    /// Journals read and calls driven at most per pass (at least 1). Default 100.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Re-drives of one call before it is parked (at least 1). Default 5.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The pause between passes of a [spawned](Self::spawn) completer. Default 5 s.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Calls driven per second at most. Default: no limit.
    pub fn max_rate(mut self, per_second: u32) -> Self {
        self.per_second = Some(per_second.max(1));
        self
    }

    /// One pass: every registered namespace's journals, up to `batch` calls driven.
    pub async fn run_once(&self) -> Result<CompleterPass, Error> {
        let mut pass = CompleterPass::default();
        let mut driven = 0;
        let store = self.idempotency.store();
        for ((namespace, version), handler) in &self.handlers {
            let journals = journal::namespace(namespace);
            let listed = |error: StoreError| {
                Error::from_store(
                    StoreOp::Journal,
                    &Key::new(
                        journals.clone(),
                        *version,
                        crate::key::Digest::from_bytes([0; 32]),
                    ),
                    error,
                )
            };
            let mut request = ListRequest::namespace(journals.clone(), *version)
                .limit(u32::try_from(self.batch).unwrap_or(u32::MAX));
            for _ in 0..MAX_PAGES {
                let page = store.list_marks(request.clone()).await.map_err(listed)?;
                for value in page.values {
                    if driven >= self.batch {
                        return Ok(pass);
                    }
                    if self.one(handler, value, &mut pass).await {
                        driven += 1;
                        if let Some(rate) = self.per_second {
                            tokio::time::sleep(Duration::from_secs_f64(1.0 / f64::from(rate)))
                                .await;
                        }
                    }
                }
                match page.next {
                    Some(next) => request = request.after(next),
                    None => break,
                }
            }
        }
        Ok(pass)
    }

    /// One listed journal: left alone, parked, or driven (`true`).
    async fn one(&self, handler: &Handler, value: Bytes, pass: &mut CompleterPass) -> bool {
        if value.is_empty() {
            // Cleared after its call completed; expires by itself.
            return false;
        }
        let journal = match Journal::decode(&value) {
            Ok(journal) => journal,
            Err(detail) => {
                event!(warn, detail = %detail, "completer: an unreadable steps journal; left alone");
                let _ = detail;
                pass.skipped += 1;
                return false;
            }
        };
        if journal.has(SETTLED) || journal.has(PARKED) {
            pass.skipped += 1;
            return false;
        }
        let store = self.idempotency.store();
        let journal_key = journal::key_of(&journal.key);
        if journal.attempts >= self.max_attempts {
            let mut parked = journal.clone();
            parked.flags |= PARKED;
            let bytes = parked.encode();
            let swap = MarkSwap::new(Some(&value), &bytes, journal.ttl);
            if let Ok(true) = store.swap_mark(&journal_key, swap).await {
                event!(warn, key = %journal.key, error = %journal.last_error, "completer: parked after its attempts");
                pass.parked.push((journal.key, journal.last_error));
            }
            return false;
        }
        let key = journal.key.clone();
        let drive = handler(self.idempotency.clone(), journal);
        let driven = AssertUnwindSafe(drive)
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Driven::Failed("the handler panicked".to_owned()));
        match driven {
            Driven::Done(how) => {
                if how == How::Executed {
                    pass.finished.push(key);
                } else {
                    pass.cleared += 1;
                }
                // The record replays from now on: clear the journal (best effort).
                if let Ok(Some(current)) = store.load_mark(&journal_key).await {
                    let clear = MarkSwap::new(Some(&current), &[], Duration::from_millis(1));
                    let _ = store.swap_mark(&journal_key, clear).await;
                }
            }
            Driven::Failed(error) => {
                event!(info, key = %key, error = %error, "completer: a re-drive failed; trying again later");
                pass.failed.push((key, error));
            }
        }
        true
    }

    /// Runs passes in a spawned task until [`CompleterHandle::shutdown`]: at once while a
    /// pass drove a full batch, after [`interval`](Self::interval) otherwise.
    pub fn spawn(self) -> CompleterHandle {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            while !*stopped.borrow() && stopped.has_changed().is_ok() {
                let wait = match self.run_once().await {
                    Ok(pass)
                        if pass.finished.len() + pass.failed.len() + pass.cleared >= self.batch =>
                    {
                        Duration::ZERO
                    }
                    Ok(_) => self.interval,
                    Err(error) => {
                        event!(warn, error = %error, "completer: a pass failed");
                        let _ = error;
                        self.interval
                    }
                };
                if !wait.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        changed = stopped.changed() => if changed.is_err() { break },
                    }
                }
            }
        });
        CompleterHandle { stop, task }
    }
}

/// A completer running in a task (see [`Completer::spawn`]). Dropping it stops the completer
/// after its current pass, as [`shutdown`](Self::shutdown) does without waiting.
#[derive(Debug)]
#[must_use = "dropping the handle stops the completer"]
pub struct CompleterHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl CompleterHandle {
    /// Stops the completer after its current pass (a call being driven is finished first)
    /// and waits for it.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
