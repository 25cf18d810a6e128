//! The `#[idempotent]` attribute. An implementation detail of
//! [`idempotency`](https://docs.rs/idempotency): depend on that crate and use
//! `idempotency::idempotent`, whose documentation is the user guide.

#![forbid(unsafe_code)]

mod attr;
mod check;
mod expand;

/// Makes an `async fn` idempotent. See `idempotency::idempotent` for the guide.
#[proc_macro_attribute]
pub fn idempotent(
    args: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    expand::idempotent(args.into(), item.into()).into()
}
