use idempotency::idempotent;

struct Gateway;

#[idempotent]
async fn charge(order_id: String, gateway: &Gateway) -> Result<u64, idempotency::Error> {
    let _ = gateway;
    Ok(order_id.len() as u64)
}

fn main() {}
