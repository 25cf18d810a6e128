//! The `#[idempotent]` attribute. An implementation detail of
//! [`idempotency`](https://docs.rs/idempotency): depend on that crate and use
//! `idempotency::idempotent`, whose documentation is the user guide.
//!
//! The attribute is a pipeline: parse the options (`attr.rs`, syntax only) → parse the
//! function → check both (`check.rs`, every error collected) into a `Plan` (`plan.rs`) →
//! generate the code from the plan (`expand.rs`). On any error the function is emitted
//! unchanged beside the errors, so the IDE and later errors stay sane.

#![forbid(unsafe_code)]

mod attr;
mod check;
mod expand;
mod instantiation;
mod plan;

use proc_macro2::TokenStream;

/// Makes an `async fn` idempotent. See `idempotency::idempotent` for the guide.
#[proc_macro_attribute]
pub fn idempotent(
    args: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    let item = TokenStream::from(item);
    let options = syn::parse2::<attr::Options>(args.into());
    let function = syn::parse2::<syn::ItemFn>(item.clone());
    let (options, function) = match (options, function) {
        (Ok(options), Ok(function)) => (options, function),
        (options, function) => {
            let errors = options.err().into_iter().chain(function.err());
            return with_errors(errors, item).into();
        }
    };
    match check::check(&options, &function) {
        Ok(plan) => expand::expand(&plan),
        Err(error) => with_errors([error], item),
    }
    .into()
}

/// The errors, plus the function unchanged.
fn with_errors(errors: impl IntoIterator<Item = syn::Error>, item: TokenStream) -> TokenStream {
    let mut tokens: TokenStream = errors
        .into_iter()
        .map(|error| error.to_compile_error())
        .collect();
    tokens.extend(item);
    tokens
}
