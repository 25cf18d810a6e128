use idempotency::idempotent;

struct Tx;
struct Records;
static RECORDS: Records = Records;

// `transaction` must name an argument.
#[idempotent(transaction = txn, store = RECORDS)]
async fn not_an_argument(tx: &mut Tx, order_id: u64) -> Result<u64, idempotency::Error> {
    let _ = tx;
    Ok(order_id)
}

// The transaction is borrowed mutably, so the record can be written in it.
#[idempotent(transaction = tx, store = RECORDS)]
async fn not_a_mutable_reference(tx: &Tx, order_id: u64) -> Result<u64, idempotency::Error> {
    let _ = tx;
    Ok(order_id)
}

// The store that writes the records must be named.
#[idempotent(transaction = tx)]
async fn without_a_store(tx: &mut Tx, order_id: u64) -> Result<u64, idempotency::Error> {
    let _ = tx;
    Ok(order_id)
}

// Once only.
#[idempotent(transaction = tx, store = RECORDS, transaction = tx)]
async fn twice(tx: &mut Tx, order_id: u64) -> Result<u64, idempotency::Error> {
    let _ = tx;
    Ok(order_id)
}

// An argument name, not an expression.
#[idempotent(transaction = self.tx, store = RECORDS)]
async fn an_expression(order_id: u64) -> Result<u64, idempotency::Error> {
    Ok(order_id)
}

fn main() {}
