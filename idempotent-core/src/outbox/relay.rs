//! The relay: takes batches of unpublished rows under a lease, publishes them, waits for the
//! broker's confirmations, and marks them published.

use std::sync::Arc;
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt as _;
use futures_util::future::join_all;
use sqlx::QueryBuilder;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Outbox, OutboxError, bind, database, micros, now};
use crate::broker::{Message, Publisher};
use crate::error::BoxError;
use crate::retry::RetryPolicy;
use crate::store::sql::SqlDialect;
use crate::store::sql::dialect::Value;
use crate::trace::event;

/// Publishes an [`Outbox`]'s messages through a [`Publisher`]: in batches, each row taken
/// under a lease, marked published only after the broker confirmed it.
///
/// Several relays may run on one table (PostgreSQL and MySQL take disjoint batches with
/// `FOR UPDATE SKIP LOCKED`; SQLite takes each batch in one statement). A relay that dies
/// mid-batch leaves its rows to be taken again when their [`lease`](Self::lease) passes; they
/// are published again with the same ids, which the broker drops. A failed publish gives its
/// row back with the error (`last_error`) and a backoff; a pass in which every publish
/// failed (the broker is down) makes the relay back off too, up to the
/// [`backoff`](Self::backoff) policy's longest sleep.
///
/// [`run_once`](Self::run_once) runs one pass; [`spawn`](Self::spawn) runs passes in a task
/// until [`RelayHandle::shutdown`], and purges published rows older than the
/// [`retention`](Self::retention).
#[derive(Debug)]
pub struct Relay<DB: SqlDialect, P> {
    outbox: Outbox<DB>,
    publisher: Arc<P>,
    batch: usize,
    idle: Duration,
    lease: Duration,
    retention: Duration,
    per_second: Option<u32>,
    max_attempts: Option<u32>,
    backoff: RetryPolicy,
}

/// What one pass of a relay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayPass {
    /// Messages published and marked by this pass (a message whose lease passed and that
    /// another relay took is published but left to that relay to mark).
    pub published: usize,
    /// Messages whose publish failed: given back to be published later (or parked after
    /// [`max_attempts`](Relay::max_attempts)).
    pub failed: Vec<Failed>,
}

/// A message whose publish failed in a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// The message's id.
    pub id: String,
    /// The publisher's error (at most 1 KiB of it, as stored in `last_error`).
    pub error: String,
}

/// A parked row's lease: it is never taken again until an operator sets `lease_until` back
/// to 0.
const PARKED: i64 = i64::MAX;

/// Rows deleted per purge statement.
const PURGE_BATCH: u64 = 1_000;

/// `UPDATE … SET x = {first}, … = {second} WHERE … seq IN ({seqs})` from the statement's three
/// fragments (the MySQL take, and every mark): the values pushed as binds between them.
fn rows_update<'a, DB: SqlDialect>(
    (set, then, rows): &'a (String, String, String),
    first: i64,
    second: i64,
    seqs: &[i64],
) -> QueryBuilder<'a, DB> {
    let mut update = QueryBuilder::<DB>::new(set.as_str());
    DB::push_int(&mut update, first);
    update.push(then.as_str());
    DB::push_int(&mut update, second);
    update.push(rows.as_str());
    for (index, seq) in seqs.iter().enumerate() {
        if index > 0 {
            update.push(", ");
        }
        DB::push_int(&mut update, *seq);
    }
    update.push(")");
    update
}

/// Publishes `message`; a publisher that panics fails the message, not the relay.
async fn publish_caught<P: Publisher>(publisher: &P, message: &Message) -> Result<(), BoxError> {
    match AssertUnwindSafe(publisher.publish(message))
        .catch_unwind()
        .await
    {
        Ok(sent) => sent,
        Err(_) => Err("the publisher panicked".into()),
    }
}

/// `error` cut to at most 1 KiB, on a character boundary.
fn shortened(mut error: String) -> String {
    const MAX: usize = 1024;
    if error.len() > MAX {
        let mut end = MAX;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
    }
    error
}

impl<DB: SqlDialect, P: Publisher> Relay<DB, P> {
    pub(super) fn new(outbox: Outbox<DB>, publisher: P) -> Relay<DB, P> {
        Relay {
            outbox,
            publisher: Arc::new(publisher),
            batch: 100,
            idle: Duration::from_millis(200),
            lease: Duration::from_secs(30),
            retention: Duration::from_secs(60 * 60),
            per_second: None,
            max_attempts: None,
            backoff: RetryPolicy::new()
                .initial_delay(Duration::from_millis(100))
                .max_delay(Duration::from_secs(30))
                .no_max_elapsed(),
        }
    }

    /// Rows taken per pass (default 100, at least 1).
    pub fn batch(mut self, rows: usize) -> Self {
        self.batch = rows.max(1);
        self
    }

