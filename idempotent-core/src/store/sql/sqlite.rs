//! SQLite: the claim reads first and inserts only when no live record is there (in a
//! transaction: inserts first); times come from this process's clock, bound as microseconds
//! since the Unix epoch (SQLite runs in the application, so there is no other clock to share).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Row as _, Sqlite};

use super::{
    ClaimContended, Current, SqlDialect, SqlStore, Statements, TableName, claim_attempts,
    completed_output, fingerprint_from, micros, row_id, row_key, sealed, token_from, wall_clock,
};
use crate::error::StoreError;
use crate::key::{Fingerprint, Key};
use crate::record::{Claim, Record, Token};

impl sealed::Sealed for Sqlite {}

// `..Statements::default()` fills the other databases' statements, which exist only when
// their features are on too.
#[allow(clippy::needless_update)]
fn statements(table: &TableName) -> Statements {
    let t = table.quoted('"');
    // SQLite qualifies the index, not the table it indexes.
    let index = match table.schema() {
        Some(schema) => format!("\"{schema}\".\"{}_expires_at\"", table.name()),
        None => format!("\"{}_expires_at\"", table.name()),
    };
    let until = "(CASE WHEN completed THEN expires_at ELSE lease_until END)";
    Statements {
        create: vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (
    id          BLOB PRIMARY KEY NOT NULL,
    key_text    TEXT NOT NULL,
    token       BLOB NOT NULL,
    fingerprint BLOB NOT NULL,
    completed   INTEGER NOT NULL,
    lease_until INTEGER,
    expires_at  INTEGER NOT NULL,
    output      BLOB
)"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {index} ON \"{}\" (expires_at)",
                table.name()
            ),
        ],
        claim: format!(
            "SELECT completed, fingerprint, output, {until} - ?1 FROM {t} WHERE id = ?2"
        ),
        insert: format!(
            "INSERT INTO {t} (id, key_text, token, fingerprint, completed, lease_until, expires_at, output)
VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, NULL)
ON CONFLICT (id) DO NOTHING"
        ),
        take_over: format!(
            "UPDATE {t} SET key_text = ?2, token = ?3, fingerprint = ?4, completed = 0,
    lease_until = ?5, expires_at = ?6, output = NULL
WHERE id = ?1 AND {until} <= ?7"
        ),
        complete: format!(
            "UPDATE {t} SET completed = 1, output = ?3, lease_until = NULL, expires_at = ?4
WHERE id = ?1 AND token = ?2 AND NOT completed"
        ),
        completed_by: format!(
            "SELECT 1 FROM {t} WHERE id = ?1 AND token = ?2 AND completed AND expires_at > ?3"
        ),
        release: format!("DELETE FROM {t} WHERE id = ?1 AND token = ?2 AND NOT completed"),
        renew: format!(
            "UPDATE {t} SET lease_until = ?3, expires_at = ?4
WHERE id = ?1 AND token = ?2 AND NOT completed"
        ),
        get: format!(
            "SELECT completed, token, fingerprint, output, lease_until, expires_at
FROM {t} WHERE id = ?1 AND (NOT completed OR expires_at > ?2)"
        ),
        remove: format!("DELETE FROM {t} WHERE id = ?1"),
        purge: format!(
            "DELETE FROM {t} WHERE id IN (
    SELECT id FROM {t} WHERE expires_at < ?1 ORDER BY expires_at LIMIT ?2
)"
        ),
        ..Statements::default()
    }
}

/// Now, in microseconds since the Unix epoch.
fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(micros)
        .unwrap_or(0)
}

/// `now + duration`, in microseconds.
fn after(now: i64, duration: Duration) -> i64 {
    now.saturating_add(micros(duration))
}

fn decode(error: sqlx::Error) -> StoreError {
    StoreError::corrupt(error.to_string())
}

