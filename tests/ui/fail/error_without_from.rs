use idempotency::idempotent;

#[derive(Debug)]
struct PaymentError;

#[idempotent]
async fn charge(order_id: String) -> Result<u64, PaymentError> {
    Ok(order_id.len() as u64)
}

fn main() {}
