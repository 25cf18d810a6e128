//! Linearizability of a real store: concurrent clients run random claim / complete / release /
//! renew / get on a few keys, each operation's call and return times are recorded, and each
//! key's history is checked against the sequential `Store` model (a Wing–Gong search with
//! memoization). Every run is seeded (`LINEARIZABILITY_SEED` replays one); a failure prints the
//! key's whole history and the seed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency::{Bytes, Claim, Digest, Fingerprint, Key, Record, Store, StoreError, Token};

/// A lease no operation outlives: the history is untimed (takeover is the lease tests' job).
const LEASE: Duration = Duration::from_secs(120);
const TTL: Duration = Duration::from_secs(600);

/// A small seeded generator (xorshift64*): the same seed gives the same operations.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Op {
    Claim {
        fingerprint: u8,
    },
    Complete {
        token: Token,
        fingerprint: u8,
        output: u8,
    },
    Release {
        token: Token,
    },
    Renew {
        token: Token,
    },
    Get,
}

/// What an operation returned, in the model's terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Ret {
    Acquired(Token),
    InProgress(u8),
    Completed(u8, u8),
    Missing,
    Done,
    Refused,
}

#[derive(Debug, Clone)]
struct Event {
    client: usize,
    op: Op,
    ret: Ret,
    called: Instant,
    returned: Instant,
}

/// The sequential model of one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Model {
    Free,
    InProgress {
        token: Token,
        fingerprint: u8,
    },
    Completed {
        token: Token,
        fingerprint: u8,
        output: u8,
    },
}

impl Model {
    /// `Some(next)` when `op` may return `ret` from this state.
    fn step(&self, op: &Op, ret: &Ret, used: &HashSet<Token>) -> Option<Model> {
        match (self, op) {
            (Model::Free, Op::Claim { fingerprint }) => match ret {
                Ret::Acquired(token) if !used.contains(token) => Some(Model::InProgress {
                    token: *token,
                    fingerprint: *fingerprint,
                }),
                _ => None,
            },
            (Model::InProgress { fingerprint, .. }, Op::Claim { .. }) => {
                (*ret == Ret::InProgress(*fingerprint)).then(|| self.clone())
            }
            (
                Model::Completed {
                    fingerprint,
                    output,
                    ..
                },
                Op::Claim { .. } | Op::Get,
            ) => (*ret == Ret::Completed(*fingerprint, *output)).then(|| self.clone()),
            (Model::Free, Op::Get) => (*ret == Ret::Missing).then(|| self.clone()),
            (Model::InProgress { fingerprint, .. }, Op::Get) => {
                (*ret == Ret::InProgress(*fingerprint)).then(|| self.clone())
            }
            (
                Model::InProgress { token: held, .. },
                Op::Complete {
                    token,
                    fingerprint,
                    output,
                },
            ) if held == token => (*ret == Ret::Done).then_some(Model::Completed {
                token: *token,
                fingerprint: *fingerprint,
                output: *output,
            }),
            // A retried complete by the token that completed the record is a no-op.
            (Model::Completed { token: held, .. }, Op::Complete { token, .. }) if held == token => {
                (*ret == Ret::Done).then(|| self.clone())
            }
            (Model::InProgress { token: held, .. }, Op::Release { token }) if held == token => {
                (*ret == Ret::Done).then_some(Model::Free)
            }
            (Model::InProgress { token: held, .. }, Op::Renew { token }) if held == token => {
                (*ret == Ret::Done).then(|| self.clone())
            }
            (_, Op::Complete { .. } | Op::Release { .. } | Op::Renew { .. }) => {
                (*ret == Ret::Refused).then(|| self.clone())
            }
        }
    }
}

/// Whether `history` (one key's) has a linearization: an order that respects real time (an
/// operation that returned before another was called comes first) in which the model
/// returns what each operation returned.
fn linearizable(history: &[Event]) -> bool {
    assert!(
        history.len() <= 64,
        "one key's history is at most 64 operations"
    );
    let mut seen = HashSet::new();
    let used = HashSet::new();
    search(history, 0, &Model::Free, &used, &mut seen)
}

