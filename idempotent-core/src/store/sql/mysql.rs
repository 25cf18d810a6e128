//! MySQL / MariaDB (InnoDB): the claim reads first and inserts only when no live record is
//! there (in a transaction: inserts first; see [`claim`](super::claim)); times come from the
//! server's `UTC_TIMESTAMP(6)`.

use sqlx::MySql;
use sqlx::mysql::MySqlDatabaseError;

use super::builder::TableName;
use super::claim::ReadThenInsert;
use super::dialect::{
    Dialect, MarkStatements, Statement, Statements, listing_statements, sqlx_calls,
};

const NOW: &str = "UTC_TIMESTAMP(6)";
/// `ER_LOCK_WAIT_TIMEOUT`: a row lock wait passed `innodb_lock_wait_timeout`.
const LOCK_WAIT_TIMEOUT: u16 = 1205;

fn statements(table: &TableName) -> Statements<MySql> {
    use super::dialect::Param::*;
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
    let columns = |names: &str| {
        format!(
            "SELECT COUNT(*) FROM information_schema.columns
WHERE table_schema = {schema} AND table_name = '{name}' AND column_name IN ({names})",
            schema = table
                .schema()
                .map_or_else(|| "DATABASE()".to_owned(), |schema| format!("'{schema}'")),
            name = table.name(),
        )
    };
    Statements {
        create: vec![format!(
            "CREATE TABLE IF NOT EXISTS {t} (
    id          BINARY(32) NOT NULL PRIMARY KEY,
    token       BINARY(16) NOT NULL,
    fingerprint BINARY(32) NOT NULL,
    completed   BOOLEAN NOT NULL,
    lease_until DATETIME(6) NULL,
    expires_at  DATETIME(6) NOT NULL,
    output      LONGBLOB NULL,
    namespace   TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    version     BIGINT NULL,
    INDEX {index} (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4"
        )],
        claim: ReadThenInsert {
            read_locked: Some(Statement::new(
                format!("{read} LOCK IN SHARE MODE"),
                &[Id],
            )),
            read: Statement::new(read, &[Id]),
            insert: Statement::new(
                format!(
                    "INSERT INTO {t}
    (id, token, fingerprint, completed, lease_until, expires_at, output, namespace, version)
VALUES (?, ?, ?, FALSE, {after}, {after}, NULL, ?, ?)"
                ),
                &[Id, Token, Fingerprint, Lease, Expiry, Namespace, Version],
            ),
            take_over: Statement::new(
                format!(
                    "UPDATE {t} SET token = ?, fingerprint = ?, completed = FALSE,
    lease_until = {after}, expires_at = {after}, output = NULL, namespace = ?, version = ?
WHERE id = ? AND {until} <= {NOW}"
                ),
                &[Token, Fingerprint, Lease, Expiry, Namespace, Version, Id],
            ),
        },
        complete: Statement::new(
            format!(
                "UPDATE {t} SET completed = TRUE, output = ?, lease_until = NULL, expires_at = {after}
WHERE id = ? AND token = ? AND NOT completed"
            ),
            &[Output, Ttl, Id, Token],
        ),
        completed_by: Some(Statement::new(
            format!(
                "SELECT 1 FROM {t} WHERE id = ? AND token = ? AND completed AND expires_at > {NOW}"
            ),
            &[Id, Token],
        )),
        release: Statement::new(
            format!("DELETE FROM {t} WHERE id = ? AND token = ? AND NOT completed"),
            &[Id, Token],
        ),
        renew: Statement::new(
            format!(
                "UPDATE {t} SET lease_until = {after}, expires_at = {after}
WHERE id = ? AND token = ? AND NOT completed"
            ),
            &[Lease, Expiry, Id, Token],
        ),
        get: Statement::new(
            format!(
                "SELECT completed, token, fingerprint, output, {lease}, {expiry}
FROM {t} WHERE id = ? AND (NOT completed OR expires_at > {NOW})",
                lease = epoch("lease_until"),
                expiry = epoch("expires_at"),
            ),
            &[Id],
        ),
        remove: Statement::new(format!("DELETE FROM {t} WHERE id = ?"), &[Id]),
        purge: Statement::new(
            format!("DELETE FROM {t} WHERE expires_at < {NOW} ORDER BY expires_at LIMIT ?"),
            &[Limit],
        ),
        has_key_text: Statement::new(columns("'key_text'"), &[]),
        has_namespace: Statement::new(columns("'namespace', 'version'"), &[]),
        add_namespace: vec![
            format!(
                "ALTER TABLE {t} ADD COLUMN namespace TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL"
            ),
            format!("ALTER TABLE {t} ADD COLUMN version BIGINT NULL"),
        ],
        listing: listing_statements(&t, epoch, NOW, |_| "?".to_owned(), false),
        marks: MarkStatements {
            load: Statement::new(
                format!("SELECT output FROM {t} WHERE id = ? AND completed AND expires_at > {NOW}"),
                &[Id],
            ),
            clear: Statement::new(
                format!("DELETE FROM {t} WHERE id = ? AND expires_at <= {NOW}"),
                &[Id],
            ),
            insert: Statement::new(
                format!(
                    "INSERT IGNORE INTO {t}
    (id, token, fingerprint, completed, lease_until, expires_at, output, namespace, version)
VALUES (?, ?, ?, TRUE, NULL, {after}, ?, ?, ?)"
                ),
                &[Id, Token, Fingerprint, Ttl, Output, Namespace, Version],
            ),
            swap: Statement::new(
                format!(
                    "UPDATE {t} SET output = ?, expires_at = {after}
WHERE id = ? AND output = ? AND completed AND expires_at > {NOW}"
                ),
                &[Output, Ttl, Id, Expected],
            ),
            lock: Statement::new(
                format!("UPDATE {t} SET expires_at = expires_at WHERE id = ?"),
                &[Id],
            ),
        },
    }
}

impl Dialect for MySql {
    const SYNTAX: super::dialect::Syntax = super::dialect::Syntax::MySql;
    const QUOTE: char = '`';

    type ClaimStatements = ReadThenInsert;

    fn statements(table: &TableName) -> Statements<MySql> {
        statements(table)
    }

    fn lock_wait_timed_out(error: &sqlx::Error) -> bool {
        matches!(error, sqlx::Error::Database(database)
            if database
                .try_downcast_ref::<MySqlDatabaseError>()
                .is_some_and(|error| error.number() == LOCK_WAIT_TIMEOUT))
    }

    sqlx_calls!();
}
