//! The call protocol, written once for every way of calling (the executor, SQL transactional
//! mode, and through them the macro, the HTTP layer and the consumers).
//!
//! Pure decisions, no I/O: what a caller does with the store's answer to its claim
//! ([`Caller::on_claim`]), with a flight of its own process ([`Caller::on_flight`]), with a
//! store that cannot be reached ([`Caller::fails_open`]), and what an owner does with its body's result
//! ([`outcome`]). The loops around them (await the store, sleep, run the body) live in
//! `executor/` and `transaction.rs`.

pub mod defaults;
mod options;

use std::marker::PhantomData;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::time::Instant;

use crate::error::{CodecOp, Error, NotStored, StoreError, StoreOp};
use crate::key::{Fingerprint, Key};
use crate::metrics::{self, Counter};
use crate::output::{OutputMode, OutputsAndErrors, envelope};
use crate::record::{Claim, Token};

pub use options::{CallOptions, InProgressPolicy};
pub(crate) use options::{Settings, call_option_setters};

/// One call as an entry point hands it to the protocol: its key, its fingerprint, the settings
/// it runs with, and (`M`) which results it stores.
#[derive(Debug)]
pub(crate) struct Request<M> {
    pub(crate) key: Key,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) settings: Settings,
    mode: PhantomData<M>,
}

impl<M> Request<M> {
    #[inline]
    pub(crate) fn new(key: Key, fingerprint: Fingerprint, settings: Settings) -> Request<M> {
        Request {
            key,
            fingerprint,
            settings,
            mode: PhantomData,
        }
    }

    /// `options` over the settings.
    #[inline]
    pub(crate) fn apply(&mut self, options: CallOptions) {
        self.settings = self.settings.with(options);
    }

    /// The same call, storing `Err` results too.
    pub(crate) fn store_errors(self) -> Request<OutputsAndErrors> {
        Request::new(self.key, self.fingerprint, self.settings)
    }
}

/// What a caller does next.
#[derive(Debug)]
pub(crate) enum Next {
    /// The key was completed for this fingerprint: replay this output.
    Replay {
        /// The stored output.
        output: Bytes,
        /// When its record expires, if the store said.
        expires_at: Option<SystemTime>,
    },
    /// The caller owns the key: run the body.
    Own {
        /// The claim's token.
        token: Token,
        /// An owner whose lease had passed was taken over.
        took_over: bool,
    },
    /// The key is in progress elsewhere: claim again after this pause.
    Poll(Duration),
    /// The call ends with this error.
    Fail(Refusal),
}

/// Why a call ends without running its body or replaying.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The key was claimed or completed for another fingerprint.
    KeyReused,
    /// The key is in progress and the caller may not (or no longer) wait.
    InProgress {
        /// How long until the owner's lease passes.
        retry_after: Duration,
    },
    /// The store failed to answer the claim.
    Store(StoreError),
}

impl Refusal {
    /// The error the caller gets.
    #[cold]
    pub(crate) fn into_error(self, key: Key) -> Error {
        // Counted here, the one way out of a refused call (store errors where the store
        // answered).
        match self {
            Refusal::KeyReused => {
                metrics::count(Counter::KeyReuses, &key);
                Error::KeyReused { key }
            }
            Refusal::InProgress { retry_after } => {
                metrics::count(Counter::InProgress, &key);
                Error::InProgress { key, retry_after }
            }
            Refusal::Store(error) => Error::from_store(StoreOp::Claim, &key, error),
        }
    }
}

/// One caller's way through a call: how it treats a key in progress (reject, or wait with a
/// deadline and a capped backoff), and whether it may run unclaimed during an outage.
#[derive(Debug)]
pub(crate) struct Caller {
    reject: bool,
    /// A lease that reads as passed ends the wait instead of a poll that would take the key
    /// over (transactional mode: the claim already waited on the owner's row lock).
    busy_when_lease_passed: bool,
    fail_open: bool,
    wait_timeout: Duration,
    deadline: Option<Instant>,
    backoff: Duration,
}