fn search(
    history: &[Event],
    done: u64,
    model: &Model,
    used: &HashSet<Token>,
    seen: &mut HashSet<(u64, Model)>,
) -> bool {
    if done.count_ones() as usize == history.len() {
        return true;
    }
    if !seen.insert((done, model.clone())) {
        return false;
    }
    // Only an operation called before every pending one returned can go next.
    let first_return = history
        .iter()
        .enumerate()
        .filter(|(at, _)| done & (1 << at) == 0)
        .map(|(_, event)| event.returned)
        .min()
        .expect("a pending operation");
    for (at, event) in history.iter().enumerate() {
        if done & (1 << at) != 0 || event.called > first_return {
            continue;
        }
        if let Some(next) = model.step(&event.op, &event.ret, used) {
            let mut used = used.clone();
            if let Ret::Acquired(token) = event.ret {
                used.insert(token);
            }
            if search(history, done | (1 << at), &next, &used, seen) {
                return true;
            }
        }
    }
    false
}

fn fingerprint(tag: u8) -> Fingerprint {
    Fingerprint::from_digest(Digest::of_bytes(&[tag]))
}

fn fingerprint_tag(fingerprint: &Fingerprint) -> u8 {
    (0..2)
        .find(|tag| self::fingerprint(*tag) == *fingerprint)
        .expect("one of the test's fingerprints")
}

/// One client's operations on `key`: claims, and with what it owns, renewals, completions and
/// releases; sometimes a stale token's complete, release or renew (a zombie), sometimes a get.
async fn client(
    store: Arc<dyn Store>,
    key: Key,
    client: usize,
    mut rng: Rng,
    operations: usize,
) -> Result<Vec<Event>, StoreError> {
    let mut events = Vec::with_capacity(operations);
    let mut owned: Option<Token> = None;
    let mut stale: Option<Token> = None;
    let tag = (client % 2) as u8;
    for _ in 0..operations {
        let op = match (owned, rng.below(10)) {
            (Some(token), 0..=1) => Op::Renew { token },
            (Some(token), 2..=5) => Op::Complete {
                token,
                fingerprint: tag,
                output: client as u8,
            },
            (Some(token), 6..=8) => Op::Release { token },
            (None, 0..=1) if stale.is_some() => {
                let token = stale.expect("a stale token");
                match rng.below(3) {
                    0 => Op::Complete {
                        token,
                        fingerprint: tag,
                        output: client as u8,
                    },
                    1 => Op::Release { token },
                    _ => Op::Renew { token },
                }
            }
            (_, 9) => Op::Get,
            _ => Op::Claim { fingerprint: tag },
        };
        let called = Instant::now();
        let ret = match &op {
            Op::Claim { fingerprint: tag } => {
                match store.claim(&key, &fingerprint(*tag), LEASE).await? {
                    Claim::Acquired { token, .. } => Ret::Acquired(token),
                    Claim::InProgress { fingerprint, .. } => {
                        Ret::InProgress(fingerprint_tag(&fingerprint))
                    }
                    Claim::Completed {
                        fingerprint,
                        output,
                    } => Ret::Completed(fingerprint_tag(&fingerprint), output[0]),
                    other => panic!("an unknown claim answer: {other:?}"),
                }
            }
            Op::Complete {
                token,
                fingerprint: tag,
                output,
            } => fenced(
                store
                    .complete(
                        &key,
                        token,
                        &fingerprint(*tag),
                        Bytes::from(vec![*output]),
                        TTL,
                    )
                    .await,
            )?,
            Op::Release { token } => fenced(store.release(&key, token).await)?,
            Op::Renew { token } => fenced(store.renew(&key, token, LEASE).await)?,
            Op::Get => match store.get(&key).await? {
                None => Ret::Missing,
                Some(Record::InProgress { fingerprint, .. }) => {
                    Ret::InProgress(fingerprint_tag(&fingerprint))
                }
                Some(Record::Completed {
                    fingerprint,
                    output,
                    ..
                }) => Ret::Completed(fingerprint_tag(&fingerprint), output[0]),
                Some(other) => panic!("an unknown record: {other:?}"),
            },
        };
        let returned = Instant::now();
        match (&op, &ret) {
            (_, Ret::Acquired(token)) => owned = Some(*token),
            (Op::Complete { .. } | Op::Release { .. }, _) if owned.is_some() => {
                stale = owned.take();
            }
            _ => {}
        }
        events.push(Event {
            client,
            op,
            ret,
            called,
            returned,
        });
    }
    Ok(events)
}

