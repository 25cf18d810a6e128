use idempotency::idempotent;

#[derive(Debug)]
struct PaymentError;

impl From<idempotency::Error> for PaymentError {
    fn from(_: idempotency::Error) -> Self {
        PaymentError
    }
}

#[idempotent(store_errors)]
async fn charge(order_id: String) -> Result<u64, PaymentError> {
    Ok(order_id.len() as u64)
}

fn main() {}
