//! Producer-sequence deduplication on every store: the memory store, Redis (`REDIS_URL`),
//! PostgreSQL (`POSTGRES_URL`), MariaDB / MySQL (`MYSQL_URL`) and SQLite (a fresh file).
//!
//! - 100 tasks deliver 4 producers' 50 messages three times each, out of order: every
//!   message is processed once, in its producer's order;
//! - a delivery whose lease passed is fenced (its completion changes nothing), a renewed one
//!   keeps its mark, a failed one releases it;
//! - gap policies; a producer's sequence continues after a restart and refuses a second
//!   writer;
//! - 100,000 messages leave one mark per producer in the store, counted there;
//! - the SQL inbox variant moves the mark in the handler's transaction: a rollback leaves
//!   no mark, 100 tasks process each message once and in order (checked in the database).
//!
//! Without a server, its tests print SKIPPED; `IDEMPOTENCY_REQUIRE_SERVICES=1` makes that a
//! failure.

mod common;
mod redis_support;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idempotency::consumer::sequence::{
    Delivery, GapPolicy, ProducerSequence, SequencedConsumer, Stamp,
};
use idempotency::{Error, Idempotency, MemoryStore, Store};

const PRODUCERS: usize = 4;
const MESSAGES: u64 = 50;
const WORKERS: usize = 100;
const SPACE_MESSAGES: u64 = 100_000;

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", idempotency::Token::random())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn producer(n: usize) -> String {
    format!("producer-{n}")
}

/// Every message of every producer three times: the first copies in order, the others
/// later and interleaved (a redelivery, a re-publish).
fn deliveries() -> VecDeque<Stamp> {
    let mut all = Vec::new();
    for (round, offset) in [(0u64, 0u64), (1, 3), (2, 10)] {
        for sequence in 1..=MESSAGES {
            for n in 0..PRODUCERS {
                let stamp = Stamp::new(producer(n), sequence).expect("stamp");
                all.push((sequence + offset, round, stamp));
            }
        }
    }
    all.sort_by_key(|(at, round, _)| (*at, *round));
    all.into_iter().map(|(_, _, stamp)| stamp).collect()
}

/// What a run of deliveries did.
#[derive(Debug, Default)]
struct Tally {
    processed: usize,
    duplicates: usize,
    naks: usize,
}

