//! The MySQL store over TLS (feature `mysql-tls`): a MariaDB (or MySQL) server this test
//! creates with `mariadb-install-db` in a temporary directory and starts on a free loopback
//! port with a certificate the test makes with `openssl`, and a user with a password that
//! must use TLS (`REQUIRE SSL`). Connects with `ssl-mode=VERIFY_IDENTITY` and the test's CA, by
//! URL and by options, runs a first execution and a replay through [`MySqlStore`]; a client
//! that trusts another CA is refused with a certificate error; a wrong password is refused and
//! never printed. The server is killed on drop, also when a test fails.
//!
//! (The machine's shared MariaDB on 127.0.0.1:3306 runs with `have_ssl = DISABLED`, so the
//! test brings its own.) Without `mariadb-install-db` / `mariadbd` (or `openssl`) the tests
//! print SKIPPED; `IDEMPOTENCY_REQUIRE_SERVICES=1` makes that a failure.

mod tls_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idempotency::sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlSslMode};
use idempotency::sqlx::{self, MySqlPool};
use idempotency::testing::unreachable;
use idempotency::{Idempotency, MySqlStore, Token};
use tls_support::{Certificates, Scratch, Server, certificates, free_port};

const SUITE: &str = "mysql_tls";
const PASSWORD: &str = "s3cret-My-passw0rd";

/// A MariaDB server of this test's own; killed on drop.
struct TlsMysql {
    server: Server,
    certificates: Certificates,
    _dir: Scratch,
}

/// The first of `names` found on `PATH` or in `/usr/sbin`.
fn program(names: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<_> = std::env::split_paths(&path).collect();
    dirs.push("/usr/sbin".into());
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

impl TlsMysql {
    fn start() -> Option<TlsMysql> {
        let (Some(install), Some(daemon)) = (
            program(&["mariadb-install-db", "mysql_install_db"]),
            program(&["mariadbd", "mysqld"]),
        ) else {
            unreachable(SUITE, "mariadb-install-db and mariadbd", &"not installed");
            return None;
        };
        let dir = Scratch::new("mysql-tls");
        let certificates = match certificates(dir.path()) {
            Ok(certificates) => certificates,
            Err(error) => {
                unreachable(SUITE, "openssl", &error);
                return None;
            }
        };
        let data = dir.path().join("data");
        // `--user=root` lets it run when the tests run as root (it refuses otherwise); as
        // another user it is ignored.
        let installed = Command::new(&install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            // A temporary directory of its own: two installs at once in the shared /tmp
            // have collided on a temporary table's file.
            .arg(format!("--tmpdir={}", dir.path().display()))
            .args(["--user=root", "--auth-root-authentication-method=normal"])
            .arg("--skip-test-db")
            .stdin(Stdio::null())
            .output()
            .expect("mariadb-install-db");
        assert!(
            installed.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&installed.stderr)
        );
        let init = dir.path().join("init.sql");
        std::fs::write(
            &init,
            format!(
                "CREATE DATABASE IF NOT EXISTS test;\n\
                 CREATE USER 'app'@'%' IDENTIFIED BY '{PASSWORD}' REQUIRE SSL;\n\
                 GRANT ALL ON test.* TO 'app'@'%';\n"
            ),
        )
        .expect("init.sql");
        for _ in 0..5 {
            let port = free_port();
            let mut command = Command::new(&daemon);
            command
                .arg("--no-defaults")
                .arg("--user=root")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--tmpdir={}", dir.path().display()))
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .arg(format!(
                    "--socket={}",
                    dir.path().join("mysqld.sock").display()
                ))
                .arg(format!(
                    "--pid-file={}",
                    dir.path().join("mysqld.pid").display()
                ))
                .arg(format!("--init-file={}", init.display()))
                .arg(format!("--ssl-cert={}", certificates.cert.display()))
                .arg(format!("--ssl-key={}", certificates.key.display()))
                .arg(format!("--ssl-ca={}", certificates.ca.display()))
                .args(["--innodb-buffer-pool-size=32M", "--skip-name-resolve"]);
            match Server::spawn(command, port, dir.path().join("mysqld.log")) {
                Ok(Some(server)) => {
                    return Some(TlsMysql {
                        server,
                        certificates,
                        _dir: dir,
                    });
                }
                Ok(None) => continue,
                Err(error) => {
                    unreachable(SUITE, "mariadbd", &error);
                    return None;
                }
            }
        }
        panic!(
            "could not start mariadbd on a free port: {}",
            std::fs::read_to_string(dir.path().join("mysqld.log")).unwrap_or_default()
        );
    }

    fn url(&self, password: &str, ca: &Path) -> String {
        format!(
            "mysql://app:{password}@127.0.0.1:{}/test?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
            self.server.port,
            ca.display()
        )
    }

    fn options(&self, ca: &Path) -> MySqlConnectOptions {
        MySqlConnectOptions::new()
            .host("127.0.0.1")
            .port(self.server.port)
            .username("app")
            .password(PASSWORD)
            .database("test")
            .ssl_mode(MySqlSslMode::VerifyIdentity)
            .ssl_ca(ca)
    }

    /// A pool by URL, retried for up to 10 s while the server finishes starting (it listens
    /// before its init file has run).
    async fn pool(&self) -> MySqlPool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match pool_options()
                .connect(&self.url(PASSWORD, &self.certificates.ca))
                .await
            {
                Ok(pool) => return pool,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("connect by URL: {error}\n{}", self.server.log()),
            }
        }
    }
}

