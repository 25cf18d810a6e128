use idempotency::idempotent;

#[idempotent]
async fn charge(order_id: String) {
    let _ = order_id;
}

fn main() {}