/// `WORKERS` tasks take deliveries from one queue; a refused one (a gap, in progress) goes
/// back to the end, as a nak does. Bounded in attempts and time.
async fn deliver_all(
    consumer: &SequencedConsumer,
    queue: VecDeque<Stamp>,
    effects: &Arc<Mutex<HashMap<String, Vec<u64>>>>,
) -> Tally {
    let queue = Arc::new(Mutex::new(queue));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (consumer, queue, tally, effects) = (
            consumer.clone(),
            Arc::clone(&queue),
            Arc::clone(&tally),
            Arc::clone(effects),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(stamp) = lock(&queue).pop_front() else {
                    return;
                };
                assert!(
                    started.elapsed() < Duration::from_secs(120),
                    "deliveries did not settle in 2 minutes: {:?}",
                    lock(&tally)
                );
                let delivered = consumer
                    .handle(&stamp, || async {
                        tokio::task::yield_now().await;
                        lock(&effects)
                            .entry(stamp.producer().to_owned())
                            .or_default()
                            .push(stamp.sequence());
                        Ok::<_, Error>(stamp.sequence())
                    })
                    .await;
                let naked = {
                    let mut tally = lock(&tally);
                    match delivered {
                        Ok(Delivery::Processed(sequence)) => {
                            assert_eq!(sequence, stamp.sequence());
                            tally.processed += 1;
                            false
                        }
                        Ok(Delivery::Duplicate) => {
                            tally.duplicates += 1;
                            false
                        }
                        Ok(other) => panic!("{stamp}: {other:?}"),
                        Err(Error::SequenceGap { .. } | Error::InProgress { .. }) => {
                            tally.naks += 1;
                            assert!(tally.naks < 200_000, "too many naks: {tally:?}");
                            lock(&queue).push_back(stamp);
                            true
                        }
                        Err(error) => panic!("{stamp}: {error}"),
                    }
                };
                if naked {
                    // A nak with a delay: the redelivery comes later.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("a worker");
    }
    Arc::try_unwrap(tally)
        .map(|tally| tally.into_inner().unwrap_or_else(|p| p.into_inner()))
        .expect("the workers are done")
}

/// Each message once, in order, across 100 tasks.
async fn each_message_once_in_order(store: Arc<dyn Store>) {
    let consumer = SequencedConsumer::new(Idempotency::from_shared(store), unique("in-order"))
        .wait_timeout(Duration::from_secs(5));
    let effects = Arc::new(Mutex::new(HashMap::new()));
    let tally = deliver_all(&consumer, deliveries(), &effects).await;
    let expected: Vec<u64> = (1..=MESSAGES).collect();
    let effects = lock(&effects).clone();
    for n in 0..PRODUCERS {
        assert_eq!(effects.get(&producer(n)), Some(&expected), "{tally:?}");
        assert_eq!(consumer.mark(&producer(n)).await.expect("mark"), MESSAGES);
    }
    let total = PRODUCERS * MESSAGES as usize;
    assert_eq!(tally.processed, total, "{tally:?}");
    assert_eq!(tally.duplicates, 2 * total, "{tally:?}");
    eprintln!("in order, once: {tally:?}");
}

/// A delivery whose lease passed (no renewal) is taken over; its late completion is fenced.
async fn a_delivery_past_its_lease_is_fenced(store: Arc<dyn Store>) {
    let name = unique("fenced");
    let idempotency = Idempotency::from_shared(store);
    let zombie = SequencedConsumer::new(idempotency.clone(), name.clone())
        .lease(Duration::from_millis(300))
        .max_run(Duration::ZERO);
    let other = SequencedConsumer::new(idempotency, name);
    let stamp = Stamp::new("p", 1).expect("stamp");
    let runs = Mutex::new(Vec::new());
    let slow = zombie.handle(&stamp, || async {
        lock(&runs).push("zombie");
        tokio::time::sleep(Duration::from_millis(900)).await;
        Ok::<_, Error>(())
    });
    let late = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        other
            .handle(&stamp, || async {
                lock(&runs).push("taker");
                Ok::<_, Error>(())
            })
            .await
    };
    let (slow, late) = tokio::join!(slow, late);
    assert!(matches!(slow, Err(Error::LeaseLost { .. })), "{slow:?}");
    assert!(matches!(late, Ok(Delivery::Processed(()))), "{late:?}");
    assert_eq!(*lock(&runs), ["zombie", "taker"]);
    assert_eq!(other.mark("p").await.expect("mark"), 1);
    // The mark is free: the next message runs at once.
    let next = Stamp::new("p", 2).expect("stamp");
    let next = other.handle(&next, || async { Ok::<_, Error>(()) }).await;
    assert!(matches!(next, Ok(Delivery::Processed(()))), "{next:?}");
}

/// A renewed delivery keeps its mark past its lease: a duplicate waits and is skipped, the
/// next message waits and runs after it.
async fn a_renewed_delivery_keeps_its_mark(store: Arc<dyn Store>) {
    let consumer = SequencedConsumer::new(Idempotency::from_shared(store), unique("renewed"))
        .lease(Duration::from_millis(300))
        .wait_timeout(Duration::from_secs(10));
    let (first, second) = (
        Stamp::new("p", 1).expect("s"),
        Stamp::new("p", 2).expect("s"),
    );
    let runs = Mutex::new(Vec::new());
    let slow = consumer.handle(&first, || async {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        lock(&runs).push(1);
        Ok::<_, Error>(())
    });
    let others = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let duplicate = consumer
            .handle(&first, || async {
                lock(&runs).push(100);
                Ok::<_, Error>(())
            })
            .await;
        let next = consumer
            .handle(&second, || async {
                lock(&runs).push(2);
                Ok::<_, Error>(())
            })
            .await;
        (duplicate, next)
    };
    let (slow, (duplicate, next)) = tokio::join!(slow, others);
    assert!(matches!(slow, Ok(Delivery::Processed(()))), "{slow:?}");
    assert!(
        matches!(duplicate, Ok(Delivery::Duplicate)),
        "{duplicate:?}"
    );
    assert!(matches!(next, Ok(Delivery::Processed(()))), "{next:?}");
    assert_eq!(*lock(&runs), [1, 2]);
}

