use idempotency::{Idempotency, idempotent};

// `store` is another name for `executor`: give one of them.
#[idempotent(store = idempotency, executor = idempotency, skip(idempotency))]
async fn both_store_first(idempotency: &Idempotency, order_id: u64) -> Result<u64, idempotency::Error> {
    let _ = idempotency;
    Ok(order_id)
}

#[idempotent(executor = idempotency, store = idempotency, skip(idempotency))]
async fn both_executor_first(idempotency: &Idempotency, order_id: u64) -> Result<u64, idempotency::Error> {
    let _ = idempotency;
    Ok(order_id)
}

#[idempotent(executor = idempotency, executor = idempotency, skip(idempotency))]
async fn twice(idempotency: &Idempotency, order_id: u64) -> Result<u64, idempotency::Error> {
    let _ = idempotency;
    Ok(order_id)
}

fn main() {}
