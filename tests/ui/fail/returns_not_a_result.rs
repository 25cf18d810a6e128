use idempotency::idempotent;

#[idempotent]
async fn charge(order_id: String) -> u64 {
    order_id.len() as u64
}

#[idempotent]
async fn refund(order_id: String) -> impl std::fmt::Debug {
    order_id
}

fn main() {}
