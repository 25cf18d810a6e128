//! `idempotency`: look at and clear the records of a Redis, PostgreSQL, MySQL or SQLite store
//! from a shell, for support staff and operators (feature `cli`, with the features of the
//! stores to reach). `idempotency --help` says how; the README has a transcript.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use idempotency::store::{Cursor, ListRequest, Purged};
use idempotency::{Digest, Error, Idempotency, Key, StoreError};

mod open;
mod show;

use open::Opened;
use show::Output;

/// Look at and clear idempotency records in a store.
///
/// Exit codes: 0 done; 1 no record under the key (`inspect`, `forget`); 2 a bad command
/// line; 3 the store could not be reached or failed; 4 refused (`forget` of a key in
/// progress without `--force`); 5 the store cannot do this (listing a Redis Cluster).
#[derive(Debug, Parser)]
#[command(name = "idempotency", version, about, long_about)]
struct Cli {
    /// The store: redis://, rediss://, postgres://, mysql:// or sqlite:// (a file that must
    /// exist). Also read from IDEMPOTENCY_URL.
    #[arg(long, env = "IDEMPOTENCY_URL", hide_env_values = true, global = true)]
    url: Option<String>,
    /// The SQL store's table.
    #[arg(long, default_value = "idempotency_records", global = true)]
    table: String,
    /// The Redis store's key prefix.
    #[arg(long, default_value = "idempotency:", global = true)]
    prefix: String,
    /// How long to wait for the store to connect (Redis: also for each answer; a SQL
    /// statement is not bounded, since `stats` and `list --name` read the whole table).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    timeout: Duration,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the record under a key: its state, times and lease holder (the output with
    /// `--output`).
    Inspect {
        #[command(flatten)]
        key: KeyArgs,
        /// Also print the stored output (as JSON).
        #[arg(long)]
        output: bool,
    },
    /// Remove the record under a key, so that the next call with it runs again. Refused
    /// while a call holds the key, unless `--force` (for a call known to be dead).
    Forget {
        #[command(flatten)]
        key: KeyArgs,
        /// Remove it even while a call holds the key: that call's result will not be stored,
        /// and a retry may run beside it.
        #[arg(long)]
        force: bool,
    },
    /// List records, of one namespace or all, page by page.
    List {
        /// Only this namespace (a function's `name`, a route's namespace).
        #[arg(long)]
        name: Option<String>,
        /// The namespace's version.
        #[arg(long, default_value_t = 1, requires = "name")]
        version: u32,
        /// Records a page (Redis: a hint to SCAN).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this cursor (the `next` a previous page printed).
        #[arg(long)]
        after: Option<String>,
    },
    /// Count records by namespace and state.
    Stats {
        /// Redis: read at most this many keys (the counts then say they are partial).
        #[arg(long, default_value_t = 1_000_000)]
        max_records: u64,
        /// Redis: name a namespace hash in the output (`NAME@VERSION`, repeatable); Redis
        /// keys hold only a hash of the namespace.
        #[arg(long = "known", value_name = "NAME@VERSION")]
        known: Vec<String>,
    },
    /// Delete expired records (SQL; Redis expires its records itself).
    PurgeExpired {
        /// Rows a statement deletes.
        #[arg(long, default_value_t = 1000)]
        batch: u32,
        /// Stop after this many rows.
        #[arg(long, default_value_t = u64::MAX)]
        max: u64,
    },
}

