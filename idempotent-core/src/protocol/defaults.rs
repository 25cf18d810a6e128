//! The one table of defaults and limits. A default or a clamp has one line to change.

use std::time::Duration;

/// How long a completed output is replayed.
pub const TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a claim holds before another caller may take the key over, unless its owner
/// renews it: a live owner renews every third of it, so the lease is how long a crashed or
/// hung owner blocks its key, not how long a body may run.
pub const LEASE: Duration = Duration::from_secs(30);
/// How long an owner keeps renewing its lease. After it, renewal stops and the lease may pass,
/// so a hung body blocks its key for at most `MAX_RUN` + its lease.
pub const MAX_RUN: Duration = Duration::from_secs(15 * 60);
/// How long a duplicate waits for the owner's result under [`InProgressPolicy::Wait`].
///
/// [`InProgressPolicy::Wait`]: crate::InProgressPolicy::Wait
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest stored output (the envelope's bytes), for the executor and for every store.
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// How long a message id is remembered by a consumer.
pub const DEDUP_WINDOW: Duration = TTL;
/// The longest duration any option accepts; longer ones are clamped to it (about 31 years,
/// which every store holds exactly: Redis scripts take milliseconds as doubles, SQL stores
/// microseconds as `i64`, `tokio::time::Instant` adds it without overflow).
pub const LONGEST: Duration = Duration::from_secs(31 * 365 * 24 * 60 * 60);

/// First pause between two store polls while another process owns the key.
pub(crate) const POLL_FIRST: Duration = Duration::from_millis(2);
/// Largest pause between two store polls.
pub(crate) const POLL_MAX: Duration = Duration::from_millis(250);
/// Shortest pause between two store polls, however little of the owner's lease remains. (A
/// lease that reads as passed but was not taken over, the owner's clock behind the store's,
/// is polled with the growing backoff instead.)
pub(crate) const POLL_MIN: Duration = Duration::from_millis(2);
/// An owner renews its lease every `lease / RENEW_DIVISOR`: two renewals may fail before the
/// lease passes.
pub(crate) const RENEW_DIVISOR: u32 = 3;
/// The shortest pause between two renewals.
pub(crate) const RENEW_MIN: Duration = Duration::from_millis(1);
/// Attempts at `complete` when the store errors transiently (the body already ran, so it is
/// worth a retry; `complete` is idempotent for the same token).
pub(crate) const COMPLETE_ATTEMPTS: u32 = 3;
/// First pause between two attempts at `complete` (then four times longer each time).
pub(crate) const COMPLETE_BACKOFF: Duration = Duration::from_millis(25);
/// Longest pause between two attempts at `complete` (in the background, which keeps trying
/// until `max_run`).
pub(crate) const COMPLETE_BACKOFF_MAX: Duration = Duration::from_secs(1);
