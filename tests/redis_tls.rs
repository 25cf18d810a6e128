//! The Redis store over TLS (`rediss://`, feature `redis-tls`): a `redis-server` this test
//! starts with `--tls-port` and a certificate it makes with `openssl`, a client that trusts
//! the test's CA, a first execution and a replay through [`RedisStore`]; a client that trusts
//! another CA is refused with a certificate error and the body does not run.
//!
//! Without `redis-server` (or `openssl`) the tests print SKIPPED;
//! `IDEMPOTENCY_REQUIRE_SERVICES=1` makes that a failure.

mod tls_support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency::redis::aio::ConnectionManager;
use idempotency::redis::{self, Client, TlsCertificates};
use idempotency::testing::unreachable;
use idempotency::{Error, Idempotency, Key, RedisStore, StoreError, StoreOp, Token};
use tls_support::{Certificates, Scratch, Server, certificates, free_port};

const SUITE: &str = "redis_tls";

/// A TLS-only `redis-server` (no plain port) and its certificates; stopped on drop.
struct TlsRedis {
    server: Server,
    certificates: Certificates,
    _dir: Scratch,
}

impl TlsRedis {
    fn start() -> Option<TlsRedis> {
        let dir = Scratch::new("redis-tls");
        let certificates = match certificates(dir.path()) {
            Ok(certificates) => certificates,
            Err(error) => {
                unreachable(SUITE, "openssl", &error);
                return None;
            }
        };
        for _ in 0..5 {
            let port = free_port();
            let mut command = Command::new("redis-server");
            command
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--tls-cert-file")
                .arg(&certificates.cert)
                .arg("--tls-key-file")
                .arg(&certificates.key)
                .arg("--tls-ca-cert-file")
                .arg(&certificates.ca)
                .args(["--tls-auth-clients", "no"])
                .arg("--dir")
                .arg(dir.path());
            match Server::spawn(command, port, dir.path().join("redis.log")) {
                Ok(Some(server)) => {
                    return Some(TlsRedis {
                        server,
                        certificates,
                        _dir: dir,
                    });
                }
                Ok(None) => {
                    let log = std::fs::read_to_string(dir.path().join("redis.log"));
                    // A redis-server built without TLS refuses `--tls-port`: that is a
                    // missing service, not a lost port.
                    if log.as_deref().is_ok_and(|log| log.contains("tls-port")) {
                        unreachable(SUITE, "redis-server with TLS", &log.unwrap_or_default());
                        return None;
                    }
                }
                Err(error) => {
                    unreachable(SUITE, "redis-server (not installed?)", &error);
                    return None;
                }
            }
        }
        panic!("could not start a TLS redis-server on a free port");
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.server.port)
    }

    /// A client that trusts `ca` (PEM) and only it.
    fn client(&self, ca: Vec<u8>) -> Client {
        Client::build_with_tls(
            self.url(),
            TlsCertificates {
                client_tls: None,
                root_cert: Some(ca),
            },
        )
        .expect("a TLS client")
    }
}

fn store(connection: ConnectionManager) -> RedisStore {
    RedisStore::builder(connection)
        .prefix(format!("idempotency-test:tls:{}:", Token::random()))
        .response_timeout(Duration::from_secs(3))
        .build()
        .expect("prefix")
}

#[tokio::test]
async fn calls_run_once_and_replay_over_tls() {
    let Some(redis) = TlsRedis::start() else {
        return;
    };
    let client = redis.client(redis.certificates.ca_pem());
    let connection = ConnectionManager::new_with_config(client, tls_support::redis_config())
        .await
        .unwrap_or_else(|error| panic!("TLS connection: {error}\n{}", redis.server.log()));
    let idempotency = Idempotency::new(store(connection.clone()));
    let runs = Arc::new(AtomicUsize::new(0));

    let first = tls_support::charge(&idempotency, &runs, "redis_tls::charge", "order-1")
        .await
        .expect("first");
    let replay = tls_support::charge(&idempotency, &runs, "redis_tls::charge", "order-1")
        .await
        .expect("replay");
    assert_eq!(first, "receipt for order-1, run 1");
    assert_eq!(replay, first, "the retry gets the first result back");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the body ran once");

    // The record is on this server, read back over the same TLS connection.
    let key = Key::derive("redis_tls::charge", 1, &"order-1").expect("key");
    let stored = idempotency.store().get(&key).await;
    assert!(matches!(stored, Ok(Some(_))), "{stored:?}");

    // The server has no plain-text port: the connection really is TLS.
    let plain = Client::open(format!("redis://127.0.0.1:{}", redis.server.port))
        .expect("url")
        .get_multiplexed_async_connection()
        .await;
    if let Ok(mut plain) = plain {
        let pong = redis::cmd("PING").query_async::<String>(&mut plain).await;
        assert!(pong.is_err(), "a plain-text PING answered: {pong:?}");
    }
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_is_refused_and_the_body_does_not_run() {
    let Some(redis) = TlsRedis::start() else {
        return;
    };
    let client = redis.client(redis.certificates.other_ca_pem());

    let refused = ConnectionManager::new_with_config(client.clone(), tls_support::redis_config())
        .await
        .map(|_| ())
        .expect_err("a server certificate signed by an untrusted CA");
    let message = refused.to_string();
    assert!(
        message.contains("certificate") && message.contains("UnknownIssuer"),
        "a clear certificate error: {message}"
    );

    // Through the store: a typed store error on the claim, the body never runs.
    let lazy = ConnectionManager::new_lazy_with_config(client, tls_support::redis_config())
        .expect("lazy manager");
    let idempotency = Idempotency::new(store(lazy));
    let runs = Arc::new(AtomicUsize::new(0));
    let failed = tls_support::charge(&idempotency, &runs, "redis_tls::charge", "order-2").await;
    match &failed {
        Err(Error::Store {
            op: StoreOp::Claim,
            source: StoreError::Unavailable(_) | StoreError::Timeout(_),
            ..
        }) => {}
        other => panic!("expected a typed store error on claim, got {other:?}"),
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "fail closed: the body did not run"
    );
}
