use idempotency::idempotent;

#[idempotent(ttl = "one day")]
async fn charge(order_id: String) -> Result<u64, idempotency::Error> {
    Ok(order_id.len() as u64)
}

#[idempotent(lease = "0s")]
async fn refund(order_id: String) -> Result<u64, idempotency::Error> {
    Ok(order_id.len() as u64)
}

fn main() {}
