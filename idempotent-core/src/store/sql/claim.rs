//! The claim of MySQL and SQLite: read the row, then insert or take it over (or, with
//! `insert_first` and in a transaction, insert, then read what refused the insert).
//!
//! MySQL has no `RETURNING` for an insert that met a duplicate (so it cannot hand back the
//! stored output), and SQLite's upsert returns no row when it leaves the existing one alone,
//! so neither can claim in one statement as PostgreSQL does.

use std::time::SystemTime;

use futures_util::future::BoxFuture;

use super::dialect::{self, Args, ClaimOn, ClaimStatements, Dialect, Statement};
use super::record::{completed_output, decode, fingerprint_from, locked_elsewhere, row_id};
use super::time::remaining;
use super::{SqlDialect, SqlStore};
use crate::error::StoreError;
use crate::record::{Claim, Token};

/// A claim that reads, then writes, retries when another caller changed the row in between;
/// this bounds the retries (each needs yet another concurrent change to fail again).
const CLAIM_ATTEMPTS: usize = 8;

/// The record changed under a claim more often than [`CLAIM_ATTEMPTS`] allows.
#[derive(Debug, thiserror::Error)]
#[error("the record changed {CLAIM_ATTEMPTS} times during one claim; try again")]
struct ClaimContended;

/// The statements of a claim that reads, then writes.
#[derive(Debug)]
pub struct ReadThenInsert {
    /// The current row: `completed, fingerprint, output, remaining` (microseconds until the
    /// lease or the TTL passes).
    pub(crate) read: Statement,
    /// MySQL: the same read with a shared lock, for a transaction (see [`Claiming::run`]).
    pub(crate) read_locked: Option<Statement>,
    /// Inserts a new in-progress row; refused (or ignored) when the row exists.
    pub(crate) insert: Statement,
    /// Takes over a row whose lease or TTL has passed, re-checked by the update itself.
    pub(crate) take_over: Statement,
}

/// What a claim's read of the current row found: `completed, fingerprint, output,
/// remaining` (MySQL, SQLite).
struct Current {
    completed: bool,
    fingerprint: Vec<u8>,
    output: Option<Vec<u8>>,
    /// Microseconds until the lease (in progress) or the TTL (completed) passes.
    remaining: i64,
}

impl Current {
    fn from_row<DB: Dialect>(row: &DB::Row) -> Result<Current, StoreError> {
        Ok(Current {
            completed: DB::flag(row, 0).map_err(decode)?,
            fingerprint: DB::bytes(row, 1).map_err(decode)?,
            output: DB::maybe_bytes(row, 2).map_err(decode)?,
            remaining: DB::maybe_int(row, 3).map_err(decode)?.unwrap_or(0),
        })
    }

    /// The claim's answer when the record is live, `None` when it may be taken.
    fn live(self) -> Result<Option<Claim>, StoreError> {
        if self.remaining <= 0 {
            return Ok(None);
        }
        let fingerprint = fingerprint_from(&self.fingerprint)?;
        Ok(Some(if self.completed {
            Claim::Completed {
                fingerprint,
                output: completed_output(self.output)?,
                expires_at: Some(SystemTime::now() + remaining(self.remaining)),
            }
        } else {
            Claim::InProgress {
                fingerprint,
                lease_remaining: remaining(self.remaining),
            }
        }))
    }
}

impl<DB: Dialect> ClaimStatements<DB> for ReadThenInsert {
    fn claim<'c>(&'c self, on: ClaimOn<'c, DB>) -> BoxFuture<'c, Result<Claim, StoreError>>
    where
        DB: SqlDialect,
    {
        Box::pin(async move {
            let id = row_id(on.key);
            let token = Token::random();
            let store = on.store;
            let mut claiming = Claiming {
                store,
                statements: self,
                conn: on.conn,
                args: Args::claim(&id, on.key, &token, &on.request, store.abandoned_after()),
                token,
                lock_timed_out: false,
            };
            let insert_first = on.in_transaction || store.claims_insert_first();
            match claiming.run(on.in_transaction, insert_first).await {
                // Another transaction holds the row (a claim not committed yet) past the
                // session's `innodb_lock_wait_timeout` (MySQL): the key is in progress there.
                Err(_) if claiming.lock_timed_out => Ok(locked_elsewhere(&on.request.fingerprint)),
                answer => answer,
            }
        })
    }
}

