//! The outbox's statements, one set per database. Times are microseconds since the Unix
//! epoch by the process's clock: a lease only decides when a row may be published again, and
//! a repeat is dropped by the broker's deduplication, so relays need not agree on the time.

use crate::store::sql::builder::TableName;
use crate::store::sql::dialect::Syntax;

/// The statements of one outbox table.
#[derive(Debug)]
pub(crate) struct OutboxSql {
    /// `migrate`.
    pub(crate) create: Vec<String>,
    /// Binds id, topic, payload, digest, created at; adds nothing when the id is there
    /// (PostgreSQL, SQLite: no row changed; MySQL: a duplicate-key error).
    pub(crate) insert: String,
    /// Binds id: the digest of the message already there.
    pub(crate) digest: String,
    /// PostgreSQL, SQLite: binds lease end, relay, now, batch size; takes the batch and returns
    /// its rows (`seq, id, topic, payload, attempts`). MySQL: binds now, batch size; selects the batch
    /// `FOR UPDATE SKIP LOCKED` in a transaction, and [`take`](Self::take) then takes it.
    pub(crate) claim: String,
    /// MySQL: the start of the `UPDATE` that takes the selected rows (the lease end, the relay
    /// and the row numbers are pushed after it).
    pub(crate) take: Option<(String, String, String)>,
    /// Marks rows published: `{0}` now `{1}` this pass's token `{2}` the row numbers `)`.
    pub(crate) published: (String, String, String),
    /// Binds lease end, error, seq, relay: gives a row back to be published again later.
    pub(crate) failed: String,
    /// Binds published before, batch size: deletes published rows.
    pub(crate) purge: String,
    /// Counts the rows not published yet.
    pub(crate) pending: String,
}

impl OutboxSql {
    pub(crate) fn new(syntax: Syntax, table: &TableName) -> OutboxSql {
        match syntax {
            Syntax::Postgres => postgres(table),
            Syntax::MySql => mysql(table),
            Syntax::Sqlite => sqlite(table),
        }
    }
}

const COLUMNS: &str = "seq, id, topic, payload, attempts";

fn postgres(table: &TableName) -> OutboxSql {
    let t = table.quoted('"');
    let name = table.name();
    OutboxSql {
        create: vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (
    seq          BIGSERIAL PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    topic        TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    digest       BYTEA NOT NULL,
    created_at   BIGINT NOT NULL,
    lease_until  BIGINT NOT NULL DEFAULT 0,
    relay        BIGINT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT NULL,
    published_at BIGINT NULL
)"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS \"{name}_pending\" ON {t} (seq) WHERE published_at IS NULL"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS \"{name}_published\" ON {t} (published_at) WHERE published_at IS NOT NULL"
            ),
        ],
        insert: format!(
            "INSERT INTO {t} (id, topic, payload, digest, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING"
        ),
        claim: format!(
            "UPDATE {t} SET lease_until = $1, relay = $2, attempts = attempts + 1
WHERE seq IN (SELECT seq FROM {t} WHERE published_at IS NULL AND lease_until <= $3
    ORDER BY seq LIMIT $4 FOR UPDATE SKIP LOCKED)
RETURNING {COLUMNS}"
        ),
        take: None,
        published: mark(&t),
        failed: format!(
            "UPDATE {t} SET lease_until = $1, last_error = $2, relay = NULL WHERE seq = $3 AND relay = $4"
        ),
        purge: format!(
            "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} WHERE published_at <= $1 ORDER BY seq LIMIT $2)"
        ),
        pending: format!("SELECT COUNT(*) FROM {t} WHERE published_at IS NULL"),
        digest: format!("SELECT digest FROM {t} WHERE id = $1"),
    }
}