/// A failed handler leaves the mark where it was; the redelivery runs.
async fn a_failed_handler_releases_the_mark(store: Arc<dyn Store>) {
    let consumer = SequencedConsumer::new(Idempotency::from_shared(store), unique("failed"));
    let stamp = Stamp::new("p", 1).expect("stamp");
    let failed = consumer
        .handle(&stamp, || async {
            Err::<(), _>(Error::InvalidOption {
                option: "handler",
                problem: "failed (simulated)",
            })
        })
        .await;
    assert!(
        matches!(failed, Err(Error::InvalidOption { .. })),
        "{failed:?}"
    );
    assert_eq!(consumer.mark("p").await.expect("mark"), 0);
    let again = consumer
        .handle(&stamp, || async { Ok::<_, Error>(7) })
        .await;
    assert!(matches!(again, Ok(Delivery::Processed(7))), "{again:?}");
}

/// Reject answers a gap at once; Wait waits for the missing message; Accept skips it.
async fn gaps_follow_the_policy(store: Arc<dyn Store>) {
    let idempotency = Idempotency::from_shared(store);
    let stamp = |n| Stamp::new("p", n).expect("stamp");
    let ok = || async { Ok::<_, Error>(()) };

    let reject = SequencedConsumer::new(idempotency.clone(), unique("reject"));
    let gap = reject.handle(&stamp(3), ok).await;
    assert!(
        matches!(
            gap,
            Err(Error::SequenceGap {
                expected: 1,
                received: 3,
                ..
            })
        ),
        "{gap:?}"
    );

    let name = unique("wait");
    let wait = SequencedConsumer::new(idempotency.clone(), name.clone())
        .on_gap(GapPolicy::Wait(Duration::from_secs(10)));
    let order = Mutex::new(Vec::new());
    let two = stamp(2);
    let (second, first) = tokio::join!(
        wait.handle(&two, || async {
            lock(&order).push(2);
            Ok::<_, Error>(())
        }),
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            wait.handle(&stamp(1), || async {
                lock(&order).push(1);
                Ok::<_, Error>(())
            })
            .await
        }
    );
    assert!(matches!(second, Ok(Delivery::Processed(()))), "{second:?}");
    assert!(matches!(first, Ok(Delivery::Processed(()))), "{first:?}");
    assert_eq!(*lock(&order), [1, 2]);
    let waited = SequencedConsumer::new(idempotency.clone(), name)
        .on_gap(GapPolicy::Wait(Duration::from_millis(200)));
    let started = Instant::now();
    let gap = waited.handle(&stamp(4), ok).await;
    assert!(
        matches!(gap, Err(Error::SequenceGap { expected: 3, .. })),
        "{gap:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));

    let accept = SequencedConsumer::new(idempotency, unique("accept")).on_gap(GapPolicy::Accept);
    let skipped = accept.handle(&stamp(3), ok).await;
    assert!(
        matches!(&skipped, Ok(Delivery::ProcessedAfterGap { missed, .. }) if *missed == (1..=2)),
        "{skipped:?}"
    );
    let late = accept.handle(&stamp(2), ok).await;
    assert!(matches!(late, Ok(Delivery::Duplicate)), "{late:?}");
}

/// A producer's sequence continues after a restart; a second writer is refused.
async fn a_producer_continues_after_a_restart(store: Arc<dyn Store>) {
    let idempotency = Idempotency::from_shared(store);
    let name = unique("producers");
    let mut first = ProducerSequence::open(&idempotency, name.clone(), "p")
        .await
        .expect("open");
    for expected in 1..=3 {
        assert_eq!(first.next().await.expect("next").sequence(), expected);
    }
    let mut restarted = ProducerSequence::open(&idempotency, name, "p")
        .await
        .expect("open");
    assert_eq!(restarted.last(), 3);
    assert_eq!(restarted.again(3).expect("again").sequence(), 3);
    assert!(matches!(
        restarted.again(4),
        Err(Error::InvalidStamp { .. })
    ));
    assert_eq!(restarted.next().await.expect("next").sequence(), 4);
    let stale = first.next().await;
    assert!(
        matches!(stale, Err(Error::SequenceConflict { .. })),
        "{stale:?}"
    );
}

