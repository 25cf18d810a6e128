//! The call a message is added in: its key, and how many messages it added so far. A
//! transactional call's body runs inside [`scope`], so the ids of the messages it adds are
//! derived from its key and are the same on every run of that body.

use std::cell::Cell;
use std::future::Future;

use crate::key::Key;

tokio::task_local! {
    static CALL: Lineage;
}

struct Lineage {
    key: Key,
    added: Cell<u32>,
}

/// Runs `body` as the call of `key`: [`Outbox::add`](super::Outbox::add) inside it derives
/// message ids from `key`.
pub(crate) async fn scope<F: Future>(key: &Key, body: F) -> F::Output {
    let lineage = Lineage {
        key: key.clone(),
        added: Cell::new(0),
    };
    CALL.scope(lineage, body).await
}

/// The next message's id in the current call: `{key}/{position}` (from 0), or `None`
/// outside a call.
pub(crate) fn next_id() -> Option<String> {
    CALL.try_with(|call| {
        let position = call.added.get();
        call.added.set(position.saturating_add(1));
        format!("{}/{position}", call.key)
    })
    .ok()
}

/// A named message's id in the current call: `{key}/{name}`, or `None` outside a call.
pub(crate) fn named_id(name: &str) -> Option<String> {
    CALL.try_with(|call| format!("{}/{name}", call.key)).ok()
}
