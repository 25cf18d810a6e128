//! The failure-ratio rule's rolling window: calls and failures counted in fixed steps.

use std::time::{Duration, Instant};

/// Calls and failures over a rolling window, in [`BUCKETS`] steps.
#[derive(Debug)]
pub(super) struct Window {
    step: Duration,
    /// `(calls, failures)` per step; `newest` is the current one, which began at `newest_at`.
    buckets: [(u32, u32); BUCKETS],
    newest: usize,
    newest_at: Instant,
}

const BUCKETS: usize = 10;

impl Window {
    pub(super) fn new(window: Duration, now: Instant) -> Window {
        Window {
            step: (window / BUCKETS as u32).max(Duration::from_nanos(1)),
            buckets: [(0, 0); BUCKETS],
            newest: 0,
            newest_at: now,
        }
    }

    pub(super) fn clear(&mut self, now: Instant) {
        self.buckets = [(0, 0); BUCKETS];
        self.newest_at = now;
    }

    /// Counts a call at `now`; returns the window's `(calls, failures)`.
    pub(super) fn record(&mut self, now: Instant, failed: bool) -> (u32, u32) {
        let steps = now.saturating_duration_since(self.newest_at).as_nanos() / self.step.as_nanos();
        if steps >= BUCKETS as u128 {
            self.clear(now);
        } else {
            for _ in 0..steps {
                self.newest = (self.newest + 1) % BUCKETS;
                self.buckets[self.newest] = (0, 0);
                self.newest_at += self.step;
            }
        }
        let bucket = &mut self.buckets[self.newest];
        bucket.0 = bucket.0.saturating_add(1);
        bucket.1 = bucket.1.saturating_add(u32::from(failed));
        self.buckets
            .iter()
            .fold((0u32, 0u32), |(calls, failures), (c, f)| {
                (calls.saturating_add(*c), failures.saturating_add(*f))
            })
    }
}
