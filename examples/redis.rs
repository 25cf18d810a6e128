//! Exactly-once charges across service instances, on Redis.
//!
//! Run it with `cargo run --example redis --features redis` against the Redis at `REDIS_URL`
//! (default `redis://127.0.0.1:6379`; a Redis Cluster works the same with a cluster
//! connection). Two instances of a payment service share one Redis, as two processes behind a
//! load balancer would: a client's retries and a double submit that lands on both instances
//! charge the card once, and every caller gets the first receipt back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use idempotency::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use idempotency::redis::{self, AsyncCommands as _};
use idempotency::{CircuitBreaker, Idempotency, Key, RedisStore, Token, idempotent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize)]
struct ChargeRequest {
    order_id: String,
    amount_cents: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    charge_id: String,
    amount_cents: u64,
    instance: String,
}

#[derive(Debug, thiserror::Error)]
enum PaymentError {
    #[error(transparent)]
    Idempotency(#[from] idempotency::Error),
}

/// The payment provider, shared by both instances; counts the charges it really made.
#[derive(Default)]
struct Gateway {
    charges: AtomicU64,
}

/// One instance of the payment service.
struct PaymentService {
    name: &'static str,
    idempotency: Idempotency,
    gateway: Arc<Gateway>,
}

impl PaymentService {
    /// Runs once per `order_id` for 10 minutes, whichever instance the request reaches.
    #[idempotent(executor = self.idempotency, key = req.order_id, name = "payments.charge", ttl = "10m")]
    async fn charge(&self, req: ChargeRequest) -> Result<Receipt, PaymentError> {
        tokio::time::sleep(Duration::from_millis(100)).await; // the provider's latency
        let n = self.gateway.charges.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Receipt {
            charge_id: format!("ch_{n:04}"),
            amount_cents: req.amount_cents,
            instance: self.name.to_owned(),
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)));
    let connection = match ConnectionManager::new_with_config(
        redis::Client::open(url.as_str())?,
        config,
    )
    .await
    {
        Ok(connection) => connection,
        Err(error) => {
            eprintln!("cannot reach Redis at {url}: {error} (set REDIS_URL)");
            std::process::exit(1);
        }
    };
    // A prefix of its own per run, so that running the example again starts afresh.
    let prefix = format!("idempotency-example:{}:", Token::random());
    let store = RedisStore::builder(connection.clone())
        .prefix(prefix.as_str())
        .response_timeout(Duration::from_millis(500))
        .build()?;
    store.load_scripts().await?;
    println!("store: {store:?}");

    let gateway = Arc::new(Gateway::default());
    let instance = |name| PaymentService {
        name,
        // Separate executors: nothing is shared between the two instances but Redis. Each
        // puts a circuit breaker in front of it: if Redis goes down, calls fail closed at once
        // (`StoreError::CircuitOpen`) instead of each waiting out the 500 ms timeout.
        idempotency: Idempotency::builder(store.clone())
            .store_breaker(CircuitBreaker::new())
            .build(),
        gateway: Arc::clone(&gateway),
    };
    let (a, b) = (instance("instance-a"), instance("instance-b"));

    println!("1. a client charges order-1 on instance A, then retries on instance B");
    let order = ChargeRequest {
        order_id: "order-1".into(),
        amount_cents: 2_500,
    };
    let first = a.charge(order.clone()).await?;
    let retry = b.charge(order.clone()).await?;
    println!("   first: {first:?}");
    println!("   retry: {retry:?} (replayed from Redis)");
    assert_eq!(first, retry);

    println!("2. a double submit of order-2 reaches both instances at once");
    let order_2 = ChargeRequest {
        order_id: "order-2".into(),
        amount_cents: 990,
    };
    let (on_a, on_b) = tokio::join!(a.charge(order_2.clone()), b.charge(order_2.clone()));
    let (on_a, on_b) = (on_a?, on_b?);
    println!(
        "   A answered {} from {}, B answered {} from {}",
        on_a.charge_id, on_a.instance, on_b.charge_id, on_b.instance
    );
    assert_eq!(on_a, on_b);

    println!("3. order-1 again with another amount is refused, not replayed");
    match b
        .charge(ChargeRequest {
            amount_cents: 1,
            ..order
        })
        .await
    {
        Err(PaymentError::Idempotency(error)) => println!("   refused: {error}"),
        Ok(receipt) => panic!("a changed request must not be replayed: {receipt:?}"),
    }

    println!("4. where the record lives");
    let key = Key::derive("payments.charge", 1, "order-1")?;
    let redis_key = store.redis_key(&key);
    let mut raw = connection.clone();
    let ttl_ms: i64 = raw.pttl(&redis_key).await?;
    println!("   redis key {redis_key} (expires in {} s)", ttl_ms / 1000);

    let charges = gateway.charges.load(Ordering::SeqCst);
    println!("the gateway made {charges} charges for 2 orders");
    assert_eq!(charges, 2, "each order is charged exactly once");
    Ok(())
}
