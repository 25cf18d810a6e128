//! Parsing `#[idempotent(...)]` options. Only syntax here; meaning is checked in `check.rs`.

use proc_macro2::{Span, TokenTree};
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, LitInt, LitStr, Path, Token};

mod kw {
    syn::custom_keyword!(key);
    syn::custom_keyword!(ttl);
    syn::custom_keyword!(lease);
    syn::custom_keyword!(max_run);
    syn::custom_keyword!(executor);
    syn::custom_keyword!(store);
    syn::custom_keyword!(skip);
    syn::custom_keyword!(name);
    syn::custom_keyword!(version);
    syn::custom_keyword!(on_in_progress);
    syn::custom_keyword!(store_errors);
    syn::custom_keyword!(transaction);
    syn::custom_keyword!(wait);
    syn::custom_keyword!(reject);
}

pub(crate) const VALID_OPTIONS: &str = "`key`, `ttl`, `lease`, `max_run`, `executor` (or `store`), `skip`, `name`, `version`, `on_in_progress`, `store_errors`, `transaction`, `crate`";

/// A duration option: a humantime literal (`"24h"`, checked at compile time) or any
/// expression of type `Duration`.
pub(crate) enum DurationValue {
    Literal(LitStr),
    Expr(Expr),
}

impl Parse for DurationValue {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(LitStr) {
            Ok(DurationValue::Literal(input.parse()?))
        } else {
            Ok(DurationValue::Expr(input.parse()?))
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Policy {
    Wait,
    Reject,
}

/// An option's value (a wrapper, so every option is set through [`set`]).
pub(crate) struct Set<T> {
    pub(crate) value: T,
    /// The name it was given under (`executor` has the alias `store`).
    name: &'static str,
}

#[derive(Default)]
pub(crate) struct Options {
    pub(crate) key: Option<Set<Expr>>,
    pub(crate) ttl: Option<Set<DurationValue>>,
    pub(crate) lease: Option<Set<DurationValue>>,
    pub(crate) max_run: Option<Set<DurationValue>>,
    /// `executor = …`, or its alias `store = …`.
    pub(crate) executor: Option<Set<Expr>>,
    pub(crate) skip: Option<Set<Vec<Ident>>>,
    pub(crate) name: Option<Set<LitStr>>,
    pub(crate) version: Option<Set<LitInt>>,
    pub(crate) on_in_progress: Option<Set<Policy>>,
    pub(crate) store_errors: Option<Set<()>>,
    /// `transaction = tx`: the argument holding the caller's SQL transaction, and the span
    /// of the option's keyword.
    pub(crate) transaction: Option<Set<(Ident, Span)>>,
    pub(crate) krate: Option<Set<Path>>,
    /// Unknown and duplicate options, reported together with the checks.
    pub(crate) errors: Vec<syn::Error>,
}

/// Every option goes through here, so a duplicate (also under another name) is always caught
/// the same way, on the second one.
fn set<T>(
    slot: &mut Option<Set<T>>,
    errors: &mut Vec<syn::Error>,
    name: &'static str,
    span: Span,
    value: T,
) {
    match slot {
        None => *slot = Some(Set { value, name }),
        Some(first) if first.name == name => errors.push(syn::Error::new(
            span,
            format!("duplicate `#[idempotent]` option `{name}`; give each option once"),
        )),
        Some(first) => errors.push(syn::Error::new(
            span,
            format!(
                "duplicate `#[idempotent]` option `{name}`: `{}` is another name for it; give it once",
                first.name
            ),
        )),
    }
}

fn value<T: Parse>(input: ParseStream<'_>) -> syn::Result<T> {
    input.parse::<Token![=]>()?;
    input.parse()
}

impl Parse for Options {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut options = Options::default();
        let errors = &mut options.errors;
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if lookahead.peek(kw::key) {
                let span = input.parse::<kw::key>()?.span;
                set(&mut options.key, errors, "key", span, value(input)?);
            } else if lookahead.peek(kw::ttl) {
                let span = input.parse::<kw::ttl>()?.span;
                set(&mut options.ttl, errors, "ttl", span, value(input)?);
            } else if lookahead.peek(kw::lease) {
                let span = input.parse::<kw::lease>()?.span;
                set(&mut options.lease, errors, "lease", span, value(input)?);
            } else if lookahead.peek(kw::max_run) {
                let span = input.parse::<kw::max_run>()?.span;
                set(&mut options.max_run, errors, "max_run", span, value(input)?);
            } else if lookahead.peek(kw::store_errors) {
                let span = input.parse::<kw::store_errors>()?.span;
                set(&mut options.store_errors, errors, "store_errors", span, ());
            } else if lookahead.peek(kw::executor) {
                let span = input.parse::<kw::executor>()?.span;
                set(
                    &mut options.executor,
                    errors,
                    "executor",
                    span,
                    value(input)?,
                );
            } else if lookahead.peek(kw::store) {
                let span = input.parse::<kw::store>()?.span;
                set(&mut options.executor, errors, "store", span, value(input)?);
            } else if lookahead.peek(kw::skip) {
                let span = input.parse::<kw::skip>()?.span;
                let content;
                syn::parenthesized!(content in input);
                let names = Punctuated::<Ident, Token![,]>::parse_terminated_with(
                    &content,
                    syn::ext::IdentExt::parse_any,
                )?;
                set(
                    &mut options.skip,
                    errors,
                    "skip",
                    span,
                    names.into_iter().collect(),
                );
            } else if lookahead.peek(kw::name) {
                let span = input.parse::<kw::name>()?.span;
                set(&mut options.name, errors, "name", span, value(input)?);
            } else if lookahead.peek(kw::version) {
                let span = input.parse::<kw::version>()?.span;
                set(&mut options.version, errors, "version", span, value(input)?);
            } else if lookahead.peek(kw::on_in_progress) {
                let span = input.parse::<kw::on_in_progress>()?.span;
                input.parse::<Token![=]>()?;
                let policy = input.lookahead1();
                let policy = if policy.peek(kw::wait) {
                    input.parse::<kw::wait>()?;
                    Policy::Wait
                } else if policy.peek(kw::reject) {
                    input.parse::<kw::reject>()?;
                    Policy::Reject
                } else {
                    return Err(policy.error());
                };
                set(
                    &mut options.on_in_progress,
                    errors,
                    "on_in_progress",
                    span,
                    policy,
                );
            } else if lookahead.peek(kw::transaction) {
                let span = input.parse::<kw::transaction>()?.span;
                let argument: Ident = value(input)?;
                set(
                    &mut options.transaction,
                    errors,
                    "transaction",
                    span,
                    (argument, span),
                );
            } else if lookahead.peek(Token![crate]) {
                let span = input.parse::<Token![crate]>()?.span;
                set(&mut options.krate, errors, "crate", span, value(input)?);
            } else if input.peek(Ident::peek_any) {
                let unknown: Ident = input.call(syn::ext::IdentExt::parse_any)?;
                errors.push(syn::Error::new(
                    unknown.span(),
                    format!(
                        "unknown `#[idempotent]` option `{unknown}`; expected one of {VALID_OPTIONS}"
                    ),
                ));
                // Skip its value, so the options after it are still read.
                while !input.is_empty() && !input.peek(Token![,]) {
                    input.parse::<TokenTree>()?;
                }
            } else {
                return Err(lookahead.error());
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(options)
    }
}
