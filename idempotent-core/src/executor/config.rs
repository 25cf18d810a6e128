//! The executor's configuration: its call defaults and its own limits.

use std::sync::Arc;

use super::{Idempotency, Inner, flight::Flights};
use crate::protocol::{CallOptions, Settings, call_option_setters};
use crate::store::Store;

/// Configures an [`Idempotency`]: the defaults of its calls ([`CallOptions`], set one by one
/// or as one value) and the executor's own settings.
#[derive(Debug)]
pub struct IdempotencyBuilder {
    store: Arc<dyn Store>,
    settings: Settings,
}

impl IdempotencyBuilder {
    pub(super) fn new(store: Arc<dyn Store>) -> IdempotencyBuilder {
        IdempotencyBuilder {
            store,
            settings: Settings::DEFAULT,
        }
    }

    fn apply(&mut self, options: CallOptions) {
        self.settings = self.settings.with(options);
    }

    call_option_setters!();

    /// Run the body anyway when the store cannot be reached to claim the key — it is
    /// unavailable or does not answer in time (default `false`: fail closed with
    /// [`Error::Store`](crate::Error::Store)). Any other store error still fails the call.
    /// Opting in trades at-most-once for availability during a store outage.
    pub fn fail_open(mut self, fail_open: bool) -> Self {
        self.settings.fail_open = fail_open;
        self
    }

    /// Largest encoded output stored (default [`MAX_OUTPUT_BYTES`](crate::defaults::MAX_OUTPUT_BYTES), 1 MiB; the
    /// store's own [`Store::max_output_bytes`] when lower). The body of a call whose output is
    /// larger has run: the call returns its result, and its record says that the output was
    /// not stored, so retries get [`Error::OutputNotStored`](crate::Error::OutputNotStored)
    /// and the body does not run again within `ttl`.
    pub fn max_output_bytes(mut self, limit: usize) -> Self {
        self.settings.max_output_bytes = limit;
        self
    }

    /// The executor.
    pub fn build(self) -> Idempotency {
        let mut settings = self.settings;
        settings.max_output_bytes = settings.max_output_bytes.min(self.store.max_output_bytes());
        Idempotency {
            inner: Arc::new(Inner {
                store: self.store,
                settings,
                flights: Flights::default(),
                background: Default::default(),
            }),
        }
    }
}
