//! PostgreSQL: the claim is one statement (a read by primary key, and only without a live
//! record the table's claim function, around `INSERT … ON CONFLICT … DO UPDATE`); times come
//! from the server's `statement_timestamp()`.

use std::time::SystemTime;

use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{Connection as _, Postgres, Row as _};

use super::builder::TableName;
use super::dialect::{
    self, Args, ClaimOn, ClaimStatements, Dialect, MarkStatements, Statement, Statements,
    listing_statements, sqlx_calls,
};
use super::record::{completed_output, decode, fingerprint_from, locked_elsewhere, row_id};
use super::time::remaining;
use super::{SqlDialect, SqlStore};
use crate::error::StoreError;
use crate::record::{Claim, Token};

/// `x` as microseconds since the Unix epoch (`int8`).
fn epoch_micros(x: &str) -> String {
    format!("(EXTRACT(EPOCH FROM {x}) * 1000000)::int8")
}

const NOW: &str = "statement_timestamp()";

fn statements(table: &TableName) -> Statements<Postgres> {
    use super::dialect::Param::*;
    let t = table.quoted('"');
    let index = format!("\"{}_expires_at\"", table.name());
    let after = |param: &str| format!("{NOW} + {param}::int8 * INTERVAL '1 microsecond'");
    // A row whose lease (in progress) or TTL (completed) has passed may be taken.
    let until = |row: &str| {
        format!("(CASE WHEN {row}completed THEN {row}expires_at ELSE {row}lease_until END)")
    };
    let free = format!("{} <= {NOW}", until("r."));
    let keep_or = |column: &str, new: &str| {
        format!("{column} = CASE WHEN {free} THEN {new} ELSE r.{column} END")
    };
    // The claim is one statement that reads the row and, only when no live record is there,
    // calls the table's claim function (created by `migrate`), which inserts or takes the
    // row over: the read comes first in a `UNION ALL` under `LIMIT 1`, so a row from it ends
    // the statement before the function is entered. A replay is then a plain read by primary
    // key: nothing is written or locked, and the server sets up no insert. (Were the function
    // ever entered with a live record there, its upsert would keep and return that record:
    // the answer is the same.) State 1 says the function ran and kept another owner's record
    // (a claim committed after this statement's snapshot): its `DO UPDATE` locked the row,
    // and in the caller's transaction that lock lasts until the transaction ends.
    let function = table.beside("_claim", '"');
    let live = format!("{} > {NOW}", until(""));
    // Time left: on an in-progress lease, or on a completed record's TTL (its expiry, for the
    // executor's local replay cache and `Obtained::expires_at`).
    let left = |row: &str| epoch_micros(&format!("({} - {NOW})", until(row)));
    // `state`: 0 the live record read, 1 another owner's record kept by the function, 2 the
    // key acquired, 3 acquired by taking over a record whose lease had passed.
    let claim = format!(
        "(SELECT 0::int2 AS state, completed, fingerprint, output, {left_cur} AS remaining
FROM {t} WHERE id = $1 AND {live})
UNION ALL
(SELECT (CASE WHEN f.acquired THEN CASE WHEN f.took_over THEN 3 ELSE 2 END ELSE 1 END)::int2,
    f.completed, f.fingerprint, f.output, f.remaining
FROM {function}($1, $2, $3, $4, $5, $6, $7, $8) AS f)
LIMIT 1",
        left_cur = left(""),
    );
    // The function: insert, or take over a row whose lease or TTL has passed (the conditional
    // `DO UPDATE` re-checks under the row lock, and always returns the row it kept). A
    // takeover of an in-progress record sets its `expires_at` one microsecond past the new
    // claim's (invisible to readers: it only delays a purge), so that the claim can tell a
    // takeover from the row it returns even when the old row was not in the statement's
    // snapshot (inserted by a transaction that committed while the claim waited for it).
    // `p_lock`, when not NULL, bounds the insert's lock wait for the rest of the statement's
    // implicit transaction (`set_config(…, true)`): on the pool only, since in the caller's
    // transaction it would outlive the claim.
    let expiry = after("p_expiry");
    let set_expiry = keep_or(
        "expires_at",
        "EXCLUDED.expires_at + CASE WHEN r.completed THEN INTERVAL '0' ELSE INTERVAL '1 microsecond' END",
    );
    let claim_function = format!(
        "CREATE OR REPLACE FUNCTION {function}(
    p_id bytea, p_token bytea, p_fingerprint bytea, p_lease int8, p_expiry int8, p_lock text,
    p_namespace text, p_version int8,
    OUT acquired bool, OUT completed bool, OUT fingerprint bytea, OUT output bytea,
    OUT remaining int8, OUT took_over bool
) LANGUAGE plpgsql VOLATILE AS $claim$
#variable_conflict use_column
BEGIN
    IF p_lock IS NOT NULL THEN
        PERFORM set_config('lock_timeout', p_lock, true);
    END IF;
    INSERT INTO {t} AS r
        (id, token, fingerprint, completed, lease_until, expires_at, output, namespace, version)
    VALUES (p_id, p_token, p_fingerprint, FALSE, {lease}, {expiry}, NULL, p_namespace, p_version)
    ON CONFLICT (id) DO UPDATE SET
        {set_token}, {set_fingerprint}, {set_completed},
        {set_lease}, {set_expiry}, {set_output}, {set_namespace}, {set_version}
    RETURNING r.token = p_token, r.completed, r.fingerprint, r.output, {left_r},
        r.expires_at <> {expiry}
    INTO acquired, completed, fingerprint, output, remaining, took_over;
    took_over := acquired AND took_over;
