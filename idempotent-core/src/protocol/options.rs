//! Per-call options ([`CallOptions`]) and the settings a call runs with ([`Settings`]).

use std::time::Duration;

use super::defaults;

/// What a caller does when it finds its key in progress in another call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum InProgressPolicy {
    /// Wait (up to the executor's `wait_timeout`) for the owner's result and return it. Inside
    /// one process the wait is a notification; across processes the store is polled with
    /// capped backoff. If the owner releases the key or its lease passes, the waiter claims
    /// it and runs the body itself.
    #[default]
    Wait,
    /// Return [`Error::InProgress`](crate::Error::InProgress) at once.
    Reject,
}

/// The options of one call, the same for every entry point: `#[idempotent]`,
/// [`Call`](crate::Call), the HTTP layer, [`Consumer`](crate::consumer::Consumer), the SQL
/// inbox and transactional mode. An option left unset keeps the default of whatever it is
/// applied to (the executor's, which are the [`defaults`](crate::defaults) unless its builder
/// changed them).
///
/// Durations longer than [`defaults::LONGEST`](crate::defaults::LONGEST) are clamped to it.
///
/// ```
/// use std::time::Duration;
/// use idempotent_core::{CallOptions, InProgressPolicy};
///
/// const CHARGE: CallOptions = CallOptions::new()
///     .ttl(Duration::from_secs(7 * 24 * 3600))
///     .lease(Duration::from_secs(60))
///     .on_in_progress(InProgressPolicy::Reject);
/// assert_eq!(CHARGE.get_ttl(), Some(Duration::from_secs(7 * 24 * 3600)));
/// assert_eq!(CHARGE.get_wait_timeout(), None); // the executor's
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[must_use]
pub struct CallOptions {
    ttl: Option<Duration>,
    lease: Option<Duration>,
    wait_timeout: Option<Duration>,
    max_run: Option<Duration>,
    on_in_progress: Option<InProgressPolicy>,
}

impl CallOptions {
    /// No option set.
    pub const fn new() -> CallOptions {
        CallOptions {
            ttl: None,
            lease: None,
            wait_timeout: None,
            max_run: None,
            on_in_progress: None,
        }
    }

    /// How long a completed output is replayed (default 24 h).
    pub const fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long a claim holds before another caller may take the key over (default 30 s).
    /// While the body runs, its owner renews the lease every third of it (up to
    /// [`max_run`](Self::max_run)), so the lease is how long a crashed owner blocks its key,
    /// not how long a body may run.
    pub const fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// How long an owner keeps renewing its lease while its body runs (default 15 min). After
    /// it, renewal stops: a body still running then may be taken over once its lease passes,
    /// and its own result is refused with [`Error::LeaseLost`](crate::Error::LeaseLost). Zero
    /// turns renewal off.
    pub const fn max_run(mut self, max_run: Duration) -> Self {
        self.max_run = Some(max_run);
        self
    }

    /// How long a duplicate waits for the owner under [`InProgressPolicy::Wait`] (default
    /// 30 s).
    pub const fn wait_timeout(mut self, wait: Duration) -> Self {
        self.wait_timeout = Some(wait);
        self
    }

    /// What a duplicate does when it finds the key in progress (default: wait).
    pub const fn on_in_progress(mut self, policy: InProgressPolicy) -> Self {
        self.on_in_progress = Some(policy);
        self
    }

    /// The `ttl` set here, if any.
    pub const fn get_ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// The `lease` set here, if any.
    pub const fn get_lease(&self) -> Option<Duration> {
        self.lease
    }

    /// The `wait_timeout` set here, if any.
    pub const fn get_wait_timeout(&self) -> Option<Duration> {
        self.wait_timeout
    }

    /// The `max_run` set here, if any.
    pub const fn get_max_run(&self) -> Option<Duration> {
        self.max_run
    }

    /// The in-progress policy set here, if any.
    pub const fn get_on_in_progress(&self) -> Option<InProgressPolicy> {
        self.on_in_progress
    }

    /// These options over `base`: what is set here wins.
    pub const fn or(self, base: CallOptions) -> CallOptions {
        CallOptions {
            ttl: or(self.ttl, base.ttl),
            lease: or(self.lease, base.lease),
            wait_timeout: or(self.wait_timeout, base.wait_timeout),
            max_run: or(self.max_run, base.max_run),
            on_in_progress: match self.on_in_progress {
                Some(policy) => Some(policy),
                None => base.on_in_progress,
            },
        }
    }
}

const fn or(first: Option<Duration>, second: Option<Duration>) -> Option<Duration> {
    match first {
        Some(value) => Some(value),
        None => second,
    }
}

