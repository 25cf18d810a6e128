//! Multi-step calls (`idempotency::steps`) on the memory store and real Redis, PostgreSQL and
//! SQLite: journaled steps are not run again (after an error, after an abandoned owner, by the
//! completer), a journal of other arguments is refused, a taken-over owner's journal write is
//! refused (and its local SQL step rolled back), derived keys are stable, round trips are
//! exact, and the completer finishes 50 abandoned calls and parks a poisoned one.

#![cfg(all(
    feature = "memory",
    feature = "redis",
    feature = "postgres",
    feature = "sqlite",
    feature = "conformance"
))]

mod counted_support;
mod steps_support;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use counted_support::Counted;
use idempotency::steps::{Completer, Steps};
use idempotency::{Error, Fingerprint, Idempotency, Key, MarkSwap, Store, Token};
use serde::{Deserialize, Serialize};
use steps_support::{Fixture, unique};

const STEPS: [&str; 4] = ["reserve", "charge", "ship", "receipt"];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Op {
    id: String,
    amount: u64,
}

#[derive(Debug)]
enum OpError {
    Idempotency(Error),
    Failed(String),
}

impl From<Error> for OpError {
    fn from(error: Error) -> Self {
        OpError::Idempotency(error)
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Idempotency(error) => write!(f, "{error}"),
            OpError::Failed(why) => f.write_str(why),
        }
    }
}

