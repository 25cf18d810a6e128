//! The call protocol as a model, checked in every reachable state with `stateright`.
//!
//! Several clients call with one key and one fingerprint against one store, on one clock. A
//! client claims (the claim's reply may be lost, and the client sends it again with the same
//! token, as the Redis store does), runs its body, renews its lease on each tick while it is
//! live and within `max_run`, and records its result: an output, a not-stored record for an
//! output that cannot be stored, or a release for an error. Its process may stall (no more
//! renewals; it may come back and return late) or crash. The clock ticks, or steps by a whole
//! lease.
//!
//! The invariants, in the words of ARCHITECTURE.md:
//! 1. never two owners at once beyond what a passed lease allows (at most one client believes
//!    it holds a live lease);
//! 2. a body that returned `Ok` while holding its claim never runs again;
//! 3. a live owner within `max_run` keeps its key (it is never taken over);
//! 4. a completed output is never overwritten, and every replay equals it;
//! 5. a fenced operation (complete, release, renew) by a taken-over owner never changes the
//!    new owner's record.
//!
//! Each variant that breaks one is checked to be found: the two paths the at-most-once work
//! fixed (releasing an output that cannot be stored; no lease renewal) reverted, an unfenced
//! complete, and a release after `Ok`.

use stateright::{Checker, Model, Property};

/// How long a lease lasts, in ticks.
const LEASE: u8 = 2;
/// How long a live owner renews, in ticks.
const MAX_RUN: u8 = 3;
/// The last tick explored.
const LAST_TICK: u8 = 8;

/// What differs from the protocol as built: each flag breaks it on purpose.
#[derive(Clone, Copy, Debug, Default)]
struct Variant {
    /// No lease renewal (before the at-most-once work).
    no_renewal: bool,
    /// An `Ok` output that cannot be stored releases the claim (before the at-most-once work).
    release_unstorable: bool,
    /// `complete` writes whatever record holds the key.
    unfenced_complete: bool,
    /// Every `Ok` releases the claim instead of completing it.
    release_after_ok: bool,
}

