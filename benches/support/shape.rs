//! The function shape both benches measure, and its baselines: a plain call, the `cached`
//! crate's `#[cached]`, a hand-rolled `sha256(fields)` + moka lookup, and `#[idempotent]`
//! (also behind a closed store breaker).

use std::sync::LazyLock;

use idempotency::{Idempotency, MemoryStore, idempotent};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub(crate) struct ChargeRequest {
    pub(crate) order_id: String,
    pub(crate) amount_cents: u64,
    pub(crate) currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Receipt {
    pub(crate) charge_id: String,
    pub(crate) amount_cents: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct PaymentError(String);

impl From<idempotency::Error> for PaymentError {
    fn from(error: idempotency::Error) -> Self {
        PaymentError(error.to_string())
    }
}

pub(crate) fn request(n: u64) -> ChargeRequest {
    ChargeRequest {
        order_id: format!("order-{n}"),
        amount_cents: 1999,
        currency: "EUR".into(),
    }
}

pub(crate) fn receipt(req: &ChargeRequest) -> Receipt {
    Receipt {
        charge_id: format!("ch_{}", req.amount_cents),
        amount_cents: req.amount_cents,
    }
}

pub(crate) static EXECUTOR: LazyLock<Idempotency> =
    LazyLock::new(|| Idempotency::new(MemoryStore::builder().max_capacity_bytes(1 << 30).build()));

pub(crate) async fn plain(req: ChargeRequest) -> Result<Receipt, PaymentError> {
    Ok(receipt(&req))
}

#[idempotent(store = EXECUTOR)]
pub(crate) async fn idempotent_charge(req: ChargeRequest) -> Result<Receipt, PaymentError> {
    Ok(receipt(&req))
}

/// The same executor shape with a closed store breaker in front of its claims.
pub(crate) static GUARDED: LazyLock<Idempotency> = LazyLock::new(|| {
    Idempotency::builder(MemoryStore::builder().max_capacity_bytes(1 << 30).build())
        .store_breaker(idempotency::CircuitBreaker::new())
        .build()
});

#[idempotent(store = GUARDED)]
pub(crate) async fn guarded_charge(req: ChargeRequest) -> Result<Receipt, PaymentError> {
    Ok(receipt(&req))
}

#[cached::macros::cached(max_size = 100_000)]
pub(crate) async fn cached_charge(req: ChargeRequest) -> Result<Receipt, PaymentError> {
    Ok(receipt(&req))
}

static RAW: LazyLock<moka::sync::Cache<[u8; 32], Receipt>> =
    LazyLock::new(|| moka::sync::Cache::builder().max_capacity(100_000).build());

fn raw_digest(req: &ChargeRequest) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(req.order_id.as_bytes());
    hasher.update(req.amount_cents.to_le_bytes());
    hasher.update(req.currency.as_bytes());
    hasher.finalize().into()
}

/// Fills the raw baseline's cache for `req`.
pub(crate) fn raw_prime(req: &ChargeRequest) {
    RAW.insert(raw_digest(req), receipt(req));
}

/// The hand-rolled floor: hash the fields with SHA-256, look the digest up in moka.
pub(crate) fn raw_lookup(req: &ChargeRequest) -> Option<Receipt> {
    RAW.get(&raw_digest(req))
}