fn current_from(row: &SqliteRow) -> Result<Current, StoreError> {
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

fn record_from(row: &SqliteRow) -> Result<Record, StoreError> {
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
    store: &'c SqlStore<Sqlite>,
    conn: &'c mut SqliteConnection,
    id: [u8; 32],
    key_text: String,
    token: Token,
    fingerprint: &'c Fingerprint,
    lease: Duration,
}

impl Claiming<'_> {
    async fn read(&mut self, now: i64) -> Result<Option<Current>, StoreError> {
        let row = sqlx::query(&self.store.sql().claim)
            .bind(now)
            .bind(&self.id[..])
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(|error| self.store.error(error))?;
        row.as_ref().map(current_from).transpose()
    }

    /// `true` when the row was inserted, `false` when one was there already.
    async fn insert(&mut self, now: i64) -> Result<bool, StoreError> {
        let result = sqlx::query(&self.store.sql().insert)
            .bind(&self.id[..])
            .bind(self.key_text.as_str())
            .bind(&self.token.as_bytes()[..])
            .bind(&self.fingerprint.as_bytes()[..])
            .bind(after(now, self.lease))
            .bind(after(
                now,
                self.lease.saturating_add(self.store.abandoned_after()),
            ))
            .execute(&mut *self.conn)
            .await
            .map_err(|error| self.store.error(error))?;
        Ok(result.rows_affected() == 1)
    }

    /// `true` when the expired row was taken over (re-checked by the update itself).
    async fn take_over(&mut self, now: i64) -> Result<bool, StoreError> {
        let result = sqlx::query(&self.store.sql().take_over)
            .bind(&self.id[..])
            .bind(self.key_text.as_str())
            .bind(&self.token.as_bytes()[..])
            .bind(&self.fingerprint.as_bytes()[..])
            .bind(after(now, self.lease))
            .bind(after(
                now,
                self.lease.saturating_add(self.store.abandoned_after()),
            ))
            .bind(now)
            .execute(&mut *self.conn)
            .await
            .map_err(|error| self.store.error(error))?;
        Ok(result.rows_affected() == 1)
    }

    async fn settle(&mut self, current: Current, now: i64) -> Result<Option<Claim>, StoreError> {
        let was_in_progress = !current.completed;
        if let Some(claim) = current.live()? {
            return Ok(Some(claim));
        }
        Ok(self.take_over(now).await?.then_some(Claim::Acquired {
            token: self.token,
            took_over: was_in_progress,
        }))
    }

    /// `insert_first`: insert, then read what refused it; otherwise read, then insert or take
    /// over.
    async fn run(mut self, insert_first: bool) -> Result<Claim, StoreError> {
        let acquired = Claim::Acquired {
            token: self.token,
            took_over: false,
        };
        for _ in 0..claim_attempts() {
            let now = now();
            if insert_first {
                // Insert first: it takes the write lock before the transaction reads anything,
                // so a concurrent writer cannot make its snapshot stale (`SQLITE_BUSY`).
                if self.insert(now).await? {
                    return Ok(acquired);
                }
                if let Some(current) = self.read(now).await? {
                    if let Some(claim) = self.settle(current, now).await? {
                        return Ok(claim);
                    }
                }
            } else {
                match self.read(now).await? {
                    Some(current) => {
                        if let Some(claim) = self.settle(current, now).await? {
                            return Ok(claim);
                        }
                    }
                    None => {
                        if self.insert(now).await? {
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

impl SqlDialect for Sqlite {
    const __WAITS_IN_TRANSACTION: bool = false;

    fn __statements(table: &TableName) -> Statements {
        statements(table)
    }

    fn __claim<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut SqliteConnection,
        key: &'c Key,
        fingerprint: &'c Fingerprint,
        lease: Duration,
        in_transaction: bool,
    ) -> BoxFuture<'c, Result<Claim, StoreError>> {
        Box::pin(async move {
            let (id, key_text) = row_key(key);
            Claiming {
                store,
                conn,
                id,
                key_text,
                token: Token::random(),
                fingerprint,
                lease,
            }
            .run(in_transaction || store.claims_insert_first())
            .await
        })
    }

    fn __complete<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut SqliteConnection,
        key: &'c Key,
        token: &'c Token,
        output: &'c [u8],
        ttl: Duration,
    ) -> BoxFuture<'c, Result<(), StoreError>> {
        Box::pin(async move {
            let id = row_id(key);
            let now = now();
            let result = sqlx::query(&store.sql().complete)
                .bind(&id[..])
                .bind(&token.as_bytes()[..])
                .bind(output)
                .bind(after(now, ttl))
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
                .bind(now)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|error| store.error(error))?;
            done.map(|_| ()).ok_or(StoreError::LeaseLost)
        })
    }

    fn __release<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut SqliteConnection,
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
        conn: &'c mut SqliteConnection,
        key: &'c Key,
        token: &'c Token,
        lease: Duration,
    ) -> BoxFuture<'c, Result<(), StoreError>> {
        Box::pin(async move {
            let now = now();
            let result = sqlx::query(&store.sql().renew)
                .bind(&row_id(key)[..])
                .bind(&token.as_bytes()[..])
                .bind(after(now, lease))
                .bind(after(now, lease.saturating_add(store.abandoned_after())))
                .execute(&mut *conn)
                .await
                .map_err(|error| store.error(error))?;
            fenced(result.rows_affected())
        })
    }

    fn __get<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut SqliteConnection,
        key: &'c Key,
    ) -> BoxFuture<'c, Result<Option<Record>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(&store.sql().get)
                .bind(&row_id(key)[..])
                .bind(now())
                .fetch_optional(&mut *conn)
                .await
                .map_err(|error| store.error(error))?;
            row.as_ref().map(record_from).transpose()
        })
    }

    fn __remove<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut SqliteConnection,
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
        conn: &'c mut SqliteConnection,
        limit: u32,
    ) -> BoxFuture<'c, Result<u64, StoreError>> {
        Box::pin(async move {
            let result = sqlx::query(&store.sql().purge)
                .bind(now())
                .bind(i64::from(limit))
                .execute(&mut *conn)
                .await
                .map_err(|error| store.error(error))?;
            Ok(result.rows_affected())
        })
    }

    fn __migrate<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut SqliteConnection,
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