impl Caller {
    /// A caller of the executor.
    pub(crate) fn new(settings: &Settings) -> Caller {
        Caller {
            reject: settings.on_in_progress == InProgressPolicy::Reject,
            busy_when_lease_passed: false,
            fail_open: settings.fail_open,
            wait_timeout: settings.wait_timeout,
            deadline: None,
            backoff: defaults::POLL_FIRST,
        }
    }

    #[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
    /// A caller in a SQL transaction. `may_wait`: the database's claim holds no lock the
    /// owner needs, so waiting for it in the transaction cannot block it (PostgreSQL).
    pub(crate) fn in_transaction(settings: &Settings, may_wait: bool) -> Caller {
        Caller {
            reject: !may_wait || settings.on_in_progress == InProgressPolicy::Reject,
            busy_when_lease_passed: true,
            fail_open: false,
            ..Caller::new(settings)
        }
    }

    /// When the wait ends: `wait_timeout` after the first time it was asked.
    pub(crate) fn deadline(&mut self, now: Instant) -> Instant {
        *self
            .deadline
            .get_or_insert_with(|| later(now, self.wait_timeout))
    }

    /// The store answered the claim. `now` is read only for a key in progress: an owner or a
    /// replay needs no clock.
    pub(crate) fn on_claim(
        &mut self,
        claim: Claim,
        fingerprint: &Fingerprint,
        now: impl FnOnce() -> Instant,
    ) -> Next {
        match claim {
            Claim::Acquired { token, took_over } => Next::Own { token, took_over },
            Claim::Completed {
                fingerprint: stored,
                output,
                expires_at,
            } => {
                if stored == *fingerprint {
                    Next::Replay { output, expires_at }
                } else {
                    Next::Fail(Refusal::KeyReused)
                }
            }
            Claim::InProgress {
                fingerprint: owner,
                lease_remaining,
            } => {
                if owner != *fingerprint {
                    return Next::Fail(Refusal::KeyReused);
                }
                let busy = Next::Fail(Refusal::InProgress {
                    retry_after: lease_remaining,
                });
                if self.reject || (self.busy_when_lease_passed && lease_remaining.is_zero()) {
                    return busy;
                }
                let now = now();
                let deadline = self.deadline(now);
                if now >= deadline {
                    return busy;
                }
                // Toward the lease's end, to take it over then; a lease that reads as passed
                // but was not taken over (skewed clocks) is polled with the growing backoff.
                let until_lease = if lease_remaining.is_zero() {
                    self.backoff
                } else {
                    lease_remaining
                };
                let nap = self
                    .backoff
                    .min(until_lease)
                    .max(defaults::POLL_MIN)
                    .min(deadline - now);
                self.backoff = (self.backoff * 2).min(defaults::POLL_MAX);
                Next::Poll(nap)
            }
        }
    }

    /// Whether the caller runs its body unclaimed after the store failed to answer its claim
    /// with `error`: only a `fail_open` caller, and only when the store is unreachable or
    /// silent, or the store breaker is open because it was (a corrupt record or any other
    /// answer from a store that is up is no outage).
    pub(crate) fn fails_open(&self, error: &StoreError) -> bool {
        self.fail_open
            && matches!(
                error,
                StoreError::Unavailable(_) | StoreError::Timeout(_) | StoreError::CircuitOpen(_)
            )
    }