/// What the operation's steps do to each operation id, set by each test for its own ids.
#[derive(Default)]
struct Script {
    /// Effects: (id, step) → times run.
    runs: HashMap<(String, &'static str), usize>,
    /// Stall forever before step n (4: after the last step), signalling when reached.
    stall: HashMap<String, (usize, Arc<tokio::sync::Notify>)>,
    /// Fail step n this many more times.
    fail: HashMap<String, (usize, usize)>,
    /// Fail step n on every run.
    poison: HashMap<String, usize>,
    /// Sleep this long inside step n, after its effect.
    slow: HashMap<String, (usize, Duration)>,
    /// Sleep this long before step n.
    hold: HashMap<String, (usize, Duration)>,
    /// The derived keys of `charge` seen per id.
    keys: HashMap<String, HashSet<String>>,
}

static SCRIPT: LazyLock<Mutex<Script>> = LazyLock::new(Mutex::default);

fn script() -> std::sync::MutexGuard<'static, Script> {
    SCRIPT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn runs(id: &str) -> [usize; 4] {
    let script = script();
    STEPS.map(|step| {
        script
            .runs
            .get(&(id.to_owned(), step))
            .copied()
            .unwrap_or(0)
    })
}

async fn checkpoint(id: &str, at: usize) {
    let hold = script().hold.get(id).copied();
    if let Some((n, hold)) = hold
        && n == at
    {
        tokio::time::sleep(hold).await;
    }
    let stall = script().stall.get(id).cloned();
    if let Some((n, reached)) = stall
        && n == at
    {
        reached.notify_one();
        std::future::pending::<()>().await;
    }
}

/// The four-step operation every test runs (and the completer re-drives). Each step's output
/// is random, so a step run twice would change the final output.
async fn op(input: Op, steps: Steps) -> Result<String, OpError> {
    script()
        .keys
        .entry(input.id.clone())
        .or_default()
        .insert(steps.key("charge"));
    let mut outputs = Vec::new();
    for (n, step) in STEPS.into_iter().enumerate() {
        checkpoint(&input.id, n).await;
        let id = input.id.clone();
        let output: String = steps
            .step(step, || async move {
                let slow = {
                    let mut script = script();
                    *script.runs.entry((id.clone(), step)).or_default() += 1;
                    if script.poison.get(&id) == Some(&n) {
                        return Err(OpError::Failed(format!("{step} is poisoned")));
                    }
                    if let Some((at, left)) = script.fail.get_mut(&id)
                        && *at == n
                        && *left > 0
                    {
                        *left -= 1;
                        return Err(OpError::Failed(format!("{step} failed once")));
                    }
                    script
                        .slow
                        .get(&id)
                        .filter(|(at, _)| *at == n)
                        .map(|(_, d)| *d)
                };
                if let Some(slow) = slow {
                    tokio::time::sleep(slow).await;
                }
                Ok(format!("{step}:{}", Token::random()))
            })
            .await?;
        outputs.push(output);
    }
    checkpoint(&input.id, 4).await;
    Ok(outputs.join(","))
}

fn key(ns: &str, id: &str) -> Key {
    Key::derive(ns.to_owned(), 1, &id).expect("key")
}

fn input(id: &str, amount: u64) -> Op {
    Op {
        id: id.to_owned(),
        amount,
    }
}

async fn run(exec: &Idempotency, ns: &str, op_input: &Op) -> Result<String, OpError> {
    exec.call(
        key(ns, &op_input.id),
        Fingerprint::of(op_input).expect("fingerprint"),
    )
    .run_steps(op_input.clone(), op)
    .await
}

/// Runs the call in a task until it stalls where the script says, then drops it: its owner is
/// gone, its claim stays until the lease passes.
async fn abandon(exec: &Idempotency, ns: &str, op_input: &Op, at: usize) {
    let reached = Arc::new(tokio::sync::Notify::new());
    script()
        .stall
        .insert(op_input.id.clone(), (at, Arc::clone(&reached)));
    let (exec, ns, op_input) = (exec.clone(), ns.to_owned(), op_input.clone());
    let task = tokio::spawn(async move { run(&exec, &ns, &op_input).await });
    tokio::time::timeout(Duration::from_secs(10), reached.notified())
        .await
        .expect("the call reached its stall");
    task.abort();
    let _ = task.await;
}

fn short_lease(store: &Arc<dyn Store>) -> Idempotency {
    Idempotency::builder(Arc::clone(store))
        .lease(Duration::from_millis(300))
        .max_run(Duration::from_millis(300))
        .build()
}

/// A step that failed is the only one a retry runs; the retry's output is replayed after.
async fn resumes_after_an_error(fixture: Fixture, ns: &str) {
    let exec = Idempotency::from_shared(Arc::clone(&fixture.store));
    let id = unique("error");
    script().fail.insert(id.clone(), (2, 1));
    let first = run(&exec, ns, &input(&id, 5)).await;
    assert!(matches!(first, Err(OpError::Failed(_))), "{first:?}");
    assert_eq!(runs(&id), [1, 1, 1, 0]);
    let done = run(&exec, ns, &input(&id, 5)).await.expect("resumed");
    assert_eq!(runs(&id), [1, 1, 2, 1], "reserve and charge were journaled");
    let replayed = run(&exec, ns, &input(&id, 5)).await.expect("replayed");
    assert_eq!(replayed, done);
    assert_eq!(runs(&id), [1, 1, 2, 1]);
    assert_eq!(
        script().keys[&id].len(),
        1,
        "one derived key over every run"
    );
    fixture.drop_tables().await;
}

/// An owner dropped after two steps: once its lease passed, a retry (another executor, as from
/// another process) runs the last two only.
async fn resumes_after_an_abandoned_owner(fixture: Fixture, ns: &str) {
    let exec = short_lease(&fixture.store);
    let id = unique("abandoned");
    abandon(&exec, ns, &input(&id, 1), 2).await;
    assert_eq!(runs(&id), [1, 1, 0, 0]);
    script().stall.remove(&id);
    let other = Idempotency::from_shared(Arc::clone(&fixture.store));
    let done = run(&other, ns, &input(&id, 1)).await.expect("taken over");
    assert_eq!(runs(&id), [1, 1, 1, 1]);
    assert_eq!(done.split(',').count(), 4);
    assert_eq!(run(&other, ns, &input(&id, 1)).await.expect("replay"), done);
    fixture.drop_tables().await;
}

/// A journal written for other arguments is never used: key reused, no step runs; and the
/// completer leaves a call whose caller got an error (settled).
async fn other_arguments_are_refused(fixture: Fixture, ns: &str) {
    let exec = Idempotency::from_shared(Arc::clone(&fixture.store));
    let id = unique("reused");
    script().fail.insert(id.clone(), (1, 1));
    let first = run(&exec, ns, &input(&id, 1)).await;
    assert!(matches!(first, Err(OpError::Failed(_))), "{first:?}");
    assert_eq!(runs(&id), [1, 1, 0, 0]);
    let other = run(&exec, ns, &input(&id, 2)).await;
    assert!(
        matches!(other, Err(OpError::Idempotency(Error::KeyReused { .. }))),
        "{other:?}"
    );
    assert_eq!(runs(&id), [1, 1, 0, 0], "no step ran");
    let completer = Completer::new(exec.clone()).register(ns.to_owned(), 1, op);
    let pass = completer.run_once().await.expect("a pass");
    assert!(
        pass.finished.is_empty() && pass.failed.is_empty(),
        "{pass:?}"
    );
    assert_eq!(pass.skipped, 1, "the settled journal: {pass:?}");
    assert_eq!(runs(&id), [1, 1, 0, 0]);
    fixture.drop_tables().await;
}

/// An owner that lost its key (hung past `max_run` + lease) and wakes up after another call
/// took over and adopted the journal, before the new owner wrote a step: its journal write is
/// refused, it gets `LeaseLost`, and the new owner's output is the one replayed.
async fn a_zombie_cannot_write(fixture: Fixture, ns: &str) {
    let zombie_exec = Idempotency::builder(Arc::clone(&fixture.store))
        .lease(Duration::from_millis(200))
        .max_run(Duration::from_millis(200))
        .build();
    let id = unique("zombie");
    script()
        .slow
        .insert(id.clone(), (1, Duration::from_millis(1500)));
    let (exec, ns_owned, zombie_input) = (zombie_exec.clone(), ns.to_owned(), input(&id, 1));
    let zombie = tokio::spawn(async move { run(&exec, &ns_owned, &zombie_input).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    {
        // The new owner adopts the journal, then waits before its charge until the zombie
        // has woken (at 1.5 s) and tried to journal its own.
        let mut script = script();
        script.slow.remove(&id);
        script
            .hold
            .insert(id.clone(), (1, Duration::from_millis(1500)));
    }
    let owner = Idempotency::from_shared(Arc::clone(&fixture.store));
    let done = run(&owner, ns, &input(&id, 1)).await.expect("taken over");
    let late = zombie.await.expect("the zombie's task");
    assert!(
        matches!(late, Err(OpError::Idempotency(Error::LeaseLost { .. }))),
        "{late:?}"
    );
    assert_eq!(
        runs(&id),
        [1, 2, 1, 1],
        "the zombie's charge ran too (a remote step without its derived key may repeat)"
    );
    assert_eq!(run(&owner, ns, &input(&id, 1)).await.expect("replay"), done);
    fixture.drop_tables().await;
}

/// 50 calls abandoned at every step boundary (before the first step, between steps, after
/// the last) and one poisoned call; nobody retries. The completer finishes the 50, each step
/// run once, and parks the poisoned one after 3 attempts.
async fn the_completer_finishes_abandoned_calls(fixture: Fixture, ns: &str) {
    let exec = short_lease(&fixture.store);
    let ids: Vec<String> = (0..50).map(|n| unique(&format!("done{n}"))).collect();
    for (n, id) in ids.iter().enumerate() {
        abandon(&exec, ns, &input(id, n as u64), n % 5).await;
    }
    let poisoned = unique("poisoned");
    script().poison.insert(poisoned.clone(), 1);
    abandon(&exec, ns, &input(&poisoned, 0), 1).await;
    {
        let mut script = script();
        for id in ids.iter().chain([&poisoned]) {
            script.stall.remove(id);
        }
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let driver = Idempotency::from_shared(Arc::clone(&fixture.store));
    let completer = Completer::new(driver.clone())
        .register(ns.to_owned(), 1, op)
        .max_attempts(3)
        .batch(100);
    let (mut finished, mut parked, mut failures) = (HashSet::new(), Vec::new(), 0);
    for _ in 0..8 {
        let pass = completer.run_once().await.expect("a pass");
        finished.extend(pass.finished.iter().cloned());
        failures += pass.failed.len();
        parked.extend(pass.parked);
        if finished.len() == ids.len() && !parked.is_empty() {
            break;
        }
    }
    assert_eq!(finished.len(), 50, "every abandoned call finished");
    assert_eq!(
        failures, 3,
        "the poisoned call, once a pass for its 3 attempts"
    );
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].0, key(ns, &poisoned));
    assert!(parked[0].1.contains("poisoned"), "{:?}", parked[0].1);
    for id in &ids {
        assert_eq!(runs(id), [1, 1, 1, 1], "{id}");
    }
    assert_eq!(
        runs(&poisoned),
        [1, 3, 0, 0],
        "one run of charge per attempt"
    );
    // Done: callers replay, and later passes drive nothing.
    for (n, id) in ids.iter().enumerate().take(5) {
        let output = run(&driver, ns, &input(id, n as u64))
            .await
            .expect("replay");
        assert_eq!(output.split(',').count(), 4);
    }
    let pass = completer.run_once().await.expect("a pass");
    assert!(
        pass.finished.is_empty() && pass.failed.is_empty() && pass.parked.is_empty(),
        "{pass:?}"
    );
    for id in &ids {
        assert_eq!(runs(id), [1, 1, 1, 1], "{id}");
    }
    fixture.drop_tables().await;
}

/// Round trips, counted: a first execution of 4 steps is claim + journal start + 4 step
/// writes + complete; a replay is the claim alone.
async fn round_trips_are_exact(fixture: Fixture, ns: &str) {
    let counted = Arc::new(Counted {
        inner: Arc::clone(&fixture.store),
        calls: AtomicUsize::new(0),
    });
    let exec = Idempotency::from_shared(Arc::clone(&counted) as Arc<dyn Store>);
    let id = unique("trips");
    run(&exec, ns, &input(&id, 1)).await.expect("run");
    assert_eq!(counted.take(), 7, "claim, start, 4 steps, complete");
    run(&exec, ns, &input(&id, 1)).await.expect("replay");
    assert_eq!(counted.take(), 1, "a replay reads no journal");
    // A retry after an error adopts the journal: claim, start refused, read, adopt, the
    // failed step's write, complete (the error's own run: claim, start, 2 steps, settle, release).
    let again = unique("trips");
    script().fail.insert(again.clone(), (2, 1));
    assert!(run(&exec, ns, &input(&again, 1)).await.is_err());
    assert_eq!(counted.take(), 6, "claim, start, 2 steps, settle, release");
    run(&exec, ns, &input(&again, 1)).await.expect("resumed");
    assert_eq!(
        counted.take(),
        7,
        "claim, start refused, read, adopt, 2 steps, complete"
    );
    fixture.drop_tables().await;
}

macro_rules! on_every_store {
    ($($rule:ident),* $(,)?) => {$(
        mod $rule {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$rule(Fixture::memory(), concat!("steps.memory.", stringify!($rule))).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                if let Some(fixture) = Fixture::redis("steps (redis)").await {
                    super::$rule(fixture, concat!("steps.redis.", stringify!($rule))).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(fixture) = Fixture::postgres("steps (postgres)").await {
                    super::$rule(fixture, concat!("steps.postgres.", stringify!($rule))).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$rule(Fixture::sqlite().await, concat!("steps.sqlite.", stringify!($rule))).await;
            }
        }
    )*};
}

on_every_store!(
    resumes_after_an_error,
    resumes_after_an_abandoned_owner,
    other_arguments_are_refused,
    a_zombie_cannot_write,
    the_completer_finishes_abandoned_calls,
    round_trips_are_exact,
);

/// A spawned completer finishes abandoned calls by itself, at its `max_rate`, and stops at
/// `shutdown`: a call abandoned after it drives nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_completer_works_until_shutdown() {
    let fixture = Fixture::memory();
    let ns = "steps.memory.spawned";
    let exec = short_lease(&fixture.store);
    let ids: Vec<String> = (0..3).map(|n| unique(&format!("spawned{n}"))).collect();
    for (n, id) in ids.iter().enumerate() {
        abandon(&exec, ns, &input(id, 0), n + 1).await;
    }
    {
        let mut script = script();
        for id in &ids {
            script.stall.remove(id);
        }
    }
    let handle = Completer::new(Idempotency::from_shared(Arc::clone(&fixture.store)))
        .register(ns.to_owned(), 1, op)
        .interval(Duration::from_millis(50))
        .max_rate(100)
        .spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ids.iter().any(|id| runs(id) != [1, 1, 1, 1]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the spawned completer finished every call: {:?}",
            ids.iter().map(|id| runs(id)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.shutdown().await;
    let late = unique("late");
    abandon(&exec, ns, &input(&late, 0), 2).await;
    script().stall.remove(&late);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        runs(&late),
        [1, 1, 0, 0],
        "nothing drives it after shutdown"
    );
}

/// A journal the completer cleared (an empty value, expiring) does not stop a new run of the
/// key (after its record expired): the run starts a journal over it.
#[tokio::test]
async fn a_cleared_journal_is_started_again() {
    let store: Arc<dyn Store> = Arc::new(idempotency::MemoryStore::new());
    let ns = "steps.memory.cleared";
    let id = unique("cleared");
    let journal = Key::new(format!("{ns}~steps"), 1, *key(ns, &id).digest());
    let clear = MarkSwap::new(None, b"", Duration::from_secs(60));
    assert!(
        store
            .swap_mark(&journal, clear)
            .await
            .expect("a cleared journal")
    );
    let exec = Idempotency::from_shared(store);
    run(&exec, ns, &input(&id, 1)).await.expect("the call runs");
    assert_eq!(runs(&id), [1, 1, 1, 1]);
}

/// Local SQL steps: the step's row and its journal entry commit together. A step that fails
/// after its insert leaves no row; a rerun replays a journaled local step (one row); and a
/// zombie's local step, refused at its journal write, rolls its insert back.
macro_rules! local_steps {
    ($name:ident, $fixture:expr, $db:ty) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(fixture) = $fixture else { return };
            let pool = <Fixture as PoolOf<$db>>::pool(&fixture);
            let store = <Fixture as PoolOf<$db>>::store(&fixture);
            let table = unique("holds");
            idempotency::sqlx::query(&format!("CREATE TABLE {table} (id TEXT NOT NULL)"))
                .execute(&pool)
                .await
                .expect("create");
            let rows = |id: String| {
                let (pool, table) = (pool.clone(), table.clone());
                async move {
                    let count: i64 = idempotency::sqlx::query_scalar(&format!(
                        "SELECT COUNT(*) FROM {table} WHERE id = '{id}'"
                    ))
                    .fetch_one(&pool)
                    .await
                    .expect("count");
                    count
                }
            };
            let ns = concat!("steps.local.", stringify!($name));
            // `fail_after` fails the step after its insert; `then_fail` fails the body after it.
            let body = |fail_after: bool, then_fail: bool, sleep: Duration| {
                let (store, table) = (store.clone(), table.clone());
                move |op_input: Op, steps: Steps| async move {
                    let sql = format!("INSERT INTO {table} (id) VALUES ('{}')", op_input.id);
                    let held: String = steps
                        .local("reserve", &store, move |tx| {
                            Box::pin(async move {
                                idempotency::sqlx::query(&sql)
                                    .execute(&mut **tx)
                                    .await
                                    .map_err(|e| OpError::Failed(e.to_string()))?;
                                tokio::time::sleep(sleep).await;
                                if fail_after {
                                    return Err(OpError::Failed("after the insert".into()));
                                }
                                Ok(format!("held:{}", Token::random()))
                            })
                        })
                        .await?;
                    if then_fail {
                        return Err(OpError::Failed("after the local step".into()));
                    }
                    Ok::<_, OpError>(held)
                }
            };
            let exec = Idempotency::from_shared(Arc::clone(&fixture.store));
            let call = |id: &str| {
                let op_input = input(id, 1);
                exec.call(key(ns, id), Fingerprint::of(&op_input).expect("fp"))
            };
            // A failed local step: rolled back, nothing journaled; its retry inserts once.
            let a = unique("a");
            let failed = call(&a)
                .run_steps(input(&a, 1), body(true, false, Duration::ZERO))
                .await;
            assert!(matches!(failed, Err(OpError::Failed(_))), "{failed:?}");
            assert_eq!(rows(a.clone()).await, 0);
            // The body fails after the local step: the rerun replays it (still one row).
            let failed = call(&a)
                .run_steps(input(&a, 1), body(false, true, Duration::ZERO))
                .await;
            assert!(matches!(failed, Err(OpError::Failed(_))), "{failed:?}");
            assert_eq!(rows(a.clone()).await, 1);
            let held = call(&a)
                .run_steps(input(&a, 1), body(false, false, Duration::ZERO))
                .await
                .expect("resumed");
            assert!(held.starts_with("held:"));
            assert_eq!(
                rows(a.clone()).await,
                1,
                "the journaled local step did not run again"
            );
            // In the caller's transaction: committed, the row and the entry are kept (a rerun
            // replays the step); rolled back, neither is, and the next journal write goes on.
            let in_callers = |commit: bool, then_fail: bool| {
                let (store, table, pool) = (store.clone(), table.clone(), pool.clone());
                move |op_input: Op, steps: Steps| async move {
                    let sql = format!("INSERT INTO {table} (id) VALUES ('{}')", op_input.id);
                    let mut tx = pool
                        .begin()
                        .await
                        .map_err(|e| OpError::Failed(e.to_string()))?;
                    let held: String = steps
                        .local_in("reserve", &store, &mut tx, move |tx| {
                            Box::pin(async move {
                                idempotency::sqlx::query(&sql)
                                    .execute(&mut **tx)
                                    .await
                                    .map_err(|e| OpError::Failed(e.to_string()))?;
                                Ok::<_, OpError>(format!("held:{}", Token::random()))
                            })
                        })
                        .await?;
                    if commit {
                        tx.commit()
                            .await
                            .map_err(|e| OpError::Failed(e.to_string()))?;
                    } else {
                        tx.rollback()
                            .await
                            .map_err(|e| OpError::Failed(e.to_string()))?;
                    }
                    let after: String = steps
                        .step("after", || async { Ok::<_, OpError>("after".to_owned()) })
                        .await?;
                    if then_fail {
                        return Err(OpError::Failed("after both steps".into()));
                    }
                    Ok::<_, OpError>(format!("{held},{after}"))
                }
            };
            let c = unique("c");
            let failed = call(&c)
                .run_steps(input(&c, 1), in_callers(true, true))
                .await;
            assert!(matches!(failed, Err(OpError::Failed(_))), "{failed:?}");
            assert_eq!(rows(c.clone()).await, 1);
            let done = call(&c)
                .run_steps(input(&c, 1), in_callers(true, false))
                .await
                .expect("resumed");
            assert_eq!(
                rows(c.clone()).await,
                1,
                "the committed local step was journaled"
            );
            assert!(done.ends_with(",after"), "{done}");
            let r = unique("r");
            let done = call(&r)
                .run_steps(input(&r, 1), in_callers(false, false))
                .await
                .expect("the journal write after a rolled-back entry goes on");
            assert!(done.ends_with(",after"), "{done}");
            assert_eq!(rows(r.clone()).await, 0, "rolled back with its entry");
            // A zombie's local step: its insert is rolled back with its refused journal write.
            let z = unique("z");
            let zombie_exec = Idempotency::builder(Arc::clone(&fixture.store))
                .lease(Duration::from_millis(200))
                .max_run(Duration::from_millis(200))
                .build();
            let zombie_call = {
                let op_input = input(&z, 1);
                let key = key(ns, &z);
                let body = body(false, false, Duration::from_millis(1500));
                async move {
                    zombie_exec
                        .call(key, Fingerprint::of(&op_input).expect("fp"))
                        .run_steps(op_input, body)
                        .await
                }
            };
            let zombie = tokio::spawn(zombie_call);
            tokio::time::sleep(Duration::from_millis(800)).await;
            let owner = call(&z)
                .run_steps(input(&z, 1), body(false, false, Duration::ZERO))
                .await
                .expect("taken over");
            // PostgreSQL: the owner commits first and the zombie's journal write is refused.
            // SQLite: the zombie's open write transaction holds the database's lock, so the
            // owner's claim waits for its commit and then replays the zombie's step.
            match zombie.await.expect("the zombie's task") {
                Err(OpError::Idempotency(Error::LeaseLost { .. })) => {}
                Ok(late) => assert_eq!(late, owner),
                other => panic!("{other:?}"),
            }
            assert_eq!(rows(z.clone()).await, 1, "one insert committed");
            let replayed = call(&z)
                .run_steps(input(&z, 1), body(false, false, Duration::ZERO))
                .await
                .expect("replay");
            assert_eq!(replayed, owner);
            let _ = idempotency::sqlx::query(&format!("DROP TABLE {table}"))
                .execute(&pool)
                .await;
            fixture.drop_tables().await;
        }
    };
}

trait PoolOf<DB: idempotency::SqlDialect> {
    fn pool(&self) -> idempotency::sqlx::Pool<DB>;
    fn store(&self) -> idempotency::SqlStore<DB>;
}

impl PoolOf<idempotency::sqlx::Postgres> for Fixture {
    fn pool(&self) -> idempotency::sqlx::PgPool {
        self.postgres.as_ref().expect("postgres").0.clone()
    }
    fn store(&self) -> idempotency::PostgresStore {
        self.postgres.as_ref().expect("postgres").1.clone()
    }
}

impl PoolOf<idempotency::sqlx::Sqlite> for Fixture {
    fn pool(&self) -> idempotency::sqlx::SqlitePool {
        self.sqlite.as_ref().expect("sqlite").0.clone()
    }
    fn store(&self) -> idempotency::SqliteStore {
        self.sqlite.as_ref().expect("sqlite").1.clone()
    }
}

mod local {
    use super::*;
    use idempotency::sqlx::{Postgres, Sqlite};

    local_steps!(
        postgres,
        Fixture::postgres("steps (postgres)").await,
        Postgres
    );
    local_steps!(sqlite, Some(Fixture::sqlite().await), Sqlite);
}

/// A multi-step call's future is `Send` (it can run in a spawned task, an axum handler).
#[test]
fn a_multi_step_call_is_send() {
    fn send<T: Send>(_: &T) {}
    let exec = Idempotency::new(idempotency::MemoryStore::new());
    let op_input = input("send", 1);
    let call = exec
        .call(
            key("steps.send", "send"),
            Fingerprint::of(&op_input).expect("fp"),
        )
        .run_steps(op_input, op);
    send(&call);
}