fn mysql(table: &TableName) -> OutboxSql {
    let t = table.quoted('`');
    let name = table.name();
    OutboxSql {
        create: vec![format!(
            "CREATE TABLE IF NOT EXISTS {t} (
    seq          BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id           VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    topic        VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    payload      LONGBLOB NOT NULL,
    digest       BINARY(32) NOT NULL,
    created_at   BIGINT NOT NULL,
    lease_until  BIGINT NOT NULL DEFAULT 0,
    relay        BIGINT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT NULL,
    published_at BIGINT NULL,
    UNIQUE KEY `{name}_id` (id),
    KEY `{name}_pending` (published_at, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        )],
        // A plain insert: a repeated id fails with a duplicate-key error, which ends only the
        // statement in InnoDB, not the transaction; the outbox then compares the digests.
        insert: format!(
            "INSERT INTO {t} (id, topic, payload, digest, created_at) VALUES (?, ?, ?, ?, ?)"
        ),
        // The columns' binary collation reads as bytes; converted, they read as text.
        claim: format!(
            "SELECT seq, CONVERT(id USING utf8mb4), CONVERT(topic USING utf8mb4), payload, attempts + 1 FROM {t} WHERE published_at IS NULL AND lease_until <= ?
ORDER BY seq LIMIT ? FOR UPDATE SKIP LOCKED"
        ),
        take: Some((
            format!("UPDATE {t} SET attempts = attempts + 1, lease_until = "),
            ", relay = ".to_owned(),
            " WHERE seq IN (".to_owned(),
        )),
        published: mark(&t),
        failed: format!(
            "UPDATE {t} SET lease_until = ?, last_error = ?, relay = NULL WHERE seq = ? AND relay = ?"
        ),
        purge: format!(
            "DELETE FROM {t} WHERE published_at IS NOT NULL AND published_at <= ? ORDER BY seq LIMIT ?"
        ),
        pending: format!("SELECT COUNT(*) FROM {t} WHERE published_at IS NULL"),
        digest: format!("SELECT digest FROM {t} WHERE id = ?"),
    }
}

fn sqlite(table: &TableName) -> OutboxSql {
    let t = table.quoted('"');
    // SQLite qualifies the index, not the table it indexes.
    let pending = table.beside("_pending", '"');
    let published = table.beside("_published", '"');
    OutboxSql {
        create: vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    topic        TEXT NOT NULL,
    payload      BLOB NOT NULL,
    digest       BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    lease_until  INTEGER NOT NULL DEFAULT 0,
    relay        INTEGER NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT NULL,
    published_at INTEGER NULL
)"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {pending} ON {name} (seq) WHERE published_at IS NULL",
                name = quote_name(table)
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {published} ON {name} (published_at) WHERE published_at IS NOT NULL",
                name = quote_name(table)
            ),
        ],
        insert: format!(
            "INSERT INTO {t} (id, topic, payload, digest, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
        ),
        // One statement: SQLite runs one writer at a time, so the batch is taken atomically.
        claim: format!(
            "UPDATE {t} SET lease_until = ?, relay = ?, attempts = attempts + 1
WHERE seq IN (SELECT seq FROM {t} WHERE published_at IS NULL AND lease_until <= ? ORDER BY seq LIMIT ?)
RETURNING {COLUMNS}"
        ),
        take: None,
        published: mark(&t),
        failed: format!(
            "UPDATE {t} SET lease_until = ?, last_error = ?, relay = NULL WHERE seq = ? AND relay = ?"
        ),
        purge: format!(
            "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} WHERE published_at <= ? ORDER BY seq LIMIT ?)"
        ),
        pending: format!("SELECT COUNT(*) FROM {t} WHERE published_at IS NULL"),
        digest: format!("SELECT digest FROM {t} WHERE id = ?"),
    }
}

/// The mark's fragments (the values are pushed between them).
fn mark(t: &str) -> (String, String, String) {
    (
        format!("UPDATE {t} SET published_at = "),
        ", relay = NULL WHERE published_at IS NULL AND relay = ".to_owned(),
        " AND seq IN (".to_owned(),
    )
}

/// The table's own name, quoted, for SQLite's `CREATE INDEX schema.index ON table`.
fn quote_name(table: &TableName) -> String {
    format!("\"{}\"", table.name())
}