    /// How long a relay that found nothing to publish waits before it looks again (default
    /// 200 ms).
    pub fn idle(mut self, wait: Duration) -> Self {
        self.idle = wait;
        self
    }

    /// How long a taken row is left to its relay before another may take it (default 30 s):
    /// longer than a batch takes to publish, and shorter than the broker's deduplication
    /// window minus the longest backoff.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long published rows are kept before [`purge`](Self::purge) deletes them (default
    /// 1 h). Keep it shorter than the `ttl` of the calls that add messages: a key used again
    /// after its record expired derives the same ids, and a row still there refuses them
    /// ([`OutboxError::Conflict`](super::OutboxError::Conflict)) when their content differs.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// At most `messages` published per second by this relay (default: no limit).
    pub fn max_rate(mut self, messages: u32) -> Self {
        self.per_second = Some(messages.max(1));
        self
    }

    /// Parks a message whose publish failed `attempts` times (default: never): it stays in the
    /// table with its `last_error`, unpublished, and is not taken again until an operator sets
    /// its `lease_until` back to 0. For messages the broker will never take (no route, too
    /// large), which would otherwise be retried forever.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// The backoff after a pass in which every publish failed, and for each failed row
    /// (default: from 100 ms, doubling, up to 30 s, with full jitter).
    pub fn backoff(mut self, policy: RetryPolicy) -> Self {
        self.backoff = policy;
        self
    }

    /// Takes one batch, publishes it and marks what the broker confirmed.
    pub async fn run_once(&self) -> Result<RelayPass, OutboxError> {
        let relay = rand::random::<i64>() & i64::MAX;
        let messages = self.take(relay).await?;
        if messages.is_empty() {
            return Ok(RelayPass::default());
        }
        // A publisher that panics fails its message, not the relay.
        let sent = join_all(
            messages
                .iter()
                .map(|(_, _, message)| publish_caught(&*self.publisher, message)),
        )
        .await;
        let (mut confirmed, mut failed) = (Vec::new(), Vec::new());
        for ((seq, attempts, message), sent) in messages.iter().zip(sent) {
            match sent {
                Ok(()) => confirmed.push(*seq),
                Err(error) => failed.push((*seq, *attempts, message, error.to_string())),
            }
        }
        let mut conn = self.outbox.acquire("connect").await?;
        // The confirmed rows first, by number and fenced by this pass's token: a row whose
        // lease passed and that another relay took is left to that relay.
        let marked = if confirmed.is_empty() {
            0
        } else {
            let mut mark =
                rows_update::<DB>(&self.outbox.inner.sql.published, now(), relay, &confirmed);
            DB::execute(&mut conn, mark.build())
                .await
                .map_err(database("mark messages published"))?
        };
        let mut pass = RelayPass {
            published: usize::try_from(marked).unwrap_or(usize::MAX),
            failed: Vec::new(),
        };
        // Then the failed ones, given back with their error and a backoff; best effort: a
        // row that cannot be given back is taken again when its lease passes.
        for (seq, attempts, message, error) in failed {
            let error = shortened(error);
            event!(warn, id = %message.id, error = %error, "outbox: publish failed; the message is given back");
            let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
            let again = match self.max_attempts {
                Some(max) if attempts >= max => {
                    event!(error, id = %message.id, attempts = attempts, "outbox: message parked after its last attempt");
                    PARKED
                }
                _ => {
                    now().saturating_add(micros(self.backoff.delay_bound(attempts).max(self.idle)))
                }
            };
            let query = bind::<DB>(
                &self.outbox.inner.sql.failed,
                &[
                    Value::Int(again),
                    Value::Text(&error),
                    Value::Int(seq),
                    Value::Int(relay),
                ],
            );
            if let Err(giving_back) = DB::execute(&mut conn, query).await {
                event!(warn, id = %message.id, error = %giving_back, "outbox: could not give the message back; it is taken again after its lease");
                let _ = giving_back;
            }
            pass.failed.push(Failed {
                id: message.id.clone(),
                error,
            });
        }
        Ok(pass)
    }

