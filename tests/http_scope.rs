//! Whose key it is, over real HTTP: a request whose client the layer cannot identify is refused
//! unless the layer shares a scope on purpose, and apps that authenticate by cookie scope keys
//! by the session cookie. Each server is axum on an ephemeral loopback port; the client is
//! reqwest.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use idempotency::http::{ClientId, ClientScope, IdempotencyLayer};
use idempotency::{Idempotency, MemoryStore};
use serde_json::{Value, json};

const KEY: &str = "idempotency-key";

/// Creates an order for the session it finds, and sets a cookie that only that session may
/// see, as a cookie-authenticated app does.
async fn create_order(State(runs): State<Arc<AtomicU64>>, headers: HeaderMap) -> Response {
    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
    let session = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix("session="))
        .unwrap_or("")
        .trim_matches('"')
        .to_owned();
    (
        StatusCode::CREATED,
        [(header::SET_COOKIE, format!("cart={session}-{n}; HttpOnly"))],
        axum::Json(json!({ "id": format!("ord_{n}"), "session": session })),
    )
        .into_response()
}

struct Server {
    url: String,
    runs: Arc<AtomicU64>,
}

impl Server {
    fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }
}

/// A layer built with every default but the scope, when one is given.
fn layer(scope: Option<ClientScope>) -> IdempotencyLayer {
    let layer = IdempotencyLayer::new(Idempotency::new(MemoryStore::new()));
    match scope {
        Some(scope) => layer.scope(scope),
        None => layer,
    }
}

async fn serve(layer: IdempotencyLayer) -> Server {
    let runs = Arc::new(AtomicU64::new(0));
    let router = Router::new()
        .route("/orders", post(create_order))
        .with_state(Arc::clone(&runs))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/orders", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Server { url, runs }
}

async fn server(scope: Option<ClientScope>) -> Server {
    serve(layer(scope)).await
}

