//! Every check of the function and its options, in one place: each step below checks one
//! thing and adds what is wrong to the collected errors, which are reported together, each
//! on the narrowest token. What passes becomes the [`Plan`] that `expand.rs` generates from.

use std::fmt::Display;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::spanned::Spanned as _;
use syn::{
    Block, Expr, ExprAsync, FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType,
    Stmt, Type, TypeParamBound,
};

use crate::attr::{DurationValue, Options, Set};
use crate::instantiation::instantiation;
use crate::plan::{Duration, Mode, Namespace, Plan, Shape, Told};

pub(crate) fn check<'a>(options: &'a Options, function: &'a ItemFn) -> syn::Result<Plan<'a>> {
    let mut errors = Errors(options.errors.clone());
    let shape = check_shape(function, &mut errors);
    let output = check_return_type(function, shape.as_ref(), &mut errors);
    let arguments = check_arguments(function, &mut errors);
    let transaction = check_transaction(options, function, &arguments, &mut errors);
    let hashed = check_skip(options, function, &arguments, transaction, &mut errors);
    let version = check_version(options, &mut errors);
    let namespace = check_name(options, function, &mut errors);
    let ttl = check_duration(&options.ttl, "ttl", &mut errors);
    let lease = check_duration(&options.lease, "lease", &mut errors);
    let max_run = check_duration(&options.max_run, "max_run", &mut errors);
    errors.finish()?;

    let (Some(shape), Some(output)) = (shape, output) else {
        return Err(syn::Error::new(
            function.sig.ident.span(),
            "`#[idempotent]` cannot expand this function",
        ));
    };
    let result_parts = result_parts(output);
    let executor = options.executor.as_ref().map(|executor| &executor.value);
    let mode = match (transaction, executor) {
        (Some(transaction), Some(store)) => Mode::Transaction { transaction, store },
        _ => Mode::Executor {
            executor,
            keep_by_clone: result_parts.and_then(|(ok, _)| keep_by_clone(function, ok)),
            told: match result_parts {
                Some((ok, _)) => nameable(ok.to_token_stream()).then_some(Told::Ok(ok)),
                // Another spelling of a `Result` takes type arguments (`anyhow::Result<T>`);
                // a bare name (`u64`) is left alone, so its error says only that it is no
                // `Result`.
                None => (has_type_arguments(output) && nameable(output.to_token_stream()))
                    .then_some(Told::Projected(output)),
            },
        },
    };
    Ok(Plan {
        function,
        shape,
        krate: options
            .krate
            .as_ref()
            .map(|krate| krate.value.clone())
            .unwrap_or_else(|| syn::parse_quote!(::idempotency)),
        namespace,
        version,
        key: options.key.as_ref().map(|key| &key.value),
        hashed,
        ttl,
        lease,
        max_run,
        policy: options.on_in_progress.as_ref().map(|policy| policy.value),
        store_errors: options.store_errors.is_some(),
        output,
        result_parts,
        instantiation: instantiation(
            function,
            match result_parts {
                Some((ok, _)) if options.store_errors.is_none() => ok,
                _ => output,
            },
        ),
        mode,
    })
}

/// The errors found so far.
struct Errors(Vec<syn::Error>);

impl Errors {
    fn at(&mut self, span: Span, message: impl Display) {
        self.0.push(syn::Error::new(span, message));
    }

    /// An error that covers all of `tokens` (a whole type, say).
    fn on(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.0.push(syn::Error::new_spanned(tokens, message));
    }

    /// All of them as one error, if any.
    fn finish(self) -> syn::Result<()> {
        let mut errors = self.0.into_iter();
        let Some(mut first) = errors.next() else {
            return Ok(());
        };
        for error in errors {
            first.combine(error);
        }
        Err(first)
    }
}