/// 100,000 messages from 4 producers: one mark per producer, counted by `count` at three
/// points.
async fn space_stays_constant<F, Fut>(store: Arc<dyn Store>, count: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let consumer = SequencedConsumer::new(Idempotency::from_shared(store), unique("space"));
    let before = count().await;
    let per_producer = SPACE_MESSAGES / PRODUCERS as u64;
    let mut counts = Vec::new();
    let started = Instant::now();
    for part in 0..2u64 {
        let range = (part * per_producer / 2 + 1)..=((part + 1) * per_producer / 2);
        let runs = (0..PRODUCERS).map(|n| {
            let (consumer, range) = (consumer.clone(), range.clone());
            tokio::spawn(async move {
                for sequence in range {
                    let stamp = Stamp::new(producer(n), sequence).expect("stamp");
                    let delivered = consumer.handle(&stamp, || async { Ok::<_, Error>(()) });
                    let delivered = delivered.await.expect("handle");
                    assert!(matches!(delivered, Delivery::Processed(())));
                }
            })
        });
        for run in runs.collect::<Vec<_>>() {
            run.await.expect("a producer");
        }
        counts.push(count().await - before);
    }
    let replayed = Stamp::new(producer(0), 1).expect("stamp");
    let replay = consumer.handle(&replayed, || async { Ok::<_, Error>(()) });
    assert!(matches!(replay.await, Ok(Delivery::Duplicate)));
    assert_eq!(counts, [PRODUCERS, PRODUCERS], "records after each half");
    eprintln!(
        "{SPACE_MESSAGES} messages from {PRODUCERS} producers in {:?}: {PRODUCERS} records",
        started.elapsed()
    );
}

/// Every check but the space one against `store`.
async fn all_checks(store: Arc<dyn Store>) {
    each_message_once_in_order(Arc::clone(&store)).await;
    a_delivery_past_its_lease_is_fenced(Arc::clone(&store)).await;
    a_renewed_delivery_keeps_its_mark(Arc::clone(&store)).await;
    a_failed_handler_releases_the_mark(Arc::clone(&store)).await;
    gaps_follow_the_policy(Arc::clone(&store)).await;
    a_producer_continues_after_a_restart(store).await;
}

