//! MySQL / MariaDB (InnoDB): the claim reads first and inserts only when no live record is
//! there (in a transaction: inserts first); times come from the server's `UTC_TIMESTAMP(6)`.

use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::mysql::{MySqlConnection, MySqlDatabaseError, MySqlRow};
use sqlx::{MySql, Row as _};

use super::{
    ClaimContended, Current, SqlDialect, SqlStore, Statements, TableName, claim_attempts,
    completed_output, fingerprint_from, locked_elsewhere, micros, row_id, row_key, sealed,
    token_from, wall_clock,
};
use crate::error::StoreError;
use crate::key::{Fingerprint, Key};
use crate::record::{Claim, Record, Token};

impl sealed::Sealed for MySql {}

const NOW: &str = "UTC_TIMESTAMP(6)";
/// `ER_LOCK_WAIT_TIMEOUT`: a row lock wait passed `innodb_lock_wait_timeout`.
const LOCK_WAIT_TIMEOUT: u16 = 1205;

// `..Statements::default()` fills the other databases' statements, which exist only when
// their features are on too.
#[allow(clippy::needless_update)]
fn statements(table: &TableName) -> Statements {
    let t = table.quoted('`');
    let index = format!("`{}_expires_at`", table.name());
    let after = format!("{NOW} + INTERVAL ? MICROSECOND");
    let until = "IF(completed, expires_at, lease_until)";
    let read = format!(
        "SELECT completed, fingerprint, output, TIMESTAMPDIFF(MICROSECOND, {NOW}, {until})
FROM {t} WHERE id = ?"
    );
    let epoch =
        |column: &str| format!("TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {column})");
    Statements {
        create: vec![format!(
            "CREATE TABLE IF NOT EXISTS {t} (
    id          BINARY(32) NOT NULL PRIMARY KEY,
    key_text    MEDIUMTEXT NOT NULL,
    token       BINARY(16) NOT NULL,
    fingerprint BINARY(32) NOT NULL,
    completed   BOOLEAN NOT NULL,
    lease_until DATETIME(6) NULL,
    expires_at  DATETIME(6) NOT NULL,
    output      LONGBLOB NULL,
    INDEX {index} (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4"
        )],
        claim_locked: format!("{read} LOCK IN SHARE MODE"),
        claim: read,
        insert: format!(
            "INSERT INTO {t} (id, key_text, token, fingerprint, completed, lease_until, expires_at, output)
VALUES (?, ?, ?, ?, FALSE, {after}, {after}, NULL)"
        ),
        take_over: format!(
            "UPDATE {t} SET key_text = ?, token = ?, fingerprint = ?, completed = FALSE,
    lease_until = {after}, expires_at = {after}, output = NULL
WHERE id = ? AND {until} <= {NOW}"
        ),
        complete: format!(
            "UPDATE {t} SET completed = TRUE, output = ?, lease_until = NULL, expires_at = {after}
WHERE id = ? AND token = ? AND NOT completed"
        ),
        completed_by: format!(
            "SELECT 1 FROM {t} WHERE id = ? AND token = ? AND completed AND expires_at > {NOW}"
        ),
        release: format!("DELETE FROM {t} WHERE id = ? AND token = ? AND NOT completed"),
        renew: format!(
            "UPDATE {t} SET lease_until = {after}, expires_at = {after}
WHERE id = ? AND token = ? AND NOT completed"
        ),
        get: format!(
            "SELECT completed, token, fingerprint, output, {lease}, {expiry}
FROM {t} WHERE id = ? AND (NOT completed OR expires_at > {NOW})",
            lease = epoch("lease_until"),
            expiry = epoch("expires_at"),
        ),
        remove: format!("DELETE FROM {t} WHERE id = ?"),
        purge: format!("DELETE FROM {t} WHERE expires_at < {NOW} ORDER BY expires_at LIMIT ?"),
        ..Statements::default()
    }
}

fn decode(error: sqlx::Error) -> StoreError {
    StoreError::corrupt(error.to_string())
}

fn current_from(row: &MySqlRow) -> Result<Current, StoreError> {
    Ok(Current {
        completed: row.try_get(0).map_err(decode)?,
        fingerprint: row.try_get(1).map_err(decode)?,
        output: row.try_get(2).map_err(decode)?,
        remaining: row
            .try_get::<Option<i64>, _>(3)
            .map_err(decode)?
            .unwrap_or(0),
    })
}

fn record_from(row: &MySqlRow) -> Result<Record, StoreError> {
    let completed: bool = row.try_get(0).map_err(decode)?;
    let token: Vec<u8> = row.try_get(1).map_err(decode)?;
    let fingerprint: Vec<u8> = row.try_get(2).map_err(decode)?;
    let output: Option<Vec<u8>> = row.try_get(3).map_err(decode)?;
    let lease_until: Option<i64> = row.try_get(4).map_err(decode)?;
    let expires_at: i64 = row.try_get(5).map_err(decode)?;
    let token = token_from(&token)?;
    let fingerprint = fingerprint_from(&fingerprint)?;
    Ok(if completed {
        Record::Completed {
            token,
            fingerprint,
            output: completed_output(output)?,
            expires_at: wall_clock(expires_at),
        }
    } else {
        Record::InProgress {
            token,
            fingerprint,
            lease_until: wall_clock(lease_until.unwrap_or(expires_at)),
        }
    })
}

/// The statements of one claim, on one connection.
struct Claiming<'c> {
    store: &'c SqlStore<MySql>,
    conn: &'c mut MySqlConnection,
    id: [u8; 32],
    key_text: String,
    token: Token,
    fingerprint: &'c Fingerprint,
    lease: i64,
    expiry: i64,
    /// A statement gave up waiting for a row lock held by another transaction.
    lock_timed_out: bool,
}

