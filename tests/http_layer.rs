//! The `Idempotency-Key` layer over real HTTP: an axum server on an ephemeral loopback port,
//! a real client (reqwest, or raw HTTP/1.1 over TCP where reqwest cannot send the request).

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::{DOWN, Recording};
use idempotency::http::{ClientId, ClientScope, IdempotencyLayer, StoredStatuses};
use idempotency::{Idempotency, InProgressPolicy, MemoryStore, Store};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Semaphore, mpsc};

const KEY: &str = "idempotency-key";

/// Lets a test hold the handler: it reports each entry, then waits for a permit.
struct Gate {
    entered: mpsc::UnboundedSender<()>,
    permits: Semaphore,
}

#[derive(Clone, Default)]
struct App {
    /// How many times a handler ran.
    runs: Arc<AtomicU64>,
    gate: Option<Arc<Gate>>,
    /// How long `POST /orders` takes.
    pause: Option<Duration>,
}

async fn create_order(State(app): State<App>, body: Bytes) -> Response {
    let n = app.runs.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(gate) = &app.gate {
        let _ = gate.entered.send(());
        if let Ok(permit) = gate.permits.acquire().await {
            permit.forget();
        }
    }
    if let Some(pause) = app.pause {
        tokio::time::sleep(pause).await;
    }
    let id = format!("ord_{n}");
    let order = json!({ "id": id, "request": String::from_utf8_lossy(&body) });
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/orders/{id}")),
            (HeaderName::from_static("x-order-id"), id.clone()),
        ],
        axum::Json(order),
    )
        .into_response()
}

async fn update_order(State(app): State<App>, Path(id): Path<String>) -> Response {
    let n = app.runs.fetch_add(1, Ordering::SeqCst) + 1;
    axum::Json(json!({ "id": id, "revision": n })).into_response()
}

async fn read_order(State(app): State<App>, Path(id): Path<String>) -> Response {
    let n = app.runs.fetch_add(1, Ordering::SeqCst) + 1;
    axum::Json(json!({ "id": id, "read": n })).into_response()
}

async fn status(State(app): State<App>, Path(code): Path<u16>) -> Response {
    let n = app.runs.fetch_add(1, Ordering::SeqCst) + 1;
    let status = StatusCode::from_u16(code).unwrap();
    (status, format!("run {n} answered {code}")).into_response()
}

async fn large(State(app): State<App>) -> Response {
    let n = app.runs.fetch_add(1, Ordering::SeqCst) + 1;
    let body = format!("{n:>8}").repeat(1000); // 8000 bytes
    (StatusCode::CREATED, body).into_response()
}

/// A response carrying headers that belong to its hop only (and a `Date` of its own).
async fn hop(State(app): State<App>) -> Response {
    app.runs.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::CREATED,
        [
            (header::DATE, "Mon, 01 Jan 2001 00:00:00 GMT"),
            (header::CONNECTION, "x-hop-only"),
            (HeaderName::from_static("x-hop-only"), "for this hop"),
            (HeaderName::from_static("keep-alive"), "timeout=5"),
            (HeaderName::from_static("x-kept"), "yes"),
        ],
        "made",
    )
        .into_response()
}

/// `n` bytes that are not UTF-8 (stored byte for byte).
async fn bytes(State(app): State<App>, Path(n): Path<usize>) -> Response {
    app.runs.fetch_add(1, Ordering::SeqCst);
    (StatusCode::CREATED, vec![0xffu8; n]).into_response()
}

/// A response whose body fails after its first bytes.
async fn broken(State(app): State<App>) -> Response {
    app.runs.fetch_add(1, Ordering::SeqCst);
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"{\"id\":")),
        Err(std::io::Error::other("the database went away mid-stream")),
    ];
    (
        StatusCode::CREATED,
        axum::body::Body::from_stream(futures::stream::iter(chunks)),
    )
        .into_response()
}

async fn binary(State(app): State<App>) -> Response {
    let n = app.runs.fetch_add(1, Ordering::SeqCst) as u8;
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        vec![0u8, 0xff, 0xfe, n, 0x80],
    )
        .into_response()
}

fn routes(app: App) -> Router {
    Router::new()
        .route("/orders", post(create_order))
        .route(
            "/orders/{id}",
            get(read_order).patch(update_order).put(update_order),
        )
        .route("/status/{code}", post(status))
        .route("/large", post(large))
        .route("/binary", post(binary))
        .route("/bytes/{n}", post(bytes))
        .route("/broken", post(broken))
        .route("/hop", post(hop))
        .with_state(app)
}

struct Server {
    base: String,
    runs: Arc<AtomicU64>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }
}

fn layer() -> IdempotencyLayer {
    IdempotencyLayer::new(Idempotency::new(MemoryStore::new()))
}

async fn serve(app: App, layer: IdempotencyLayer) -> Server {
    let runs = Arc::clone(&app.runs);
    let router = routes(app).layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Server { base, runs }
}

/// The credential `client()` sends unless a request sets its own: the layer's default scope
/// refuses a request without one.
const CREDENTIAL: &str = "Bearer test-client";

/// A client that identifies itself (`Authorization: Bearer test-client`, unless a request sets
/// its own `Authorization`).
fn client() -> reqwest::Client {
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, HeaderValue::from_static(CREDENTIAL));
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .unwrap()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn replayed(&self) -> bool {
        match self.headers.get("idempotent-replayed") {
            None => false,
            Some(value) => {
                assert_eq!(value, "true");
                true
            }
        }
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    /// Asserts an RFC 9457 problem with this status and type, and returns its detail.
    fn problem(&self, status: u16, kind: &str) -> String {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let problem = self.json();
        let type_uri = problem["type"].as_str().unwrap();
        assert!(type_uri.ends_with(&format!("#{kind}")), "{type_uri}");
        assert!(!problem["title"].as_str().unwrap().is_empty());
        assert_eq!(problem["status"], status);
        problem["detail"].as_str().unwrap().to_owned()
    }
}

