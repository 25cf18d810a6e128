//! Linearizability of transactional mode: concurrent clients each run transactions on a few
//! keys — claim the key in the transaction, and when they own it, record an output and
//! commit or roll back — and each key's history is checked against the same sequential model,
//! where a transaction is one operation that takes effect at its commit: the first commit of
//! an owner completes the record, every later transaction replays that output (or is refused
//! as key reuse for another fingerprint), and an owner that rolled back found the key free.

use std::time::{Duration, Instant};

use idempotency::sqlx::Pool;
use idempotency::transaction::Claimed;
use idempotency::{Digest, Error, Key, SqlDialect, SqlStore, Token};

use super::{Event, Op, Ret, Rng, fingerprint, verify};

/// `clients` concurrent clients a key, `transactions` each, on `keys` keys at once; every
/// key's history must be linearizable. With `faults` (a connection cut under the client),
/// a failed commit is an operation whose outcome is unknown; a transaction that failed
/// before its commit changed nothing either way. Returns what the transactions returned,
/// counted.
pub(crate) async fn check<DB: SqlDialect>(
    store: SqlStore<DB>,
    pool: Pool<DB>,
    seed: u64,
    keys: usize,
    clients: usize,
    transactions: usize,
    faults: bool,
) -> Tally {
    let mut rng = Rng::new(seed);
    let mut tasks = Vec::new();
    let mut names = Vec::new();
    for k in 0..keys {
        let key = Key::new(
            format!("linearizability-tx:{seed}"),
            1,
            Digest::of_bytes(format!("key-{k}-{}", Token::random()).as_bytes()),
        );
        names.push(key.clone());
        for c in 0..clients {
            let client_rng = Rng::new(rng.next());
            let (store, pool, key) = (store.clone(), pool.clone(), key.clone());
            tasks.push((
                k,
                tokio::spawn(async move {
                    client(store, pool, key, c, client_rng, transactions, faults).await
                }),
            ));
        }
    }
    let mut histories: Vec<Vec<Event>> = vec![Vec::new(); keys];
    for (k, task) in tasks {
        let events = task
            .await
            .expect("a client's task")
            .unwrap_or_else(|error| panic!("seed {seed}: a store error: {error}"));
        histories[k].extend(events);
    }
    verify(seed, &names, &mut histories);
    let mut tally = Tally::default();
    for event in histories.iter().flatten() {
        match event.ret {
            Ret::Ran => tally.ran += 1,
            Ret::Completed(..) => tally.replayed += 1,
            Ret::RolledBack => tally.rolled_back += 1,
            Ret::Reused => tally.reused += 1,
            Ret::Aborted => tally.aborted += 1,
            _ => tally.unknown += 1,
        }
    }
    tally
}

/// What the transactions of a check returned.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    pub(crate) ran: usize,
    pub(crate) replayed: usize,
    pub(crate) rolled_back: usize,
    pub(crate) reused: usize,
    pub(crate) aborted: usize,
    pub(crate) unknown: usize,
}

/// One client's transactions on `key`: its own fingerprint (two clients share each), an
/// output of its own, and two transactions in three rolled back after they owned the key (so
/// that the key stays free a while, and owners race for it).
async fn client<DB: SqlDialect>(
    store: SqlStore<DB>,
    pool: Pool<DB>,
    key: Key,
    client: usize,
    mut rng: Rng,
    transactions: usize,
    faults: bool,
) -> Result<Vec<Event>, String> {
    let mut events = Vec::with_capacity(transactions);
    let tag = (client % 2) as u8;
    for n in 0..transactions {
        tokio::time::sleep(Duration::from_millis(rng.below(3))).await;
        let commit = rng.one_in(3);
        let output = (client * 16 + n % 16) as u8;
        let called = Instant::now();
        let ret = match transaction(&store, &pool, &key, tag, output, commit).await {
            Ok(ret) => ret,
            Err(Failure::BeforeCommit(_)) => Ret::Aborted,
            Err(Failure::AtCommit(_)) if faults => Ret::Unknown,
            Err(Failure::AtCommit(error)) => return Err(error),
        };
        events.push(Event {
            client,
            op: Op::Transaction {
                fingerprint: tag,
                output,
                commit,
            },
            ret,
            called,
            returned: Instant::now(),
        });
    }
    Ok(events)
}

enum Failure {
    /// The transaction failed before its commit was sent: it changed nothing.
    BeforeCommit(String),
    /// Its commit failed: it may have committed or not.
    AtCommit(String),
}

async fn transaction<DB: SqlDialect>(
    store: &SqlStore<DB>,
    pool: &Pool<DB>,
    key: &Key,
    tag: u8,
    output: u8,
    commit: bool,
) -> Result<Ret, Failure> {
    let before = |error: idempotency::sqlx::Error| Failure::BeforeCommit(error.to_string());
    let refused = |error: Error| Failure::BeforeCommit(error.to_string());
    let mut tx = pool.begin().await.map_err(before)?;
    let claimed = store
        .in_transaction(key.clone(), fingerprint(tag))
        .claim::<u8, Error>(&mut tx)
        .await;
    let owner = match claimed {
        Ok(Claimed::Owned(owner)) => owner,
        // Dropping `tx` rolls it back: a replay wrote nothing.
        Ok(Claimed::Replayed(replayed)) => {
            return Ok(Ret::Completed(tag, replayed.map_err(refused)?));
        }
        Err(Error::KeyReused { .. }) => return Ok(Ret::Reused),
        // Another transaction held the key past the wait (an uncommitted claim is not in the
        // model's state): refused, nothing changed.
        Err(Error::InProgress { .. }) => return Ok(Ret::Aborted),
        Err(error) => return Err(refused(error)),
    };
    owner
        .finish(&mut tx, Ok::<u8, Error>(output))
        .await
        .map_err(refused)?;
    if !commit {
        tx.rollback().await.map_err(before)?;
        return Ok(Ret::RolledBack);
    }
    match tx.commit().await {
        Ok(()) => Ok(Ret::Ran),
        Err(error) => Err(Failure::AtCommit(error.to_string())),
    }
}
