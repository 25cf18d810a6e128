use idempotency::idempotent;

#[derive(serde::Serialize)]
struct Receipt {
    id: u64,
}

#[idempotent]
async fn charge(order_id: String) -> Result<Receipt, idempotency::Error> {
    Ok(Receipt { id: order_id.len() as u64 })
}

fn main() {}
