//! The PostgreSQL store over TLS (feature `postgres-tls`): a PostgreSQL this test creates with
//! `initdb` in a temporary directory and starts with `ssl = on` on a free loopback port, with a
//! certificate the test makes with `openssl`; password (SCRAM) authentication over TCP.
//! Connects with `sslmode=verify-full` and the test's CA, by URL and by builder, runs a first
//! execution and a replay through [`PostgresStore`]; a client that trusts another CA is
//! refused with a certificate error; a wrong password is refused and never printed. The
//! server is stopped (`pg_ctl stop -m immediate`) on drop, also when a test fails.
//!
//! Without `initdb` / `pg_ctl` (or `openssl`) the tests print SKIPPED;
//! `IDEMPOTENCY_REQUIRE_SERVICES=1` makes that a failure. As root, the server runs as the
//! `postgres` user (`runuser`), since PostgreSQL refuses to run as root.

mod tls_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency::sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use idempotency::sqlx::{self, PgPool};
use idempotency::testing::unreachable;
use idempotency::{Idempotency, PostgresStore, Token};
use tls_support::{Certificates, Scratch, certificates, free_port};

const SUITE: &str = "postgres_tls";
const PASSWORD: &str = "s3cret-Pg-passw0rd";

/// A PostgreSQL server of this test's own; stopped on drop.
struct TlsPostgres {
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    port: u16,
    certificates: Certificates,
    dir: Scratch,
}

/// The directory of `initdb` and `pg_ctl`: on `PATH`, or the newest `/usr/lib/postgresql/*/bin`.
fn postgres_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    });
    on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
            .filter(|bin| bin.join("initdb").is_file())
            .collect();
        versions.sort();
        versions.pop()
    })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

impl TlsPostgres {
    fn start() -> Option<TlsPostgres> {
        let Some(bin) = postgres_bin() else {
            unreachable(
                SUITE,
                "initdb and pg_ctl",
                &"not on PATH nor in /usr/lib/postgresql",
            );
            return None;
        };
        let dir = Scratch::new("postgres-tls");
        let certificates = match certificates(dir.path()) {
            Ok(certificates) => certificates,
            Err(error) => {
                unreachable(SUITE, "openssl", &error);
                return None;
            }
        };
        let as_postgres = running_as_root();
        let pwfile = dir.path().join("password");
        std::fs::write(&pwfile, PASSWORD).expect("password file");
        if as_postgres {
            let chown = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(
                chown.success(),
                "chown -R postgres {}",
                dir.path().display()
            );
        }
        // The server refuses a key others can read.
        set_mode(&certificates.key, 0o600);
        let mut server = TlsPostgres {
            data: dir.path().join("data"),
            bin,
            as_postgres,
            port: 0,
            certificates,
            dir,
        };
        let initdb = server
            .command("initdb")
            .arg("-D")
            .arg(&server.data)
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--auth-local=trust",
            ])
            .args(["--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output();
        match initdb {
            Ok(output) if output.status.success() => {}
            Ok(output) => panic!("initdb failed: {}", String::from_utf8_lossy(&output.stderr)),
            Err(error) => {
                unreachable(SUITE, "initdb", &error);
                return None;
            }
        }
        for _ in 0..5 {
            server.port = free_port();
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={} -c ssl_key_file={} -c fsync=off",
                server.port,
                server.dir.path().display(),
                server.certificates.cert.display(),
                server.certificates.key.display(),
            );
            let started = server
                .command("pg_ctl")
                .arg("-D")
                .arg(&server.data)
                .arg("-l")
                .arg(server.dir.path().join("postgres.log"))
                .args(["-w", "-t", "30", "-o", &options, "start"])
                .stdout(Stdio::null())
                .status()
                .expect("pg_ctl");
            if started.success() {
                return Some(server);
            }
            server.stop(); // whatever half started
        }
        panic!(
            "could not start PostgreSQL on a free port: {}",
            std::fs::read_to_string(server.dir.path().join("postgres.log")).unwrap_or_default()
        );
    }

    /// `program` from the PostgreSQL directory, as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "20", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn url(&self, password: &str, ca: &Path) -> String {
        format!(
            "postgres://postgres:{password}@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
            self.port,
            ca.display()
        )
    }

    /// Built field by field: the same as [`url`](Self::url) with the right password.
    fn options(&self, ca: &Path) -> PgConnectOptions {
        PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port)
            .username("postgres")
            .password(PASSWORD)
            .database("postgres")
            .ssl_mode(PgSslMode::VerifyFull)
            .ssl_root_cert(ca)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
}