fn fenced(result: Result<(), StoreError>) -> Result<Ret, StoreError> {
    match result {
        Ok(()) => Ok(Ret::Done),
        Err(StoreError::LeaseLost) => Ok(Ret::Refused),
        Err(error) => Err(error),
    }
}

/// The seed of this run: `LINEARIZABILITY_SEED` when set, else the clock.
pub(crate) fn seed() -> u64 {
    match std::env::var("LINEARIZABILITY_SEED") {
        Ok(seed) => seed.parse().expect("LINEARIZABILITY_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_nanos() as u64,
    }
}

/// `clients` concurrent clients a key, `operations` each, on `keys` keys at once; every key's
/// history must be linearizable.
pub(crate) async fn check(
    store: Arc<dyn Store>,
    seed: u64,
    keys: usize,
    clients: usize,
    operations: usize,
) {
    let mut rng = Rng::new(seed);
    let mut tasks = Vec::new();
    let mut names = Vec::new();
    for k in 0..keys {
        let key = Key::new(
            format!("linearizability:{seed}"),
            1,
            Digest::of_bytes(format!("key-{k}-{}", Token::random()).as_bytes()),
        );
        names.push(key.clone());
        for c in 0..clients {
            let client_rng = Rng::new(rng.next());
            tasks.push((
                k,
                tokio::spawn(client(
                    Arc::clone(&store),
                    key.clone(),
                    c,
                    client_rng,
                    operations,
                )),
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
    for (k, history) in histories.iter_mut().enumerate() {
        history.sort_by_key(|event| event.called);
        if !linearizable(history) {
            let start = history[0].called;
            let lines: Vec<String> = history
                .iter()
                .map(|event| {
                    format!(
                        "  [{:>8.3} ms .. {:>8.3} ms] client {} {:?} -> {:?}",
                        (event.called - start).as_secs_f64() * 1e3,
                        (event.returned - start).as_secs_f64() * 1e3,
                        event.client,
                        event.op,
                        event.ret
                    )
                })
                .collect();
            panic!(
                "seed {seed} (LINEARIZABILITY_SEED={seed} replays it): the history of key {} has no linearization:\n{}",
                names[k],
                lines.join("\n")
            );
        }
    }
}

#[cfg(test)]
mod checker {
    use super::*;

    fn event(op: Op, ret: Ret, called: u64, returned: u64) -> Event {
        let base = Instant::now();
        Event {
            client: 0,
            op,
            ret,
            called: base + Duration::from_millis(called),
            returned: base + Duration::from_millis(returned),
        }
    }

    /// The checker accepts a history that has an order and refuses one that has none: two
    /// claims that both acquired one key, one after the other.
    #[test]
    fn the_checker_finds_a_double_acquire() {
        let (a, b) = (Token::random(), Token::random());
        let claim = Op::Claim { fingerprint: 0 };
        let overlapping = [
            event(claim.clone(), Ret::Acquired(a), 0, 10),
            event(claim.clone(), Ret::InProgress(0), 5, 15),
        ];
        assert!(linearizable(&overlapping));
        let twice = [
            event(claim.clone(), Ret::Acquired(a), 0, 10),
            event(claim, Ret::Acquired(b), 20, 30),
        ];
        assert!(!linearizable(&twice));
        let zombie = [
            event(Op::Claim { fingerprint: 0 }, Ret::Acquired(a), 0, 1),
            event(Op::Release { token: a }, Ret::Done, 2, 3),
            event(Op::Claim { fingerprint: 0 }, Ret::Acquired(b), 4, 5),
            event(
                Op::Complete {
                    token: a,
                    fingerprint: 0,
                    output: 1,
                },
                Ret::Done,
                6,
                7,
            ),
        ];
        assert!(
            !linearizable(&zombie),
            "a zombie's complete must be refused"
        );
    }
}
