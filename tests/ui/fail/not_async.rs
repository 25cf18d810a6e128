use idempotency::idempotent;

#[idempotent]
fn charge(order_id: String) -> Result<u64, idempotency::Error> {
    Ok(order_id.len() as u64)
}

fn main() {}