/// Everything a call runs with: its options resolved against the defaults, and the
/// executor's own settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) ttl: Duration,
    pub(crate) lease: Duration,
    pub(crate) wait_timeout: Duration,
    /// How long the owner renews its lease.
    pub(crate) max_run: Duration,
    pub(crate) on_in_progress: InProgressPolicy,
    /// Run the body when the store cannot be reached to claim (the executor only).
    pub(crate) fail_open: bool,
    /// The largest envelope stored: the executor's limit and its store's, the lower.
    pub(crate) max_output_bytes: usize,
}

impl Settings {
    /// The defaults of [`defaults`].
    pub(crate) const DEFAULT: Settings = Settings {
        ttl: defaults::TTL,
        lease: defaults::LEASE,
        wait_timeout: defaults::WAIT_TIMEOUT,
        max_run: defaults::MAX_RUN,
        on_in_progress: InProgressPolicy::Wait,
        fail_open: false,
        max_output_bytes: defaults::MAX_OUTPUT_BYTES,
    };

    /// `options` applied: what they set wins, and durations are clamped to
    /// [`defaults::LONGEST`].
    #[inline]
    pub(crate) fn with(mut self, options: CallOptions) -> Settings {
        if let Some(ttl) = options.ttl {
            self.ttl = ttl.min(defaults::LONGEST);
        }
        if let Some(lease) = options.lease {
            self.lease = lease.min(defaults::LONGEST);
        }
        if let Some(wait) = options.wait_timeout {
            self.wait_timeout = wait.min(defaults::LONGEST);
        }
        if let Some(max_run) = options.max_run {
            self.max_run = max_run.min(defaults::LONGEST);
        }
        if let Some(policy) = options.on_in_progress {
            self.on_in_progress = policy;
        }
        self
    }

    /// The first option that cannot be used, and why.
    #[inline]
    pub(crate) fn problem(&self) -> Option<(&'static str, &'static str)> {
        if self.ttl.is_zero() {
            Some(("ttl", "must be greater than zero"))
        } else if self.lease.is_zero() {
            Some(("lease", "must be greater than zero"))
        } else {
            None
        }
    }

    /// [`problem`](Self::problem) as an error.
    pub(crate) fn check(&self) -> Result<(), crate::Error> {
        match self.problem() {
            Some((option, problem)) => Err(crate::Error::InvalidOption { option, problem }),
            None => Ok(()),
        }
    }
}

/// The setters of [`CallOptions`] on an entry point, one by one or as one value, written once.
/// `()`: the type implements `fn apply(&mut self, options: CallOptions)`; `(options)`: the
/// type holds them in a field `options`; `(window, options)`: a message consumer, whose `ttl`
/// is also called its `window`.
macro_rules! call_option_setters {
    (window, $field:ident) => {
        /// How long a processed id is remembered (default 24 h; the same as `ttl`). Longer
        /// than the broker can redeliver or a publisher can retry: a duplicate arriving after
        /// the window runs again.
        pub fn window(self, window: ::std::time::Duration) -> Self {
            self.ttl(window)
        }

        crate::protocol::call_option_setters!($field);
    };
    ($field:ident) => {
        fn apply(&mut self, options: crate::CallOptions) {
            self.$field = options.or(self.$field);
        }

        crate::protocol::call_option_setters!();
    };
    () => {
        /// How long a completed output is replayed (default 24 h). See
        /// [`CallOptions::ttl`](crate::CallOptions::ttl).
        pub fn ttl(mut self, ttl: ::std::time::Duration) -> Self {
            self.apply(crate::CallOptions::new().ttl(ttl));
            self
        }

        /// How long a claim holds before another caller may take the key over (default
        /// 30 s). See [`CallOptions::lease`](crate::CallOptions::lease).
        pub fn lease(mut self, lease: ::std::time::Duration) -> Self {
            self.apply(crate::CallOptions::new().lease(lease));
            self
        }

        /// How long the owner renews its lease while its body runs (default 15 min). See
        /// [`CallOptions::max_run`](crate::CallOptions::max_run).
        pub fn max_run(mut self, max_run: ::std::time::Duration) -> Self {
            self.apply(crate::CallOptions::new().max_run(max_run));
            self
        }

        /// How long a duplicate waits for the owner under
        /// [`InProgressPolicy::Wait`](crate::InProgressPolicy::Wait) (default 30 s).
        pub fn wait_timeout(mut self, wait: ::std::time::Duration) -> Self {
            self.apply(crate::CallOptions::new().wait_timeout(wait));
            self
        }

        /// What a duplicate does when it finds the key in progress (default: wait).
        pub fn on_in_progress(mut self, policy: crate::InProgressPolicy) -> Self {
            self.apply(crate::CallOptions::new().on_in_progress(policy));
            self
        }

        /// Every option set in `options`, over the ones set before.
        #[inline]
        pub fn options(mut self, options: crate::CallOptions) -> Self {
            self.apply(options);
            self
        }
    };
}
pub(crate) use call_option_setters;
