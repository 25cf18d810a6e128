use idempotency::idempotent;

#[idempotent(on_in_progress = later)]
async fn charge(order_id: String) -> Result<u64, idempotency::Error> {
    Ok(order_id.len() as u64)
}

#[idempotent(version = 99999999999, name = "")]
async fn refund((order_id, _cents): (String, u64)) -> Result<u64, idempotency::Error> {
    Ok(order_id.len() as u64)
}

fn main() {}