/// An `async fn`, or a method that `#[async_trait]` already rewrote.
fn check_shape<'a>(function: &'a ItemFn, errors: &mut Errors) -> Option<Shape<'a>> {
    if function.sig.asyncness.is_some() {
        return Some(Shape::Async {
            body: &function.block,
        });
    }
    if let Some(future) = async_trait_body(&function.block) {
        let statements = &function.block.stmts;
        return Some(Shape::AsyncTrait {
            setup: &statements[..statements.len() - 1],
            future,
        });
    }
    errors.at(
        function.sig.fn_token.span,
        "`#[idempotent]` works on `async fn` only (inside `#[async_trait]` impls too); make this function `async`",
    );
    None
}

/// The body's output type `R`, when it can be `Result<T, E>`.
fn check_return_type<'a>(
    function: &'a ItemFn,
    shape: Option<&Shape<'_>>,
    errors: &mut Errors,
) -> Option<&'a Type> {
    let output = match (shape, &function.sig.output) {
        (_, ReturnType::Default) => {
            errors.at(
                function.sig.ident.span(),
                "`#[idempotent]` functions must return `Result<T, E>` with `T: Serialize + DeserializeOwned` and `E: From<idempotency::Error>`; this one returns `()`",
            );
            return None;
        }
        (Some(Shape::AsyncTrait { .. }), ReturnType::Type(_, ty)) => {
            let output = boxed_future_output(ty);
            if output.is_none() {
                errors.at(
                    ty.span(),
                    "`#[idempotent]` could not read the output type of this `#[async_trait]` method",
                );
            }
            output?
        }
        (_, ReturnType::Type(_, ty)) => &**ty,
    };
    check_output(output, errors);
    Some(output)
}

/// A typed argument bound to a plain name.
struct Argument<'a> {
    name: &'a Ident,
    ty: &'a Type,
}

/// Every typed argument (not `self`) has a name, so it can be hashed or skipped.
fn check_arguments<'a>(function: &'a ItemFn, errors: &mut Errors) -> Vec<Argument<'a>> {
    let mut arguments = Vec::new();
    for input in &function.sig.inputs {
        let FnArg::Typed(typed) = input else { continue };
        match &*typed.pat {
            Pat::Ident(binding) if binding.subpat.is_none() => arguments.push(Argument {
                name: &binding.ident,
                ty: &typed.ty,
            }),
            other => errors.at(
                other.span(),
                "`#[idempotent]` hashes arguments by name; bind this argument to a name (`name: Type`) so it can be hashed or listed in `skip(..)`",
            ),
        }
    }
    arguments
}

