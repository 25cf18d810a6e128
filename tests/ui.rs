//! Compile-time behaviour of `#[idempotent]`: what compiles, and the error for each misuse.

use std::io::Write as _;

/// rustc's messages list other implementations of serde's traits, and which exist depends on
/// the features enabled across the whole dependency graph (sqlx's `json` adds one, for
/// instance). The expected messages are therefore pinned under `--all-features`, the README's
/// test command; other feature sets skip this test and say so.
const ALL_FEATURES: bool = cfg!(all(
    feature = "macros",
    feature = "memory",
    feature = "tracing",
    feature = "redis",
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "http",
));

#[test]
fn ui() {
    if !ALL_FEATURES {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED ui: the expected compiler messages are pinned under `cargo test --workspace --all-features`"
        );
        return;
    }
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