#[derive(Clone, Debug)]
struct Protocol {
    clients: usize,
    variant: Variant,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Record {
    Free,
    InProgress {
        token: u8,
        lease_until: u8,
    },
    /// `output` names the client whose body produced it; a not-stored record is an output too.
    Completed {
        token: u8,
        output: u8,
    },
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Client {
    /// Not yet owning: `sent` is the token of a claim whose reply was lost.
    Idle {
        sent: Option<u8>,
    },
    /// Owning (as far as it knows) and running its body.
    Running {
        token: u8,
        /// The lease's end as this client last learnt it (claim or renewal).
        lease_until: u8,
        started: u8,
        stalled: bool,
    },
    Done(Answer),
    Crashed,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Answer {
    Executed,
    Replayed(u8),
    LeaseLost,
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct State {
    clock: u8,
    record: Record,
    next_token: u8,
    clients: Vec<Client>,
    /// A body returned `Ok` while its claim was its own.
    returned_ok: bool,
    /// The first output completed.
    first_output: Option<u8>,
    // What broke, noticed on the step that broke it.
    ran_after_ok: bool,
    live_taken_over: bool,
    overwritten: bool,
    wrong_replay: bool,
    zombie_wrote: bool,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Action {
    Tick,
    /// The clock steps by a whole lease (a clock jump, a long pause of everyone).
    Step,
    Claim(usize),
    ClaimReplyLost(usize),
    ReturnOk(usize),
    ReturnUnstorable(usize),
    ReturnErr(usize),
    Stall(usize),
    Crash(usize),
}

/// The not-stored record of client `c`'s body.
const NOT_STORED: u8 = 100;

impl Protocol {
    fn new(clients: usize, variant: Variant) -> Protocol {
        Protocol { clients, variant }
    }

    /// The store's claim with `token` at the state's time: `Some` when acquired.
    fn claim(&self, state: &mut State, token: u8) -> Option<()> {
        match state.record {
            Record::Free => {}
            // A claim sent again after its reply was lost finds its own record: it owns the
            // key, and renews the lease from now (the first send's lease started earlier).
            Record::InProgress { token: held, .. } if held == token => {
                state.record = Record::InProgress {
                    token,
                    lease_until: state.clock + LEASE,
                };
                return Some(());
            }
            Record::InProgress { lease_until, .. } if lease_until <= state.clock => {}
            _ => return None,
        }
        let previous = match state.record {
            Record::InProgress { token: held, .. } => state
                .clients
                .iter()
                .position(|other| matches!(other, Client::Running { token, .. } if *token == held)),
            _ => None,
        };
        if let Some(owner) = previous
            && let Client::Running {
                started, stalled, ..
            } = state.clients[owner]
            && !stalled
            && state.clock - started < MAX_RUN
        {
            state.live_taken_over = true;
        }
        if state.returned_ok {
            state.ran_after_ok = true;
        }
        state.record = Record::InProgress {
            token,
            lease_until: state.clock + LEASE,
        };
        Some(())
    }

    /// The fenced write of `token`'s record: `record` when the token holds the key.
    fn fenced(&self, state: &mut State, token: u8, record: Record, unfenced: bool) -> bool {
        let holds = matches!(state.record, Record::InProgress { token: held, .. } if held == token);
        if !holds && !unfenced {
            return false;
        }
        if !holds {
            if matches!(state.record, Record::InProgress { .. }) {
                state.zombie_wrote = true;
            }
            if let (Record::Completed { output: old, .. }, Record::Completed { output, .. }) =
                (state.record, record)
                && old != output
            {
                state.overwritten = true;
            }
        }
        state.record = record;
        true
    }

    fn finish(&self, state: &mut State, client: usize, output: Option<u8>) {
        let Client::Running { token, .. } = state.clients[client] else {
            return;
        };
        let holds = matches!(state.record, Record::InProgress { token: held, .. } if held == token);
        let answer = match output {
            None => {
                self.fenced(state, token, Record::Free, false);
                Answer::Failed
            }
            Some(output) => {
                if holds {
                    state.returned_ok = true;
                }
                let release = self.variant.release_after_ok
                    || (self.variant.release_unstorable && output >= NOT_STORED);
                let record = if release {
                    Record::Free
                } else {
                    Record::Completed { token, output }
                };
                if self.fenced(state, token, record, self.variant.unfenced_complete) {
                    if let Record::Completed { output, .. } = record {
                        state.first_output.get_or_insert(output);
                    }
                    Answer::Executed
                } else {
                    Answer::LeaseLost
                }
            }
        };
        state.clients[client] = Client::Done(answer);
    }
}

impl Model for Protocol {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            clock: 0,
            record: Record::Free,
            next_token: 1,
            clients: vec![Client::Idle { sent: None }; self.clients],
            returned_ok: false,
            first_output: None,
            ran_after_ok: false,
            live_taken_over: false,
            overwritten: false,
            wrong_replay: false,
            zombie_wrote: false,
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        if state.clock < LAST_TICK {
            actions.push(Action::Tick);
            actions.push(Action::Step);
        }
        for (client, at) in state.clients.iter().enumerate() {
            match at {
                Client::Idle { sent } => {
                    actions.push(Action::Claim(client));
                    if sent.is_none() {
                        actions.push(Action::ClaimReplyLost(client));
                    }
                }
                Client::Running { stalled, .. } => {
                    actions.extend([
                        Action::ReturnOk(client),
                        Action::ReturnUnstorable(client),
                        Action::ReturnErr(client),
                        Action::Crash(client),
                    ]);
                    if !stalled {
                        actions.push(Action::Stall(client));
                    }
                }
                Client::Done(_) | Client::Crashed => {}
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut state = last.clone();
        match action {
            Action::Tick | Action::Step => {
                // Live owners within `max_run` renew before their lease passes (every third
                // of it), fenced by their token.
                if !self.variant.no_renewal {
                    for client in 0..state.clients.len() {
                        if let Client::Running {
                            token,
                            started,
                            stalled: false,
                            ..
                        } = state.clients[client]
                            && state.clock - started < MAX_RUN
                            && self.fenced(
                                &mut state,
                                token,
                                Record::InProgress {
                                    token,
                                    lease_until: last.clock + LEASE,
                                },
                                false,
                            )
                            && let Client::Running { lease_until, .. } = &mut state.clients[client]
                        {
                            *lease_until = last.clock + LEASE;
                        }
                    }
                }
                let by = if action == Action::Step {
                    // Everyone paused past a lease: an owner that missed its renewals is a
                    // stalled one.
                    for client in &mut state.clients {
                        if let Client::Running { stalled, .. } = client {
                            *stalled = true;
                        }
                    }
                    LEASE
                } else {
                    1
                };
                state.clock = (state.clock + by).min(LAST_TICK);
            }
            Action::Claim(client) | Action::ClaimReplyLost(client) => {
                let Client::Idle { sent } = state.clients[client] else {
                    return None;
                };
                if let Record::Completed { output, .. } = state.record {
                    if state.first_output != Some(output) {
                        state.wrong_replay = true;
                    }
                    state.clients[client] = Client::Done(Answer::Replayed(output));
                    return Some(state);
                }
                let token = sent.unwrap_or(state.next_token);
                self.claim(&mut state, token)?;
                if sent.is_none() {
                    state.next_token += 1;
                }
                state.clients[client] = if action == Action::ClaimReplyLost(client) {
                    Client::Idle { sent: Some(token) }
                } else {
                    Client::Running {
                        token,
                        lease_until: state.clock + LEASE,
                        started: state.clock,
                        stalled: false,
                    }
                };
            }
            Action::ReturnOk(client) => self.finish(&mut state, client, Some(client as u8)),
            Action::ReturnUnstorable(client) => {
                self.finish(&mut state, client, Some(NOT_STORED + client as u8))
            }
            Action::ReturnErr(client) => self.finish(&mut state, client, None),
            Action::Stall(client) => {
                if let Client::Running { stalled, .. } = &mut state.clients[client] {
                    *stalled = true;
                }
            }
            Action::Crash(client) => state.clients[client] = Client::Crashed,
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(ONE_OWNER, one_owner),
            Property::always(NO_RUN_AFTER_OK, |_, state: &State| !state.ran_after_ok),
            Property::always(LIVE_OWNER_KEEPS_ITS_KEY, |_, state: &State| {
                !state.live_taken_over
            }),
            Property::always(NEVER_OVERWRITTEN, |_, state: &State| {
                !state.overwritten && !state.wrong_replay
            }),
            Property::always(ZOMBIES_CHANGE_NOTHING, |_, state: &State| {
                !state.zombie_wrote
            }),
        ]
    }
}

/// At most one client believes it holds a live lease.
fn one_owner(_: &Protocol, state: &State) -> bool {
    let live = |client: &&Client| matches!(client, Client::Running { lease_until, .. } if *lease_until > state.clock);
    state.clients.iter().filter(live).count() <= 1
}

const ONE_OWNER: &str = "never two owners at once beyond a passed lease";
const NO_RUN_AFTER_OK: &str = "a body that returned Ok never runs again";
const LIVE_OWNER_KEEPS_ITS_KEY: &str = "a live owner within max_run keeps its key";
const NEVER_OVERWRITTEN: &str = "a completed output is never overwritten; every replay equals it";
const ZOMBIES_CHANGE_NOTHING: &str = "a taken-over owner's writes never change the new record";

fn check(variant: Variant) -> impl Checker<Protocol> {
    Protocol::new(3, variant).checker().spawn_bfs().join()
}

#[test]
fn the_protocol_holds_in_every_reachable_state() {
    let checked = check(Variant::default());
    println!(
        "protocol model: {} states, {} unique, every one checked",
        checked.state_count(),
        checked.unique_state_count()
    );
    assert!(checked.is_done());
    checked.assert_properties();
}

#[test]
fn releasing_an_output_that_cannot_be_stored_is_found() {
    let checked = check(Variant {
        release_unstorable: true,
        ..Variant::default()
    });
    let path = checked.assert_any_discovery(NO_RUN_AFTER_OK);
    println!("{NO_RUN_AFTER_OK}: broken by {:?}", path.into_actions());
}

#[test]
fn no_lease_renewal_is_found() {
    let checked = check(Variant {
        no_renewal: true,
        ..Variant::default()
    });
    checked.assert_any_discovery(LIVE_OWNER_KEEPS_ITS_KEY);
}

#[test]
fn an_unfenced_complete_is_found() {
    let checked = check(Variant {
        unfenced_complete: true,
        ..Variant::default()
    });
    checked.assert_any_discovery(ZOMBIES_CHANGE_NOTHING);
    checked.assert_any_discovery(NEVER_OVERWRITTEN);
}

#[test]
fn a_release_after_ok_is_found() {
    let checked = check(Variant {
        release_after_ok: true,
        ..Variant::default()
    });
    checked.assert_any_discovery(NO_RUN_AFTER_OK);
}