/// Store calls (each one round trip on Redis; one statement on SQL, two for the first mark of
/// a producer) are exact: a new message 3 (read, claim, move), a duplicate or a gap 1, a failed
/// handler 3 (read, claim, release); a producer's `open` 1, each `next` 1.
#[tokio::test]
async fn round_trips_are_exact() {
    use std::sync::atomic::Ordering::SeqCst;

    let (store, counts) = common::Recording::new(MemoryStore::new());
    let idempotency = Idempotency::new(store);
    let calls = || (counts.load_mark.load(SeqCst), counts.swap_mark.load(SeqCst));
    let mut sequence = ProducerSequence::open(&idempotency, "producers", "p")
        .await
        .expect("open");
    assert_eq!(calls(), (1, 0), "open");
    let first = sequence.next().await.expect("next");
    assert_eq!(calls(), (1, 1), "next");
    let consumer = SequencedConsumer::new(idempotency, "rt");
    let ok = || async { Ok::<_, Error>(()) };
    let before = calls();
    let counted = |(loads, swaps): (usize, usize)| (loads - before.0, swaps - before.1);
    consumer.handle(&first, ok).await.expect("new");
    assert_eq!(counted(calls()), (1, 2), "a new message");
    consumer.handle(&first, ok).await.expect("duplicate");
    assert_eq!(counted(calls()), (2, 2), "a duplicate");
    let third = Stamp::new("p", 3).expect("stamp");
    let gap = consumer.handle(&third, ok).await;
    assert!(matches!(gap, Err(Error::SequenceGap { .. })), "{gap:?}");
    assert_eq!(counted(calls()), (3, 2), "a gap");
    let second = Stamp::new("p", 2).expect("stamp");
    let failed = consumer
        .handle(&second, || async {
            Err::<(), _>(Error::InvalidOption {
                option: "handler",
                problem: "failed (simulated)",
            })
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(counted(calls()), (4, 4), "a failed handler");
    assert_eq!(counts.total(), calls().0 + calls().1, "nothing but marks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_memory_store() {
    let store = Arc::new(MemoryStore::new());
    all_checks(store.clone()).await;
    let counted = store.clone();
    space_stays_constant(store, || {
        let counted = counted.clone();
        async move { counted.mark_count() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis() {
    use idempotency::redis::AsyncCommands as _;

    let Some((url, connection)) = redis_support::standalone("producer sequence on redis").await
    else {
        return;
    };
    let prefix = redis_support::unique_prefix("producer-sequence");
    let store = idempotency::RedisStore::builder(connection)
        .prefix(prefix.clone())
        .build()
        .expect("prefix");
    let store = Arc::new(store);
    all_checks(store.clone()).await;
    let admin = redis_support::admin(&url).await;
    space_stays_constant(store, || {
        let (mut admin, pattern) = (admin.clone(), format!("{prefix}*"));
        async move {
            let keys: Vec<String> = admin.keys(pattern).await.expect("KEYS");
            keys.len()
        }
    })
    .await;
}

/// The sequenced inbox, and the checks above on the SQL store, for one database.
macro_rules! sql_suite {
    ($db:ty, $pool:ty, $p1:literal, $p2:literal) => {
        use super::*;
        use idempotency::consumer::sequence::SequencedInbox;
        use idempotency::store::sql::SqlStore;
        use idempotency::store::sql::sqlx::{self, Transaction};

        async fn records(pool: &$pool, table: &str) -> usize {
            let sql = format!("SELECT COUNT(*) FROM {table}");
            let rows: i64 = sqlx::query_scalar(&sql)
                .fetch_one(pool)
                .await
                .expect("count");
            usize::try_from(rows).expect("a count")
        }

        #[derive(Debug, thiserror::Error)]
        enum ApplyError {
            #[error("database: {0}")]
            Database(#[from] sqlx::Error),
            #[error(transparent)]
            Idempotency(#[from] Error),
        }

        /// Applies `stamp` in `tx`: the handler checks, in the database, that exactly the
        /// producer's earlier messages were applied before it, then applies it.
        async fn apply(
            inbox: &SequencedInbox<$db>,
            tx: &mut Transaction<'static, $db>,
            moves: &str,
            stamp: &Stamp,
        ) -> Result<Delivery<()>, ApplyError> {
            let (moves, producer, sequence) = (
                moves.to_owned(),
                stamp.producer().to_owned(),
                stamp.sequence(),
            );
            inbox
                .handle(tx, stamp, move |tx| {
                    Box::pin(async move {
                        let count =
                            format!("SELECT COUNT(*) FROM {moves} WHERE producer = {}", $p1);
                        let before: i64 = sqlx::query_scalar(&count)
                            .bind(producer.clone())
                            .fetch_one(&mut **tx)
                            .await?;
                        let seq = i64::try_from(sequence).expect("small");
                        assert_eq!(
                            before,
                            seq - 1,
                            "{producer}#{sequence} applied out of order"
                        );
                        let insert = format!(
                            "INSERT INTO {moves} (producer, seq) VALUES ({}, {})",
                            $p1, $p2
                        );
                        sqlx::query(&insert)
                            .bind(producer)
                            .bind(seq)
                            .execute(&mut **tx)
                            .await?;
                        Ok(())
                    })
                })
                .await
        }

        pub(crate) async fn run(pool: $pool, prefix: &str) {
            let table = format!("{prefix}_records");
            let moves = format!("{prefix}_moves");
            sqlx::query(&format!(
                "CREATE TABLE {moves} (producer VARCHAR(64) NOT NULL, seq BIGINT NOT NULL)"
            ))
            .execute(&pool)
            .await
            .expect("create the moves table");
            let store = SqlStore::builder(pool.clone())
                .table(table.clone())
                .build()
                .expect("store");
            store.migrate().await.expect("migrate");
            let shared: Arc<dyn Store> = Arc::new(store.clone());
            all_checks(Arc::clone(&shared)).await;

            let name = unique("inbox");
            let inbox = SequencedInbox::new(store, name.clone());
            // A rollback leaves no mark: the redelivery applies it.
            let first = Stamp::new(producer(0), 1).expect("stamp");
            let mut tx = pool.begin().await.expect("begin");
            let applied = apply(&inbox, &mut tx, &moves, &first).await.expect("apply");
            assert!(matches!(applied, Delivery::Processed(())));
            drop(tx); // the consumer died before its commit
            let mut tx = pool.begin().await.expect("begin");
            let applied = apply(&inbox, &mut tx, &moves, &first).await.expect("apply");
            assert!(matches!(applied, Delivery::Processed(())));
            tx.commit().await.expect("commit");

            // 100 tasks, each delivery in its own transaction, redelivered on a refusal.
            let queue = Arc::new(Mutex::new(deliveries()));
            let tally = Arc::new(Mutex::new(Tally::default()));
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..WORKERS {
                let (pool, inbox, queue, tally, moves) = (
                    pool.clone(),
                    inbox.clone(),
                    Arc::clone(&queue),
                    Arc::clone(&tally),
                    moves.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    loop {
                        let Some(stamp) = lock(&queue).pop_front() else {
                            return;
                        };
                        assert!(
                            started.elapsed() < Duration::from_secs(120),
                            "deliveries did not settle: {:?}",
                            lock(&tally)
                        );
                        let mut tx = pool.begin().await.expect("begin");
                        let applied = apply(&inbox, &mut tx, &moves, &stamp).await;
                        let committed = match applied {
                            Ok(delivery) => tx
                                .commit()
                                .await
                                .map(|()| delivery)
                                .map_err(ApplyError::from),
                            Err(error) => Err(error),
                        };
                        let naked = {
                            let mut tally = lock(&tally);
                            match committed {
                                Ok(Delivery::Processed(())) => {
                                    tally.processed += 1;
                                    false
                                }
                                Ok(Delivery::Duplicate) => {
                                    tally.duplicates += 1;
                                    false
                                }
                                Ok(other) => panic!("{stamp}: {other:?}"),
                                // Refused, or a write conflict the database resolved by failing
                                // this transaction (SQLite's busy, a deadlock): redeliver.
                                Err(_) => {
                                    tally.naks += 1;
                                    assert!(tally.naks < 200_000, "too many naks: {tally:?}");
                                    lock(&queue).push_back(stamp);
                                    true
                                }
                            }
                        };
                        if naked {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }));
            }
            for task in tasks {
                task.await.expect("a worker");
            }
            let tally = std::mem::take(&mut *lock(&tally));
            let total = PRODUCERS * MESSAGES as usize;
            // Producer 0's first message was applied before: one more duplicate.
            assert_eq!(tally.processed, total - 1, "{tally:?}");
            assert_eq!(tally.duplicates, 2 * total + 1, "{tally:?}");
            let applied: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {moves}"))
                .fetch_one(&pool)
                .await
                .expect("count");
            assert_eq!(applied, i64::try_from(total).expect("small"));
            // The inbox's marks are a sequenced consumer's of the same name.
            let reader = SequencedConsumer::new(Idempotency::from_shared(shared.clone()), name);
            for n in 0..PRODUCERS {
                assert_eq!(reader.mark(&producer(n)).await.expect("mark"), MESSAGES);
            }
            eprintln!("inbox, in order, once: {tally:?}");

            let counted = pool.clone();
            space_stays_constant(shared, || {
                let (counted, table) = (counted.clone(), table.clone());
                async move { records(&counted, &table).await }
            })
            .await;
            for dropped in [&moves, &table] {
                let _ = sqlx::query(&format!("DROP TABLE {dropped}"))
                    .execute(&pool)
                    .await;
            }
        }
    };
}

#[cfg(feature = "postgres")]
mod postgres {
    sql_suite!(sqlx::Postgres, sqlx::PgPool, "$1", "$2");

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres() {
        let url = idempotency::testing::service_url(
            "POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        );
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(60))
            .connect_lazy(&url)
            .expect("a valid url");
        match tokio::time::timeout(Duration::from_secs(5), pool.acquire()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                return idempotency::testing::unreachable("sequence on postgres", &url, &error);
            }
            Err(elapsed) => {
                return idempotency::testing::unreachable("sequence on postgres", &url, &elapsed);
            }
        }
        run(pool, &unique("seq_pg").replace('-', "_")).await;
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    sql_suite!(sqlx::MySql, sqlx::MySqlPool, "?", "?");

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_mysql() {
        let url =
            idempotency::testing::service_url("MYSQL_URL", "mysql://root@127.0.0.1:3306/test");
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(60))
            .connect_lazy(&url)
            .expect("a valid url");
        match tokio::time::timeout(Duration::from_secs(5), pool.acquire()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                return idempotency::testing::unreachable("sequence on mysql", &url, &error);
            }
            Err(elapsed) => {
                return idempotency::testing::unreachable("sequence on mysql", &url, &elapsed);
            }
        }
        run(pool, &unique("seq_my").replace('-', "_")).await;
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    sql_suite!(sqlx::Sqlite, sqlx::SqlitePool, "?1", "?2");

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_sqlite() {
        use sqlx::sqlite::{
            SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
        };

        let path = std::env::temp_dir().join(format!("{}.db", unique("sequence")));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Commits reach the OS, not the disk: a crash of the machine is not tested here.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(5)
            .connect_with(options)
            .await
            .expect("open a database file");
        run(pool.clone(), "seq").await;
        pool.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
