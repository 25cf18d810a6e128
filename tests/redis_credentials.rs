//! Credentials for the Redis store: a `redis-server` this test starts on a free loopback port
//! with a password for the `default` user (`requirepass`) and an ACL user limited to keys
//! under `allowed:`. Calls run through [`RedisStore`] with credentials in the URL and in a
//! built `ConnectionInfo`; a key outside the ACL user's pattern fails closed; a wrong password
//! is refused; and no `Debug` output or error message prints a password.
//!
//! Without `redis-server` the tests print SKIPPED; `IDEMPOTENCY_REQUIRE_SERVICES=1` makes that
//! a failure.

mod tls_support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use idempotency::redis::aio::ConnectionManager;
use idempotency::redis::sentinel::{SentinelClient, SentinelServerType};
use idempotency::redis::{Client, ConnectionAddr, IntoConnectionInfo as _, RedisConnectionInfo};
use idempotency::testing::unreachable;
use idempotency::{Error, Idempotency, RedisStore, SentinelConnection, StoreError, StoreOp, Token};
use tls_support::{Scratch, Server, free_port};

const SUITE: &str = "redis_credentials";
const DEFAULT_PASSWORD: &str = "def4ult-Redis-secret";
const ALICE_PASSWORD: &str = "al1ce-Redis-secret";
const WRONG_PASSWORD: &str = "wr0ng-Redis-secret";

/// A `redis-server` with passwords; stopped on drop.
struct PasswordRedis {
    server: Server,
    _dir: Scratch,
}

impl PasswordRedis {
    fn start() -> Option<PasswordRedis> {
        let dir = Scratch::new("redis-credentials");
        for _ in 0..5 {
            let port = free_port();
            let mut command = Command::new("redis-server");
            command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--requirepass", DEFAULT_PASSWORD])
                .args(["--user", "alice", "on", &format!(">{ALICE_PASSWORD}")])
                .args(["~allowed:*", "+@all"])
                .arg("--dir")
                .arg(dir.path());
            match Server::spawn(command, port, dir.path().join("redis.log")) {
                Ok(Some(server)) => {
                    return Some(PasswordRedis { server, _dir: dir });
                }
                Ok(None) => continue,
                Err(error) => {
                    unreachable(SUITE, "redis-server (not installed?)", &error);
                    return None;
                }
            }
        }
        panic!("could not start redis-server on a free port");
    }

    fn url(&self, credentials: &str) -> String {
        format!("redis://{credentials}@127.0.0.1:{}", self.server.port)
    }
}

/// A first execution and a replay through a store over `client` under `prefix`.
async fn runs_once_and_replays(client: Client, prefix: &str, what: &str) {
    let connection = ConnectionManager::new_with_config(client, tls_support::redis_config())
        .await
        .unwrap_or_else(|error| panic!("{what}: connect: {error}"));
    let store = RedisStore::builder(connection)
        .prefix(format!("{prefix}{}:", Token::random()))
        .build()
        .expect("prefix");
    let idempotency = Idempotency::new(store);
    let runs = Arc::new(AtomicUsize::new(0));
    let first = tls_support::charge(&idempotency, &runs, "redis_credentials::charge", "order-1")
        .await
        .expect(what);
    let replay = tls_support::charge(&idempotency, &runs, "redis_credentials::charge", "order-1")
        .await
        .expect(what);
    assert_eq!(
        (first.as_str(), replay.as_str()),
        ("receipt for order-1, run 1", "receipt for order-1, run 1")
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "{what}: the body ran once");
}

fn assert_no_password(text: &str) {
    for password in [DEFAULT_PASSWORD, ALICE_PASSWORD, WRONG_PASSWORD] {
        assert!(!text.contains(password), "a password in: {text}");
    }
}

#[tokio::test]
async fn passwords_and_acl_users_in_urls_and_connection_info() {
    let Some(redis) = PasswordRedis::start() else {
        return;
    };
    // The `default` user's password (`requirepass`), and an ACL user, by URL.
    let default_user = Client::open(redis.url(&format!(":{DEFAULT_PASSWORD}"))).expect("url");
    runs_once_and_replays(
        default_user,
        "idempotency-test:credentials:",
        "requirepass by URL",
    )
    .await;
    let alice = Client::open(redis.url(&format!("alice:{ALICE_PASSWORD}"))).expect("url");
    runs_once_and_replays(alice, "allowed:", "ACL user by URL").await;

    // The same ACL user, built field by field.
    let info = ConnectionAddr::Tcp("127.0.0.1".to_owned(), redis.server.port)
        .into_connection_info()
        .expect("connection info")
        .set_redis_settings(
            RedisConnectionInfo::default()
                .set_username("alice")
                .set_password(ALICE_PASSWORD),
        );
    let built = Client::open(info).expect("client");
    runs_once_and_replays(built, "allowed:", "ACL user by ConnectionInfo").await;
}

