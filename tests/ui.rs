//! Compile-time behaviour of `#[idempotent]`: what compiles, and the error for each misuse.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