    /// The next batch, taken under a lease by `relay`, in the order it was added: each row's
    /// number, its publish attempts (this one included) and its message.
    async fn take(&self, relay: i64) -> Result<Vec<(i64, i64, Message)>, OutboxError> {
        let sql = &self.outbox.inner.sql;
        let now = now();
        let until = now.saturating_add(micros(self.lease));
        let limit = i64::try_from(self.batch).unwrap_or(i64::MAX);
        let rows = match &sql.take {
            // PostgreSQL, SQLite: one statement takes the batch and returns it.
            None => {
                let mut conn = self.outbox.acquire("connect").await?;
                let query = bind::<DB>(
                    &sql.claim,
                    &[
                        Value::Int(until),
                        Value::Int(relay),
                        Value::Int(now),
                        Value::Int(limit),
                    ],
                );
                DB::fetch_all(&mut conn, query)
                    .await
                    .map_err(database("take a batch"))?
            }
            // MySQL: select the batch, skipping rows another relay is taking, then take it; at
            // READ COMMITTED, so that the locking read locks the rows it returns and no gaps
            // (REPEATABLE READ's gap locks would hold up the application's inserts).
            Some(take) => {
                let mut conn = self.outbox.acquire("connect").await?;
                DB::execute(
                    &mut conn,
                    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED"),
                )
                .await
                .map_err(database("take a batch"))?;
                let mut tx = sqlx::Connection::begin(&mut *conn)
                    .await
                    .map_err(database("take a batch"))?;
                let query = bind::<DB>(&sql.claim, &[Value::Int(now), Value::Int(limit)]);
                let rows = DB::fetch_all(&mut tx, query)
                    .await
                    .map_err(database("take a batch"))?;
                if !rows.is_empty() {
                    let seqs = rows
                        .iter()
                        .map(|row| DB::int(row, 0))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(database("take a batch"))?;
                    let mut update = rows_update::<DB>(take, until, relay, &seqs);
                    DB::execute(&mut tx, update.build())
                        .await
                        .map_err(database("take a batch"))?;
                }
                tx.commit().await.map_err(database("take a batch"))?;
                rows
            }
        };
        let mut messages = rows
            .iter()
            .map(|row| {
                Ok((
                    DB::int(row, 0)?,
                    DB::int(row, 4)?,
                    Message {
                        id: DB::maybe_text(row, 1)?
                            .ok_or(sqlx::Error::ColumnNotFound("id".into()))?,
                        topic: DB::maybe_text(row, 2)?
                            .ok_or(sqlx::Error::ColumnNotFound("topic".into()))?,
                        payload: DB::bytes(row, 3)?.into(),
                    },
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(database("read a batch"))?;
        messages.sort_unstable_by_key(|(seq, _, _)| *seq);
        Ok(messages)
    }

    /// Deletes up to 1,000 rows published longer than the [`retention`](Self::retention) ago;
    /// how many it deleted.
    pub async fn purge(&self) -> Result<u64, OutboxError> {
        const _: () = assert!(PURGE_BATCH <= i64::MAX as u64);
        let before = now().saturating_sub(micros(self.retention));
        let query = bind::<DB>(
            &self.outbox.inner.sql.purge,
            &[Value::Int(before), Value::Int(PURGE_BATCH as i64)],
        );
        let mut conn = self.outbox.acquire("connect").await?;
        DB::execute(&mut conn, query)
            .await
            .map_err(database("purge published messages"))
    }

    /// Runs passes in a spawned task until [`RelayHandle::shutdown`]: at once while batches
    /// come back full, after [`idle`](Self::idle) when there was nothing to publish, after a
    /// backoff when every publish (or the database) failed; and a purge every minute.
    pub fn spawn(self) -> RelayHandle {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            let mut purged_at = Instant::now();
            // A dropped handle stops the relay too.
            while !*stopped.borrow() && stopped.has_changed().is_ok() {
                let started = Instant::now();
                let wait = match self.run_once().await {
                    Ok(pass) if pass.published == 0 && !pass.failed.is_empty() => {
                        failures = failures.saturating_add(1);
                        self.backoff.delay(failures)
                    }
                    Ok(pass) => {
                        failures = 0;
                        let taken = pass.published + pass.failed.len();
                        let paced = self.per_second.map_or(Duration::ZERO, |rate| {
                            Duration::from_secs_f64(taken as f64 / f64::from(rate))
                                .saturating_sub(started.elapsed())
                        });
                        if taken < self.batch {
                            paced.max(self.idle)
                        } else {
                            paced
                        }
                    }
                    Err(error) => {
                        event!(warn, error = %error, "outbox relay: a pass failed; backing off");
                        let _ = error;
                        failures = failures.saturating_add(1);
                        self.backoff.delay(failures).max(self.idle)
                    }
                };
                if purged_at.elapsed() >= Duration::from_secs(60) {
                    purged_at = Instant::now();
                    // Batches of 1,000 until the old rows are gone (at most 100 a minute).
                    for _ in 0..100 {
                        match self.purge().await {
                            Ok(PURGE_BATCH) => {}
                            Ok(_) => break,
                            Err(error) => {
                                event!(warn, error = %error, "outbox relay: purge failed");
                                let _ = error;
                                break;
                            }
                        }
                    }
                }
                if !wait.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        changed = stopped.changed() => if changed.is_err() { break },
                    }
                }
            }
        });
        RelayHandle { stop, task }
    }
}

/// A relay running in a task (see [`Relay::spawn`]). Dropping it stops the relay after its
/// current pass, as [`shutdown`](Self::shutdown) does without waiting.
#[derive(Debug)]
#[must_use = "dropping the handle stops the relay"]
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RelayHandle {
    /// Stops the relay after its current pass (a batch being published is published and
    /// marked first) and waits for it.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