/// Which key: the macro's derivation (`--name`, `--version` and `--key`, `--key-str` or
/// `--digest`), or a key's text as logs print it (`--key-text`).
#[derive(Debug, Args)]
struct KeyArgs {
    /// The function's `name` (default in the code: its module path and name) or the route's
    /// namespace.
    #[arg(long, required_unless_present = "key_text")]
    name: Option<String>,
    /// The namespace's version (`version = …`, default 1).
    #[arg(long, default_value_t = 1)]
    version: u32,
    /// The key value as JSON, as the code's `key = …` holds it: `'"order-1234"'`, `42`,
    /// `'["a",1]'`. A struct or enum key is not JSON's: use `--digest`.
    #[arg(long, group = "material")]
    key: Option<String>,
    /// The key value as a plain string: `--key-str order-1234` is `--key '"order-1234"'`.
    #[arg(long, group = "material")]
    key_str: Option<String>,
    /// The key's digest (64 hex digits), as logs and `Key::digest` give it.
    #[arg(long, group = "material")]
    digest: Option<String>,
    /// The whole key as its text (`{namespace}:{version}:{digest}`), as logs print it.
    #[arg(long, conflicts_with_all = ["name", "material"])]
    key_text: Option<String>,
}

/// What a command ends with.
#[derive(Debug)]
enum Failure {
    /// No record under the key.
    NotFound,
    /// Usage: a bad key or cursor.
    Usage(String),
    /// The store could not be reached or failed.
    Store(String),
    /// Refused: a key in progress.
    Refused(String),
    /// The store cannot do this.
    Unsupported(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::NotFound => 1,
            Failure::Usage(_) => 2,
            Failure::Store(_) => 3,
            Failure::Refused(_) => 4,
            Failure::Unsupported(_) => 5,
        }
    }

    fn of_store(error: StoreError) -> Failure {
        match error {
            StoreError::Unsupported(what) => {
                Failure::Unsupported(format!("this store does not support {what}"))
            }
            StoreError::InvalidRequest(message) => Failure::Usage(message),
            other => {
                let mut message = show::error_chain(&other);
                if ["does not exist", "doesn't exist", "no such table"]
                    .iter()
                    .any(|missing| message.contains(missing))
                {
                    message.push_str(
                        " (is --table or --prefix the application's? The application creates \
                         its table with `migrate()`; this tool never does)",
                    );
                }
                Failure::Store(message)
            }
        }
    }

    fn of_error(error: Error) -> Failure {
        match error {
            Error::InProgress { key, retry_after } if retry_after.is_zero() => {
                Failure::Refused(format!(
                    "`{key}` is held by a call whose lease has passed (crashed or hung; the \
                     next call with the key takes it over): not removed; pass --force to \
                     remove it now"
                ))
            }
            Error::InProgress { key, retry_after } => Failure::Refused(format!(
                "a call holds `{key}` (its lease passes in {}): not removed; wait, or pass \
                 --force if that call is known to be dead",
                humantime::format_duration(Duration::from_secs(retry_after.as_secs()))
            )),
            Error::Store { source, .. } => Failure::of_store(source),
            other => Failure::Store(show::error_chain(&other)),
        }
    }
}

impl KeyArgs {
    fn key(&self) -> Result<Key, Failure> {
        if let Some(text) = &self.key_text {
            return parse_key_text(text);
        }
        let Some(name) = self.name.clone() else {
            return Err(Failure::Usage("give --name, or --key-text".into()));
        };
        if let Some(hex) = &self.digest {
            let digest = Digest::from_hex(hex)
                .ok_or_else(|| Failure::Usage(format!("--digest `{hex}` is not 64 hex digits")))?;
            return Ok(Key::new(name, self.version, digest));
        }
        let value = match (&self.key, &self.key_str) {
            (Some(json), _) => serde_json::from_str::<serde_json::Value>(json).map_err(|e| {
                Failure::Usage(format!(
                    "--key `{json}` is not JSON ({e}); a string is quoted: --key '\"{json}\"', \
                     or use --key-str"
                ))
            })?,
            (None, Some(text)) => serde_json::Value::String(text.clone()),
            (None, None) => {
                return Err(Failure::Usage(
                    "give the key value: --key JSON, --key-str TEXT or --digest HEX".into(),
                ));
            }
        };
        Key::derive(name, self.version, &value)
            .map_err(|error| Failure::Usage(format!("the key value cannot be hashed: {error}")))
    }
}

