//! Quickstart: charge a card exactly once while the client retries through a flaky network.
//!
//! Run it with `cargo run --example quickstart` (no server needed: the default store is
//! in-process). The client's connection drops the first two responses *after* the charge went
//! through — the classic double-charge — and a user double-clicks "Pay" five times at once.
//! The gateway is charged once per order, and every retry gets the first receipt back.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use idempotency::idempotent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize)]
struct ChargeRequest {
    order_id: String,
    amount_cents: u64,
    card_token: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    charge_id: String,
    amount_cents: u64,
}

#[derive(Debug, thiserror::Error)]
enum PaymentError {
    #[error("the gateway refused the charge: {0}")]
    Declined(String),
    #[error(transparent)]
    Idempotency(#[from] idempotency::Error),
}

/// A simulated payment provider that counts the charges it really made.
#[derive(Default)]
struct Gateway {
    charges: AtomicU64,
}

impl Gateway {
    async fn charge(&self, amount_cents: u64, card_token: &str) -> Result<String, PaymentError> {
        if card_token.starts_with("tok_declined") {
            return Err(PaymentError::Declined("insufficient funds".into()));
        }
        tokio::time::sleep(Duration::from_millis(40)).await; // the provider's latency
        let n = self.charges.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(format!("ch_{n:04}_{amount_cents}"))
    }
}

/// The service's endpoint: runs once per `order_id` for 24 hours.
#[idempotent(key = req.order_id, ttl = "24h", skip(gateway))]
async fn charge(req: ChargeRequest, gateway: &Gateway) -> Result<Receipt, PaymentError> {
    let charge_id = gateway.charge(req.amount_cents, &req.card_token).await?;
    Ok(Receipt {
        charge_id,
        amount_cents: req.amount_cents,
    })
}

/// The client's view: the request reaches the service, but the response is lost on the way
/// back while `drops_left` is above zero.
async fn call_over_flaky_network(
    req: ChargeRequest,
    gateway: &Gateway,
    drops_left: &AtomicU32,
) -> Result<Receipt, String> {
    let response = charge(req, gateway).await;
    let dropped = drops_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(1)
        })
        .is_ok();
    if dropped {
        return Err("timed out waiting for the response".into());
    }
    response.map_err(|error| error.to_string())
}

#[tokio::main]
async fn main() {
    let gateway = Gateway::default();
    let order = ChargeRequest {
        order_id: "order-1001".into(),
        amount_cents: 4_999,
        card_token: "tok_visa_4242".into(),
    };

    println!("1. a client retries through a network that drops two responses");
    let drops = AtomicU32::new(2);
    let mut receipt = None;
    for attempt in 1..=5 {
        match call_over_flaky_network(order.clone(), &gateway, &drops).await {
            Ok(got) => {
                println!(
                    "   attempt {attempt}: receipt {} ({} cents)",
                    got.charge_id, got.amount_cents
                );
                receipt = Some(got);
                break;
            }
            Err(error) => {
                println!("   attempt {attempt}: {error}; retrying with the same order id")
            }
        }
    }
    let receipt = receipt.expect("the third attempt gets the receipt");
    println!(
        "   the gateway charged {} time(s); the retries were replayed",
        gateway.charges.load(Ordering::SeqCst)
    );

    println!("2. a user double-clicks \"Pay\" five times at once");
    let order_2 = ChargeRequest {
        order_id: "order-1002".into(),
        amount_cents: 1_250,
        card_token: "tok_visa_4242".into(),
    };
    let clicks = futures::future::join_all((0..5).map(|_| charge(order_2.clone(), &gateway))).await;
    let ids: Vec<String> = clicks
        .into_iter()
        .map(|click| click.expect("each click gets the receipt").charge_id)
        .collect();
    println!("   five clicks, one receipt: {ids:?}");

    println!("3. the same order id with another amount is refused, not replayed");
    let tampered = ChargeRequest {
        amount_cents: 1,
        ..order.clone()
    };
    match charge(tampered, &gateway).await {
        Err(PaymentError::Idempotency(error)) => println!("   refused: {error}"),
        other => panic!("expected a key-reuse error, got {other:?}"),
    }

    println!("4. a declined card is an error: nothing is stored, so a retry runs again");
    let declined = ChargeRequest {
        order_id: "order-1003".into(),
        amount_cents: 700,
        card_token: "tok_declined".into(),
    };
    for attempt in 1..=2 {
        let outcome = charge(declined.clone(), &gateway).await;
        println!("   attempt {attempt}: {}", outcome.expect_err("declined"));
    }

    let charges = gateway.charges.load(Ordering::SeqCst);
    println!("the gateway made {charges} charges for 2 paid orders");
    assert_eq!(charges, 2, "each order must be charged exactly once");
    assert!(ids.iter().all(|id| *id == ids[0]));
    assert_eq!(receipt.amount_cents, 4_999);
}