/// The statements of one claim, on one connection.
struct Claiming<'c, DB: SqlDialect> {
    store: &'c SqlStore<DB>,
    statements: &'c ReadThenInsert,
    conn: &'c mut DB::Connection,
    args: Args<'c>,
    token: Token,
    /// A statement gave up waiting for a row lock held by another transaction.
    lock_timed_out: bool,
}

impl<DB: SqlDialect> Claiming<'_, DB> {
    /// The store's error for a failed statement, noting a lock wait that timed out.
    fn fail(&mut self, error: sqlx::Error) -> StoreError {
        if DB::lock_wait_timed_out(&error) {
            self.lock_timed_out = true;
        }
        self.store.error(error)
    }

    async fn read(&mut self, locked: bool) -> Result<Option<Current>, StoreError> {
        let statements = self.statements;
        let statement = match &statements.read_locked {
            Some(read_locked) if locked => read_locked,
            _ => &statements.read,
        };
        let read = dialect::fetch::<DB>(&mut *self.conn, statement, &self.args).await;
        let row = read.map_err(|error| self.fail(error))?;
        row.as_ref().map(Current::from_row::<DB>).transpose()
    }

    /// `true` when the row was inserted, `false` when one was there already (MySQL refuses
    /// the insert, SQLite's `DO NOTHING` ignores it).
    async fn insert(&mut self) -> Result<bool, StoreError> {
        let statement = &self.statements.insert;
        match dialect::execute::<DB>(&mut *self.conn, statement, &self.args).await {
            Ok(rows) => Ok(rows == 1),
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => Ok(false),
            Err(error) => Err(self.fail(error)),
        }
    }

    /// `true` when the expired row was taken over (re-checked under the row lock).
    async fn take_over(&mut self) -> Result<bool, StoreError> {
        let statement = &self.statements.take_over;
        let updated = dialect::execute::<DB>(&mut *self.conn, statement, &self.args).await;
        Ok(updated.map_err(|error| self.fail(error))? == 1)
    }

    /// The answer for a row read by [`read`](Self::read): live, taken over, or `None` when
    /// another caller changed it in between.
    async fn settle(&mut self, current: Current) -> Result<Option<Claim>, StoreError> {
        let was_in_progress = !current.completed;
        if let Some(claim) = current.live()? {
            return Ok(Some(claim));
        }
        Ok(self.take_over().await?.then_some(Claim::Acquired {
            token: self.token,
            took_over: was_in_progress,
        }))
    }

    /// `insert_first`: insert, then read what refused it; otherwise read, then insert or take
    /// over.
    ///
    /// Inserting first takes the row lock (MySQL) or the write lock (SQLite) before a
    /// transaction reads anything, or waits for the transaction holding it: SQLite's snapshot
    /// then cannot go stale under a concurrent writer (`SQLITE_BUSY`). A read in a transaction
    /// locks the row it reads (MySQL), so that it sees the latest committed record and not the
    /// transaction's snapshot. (The refused insert holds a shared lock on that row until the
    /// transaction ends, which is why a transactional claim never waits for a record in
    /// progress: its owner could not complete.)
    async fn run(&mut self, in_transaction: bool, insert_first: bool) -> Result<Claim, StoreError> {
        let acquired = Claim::Acquired {
            token: self.token,
            took_over: false,
        };
        for _ in 0..CLAIM_ATTEMPTS {
            self.args.now = DB::CLOCK.now();
            if insert_first {
                if self.insert().await? {
                    return Ok(acquired);
                }
                if let Some(current) = self.read(in_transaction).await?
                    && let Some(claim) = self.settle(current).await?
                {
                    return Ok(claim);
                }
            } else {
                match self.read(false).await? {
                    Some(current) => {
                        if let Some(claim) = self.settle(current).await? {
                            return Ok(claim);
                        }
                    }
                    None => {
                        if self.insert().await? {
                            return Ok(acquired);
                        }
                    }
                }
            }
        }
        Err(StoreError::backend(ClaimContended))
    }
}