/// The same request from every client: one key, one body.
fn order(server: &Server) -> reqwest::RequestBuilder {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
        .post(&server.url)
        .header(KEY, "order-7")
        .body(r#"{"item":"book"}"#)
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

    fn id(&self) -> String {
        assert_eq!(self.status, StatusCode::CREATED, "{:?}", self.body);
        self.json()["id"].as_str().unwrap().to_owned()
    }

    fn replayed(&self) -> bool {
        self.headers.contains_key("idempotent-replayed")
    }

    fn set_cookie(&self) -> &str {
        self.headers[header::SET_COOKIE].to_str().unwrap()
    }

    /// Asserts the `unidentified-client` problem and returns its detail.
    fn unidentified(&self) -> String {
        assert_eq!(self.status, StatusCode::BAD_REQUEST, "{:?}", self.body);
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let problem = self.json();
        let kind = problem["type"].as_str().unwrap();
        assert!(kind.ends_with("#unidentified-client"), "{kind}");
        assert_eq!(problem["status"], 400);
        assert!(!self.headers.contains_key(header::SET_COOKIE));
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

/// The app authenticates by cookie and the layer keeps its default scope, `Authorization`:
/// neither user is identified, so neither request runs, and Bob never gets Alice's order or
/// her `Set-Cookie`.
#[tokio::test]
async fn two_clients_the_default_scope_cannot_identify_are_refused_not_shared() {
    for require_key in [false, true] {
        let server = serve(layer(None).require_key(require_key)).await;
        for session in ["alice", "bob", "alice"] {
            let reply =
                send(order(&server).header(header::COOKIE, format!("session={session}"))).await;
            let detail = reply.unidentified();
            assert!(detail.contains("`authorization` header"), "{detail}");
            assert!(detail.contains("not processed"), "{detail}");
            assert!(detail.contains("ClientScope::share_anonymous"), "{detail}");
        }
        // An empty credential identifies nobody either.
        send(order(&server).header(header::AUTHORIZATION, ""))
            .await
            .unidentified();
        assert_eq!(server.runs(), 0, "the handler never ran");

        // A client that sends its credential is served as before.
        let alice = || order(&server).header(header::AUTHORIZATION, "Bearer alice");
        let first = send(alice()).await;
        assert_eq!(first.id(), "ord_1");
        assert!(send(alice()).await.replayed());
        assert_eq!(server.runs(), 1);
    }
}

#[derive(Clone, serde::Serialize)]
struct Subject(String);

/// `extension` and `from_fn` that find no client refuse the request too.
#[tokio::test]
async fn an_extension_or_a_function_that_finds_nobody_refuses_the_request() {
    let by_subject = server(Some(ClientScope::extension::<Subject>())).await;
    let by_tenant = server(Some(ClientScope::from_fn(|request| {
        let tenant = request.headers.get("x-tenant")?;
        Some(ClientId::from_bytes(tenant.as_bytes()))
    })))
    .await;
    for server in [&by_subject, &by_tenant] {
        for _ in 0..2 {
            let detail = send(order(server).header(header::AUTHORIZATION, "Bearer ann"))
                .await
                .unidentified();
            // The server's types are not the client's business.
            assert!(!detail.contains("Subject"), "{detail}");
        }
        assert_eq!(server.runs(), 0);
    }
    let first = send(order(&by_tenant).header("x-tenant", "t1")).await;
    assert_eq!(first.id(), "ord_1");
    assert!(
        send(order(&by_tenant).header("x-tenant", "t1"))
            .await
            .replayed()
    );
    let other = send(order(&by_tenant).header("x-tenant", "t2")).await;
    assert_eq!(other.id(), "ord_2");
}

/// `ClientScope::cookie`: each session has its own keys, whatever else the request carries and
/// however its `Cookie` headers are laid out.
#[tokio::test]
async fn a_cookie_scope_keeps_each_session_apart() {
    let server = server(Some(ClientScope::cookie("session"))).await;
    let cookie = |value: &str| order(&server).header(header::COOKIE, value.to_owned());

    let alice = send(cookie("session=alice")).await;
    assert_eq!(alice.id(), "ord_1");
    assert_eq!(alice.set_cookie(), "cart=alice-1; HttpOnly");

    // Bob sends Alice's key with Alice's request: his own order and his own cookie.
    let bob = send(cookie("theme=dark; session=bob")).await;
    assert_eq!(bob.id(), "ord_2");
    assert!(!bob.replayed());
    assert_eq!(bob.set_cookie(), "cart=bob-2; HttpOnly");

    // Alice's retries find her response, however her cookies are sent.
    for retry in [
        cookie("session=alice"),
        cookie("theme=dark; session=alice; lang=en"),
        cookie("session=\"alice\""),
        cookie("theme=dark").header(header::COOKIE, "session=alice"),
        cookie("session=alice").header(header::AUTHORIZATION, "Bearer ignored"),
    ] {
        let retry = send(retry).await;
        assert!(retry.replayed());
        assert_eq!(retry.id(), "ord_1");
        assert_eq!(retry.set_cookie(), "cart=alice-1; HttpOnly");
    }

    // No session, an empty one (cleared at logout), or only look-alike names: refused.
    for headers in [
        None,
        Some("theme=dark"),
        Some("session="),
        Some("Session=alice; sessions=alice; xsession=alice"),
    ] {
        let request = match headers {
            Some(value) => cookie(value),
            None => order(&server).header(header::AUTHORIZATION, "Bearer alice"),
        };
        let detail = send(request).await.unidentified();
        assert!(detail.contains("`session` cookie"), "{detail}");
    }
    assert_eq!(server.runs(), 2);
}

/// As documented: a session id that rotates between two tries is a new client, so the retry
/// runs the handler again.
#[tokio::test]
async fn a_rotated_session_cookie_starts_a_new_scope() {
    let server = server(Some(ClientScope::cookie("session"))).await;
    let before = send(order(&server).header(header::COOKIE, "session=s1")).await;
    assert_eq!(before.id(), "ord_1");
    let after = send(order(&server).header(header::COOKIE, "session=s2")).await;
    assert!(!after.replayed());
    assert_eq!(after.id(), "ord_2");
    assert_eq!(server.runs(), 2);
}

/// Sharing is a choice written in the scope: `share_anonymous` puts the clients it cannot
/// identify in one scope (identified clients stay apart); `global` puts everybody in one.
#[tokio::test]
async fn a_shared_scope_is_an_explicit_choice() {
    let visitors = server(Some(ClientScope::cookie("session").share_anonymous())).await;
    let first = send(order(&visitors)).await;
    assert_eq!(first.id(), "ord_1");
    assert_eq!(first.set_cookie(), "cart=-1; HttpOnly");
    // Another visitor without a session gets the first one's response, as configured.
    let second = send(order(&visitors).header(header::COOKIE, "theme=dark")).await;
    assert!(second.replayed());
    assert_eq!(second.id(), "ord_1");
    assert_eq!(second.set_cookie(), "cart=-1; HttpOnly");
    // A logged-in user with the same key is still on her own.
    let alice = send(order(&visitors).header(header::COOKIE, "session=alice")).await;
    assert!(!alice.replayed());
    assert_eq!(alice.id(), "ord_2");
    assert_eq!(visitors.runs(), 2);

    let global = server(Some(ClientScope::global())).await;
    let alice = send(order(&global).header(header::AUTHORIZATION, "Bearer alice")).await;
    assert_eq!(alice.id(), "ord_1");
    for other in [
        order(&global).header(header::AUTHORIZATION, "Bearer bob"),
        order(&global),
    ] {
        let reply = send(other).await;
        assert!(reply.replayed());
        assert_eq!(reply.id(), "ord_1");
    }
    assert_eq!(global.runs(), 1);
}
