//! Optimistic versioning over real HTTP on loopback: an axum server that answers reads with
//! `ETag` and compares-and-sets updates against `If-Match`, and reqwest clients. A stale
//! update gets `412 Precondition Failed` (and changes nothing), an unconditional one `428`,
//! and twenty concurrent read-modify-write clients retrying on `412` lose no update.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::{CONTENT_TYPE, ETAG, IF_MATCH};
use http::{HeaderMap, StatusCode};
use idempotency::retry::RetryPolicy;
use idempotency::versioning::http::{PreconditionError, etag, expected_version};
use idempotency::versioning::{AsVersionConflict, VersionConflict};
use idempotency::{Versioned, retry_on_conflict};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Doc {
    text: String,
    count: u64,
}

type Docs = Arc<Mutex<HashMap<u32, Versioned<Doc>>>>;

async fn read(State(docs): State<Docs>, Path(id): Path<u32>) -> Response {
    let docs = docs.lock().expect("docs");
    match docs.get(&id) {
        Some(doc) => ([(ETAG, etag(doc.version))], axum::Json(doc.value.clone())).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn update(
    State(docs): State<Docs>,
    Path(id): Path<u32>,
    headers: HeaderMap,
    axum::Json(next): axum::Json<Doc>,
) -> Response {
    let refuse = |error: PreconditionError| error.into_response().into_response();
    let expected = match expected_version(&headers) {
        Ok(expected) => expected,
        Err(error) => return refuse(error),
    };
    let mut docs = docs.lock().expect("docs");
    let Some(doc) = docs.get_mut(&id) else {
        return refuse(PreconditionError::Failed { current: None });
    };
    match doc.replace(expected, next) {
        Ok(version) => ([(ETAG, etag(version))], axum::Json(doc.value.clone())).into_response(),
        Err(conflict) => refuse(conflict.into()),
    }
}

async fn serve() -> String {
    let docs: Docs = Arc::default();
    {
        let mut docs = docs.lock().expect("docs");
        for id in [1, 2] {
            let doc = Doc {
                text: "draft".into(),
                count: 0,
            };
            docs.insert(id, Versioned::new(doc, 1));
        }
    }
    let router = Router::new()
        .route("/docs/{id}", get(read).put(update))
        .with_state(docs);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: serde_json::Value,
}

async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("send");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

async fn get_doc(base: &str, id: u32) -> (Doc, String) {
    let reply = send(client().get(format!("{base}/docs/{id}"))).await;
    assert_eq!(reply.status, StatusCode::OK);
    let tag = reply.headers[ETAG].to_str().expect("etag").to_owned();
    (serde_json::from_value(reply.body).expect("doc"), tag)
}

async fn put_doc(base: &str, id: u32, if_match: Option<&str>, doc: &Doc) -> Reply {
    let mut request = client()
        .put(format!("{base}/docs/{id}"))
        .header(CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(doc).expect("json"));
    if let Some(tag) = if_match {
        request = request.header(IF_MATCH, tag);
    }
    send(request).await
}

fn assert_problem(reply: &Reply, status: u16) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.body);
    assert_eq!(reply.headers[CONTENT_TYPE], "application/problem+json");
    assert_eq!(reply.body["status"], status);
}

#[tokio::test]
async fn a_stale_update_gets_412_and_changes_nothing() {
    let base = serve().await;
    let (doc_a, tag_a) = get_doc(&base, 1).await;
    let (doc_b, tag_b) = get_doc(&base, 1).await;
    assert_eq!((tag_a.as_str(), tag_b.as_str()), ("\"1\"", "\"1\""));

    let mine = Doc {
        text: "alice's edit".into(),
        ..doc_a
    };
    let first = put_doc(&base, 1, Some(&tag_a), &mine).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers[ETAG], "\"2\"");

    // Bob computed his edit from version 1 too: refused, told the current version.
    let theirs = Doc {
        text: "bob's edit".into(),
        ..doc_b
    };
    let stale = put_doc(&base, 1, Some(&tag_b), &theirs).await;
    assert_problem(&stale, 412);
    assert_eq!(stale.headers[ETAG], "\"2\"");
    assert_eq!(get_doc(&base, 1).await, (mine.clone(), "\"2\"".to_owned()));

    // After re-reading, Bob's update lands on version 2.
    let (_, current) = get_doc(&base, 1).await;
    let retried = put_doc(&base, 1, Some(&current), &theirs).await;
    assert_eq!(retried.status, StatusCode::OK);
    assert_eq!(retried.headers[ETAG], "\"3\"");
}

