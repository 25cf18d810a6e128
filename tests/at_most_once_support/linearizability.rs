//! Linearizability of a real store: concurrent clients run random claim / complete / release /
//! renew / get on a few keys, each operation's call and return times are recorded, and each
//! key's history is checked against the sequential `Store` model (a Wing–Gong search with
//! memoization). Every run is seeded (`LINEARIZABILITY_SEED` replays one); a failure prints a
//! minimal history (see [`minimal`]), the key's whole history and the seed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency::{Bytes, Claim, Digest, Fingerprint, Key, Record, Store, StoreError, Token};
use idempotency::{ClaimRequest, Completion};

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(crate) mod transactional;

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
    pub(crate) fn skip(&mut self) {
        self.next();
    }
    /// True one time in `n` (never for 0).
    pub(crate) fn one_in(&mut self, n: u64) -> bool {
        n > 0 && self.below(n) == 0
    }
    /// A number from 0 to `n`.
    pub(crate) fn up_to(&mut self, n: u64) -> u64 {
        self.below(n + 1)
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
    /// Transactional mode: one transaction that claims the key in it, and when it owns the
    /// key records `output` and commits (or rolls back). It takes effect at its commit.
    Transaction {
        fingerprint: u8,
        output: u8,
        commit: bool,
    },
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
    /// A transaction that owned the key, recorded its output and committed.
    Ran,
    /// A transaction that owned the key and rolled back.
    RolledBack,
    /// A transaction refused as key reuse (a completed record with another fingerprint).
    Reused,
    /// A transaction that failed before its commit: it changed nothing.
    Aborted,
    /// The store failed to answer (a cut connection, a timeout): the operation may or may not
    /// have taken effect, at any time after its call.
    Unknown,
}

#[derive(Debug, Clone)]
struct Event {
    client: usize,
    op: Op,
    ret: Ret,
    called: Instant,
    returned: Instant,
}

/// The sequential model of one key. A token is `None` when the claim that made it has an
/// unknown outcome: nobody can use it, but it holds the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Model {
    Free,
    InProgress {
        token: Option<Token>,
        fingerprint: u8,
    },
    Completed {
        token: Option<Token>,
        fingerprint: u8,
        output: u8,
    },
}

impl Model {
    /// What `op` does from this state: the next state and what it returns (an acquiring claim
    /// returns `Acquired` with any fresh token).
    fn apply(&self, op: &Op) -> (Model, Ret) {
        let mine = |held: &Option<Token>, token: &Token| held.as_ref() == Some(token);
        match (self, op) {
            (Model::Free, Op::Claim { fingerprint }) => (
                Model::InProgress {
                    token: None,
                    fingerprint: *fingerprint,
                },
                Ret::Acquired(Token::random()),
            ),
            (Model::InProgress { fingerprint, .. }, Op::Claim { .. } | Op::Get) => {
                (self.clone(), Ret::InProgress(*fingerprint))
            }
            (
                Model::Completed {
                    fingerprint,
                    output,
                    ..
                },
                Op::Claim { .. } | Op::Get,
            ) => (self.clone(), Ret::Completed(*fingerprint, *output)),
            (Model::Free, Op::Get) => (self.clone(), Ret::Missing),
            (
                Model::InProgress { token: held, .. },
                Op::Complete {
                    token,
                    fingerprint,
                    output,
                },
            ) if mine(held, token) => (
                Model::Completed {
                    token: Some(*token),
                    fingerprint: *fingerprint,
                    output: *output,
                },
                Ret::Done,
            ),
            // A retried complete by the token that completed the record is a no-op.
            (Model::Completed { token: held, .. }, Op::Complete { token, .. })
                if mine(held, token) =>
            {
                (self.clone(), Ret::Done)
            }
            (Model::InProgress { token: held, .. }, Op::Release { token }) if mine(held, token) => {
                (Model::Free, Ret::Done)
            }
            (Model::InProgress { token: held, .. }, Op::Renew { token }) if mine(held, token) => {
                (self.clone(), Ret::Done)
            }
            (_, Op::Complete { .. } | Op::Release { .. } | Op::Renew { .. }) => {
                (self.clone(), Ret::Refused)
            }
            (
                Model::Free,
                Op::Transaction {
                    fingerprint,
                    output,
                    commit: true,
                },
            ) => (
                Model::Completed {
                    token: None,
                    fingerprint: *fingerprint,
                    output: *output,
                },
                Ret::Ran,
            ),
            (Model::Free, Op::Transaction { commit: false, .. }) => (self.clone(), Ret::RolledBack),
            (Model::InProgress { fingerprint, .. }, Op::Transaction { .. }) => {
                (self.clone(), Ret::InProgress(*fingerprint))
            }
            (
                Model::Completed {
                    fingerprint: stored,
                    output,
                    ..
                },
                Op::Transaction { fingerprint, .. },
            ) => {
                let ret = if stored == fingerprint {
                    Ret::Completed(*stored, *output)
                } else {
                    Ret::Reused
                };
                (self.clone(), ret)
            }
        }
    }

