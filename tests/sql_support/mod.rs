//! Shared support of the SQL suites (`sql_postgres`, `sql_mysql`, `sql_sqlite`): unique
//! table names, a statement counter, child processes of the test binary, and the suite
//! itself as a macro that each database's file expands with its own harness.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

pub(crate) mod suite;

/// A table name no other run uses: `{prefix}_{pid}_{random}`.
pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        &idempotency::Token::random().to_string()[..10]
    )
}

/// Counts the statements sqlx runs whose SQL mentions a given table, from the event sqlx
/// emits for every statement it finishes (target `sqlx::query`). Pings and transaction
/// control statements do not mention the table and are not counted.
#[derive(Clone, Debug)]
pub(crate) struct StatementCounter(Arc<AtomicUsize>);

impl StatementCounter {
    /// Counts statements mentioning `table` from now on.
    pub(crate) fn on(table: &str) -> StatementCounter {
        install_counting_subscriber();
        let count = Arc::new(AtomicUsize::new(0));
        COUNTERS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((table.to_owned(), Arc::clone(&count)));
        StatementCounter(count)
    }

    /// The statements counted since the last `take`.
    pub(crate) fn take(&self) -> usize {
        self.0.swap(0, Ordering::SeqCst)
    }
}

static COUNTERS: Mutex<Vec<(String, Arc<AtomicUsize>)>> = Mutex::new(Vec::new());

fn install_counting_subscriber() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        tracing::subscriber::set_global_default(Counting)
            .expect("no other global tracing subscriber in the SQL suites");
    });
}

struct Counting;

const SQLX_QUERY: &str = "sqlx::query";

impl tracing::Subscriber for Counting {
    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if metadata.target() == SQLX_QUERY {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target() == SQLX_QUERY
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut statement = Statement(String::new());
        event.record(&mut statement);
        for (table, count) in COUNTERS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
        {
            if statement.0.contains(table.as_str()) {
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

struct Statement(String);

impl tracing::field::Visit for Statement {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "db.statement" {
            self.0.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "db.statement" {
            self.0.push_str(&format!("{value:?}"));
        }
    }
}

/// The variable that tells a child process of a test binary what to do.
pub(crate) const CHILD_ROLE: &str = "IDEMPOTENCY_SQL_CHILD";

/// A child process running the ignored test `entry` of this test binary, with `envs`.
pub(crate) struct ChildProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl ChildProcess {
    pub(crate) fn spawn(entry: &str, envs: &[(&str, String)]) -> ChildProcess {
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                entry,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .envs(envs.iter().map(|(name, value)| (*name, value.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a child test process");
        let stdout = child.stdout.take().expect("piped stdout");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Shown when the parent test fails (the harness captures it otherwise).
                println!("child: {line}");
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        ChildProcess { child, lines }
    }

    /// The next line the child printed with `prefix` in it, from `prefix` on (the test
    /// harness may print its own text before it), waiting up to `within`.
    pub(crate) fn line_starting(&self, prefix: &str, within: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(at) = line.find(prefix) {
                        return Some(line[at..].to_owned());
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// SIGKILL (`Child::kill` on Unix), then reap.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `within` for the child to exit; kills it if it does not.
    pub(crate) fn finish(mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cleanup` on a fresh thread with its own runtime (usable from `Drop`, inside or
/// outside a runtime), and waits for it.
pub(crate) fn run_detached<F, Fut>(cleanup: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let _ = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(cleanup());
        }
    })
    .join();
}

/// Drops what a test created (tables, a database file) when it goes out of scope, even if
/// the test failed.
pub(crate) struct Scratch {
    cleanup: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Scratch {
    pub(crate) fn new(cleanup: impl FnOnce() + Send + Sync + 'static) -> Scratch {
        Scratch {
            cleanup: Some(Box::new(cleanup)),
        }
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scratch")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            cleanup();
        }
    }
}

/// A store that cleans up its scratch tables when dropped (for the conformance factory).
#[derive(Debug)]
pub(crate) struct Cleaned<S> {
    pub(crate) store: S,
    pub(crate) scratch: Scratch,
}

#[idempotency::async_trait]
impl<S: idempotency::Store> idempotency::Store for Cleaned<S> {
    async fn claim(
        &self,
        key: &idempotency::Key,
        request: idempotency::ClaimRequest,
    ) -> Result<idempotency::Claim, idempotency::StoreError> {
        self.store.claim(key, request).await
    }

    async fn complete(
        &self,
        key: &idempotency::Key,
        completion: idempotency::Completion,
    ) -> Result<(), idempotency::StoreError> {
        self.store.complete(key, completion).await
    }

    async fn release(
        &self,
        key: &idempotency::Key,
        token: &idempotency::Token,
    ) -> Result<(), idempotency::StoreError> {
        self.store.release(key, token).await
    }

    async fn renew(
        &self,
        key: &idempotency::Key,
        token: &idempotency::Token,
        lease: Duration,
    ) -> Result<(), idempotency::StoreError> {
        self.store.renew(key, token, lease).await
    }

    async fn get(
        &self,
        key: &idempotency::Key,
    ) -> Result<Option<idempotency::Record>, idempotency::StoreError> {
        self.store.get(key).await
    }

    async fn remove(&self, key: &idempotency::Key) -> Result<bool, idempotency::StoreError> {
        self.store.remove(key).await
    }
}

/// Statements per call, as the module docs of `idempotency::store::sql` state them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RoundTrips {
    pub(crate) first: usize,
    pub(crate) replay: usize,
    pub(crate) failed: usize,
    pub(crate) tx_first: usize,
    pub(crate) tx_replay: usize,
    pub(crate) tx_failed: usize,
    /// With `insert_first(true)` (MySQL, SQLite; PostgreSQL ignores it).
    pub(crate) insert_first: [usize; 3],
}