    /// A task of this process owns the key under `fingerprint` with its lease until
    /// `lease_until`: refuse, wait for its landing until the returned instant (the wait's
    /// deadline or the owner's lease, the sooner), or (`None`) ask the store at once, because
    /// the owner's lease passed: it is hung, and the store lets the caller take it over, under
    /// either policy, as it would a caller in another process.
    pub(crate) fn on_flight(
        &mut self,
        owner: &Fingerprint,
        lease_until: Instant,
        fingerprint: &Fingerprint,
        now: Instant,
    ) -> Result<Option<Instant>, Refusal> {
        if owner != fingerprint {
            return Err(Refusal::KeyReused);
        }
        if lease_until <= now {
            return Ok(None);
        }
        if self.reject {
            return Err(Refusal::InProgress {
                retry_after: lease_until - now,
            });
        }
        Ok(Some(self.deadline(now).min(lease_until)))
    }

    /// A wait on a flight of this process ended without a landing at `now`: refuse when the
    /// wait's deadline passed; otherwise the owner's lease passed and the caller asks the
    /// store, which lets it take the key over.
    pub(crate) fn on_flight_timeout(
        &mut self,
        lease_until: Instant,
        now: Instant,
    ) -> Result<(), Refusal> {
        if now >= self.deadline(now) {
            return Err(Refusal::InProgress {
                retry_after: lease_until.saturating_duration_since(now),
            });
        }
        Ok(())
    }
}

/// What the owner does with its body's result.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Record the completed output: the envelope's bytes.
    Store(Vec<u8>),
    /// Release the claim: the body returned an `Err` that is not stored.
    Release,
    /// The body returned a result that is stored but cannot be: record that it was not
    /// stored ([`not_stored`]), so the body does not run again, and return the result.
    NotStored(NotStored),
}

/// What the owner does with `result`, for outputs stored up to `limit` bytes.
pub(crate) fn outcome<M: OutputMode<T, E>, T, E>(result: &Result<T, E>, limit: usize) -> Outcome {
    match M::encode(result) {
        None => Outcome::Release,
        Some(Err(source)) => Outcome::NotStored(NotStored::Unencodable {
            detail: source.to_string(),
        }),
        Some(Ok(encoded)) if encoded.len() > limit => Outcome::NotStored(NotStored::TooLarge {
            size: encoded.len(),
            limit,
        }),
        Some(Ok(encoded)) => Outcome::Store(encoded),
    }
}

/// [`outcome`], with a `Serialize` that panics read as an output that cannot be encoded: the
/// body returned, so its claim is recorded before the panic goes on (`Err(panic)`).
#[allow(clippy::type_complexity)]
pub(crate) fn outcome_unwinding<M: OutputMode<T, E>, T, E>(
    result: &Result<T, E>,
    limit: usize,
) -> Result<Outcome, (Outcome, Box<dyn std::any::Any + Send>)> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        outcome::<M, T, E>(result, limit)
    }))
    .map_err(|panic| {
        let not_stored = NotStored::Unencodable {
            detail: "the output's `Serialize` panicked".to_owned(),
        };
        (Outcome::NotStored(not_stored), panic)
    })
}

/// The record of a body that returned but whose output cannot be stored: what retries get
/// back as [`Error::OutputNotStored`].
/// The encoder's message is left out where the record would be over `limit`.
pub(crate) fn not_stored(reason: &NotStored, limit: usize) -> Vec<u8> {
    envelope::not_stored(reason, limit)
}

/// A stored output decoded for the call, or the codec error that says why it cannot be.
pub(crate) fn decode<M: OutputMode<T, E>, T, E: From<Error>>(
    key: Key,
    bytes: &[u8],
) -> Result<T, E> {
    match decode_stored::<M, T, E>(key, bytes) {
        Ok(result) => result,
        Err(error) => Err(error.into()),
    }
}

/// A stored output decoded for the call: the stored result, or the codec error that says why
/// it cannot be decoded.
pub(crate) fn decode_stored<M: OutputMode<T, E>, T, E>(
    key: Key,
    bytes: &[u8],
) -> Result<Result<T, E>, Error> {
    if let Some(not_stored) = envelope::read_not_stored(bytes) {
        return Err(match not_stored {
            Ok(reason) => Error::OutputNotStored { key, reason },
            Err(source) => Error::Codec {
                op: CodecOp::DecodeOutput,
                key: Some(key),
                source,
            },
        });
    }
    M::decode(bytes).map_err(|source| Error::Codec {
        op: CodecOp::DecodeOutput,
        key: Some(key),
        source,
    })
}

