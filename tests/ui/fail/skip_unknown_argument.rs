use idempotency::idempotent;

#[idempotent(skip(gateway))]
async fn charge(order_id: String, amount_cents: u64) -> Result<u64, idempotency::Error> {
    Ok(order_id.len() as u64 + amount_cents)
}

fn main() {}