END
$claim$",
        lease = after("p_lease"),
        left_r = left("r."),
        set_token = keep_or("token", "EXCLUDED.token"),
        set_fingerprint = keep_or("fingerprint", "EXCLUDED.fingerprint"),
        set_completed = keep_or("completed", "FALSE"),
        set_lease = keep_or("lease_until", "EXCLUDED.lease_until"),
        set_output = keep_or("output", "NULL"),
        set_namespace = keep_or("namespace", "EXCLUDED.namespace"),
        set_version = keep_or("version", "EXCLUDED.version"),
    );

    let columns = |names: &str| {
        format!(
            "SELECT COUNT(*) FROM pg_attribute
WHERE attrelid = to_regclass('{t}') AND attname IN ({names}) AND NOT attisdropped"
        )
    };
    let mut create = Vec::new();
    if let Some(schema) = table.schema() {
        create.push(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""));
    }
    create.push(format!(
        "CREATE TABLE IF NOT EXISTS {t} (
    id          BYTEA PRIMARY KEY,
    token       BYTEA NOT NULL,
    fingerprint BYTEA NOT NULL,
    completed   BOOLEAN NOT NULL,
    lease_until TIMESTAMPTZ,
    expires_at  TIMESTAMPTZ NOT NULL,
    output      BYTEA,
    namespace   TEXT,
    version     INT8
)"
    ));
    create.push(format!(
        "CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at)"
    ));
    // 0.1's claim function took the key text too; it goes with that column.
    create.push(format!(
        "DROP FUNCTION IF EXISTS {function}(bytea, text, bytea, bytea, int8, int8, text)"
    ));
    // New rows name their namespace; a table from before gets the columns here (idempotent,
    // so `migration()` carries it for a migration tool of your own).
    create.push(format!(
        "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS namespace TEXT,
    ADD COLUMN IF NOT EXISTS version INT8"
    ));
    create.push(claim_function);
    // The claim function without namespace and version, which processes of the previous
    // version call: kept as a wrapper around the new one (their rows name no namespace), so
    // that a rolling upgrade never leaves them without a claim.
    create.push(format!(
        "CREATE OR REPLACE FUNCTION {function}(
    p_id bytea, p_token bytea, p_fingerprint bytea, p_lease int8, p_expiry int8, p_lock text,
    OUT acquired bool, OUT completed bool, OUT fingerprint bytea, OUT output bytea,
    OUT remaining int8, OUT took_over bool
) LANGUAGE sql VOLATILE AS $wrapper$
    SELECT * FROM {function}(p_id, p_token, p_fingerprint, p_lease, p_expiry, p_lock, NULL, NULL)
$wrapper$"
    ));

    Statements {
        create,
        claim: ReadOrUpsert(Statement::new(
            claim,
            &[Id, Token, Fingerprint, Lease, Expiry, Lock, Namespace, Version],
        )),
        // Completed now, or earlier by this token (a retried complete): one statement either
        // way, the second test reading the snapshot from before the update.
        complete: Statement::new(format!(
            "WITH done AS (
    UPDATE {t} SET completed = TRUE, output = $3, lease_until = NULL, expires_at = {ttl}
    WHERE id = $1 AND token = $2 AND NOT completed
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM done)
    OR EXISTS (SELECT 1 FROM {t} WHERE id = $1 AND token = $2 AND completed AND expires_at > {NOW})",
            ttl = after("$4"),
        ), &[Id, Token, Output, Ttl]),
        completed_by: None,
        release: Statement::new(
            format!("DELETE FROM {t} WHERE id = $1 AND token = $2 AND NOT completed"),
            &[Id, Token],
        ),
        renew: Statement::new(format!(
            "UPDATE {t} SET lease_until = {lease}, expires_at = {expiry}
WHERE id = $1 AND token = $2 AND NOT completed",
            lease = after("$3"),
            expiry = after("$4"),
        ), &[Id, Token, Lease, Expiry]),
        get: Statement::new(format!(
            "SELECT completed, token, fingerprint, output, {lease}, {expiry}
FROM {t} WHERE id = $1 AND (NOT completed OR expires_at > {NOW})",
            lease = epoch_micros("lease_until"),
            expiry = epoch_micros("expires_at"),
        ), &[Id]),
        remove: Statement::new(format!("DELETE FROM {t} WHERE id = $1"), &[Id]),
        purge: Statement::new(format!(
            "DELETE FROM {t} WHERE id IN (
    SELECT id FROM {t} WHERE expires_at < {NOW}
    ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
)"
        ), &[Limit]),
        has_key_text: Statement::new(columns("'key_text'"), &[]),
        has_namespace: Statement::new(columns("'namespace', 'version'"), &[]),
        add_namespace: vec![format!(
            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS namespace TEXT,
    ADD COLUMN IF NOT EXISTS version INT8"
        )],
        listing: listing_statements(&t, epoch_micros, NOW, |n| format!("${n}"), false),
        marks: MarkStatements {
            load: Statement::new(
                format!("SELECT output FROM {t} WHERE id = $1 AND completed AND expires_at > {NOW}"),
                &[Id],
            ),
            clear: Statement::new(
                format!("DELETE FROM {t} WHERE id = $1 AND expires_at <= {NOW}"),
                &[Id],
            ),
            insert: Statement::new(
                format!(
                    "INSERT INTO {t}
    (id, token, fingerprint, completed, lease_until, expires_at, output, namespace, version)
VALUES ($1, $2, $3, TRUE, NULL, {ttl}, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
                    ttl = after("$4"),
                ),
                &[Id, Token, Fingerprint, Ttl, Output, Namespace, Version],
            ),
            swap: Statement::new(
                format!(
                    "UPDATE {t} SET output = $2, expires_at = {ttl}
WHERE id = $1 AND output = $4 AND completed AND expires_at > {NOW}",
                    ttl = after("$3"),
                ),
                &[Id, Output, Ttl, Expected],
            ),
            lock: Statement::new(
                format!("UPDATE {t} SET expires_at = expires_at WHERE id = $1"),
                &[Id],
            ),
        },
    }
}

