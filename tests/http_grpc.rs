//! The layer in gRPC mode on a tonic server, over real HTTP/2 on loopback: a unary method
//! written by hand (messages defined here with prost's derive, no code generation), a tonic
//! client, and the `idempotency-key` metadata.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use idempotency::http::IdempotencyLayer;
use idempotency::{Idempotency, InProgressPolicy, MemoryStore};
use tonic::body::Body;
use tonic::metadata::MetadataValue;
use tonic::server::{NamedService, UnaryService};
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct Order {
    #[prost(string, tag = "1")]
    item: String,
    #[prost(uint32, tag = "2")]
    quantity: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Receipt {
    #[prost(string, tag = "1")]
    id: String,
}

const CREATE: &str = "/shop.Orders/Create";
const STREAMING: &str = "/shop.Orders/Stream";

/// The `shop.Orders` service: `Create` answers a receipt, or `NOT_FOUND` with trailing
/// metadata for the item "none", or `UNAVAILABLE` for the item "busy"; `Stream` (not named to
/// the layer) answers like `Create`.
#[derive(Clone, Default)]
struct Orders {
    runs: Arc<AtomicU64>,
    pause: Duration,
}

impl NamedService for Orders {
    const NAME: &'static str = "shop.Orders";
}

/// `Create` (and `Stream`): one unary call of [`Orders`].
struct Create(Orders);

impl UnaryService<Order> for Create {
    type Response = Receipt;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Receipt>, Status>> + Send>>;

    fn call(&mut self, request: Request<Order>) -> Self::Future {
        let runs = Arc::clone(&self.0.runs);
        let pause = self.0.pause;
        Box::pin(async move {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let order = request.into_inner();
            match order.item.as_str() {
                "none" => {
                    let mut metadata = tonic::metadata::MetadataMap::new();
                    metadata.insert("x-stock", MetadataValue::from_static("0"));
                    Err(Status::with_metadata(
                        Code::NotFound,
                        format!("no such item (run {n})"),
                        metadata,
                    ))
                }
                "busy" => Err(Status::unavailable(format!("busy (run {n})"))),
                _ => Ok(Response::new(Receipt {
                    id: format!("ord_{n}"),
                })),
            }
        })
    }
}

impl tower::Service<http::Request<Body>> for Orders {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            if path == CREATE || path == STREAMING {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::<Receipt, Order>::default());
                Ok(grpc.unary(Create(service), request).await)
            } else {
                Ok(Status::unimplemented(path).into_http())
            }
        })
    }
}

struct Running {
    channel: Channel,
    runs: Arc<AtomicU64>,
}

impl Running {
    fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }

    async fn call(
        &self,
        path: &str,
        key: Option<&str>,
        item: &str,
    ) -> Result<Response<Receipt>, Status> {
        let mut client = tonic::client::Grpc::new(self.channel.clone());
        client.ready().await.expect("the channel is ready");
        let mut request = Request::new(Order {
            item: item.to_owned(),
            quantity: 1,
        });
        request
            .metadata_mut()
            .insert("authorization", MetadataValue::from_static("Bearer alice"));
        if let Some(key) = key {
            request
                .metadata_mut()
                .insert("idempotency-key", key.parse().expect("a metadata value"));
        }
        let path = path.parse().expect("a path");
        client
            .unary(request, path, ProstCodec::<Order, Receipt>::default())
            .await
    }
}

async fn serve(orders: Orders, layer: IdempotencyLayer) -> Running {
    let runs = Arc::clone(&orders.runs);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("an address");
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        Server::builder()
            .layer(layer)
            .add_service(orders)
            .serve_with_incoming(incoming),
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a URI")
        .connect()
        .await
        .expect("connect");
    Running { channel, runs }
}

fn layer() -> IdempotencyLayer {
    IdempotencyLayer::new(Idempotency::new(MemoryStore::new())).grpc([CREATE])
}

fn replayed<T>(response: &Response<T>) -> bool {
    response.metadata().get("idempotent-replayed").is_some()
}

