use idempotency::idempotent;

#[idempotent(ttl = "1h", ttl = "2h")]
async fn charge(order_id: String) -> Result<u64, idempotency::Error> {
    Ok(order_id.len() as u64)
}

fn main() {}
