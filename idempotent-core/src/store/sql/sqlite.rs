//! SQLite: the claim reads first and inserts only when no live record is there (in a
//! transaction: inserts first; see [`claim`](super::claim)); times come from this process's
//! clock, bound as microseconds since the Unix epoch (SQLite runs in the application, so there
//! is no other clock to share).

use sqlx::Sqlite;

use super::builder::TableName;
use super::claim::ReadThenInsert;
use super::dialect::{
    Clock, Dialect, MarkStatements, Statement, Statements, listing_statements, sqlx_calls,
};

fn statements(table: &TableName) -> Statements<Sqlite> {
    use super::dialect::Param::*;
    let t = table.quoted('"');
    // SQLite qualifies the index, not the table it indexes.
    let index = table.beside("_expires_at", '"');
    let until = "(CASE WHEN completed THEN expires_at ELSE lease_until END)";
    let columns = |names: &str| {
        format!(
            "SELECT COUNT(*) FROM pragma_table_info('{name}'{schema}) WHERE name IN ({names})",
            name = table.name(),
            schema = table
                .schema()
                .map_or_else(String::new, |schema| format!(", '{schema}'")),
        )
    };
    Statements {
        create: vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (
    id          BLOB PRIMARY KEY NOT NULL,
    token       BLOB NOT NULL,
    fingerprint BLOB NOT NULL,
    completed   INTEGER NOT NULL,
    lease_until INTEGER,
    expires_at  INTEGER NOT NULL,
    output      BLOB,
    namespace   TEXT,
    version     INTEGER
)"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {index} ON \"{}\" (expires_at)",
                table.name()
            ),
        ],
        claim: ReadThenInsert {
            read: Statement::new(
                format!(
                    "SELECT completed, fingerprint, output, {until} - ?1 FROM {t} WHERE id = ?2"
                ),
                &[Now, Id],
            ),
            read_locked: None,
            insert: Statement::new(
                format!(
                    "INSERT INTO {t}
    (id, token, fingerprint, completed, lease_until, expires_at, output, namespace, version)
VALUES (?1, ?2, ?3, 0, ?4, ?5, NULL, ?6, ?7)
ON CONFLICT (id) DO NOTHING"
                ),
                &[Id, Token, Fingerprint, Lease, Expiry, Namespace, Version],
            ),
            take_over: Statement::new(
                format!(
                    "UPDATE {t} SET token = ?2, fingerprint = ?3, completed = 0,
    lease_until = ?4, expires_at = ?5, output = NULL, namespace = ?7, version = ?8
WHERE id = ?1 AND {until} <= ?6"
                ),
                &[
                    Id,
                    Token,
                    Fingerprint,
                    Lease,
                    Expiry,
                    Now,
                    Namespace,
                    Version,
                ],
            ),
        },
        complete: Statement::new(
            format!(
                "UPDATE {t} SET completed = 1, output = ?3, lease_until = NULL, expires_at = ?4
WHERE id = ?1 AND token = ?2 AND NOT completed"
            ),
            &[Id, Token, Output, Ttl],
        ),
        completed_by: Some(Statement::new(
            format!(
                "SELECT 1 FROM {t} WHERE id = ?1 AND token = ?2 AND completed AND expires_at > ?3"
            ),
            &[Id, Token, Now],
        )),
        release: Statement::new(
            format!("DELETE FROM {t} WHERE id = ?1 AND token = ?2 AND NOT completed"),
            &[Id, Token],
        ),
        renew: Statement::new(
            format!(
                "UPDATE {t} SET lease_until = ?3, expires_at = ?4
WHERE id = ?1 AND token = ?2 AND NOT completed"
            ),
            &[Id, Token, Lease, Expiry],
        ),
        get: Statement::new(
            format!(
                "SELECT completed, token, fingerprint, output, lease_until, expires_at
FROM {t} WHERE id = ?1 AND (NOT completed OR expires_at > ?2)"
            ),
            &[Id, Now],
        ),
        remove: Statement::new(format!("DELETE FROM {t} WHERE id = ?1"), &[Id]),
        purge: Statement::new(
            format!(
                "DELETE FROM {t} WHERE id IN (
    SELECT id FROM {t} WHERE expires_at < ?1 ORDER BY expires_at LIMIT ?2
)"
            ),
            &[Now, Limit],
        ),
        has_key_text: Statement::new(columns("'key_text'"), &[]),
        has_namespace: Statement::new(columns("'namespace', 'version'"), &[]),
        add_namespace: vec![
            format!("ALTER TABLE {t} ADD COLUMN namespace TEXT"),
            format!("ALTER TABLE {t} ADD COLUMN version INTEGER"),
        ],
        listing: listing_statements(&t, str::to_owned, "?1", |n| format!("?{n}"), true),
        marks: MarkStatements {
            load: Statement::new(
                format!("SELECT output FROM {t} WHERE id = ?1 AND completed AND expires_at > ?2"),
                &[Id, Now],
            ),
            clear: Statement::new(
                format!("DELETE FROM {t} WHERE id = ?1 AND expires_at <= ?2"),
                &[Id, Now],
            ),
            insert: Statement::new(
                format!(
                    "INSERT INTO {t}
    (id, token, fingerprint, completed, lease_until, expires_at, output, namespace, version)
VALUES (?1, ?2, ?3, 1, NULL, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING"
                ),
                &[Id, Token, Fingerprint, Ttl, Output, Namespace, Version],
            ),
            swap: Statement::new(
                format!(
                    "UPDATE {t} SET output = ?2, expires_at = ?3
WHERE id = ?1 AND output = ?4 AND completed AND expires_at > ?5"
                ),
                &[Id, Output, Ttl, Expected, Now],
            ),
            lock: Statement::new(
                format!("UPDATE {t} SET expires_at = expires_at WHERE id = ?1"),
                &[Id],
            ),
        },
    }
}

impl Dialect for Sqlite {
    const SYNTAX: super::dialect::Syntax = super::dialect::Syntax::Sqlite;
    const CLOCK: Clock = Clock::Process;

    type ClaimStatements = ReadThenInsert;

    fn statements(table: &TableName) -> Statements<Sqlite> {
        statements(table)
    }

    sqlx_calls!();
}