fn problem(status: &Status) -> String {
    status
        .metadata()
        .get("idempotency-problem")
        .and_then(|value| value.to_str().ok())
        .and_then(|uri| uri.rsplit('#').next())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_retried_unary_call_replays_its_message_status_and_trailers() {
    let server = serve(Orders::default(), layer()).await;
    let first = server
        .call(CREATE, Some("k-1"), "book")
        .await
        .expect("a receipt");
    assert_eq!(first.get_ref().id, "ord_1");
    assert!(!replayed(&first));
    let retry = server
        .call(CREATE, Some("k-1"), "book")
        .await
        .expect("the replay");
    assert_eq!(retry.get_ref().id, "ord_1");
    assert!(replayed(&retry));
    assert_eq!(server.runs(), 1);

    // An error status with trailing metadata is stored (NOT_FOUND is a 404) and replayed with
    // its message and metadata, from the trailers.
    let missing = server
        .call(CREATE, Some("k-2"), "none")
        .await
        .expect_err("NOT_FOUND");
    let again = server
        .call(CREATE, Some("k-2"), "none")
        .await
        .expect_err("NOT_FOUND again");
    assert_eq!(again.code(), Code::NotFound);
    assert_eq!(again.message(), "no such item (run 2)");
    assert_eq!(again.message(), missing.message());
    assert_eq!(again.metadata().get("x-stock").expect("x-stock"), "0");
    assert_eq!(server.runs(), 2);

    // A transient status is not stored: the retry runs the method again.
    let busy = server
        .call(CREATE, Some("k-3"), "busy")
        .await
        .expect_err("UNAVAILABLE");
    assert_eq!(busy.code(), Code::Unavailable);
    let busy = server
        .call(CREATE, Some("k-3"), "busy")
        .await
        .expect_err("UNAVAILABLE");
    assert_eq!(busy.message(), "busy (run 4)");
    assert_eq!(server.runs(), 4);
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_already_exists() {
    let server = serve(Orders::default(), layer()).await;
    server
        .call(CREATE, Some("k"), "book")
        .await
        .expect("a receipt");
    let reused = server
        .call(CREATE, Some("k"), "lamp")
        .await
        .expect_err("refused");
    assert_eq!(reused.code(), Code::AlreadyExists);
    assert!(reused.message().contains("another"), "{}", reused.message());
    assert_eq!(problem(&reused), "key-reused");
    assert_eq!(server.runs(), 1);
}

#[tokio::test]
async fn a_duplicate_in_flight_is_aborted_or_waits_for_the_replay() {
    let orders = Orders {
        pause: Duration::from_millis(400),
        ..Orders::default()
    };
    let server = Arc::new(serve(orders, layer()).await);
    let first = tokio::spawn({
        let server = Arc::clone(&server);
        async move { server.call(CREATE, Some("k"), "book").await }
    });
    while server.runs() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let duplicate = server
        .call(CREATE, Some("k"), "book")
        .await
        .expect_err("in progress");
    assert_eq!(duplicate.code(), Code::Aborted);
    assert_eq!(problem(&duplicate), "in-progress");
    assert!(duplicate.metadata().get("retry-after").is_some());
    let first = first.await.expect("the task").expect("a receipt");

    let orders = Orders {
        pause: Duration::from_millis(400),
        ..Orders::default()
    };
    let waiting = serve(orders, layer().on_in_progress(InProgressPolicy::Wait)).await;
    let waiting = Arc::new(waiting);
    let original = tokio::spawn({
        let server = Arc::clone(&waiting);
        async move { server.call(CREATE, Some("w"), "book").await }
    });
    while waiting.runs() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let duplicate = waiting
        .call(CREATE, Some("w"), "book")
        .await
        .expect("the replay");
    let original = original.await.expect("the task").expect("a receipt");
    assert!(replayed(&duplicate));
    assert_eq!(duplicate.get_ref(), original.get_ref());
    assert_eq!(waiting.runs(), 1);
    assert_eq!(first.get_ref().id, "ord_1");
}

#[tokio::test]
async fn calls_not_named_and_calls_without_a_key_pass_through() {
    let server = serve(Orders::default(), layer()).await;
    for _ in 0..2 {
        let streamed = server
            .call(STREAMING, Some("k"), "book")
            .await
            .expect("a receipt");
        assert!(!replayed(&streamed));
        let keyless = server.call(CREATE, None, "book").await.expect("a receipt");
        assert!(!replayed(&keyless));
    }
    assert_eq!(server.runs(), 4);

    let required = serve(Orders::default(), layer().require_key(true)).await;
    let refused = required
        .call(CREATE, None, "book")
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(problem(&refused), "missing-key");
    assert_eq!(required.runs(), 0);
}
