//! The client key helper against the real `Idempotency-Key` layer over loopback HTTP: a
//! client whose first attempt times out retries with backoff, sends the same UUID v7 key every
//! time, and the charge happens once; the last attempt gets the stored response replayed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::post;
use idempotency::http::IdempotencyLayer;
use idempotency::retry::{IdempotencyKey, RetryPolicy};
use idempotency::{Idempotency, MemoryStore};

#[derive(Clone, Default)]
struct Gateway {
    charges: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    keys_seen: Arc<Mutex<Vec<String>>>,
}

async fn charge(State(gateway): State<Gateway>) -> (StatusCode, String) {
    // The first call is slow: the client gives up on it and retries.
    if gateway.calls.fetch_add(1, Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let n = gateway.charges.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("charge-{n}"))
}

/// Records the key of every request that reaches the server, before the idempotency layer.
async fn record_key(State(gateway): State<Gateway>, request: Request, next: Next) -> Response {
    if let Some(key) = request.headers().get("idempotency-key") {
        let key = key.to_str().unwrap_or("<not text>").to_owned();
        gateway.keys_seen.lock().expect("keys").push(key);
    }
    next.run(request).await
}

#[derive(Debug)]
enum Attempt {
    TimedOut,
    InProgress,
    #[allow(dead_code)] // read through `Debug` when the test fails
    Failed(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_across_attempts_charges_once() {
    let gateway = Gateway::default();
    let router = Router::new()
        .route("/charges", post(charge))
        .with_state(gateway.clone())
        .layer(IdempotencyLayer::new(Idempotency::new(MemoryStore::new())).require_key(true))
        .layer(middleware::from_fn_with_state(gateway.clone(), record_key));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/charges", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, router).await });

    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .expect("client");
    let policy = RetryPolicy::new()
        .max_attempts(50)
        .initial_delay(Duration::from_millis(50))
        .max_delay(Duration::from_millis(200))
        .max_elapsed(Duration::from_secs(30));
    let sent = Mutex::new(Vec::new());
    let reply = policy
        .retry_with_key_if(
            |attempt: &Attempt| matches!(attempt, Attempt::TimedOut | Attempt::InProgress),
            |key: IdempotencyKey| {
                sent.lock().expect("sent").push(key);
                let request = client
                    .post(&url)
                    .header("authorization", "Bearer shop-1")
                    .header("idempotency-key", key.to_string())
                    .body("{\"cents\":1999}");
                async move {
                    match request.send().await {
                        Err(error) if error.is_timeout() => Err(Attempt::TimedOut),
                        Err(error) => Err(Attempt::Failed(error.to_string())),
                        // The first attempt's request is still running on the server.
                        Ok(response) if response.status() == StatusCode::CONFLICT => {
                            Err(Attempt::InProgress)
                        }
                        Ok(response) => {
                            let status = response.status();
                            let replayed = response.headers().contains_key("idempotent-replayed");
                            let body = response
                                .text()
                                .await
                                .map_err(|e| Attempt::Failed(e.to_string()))?;
                            Ok((status, replayed, body))
                        }
                    }
                }
            },
        )
        .await
        .expect("the charge goes through");

    let sent = sent.into_inner().expect("sent");
    assert!(
        sent.len() >= 2,
        "the first attempt timed out, so there were retries"
    );
    assert!(
        sent.iter().all(|key| *key == sent[0]),
        "one key for every attempt"
    );
    let seen = gateway.keys_seen.lock().expect("keys").clone();
    assert_eq!(seen.len(), sent.len());
    assert!(seen.iter().all(|key| *key == sent[0].to_string()));

    // Charged once; the answer is that one charge (replayed if the slow first call finished).
    assert_eq!(reply.0, StatusCode::CREATED);
    assert_eq!(reply.2, "charge-1");
    assert_eq!(gateway.charges.load(Ordering::SeqCst), 1);
    if gateway.calls.load(Ordering::SeqCst) == 1 {
        assert!(
            reply.1,
            "the slow first call completed: the retry got its stored response"
        );
    }
}
