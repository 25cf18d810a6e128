//! The transactional outbox and its relay on real PostgreSQL, MariaDB and SQLite (a file, so
//! that relays on several connections share it), with a recording publisher; and on
//! PostgreSQL with the real NATS JetStream: the stream drops a relay's re-publish after a
//! crash between the broker's ack and the mark, a consumer deduplicating by the header sees
//! each id once, and a relay rides out a test-owned NATS server's outage.
//!
//! Every test works in tables of its own and drops them; JetStream streams are deleted.

#![cfg(all(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "nats"
))]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use idempotency::broker::{Message, Publisher};
use idempotency::{BoxError, async_trait};

/// A table name no other run uses.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        &idempotency::Token::random().to_string()[..10]
    )
}

/// Records what it publishes; refuses the ids in `refuse`; with `hang` set, never answers
/// after recording (a relay that dies between the broker's ack and its mark).
#[derive(Debug, Clone, Default)]
struct Recorder {
    published: Arc<Mutex<Vec<String>>>,
    refuse: Arc<Mutex<HashSet<String>>>,
    hang: Arc<AtomicBool>,
}

impl Recorder {
    fn published(&self) -> Vec<String> {
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[async_trait]
impl Publisher for Recorder {
    async fn publish(&self, message: &Message) -> Result<(), BoxError> {
        if self
            .refuse
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&message.id)
        {
            return Err("the broker refused it (test): ünïcødé ✓".into());
        }
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(message.id.clone());
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// Publishes through `inner`; with `hang` set, never answers after the broker's confirmation
/// (a relay that dies between the confirmation and its mark).
struct Dying<P> {
    inner: P,
    hang: bool,
}

#[async_trait]
impl<P: Publisher> Publisher for Dying<P> {
    async fn publish(&self, message: &Message) -> Result<(), BoxError> {
        self.inner.publish(message).await?;
        if self.hang {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// How many times each id was published.
fn counts(ids: &[String]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for id in ids {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    counts
}

macro_rules! outbox_suite {
    ($module:ident, $db:ty) => {
        mod $module {
            use std::time::{Duration, Instant};

            use idempotency::outbox::{Outbox, OutboxError};
            use idempotency::sqlx::{self, Pool, Transaction};
            use idempotency::{BoxError, SqlStore, idempotent};

            use super::harness_for::$module as harness;
            use super::{Recorder, counts, unique};

            type Db = $db;

            struct Setup {
                pool: Pool<Db>,
                store: SqlStore<Db>,
                outbox: Outbox<Db>,
                tables: Vec<String>,
            }

            impl Drop for Setup {
                fn drop(&mut self) {
                    harness::cleanup(std::mem::take(&mut self.tables));
                }
            }

            async fn setup() -> Option<Setup> {
                let (records, events) = (unique("ob_records"), unique("ob_events"));
                let pool = harness::connect(&events).await?;
                let store = SqlStore::builder(pool.clone())
                    .table(&records)
                    .build()
                    .expect("a valid table name");
                store.migrate().await.expect("migrate the store");
                let outbox = Outbox::with_table(pool.clone(), &events).expect("a valid table name");
                outbox.migrate().await.expect("migrate the outbox");
                Some(Setup {
                    pool,
                    store,
                    outbox,
                    tables: vec![records, events],
                })
            }

            /// Places an order: two messages, one by position and one by name.
            #[idempotent(key = order, transaction = tx, store = store, skip(store, outbox))]
            async fn place(
                tx: &mut Transaction<'_, Db>,
                store: &SqlStore<Db>,
                outbox: &Outbox<Db>,
                order: &str,
            ) -> Result<Vec<String>, BoxError> {
                let created = outbox.add(tx, "orders.created", order.as_bytes()).await?;
                let receipt = outbox
                    .add_named(tx, "receipt", "orders.receipt", order.as_bytes())
                    .await?;
                Ok(vec![created, receipt])
            }

            async fn place_committed(setup: &Setup, order: &str) -> Vec<String> {
                let mut tx = setup.pool.begin().await.expect("begin");
                let ids = place(&mut tx, &setup.store, &setup.outbox, order)
                    .await
                    .expect("place");
                tx.commit().await.expect("commit");
                ids
            }

            #[tokio::test]
            async fn a_call_adds_its_messages_once_with_ids_derived_from_its_key() {
                let Some(setup) = setup().await else { return };
                let order = unique("order");
                let first = place_committed(&setup, &order).await;
                let replayed = place_committed(&setup, &order).await;
                assert_eq!(first, replayed, "the replay returns the first call's ids");
                assert_eq!(
                    setup.outbox.pending().await.expect("pending"),
                    2,
                    "the replay added nothing"
                );
                assert!(first[0].ends_with("/0"), "{first:?}");
                assert!(first[1].ends_with("/receipt"), "{first:?}");
                assert_eq!(
                    first[0].trim_end_matches("/0"),
                    first[1].trim_end_matches("/receipt"),
                    "both ids come from the call's key"
                );
                let other = place_committed(&setup, &unique("order")).await;
                assert_ne!(first, other, "another key, other ids");
            }

            #[tokio::test]
            async fn a_rolled_back_call_adds_nothing_and_its_rerun_adds_the_same_ids() {
                let Some(setup) = setup().await else { return };
                let order = unique("order");
                let mut tx = setup.pool.begin().await.expect("begin");
                let rolled_back = place(&mut tx, &setup.store, &setup.outbox, &order)
                    .await
                    .expect("place");
                tx.rollback().await.expect("rollback");
                assert_eq!(setup.outbox.pending().await.expect("pending"), 0);
                let recorder = Recorder::default();
                let pass = setup
                    .outbox
                    .relay(recorder.clone())
                    .run_once()
                    .await
                    .expect("a pass");
                assert_eq!(
                    pass.published, 0,
                    "a rolled-back message is never published"
                );

                let committed = place_committed(&setup, &order).await;
                assert_eq!(rolled_back, committed, "the rerun derives the same ids");
                assert_eq!(setup.outbox.pending().await.expect("pending"), 2);
            }

            /// Not transactional: the body commits its own transaction, then fails.
            #[idempotent(key = order, skip(pool, outbox, fail))]
            async fn place_then_fail(
                pool: &Pool<Db>,
                outbox: &Outbox<Db>,
                order: &str,
                fail: bool,
            ) -> Result<String, BoxError> {
                let mut tx = pool.begin().await?;
                let id = outbox
                    .add(&mut tx, "orders.created", order.as_bytes())
                    .await?;
                tx.commit().await?;
                if fail {
                    return Err("the body failed after its commit (test)".into());
                }
                Ok(id)
            }

            #[tokio::test]
            async fn a_body_rerun_after_its_own_commit_adds_nothing_new() {
                let Some(setup) = setup().await else { return };
                let order = unique("order");
                let failed = place_then_fail(&setup.pool, &setup.outbox, &order, true).await;
                assert!(failed.is_err());
                assert_eq!(setup.outbox.pending().await.expect("pending"), 1);
                let id = place_then_fail(&setup.pool, &setup.outbox, &order, false)
                    .await
                    .expect("the retry");
                assert!(id.ends_with("/0"), "{id}");
                assert_eq!(
                    setup.outbox.pending().await.expect("pending"),
                    1,
                    "the rerun's message is the same row"
                );
            }

            #[tokio::test]
            async fn outside_a_call_ids_are_fresh_and_bad_input_is_refused() {
                let Some(setup) = setup().await else { return };
                let mut tx = setup.pool.begin().await.expect("begin");
                let a = setup.outbox.add(&mut tx, "t", b"a").await.expect("add");
                let b = setup.outbox.add(&mut tx, "t", b"b").await.expect("add");
                assert_ne!(a, b);
                assert_eq!(a.len(), 36, "a UUID: {a}");
                let named = setup
                    .outbox
                    .add_named(&mut tx, "only-once", "t", b"c")
                    .await
                    .expect("add");
                assert_eq!(named, "only-once");
                let again = setup.outbox.add_named(&mut tx, "only-once", "t", b"c").await.expect("add");
                assert_eq!(again, "only-once", "the same message again adds nothing");
                let other = setup.outbox.add_named(&mut tx, "only-once", "t", b"d").await;
                assert!(
                    matches!(&other, Err(OutboxError::Conflict { id }) if id == "only-once"),
                    "another message under a taken id is refused, not dropped: {other:?}"
                );
                for topic in ["", "has space", "tab\there"] {
                    let refused = setup.outbox.add(&mut tx, topic, b"x").await;
                    assert!(
                        matches!(refused, Err(OutboxError::Invalid { .. })),
                        "{topic:?}: {refused:?}"
                    );
                }
                let digits = setup.outbox.add_named(&mut tx, "42", "t", b"x").await;
                assert!(
                    matches!(digits, Err(OutboxError::Invalid { .. })),
                    "{digits:?}"
                );
                let long = setup
                    .outbox
                    .add_named(&mut tx, &"n".repeat(256), "t", b"x")
                    .await;
                assert!(long.is_err());
                tx.commit().await.expect("commit");
                assert_eq!(setup.outbox.pending().await.expect("pending"), 3);
            }

            #[tokio::test]
            async fn parallel_relays_publish_each_message_once() {
                let Some(setup) = setup().await else { return };
                const MESSAGES: usize = 300;
                let mut expected = Vec::new();
                for chunk in 0..(MESSAGES / 2) {
                    expected
                        .extend(place_committed(&setup, &format!("{}-{chunk}", unique("o"))).await);
                }
                let recorder = Recorder::default();
                let relays: Vec<_> = (0..4)
                    .map(|_| setup.outbox.relay(recorder.clone()).batch(16))
                    .collect();
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut tasks = tokio::task::JoinSet::new();
                for relay in relays {
                    tasks.spawn(async move {
                        let mut passes = 0;
                        while Instant::now() < deadline {
                            let pass = relay.run_once().await.expect("a pass");
                            assert!(pass.failed.is_empty(), "{pass:?}");
                            if pass.published == 0 {
                                break;
                            }
                            passes += 1;
                        }
                        passes
                    });
                }
                let mut passes = 0;
                while let Some(done) = tasks.join_next().await {
                    passes += done.expect("a relay task");
                }
                let published = recorder.published();
                let counts = counts(&published);
                assert_eq!(
                    published.len(),
                    MESSAGES,
                    "published once each, never twice"
                );
                assert!(counts.values().all(|&n| n == 1));
                for id in &expected {
                    assert_eq!(counts.get(id.as_str()), Some(&1), "{id}");
                }
                assert!(passes >= MESSAGES / 16, "{passes} passes");
                assert_eq!(setup.outbox.pending().await.expect("pending"), 0);
            }

            #[tokio::test]
            async fn a_relay_dead_before_its_mark_leaves_the_batch_to_be_published_again() {
                let Some(setup) = setup().await else { return };
                let ids = place_committed(&setup, &unique("order")).await;
                let dying = Recorder::default();
                dying.hang.store(true, std::sync::atomic::Ordering::SeqCst);
                let lease = Duration::from_millis(600);
                let relay = setup.outbox.relay(dying.clone()).lease(lease);
                let died = tokio::time::timeout(Duration::from_millis(200), relay.run_once()).await;
                assert!(died.is_err(), "the relay hung after the broker's ack");
                assert_eq!(dying.published().len(), 2, "the broker had both");

                let survivor = Recorder::default();
                let relay = setup.outbox.relay(survivor.clone()).lease(lease);
                let early = relay.run_once().await.expect("a pass");
                assert_eq!(early.published, 0, "the dead relay's lease still holds");
                tokio::time::sleep(lease).await;
                let pass = relay.run_once().await.expect("a pass");
                assert_eq!(pass.published, 2, "taken again once the lease passed");
                assert_eq!(
                    survivor.published(),
                    ids,
                    "the same ids: the broker drops the repeat"
                );
                assert_eq!(setup.outbox.pending().await.expect("pending"), 0);
            }

            #[tokio::test]
            async fn a_refused_message_is_given_back_with_its_error_and_published_later() {
                let Some(setup) = setup().await else { return };
                let ids = place_committed(&setup, &unique("order")).await;
                let recorder = Recorder::default();
                recorder
                    .refuse
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(ids[1].clone());
                let relay = setup
                    .outbox
                    .relay(recorder.clone())
                    .idle(Duration::from_millis(50))
                    .backoff(
                        idempotency::RetryPolicy::new().initial_delay(Duration::from_millis(50)),
                    );
                let pass = relay.run_once().await.expect("a pass");
                assert_eq!(pass.published, 1);
                assert_eq!(pass.failed.len(), 1);
                assert_eq!(pass.failed[0].id, ids[1]);
                assert!(pass.failed[0].error.contains("refused"), "{pass:?}");
                assert_eq!(setup.outbox.pending().await.expect("pending"), 1);
                let error: Option<String> = sqlx::query_scalar(&format!(
                    "SELECT last_error FROM {} WHERE published_at IS NULL",
                    setup.tables[1]
                ))
                .fetch_one(&setup.pool)
                .await
                .expect("the row");
                assert!(error.is_some_and(|error| error.contains("refused")));

                recorder
                    .refuse
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                let at_once = relay.run_once().await.expect("a pass");
                assert_eq!(at_once.published, 0, "given back with a backoff");
                tokio::time::sleep(Duration::from_millis(150)).await;
                let later = relay.run_once().await.expect("a pass");
                assert_eq!(later.published, 1);
                assert_eq!(recorder.published(), ids);
            }

            #[tokio::test]
            async fn a_spawned_relay_keeps_to_its_rate() {
                let Some(setup) = setup().await else { return };
                for n in 0..10 {
                    place_committed(&setup, &format!("{}-{n}", unique("o"))).await;
                }
                let recorder = Recorder::default();
                let started = Instant::now();
                let handle = setup
                    .outbox
                    .relay(recorder.clone())
                    .batch(5)
                    .max_rate(50)
                    .idle(Duration::from_millis(10))
                    .spawn();
                let deadline = Instant::now() + Duration::from_secs(20);
                while setup.outbox.pending().await.expect("pending") > 0
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let took = started.elapsed();
                handle.shutdown().await;
                assert_eq!(recorder.published().len(), 20);
                // 4 passes of 5 at 50 a second: the last starts 300 ms after the first.
                assert!(
                    took >= Duration::from_millis(300),
                    "20 messages at 50/s in {took:?}"
                );
            }

            #[tokio::test]
            async fn a_message_that_keeps_failing_is_parked_and_a_dropped_handle_stops_the_relay() {
                let Some(setup) = setup().await else { return };
                let ids = place_committed(&setup, &unique("order")).await;
                let recorder = Recorder::default();
                recorder.refuse.lock().unwrap_or_else(|e| e.into_inner()).insert(ids[0].clone());
                let relay = setup
                    .outbox
                    .relay(recorder.clone())
                    .idle(Duration::ZERO)
                    .max_attempts(2)
                    .backoff(idempotency::RetryPolicy::new().initial_delay(Duration::ZERO).max_delay(Duration::ZERO));
                assert_eq!(relay.run_once().await.expect("a pass").failed.len(), 1);
                assert_eq!(relay.run_once().await.expect("a pass").failed.len(), 1, "its second attempt");
                recorder.refuse.lock().unwrap_or_else(|e| e.into_inner()).clear();
                let after = relay.run_once().await.expect("a pass");
                assert_eq!(after, idempotency::outbox::RelayPass::default(), "parked: not taken again");
                assert_eq!(setup.outbox.pending().await.expect("pending"), 1);
                assert_eq!(recorder.published(), vec![ids[1].clone()]);

                let handle = setup.outbox.relay(recorder.clone()).idle(Duration::from_millis(10)).spawn();
                drop(handle);
                tokio::time::sleep(Duration::from_millis(100)).await;
                place_committed(&setup, &unique("order")).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert_eq!(setup.outbox.pending().await.expect("pending"), 3, "the dropped relay publishes nothing more");
            }

            #[tokio::test]
            async fn published_rows_are_purged_after_the_retention_and_a_spawned_relay_stops() {
                let Some(setup) = setup().await else { return };
                for n in 0..3 {
                    place_committed(&setup, &format!("{}-{n}", unique("o"))).await;
                }
                let recorder = Recorder::default();
                let handle = setup
                    .outbox
                    .relay(recorder.clone())
                    .idle(Duration::from_millis(20))
                    .spawn();
                let deadline = Instant::now() + Duration::from_secs(20);
                while setup.outbox.pending().await.expect("pending") > 0
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                handle.shutdown().await;
                assert_eq!(recorder.published().len(), 6);
                let relay = setup
                    .outbox
                    .relay(recorder.clone())
                    .retention(Duration::ZERO);
                assert_eq!(relay.purge().await.expect("purge"), 6);
                let rows: i64 =
                    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", setup.tables[1]))
                        .fetch_one(&setup.pool)
                        .await
                        .expect("count");
                assert_eq!(rows, 0);
            }
        }
    };
}

mod harness_for {
    /// A server database's harness: a pool from `$variable` (or `$default`), and tables
    /// dropped afterwards (PostgreSQL: with the store's claim function).
    macro_rules! server {
        ($module:ident, $pool:ty, $options:ty, $variable:literal, $default:literal, $suite:literal) => {
            pub(crate) mod $module {
                use idempotency::testing::{service_url, unreachable};

                fn url() -> String {
                    service_url($variable, $default)
                }

                pub(crate) async fn connect(_name: &str) -> Option<$pool> {
                    match <$options>::new().max_connections(8).connect(&url()).await {
                        Ok(pool) => Some(pool),
                        Err(error) => {
                            unreachable($suite, &url(), &error);
                            None
                        }
                    }
                }

                pub(crate) fn cleanup(tables: Vec<String>) {
                    super::drop_tables(tables, |tables| async move {
                        let pool = <$pool>::connect(&url()).await?;
                        for table in tables {
                            idempotency::sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
                                .execute(&pool)
                                .await?;
                            if $variable == "POSTGRES_URL" {
                                let function =
                                    format!("DROP FUNCTION IF EXISTS {table}_claim CASCADE");
                                idempotency::sqlx::query(&function).execute(&pool).await?;
                            }
                        }
                        Ok(())
                    });
                }
            }
        };
    }

    server!(
        pg,
        idempotency::sqlx::PgPool,
        idempotency::sqlx::postgres::PgPoolOptions,
        "POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/test",
        "outbox (postgres)"
    );
    server!(
        my,
        idempotency::sqlx::MySqlPool,
        idempotency::sqlx::mysql::MySqlPoolOptions,
        "MYSQL_URL",
        "mysql://root@127.0.0.1:3306/test",
        "outbox (mysql)"
    );

    pub(crate) mod lite {
        use idempotency::sqlx::SqlitePool;
        use idempotency::sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

        fn path(name: &str) -> std::path::PathBuf {
            std::env::temp_dir().join(format!("{name}.db"))
        }

        /// A fresh database file named after the outbox table: connections of one pool
        /// share it (an in-memory database would be one per connection).
        pub(crate) async fn connect(name: &str) -> Option<SqlitePool> {
            let options = SqliteConnectOptions::new()
                .filename(path(name))
                .create_if_missing(true);
            Some(
                SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await
                    .expect("a SQLite file"),
            )
        }

        /// Removes the file (the tables are `[records, outbox]`).
        pub(crate) fn cleanup(tables: Vec<String>) {
            if let Some(outbox) = tables.get(1) {
                let file = path(outbox);
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let mut name = file.clone().into_os_string();
                    name.push(suffix);
                    let _ = std::fs::remove_file(name);
                }
            }
        }
    }

    use std::time::Duration;

    /// Drops `tables` on a runtime of its own (called from `Drop`, inside or outside one).
    pub(crate) fn drop_tables<F, Fut>(tables: Vec<String>, drop: F)
    where
        F: FnOnce(Vec<String>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), idempotency::BoxError>>,
    {
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                // Bounded: a table still locked by a failed test must not hang the suite.
                let _ =
                    runtime.block_on(tokio::time::timeout(Duration::from_secs(10), drop(tables)));
            }
        })
        .join();
    }
}

outbox_suite!(pg, idempotency::sqlx::Postgres);
outbox_suite!(my, idempotency::sqlx::MySql);
outbox_suite!(lite, idempotency::sqlx::Sqlite);

/// JetStream through the real NATS, on PostgreSQL.
mod jetstream {
    use std::time::{Duration, Instant};

    use async_nats::jetstream::{self, consumer::pull, stream};
    use futures::StreamExt as _;
    use idempotency::broker::nats::{JetStreamPublisher, async_nats, message_id};
    use idempotency::consumer::Consumer;
    use idempotency::outbox::Outbox;
    use idempotency::sqlx::PgPool;
    use idempotency::testing::{service_url, unreachable};
    use idempotency::{Idempotency, MemoryStore};

    use super::{Dying, unique};

    async fn stream_on(js: &jetstream::Context, storage: stream::StorageType) -> (String, String) {
        let tag = unique("OB").to_uppercase();
        let (name, subject) = (format!("OUTBOX_{tag}"), format!("outbox.{tag}"));
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{subject}.>")],
            storage,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("create a stream");
        (name, subject)
    }

    async fn outbox() -> Option<(PgPool, Outbox<idempotency::sqlx::Postgres>, String)> {
        let url = service_url("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test");
        let pool = match PgPool::connect(&url).await {
            Ok(pool) => pool,
            Err(error) => {
                unreachable("outbox (postgres)", &url, &error);
                return None;
            }
        };
        let table = unique("ob_js");
        let outbox = Outbox::with_table(pool.clone(), &table).expect("a table name");
        outbox.migrate().await.expect("migrate");
        Some((pool, outbox, table))
    }

    async fn add(
        pool: &PgPool,
        outbox: &Outbox<idempotency::sqlx::Postgres>,
        n: usize,
    ) -> Vec<String> {
        let mut ids = Vec::new();
        let mut tx = pool.begin().await.expect("begin");
        for i in 0..n {
            ids.push(
                outbox
                    .add(&mut tx, &format!("m{}", i % 3), format!("payload {i}"))
                    .await
                    .expect("add"),
            );
        }
        tx.commit().await.expect("commit");
        ids
    }

    async fn drop_table(pool: &PgPool, table: &str) {
        let _ = idempotency::sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
            .execute(pool)
            .await;
    }

    #[tokio::test]
    async fn the_stream_drops_a_republish_and_the_consumer_sees_each_id_once() {
        let url = service_url("NATS_URL", "nats://127.0.0.1:4222");
        let client = match async_nats::connect(&url).await {
            Ok(client) => client,
            Err(error) => return unreachable("outbox (jetstream)", &url, &error),
        };
        let Some((pool, outbox, table)) = outbox().await else {
            return;
        };
        let js = jetstream::new(client);
        let (name, subject) = stream_on(&js, stream::StorageType::Memory).await;
        let publisher =
            || JetStreamPublisher::new(js.clone()).subject_prefix(format!("{subject}."));
        let ids = add(&pool, &outbox, 40).await;

        // A relay that dies after the stream acked its batch, before marking it.
        let lease = Duration::from_millis(800);
        let dying = outbox
            .relay(Dying {
                inner: publisher(),
                hang: true,
            })
            .lease(lease)
            .batch(25);
        assert!(
            tokio::time::timeout(Duration::from_secs(3), dying.run_once())
                .await
                .is_err()
        );
        tokio::time::sleep(lease).await;
        let relay = outbox
            .relay(Dying {
                inner: publisher(),
                hang: false,
            })
            .lease(lease);
        let deadline = Instant::now() + Duration::from_secs(30);
        while outbox.pending().await.expect("pending") > 0 && Instant::now() < deadline {
            relay.run_once().await.expect("a pass");
        }
        assert_eq!(outbox.pending().await.expect("pending"), 0);

        let mut stream = js.get_stream(&name).await.expect("the stream");
        let stored = stream.info().await.expect("info").state.messages;
        assert_eq!(
            stored, 40,
            "the 25 messages published twice are stored once"
        );

        let consumer = stream
            .create_consumer(pull::Config {
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .expect("a consumer");
        let dedup = Consumer::new(Idempotency::new(MemoryStore::new()), "outbox.consumer");
        let mut seen = Vec::new();
        let mut messages = consumer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .expect("fetch");
        while let Some(message) = messages.next().await {
            let message = message.expect("a message");
            let id = message_id(message.headers.as_ref())
                .expect("the id header")
                .to_owned();
            let outcome = dedup
                .handle(&id, || async { Ok::<_, idempotency::Error>(()) })
                .await
                .expect("handle");
            assert!(!outcome.is_duplicate());
            seen.push(id);
            message.ack().await.expect("ack");
        }
        assert_eq!(seen, ids, "every id once, in order");
        js.delete_stream(&name).await.expect("delete the stream");
        drop_table(&pool, &table).await;
    }

    /// A NATS server of this test's own, on a free loopback port, keeping JetStream in `dir`.
    struct Server {
        child: std::process::Child,
    }

    impl Server {
        fn start(port: u16, dir: &std::path::Path) -> Server {
            let child = std::process::Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("nats-server is installed (apt-get install nats-server)");
            Server { child }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    async fn connected(url: &str) -> async_nats::Client {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match async_nats::ConnectOptions::new()
                .retry_on_initial_connect()
                .connect(url)
                .await
            {
                Ok(client) => return client,
                Err(error) if Instant::now() > deadline => {
                    panic!("the test's NATS did not start: {error}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    #[tokio::test]
    async fn a_relay_backs_off_through_a_broker_outage_and_catches_up() {
        if std::process::Command::new("nats-server")
            .arg("--version")
            .output()
            .is_err()
        {
            return unreachable("outbox (broker outage)", "nats-server", &"not installed");
        }
        let Some((pool, outbox, table)) = outbox().await else {
            return;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("addr")
            .port();
        let dir = std::env::temp_dir().join(unique("nats"));
        let url = format!("nats://127.0.0.1:{port}");
        let mut server = Server::start(port, &dir);
        let client = connected(&url).await;
        let js = jetstream::new(client);
        let (name, subject) = stream_on(&js, stream::StorageType::File).await;
        let publisher = JetStreamPublisher::new(js.clone())
            .subject_prefix(format!("{subject}."))
            .ack_timeout(Duration::from_millis(500));
        let handle = outbox
            .relay(publisher)
            .batch(10)
            .idle(Duration::from_millis(20))
            .lease(Duration::from_secs(2))
            .backoff(
                idempotency::RetryPolicy::new()
                    .initial_delay(Duration::from_millis(100))
                    .max_delay(Duration::from_secs(1))
                    .no_max_elapsed(),
            )
            .spawn();
        let mut ids = add(&pool, &outbox, 30).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while outbox.pending().await.expect("pending") > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            outbox.pending().await.expect("pending"),
            0,
            "published before the outage"
        );

        // The broker goes away; messages keep being added.
        drop(server);
        ids.extend(add(&pool, &outbox, 30).await);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            outbox.pending().await.expect("pending"),
            30,
            "nothing is marked without an ack"
        );
        let errors: i64 = idempotency::sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM {table} WHERE last_error IS NOT NULL"
        ))
        .fetch_one(&pool)
        .await
        .expect("count");
        assert!(errors > 0, "the failed publishes are recorded");

        server = Server::start(port, &dir);
        let deadline = Instant::now() + Duration::from_secs(60);
        while outbox.pending().await.expect("pending") > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            outbox.pending().await.expect("pending"),
            0,
            "caught up after the restart"
        );
        handle.shutdown().await;
        let mut stream = js.get_stream(&name).await.expect("the stream");
        let stored = stream.info().await.expect("info").state.messages;
        assert_eq!(stored, 60, "nothing lost, nothing doubled");
        assert_eq!(ids.len(), 60);
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
        drop_table(&pool, &table).await;
    }
}

/// RabbitMQ through the real broker, on PostgreSQL: no broker-side deduplication, so a
/// republish arrives twice and the consumer drops it by the `message-id` property.
mod rabbitmq {
    use std::time::{Duration, Instant};

    use futures::StreamExt as _;
    use idempotency::broker::rabbitmq::{RabbitMqPublisher, lapin, message_id};
    use idempotency::broker::{Message, Publisher};
    use idempotency::consumer::{Consumer, Outcome};
    use idempotency::outbox::Outbox;
    use idempotency::sqlx::PgPool;
    use idempotency::testing::{service_url, unreachable};
    use idempotency::{Idempotency, MemoryStore};
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;

    use super::{Dying, unique};

    #[tokio::test]
    async fn a_publisher_on_a_connection_opens_a_new_channel_after_the_broker_closed_one() {
        let url = service_url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
        let connection =
            match lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await {
                Ok(connection) => std::sync::Arc::new(connection),
                Err(error) => return unreachable("outbox (rabbitmq)", &url, &error),
            };
        let queue = unique("outbox_reopen");
        let admin = connection.create_channel().await.expect("a channel");
        admin
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare the queue");
        let message = |n: u32| Message {
            id: format!("{queue}/{n}"),
            topic: queue.clone(),
            payload: format!("{n}").into_bytes().into(),
        };

        let recovering = RabbitMqPublisher::on_connection(connection.clone())
            .await
            .expect("confirm mode");
        recovering.publish(&message(0)).await.expect("published");
        recovering
            .channel()
            .await
            .close(200, "closed by the test".into())
            .await
            .expect("close");
        recovering
            .publish(&message(1))
            .await
            .expect("published on a new channel");

        let fixed = RabbitMqPublisher::new(connection.create_channel().await.expect("a channel"))
            .await
            .expect("confirm mode");
        fixed
            .channel()
            .await
            .close(200, "closed by the test".into())
            .await
            .expect("close");
        assert!(
            fixed.publish(&message(2)).await.is_err(),
            "a publisher on one channel cannot reopen it"
        );

        let _ = admin
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }

    #[tokio::test]
    async fn a_republish_arrives_twice_and_the_consumer_applies_each_id_once() {
        let url = service_url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
        let connection =
            match lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await {
                Ok(connection) => connection,
                Err(error) => return unreachable("outbox (rabbitmq)", &url, &error),
            };
        let pg = service_url("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test");
        let pool = match PgPool::connect(&pg).await {
            Ok(pool) => pool,
            Err(error) => return unreachable("outbox (postgres)", &pg, &error),
        };
        let table = unique("ob_amqp");
        let outbox = Outbox::with_table(pool.clone(), &table).expect("a table name");
        outbox.migrate().await.expect("migrate");
        let channel = connection.create_channel().await.expect("a channel");
        let queue = unique("outbox");
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare the queue");

        let mut ids = Vec::new();
        let mut tx = pool.begin().await.expect("begin");
        for i in 0..40 {
            ids.push(
                outbox
                    .add(&mut tx, &queue, format!("payload {i}"))
                    .await
                    .expect("add"),
            );
        }
        outbox
            .add(&mut tx, "no-such-queue-for-this-test", b"lost?")
            .await
            .expect("add");
        tx.commit().await.expect("commit");

        let publisher = || async {
            RabbitMqPublisher::new(connection.create_channel().await.expect("a channel"))
                .await
                .expect("confirm mode")
        };
        let lease = Duration::from_millis(800);
        let dying = outbox
            .relay(Dying {
                inner: publisher().await,
                hang: true,
            })
            .lease(lease)
            .batch(25);
        assert!(
            tokio::time::timeout(Duration::from_secs(3), dying.run_once())
                .await
                .is_err()
        );
        tokio::time::sleep(lease).await;
        let relay = outbox
            .relay(Dying {
                inner: publisher().await,
                hang: false,
            })
            .lease(lease);
        let mut unroutable = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while outbox.pending().await.expect("pending") > 1 && Instant::now() < deadline {
            let pass = relay.run_once().await.expect("a pass");
            unroutable.extend(pass.failed);
        }
        assert_eq!(
            outbox.pending().await.expect("pending"),
            1,
            "only the unroutable one is left"
        );
        assert!(
            unroutable
                .iter()
                .any(|failed| failed.error.contains("no queue is bound")),
            "{unroutable:?}"
        );

        let dedup = Consumer::new(Idempotency::new(MemoryStore::new()), "outbox.amqp-consumer");
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let (mut applied, mut dropped, mut deliveries) = (Vec::new(), 0, 0);
        while deliveries < 65 {
            let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .expect("a delivery within 10 s")
                .expect("the stream goes on")
                .expect("a delivery");
            deliveries += 1;
            let id = message_id(&delivery.properties)
                .expect("the message-id")
                .to_owned();
            match dedup
                .handle(&id, || async { Ok::<_, idempotency::Error>(()) })
                .await
                .expect("handle")
            {
                Outcome::Processed(()) => applied.push(id),
                Outcome::Duplicate(()) => dropped += 1,
            }
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
        }
        assert_eq!(
            dropped, 25,
            "the dead relay's batch arrived twice and was dropped once"
        );
        applied.sort();
        ids.sort();
        assert_eq!(applied, ids, "every message applied once");
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = idempotency::sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
            .execute(&pool)
            .await;
    }
}