fn pool_options() -> MySqlPoolOptions {
    MySqlPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
}

async fn runs_once_and_replays(pool: MySqlPool, what: &str) {
    let (_, cipher): (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .fetch_one(&pool)
        .await
        .expect("Ssl_cipher");
    assert!(!cipher.is_empty(), "{what}: the connection is TLS");

    let table = format!("idem_tls_{}", Token::random());
    let store = MySqlStore::builder(pool)
        .table(&table)
        .build()
        .expect("table name");
    store.migrate().await.expect("migrate");
    let idempotency = Idempotency::new(store);
    let runs = Arc::new(AtomicUsize::new(0));
    let first = tls_support::charge(&idempotency, &runs, "mysql_tls::charge", "order-1")
        .await
        .expect(what);
    let replay = tls_support::charge(&idempotency, &runs, "mysql_tls::charge", "order-1")
        .await
        .expect(what);
    assert_eq!(
        (first.as_str(), replay.as_str()),
        ("receipt for order-1, run 1", "receipt for order-1, run 1")
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "{what}: the body ran once");
}

#[tokio::test]
async fn verify_identity_by_url_and_by_options_runs_once_and_replays() {
    let Some(server) = TlsMysql::start() else {
        return;
    };
    runs_once_and_replays(server.pool().await, "by URL").await;
    let by_options = pool_options()
        .connect_with(server.options(&server.certificates.ca))
        .await
        .expect("connect by MySqlConnectOptions");
    runs_once_and_replays(by_options, "by options").await;
}

#[tokio::test]
async fn an_untrusted_ca_and_a_wrong_password_are_refused_and_no_password_is_printed() {
    let Some(server) = TlsMysql::start() else {
        return;
    };
    let pool = server.pool().await; // the server is up

    let untrusted = pool_options()
        .connect_with(server.options(&server.certificates.other_ca))
        .await
        .map(|_| ())
        .expect_err("a server certificate signed by an untrusted CA");
    let message = untrusted.to_string();
    assert!(
        message.contains("certificate") && message.contains("UnknownIssuer"),
        "a clear certificate error: {message}"
    );

    let wrong = "wr0ng-My-passw0rd";
    let refused = pool_options()
        .connect(&server.url(wrong, &server.certificates.ca))
        .await
        .map(|_| ())
        .expect_err("a wrong password");
    for text in [refused.to_string(), format!("{refused:?}")] {
        assert!(text.contains("Access denied"), "{text}");
        assert!(
            !text.contains(wrong) && !text.contains(PASSWORD),
            "a password in {text}"
        );
    }

    let builder = MySqlStore::builder(pool.clone());
    let store = MySqlStore::new(pool.clone());
    for text in [
        format!("{builder:?}"),
        format!("{store:?}"),
        format!("{pool:?}"),
    ] {
        assert!(!text.contains(PASSWORD), "a password in {text}");
    }
}