impl Claiming<'_> {
    /// The store's error for a failed statement, noting a lock wait that timed out.
    fn fail(&mut self, error: sqlx::Error) -> StoreError {
        if let sqlx::Error::Database(database) = &error {
            if database
                .try_downcast_ref::<MySqlDatabaseError>()
                .is_some_and(|error| error.number() == LOCK_WAIT_TIMEOUT)
            {
                self.lock_timed_out = true;
            }
        }
        self.store.error(error)
    }

    async fn read(&mut self, locked: bool) -> Result<Option<Current>, StoreError> {
        let store = self.store;
        let statement = if locked {
            &store.sql().claim_locked
        } else {
            &store.sql().claim
        };
        let read = sqlx::query(statement)
            .bind(&self.id[..])
            .fetch_optional(&mut *self.conn)
            .await;
        let row = read.map_err(|error| self.fail(error))?;
        row.as_ref().map(current_from).transpose()
    }

    /// `true` when the row was inserted, `false` when one was there already.
    async fn insert(&mut self) -> Result<bool, StoreError> {
        let inserted = sqlx::query(&self.store.sql().insert)
            .bind(&self.id[..])
            .bind(self.key_text.as_str())
            .bind(&self.token.as_bytes()[..])
            .bind(&self.fingerprint.as_bytes()[..])
            .bind(self.lease)
            .bind(self.expiry)
            .execute(&mut *self.conn)
            .await;
        match inserted {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => Ok(false),
            Err(error) => Err(self.fail(error)),
        }
    }

    /// `true` when the expired row was taken over (re-checked under the row lock).
    async fn take_over(&mut self) -> Result<bool, StoreError> {
        let updated = sqlx::query(&self.store.sql().take_over)
            .bind(self.key_text.as_str())
            .bind(&self.token.as_bytes()[..])
            .bind(&self.fingerprint.as_bytes()[..])
            .bind(self.lease)
            .bind(self.expiry)
            .bind(&self.id[..])
            .execute(&mut *self.conn)
            .await;
        let result = updated.map_err(|error| self.fail(error))?;
        Ok(result.rows_affected() == 1)
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
    /// over. A read in a transaction locks the row it reads (MySQL), so that it sees the
    /// latest committed record and not the transaction's snapshot. (The refused insert holds a
    /// shared lock on that row until the transaction ends, which is why a transactional claim
    /// never waits for a record in progress: its owner could not complete.)
    async fn run(&mut self, in_transaction: bool, insert_first: bool) -> Result<Claim, StoreError> {
        let acquired = Claim::Acquired {
            token: self.token,
            took_over: false,
        };
        for _ in 0..claim_attempts() {
            if insert_first {
                // Insert first: it takes the row lock, or waits for the transaction holding it.
                if self.insert().await? {
                    return Ok(acquired);
                }
                if let Some(current) = self.read(in_transaction).await? {
                    if let Some(claim) = self.settle(current).await? {
                        return Ok(claim);
                    }
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

fn fenced(rows: u64) -> Result<(), StoreError> {
    if rows == 0 {
        Err(StoreError::LeaseLost)
    } else {
        Ok(())
    }
}

impl SqlDialect for MySql {
    const __WAITS_IN_TRANSACTION: bool = false;

    fn __statements(table: &TableName) -> Statements {
        statements(table)
    }

    fn __claim<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut MySqlConnection,
        key: &'c Key,
        fingerprint: &'c Fingerprint,
        lease: Duration,
        in_transaction: bool,
    ) -> BoxFuture<'c, Result<Claim, StoreError>> {
        Box::pin(async move {
            let (id, key_text) = row_key(key);
            let mut claiming = Claiming {
                store,
                conn,
                id,
                key_text,
                token: Token::random(),
                fingerprint,
                lease: micros(lease),
                expiry: micros(lease.saturating_add(store.abandoned_after())),
                lock_timed_out: false,
            };
            let insert_first = in_transaction || store.claims_insert_first();
            match claiming.run(in_transaction, insert_first).await {
                // Another transaction holds the row (a claim not committed yet) past the
                // session's `innodb_lock_wait_timeout`: the key is in progress there.
                Err(_) if claiming.lock_timed_out => Ok(locked_elsewhere(fingerprint)),
                answer => answer,
            }
        })
    }

    fn __complete<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut MySqlConnection,
        key: &'c Key,
        token: &'c Token,
        output: &'c [u8],
        ttl: Duration,
    ) -> BoxFuture<'c, Result<(), StoreError>> {
        Box::pin(async move {
            let id = row_id(key);
            let result = sqlx::query(&store.sql().complete)
                .bind(output)
                .bind(micros(ttl))
                .bind(&id[..])
                .bind(&token.as_bytes()[..])
                .execute(&mut *conn)
                .await
                .map_err(|error| store.error(error))?;
            if result.rows_affected() == 1 {
                return Ok(());
            }
            // Completed already by this token (a retried complete whose answer was lost)?
            let done = sqlx::query(&store.sql().completed_by)
                .bind(&id[..])
                .bind(&token.as_bytes()[..])
                .fetch_optional(&mut *conn)
                .await
                .map_err(|error| store.error(error))?;
            done.map(|_| ()).ok_or(StoreError::LeaseLost)
        })
    }

    fn __release<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut MySqlConnection,
        key: &'c Key,
        token: &'c Token,
    ) -> BoxFuture<'c, Result<(), StoreError>> {
        Box::pin(async move {
            let result = sqlx::query(&store.sql().release)
                .bind(&row_id(key)[..])
                .bind(&token.as_bytes()[..])
                .execute(&mut *conn)
                .await
                .map_err(|error| store.error(error))?;
            fenced(result.rows_affected())
        })
    }

    fn __renew<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut MySqlConnection,
        key: &'c Key,
        token: &'c Token,
        lease: Duration,
    ) -> BoxFuture<'c, Result<(), StoreError>> {
        Box::pin(async move {
            // sqlx asks MySQL for rows *matched*, so an unchanged row still counts.
            let result = sqlx::query(&store.sql().renew)
                .bind(micros(lease))
                .bind(micros(lease.saturating_add(store.abandoned_after())))
                .bind(&row_id(key)[..])
                .bind(&token.as_bytes()[..])
                .execute(&mut *conn)
                .await
                .map_err(|error| store.error(error))?;
            fenced(result.rows_affected())
        })
    }

    fn __get<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut MySqlConnection,
        key: &'c Key,
    ) -> BoxFuture<'c, Result<Option<Record>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(&store.sql().get)
                .bind(&row_id(key)[..])
                .fetch_optional(&mut *conn)
                .await
                .map_err(|error| store.error(error))?;
            row.as_ref().map(record_from).transpose()
        })
    }

    fn __remove<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut MySqlConnection,
        key: &'c Key,
    ) -> BoxFuture<'c, Result<bool, StoreError>> {
        Box::pin(async move {
            let result = sqlx::query(&store.sql().remove)
                .bind(&row_id(key)[..])
                .execute(&mut *conn)
                .await
                .map_err(|error| store.error(error))?;
            Ok(result.rows_affected() > 0)
        })
    }

    fn __purge<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut MySqlConnection,
        limit: u32,
    ) -> BoxFuture<'c, Result<u64, StoreError>> {
        Box::pin(async move {
            let result = sqlx::query(&store.sql().purge)
                .bind(limit)
                .execute(&mut *conn)
                .await
                .map_err(|error| store.error(error))?;
            Ok(result.rows_affected())
        })
    }

    fn __migrate<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut MySqlConnection,
    ) -> BoxFuture<'c, Result<(), StoreError>> {
        Box::pin(async move {
            for statement in store.migration() {
                sqlx::query(statement)
                    .execute(&mut *conn)
                    .await
                    .map_err(|error| store.error(error))?;
            }
            Ok(())
        })
    }
}
