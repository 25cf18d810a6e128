use std::any::Any;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::key::{Fingerprint, Key};
use crate::record::{HeldRecord, Keep, Token};

/// Bytes a completed record costs besides its output (key, token, times, cache bookkeeping).
const RECORD_OVERHEAD: usize = 192;

/// An in-progress record: it lives in its key's shard, never evicted.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) token: Token,
    pub(super) fingerprint: Fingerprint,
    pub(super) lease_until: Instant,
}

/// A completed record: it lives in the cache, weighed by [`Done::weight`].
pub(super) struct Done {
    pub(super) token: Token,
    pub(super) fingerprint: Fingerprint,
    pub(super) output: Bytes,
    /// When the record expires, by [`clock`] (`ttl` + [`EXPIRY_MARGIN`] after it was
    /// completed).
    pub(super) expires: u64,
    /// When it expires by the precise clock, as `get` reports it.
    pub(super) expires_at: Instant,
    /// How to decode the typed output the executor asked to keep (`Completion::keep`).
    pub(super) keep: Option<Keep>,
    /// That value, decoded on the first replay; replays clone it instead of decoding `output`.
    pub(super) kept: OnceLock<Option<Box<dyn Any + Send + Sync>>>,
}

impl Done {
    pub(super) fn live(&self, now: u64) -> bool {
        self.expires > now
    }

    /// What the record weighs: a kept value is counted as large as its encoded output.
    pub(super) fn weight(&self, key: &Key) -> u32 {
        let kept = if self.keep.is_some() {
            self.output.len()
        } else {
            0
        };
        weight(key, self.output.len().saturating_add(kept))
    }
}

impl HeldRecord for Done {
    fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    fn output(&self) -> &Bytes {
        &self.output
    }

    fn kept(&self) -> Option<&(dyn Any + Send + Sync)> {
        let keep = self.keep?;
        self.kept
            .get_or_init(|| keep.value(&self.output))
            .as_deref()
    }

    fn expires_at(&self) -> Option<SystemTime> {
        let left = self.expires_at.saturating_duration_since(Instant::now());
        Some(SystemTime::now() + left)
    }
}

/// The clock completed records expire by (see [the memory store](super)), as a count that only grows:
/// the coarse monotonic clock on Linux and Android, `Instant` elsewhere.
mod clock {
    use std::time::Duration;

    /// Now. The coarse clock is read without updating `coarsetime`'s shared "recent" value,
    /// so concurrent replays write no shared memory.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(in crate::store::memory) fn now() -> u64 {
        coarsetime::Instant::now_without_cache_update().as_u64()
    }

    /// `span` in the clock's units.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(super) fn units(span: Duration) -> u64 {
        coarsetime::Duration::from(span).as_u64()
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    static START: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(in crate::store::memory) fn now() -> u64 {
        units(START.elapsed())
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(super) fn units(span: Duration) -> u64 {
        u64::try_from(span.as_nanos()).unwrap_or(u64::MAX)
    }
}

pub(super) use clock::now as coarse_now;

/// Added to every record's TTL: more than one tick of the coarse clock, so that the clock's lag
/// at completion can never make a record expire before its `ttl`.
pub(super) const EXPIRY_MARGIN: Duration = Duration::from_millis(20);

/// The longest TTL or lease kept exactly (longer ones last this long: the longest duration
/// any option accepts, which no clock here overflows).
pub(super) const LONGEST_TTL: Duration = crate::defaults::LONGEST;

/// When a record completed at `now` with `ttl` expires, by [`clock`].
pub(super) fn coarse_expiry(now: u64, ttl: Duration) -> u64 {
    now.saturating_add(clock::units(
        ttl.min(LONGEST_TTL).saturating_add(EXPIRY_MARGIN),
    ))
}

/// What a completed record with an output of `output_len` bytes weighs in the cache.
pub(super) fn weight(key: &Key, output_len: usize) -> u32 {
    u32::try_from(output_len.saturating_add(key.namespace().len() + RECORD_OVERHEAD))
        .unwrap_or(u32::MAX)
}