    /// `Some(next)` when `op` may return `ret` from this state.
    fn step(&self, op: &Op, ret: &Ret, used: &HashSet<Token>) -> Option<Model> {
        let (next, expected) = self.apply(op);
        match (expected, ret) {
            // Its effect happened; what it returned is unknown.
            (_, Ret::Unknown) => Some(next),
            // A transaction that failed before its commit changed nothing, whatever the state.
            (_, Ret::Aborted) => Some(self.clone()),
            (Ret::Acquired(_), Ret::Acquired(token)) if !used.contains(token) => match next {
                Model::InProgress { fingerprint, .. } => Some(Model::InProgress {
                    token: Some(*token),
                    fingerprint,
                }),
                _ => None,
            },
            (expected, ret) => (expected == *ret).then_some(next),
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
    // An operation with an unknown outcome may never have happened: it need not be placed.
    let unknown = history
        .iter()
        .enumerate()
        .filter(|(_, event)| event.ret == Ret::Unknown)
        .fold(0u64, |bits, (at, _)| bits | (1 << at));
    search(history, 0, unknown, &Model::Free, &used, &mut seen)
}

fn search(
    history: &[Event],
    done: u64,
    unknown: u64,
    model: &Model,
    used: &HashSet<Token>,
    seen: &mut HashSet<(u64, Model)>,
) -> bool {
    let all = if history.len() == 64 {
        u64::MAX
    } else {
        (1u64 << history.len()) - 1
    };
    if (done | unknown) == all {
        return true;
    }
    if !seen.insert((done, model.clone())) {
        return false;
    }
    // Only an operation called before every pending known one returned can go next (an
    // operation with an unknown outcome never returned).
    let first_return = history
        .iter()
        .enumerate()
        .filter(|(at, event)| done & (1 << at) == 0 && event.ret != Ret::Unknown)
        .map(|(_, event)| event.returned)
        .min();
    for (at, event) in history.iter().enumerate() {
        if done & (1 << at) != 0 || first_return.is_some_and(|first| event.called > first) {
            continue;
        }
        if let Some(next) = model.step(&event.op, &event.ret, used) {
            let mut used = used.clone();
            if let Ret::Acquired(token) = event.ret {
                used.insert(token);
            }
            if search(history, done | (1 << at), unknown, &next, &used, seen) {
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
    faults: bool,
) -> Result<Vec<Event>, StoreError> {
    let mut events = Vec::with_capacity(operations);
    let mut owned: Option<Token> = None;
    let mut stale: Option<Token> = None;
    let tag = (client % 2) as u8;
    for _ in 0..operations {
        if faults {
            // Paced, so that a run spans the faults (a restart takes tens of milliseconds).
            tokio::time::sleep(Duration::from_millis(rng.below(4))).await;
        }
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
        let answered: Result<Ret, StoreError> = async {
            Ok(match &op {
                Op::Claim { fingerprint: tag } => {
                    match store
                        .claim(&key, ClaimRequest::new(fingerprint(*tag), LEASE))
                        .await?
                    {
                        Claim::Acquired { token, .. } => Ret::Acquired(token),
                        Claim::InProgress { fingerprint, .. } => {
                            Ret::InProgress(fingerprint_tag(&fingerprint))
                        }
                        Claim::Completed {
                            fingerprint,
                            output,
                            ..
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
                            Completion::new(
                                *token,
                                fingerprint(*tag),
                                Bytes::from(vec![*output]),
                                TTL,
                            ),
                        )
                        .await,
                )?,
                Op::Release { token } => fenced(store.release(&key, token).await)?,
                Op::Renew { token } => fenced(store.renew(&key, token, LEASE).await)?,
                Op::Transaction { .. } => unreachable!("a store client makes no transactions"),
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
            })
        }
        .await;
        let ret = match answered {
            Ok(ret) => ret,
            Err(error) if faults => {
                let _ = error;
                Ret::Unknown
            }
            Err(error) => return Err(error),
        };
        let returned = Instant::now();
        match (&op, &ret) {
            (_, Ret::Acquired(token)) => owned = Some(*token),
            // A claim whose outcome is unknown may have acquired a token nobody knows.
            (Op::Claim { .. }, Ret::Unknown) => {}
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
/// history must be linearizable. With `faults`, a store error is an operation whose outcome
/// is unknown (it may have taken effect or not); without, it fails the check. Returns how
/// many outcomes were unknown.
pub(crate) async fn check(
    store: Arc<dyn Store>,
    seed: u64,
    keys: usize,
    clients: usize,
    operations: usize,
    faults: bool,
) -> usize {
    check_with_shape(store, seed, keys, clients, operations, faults)
        .await
        .0
}

/// [`check`], and the histories' shape: every key's operations in call order with what they
/// returned, tokens named by their order of appearance. On a current-thread runtime over an
/// in-process store the same seed gives the same shape: a failing seed replays exactly.
pub(crate) async fn check_with_shape(
    store: Arc<dyn Store>,
    seed: u64,
    keys: usize,
    clients: usize,
    operations: usize,
    faults: bool,
) -> (usize, String) {
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
                    faults,
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
    verify(seed, &names, &mut histories);
    let unknown = histories
        .iter()
        .flatten()
        .filter(|event| event.ret == Ret::Unknown)
        .count();
    (unknown, shape(&histories))
}

/// Whether an operation may have changed the record (an acquiring claim, a done complete,
/// release or renew, an operation with an unknown outcome). The others only observed it.
fn changed(event: &Event) -> bool {
    matches!(
        event.ret,
        Ret::Acquired(_) | Ret::Done | Ret::Unknown | Ret::Ran
    )
}

/// A smallest witness of a history with no linearization: the shortest prefix (in call order)
/// that has none, closed under concurrency (every operation called before one of its
/// operations returned is in it, so nothing that could explain its results is cut), less the
/// operations that changed nothing, one by one, while what is left still has no
/// linearization. Every operation that changed the record stays: the witness is real.
fn minimal(history: &[Event]) -> Vec<Event> {
    let mut prefix = history.to_vec();
    for len in 1..=history.len() {
        let mut end = len;
        loop {
            let horizon = history[..end].iter().map(|event| event.returned).max();
            let closed = history
                .iter()
                .take_while(|event| horizon.is_some_and(|horizon| event.called < horizon))
                .count()
                .max(end);
            if closed == end {
                break;
            }
            end = closed;
        }
        if !linearizable(&history[..end]) {
            prefix = history[..end].to_vec();
            break;
        }
    }
    let mut at = prefix.len();
    while at > 0 {
        at -= 1;
        if changed(&prefix[at]) {
            continue;
        }
        let mut fewer = prefix.clone();
        fewer.remove(at);
        if !linearizable(&fewer) {
            prefix = fewer;
        }
    }
    prefix
}

fn lines(history: &[Event], start: Instant) -> String {
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
    lines.join("\n")
}

/// Sorts each key's history by call time and panics with the seed, a minimal history and the
/// whole history when one has no linearization.
fn verify(seed: u64, names: &[Key], histories: &mut [Vec<Event>]) {
    for (k, history) in histories.iter_mut().enumerate() {
        history.sort_by_key(|event| event.called);
        if !linearizable(history) {
            let minimal = minimal(history);
            panic!(
                "seed {seed} (LINEARIZABILITY_SEED={seed} replays it): the history of key {} has no linearization.\n\
                 Minimal history ({} of {} operations: the shortest prefix with no linearization, \
                 less the operations that changed nothing and are not needed):\n{}\n\
                 The whole history:\n{}",
                names[k],
                minimal.len(),
                history.len(),
                lines(&minimal, history[0].called),
                lines(history, history[0].called)
            );
        }
    }
}

fn shape(histories: &[Vec<Event>]) -> String {
    let mut out = String::new();
    for (k, history) in histories.iter().enumerate() {
        let mut tokens: Vec<Token> = Vec::new();
        let mut name = |token: &Token| match tokens.iter().position(|known| known == token) {
            Some(at) => at,
            None => {
                tokens.push(*token);
                tokens.len() - 1
            }
        };
        for event in history {
            let op = match &event.op {
                Op::Claim { fingerprint } => format!("claim({fingerprint})"),
                Op::Complete {
                    token,
                    fingerprint,
                    output,
                } => format!("complete(t{}, {fingerprint}, {output})", name(token)),
                Op::Release { token } => format!("release(t{})", name(token)),
                Op::Renew { token } => format!("renew(t{})", name(token)),
                Op::Get => "get".to_owned(),
                Op::Transaction {
                    fingerprint,
                    output,
                    commit,
                } => format!("transaction({fingerprint}, {output}, commit: {commit})"),
            };
            let ret = match &event.ret {
                Ret::Acquired(token) => format!("acquired(t{})", name(token)),
                other => format!("{other:?}"),
            };
            out.push_str(&format!("{k} c{} {op} -> {ret}\n", event.client));
        }
    }
    out
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

    /// The minimal history of a double acquire is the two claims: the observations around
    /// them and everything after are cut.
    #[test]
    fn a_failure_is_cut_down_to_its_minimal_history() {
        let (a, b, c) = (Token::random(), Token::random(), Token::random());
        let claim = Op::Claim { fingerprint: 0 };
        let history = [
            event(Op::Get, Ret::Missing, 0, 2),
            event(claim.clone(), Ret::Acquired(a), 3, 10),
            event(Op::Get, Ret::InProgress(0), 11, 12),
            event(claim.clone(), Ret::InProgress(0), 13, 14),
            event(Op::Renew { token: a }, Ret::Done, 15, 16),
            event(claim.clone(), Ret::Acquired(b), 20, 30),
            event(Op::Get, Ret::InProgress(0), 31, 32),
            event(Op::Release { token: b }, Ret::Done, 33, 34),
            event(claim, Ret::Acquired(c), 35, 36),
            event(Op::Get, Ret::InProgress(0), 37, 38),
        ];
        assert!(!linearizable(&history));
        let minimal = minimal(&history);
        let kept: Vec<(Op, Ret)> = minimal
            .iter()
            .map(|event| (event.op.clone(), event.ret.clone()))
            .collect();
        assert_eq!(
            kept,
            [
                (Op::Claim { fingerprint: 0 }, Ret::Acquired(a)),
                (Op::Renew { token: a }, Ret::Done),
                (Op::Claim { fingerprint: 0 }, Ret::Acquired(b)),
            ]
        );
        assert!(!linearizable(&minimal));
        let printed = lines(&minimal, minimal[0].called);
        assert_eq!(printed.lines().count(), 3, "{printed}");
    }

    /// Transactions: a second owner's commit, an owner rolling back after a commit it must
    /// have seen, and a replay of an output nobody committed have no linearization.
    #[test]
    fn the_checker_finds_broken_transactions() {
        let tx = |output: u8, commit: bool| Op::Transaction {
            fingerprint: 0,
            output,
            commit,
        };
        let sound = [
            event(tx(1, false), Ret::RolledBack, 0, 10),
            event(tx(2, true), Ret::Ran, 5, 15),
            event(tx(3, true), Ret::Completed(0, 2), 12, 20),
            event(tx(4, false), Ret::Aborted, 21, 22),
        ];
        assert!(linearizable(&sound));
        let twice = [
            event(tx(1, true), Ret::Ran, 0, 10),
            event(tx(2, true), Ret::Ran, 20, 30),
        ];
        assert!(!linearizable(&twice));
        let blind = [
            event(tx(1, true), Ret::Ran, 0, 10),
            event(tx(2, false), Ret::RolledBack, 20, 30),
        ];
        assert!(!linearizable(&blind));
        let invented = [
            event(tx(1, true), Ret::Ran, 0, 10),
            event(tx(2, true), Ret::Completed(0, 2), 20, 30),
        ];
        assert!(!linearizable(&invented));
    }
}
