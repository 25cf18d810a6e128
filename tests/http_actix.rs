//! The `Idempotency-Key` layer as actix-web middleware, over real HTTP: an actix-web server on
//! an ephemeral loopback port (in its own thread, on actix's runtime), a real client (reqwest,
//! or raw HTTP/1.1 over TCP to hang up mid-request).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use idempotency::http::{ClientScope, IdempotencyLayer, StoredStatuses};
use idempotency::{Idempotency, InProgressPolicy, MemoryStore};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

const KEY: &str = "idempotency-key";
const CREDENTIAL: &str = "Bearer test-client";

#[derive(Clone, Default)]
struct State {
    runs: Arc<AtomicU64>,
    /// How long `POST /orders` takes.
    pause: Duration,
}

#[derive(Deserialize)]
struct NewOrder {
    item: String,
}

async fn create_order(state: web::Data<State>, order: web::Json<NewOrder>) -> HttpResponse {
    let n = state.runs.fetch_add(1, Ordering::SeqCst) + 1;
    if !state.pause.is_zero() {
        tokio::time::sleep(state.pause).await;
    }
    let id = format!("ord_{n}");
    HttpResponse::Created()
        .insert_header((header::LOCATION.as_str(), format!("/orders/{id}")))
        .insert_header(("x-order-id", id.clone()))
        .json(json!({"id": id, "item": order.item}))
}

async fn status(state: web::Data<State>, code: web::Path<u16>) -> HttpResponse {
    state.runs.fetch_add(1, Ordering::SeqCst);
    let code = actix_web::http::StatusCode::from_u16(code.into_inner()).expect("a status");
    HttpResponse::build(code).body("status")
}

async fn large(state: web::Data<State>) -> HttpResponse {
    state.runs.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Created()
        .insert_header((header::LOCATION.as_str(), "/large/1"))
        .body(vec![b'x'; 4096])
}

async fn read(state: web::Data<State>) -> HttpResponse {
    state.runs.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Ok().body("read")
}

struct Server {
    base: String,
    addr: std::net::SocketAddr,
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

/// An actix-web server with the layer, on its own thread; it lives as long as the test process.
fn serve(state: State, layer: IdempotencyLayer) -> Server {
    let runs = Arc::clone(&state.runs);
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(web::Data::new(state.clone()))
                    .wrap(layer.clone())
                    .route("/orders", web::post().to(create_order))
                    .route("/orders", web::get().to(read))
                    .route("/status/{code}", web::post().to(status))
                    .route("/large", web::post().to(large))
            })
            .workers(1)
            .disable_signals()
            .bind(("127.0.0.1", 0))
            .expect("bind a loopback port");
            let addr = server.addrs()[0];
            sender.send(addr).expect("the test waits for the address");
            server.run().await.expect("the server runs");
        });
    });
    let addr = receiver
        .recv_timeout(Duration::from_secs(20))
        .expect("the server starts");
    Server {
        base: format!("http://{addr}"),
        addr,
        runs,
    }
}

fn layer() -> IdempotencyLayer {
    IdempotencyLayer::new(Idempotency::new(MemoryStore::new()))
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
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

    /// Asserts an RFC 9457 problem with this status and type.
    fn problem(&self, status: u16, kind: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let problem = self.json();
        let type_uri = problem["type"].as_str().expect("a type");
        assert!(type_uri.ends_with(&format!("#{kind}")), "{type_uri}");
        assert_eq!(problem["status"], status);
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client")
}

async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("an answer");
    Reply {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("a body"),
    }
}

async fn post(server: &Server, path: &str, key: &str, body: &'static str) -> Reply {
    send(
        client()
            .post(server.url(path))
            .header(header::AUTHORIZATION, CREDENTIAL)
            .header(header::CONTENT_TYPE, "application/json")
            .header(KEY, key)
            .body(body),
    )
    .await
}

