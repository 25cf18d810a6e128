use std::time::Duration;

use idempotency::{Idempotency, MemoryStore, idempotent};
use serde::{Deserialize, Serialize};

mod sdk {
    pub use idempotency;
}

#[derive(Serialize)]
struct ChargeRequest {
    order_id: String,
    amount_cents: u64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Receipt {
    amount_cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum PaymentError {
    Declined,
    Idempotency(String),
}

impl From<idempotency::Error> for PaymentError {
    fn from(error: idempotency::Error) -> Self {
        PaymentError::Idempotency(error.to_string())
    }
}

struct Gateway;

const LEASE: Duration = Duration::from_secs(10);

#[idempotent(
    key = req.order_id,
    ttl = "24h",
    lease = LEASE,
    executor = idempotency,
    skip(gateway, idempotency),
    name = "payments.charge",
    version = 3,
    on_in_progress = reject,
    store_errors,
    crate = crate::sdk::idempotency,
)]
async fn charge(
    req: ChargeRequest,
    gateway: &Gateway,
    idempotency: &Idempotency,
) -> Result<Receipt, PaymentError> {
    let _ = gateway;
    if req.amount_cents == 0 {
        return Err(PaymentError::Declined);
    }
    Ok(Receipt { amount_cents: req.amount_cents })
}

#[idempotent(on_in_progress = wait, ttl = Duration::from_secs(60))]
async fn generic<T: Serialize + Send + Sync>(item: &T, label: &str) -> Result<String, idempotency::Error> {
    let _ = item;
    Ok(label.to_owned())
}

#[idempotent]
async fn patterns(mut count: u32) -> Result<u32, idempotency::Error> {
    count += 1;
    Ok(count)
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let idempotency = Idempotency::new(MemoryStore::new());
        let request = || ChargeRequest { order_id: "A-1".into(), amount_cents: 5 };
        let first = charge(request(), &Gateway, &idempotency).await.unwrap();
        assert_eq!(first, charge(request(), &Gateway, &idempotency).await.unwrap());
        assert_eq!(generic(&[1, 2], "x").await.unwrap(), "x");
        assert_eq!(patterns(1).await.unwrap(), 2);
    });
}
