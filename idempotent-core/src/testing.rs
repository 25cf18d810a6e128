//! Helpers for test suites that need a server (Redis, PostgreSQL, …).
//!
//! On a developer's machine without the server a suite reports itself skipped; with
//! `IDEMPOTENCY_REQUIRE_SERVICES=1` (as CI sets it) an unreachable server is a failure.

use std::fmt::Display;
use std::io::Write as _;

/// The variable that makes server-backed suites mandatory.
pub const REQUIRE_SERVICES: &str = "IDEMPOTENCY_REQUIRE_SERVICES";

/// `true` when `IDEMPOTENCY_REQUIRE_SERVICES` is `1` or `true`.
pub fn services_required() -> bool {
    std::env::var(REQUIRE_SERVICES).is_ok_and(|value| value == "1" || value == "true")
}

/// The URL in `variable`, or `default` when unset.
///
/// ```
/// let url = idempotent_core::testing::service_url("REDIS_URL", "redis://127.0.0.1:6379");
/// assert!(!url.is_empty());
/// ```
pub fn service_url(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_owned())
}

/// Reports that `suite` could not reach `url`: a failure (panic) when services are required,
/// otherwise a `SKIPPED` line on stderr that `cargo test` shows even for passing tests.
pub fn unreachable(suite: &str, url: &str, error: &dyn Display) {
    assert!(
        !services_required(),
        "{suite}: cannot reach {url}: {error} ({REQUIRE_SERVICES}=1 makes this a failure)"
    );
    // Written to the process's stderr directly, past the test harness's capture, so a
    // skipped suite is visible in a passing run.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {suite}: cannot reach {url}: {error} (set {REQUIRE_SERVICES}=1 to make this a failure)"
    );
}
