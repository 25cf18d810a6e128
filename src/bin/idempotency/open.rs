//! The store a URL names, connected now: a URL the tool cannot reach is an error before any
//! command runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use idempotency::Store;

use crate::Failure;

/// The schemes of every store, built into this binary or not.
const KNOWN_SCHEMES: [&str; 7] = [
    "redis",
    "rediss",
    "postgres",
    "postgresql",
    "mysql",
    "mariadb",
    "sqlite",
];

/// The hash a Redis key holds for a namespace and version.
type Namer = dyn Fn(&str, u32) -> String;

/// A connected store, and what the output needs to know of it.
pub(crate) struct Opened {
    pub(crate) store: Arc<dyn Store>,
    /// Redis: the hash of a namespace, to name the hashes its keys hold.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    namer: Option<Box<Namer>>,
}

impl Opened {
    pub(crate) async fn connect(
        url: &str,
        table: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Opened, Failure> {
        let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
        let shown = redacted(url);
        let unreachable = |error: &dyn std::fmt::Display| {
            Failure::Store(format!("cannot reach {shown}: {error}"))
        };
        let _ = (table, prefix, timeout, &unreachable);
        match scheme {
            #[cfg(feature = "redis")]
            "redis" | "rediss" | "redis+unix" | "unix" => {
                use idempotency::RedisStore;
                use idempotency::redis::aio::{ConnectionManager, ConnectionManagerConfig};
                let client = idempotency::redis::Client::open(url)
                    .map_err(|error| Failure::Usage(format!("{shown}: {error}")))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1);
                let connection = tokio::time::timeout(
                    timeout,
                    ConnectionManager::new_with_config(client, config),
                )
                .await
                .map_err(|_| unreachable(&format!("no answer within {timeout:?}")))?
                .map_err(|error| unreachable(&error))?;
                let store = RedisStore::builder(connection)
                    .prefix(prefix)
                    .response_timeout(timeout)
                    .build()
                    .map_err(|error| Failure::Usage(error.to_string()))?;
                let namer = store.clone();
                Ok(Opened {
                    store: Arc::new(store),
                    namer: Some(Box::new(move |name, version| {
                        namer.namespace_hash(name, version)
                    })),
                })
            }
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                sql::<idempotency::sqlx::Postgres>(url, &shown, table, timeout, 2, |o| o).await
            }
            #[cfg(feature = "mysql")]
            "mysql" | "mariadb" => {
                let url = url.replacen("mariadb://", "mysql://", 1);
                sql::<idempotency::sqlx::MySql>(&url, &shown, table, timeout, 2, |o| o).await
            }
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                // An operator's tool never creates a database: a wrong path is an error.
                let no_create = |options: idempotency::sqlx::sqlite::SqliteConnectOptions| {
                    options.create_if_missing(false)
                };
                sql::<idempotency::sqlx::Sqlite>(url, &shown, table, timeout, 1, no_create).await
            }
            _ if KNOWN_SCHEMES.contains(&scheme) => Err(Failure::Usage(format!(
                "this build of idempotency has no {scheme} store: install it with \
                     `cargo install idempotency --features cli,{feature}`",
                feature = match scheme {
                    "rediss" => "redis-tls",
                    "postgresql" => "postgres",
                    "mariadb" => "mysql",
                    other => other,
                }
            ))),
            _ => Err(Failure::Usage(format!(
                "`{shown}` is not a store URL: redis://, rediss://, postgres://, mysql:// or \
                 sqlite://"
            ))),
        }
    }

    /// The namespaces `known` names, by the hash a Redis key holds; empty for a store whose
    /// rows name their namespace.
    pub(crate) fn known_namespaces(&self, known: &[(String, u32)]) -> HashMap<String, String> {
        let Some(namer) = &self.namer else {
            return HashMap::new();
        };
        known
            .iter()
            .map(|(name, version)| (namer(name, *version), format!("{name}@{version}")))
            .collect()
    }
}

/// `--known` values: `NAME@VERSION`, or `NAME` for version 1.
pub(crate) fn parse_known(known: &[String]) -> Result<Vec<(String, u32)>, Failure> {
    known
        .iter()
        .map(|entry| match entry.rsplit_once('@') {
            Some((name, version)) => version
                .parse::<u32>()
                .map(|version| (name.to_owned(), version))
                .map_err(|_| {
                    Failure::Usage(format!("--known `{entry}`: the version is not a number"))
                }),
            None => Ok((entry.clone(), 1)),
        })
        .collect()
}

/// The options `url` gives, how the database is reached.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
type Options<DB> =
    <<DB as idempotency::sqlx::Database>::Connection as idempotency::sqlx::Connection>::Options;

/// A SQL store on a pool of `connections` to `url` (`adjust` changes its options), connected
/// now: a URL that does not parse is bad input, one that does not connect is unreachable.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
async fn sql<DB: idempotency::SqlDialect>(
    url: &str,
    shown: &str,
    table: &str,
    timeout: Duration,
    connections: u32,
    adjust: impl FnOnce(Options<DB>) -> Options<DB>,
) -> Result<Opened, Failure> {
    let options = url
        .parse::<Options<DB>>()
        .map_err(|error| Failure::Usage(format!("{shown}: {error}")))?;
    let pool = idempotency::sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(connections)
        .acquire_timeout(timeout)
        .connect_with(adjust(options))
        .await
        .map_err(|error| Failure::Store(format!("cannot reach {shown}: {error}")))?;
    let store = idempotency::SqlStore::builder(pool)
        .table(table)
        .build()
        .map_err(|error| Failure::Usage(error.to_string()))?;
    Ok(Opened {
        store: Arc::new(store),
        namer: None,
    })
}

/// `url` without its password: what lies between `://` and the last `@` keeps only its user,
/// and a `password=` parameter its name.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let mut shown = match rest.rfind('@') {
        Some(at) => {
            let credentials = &rest[..at];
            let user = credentials
                .split_once(':')
                .map_or(credentials, |(user, _)| user);
            let password = if credentials.contains(':') {
                ":***"
            } else {
                ""
            };
            format!("{scheme}://{user}{password}{}", &rest[at..])
        }
        None => url.to_owned(),
    };
    for name in ["password=", "pass=", "pwd="] {
        let mut from = 0;
        while let Some(found) = shown[from..].find(name) {
            let start = from + found + name.len();
            let end = shown[start..]
                .find(['&', '#'])
                .map_or(shown.len(), |end| start + end);
            shown.replace_range(start..end, "***");
            from = start + 3;
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redacted("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redacted("redis://:pw@h/0"), "redis://:***@h/0");
        assert_eq!(redacted("sqlite://a@b.db"), "sqlite://a@b.db");
        assert_eq!(
            redacted("postgres://app:p/w@db/x"),
            "postgres://app:***@db/x",
            "a raw slash in the password"
        );
        assert_eq!(
            redacted("mysql://db/x?user=a&password=secret&ssl-mode=required"),
            "mysql://db/x?user=a&password=***&ssl-mode=required"
        );
    }
}