#[tokio::test]
async fn keys_outside_the_acl_users_pattern_fail_closed() {
    let Some(redis) = PasswordRedis::start() else {
        return;
    };
    let alice = Client::open(redis.url(&format!("alice:{ALICE_PASSWORD}"))).expect("url");
    let connection = ConnectionManager::new_with_config(alice, tls_support::redis_config())
        .await
        .expect("connect");
    let store = RedisStore::builder(connection)
        .prefix("forbidden:")
        .build()
        .expect("prefix");
    let idempotency = Idempotency::new(store);
    let runs = Arc::new(AtomicUsize::new(0));
    let refused =
        tls_support::charge(&idempotency, &runs, "redis_credentials::charge", "order-1").await;
    match &refused {
        Err(
            error @ Error::Store {
                op: StoreOp::Claim,
                source: StoreError::Backend(_),
                ..
            },
        ) => {
            let chain = format!("{error} / {:?}", error);
            assert!(
                chain.contains("NOPERM") || chain.contains("permission"),
                "{chain}"
            );
            assert_no_password(&chain);
        }
        other => panic!("expected a typed store error on claim, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the body did not run");
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_never_printed() {
    let Some(redis) = PasswordRedis::start() else {
        return;
    };
    let wrong = Client::open(redis.url(&format!("alice:{WRONG_PASSWORD}"))).expect("url");
    let refused = ConnectionManager::new_with_config(wrong.clone(), tls_support::redis_config())
        .await
        .map(|_| ())
        .expect_err("a wrong password");
    let message = refused.to_string();
    assert!(
        message.to_lowercase().contains("authentication failed"),
        "{message}"
    );
    assert_no_password(&message);
    assert_no_password(&format!("{refused:?}"));

    // Through the store: the claim fails with a typed error that prints no password.
    let lazy = ConnectionManager::new_lazy_with_config(wrong.clone(), tls_support::redis_config())
        .expect("lazy");
    let idempotency = Idempotency::new(RedisStore::new(lazy));
    let runs = Arc::new(AtomicUsize::new(0));
    let failed =
        tls_support::charge(&idempotency, &runs, "redis_credentials::charge", "order-1").await;
    let error = failed.expect_err("a wrong password fails the claim");
    assert!(matches!(error, Error::Store { .. }), "{error:?}");
    assert_no_password(&format!("{error} / {error:?}"));
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        assert_no_password(&format!("{cause} / {cause:?}"));
        source = cause.source();
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the body did not run");
}

#[tokio::test]
async fn debug_output_prints_no_password() {
    // Nothing here connects: clients, managers, builders and stores are only formatted.
    let client = Client::open(format!("redis://alice:{ALICE_PASSWORD}@127.0.0.1:1")).expect("url");
    let manager =
        ConnectionManager::new_lazy_with_config(client.clone(), tls_support::redis_config())
            .expect("lazy");
    let builder = RedisStore::builder(manager.clone()).prefix("app:");
    let store = RedisStore::new(manager.clone());
    let sentinel = SentinelClient::build(
        vec![format!("redis://:{DEFAULT_PASSWORD}@127.0.0.1:1")],
        String::from("mymaster"), // a `String`: what `build` takes with and without `redis-tls`
        None,
        SentinelServerType::Master,
    )
    .expect("sentinel client");
    let over_sentinel = RedisStore::new(SentinelConnection::new(sentinel));
    for text in [
        format!("{client:?}"),
        format!("{manager:?}"),
        format!("{builder:?}"),
        format!("{store:?}"),
        format!("{over_sentinel:?}"),
        format!("{:?}", over_sentinel.connection()),
    ] {
        assert_no_password(&text);
    }
    // The builder does print its connection's settings, with the password redacted.
    let builder = format!("{builder:?}");
    assert!(
        builder.contains("alice") && builder.contains("<redacted>"),
        "{builder}"
    );
}