/// `{namespace}:{version}:{digest}`: the namespace may hold `:`, the version and the digest
/// do not.
fn parse_key_text(text: &str) -> Result<Key, Failure> {
    let bad = || {
        Failure::Usage(format!(
            "--key-text `{text}` is not `{{namespace}}:{{version}}:{{64 hex digits}}`"
        ))
    };
    let (rest, hex) = text.rsplit_once(':').ok_or_else(bad)?;
    let (namespace, version) = rest.rsplit_once(':').ok_or_else(bad)?;
    let version = version.parse::<u32>().map_err(|_| bad())?;
    let digest = Digest::from_hex(hex).ok_or_else(bad)?;
    Ok(Key::new(namespace.to_owned(), version, digest))
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let Some(url) = cli.url.as_deref() else {
        return Err(Failure::Usage(
            "give the store's URL: --url redis://…, postgres://…, mysql://… or sqlite://… (or \
             set IDEMPOTENCY_URL)"
                .into(),
        ));
    };
    // A bad key or name is said before the store is asked anything.
    let key = match &cli.command {
        Command::Inspect { key, .. } | Command::Forget { key, .. } => Some(key.key()?),
        _ => None,
    };
    let known = match &cli.command {
        Command::Stats { known, .. } => open::parse_known(known)?,
        _ => Vec::new(),
    };
    let opened = Opened::connect(url, &cli.table, &cli.prefix, cli.timeout).await?;
    let out = Output::new(cli.json);
    match (cli.command, key) {
        (Command::Inspect { output, .. }, Some(key)) => {
            let idempotency = Idempotency::new(opened.store.clone());
            let found = if output {
                idempotency.inspect_with_output(&key).await
            } else {
                idempotency.inspect(&key).await
            };
            let found = found.map_err(Failure::of_error)?;
            out.inspection(&key, found.as_ref());
            found.map(|_| ()).ok_or(Failure::NotFound)
        }
        (Command::Forget { force, .. }, Some(key)) => {
            let idempotency = Idempotency::new(opened.store.clone());
            let removed = if force {
                idempotency.forget_forced(&key).await
            } else {
                idempotency.forget(&key).await
            };
            let removed = removed.map_err(Failure::of_error)?;
            out.forgotten(&key, removed);
            if removed {
                Ok(())
            } else {
                Err(Failure::NotFound)
            }
        }
        (
            Command::List {
                name,
                version,
                limit,
                after,
            },
            _,
        ) => {
            let mut request = match name {
                Some(name) => ListRequest::namespace(name, version),
                None => ListRequest::all(),
            }
            .limit(limit);
            if let Some(after) = after {
                request = request.after(Cursor::from(after));
            }
            let listing = opened
                .store
                .list(request)
                .await
                .map_err(Failure::of_store)?;
            out.listing(&listing);
            Ok(())
        }
        (Command::Stats { max_records, .. }, _) => {
            let stats = opened
                .store
                .stats(max_records)
                .await
                .map_err(Failure::of_store)?;
            let names = opened.known_namespaces(&known);
            out.stats(&stats, &names);
            Ok(())
        }
        (Command::PurgeExpired { batch, max }, _) => {
            let batch = batch.max(1);
            let mut deleted = 0u64;
            loop {
                let limit = u32::try_from((max - deleted).min(u64::from(batch))).unwrap_or(batch);
                if limit == 0 {
                    break;
                }
                match opened
                    .store
                    .purge_expired(limit)
                    .await
                    .map_err(Failure::of_store)?
                {
                    Purged::ExpiresItself => {
                        out.purged(None);
                        return Ok(());
                    }
                    Purged::Deleted(n) => {
                        deleted += n;
                        if n < u64::from(limit) {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            out.purged(Some(deleted));
            Ok(())
        }
        (Command::Inspect { .. } | Command::Forget { .. }, None) => {
            Err(Failure::Usage("give the key".into()))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("idempotency: cannot start: {error}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            show::failure(&failure, json);
            ExitCode::from(failure.code())
        }
    }
}