/// A first execution and a replay through a store on `pool`, and proof that `pool`'s
/// connections are encrypted.
async fn runs_once_and_replays(pool: PgPool, what: &str) {
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .expect("pg_stat_ssl");
    assert!(encrypted, "{what}: the connection is TLS");

    let table = format!("idem_tls_{}", Token::random());
    let store = PostgresStore::builder(pool)
        .table(&table)
        .build()
        .expect("table name");
    store.migrate().await.expect("migrate");
    let idempotency = Idempotency::new(store);
    let runs = Arc::new(AtomicUsize::new(0));
    let first = tls_support::charge(&idempotency, &runs, "postgres_tls::charge", "order-1")
        .await
        .expect("first");
    let replay = tls_support::charge(&idempotency, &runs, "postgres_tls::charge", "order-1")
        .await
        .expect("replay");
    assert_eq!(first, "receipt for order-1, run 1", "{what}");
    assert_eq!(
        replay, first,
        "{what}: the retry gets the first result back"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "{what}: the body ran once");
}

#[tokio::test]
async fn verify_full_by_url_and_by_options_runs_once_and_replays() {
    let Some(server) = TlsPostgres::start() else {
        return;
    };
    let ca = server.certificates.ca.clone();
    let by_url = pool_options()
        .connect(&server.url(PASSWORD, &ca))
        .await
        .expect("connect by URL with sslmode=verify-full");
    runs_once_and_replays(by_url, "by URL").await;

    let by_options = pool_options()
        .connect_with(server.options(&ca))
        .await
        .expect("connect by PgConnectOptions with VerifyFull");
    runs_once_and_replays(by_options, "by options").await;
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_is_refused() {
    let Some(server) = TlsPostgres::start() else {
        return;
    };
    let refused = pool_options()
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(server.options(&server.certificates.other_ca))
        .await
        .map(|_| ())
        .expect_err("a server certificate signed by an untrusted CA");
    let message = refused.to_string();
    assert!(
        message.contains("certificate") && message.contains("UnknownIssuer"),
        "a clear certificate error: {message}"
    );
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_no_password_is_printed() {
    let Some(server) = TlsPostgres::start() else {
        return;
    };
    let ca = server.certificates.ca.clone();
    let wrong = "wr0ng-Pg-passw0rd";
    let refused = pool_options()
        .acquire_timeout(Duration::from_secs(5))
        .connect(&server.url(wrong, &ca))
        .await
        .map(|_| ())
        .expect_err("a wrong password");
    for text in [refused.to_string(), format!("{refused:?}")] {
        assert!(text.contains("password authentication failed"), "{text}");
        assert!(
            !text.contains(wrong) && !text.contains(PASSWORD),
            "a password in {text}"
        );
    }

    // A store, its builder and its pool print no password either.
    let pool = pool_options()
        .connect_with(server.options(&ca))
        .await
        .expect("connect");
    let builder = PostgresStore::builder(pool.clone());
    let store = PostgresStore::new(pool.clone());
    for text in [
        format!("{builder:?}"),
        format!("{store:?}"),
        format!("{pool:?}"),
    ] {
        assert!(!text.contains(PASSWORD), "a password in {text}");
    }
}
