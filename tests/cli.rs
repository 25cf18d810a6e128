//! The `idempotency` command-line tool, run as a binary against the real servers: records
//! written through the library (completed, in progress, expired, in two namespaces), then
//! `inspect`, `forget`, `list` (paged), `stats` and `purge-expired` read and change them, in
//! text and JSON, with the exit codes the help promises; and a URL it cannot reach.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use idempotency::testing::{service_url, unreachable};
use idempotency::{
    ClaimRequest, Completion, Error, Fingerprint, Idempotency, Key, RedisStore, SqlStore, Store,
};
use serde_json::Value;

/// Runs the binary with `args`.
fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idempotency"))
        .args(args)
        .env_remove("IDEMPOTENCY_URL")
        .output()
        .expect("run the idempotency binary")
}

/// Runs it with `--json` and parses what it printed; checks the exit code.
fn cli_json(args: &[&str], code: i32) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let output = cli(&all);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(code),
        "{args:?}: stdout {stdout}, stderr {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{args:?}: {error}: {stdout}"))
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The records every store gets: two completed calls and one in progress of `cli.charge`
/// (version 1, string keys), one completed call of `cli.ship` (version 2, a number key), and
/// with `expired` one record of `cli.old` already past its TTL.
async fn populate(store: Arc<dyn Store>, expired: bool) -> Key {
    let exec = Idempotency::new(Arc::clone(&store));
    for order in ["order-1", "order-2"] {
        let key = Key::derive("cli.charge", 1, &order).expect("key");
        let fingerprint = Fingerprint::of(&order).expect("fingerprint");
        let cents = exec
            .run(key, fingerprint, || async { Ok::<_, Error>(1999u64) })
            .await
            .expect("charge");
        assert_eq!(cents, 1999);
    }
    let key = Key::derive("cli.ship", 2, &7u64).expect("key");
    exec.run(key, Fingerprint::of(&7u64).expect("fp"), || async {
        Ok::<_, Error>("shipped".to_owned())
    })
    .await
    .expect("ship");
    let held = Key::derive("cli.charge", 1, &"order-3").expect("key");
    let fingerprint = Fingerprint::of(&"order-3").expect("fingerprint");
    store
        .claim(
            &held,
            ClaimRequest::new(fingerprint, Duration::from_secs(300)),
        )
        .await
        .expect("claim");
    if expired {
        let old = Key::derive("cli.old", 1, &"gone").expect("key");
        let fingerprint = Fingerprint::of(&"gone").expect("fingerprint");
        let claim = store
            .claim(
                &old,
                ClaimRequest::new(fingerprint, Duration::from_secs(60)),
            )
            .await
            .expect("claim");
        let idempotency::Claim::Acquired { token, .. } = claim else {
            panic!("{claim:?}");
        };
        let completion = Completion::new(
            token,
            fingerprint,
            idempotency::Bytes::from_static(b"\x00"),
            Duration::from_millis(1),
        );
        store.complete(&old, completion).await.expect("complete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    held
}

/// Every command against one store: `base` is `--url …` and its `--table`/`--prefix`.
async fn exercise(base: &[&str], store: Arc<dyn Store>, sql: bool) {
    let held = populate(store, sql).await;
    let with = |rest: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
        all.extend(base.iter().map(|s| (*s).to_owned()));
        all
    };
    let run_json = |rest: &[&str], code| {
        let args = with(rest);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cli_json(&refs, code)
    };
    let run = |rest: &[&str]| {
        let args = with(rest);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&refs)
    };

    // inspect: by the macro's derivation (a string key, a number key), by key text.
    let found = run_json(
        &[
            "inspect",
            "--name",
            "cli.charge",
            "--key-str",
            "order-1",
            "--output",
        ],
        0,
    );
    assert_eq!(found["state"], "completed", "{found}");
    assert_eq!(found["outcome"], "ok", "{found}");
    // When the output was recorded, as RFC 3339 (the record keeps it since 0.2).
    let recorded = found["recorded_at"].as_str().expect("a recording time");
    assert!(
        recorded.starts_with("20") && recorded.ends_with('Z'),
        "{found}"
    );
    assert_eq!(
        found["output"],
        serde_json::json!({ "ok": 1999 }),
        "{found}"
    );
    let shipped = run_json(
        &[
            "inspect",
            "--name",
            "cli.ship",
            "--version",
            "2",
            "--key",
            "7",
        ],
        0,
    );
    assert_eq!(shipped["state"], "completed", "{shipped}");
    assert!(shipped.get("output").is_none(), "no output unless asked");
    let in_progress = run_json(&["inspect", "--key-text", &held.to_string()], 0);
    assert_eq!(in_progress["state"], "in_progress", "{in_progress}");
    assert!(in_progress["holder"].is_string(), "{in_progress}");
    let missing = run_json(
        &["inspect", "--name", "cli.charge", "--key-str", "order-9"],
        1,
    );
    assert_eq!(missing["state"], "none", "{missing}");
    let human = run(&["inspect", "--name", "cli.charge", "--key", "\"order-2\""]);
    assert!(
        text(&human).contains("completed (Ok output, replayed)"),
        "{}",
        text(&human)
    );

    // list: the namespace's three records, page by page.
    let page = run_json(&["list", "--name", "cli.charge"], 0);
    let records = page["records"].as_array().expect("records");
    assert_eq!(records.len(), 3, "{page}");
    let states: Vec<&str> = records
        .iter()
        .map(|r| r["state"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(states.iter().filter(|s| **s == "completed").count(), 2);
    assert_eq!(states.iter().filter(|s| **s == "in_progress").count(), 1);
    let mut ids = BTreeSet::new();
    let mut after: Option<String> = None;
    for _ in 0..20 {
        let mut args = vec!["list", "--name", "cli.charge", "--limit", "1"];
        if let Some(cursor) = &after {
            args.extend(["--after", cursor.as_str()]);
        }
        let page = run_json(&args, 0);
        for record in page["records"].as_array().expect("records") {
            ids.insert(record["id"].as_str().expect("id").to_owned());
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(ids.len(), 3, "paging found every record once: {ids:?}");
    let everything = run_json(&["list", "--limit", "1000"], 0);
    let all = everything["records"].as_array().expect("records").len();
    assert_eq!(all, if sql { 5 } else { 4 }, "{everything}");

    // stats: counts by namespace and state (Redis names its hashes with --known).
    let stats = run_json(
        &["stats", "--known", "cli.charge@1", "--known", "cli.ship@2"],
        0,
    );
    assert_eq!(stats["complete"], true, "{stats}");
    let of = |name: &str| -> Value {
        stats["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .find(|n| n["namespace"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {stats}"))
    };
    let charge = of("cli.charge@1");
    assert_eq!(
        (&charge["completed"], &charge["in_progress"]),
        (&Value::from(2), &Value::from(1)),
        "{charge}"
    );
    assert_eq!(of("cli.ship@2")["completed"], 1);
    if sql {
        assert_eq!(of("cli.old@1")["expired"], 1, "{stats}");
    }
    let human = text(&run(&["stats", "--known", "cli.charge@1"]));
    assert!(human.contains("cli.charge@1"), "{human}");

    // forget: refused while in progress, forced, then gone; a second forget finds nothing.
    let refused = run(&["forget", "--key-text", &held.to_string()]);
    assert_eq!(refused.status.code(), Some(4), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--force"),
        "{refused:?}"
    );
    let forced = run_json(&["forget", "--key-text", &held.to_string(), "--force"], 0);
    assert_eq!(forced["removed"], true);
    run_json(&["inspect", "--key-text", &held.to_string()], 1);
    let forgot = run_json(
        &["forget", "--name", "cli.charge", "--key-str", "order-1"],
        0,
    );
    assert_eq!(forgot["removed"], true);
    let again = run_json(
        &["forget", "--name", "cli.charge", "--key-str", "order-1"],
        1,
    );
    assert_eq!(again["removed"], false);

    // purge-expired: SQL deletes the expired row; Redis expires its records itself.
    let purged = run_json(&["purge-expired"], 0);
    if sql {
        assert_eq!(purged["deleted"], 1, "{purged}");
        let stats = run_json(&["stats"], 0);
        assert!(
            !stats.to_string().contains("cli.old"),
            "purged rows are gone: {stats}"
        );
    } else {
        assert_eq!(purged["expires_itself"], true, "{purged}");
    }

    // Bad input: a cursor the store never gave, a key text that is not one.
    let bad = run(&["list", "--after", "not-a-cursor"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let bad = run(&["inspect", "--key-text", "nope"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        &idempotency::Token::random().to_string()[..10]
    )
}

#[tokio::test]
async fn the_tool_reads_and_clears_redis_records() {
    let url = service_url("REDIS_URL", "redis://127.0.0.1:6379");
    let connection = match idempotency::redis::Client::open(url.as_str()) {
        Ok(client) => idempotency::redis::aio::ConnectionManager::new(client).await,
        Err(error) => Err(error),
    };
    let connection = match connection {
        Ok(connection) => connection,
        Err(error) => return unreachable("cli (redis)", &url, &error),
    };
    let prefix = format!("{}:", unique("idempotency-cli-test"));
    let store = RedisStore::builder(connection)
        .prefix(prefix.as_str())
        .build()
        .expect("prefix");
    exercise(
        &["--url", &url, "--prefix", &prefix],
        Arc::new(store),
        false,
    )
    .await;
}

#[tokio::test]
async fn the_tool_reads_and_clears_postgres_records() {
    let url = service_url("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test");
    let pool = match idempotency::sqlx::PgPool::connect(&url).await {
        Ok(pool) => pool,
        Err(error) => return unreachable("cli (postgres)", &url, &error),
    };
    let table = unique("cli");
    let store = SqlStore::builder(pool.clone())
        .table(table.as_str())
        .build()
        .expect("table");
    store.migrate().await.expect("migrate");
    exercise(&["--url", &url, "--table", &table], Arc::new(store), true).await;
    idempotency::sqlx::query(&format!("DROP TABLE \"{table}\""))
        .execute(&pool)
        .await
        .expect("drop");
    idempotency::sqlx::query(&format!(
        "DROP FUNCTION \"{table}_claim\"(bytea, bytea, bytea, int8, int8, text, text, int8), \"{table}_claim\"(bytea, bytea, bytea, int8, int8, text)"
    ))
        .execute(&pool)
        .await
        .expect("drop");
}

#[tokio::test]
async fn the_tool_reads_and_clears_mysql_records() {
    let url = service_url("MYSQL_URL", "mysql://root@127.0.0.1:3306/test");
    let pool = match idempotency::sqlx::MySqlPool::connect(&url).await {
        Ok(pool) => pool,
        Err(error) => return unreachable("cli (mysql)", &url, &error),
    };
    let table = unique("cli");
    let store = SqlStore::builder(pool.clone())
        .table(table.as_str())
        .build()
        .expect("table");
    store.migrate().await.expect("migrate");
    exercise(&["--url", &url, "--table", &table], Arc::new(store), true).await;
    idempotency::sqlx::query(&format!("DROP TABLE `{table}`"))
        .execute(&pool)
        .await
        .expect("drop");
}

#[tokio::test]
async fn the_tool_reads_and_clears_sqlite_records() {
    let path = std::env::temp_dir().join(format!("{}.db", unique("idempotency-cli")));
    let url = format!("sqlite://{}", path.display());
    let options = url
        .parse::<idempotency::sqlx::sqlite::SqliteConnectOptions>()
        .expect("url")
        .create_if_missing(true);
    let pool = idempotency::sqlx::SqlitePool::connect_with(options)
        .await
        .expect("sqlite");
    let store = SqlStore::builder(pool.clone()).build().expect("store");
    store.migrate().await.expect("migrate");
    exercise(&["--url", &url], Arc::new(store), true).await;
    pool.close().await;
    let _ = std::fs::remove_file(&path);
}

#[test]
fn the_tool_refuses_a_store_it_cannot_reach() {
    for url in [
        "redis://127.0.0.1:1",
        "postgres://postgres@127.0.0.1:1/test",
        "mysql://root@127.0.0.1:1/test",
        "sqlite:///nonexistent/dir/records.db",
    ] {
        let output = cli(&["stats", "--url", url, "--timeout", "2s"]);
        assert_eq!(output.status.code(), Some(3), "{url}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("cannot reach"), "{url}: {stderr}");
    }
    let output = cli(&["stats", "--url", "ftp://127.0.0.1/x"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let output = cli(&["stats"]);
    assert_eq!(output.status.code(), Some(2), "no URL: {output:?}");
    let output = cli(&[
        "inspect",
        "--url",
        "redis://127.0.0.1:1",
        "--name",
        "x",
        "--key",
        "not json",
    ]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "the key is checked first: {output:?}"
    );
}