#[tokio::test]
async fn a_retry_gets_the_stored_response_and_the_handler_runs_once() {
    let server = serve(State::default(), layer().require_key(true));
    let first = post(&server, "/orders", "k-1", r#"{"item":"book"}"#).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed());
    assert_eq!(first.json()["id"], "ord_1");
    assert_eq!(first.json()["item"], "book", "the handler read the body");

    let retry = post(&server, "/orders", "\"k-1\"", r#"{"item":"book"}"#).await;
    assert!(retry.replayed());
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.body, first.body);
    for name in [header::CONTENT_TYPE, header::LOCATION] {
        assert_eq!(retry.headers[&name], first.headers[&name]);
    }
    assert_eq!(retry.headers["x-order-id"], "ord_1");
    assert_eq!(server.runs(), 1);

    let other = post(&server, "/orders", "k-2", r#"{"item":"book"}"#).await;
    assert!(!other.replayed());
    assert_eq!(other.json()["id"], "ord_2");
    assert_eq!(server.runs(), 2);
}

#[tokio::test]
async fn keys_are_checked_and_refused_as_under_tower() {
    let server = serve(State::default(), layer().require_key(true));
    let body = r#"{"item":"book"}"#;
    post(&server, "/orders", "k", body).await;

    post(&server, "/orders", "k", r#"{"item":"lamp"}"#)
        .await
        .problem(422, "key-reused");
    post(&server, "/orders", "", body)
        .await
        .problem(400, "malformed-key");
    let keyless = send(
        client()
            .post(server.url("/orders"))
            .header(header::AUTHORIZATION, CREDENTIAL)
            .body(body),
    )
    .await;
    keyless.problem(400, "missing-key");
    let anonymous = send(
        client()
            .post(server.url("/orders"))
            .header(KEY, "k")
            .body(body),
    )
    .await;
    anonymous.problem(400, "unidentified-client");
    // Another client's key is its own: its order is new, never the first client's.
    let bob = send(
        client()
            .post(server.url("/orders"))
            .header(header::AUTHORIZATION, "Bearer bob")
            .header(header::CONTENT_TYPE, "application/json")
            .header(KEY, "k")
            .body(body),
    )
    .await;
    assert_eq!(bob.status, StatusCode::CREATED);
    assert!(!bob.replayed());
    // GET passes through, key or not.
    let read = send(client().get(server.url("/orders")).header(KEY, "k")).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(server.runs(), 3);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_nothing_runs() {
    let server = serve(State::default(), layer().max_body_bytes(16));
    post(&server, "/orders", "k", r#"{"item":"a long book title"}"#)
        .await
        .problem(413, "body-too-large");
    assert_eq!(server.runs(), 0);
    let fits = post(&server, "/orders", "k", r#"{"item":"a"}"#).await;
    assert_eq!(fits.status, StatusCode::CREATED);
}

#[tokio::test]
async fn transient_statuses_are_passed_on_and_not_stored() {
    let server = serve(State::default(), layer());
    for round in 1..=2 {
        let reply = post(&server, "/status/503", "k", "{}").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!reply.replayed());
        assert_eq!(server.runs(), round, "a 503 is run again");
    }
    let server = serve(
        State::default(),
        layer().stored_statuses(StoredStatuses::all()),
    );
    post(&server, "/status/503", "k", "{}").await;
    let replay = post(&server, "/status/503", "k", "{}").await;
    assert!(replay.replayed());
    assert_eq!(server.runs(), 1);
}

#[tokio::test]
async fn a_response_too_large_to_store_is_sent_whole_and_never_run_again() {
    let server = serve(State::default(), layer().max_response_bytes(1024));
    let first = post(&server, "/large", "k", "{}").await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.body.len(), 4096, "the first client gets all of it");
    let retry = post(&server, "/large", "k", "{}").await;
    retry.problem(201, "response-too-large");
    assert!(retry.replayed());
    assert_eq!(retry.headers[header::LOCATION], "/large/1");
    assert_eq!(server.runs(), 1);
}

#[tokio::test]
async fn a_duplicate_in_flight_gets_409_or_waits_for_the_replay() {
    let state = State {
        pause: Duration::from_millis(600),
        ..State::default()
    };
    let server = Arc::new(serve(state.clone(), layer()));
    let first = tokio::spawn({
        let server = Arc::clone(&server);
        async move { post(&server, "/orders", "k", r#"{"item":"book"}"#).await }
    });
    while server.runs() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let duplicate = post(&server, "/orders", "k", r#"{"item":"book"}"#).await;
    duplicate.problem(409, "in-progress");
    assert!(duplicate.headers.contains_key(header::RETRY_AFTER));
    let first = first.await.expect("the first request");
    assert_eq!(first.status, StatusCode::CREATED);

    let fresh = State {
        pause: state.pause,
        ..State::default()
    };
    let waiting = serve(fresh, layer().on_in_progress(InProgressPolicy::Wait));
    let waiting = Arc::new(waiting);
    let first = tokio::spawn({
        let server = Arc::clone(&waiting);
        async move { post(&server, "/orders", "w", r#"{"item":"book"}"#).await }
    });
    while waiting.runs() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let duplicate = post(&waiting, "/orders", "w", r#"{"item":"book"}"#).await;
    let first = first.await.expect("the first request");
    assert!(duplicate.replayed());
    assert_eq!(duplicate.body, first.body);
    assert_eq!(waiting.runs(), 1);
}

#[tokio::test]
async fn json_bodies_can_be_fingerprinted_by_their_canonical_form() {
    let server = serve(State::default(), layer().fingerprint_json(true));
    let first = post(&server, "/orders", "k", r#"{"item":"book","n":1}"#).await;
    let reordered = post(
        &server,
        "/orders",
        "k",
        "{ \"n\": 1.0, \"item\": \"book\" }",
    )
    .await;
    assert!(reordered.replayed());
    assert_eq!(reordered.body, first.body);
    assert_eq!(server.runs(), 1);
}

/// A client that hangs up while the handler runs does not cancel it: it finishes, its response
/// is stored, and the retry gets it.
#[tokio::test]
async fn a_client_that_hangs_up_leaves_the_handler_to_finish() {
    let state = State {
        pause: Duration::from_millis(300),
        ..State::default()
    };
    let server = serve(state, layer());
    let body = r#"{"item":"book"}"#;
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let request = format!(
        "POST /orders HTTP/1.1\r\nhost: test\r\nauthorization: {CREDENTIAL}\r\ncontent-type: application/json\r\n{KEY}: gone\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    while server.runs() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(stream);
    // The handler is still inside its pause; once it ends, its response is stored.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let retry = loop {
        let retry = post(&server, "/orders", "gone", body).await;
        if retry.status != StatusCode::CONFLICT || std::time::Instant::now() > deadline {
            break retry;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(retry.status, StatusCode::CREATED);
    assert!(retry.replayed(), "the handler finished and was stored");
    assert_eq!(retry.json()["id"], "ord_1");
    assert_eq!(server.runs(), 1);
}

#[tokio::test]
async fn clients_can_be_scoped_by_cookie() {
    let server = serve(
        State::default(),
        layer().scope(ClientScope::cookie("session")),
    );
    let order = |cookie: &'static str| {
        send(
            client()
                .post(server.url("/orders"))
                .header(header::COOKIE, cookie)
                .header(header::CONTENT_TYPE, "application/json")
                .header(KEY, "k")
                .body(r#"{"item":"book"}"#),
        )
    };
    let alice = order("session=alice").await;
    assert_eq!(alice.status, StatusCode::CREATED);
    assert!(order("session=alice").await.replayed());
    assert!(!order("session=bob").await.replayed());
    assert_eq!(server.runs(), 2);
}
