//! Instruction counts per call, for `valgrind --tool=callgrind`: unlike wall-clock time they
//! do not move when the machine is busy. `scripts/instructions.sh` runs every case twice (N and
//! 2N calls) and prints the difference per call, which cancels start-up.
//!
//! Cases share the function shape of `benches/overhead.rs`.

use std::hint::black_box;
use std::sync::LazyLock;

use idempotency::{Idempotency, MemoryStore, idempotent};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
struct ChargeRequest {
    order_id: String,
    amount_cents: u64,
    currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    charge_id: String,
    amount_cents: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
struct PaymentError(String);

impl From<idempotency::Error> for PaymentError {
    fn from(error: idempotency::Error) -> Self {
        PaymentError(error.to_string())
    }
}

fn receipt(req: &ChargeRequest) -> Receipt {
    Receipt {
        charge_id: format!("ch_{}", req.amount_cents),
        amount_cents: req.amount_cents,
    }
}

static EXECUTOR: LazyLock<Idempotency> = LazyLock::new(|| Idempotency::new(MemoryStore::new()));

async fn plain(req: ChargeRequest) -> Result<Receipt, PaymentError> {
    Ok(receipt(&req))
}

#[idempotent(store = EXECUTOR)]
async fn idempotent_charge(req: ChargeRequest) -> Result<Receipt, PaymentError> {
    Ok(receipt(&req))
}

#[cached::macros::cached(max_size = 1000)]
async fn cached_charge(req: ChargeRequest) -> Result<Receipt, PaymentError> {
    Ok(receipt(&req))
}

static RAW: LazyLock<moka::sync::Cache<[u8; 32], Receipt>> =
    LazyLock::new(|| moka::sync::Cache::builder().max_capacity(1000).build());

fn raw_digest(req: &ChargeRequest) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(req.order_id.as_bytes());
    hasher.update(req.amount_cents.to_le_bytes());
    hasher.update(req.currency.as_bytes());
    hasher.finalize().into()
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|arg| arg != "--bench");
    let case = args.next().unwrap_or_default();
    let calls: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let req = ChargeRequest {
        order_id: "order-1".into(),
        amount_cents: 1999,
        currency: "EUR".into(),
    };
    runtime.block_on(async {
        match case.as_str() {
            "plain" => {
                for _ in 0..calls {
                    black_box(plain(black_box(req.clone())).await.ok());
                }
            }
            "cached" => {
                for _ in 0..=calls {
                    black_box(cached_charge(black_box(req.clone())).await.ok());
                }
            }
            "raw" => {
                RAW.insert(raw_digest(&req), receipt(&req));
                for _ in 0..calls {
                    let req = black_box(req.clone());
                    black_box(RAW.get(&raw_digest(&req)));
                }
            }
            "replay" => {
                for _ in 0..=calls {
                    black_box(idempotent_charge(black_box(req.clone())).await.ok());
                }
            }
            "hash" => {
                for _ in 0..calls {
                    let mut builder = idempotency::DigestBuilder::new();
                    builder.push(black_box(&req));
                    black_box(builder.finish().ok());
                }
            }
            _ => {
                eprintln!(
                    "usage: instructions <plain|cached|raw|replay|hash> <calls> (run under callgrind; see scripts/instructions.sh)"
                );
            }
        }
    });
}