/// SQLSTATE of a lock wait that passed `lock_timeout` (or met `NOWAIT`).
const LOCK_NOT_AVAILABLE: &str = "55P03";

fn claim_from(row: &PgRow, token: Token, in_transaction: bool) -> Result<Claim, StoreError> {
    let state: i16 = row.try_get(0).map_err(decode)?;
    if state >= 2 {
        return Ok(Claim::Acquired {
            token,
            took_over: state == 3,
        });
    }
    let locked = state == 1;
    let completed: bool = row.try_get(1).map_err(decode)?;
    let fingerprint: &[u8] = row.try_get(2).map_err(decode)?;
    let output: Option<Vec<u8>> = row.try_get(3).map_err(decode)?;
    let left: Option<i64> = row.try_get(4).map_err(decode)?;
    let fingerprint = fingerprint_from(fingerprint)?;
    Ok(if completed {
        Claim::Completed {
            fingerprint,
            output: completed_output(output)?,
            expires_at: Some(SystemTime::now() + remaining(left.unwrap_or(0))),
        }
    } else if locked && in_transaction {
        // The caller's transaction now holds the row lock the owner needs to complete: it
        // must not wait for the owner with it (no time left: the caller rolls back, retries).
        locked_elsewhere(&fingerprint)
    } else {
        Claim::InProgress {
            fingerprint,
            lease_remaining: remaining(left.unwrap_or(0)),
        }
    })
}