/// The arguments' names, for messages.
fn known(arguments: &[Argument<'_>]) -> String {
    if arguments.is_empty() {
        return "none".to_owned();
    }
    arguments
        .iter()
        .map(|argument| format!("`{}`", argument.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `transaction = tx` names a `&mut` argument, and comes with the `SqlStore` to record in.
fn check_transaction<'a>(
    options: &'a Options,
    function: &ItemFn,
    arguments: &[Argument<'_>],
    errors: &mut Errors,
) -> Option<&'a Ident> {
    let (argument, keyword) = &options.transaction.as_ref()?.value;
    match arguments.iter().find(|known| known.name == argument) {
        None => errors.at(
            argument.span(),
            format!(
                "`transaction` names `{argument}`, which is not an argument of `{}`; its arguments are {}",
                function.sig.ident,
                known(arguments),
            ),
        ),
        Some(found) => {
            if !matches!(found.ty, Type::Reference(reference) if reference.mutability.is_some()) {
                errors.on(
                    found.ty,
                    format!(
                        "`transaction = {argument}` needs `{argument}` to be the caller's transaction, taken as `{argument}: &mut sqlx::Transaction<'_, DB>`"
                    ),
                );
            }
        }
    }
    if options.executor.is_none() {
        errors.at(
            *keyword,
            "`transaction` needs `executor = …` (or `store = …`), the `SqlStore` that records the calls in the transaction's database",
        );
    }
    Some(argument)
}

/// `skip(..)` names arguments; the rest, less the transaction, are hashed.
fn check_skip<'a>(
    options: &'a Options,
    function: &ItemFn,
    arguments: &[Argument<'a>],
    transaction: Option<&'a Ident>,
    errors: &mut Errors,
) -> Vec<&'a Ident> {
    let mut skipped: Vec<&Ident> = options
        .skip
        .as_ref()
        .map(|skip| skip.value.iter().collect())
        .unwrap_or_default();
    for name in &skipped {
        if *name != "self" && !arguments.iter().any(|argument| argument.name == *name) {
            errors.at(
                name.span(),
                format!(
                    "`skip` names `{name}`, which is not an argument of `{}`; its arguments are {}",
                    function.sig.ident,
                    known(arguments),
                ),
            );
        }
    }
    // The transaction is not an input of the call.
    skipped.extend(transaction);
    arguments
        .iter()
        .map(|argument| argument.name)
        .filter(|argument| !skipped.contains(argument))
        .collect()
}

fn check_version(options: &Options, errors: &mut Errors) -> u32 {
    let Some(version) = &options.version else {
        return 1;
    };
    version.value.base10_parse::<u32>().unwrap_or_else(|_| {
        errors.at(
            version.value.span(),
            "`version` must be a whole number from 0 to 4294967295",
        );
        1
    })
}

fn check_name<'a>(options: &Options, function: &'a ItemFn, errors: &mut Errors) -> Namespace<'a> {
    let Some(name) = &options.name else {
        return Namespace::Path(&function.sig.ident);
    };
    let value = name.value.value();
    if value.trim().is_empty() {
        errors.at(
            name.value.span(),
            "`name` must not be empty; it fixes the namespace of this function's keys",
        );
    }
    Namespace::Named(value)
}

/// A duration literal is a positive humantime duration that fits in `u64` nanoseconds.
fn check_duration<'a>(
    option: &'a Option<Set<DurationValue>>,
    label: &str,
    errors: &mut Errors,
) -> Option<Duration<'a>> {
    let literal = match &option.as_ref()?.value {
        DurationValue::Expr(expr) => return Some(Duration::Expr(expr)),
        DurationValue::Literal(literal) => literal,
    };
    match humantime::parse_duration(&literal.value()) {
        Ok(duration) if duration.is_zero() => {
            errors.at(
                literal.span(),
                format!("`{label}` must be greater than zero"),
            );
            None
        }
        Ok(duration) => match u64::try_from(duration.as_nanos()) {
            Ok(nanos) => Some(Duration::Nanos(nanos)),
            Err(_) => {
                errors.at(
                    literal.span(),
                    format!("`{label}` is too long; keep it under 500 years"),
                );
                None
            }
        },
        Err(error) => {
            errors.at(
                literal.span(),
                format!(
                    "`{label}` is not a duration ({error}); write it like \"24h\", \"15m\", \"30s\" or \"1500ms\""
                ),
            );
            None
        }
    }
}

/// `ok`, when a `Clone` output may be replayed from the typed value an in-process store keeps
/// (picked by autoref in `__private::Probe`). The pick cannot test `ok: 'static`, so it is
/// made only for a free function without generic parameters whose output type names no
/// lifetime, reference, `Self`, `impl` or `dyn`. An elided lifetime hidden in the output type
/// (`Cow<str>`) is inferred as `'static` in the probe's expression, and the keeper then
/// coerces to the function's lifetime by variance.
fn keep_by_clone<'a>(function: &ItemFn, ok: &'a Type) -> Option<&'a Type> {
    let keeps = function.sig.generics.params.is_empty()
        && function.sig.receiver().is_none()
        && keepable(ok.to_token_stream());
    keeps.then_some(ok)
}

/// The type names no lifetime, reference, `Self`, `impl` or `dyn` (so it is `'static` unless a
/// named type hides an elided lifetime parameter).
fn keepable(tokens: TokenStream) -> bool {
    tokens.into_iter().all(|token| match token {
        TokenTree::Punct(punct) => !matches!(punct.as_char(), '\'' | '&'),
        TokenTree::Ident(ident) => !(ident == "Self" || ident == "impl" || ident == "dyn"),
        TokenTree::Group(group) => keepable(group.stream()),
        TokenTree::Literal(_) => true,
    })
}

