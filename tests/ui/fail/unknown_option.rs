use idempotency::idempotent;

#[idempotent(retries = 3, ttl = "1h")]
async fn charge(order_id: String) -> Result<u64, idempotency::Error> {
    Ok(order_id.len() as u64)
}

fn main() {}