/// A statement that always answers a row answered none.
#[derive(Debug, thiserror::Error)]
#[error("the claim statement returned no row")]
struct NoRow;

/// The claim: one statement that reads the row and, only without a live record there, calls
/// the table's claim function (see `statements`).
#[derive(Debug)]
pub struct ReadOrUpsert(Statement);

impl ClaimStatements<Postgres> for ReadOrUpsert {
    fn claim<'c>(&'c self, on: ClaimOn<'c, Postgres>) -> BoxFuture<'c, Result<Claim, StoreError>>
    where
        Postgres: SqlDialect,
    {
        Box::pin(async move {
            let token = Token::random();
            // On the pool, bound the wait for a row lock held by an uncommitted transaction;
            // in the caller's transaction a `set_config(…, true)` would outlive the claim.
            let lock_timeout = on.store.lock_timeout();
            let bound = !on.in_transaction && !lock_timeout.is_zero();
            let id = row_id(on.key);
            let abandoned_after = on.store.abandoned_after();
            let mut args = Args::claim(&id, on.key, &token, &on.request, abandoned_after);
            // Whole milliseconds, at least one (`0` would mean no bound).
            args.lock = bound.then(|| {
                lock_timeout
                    .as_millis()
                    .clamp(1, i32::MAX as u128)
                    .to_string()
            });
            let row = match dialect::fetch::<Postgres>(on.conn, &self.0, &args).await {
                Ok(row) => row.ok_or_else(|| StoreError::backend(NoRow))?,
                Err(error) if Postgres::lock_wait_timed_out(&error) => {
                    return Ok(locked_elsewhere(&on.request.fingerprint));
                }
                Err(error) => return Err(on.store.error(error)),
            };
            claim_from(&row, token, on.in_transaction)
        })
    }
}

impl Dialect for Postgres {
    const SYNTAX: super::dialect::Syntax = super::dialect::Syntax::Postgres;
    const WAITS_IN_TRANSACTION: bool = true;

    type ClaimStatements = ReadOrUpsert;

    fn statements(table: &TableName) -> Statements<Postgres> {
        statements(table)
    }

    fn migrate<'c>(
        store: &'c SqlStore<Self>,
        conn: &'c mut PgConnection,
    ) -> BoxFuture<'c, Result<(), StoreError>> {
        Box::pin(async move {
            let error = |error| store.error(error);
            // `CREATE … IF NOT EXISTS` is not safe against a concurrent create of the same
            // name in PostgreSQL; a transaction-scoped advisory lock serialises migrations.
            let mut tx = conn.begin().await.map_err(error)?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(lock_id(store.table_name()))
                .execute(&mut *tx)
                .await
                .map_err(error)?;
            for statement in store.migration() {
                sqlx::query(statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(error)?;
            }
            dialect::drop_legacy_key_text(store, &mut tx).await?;
            tx.commit().await.map_err(error)
        })
    }

    fn lock_wait_timed_out(error: &sqlx::Error) -> bool {
        matches!(error, sqlx::Error::Database(database)
            if database.code().as_deref() == Some(LOCK_NOT_AVAILABLE))
    }

    sqlx_calls!();
}

/// An advisory lock id for migrating `table` (FNV-1a of its name).
fn lock_id(table: &TableName) -> i64 {
    let text = format!("idempotency-migrate:{table}");
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    i64::from_ne_bytes(hash.to_ne_bytes())
}