/// `by` after `now`, saturating far in the future (durations are clamped to
/// [`defaults::LONGEST`], but a hand-built `Settings` may not be).
pub(crate) fn later(now: Instant, by: Duration) -> Instant {
    now.checked_add(by)
        .unwrap_or_else(|| now + defaults::LONGEST)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_progress(fingerprint: Fingerprint, lease_remaining: Duration) -> Claim {
        Claim::InProgress {
            fingerprint,
            lease_remaining,
        }
    }

    /// The longest durations are clamped once, so no deadline overflows the clock, in the
    /// executor's caller and in a transaction's alike (the transactional copy of the loop
    /// panicked on `now + Duration::MAX`).
    #[test]
    fn the_longest_wait_neither_panics_nor_ends() {
        let fingerprint = Fingerprint::of(&"args").expect("fingerprint");
        let settings = Settings::DEFAULT.with(
            CallOptions::new()
                .wait_timeout(Duration::MAX)
                .ttl(Duration::MAX)
                .lease(Duration::MAX),
        );
        assert_eq!(settings.wait_timeout, defaults::LONGEST);
        assert_eq!(settings.ttl, defaults::LONGEST);
        let now = Instant::now();
        // One caller without the SQL features, two with them.
        #[allow(clippy::single_element_loop)]
        for mut caller in [
            Caller::new(&settings),
            #[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
            Caller::in_transaction(&settings, true),
        ] {
            let next = caller.on_claim(
                in_progress(fingerprint, Duration::from_millis(5)),
                &fingerprint,
                || now,
            );
            assert!(
                matches!(next, Next::Poll(nap) if nap <= defaults::POLL_FIRST),
                "{next:?}"
            );
        }
    }

    #[test]
    fn an_answer_for_another_fingerprint_is_key_reuse() {
        let ours = Fingerprint::of(&"ours").expect("fingerprint");
        let theirs = Fingerprint::of(&"theirs").expect("fingerprint");
        let mut caller = Caller::new(&Settings::DEFAULT);
        let reused = caller.on_claim(in_progress(theirs, Duration::ZERO), &ours, Instant::now);
        assert!(
            matches!(reused, Next::Fail(Refusal::KeyReused)),
            "{reused:?}"
        );
    }

    /// A lease that reads as passed but was not taken over (the owner's clock behind the
    /// store's) is polled with the growing backoff, not every millisecond; a short remaining
    /// lease is polled no faster than the floor.
    #[test]
    fn waits_back_off_when_the_lease_reads_as_passed() {
        let fingerprint = Fingerprint::of(&"args").expect("fingerprint");
        let mut caller = Caller::new(&Settings::DEFAULT);
        let now = Instant::now();
        let naps: Vec<Duration> = (0..8)
            .map(|_| {
                match caller.on_claim(
                    in_progress(fingerprint, Duration::ZERO),
                    &fingerprint,
                    || now,
                ) {
                    Next::Poll(nap) => nap,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert!(naps.windows(2).all(|pair| pair[1] >= pair[0]), "{naps:?}");
        assert_eq!(naps[0], defaults::POLL_FIRST);
        assert_eq!(naps[7], defaults::POLL_MAX, "{naps:?}");

        let mut caller = Caller::new(&Settings::DEFAULT);
        let short = caller.on_claim(
            in_progress(fingerprint, Duration::from_micros(10)),
            &fingerprint,
            || now,
        );
        assert!(
            matches!(short, Next::Poll(nap) if nap == defaults::POLL_MIN),
            "{short:?}"
        );
    }
}