async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.unwrap();
    Reply {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.bytes().await.unwrap(),
    }
}

async fn post_order(server: &Server, key: &str, body: &'static str) -> Reply {
    send(
        client()
            .post(server.url("/orders"))
            .header(KEY, key)
            .body(body),
    )
    .await
}

#[tokio::test]
async fn a_retry_gets_the_stored_response_back() {
    let server = serve(App::default(), layer().require_key(true)).await;

    let first = post_order(&server, "k-1", r#"{"item":"book"}"#).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed());
    assert_eq!(first.json()["id"], "ord_1");

    let retry = post_order(&server, "k-1", r#"{"item":"book"}"#).await;
    assert!(retry.replayed());
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.body, first.body);
    for name in [header::CONTENT_TYPE, header::LOCATION] {
        assert_eq!(retry.headers[&name], first.headers[&name]);
    }
    assert_eq!(retry.headers["x-order-id"], "ord_1");
    assert_eq!(
        retry.headers[header::CONTENT_LENGTH],
        first.headers[header::CONTENT_LENGTH]
    );
    assert!(
        retry.headers.contains_key(header::DATE),
        "a fresh date from the server"
    );
    assert_eq!(server.runs(), 1);

    let other = post_order(&server, "k-2", r#"{"item":"book"}"#).await;
    assert!(!other.replayed());
    assert_eq!(other.json()["id"], "ord_2");
    assert_eq!(server.runs(), 2);
}

#[tokio::test]
async fn the_quoted_and_the_bare_form_are_the_same_key() {
    let server = serve(App::default(), layer()).await;
    let key = "8e03978e-40d5-43e8-bc93-6894a57f9324";

    let quoted = post_order(&server, &format!("\"{key}\""), "{}").await;
    assert_eq!(quoted.status, StatusCode::CREATED);
    let bare = post_order(&server, key, "{}").await;
    assert!(bare.replayed());
    assert_eq!(bare.body, quoted.body);
    let escaped = post_order(&server, "\"a\\\"b\"", "{}").await;
    assert_eq!(escaped.status, StatusCode::CREATED);
    assert!(!escaped.replayed());
    assert!(post_order(&server, "a\"b", "{}").await.replayed());
    assert_eq!(server.runs(), 2);
}

#[tokio::test]
async fn a_missing_key_is_refused_where_required_and_passed_through_elsewhere() {
    let required = serve(App::default(), layer().require_key(true)).await;
    let reply = send(client().post(required.url("/orders")).body("{}")).await;
    let detail = reply.problem(400, "missing-key");
    assert!(detail.contains("idempotency-key"), "{detail}");
    assert_eq!(required.runs(), 0);

    let optional = serve(App::default(), layer()).await;
    for _ in 0..2 {
        let reply = send(client().post(optional.url("/orders")).body("{}")).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert!(!reply.replayed());
    }
    assert_eq!(optional.runs(), 2, "without a key each request runs");
}

#[tokio::test]
async fn malformed_keys_are_refused() {
    let server = serve(App::default(), layer().require_key(true)).await;
    let too_long = "k".repeat(256);
    for (key, expected) in [
        (too_long.as_str(), "256"),
        ("\"unterminated", "closing quote"),
        ("\"k\";param=1", "after the closing quote"),
        ("\"bad\\escape\"", "escaped"),
        ("\"\"", "empty"),
    ] {
        let reply = post_order(&server, key, "{}").await;
        let detail = reply.problem(400, "malformed-key");
        assert!(detail.contains(expected), "{key}: {detail}");
    }
    // Not printable ASCII.
    let reply = send(
        client()
            .post(server.url("/orders"))
            .header(KEY, HeaderValue::from_bytes("clé".as_bytes()).unwrap())
            .body("{}"),
    )
    .await;
    reply.problem(400, "malformed-key");
    // Two key headers.
    let reply = send(
        client()
            .post(server.url("/orders"))
            .header(KEY, "a")
            .header(KEY, "b")
            .body("{}"),
    )
    .await;
    reply.problem(400, "malformed-key");
    // The longest key accepted.
    let longest = "k".repeat(255);
    assert_eq!(
        post_order(&server, &longest, "{}").await.status,
        StatusCode::CREATED
    );
    assert_eq!(server.runs(), 1);
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_refused() {
    let server = serve(
        App::default(),
        layer().fingerprint_headers([header::CONTENT_TYPE]),
    )
    .await;
    let client = client();
    let first = send(
        client
            .post(server.url("/orders?express=1"))
            .header(KEY, "k")
            .header(header::CONTENT_TYPE, "application/json")
            .body(r#"{"item":"book"}"#),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);

    let other_body = client
        .post(server.url("/orders?express=1"))
        .header(KEY, "k")
        .header(header::CONTENT_TYPE, "application/json")
        .body(r#"{"item":"lamp"}"#);
    let other_query = client
        .post(server.url("/orders?express=0"))
        .header(KEY, "k")
        .header(header::CONTENT_TYPE, "application/json")
        .body(r#"{"item":"book"}"#);
    let other_header = client
        .post(server.url("/orders?express=1"))
        .header(KEY, "k")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(r#"{"item":"book"}"#);
    let other_path = client
        .patch(server.url("/orders/ord_1?express=1"))
        .header(KEY, "k")
        .header(header::CONTENT_TYPE, "application/json")
        .body(r#"{"item":"book"}"#);
    for request in [other_body, other_query, other_header, other_path] {
        let reply = send(request).await;
        let detail = reply.problem(422, "key-reused");
        assert!(detail.contains("new key"), "{detail}");
    }
    assert_eq!(server.runs(), 1);

    // Headers that are not fingerprinted do not matter.
    let same = send(
        client
            .post(server.url("/orders?express=1"))
            .header(KEY, "k")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "retrying-client/2")
            .body(r#"{"item":"book"}"#),
    )
    .await;
    assert!(same.replayed());
}

#[tokio::test]
async fn only_post_and_patch_are_covered_by_default() {
    let server = serve(App::default(), layer().require_key(true)).await;
    let client = client();
    for _ in 0..2 {
        let read = send(client.get(server.url("/orders/ord_9")).header(KEY, "k")).await;
        assert_eq!(read.status, StatusCode::OK);
        assert!(!read.replayed());
        let put = send(client.put(server.url("/orders/ord_9")).header(KEY, "k")).await;
        assert_eq!(put.status, StatusCode::OK);
        assert!(!put.replayed());
    }
    assert_eq!(server.runs(), 4);

    let patch = || {
        client
            .patch(server.url("/orders/ord_9"))
            .header(KEY, "p")
            .body("x")
    };
    let first = send(patch()).await;
    assert_eq!(first.json()["revision"], 5);
    let retry = send(patch()).await;
    assert!(retry.replayed());
    assert_eq!(retry.json()["revision"], 5);
    assert_eq!(server.runs(), 5);

    // Configured methods.
    let put_only = serve(App::default(), layer().methods([axum::http::Method::PUT])).await;
    let put = || client.put(put_only.url("/orders/ord_1")).header(KEY, "k");
    send(put()).await;
    assert!(send(put()).await.replayed());
    let patch = || client.patch(put_only.url("/orders/ord_1")).header(KEY, "k");
    send(patch()).await;
    assert!(!send(patch()).await.replayed());
    assert_eq!(put_only.runs(), 3);
}

#[tokio::test]
async fn a_duplicate_in_flight_gets_409_with_retry_after() {
    let (entered, mut entries) = mpsc::unbounded_channel();
    let gate = Arc::new(Gate {
        entered,
        permits: Semaphore::new(0),
    });
    let app = App {
        gate: Some(Arc::clone(&gate)),
        ..App::default()
    };
    let server = Arc::new(serve(app, layer()).await);

    let first = tokio::spawn({
        let server = Arc::clone(&server);
        async move { post_order(&server, "k", "{}").await }
    });
    entries.recv().await.unwrap(); // the first request is inside the handler

    let duplicate = post_order(&server, "k", "{}").await;
    duplicate.problem(409, "in-progress");
    let retry_after: u64 = duplicate.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    // A different request with that key is still a reuse, not a conflict.
    post_order(&server, "k", "{\"other\":1}")
        .await
        .problem(422, "key-reused");

    gate.permits.add_permits(1);
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    let after = post_order(&server, "k", "{}").await;
    assert!(after.replayed());
    assert_eq!(after.body, first.body);
    assert_eq!(server.runs(), 1);
}

#[tokio::test]
async fn in_wait_mode_a_duplicate_in_flight_gets_the_replay() {
    let (entered, mut entries) = mpsc::unbounded_channel();
    let gate = Arc::new(Gate {
        entered,
        permits: Semaphore::new(0),
    });
    let app = App {
        gate: Some(Arc::clone(&gate)),
        ..App::default()
    };
    let server = Arc::new(serve(app, layer().on_in_progress(InProgressPolicy::Wait)).await);
    let first = tokio::spawn({
        let server = Arc::clone(&server);
        async move { post_order(&server, "k", "{}").await }
    });
    entries.recv().await.unwrap();
    let duplicate = tokio::spawn({
        let server = Arc::clone(&server);
        async move { post_order(&server, "k", "{}").await }
    });
    // The duplicate cannot finish before the first: nothing to replay yet.
    tokio::task::yield_now().await;
    assert!(!duplicate.is_finished());
    gate.permits.add_permits(1);
    let (first, duplicate) = (first.await.unwrap(), duplicate.await.unwrap());
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed());
    assert!(duplicate.replayed());
    assert_eq!(duplicate.body, first.body);
    assert_eq!(server.runs(), 1);
}

#[tokio::test]
async fn server_errors_and_transient_statuses_are_not_stored() {
    let server = serve(App::default(), layer()).await;
    let client = client();
    let mut runs = 0;
    for code in [500u16, 502, 503, 408, 409, 425, 429] {
        for _ in 0..2 {
            let reply = send(
                client
                    .post(server.url(&format!("/status/{code}")))
                    .header(KEY, "k"),
            )
            .await;
            runs += 1;
            assert_eq!(reply.status.as_u16(), code);
            assert!(!reply.replayed());
            assert_eq!(reply.text(), format!("run {runs} answered {code}"));
        }
    }
    // Deterministic refusals are stored like successes.
    for code in [200u16, 400, 404, 422] {
        let path = format!("/status/{code}");
        let key = format!("stored-{code}");
        let first = send(client.post(server.url(&path)).header(KEY, &key)).await;
        runs += 1;
        let retry = send(client.post(server.url(&path)).header(KEY, &key)).await;
        assert_eq!(retry.status.as_u16(), code);
        assert!(retry.replayed(), "{code}");
        assert_eq!(retry.body, first.body);
    }
    assert_eq!(server.runs(), runs);
}

#[tokio::test]
async fn which_statuses_are_stored_is_configurable() {
    let client = client();
    let successful = serve(
        App::default(),
        layer().stored_statuses(StoredStatuses::successful()),
    )
    .await;
    for path in ["/status/404", "/status/404", "/status/201", "/status/201"] {
        send(client.post(successful.url(path)).header(KEY, "k")).await;
    }
    assert_eq!(successful.runs(), 3, "404 ran twice, 201 once");

    let all = serve(
        App::default(),
        layer().stored_statuses(StoredStatuses::all()),
    )
    .await;
    let first = send(client.post(all.url("/status/500")).header(KEY, "k")).await;
    let retry = send(client.post(all.url("/status/500")).header(KEY, "k")).await;
    assert_eq!(retry.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    assert_eq!(all.runs(), 1);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_nothing_is_stored() {
    let (store, counts) = Recording::new(MemoryStore::new());
    let layer = IdempotencyLayer::new(Idempotency::new(store)).max_body_bytes(64);
    let server = serve(App::default(), layer).await;
    let big = "x".repeat(65);

    // Declared by Content-Length.
    let reply = send(
        client()
            .post(server.url("/orders"))
            .header(KEY, "k")
            .body(big.clone()),
    )
    .await;
    let detail = reply.problem(413, "body-too-large");
    assert!(detail.contains("64 bytes"), "{detail}");

    // Streamed without a length (chunked): found while reading.
    let address = server.base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let chunked = format!(
        "POST /orders HTTP/1.1\r\nhost: {address}\r\nauthorization: {CREDENTIAL}\r\nidempotency-key: k\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n20\r\n{}\r\n21\r\n{}\r\n0\r\n\r\n",
        "x".repeat(32),
        "x".repeat(33)
    );
    tcp.write_all(chunked.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 413 "), "{raw}");
    assert!(raw.contains("application/problem+json"), "{raw}");

    assert_eq!(server.runs(), 0);
    assert_eq!(counts.total(), 0, "the store was not touched");
    // Nothing stored: the same key with a body within the limit runs (no 422).
    let small = post_order(&server, "k", "{}").await;
    assert_eq!(small.status, StatusCode::CREATED);
    assert!(!small.replayed());
    let exact = send(
        client()
            .post(server.url("/orders"))
            .header(KEY, "k64")
            .body("y".repeat(64)),
    )
    .await;
    assert_eq!(exact.status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_response_over_the_limit_is_sent_whole_and_a_retry_gets_a_problem_not_a_second_run() {
    let server = serve(App::default(), layer().max_response_bytes(4096)).await;
    let first = send(client().post(server.url("/large")).header(KEY, "k")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.body.len(), 8000);
    assert_eq!(first.text(), format!("{:>8}", 1).repeat(1000));
    assert!(!first.replayed());
    for _ in 0..2 {
        let retry = send(client().post(server.url("/large")).header(KEY, "k")).await;
        assert!(retry.replayed());
        // The first response's status: the request succeeded.
        let detail = retry.problem(201, "response-too-large");
        assert!(detail.contains("processed"), "{detail}");
        assert!(detail.contains("4096 bytes"), "{detail}");
    }
    assert_eq!(server.runs(), 1, "the handler ran once");

    // The stand-in keeps the `Location` of the created resource.
    let orders = serve(App::default(), layer().max_response_bytes(64)).await;
    let first = post_order(&orders, "k", r#"{"item":"book"}"#).await;
    assert_eq!(first.json()["id"], "ord_1");
    let retry = post_order(&orders, "k", r#"{"item":"book"}"#).await;
    retry.problem(201, "response-too-large");
    assert_eq!(retry.headers[header::LOCATION], "/orders/ord_1");
    assert!(!retry.headers.contains_key("x-order-id"));
    // Another request with the key is still a reuse.
    post_order(&orders, "k", "{}")
        .await
        .problem(422, "key-reused");
    assert_eq!(orders.runs(), 1);

    let roomy = serve(App::default(), layer()).await;
    let first = send(client().post(roomy.url("/large")).header(KEY, "k")).await;
    let retry = send(client().post(roomy.url("/large")).header(KEY, "k")).await;
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
}

/// A binary body just under 1 MiB whose stored record (with its status and headers) is over
/// it: the layer measures the record, so it never hands the executor one it refuses.
#[tokio::test]
async fn a_binary_response_is_measured_as_stored_and_never_run_twice() {
    let (store, counts) = Recording::new(MemoryStore::new());
    let server = serve(
        App::default(),
        IdempotencyLayer::new(Idempotency::new(store)),
    )
    .await;

    // Over the 1 MiB limit once stored (the record adds its status and headers): sent whole to
    // the first client, a problem to the retry.
    let url = server.url(&format!("/bytes/{}", 1024 * 1024 - 16));
    let first = send(client().post(&url).header(KEY, "pdf")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(first.body.len() == 1024 * 1024 - 16 && first.body.iter().all(|&b| b == 0xff));
    let retry = send(client().post(&url).header(KEY, "pdf")).await;
    assert!(retry.replayed());
    retry.problem(201, "response-too-large");
    assert_eq!(server.runs(), 1);

    // 700 KiB of binary is stored as it is: stored and replayed byte for byte.
    let url = server.url(&format!("/bytes/{}", 700 * 1024));
    let first = send(client().post(&url).header(KEY, "smaller")).await;
    let retry = send(client().post(&url).header(KEY, "smaller")).await;
    assert!(retry.replayed());
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.body, first.body);
    assert_eq!(server.runs(), 2);
    assert_eq!(
        counts.release.load(Ordering::SeqCst),
        0,
        "no claim released"
    );
}

/// Around the limit, byte by byte: with the layer's and the executor's limits equal, every
/// response is either stored whole or stood in for, never released and run again.
#[tokio::test]
async fn the_layer_and_the_executor_agree_on_the_limit_to_the_byte() {
    let (store, counts) = Recording::new(MemoryStore::new());
    let idempotency = Idempotency::builder(store).max_output_bytes(1000).build();
    let layer = IdempotencyLayer::new(idempotency).max_response_bytes(1000);
    let server = serve(App::default(), layer).await;
    let client = client();
    let (mut stored, mut stood_in) = (0, 0);
    // `n` body bytes are stored as they are, plus a few dozen bytes of record.
    for n in 900..=1000usize {
        let url = server.url(&format!("/bytes/{n}"));
        let key = format!("k-{n}");
        let first = send(client.post(&url).header(KEY, &key)).await;
        assert_eq!(first.body.len(), n);
        let retry = send(client.post(&url).header(KEY, &key)).await;
        assert!(retry.replayed(), "{n}");
        if retry.headers[header::CONTENT_TYPE] == "application/problem+json" {
            retry.problem(201, "response-too-large");
            stood_in += 1;
        } else {
            assert_eq!(retry.body, first.body, "{n}");
            assert_eq!(stood_in, 0, "{n}: stored after a larger one was not");
            stored += 1;
        }
    }
    assert!(
        stored > 0 && stood_in > 0,
        "{stored} stored, {stood_in} stood in"
    );
    assert_eq!(server.runs(), 101);
    assert_eq!(
        counts.release.load(Ordering::SeqCst),
        0,
        "no claim released"
    );
}

/// The executor's limit under the layer's (a misconfiguration): the layer knows the
/// executor's limit up front, so it stores the problem in place of the response on the first
/// call, and no claim is ever released.
#[tokio::test]
async fn a_store_limit_under_the_layers_still_never_runs_the_handler_twice() {
    let (store, counts) = Recording::new(MemoryStore::new());
    let idempotency = Idempotency::builder(store).max_output_bytes(2048).build();
    let server = serve(App::default(), IdempotencyLayer::new(idempotency)).await;
    for key in ["k-1", "k-2"] {
        let first = send(client().post(server.url("/large")).header(KEY, key)).await;
        assert_eq!(first.status, StatusCode::CREATED);
        assert_eq!(first.body.len(), 8000);
        let retry = send(client().post(server.url("/large")).header(KEY, key)).await;
        assert!(retry.replayed());
        let detail = retry.problem(201, "response-too-large");
        assert!(detail.contains("2048 bytes"), "{detail}");
    }
    assert_eq!(server.runs(), 2);
    assert_eq!(
        counts.release.load(Ordering::SeqCst),
        0,
        "the layer knew the executor's limit: no claim released"
    );
}

#[tokio::test]
async fn a_response_whose_body_fails_is_a_problem_stored_in_its_place() {
    let server = serve(App::default(), layer()).await;
    let first = send(client().post(server.url("/broken")).header(KEY, "k")).await;
    assert!(!first.replayed());
    let detail = first.problem(500, "response-failed");
    assert!(detail.contains("processed"), "{detail}");
    let retry = send(client().post(server.url("/broken")).header(KEY, "k")).await;
    assert!(retry.replayed());
    retry.problem(500, "response-failed");
    assert_eq!(retry.body, first.body);
    assert_eq!(server.runs(), 1, "the handler ran once");
}

#[tokio::test]
async fn binary_bodies_are_replayed_byte_for_byte() {
    let server = serve(App::default(), layer()).await;
    let first = send(
        client()
            .post(server.url("/binary"))
            .header(KEY, "k")
            .body(vec![0u8, 0xff]),
    )
    .await;
    assert_eq!(&first.body[..], &[0, 0xff, 0xfe, 0, 0x80]);
    let retry = send(
        client()
            .post(server.url("/binary"))
            .header(KEY, "k")
            .body(vec![0u8, 0xff]),
    )
    .await;
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    assert_eq!(
        retry.headers[header::CONTENT_TYPE],
        "application/octet-stream"
    );
}

#[tokio::test]
async fn the_store_down_is_a_503_and_the_handler_does_not_run() {
    let layer = IdempotencyLayer::new(Idempotency::new(DOWN));
    let server = serve(App::default(), layer).await;
    let reply = post_order(&server, "k", "{}").await;
    let detail = reply.problem(503, "store-unavailable");
    assert!(detail.contains("not processed"), "{detail}");
    assert!(reply.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(server.runs(), 0);
    // Requests the layer does not cover still work.
    let read = send(client().get(server.url("/orders/ord_1"))).await;
    assert_eq!(read.status, StatusCode::OK);
}

/// Stores junk instead of the output it is given: a foreign writer, a damaged record.
#[derive(Debug)]
struct Damaging(MemoryStore);

#[idempotency::async_trait]
impl Store for Damaging {
    async fn claim(
        &self,
        key: &idempotency::Key,
        request: idempotency::ClaimRequest,
    ) -> Result<idempotency::Claim, idempotency::StoreError> {
        self.0.claim(key, request).await
    }
    async fn complete(
        &self,
        key: &idempotency::Key,
        completion: idempotency::Completion,
    ) -> Result<(), idempotency::StoreError> {
        let junk = idempotency::Bytes::from_static(b"O{\"not\":\"a response\"}");
        let completion = idempotency::Completion {
            output: junk,
            keep: None,
            ..completion
        };
        self.0.complete(key, completion).await
    }
    async fn release(
        &self,
        key: &idempotency::Key,
        token: &idempotency::Token,
    ) -> Result<(), idempotency::StoreError> {
        self.0.release(key, token).await
    }
    async fn renew(
        &self,
        key: &idempotency::Key,
        token: &idempotency::Token,
        lease: Duration,
    ) -> Result<(), idempotency::StoreError> {
        self.0.renew(key, token, lease).await
    }
    async fn get(
        &self,
        key: &idempotency::Key,
    ) -> Result<Option<idempotency::Record>, idempotency::StoreError> {
        self.0.get(key).await
    }
    async fn remove(&self, key: &idempotency::Key) -> Result<bool, idempotency::StoreError> {
        self.0.remove(key).await
    }
}

#[tokio::test]
async fn a_damaged_record_is_a_500_and_the_handler_does_not_run() {
    let layer = IdempotencyLayer::new(Idempotency::new(Damaging(MemoryStore::new())));
    let server = serve(App::default(), layer).await;
    let first = post_order(&server, "k", "{}").await;
    assert_eq!(
        first.status,
        StatusCode::CREATED,
        "the first caller gets its response"
    );
    let retry = post_order(&server, "k", "{}").await;
    retry.problem(500, "stored-response-unreadable");
    assert_eq!(
        server.runs(),
        1,
        "a record that cannot be read never runs the handler again"
    );
}

#[tokio::test]
async fn one_client_can_never_read_another_clients_response() {
    let server = serve(App::default(), layer()).await;
    let client = client();
    let order = |token: &str, body: &'static str| {
        client
            .post(server.url("/orders"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(KEY, "shared-key")
            .body(body)
    };
    let alice = send(order("alice", r#"{"item":"ring"}"#)).await;
    assert_eq!(alice.json()["id"], "ord_1");

    // Mallory sends Alice's key with Alice's request: a fresh execution of her own, never
    // Alice's stored response.
    let mallory = send(order("mallory", r#"{"item":"ring"}"#)).await;
    assert_eq!(mallory.status, StatusCode::CREATED);
    assert!(!mallory.replayed());
    assert_eq!(mallory.json()["id"], "ord_2");
    // Nor can she probe whether Alice used the key: another body is not a 422 for her.
    let probe = send(order("mallory2", r#"{"item":"other"}"#)).await;
    assert_eq!(probe.status, StatusCode::CREATED);
    assert!(!probe.replayed());
    // No credential at all is refused, never put in a scope shared with anybody.
    let anonymous = send(
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
            .post(server.url("/orders"))
            .header(KEY, "shared-key")
            .body(r#"{"item":"ring"}"#),
    )
    .await;
    anonymous.problem(400, "unidentified-client");

    // Each client's own retry still replays its own response.
    let alice_again = send(order("alice", r#"{"item":"ring"}"#)).await;
    assert!(alice_again.replayed());
    assert_eq!(alice_again.json()["id"], "ord_1");
    let mallory_again = send(order("mallory", r#"{"item":"ring"}"#)).await;
    assert_eq!(mallory_again.json()["id"], "ord_2");
    assert_eq!(server.runs(), 3);
}

#[derive(Clone, serde::Serialize)]
struct Subject(String);

#[tokio::test]
async fn clients_can_be_scoped_by_api_key_or_by_what_authentication_found() {
    let client = client();
    let api_key = HeaderName::from_static("x-api-key");
    let by_api_key = serve(
        App::default(),
        layer().scope(ClientScope::header(api_key.clone())),
    )
    .await;
    let order = |key: &str| {
        client
            .post(by_api_key.url("/orders"))
            .header(&api_key, key)
            .header(header::AUTHORIZATION, "Bearer same-for-all")
            .header(KEY, "k")
            .body("{}")
    };
    assert!(!send(order("a")).await.replayed());
    assert!(!send(order("b")).await.replayed());
    assert!(send(order("a")).await.replayed());

    // An authentication middleware inside the layer's reach puts the subject in extensions.
    let runs = Arc::new(AtomicU64::new(0));
    let app = App {
        runs: Arc::clone(&runs),
        ..App::default()
    };
    let router = routes(app)
        .layer(layer().scope(ClientScope::extension::<Subject>()))
        .layer(axum::middleware::from_fn(
            |mut request: axum::extract::Request, next: axum::middleware::Next| async move {
                let user = request
                    .headers()
                    .get("x-user")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| Subject(v.to_owned()));
                if let Some(user) = user {
                    request.extensions_mut().insert(user);
                }
                next.run(request).await
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let order = |user: &str| {
        client
            .post(format!("{base}/orders"))
            .header("x-user", user)
            .header(KEY, "k")
            .body("{}")
    };
    assert!(!send(order("ann")).await.replayed());
    assert!(!send(order("bob")).await.replayed());
    assert!(send(order("ann")).await.replayed());
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    // A custom extractor.
    let by_tenant = ClientScope::from_fn(|request| {
        request
            .headers
            .get("x-tenant")
            .map(|tenant| ClientId::from_bytes(tenant.as_bytes()))
    });
    let server = serve(App::default(), layer().scope(by_tenant)).await;
    let order = |tenant: &str| {
        client
            .post(server.url("/orders"))
            .header("x-tenant", tenant)
            .header(KEY, "k")
            .body("{}")
    };
    assert!(!send(order("t1")).await.replayed());
    assert!(!send(order("t2")).await.replayed());
    assert!(send(order("t2")).await.replayed());
}

#[tokio::test]
async fn a_configured_header_name_carries_the_key() {
    let layer = layer()
        .header_name(HeaderName::from_static("x-request-key"))
        .require_key(true);
    let server = serve(App::default(), layer).await;
    let reply = post_order(&server, "k", "{}").await;
    let detail = reply.problem(400, "missing-key");
    assert!(detail.contains("x-request-key"), "{detail}");
    let order = || {
        client()
            .post(server.url("/orders"))
            .header("x-request-key", "k")
            .body("{}")
    };
    assert!(!send(order()).await.replayed());
    assert!(send(order()).await.replayed());
}

/// 200 identical requests at once, `reject` mode (the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_duplicates_create_one_order() {
    let app = App {
        pause: Some(Duration::from_millis(50)),
        ..App::default()
    };
    let server = Arc::new(serve(app, layer()).await);
    let replies = concurrently(&server, 200).await;

    assert_eq!(server.runs(), 1, "exactly one order created");
    let mut original = 0;
    let mut replays = 0;
    let mut conflicts = 0;
    for reply in &replies {
        match reply.status {
            StatusCode::CREATED if reply.replayed() => replays += 1,
            StatusCode::CREATED => original += 1,
            StatusCode::CONFLICT => {
                reply.problem(409, "in-progress");
                assert!(reply.headers.contains_key(header::RETRY_AFTER));
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {}", reply.text()),
        }
        if reply.status == StatusCode::CREATED {
            assert_eq!(reply.json()["id"], "ord_1");
        }
    }
    assert_eq!(original, 1);
    assert_eq!(original + replays + conflicts, 200);
    assert!(conflicts > 0, "the requests overlapped the 50 ms handler");
}

/// 200 identical requests at once, `wait` mode: every duplicate gets the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_duplicates_in_wait_mode_all_get_the_order() {
    let app = App {
        pause: Some(Duration::from_millis(50)),
        ..App::default()
    };
    let server = Arc::new(serve(app, layer().on_in_progress(InProgressPolicy::Wait)).await);
    let replies = concurrently(&server, 200).await;

    assert_eq!(server.runs(), 1, "exactly one order created");
    let originals = replies.iter().filter(|r| !r.replayed()).count();
    assert_eq!(originals, 1);
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        assert_eq!(reply.json()["id"], "ord_1");
    }
}

async fn concurrently(server: &Arc<Server>, n: usize) -> Vec<Reply> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(n)
        .build()
        .unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (server, client, start) = (Arc::clone(server), client.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                let request = client
                    .post(server.url("/orders"))
                    .header(header::AUTHORIZATION, "Bearer load")
                    .header(KEY, "\"concurrent-1\"")
                    .body(r#"{"item":"book"}"#);
                send(request).await
            })
        })
        .collect();
    let all = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(tasks))
        .await
        .expect("200 requests finish within 60 s");
    all.into_iter().map(|r| r.unwrap()).collect()
}

/// The layer over plain hyper and a `tower::service_fn`: no axum involved.
#[tokio::test]
async fn the_layer_wraps_any_tower_service_over_http_types() {
    use http_body_util::{BodyExt as _, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceBuilder;

    let runs = Arc::new(AtomicU64::new(0));
    let service = ServiceBuilder::new().layer(layer()).service_fn({
        let runs = Arc::clone(&runs);
        move |request: http::Request<idempotency::http::RequestBody<hyper::body::Incoming>>| {
            let runs = Arc::clone(&runs);
            async move {
                let body = request.into_body().collect().await?.to_bytes();
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                let text = format!("run {n}: {}", String::from_utf8_lossy(&body));
                Ok::<_, hyper::Error>(
                    http::Response::builder()
                        .status(201)
                        .body(Full::new(Bytes::from(text)))
                        .unwrap(),
                )
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });

    let client = client();
    let request = || {
        client
            .post(format!("{base}/anything"))
            .header(KEY, "k")
            .body("hello")
    };
    let first = send(request()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.text(), "run 1: hello");
    let retry = send(request()).await;
    assert!(retry.replayed());
    assert_eq!(retry.text(), "run 1: hello");
    let reused = send(
        client
            .post(format!("{base}/anything"))
            .header(KEY, "k")
            .body("bye"),
    )
    .await;
    reused.problem(422, "key-reused");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Signals when the request's future is dropped (completed or cancelled by the server).
struct Dropped(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Dropped {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            let _ = done.send(());
        }
    }
}

/// A client that gives up (its timeout) while the handler runs: the server drops the
/// request's future, but the handler runs on in its own task and its response is stored. The
/// client's retry gets 409 while it runs, then the replay; the handler runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_mid_handler_gets_the_replay_not_a_second_run() {
    let (entered, mut entries) = mpsc::unbounded_channel();
    let gate = Arc::new(Gate {
        entered,
        permits: Semaphore::new(0),
    });
    let app = App {
        gate: Some(Arc::clone(&gate)),
        ..App::default()
    };
    let runs = Arc::clone(&app.runs);
    let (dropped, mut drops) = mpsc::unbounded_channel::<tokio::sync::oneshot::Receiver<()>>();
    let router = routes(app)
        .layer(layer().require_key(true))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let (done, gone) = tokio::sync::oneshot::channel();
                let _ = dropped.send(gone);
                async move {
                    let _guard = Dropped(Some(done));
                    next.run(request).await
                }
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let order = |client: &reqwest::Client| {
        client
            .post(format!("{base}/orders"))
            .header(header::AUTHORIZATION, CREDENTIAL)
            .header(KEY, "order-1")
            .body(r#"{"cents":1999}"#)
    };

    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let first = tokio::spawn(order(&impatient).send());
    entries.recv().await.unwrap(); // the handler runs, held by the gate
    assert!(first.await.unwrap().unwrap_err().is_timeout());
    // The server noticed the disconnect and dropped the request's future.
    let gone = drops.recv().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("the server drops the request of a client that went away")
        .unwrap();

    let client = client();
    let retry = send(order(&client)).await;
    retry.problem(409, "in-progress");
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    gate.permits.add_permits(1);
    let mut replay = None;
    for _ in 0..200 {
        let retry = send(order(&client)).await;
        if retry.status != StatusCode::CONFLICT {
            replay = Some(retry);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let replay = replay.expect("the first request finishes and is stored");
    assert_eq!(replay.status, StatusCode::CREATED, "{}", replay.text());
    assert!(replay.replayed());
    assert_eq!(replay.json()["id"], "ord_1");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "charged once");
}

/// A client value that cannot be encoded.
#[derive(Clone)]
struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this subject cannot be encoded"))
    }
}

#[tokio::test]
async fn a_client_scope_that_fails_refuses_the_request() {
    let runs = Arc::new(AtomicU64::new(0));
    let app = App {
        runs: Arc::clone(&runs),
        ..App::default()
    };
    let router = routes(app)
        .layer(layer().scope(ClientScope::extension::<Unencodable>()))
        .layer(axum::middleware::from_fn(
            |mut request: axum::extract::Request, next: axum::middleware::Next| async move {
                if request.headers().contains_key("x-user") {
                    request.extensions_mut().insert(Unencodable);
                }
                next.run(request).await
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = client();
    let order = || {
        client
            .post(format!("{base}/orders"))
            .header(KEY, "k")
            .body("{}")
    };

    // Never the shared anonymous scope: refused, and the handler does not run.
    for _ in 0..2 {
        let reply = send(order().header("x-user", "ann")).await;
        let detail = reply.problem(500, "scope-failed");
        assert!(detail.contains("not processed"), "{detail}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    // Without the extension the client is not identified: refused too.
    send(order()).await.problem(400, "unidentified-client");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

/// A replay carries the stored headers without the hop-by-hop ones (`Connection`, the headers
/// it names, `Keep-Alive`) and with a fresh `Date`, not the stored one.
#[tokio::test]
async fn a_replay_drops_hop_by_hop_headers_and_the_stored_date() {
    let server = serve(App::default(), layer()).await;
    let url = server.url("/hop");
    let first = send(client().post(&url).header(KEY, "hop")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.headers["x-kept"], "yes");
    assert_eq!(first.headers[header::DATE], "Mon, 01 Jan 2001 00:00:00 GMT");
    let retry = send(client().post(&url).header(KEY, "hop")).await;
    assert!(retry.replayed());
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.headers["x-kept"], "yes");
    for name in ["x-hop-only", "keep-alive"] {
        assert!(!retry.headers.contains_key(name), "{name} replayed");
    }
    assert!(
        retry
            .headers
            .get(header::CONNECTION)
            .is_none_or(|value| !value.to_str().unwrap().contains("x-hop-only")),
        "the stored Connection header replayed"
    );
    let date = retry.headers.get(header::DATE).expect("a date");
    assert_ne!(
        date, "Mon, 01 Jan 2001 00:00:00 GMT",
        "the stored date replayed"
    );
    assert_eq!(server.runs(), 1);
}

/// A layer whose own options are invalid refuses every request with a problem that says so,
/// and the handler never runs.
#[tokio::test]
async fn a_misconfigured_layer_says_so_and_runs_nothing() {
    let server = serve(App::default(), layer().ttl(Duration::ZERO)).await;
    let reply = post_order(&server, "k-misconfigured", "{}").await;
    let detail = reply.problem(500, "misconfigured");
    assert!(detail.contains("`ttl`"), "{detail}");
    assert_eq!(server.runs(), 0);
}

/// The method alone is part of the fingerprint: the same path, body and key under another
/// covered method is a reused key.
#[tokio::test]
async fn another_method_alone_is_a_reused_key() {
    let server = serve(App::default(), layer()).await;
    let client = client();
    let url = server.url("/orders/ord_5");
    let first = send(client.patch(&url).header(KEY, "k-method").body("{}")).await;
    assert_eq!(first.status, StatusCode::OK);
    let reused = send(client.post(&url).header(KEY, "k-method").body("{}")).await;
    reused.problem(422, "key-reused");
    let retry = send(client.patch(&url).header(KEY, "k-method").body("{}")).await;
    assert!(retry.replayed());
    assert_eq!(server.runs(), 1);
}

#[tokio::test]
async fn problem_types_point_at_the_services_own_docs_and_can_be_linked() {
    let base = "https://api.example.com/problems/";
    let layer = layer()
        .require_key(true)
        .problem_types(base)
        .expect("a valid base")
        .link_problem_types(true);
    let server = serve(App::default(), layer).await;

    let missing = send(client().post(server.url("/orders")).body("{}")).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.json()["type"], format!("{base}missing-key"));
    assert_eq!(
        missing.headers[header::LINK],
        format!("<{base}missing-key>; rel=\"describedby\"").as_str()
    );
    let first = post_order(&server, "k-problems", r#"{"item":"book"}"#).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.headers.contains_key(header::LINK), "not on answers");
    let reused = post_order(&server, "k-problems", r#"{"item":"pen"}"#).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.json()["type"], format!("{base}key-reused"));
    assert_eq!(
        reused.headers[header::LINK],
        format!("<{base}key-reused>; rel=\"describedby\"").as_str()
    );

    // The default: this crate's docs, and no Link header.
    let plain = serve(App::default(), self::layer().require_key(true)).await;
    let missing = send(client().post(plain.url("/orders")).body("{}")).await;
    assert_eq!(
        missing.json()["type"],
        format!("{}missing-key", idempotency::http::PROBLEM_TYPE_BASE)
    );
    assert!(!missing.headers.contains_key(header::LINK));

    for bad in ["", "not a uri", "https://x/<p>", "https://x/\"q\""] {
        let refused = self::layer().problem_types(bad);
        assert!(
            matches!(
                refused,
                Err(idempotency::Error::InvalidOption {
                    option: "problem_types",
                    ..
                })
            ),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn a_reserialized_json_retry_replays_with_fingerprint_json() {
    let json = |request: reqwest::RequestBuilder, body: &'static str| {
        request
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body)
    };
    let server = serve(App::default(), layer().fingerprint_json(true)).await;
    let post = |key: &'static str, body: &'static str| {
        let request = client().post(server.url("/orders")).header(KEY, key);
        send(json(request, body))
    };
    let first = post("k-json", r#"{"item":"book","qty":2,"price":12.50}"#).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let reordered = post(
        "k-json",
        "{ \"price\": 12.5,\n  \"qty\": 2.0, \"item\": \"book\" }",
    )
    .await;
    assert!(reordered.replayed(), "{}", reordered.text());
    assert_eq!(reordered.body, first.body);
    let changed = post("k-json", r#"{"item":"book","qty":3,"price":12.50}"#).await;
    changed.problem(422, "key-reused");
    assert_eq!(server.runs(), 1);

    // Not JSON by its content type, or not valid JSON: raw bytes.
    let text = |body: &'static str| {
        client()
            .post(server.url("/orders"))
            .header(KEY, "k-text")
            .header(header::CONTENT_TYPE, "text/plain")
            .body(body)
    };
    assert_eq!(
        send(text(r#"{"a":1,"b":2}"#)).await.status,
        StatusCode::CREATED
    );
    send(text(r#"{"b":2,"a":1}"#))
        .await
        .problem(422, "key-reused");
    let invalid = |body: &'static str| {
        json(
            client()
                .post(server.url("/orders"))
                .header(KEY, "k-invalid"),
            body,
        )
    };
    assert_eq!(send(invalid("{not json")).await.status, StatusCode::CREATED);
    assert!(send(invalid("{not json")).await.replayed());
    send(invalid("{not  json")).await.problem(422, "key-reused");

    // Off by default: the bytes are the request.
    let strict = serve(App::default(), self::layer()).await;
    let post = |body: &'static str| {
        let request = client().post(strict.url("/orders")).header(KEY, "k-strict");
        send(json(request, body))
    };
    assert_eq!(post(r#"{"a":1,"b":2}"#).await.status, StatusCode::CREATED);
    post(r#"{"b":2,"a":1}"#).await.problem(422, "key-reused");
}