#[tokio::test]
async fn updates_without_one_strong_version_are_refused() {
    let base = serve().await;
    let edit = Doc {
        text: "blind write".into(),
        count: 99,
    };
    assert_problem(&put_doc(&base, 1, None, &edit).await, 428);
    assert_problem(&put_doc(&base, 1, Some("*"), &edit).await, 428);
    assert_problem(&put_doc(&base, 1, Some("\"1\", \"2\""), &edit).await, 428);
    assert_problem(&put_doc(&base, 1, Some("1"), &edit).await, 400);
    // Weak tags never match under If-Match's strong comparison; neither do foreign ones.
    assert_problem(&put_doc(&base, 1, Some("W/\"1\""), &edit).await, 412);
    assert_problem(&put_doc(&base, 1, Some("\"v1\""), &edit).await, 412);
    assert_problem(&put_doc(&base, 404, Some("\"1\""), &edit).await, 412);
    // None of them changed anything.
    let (doc, tag) = get_doc(&base, 1).await;
    assert_eq!((doc.text.as_str(), tag.as_str()), ("draft", "\"1\""));
}

/// A client's view of a refused update.
#[derive(Debug)]
enum ClientError {
    Stale(VersionConflict),
    #[allow(dead_code)] // read through `Debug` when a test fails
    Unexpected(StatusCode),
}

impl AsVersionConflict for ClientError {
    fn version_conflict(&self) -> Option<&VersionConflict> {
        match self {
            ClientError::Stale(conflict) => Some(conflict),
            ClientError::Unexpected(_) => None,
        }
    }
}

fn version_of(tag: &str) -> i64 {
    tag.trim_matches('"')
        .parse()
        .expect("our etags are versions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_retrying_on_412_lose_no_update() {
    let base = Arc::new(serve().await);
    // Every client's first read happens before anyone writes: 19 of the 20 first writes are
    // stale, and without If-Match they would overwrite each other.
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let refusals = Arc::new(AtomicUsize::new(0));
    let policy = RetryPolicy::new()
        .max_attempts(500)
        .initial_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(20))
        .max_elapsed(Duration::from_secs(60));
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (base, barrier, refusals, policy) = (
            Arc::clone(&base),
            Arc::clone(&barrier),
            Arc::clone(&refusals),
            policy.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut first = true;
            retry_on_conflict(&policy, || {
                let wait_for_all = std::mem::take(&mut first);
                let (base, barrier, refusals) = (&base, &barrier, &refusals);
                async move {
                    let (doc, tag) = get_doc(base, 2).await;
                    if wait_for_all {
                        barrier.wait().await;
                    }
                    let next = Doc {
                        count: doc.count + 1,
                        ..doc
                    };
                    let reply = put_doc(base, 2, Some(&tag), &next).await;
                    match reply.status {
                        StatusCode::OK => {
                            Ok(version_of(reply.headers[ETAG].to_str().expect("etag")))
                        }
                        StatusCode::PRECONDITION_FAILED => {
                            refusals.fetch_add(1, Ordering::SeqCst);
                            let current = reply.headers.get(ETAG).and_then(|tag| tag.to_str().ok());
                            Err(ClientError::Stale(VersionConflict {
                                expected: version_of(&tag),
                                current: current.map(version_of),
                            }))
                        }
                        other => Err(ClientError::Unexpected(other)),
                    }
                }
            })
            .await
        }));
    }
    let mut versions = Vec::new();
    for client in clients {
        versions.push(client.await.expect("client task").expect("update lands"));
    }
    versions.sort_unstable();
    assert_eq!(versions, (2..=21).collect::<Vec<i64>>());
    assert!(refusals.load(Ordering::SeqCst) >= 19);
    let (doc, tag) = get_doc(&base, 2).await;
    assert_eq!((doc.count, tag.as_str()), (20, "\"21\""));
}