/// The type can be named in an expression (it has no `impl`): `__private::Probe::<T>` then
/// picks how an `Obtained<U>` output is told how it was obtained.
fn nameable(tokens: TokenStream) -> bool {
    tokens.into_iter().all(|token| match token {
        TokenTree::Ident(ident) => ident != "impl",
        TokenTree::Group(group) => nameable(group.stream()),
        _ => true,
    })
}

/// A path type whose last segment has `<…>` arguments.
fn has_type_arguments(output: &Type) -> bool {
    let Type::Path(path) = output else {
        return false;
    };
    path.path
        .segments
        .last()
        .is_some_and(|last| matches!(last.arguments, syn::PathArguments::AngleBracketed(_)))
}

/// Types that cannot be `Result<T, E>` under any alias.
fn check_output(output: &Type, errors: &mut Errors) {
    let what = match output {
        Type::Path(_) | Type::Group(_) | Type::Paren(_) | Type::Macro(_) => return,
        Type::Tuple(tuple) if tuple.elems.is_empty() => "`()`",
        Type::ImplTrait(_) => "`impl Trait`",
        Type::Reference(_) => "a reference",
        Type::Never(_) => "`!`",
        _ => "this type",
    };
    errors.at(
        output.span(),
        format!(
            "`#[idempotent]` functions must return `Result<T, E>` with `T: Serialize + DeserializeOwned` and `E: From<idempotency::Error>`, not {what}"
        ),
    );
}

/// `T` and `E` of a type written `Result<T, E>` (any path ending in `Result` with two
/// arguments).
fn result_parts(output: &Type) -> Option<(&Type, &Type)> {
    let Type::Path(path) = output else {
        return None;
    };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(arguments) = &last.arguments else {
        return None;
    };
    let mut types = arguments.args.iter().filter_map(|argument| match argument {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    let ok = types.next()?;
    let err = types.next()?;
    Some((ok, err))
}

/// The `async move { … }` inside `Box::pin(…)` that `#[async_trait]` leaves as the body.
fn async_trait_body(block: &Block) -> Option<&ExprAsync> {
    let Some(Stmt::Expr(Expr::Call(call), None)) = block.stmts.last() else {
        return None;
    };
    let Expr::Path(callee) = &*call.func else {
        return None;
    };
    let segments: Vec<_> = callee
        .path
        .segments
        .iter()
        .map(|segment| segment.ident.to_string())
        .collect();
    if !segments.ends_with(&["Box".to_owned(), "pin".to_owned()]) || call.args.len() != 1 {
        return None;
    }
    match call.args.first() {
        Some(Expr::Async(future)) if future.capture.is_some() => Some(future),
        _ => None,
    }
}

/// `R` in `Pin<Box<dyn Future<Output = R> + Send + 'a>>`.
fn boxed_future_output(ty: &Type) -> Option<&Type> {
    let boxed = first_type_argument(ty, "Pin")?;
    let Type::TraitObject(object) = first_type_argument(boxed, "Box")? else {
        return None;
    };
    object.bounds.iter().find_map(|bound| {
        let TypeParamBound::Trait(bound) = bound else {
            return None;
        };
        let last = bound.path.segments.last()?;
        if last.ident != "Future" {
            return None;
        }
        let PathArguments::AngleBracketed(arguments) = &last.arguments else {
            return None;
        };
        arguments.args.iter().find_map(|argument| match argument {
            GenericArgument::AssocType(assoc) if assoc.ident == "Output" => Some(&assoc.ty),
            _ => None,
        })
    })
}

/// `A` in a type written `…::Name<A, …>`.
fn first_type_argument<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(arguments) = &last.arguments else {
        return None;
    };
    arguments.args.iter().find_map(|argument| match argument {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    })
}
