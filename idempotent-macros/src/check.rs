//! Every check of the function and its options, in one place. All errors are collected and
//! reported together, each on the narrowest token.

use proc_macro2::Span;
use syn::spanned::Spanned as _;
use syn::{
    Block, Expr, ExprAsync, FnArg, GenericArgument, Ident, ItemFn, Pat, Path, PathArguments,
    ReturnType, Stmt, Type, TypeParamBound,
};

use crate::attr::{DurationValue, Options, Policy};

pub(crate) enum DurationPlan<'a> {
    Nanos(u64),
    Expr(&'a Expr),
}

/// How the function is written.
pub(crate) enum Shape<'a> {
    /// `async fn … -> R { body }`
    Async,
    /// A method already rewritten by `#[async_trait]`: `fn … -> Pin<Box<dyn Future<Output =
    /// R> + Send + 'async_trait>> { Box::pin(async move { body }) }`.
    AsyncTrait { future: &'a ExprAsync },
}

/// What `expand.rs` needs, validated.
pub(crate) struct Plan<'a> {
    pub(crate) krate: Path,
    pub(crate) name: Option<String>,
    pub(crate) version: u32,
    pub(crate) key: Option<&'a Expr>,
    pub(crate) store: Option<&'a Expr>,
    pub(crate) ttl: Option<DurationPlan<'a>>,
    pub(crate) lease: Option<DurationPlan<'a>>,
    pub(crate) policy: Option<Policy>,
    pub(crate) store_errors: bool,
    /// `transaction = tx`: the argument holding the caller's SQL transaction.
    pub(crate) transaction: Option<&'a Ident>,
    /// The arguments hashed into the fingerprint, in order.
    pub(crate) hashed: Vec<&'a Ident>,
    pub(crate) shape: Shape<'a>,
    /// The body's output type `R`.
    pub(crate) output: &'a Type,
    /// `T` and `E` when `R` is written `Result<T, E>`.
    pub(crate) result_parts: Option<(&'a Type, &'a Type)>,
    /// The function has type or const parameters, or a receiver (its impl may be generic):
    /// the output type can differ between instantiations that share the namespace.
    pub(crate) output_may_vary: bool,
}

pub(crate) fn check<'a>(
    options: &'a Options,
    function: &'a ItemFn,
) -> Result<Plan<'a>, syn::Error> {
    let mut errors: Vec<syn::Error> = options.errors.clone();
    let mut fail = |span: Span, message: String| errors.push(syn::Error::new(span, message));

    let shape = if function.sig.asyncness.is_some() {
        Some(Shape::Async)
    } else if let Some(future) = async_trait_body(&function.block) {
        Some(Shape::AsyncTrait { future })
    } else {
        fail(
            function.sig.fn_token.span,
            "`#[idempotent]` works on `async fn` only (inside `#[async_trait]` impls too); make this function `async`".to_owned(),
        );
        None
    };

    let output = match (&shape, &function.sig.output) {
        (_, ReturnType::Default) => {
            fail(
                function.sig.ident.span(),
                "`#[idempotent]` functions must return `Result<T, E>` with `T: Serialize + DeserializeOwned` and `E: From<idempotency::Error>`; this one returns `()`".to_owned(),
            );
            None
        }
        (Some(Shape::AsyncTrait { .. }), ReturnType::Type(_, ty)) => {
            let output = boxed_future_output(ty);
            if output.is_none() {
                fail(ty.span(), "`#[idempotent]` could not read the output type of this `#[async_trait]` method".to_owned());
            }
            output
        }
        (_, ReturnType::Type(_, ty)) => Some(&**ty),
    };
    if let Some(output) = output {
        check_output(output, &mut fail);
    }
    let result_parts = output.and_then(result_parts);

    let mut arguments: Vec<&Ident> = Vec::new();
    let mut types: Vec<&Type> = Vec::new();
    for input in &function.sig.inputs {
        let FnArg::Typed(typed) = input else { continue };
        match &*typed.pat {
            Pat::Ident(binding) if binding.subpat.is_none() => {
                arguments.push(&binding.ident);
                types.push(&typed.ty);
            }
            other => fail(
                other.span(),
                "`#[idempotent]` hashes arguments by name; bind this argument to a name (`name: Type`) so it can be hashed or listed in `skip(..)`".to_owned(),
            ),
        }
    }

    let known = arguments
        .iter()
        .map(|argument| format!("`{argument}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let known = if known.is_empty() {
        "none".to_owned()
    } else {
        known
    };

    // Errors that cover a whole type (`fail` takes a single span).
    let mut whole_type_errors: Vec<syn::Error> = Vec::new();
    let transaction = options.transaction.as_ref().map(|set| &set.value);
    if let Some((argument, keyword)) = transaction {
        match arguments.iter().position(|name| *name == argument) {
            None => fail(
                argument.span(),
                format!(
                    "`transaction` names `{argument}`, which is not an argument of `{}`; its arguments are {known}",
                    function.sig.ident
                ),
            ),
            Some(index) => {
                if !matches!(types[index], Type::Reference(reference) if reference.mutability.is_some())
                {
                    whole_type_errors.push(syn::Error::new_spanned(
                        types[index],
                        format!(
                            "`transaction = {argument}` needs `{argument}` to be the caller's transaction, taken as `{argument}: &mut sqlx::Transaction<'_, DB>`"
                        ),
                    ));
                }
            }
        }
        if options.store.is_none() {
            fail(
                *keyword,
                "`transaction` needs `store = …`, the `SqlStore` that records the calls in the transaction's database".to_owned(),
            );
        }
    }

    let mut skipped: Vec<&Ident> = options
        .skip
        .as_ref()
        .map(|skip| skip.value.iter().collect())
        .unwrap_or_default();
    for name in &skipped {
        if *name != "self" && !arguments.iter().any(|argument| argument == name) {
            fail(
                name.span(),
                format!(
                    "`skip` names `{name}`, which is not an argument of `{}`; its arguments are {known}",
                    function.sig.ident
                ),
            );
        }
    }
    // The transaction is not an input of the call.
    if let Some((argument, _)) = transaction {
        skipped.push(argument);
    }
    let hashed = arguments
        .into_iter()
        .filter(|argument| !skipped.iter().any(|name| name == argument))
        .collect();

    let version = match &options.version {
        None => 1,
        Some(version) => match version.value.base10_parse::<u32>() {
            Ok(value) => value,
            Err(_) => {
                fail(
                    version.value.span(),
                    "`version` must be a whole number from 0 to 4294967295".to_owned(),
                );
                1
            }
        },
    };

    let name = options.name.as_ref().map(|name| name.value.value());
    if let (Some(name), Some(option)) = (&name, &options.name) {
        if name.trim().is_empty() {
            fail(
                option.value.span(),
                "`name` must not be empty; it fixes the namespace of this function's keys"
                    .to_owned(),
            );
        }
    }

    let mut duration = |option: &'a Option<crate::attr::Set<DurationValue>>, label: &str| {
        let option = option.as_ref()?;
        match &option.value {
            DurationValue::Expr(expr) => Some(DurationPlan::Expr(expr)),
            DurationValue::Literal(literal) => match humantime::parse_duration(&literal.value()) {
                Ok(duration) if duration.is_zero() => {
                    fail(
                        literal.span(),
                        format!("`{label}` must be greater than zero"),
                    );
                    None
                }
                Ok(duration) => match u64::try_from(duration.as_nanos()) {
                    Ok(nanos) => Some(DurationPlan::Nanos(nanos)),
                    Err(_) => {
                        fail(
                            literal.span(),
                            format!("`{label}` is too long; keep it under 500 years"),
                        );
                        None
                    }
                },
                Err(error) => {
                    fail(
                        literal.span(),
                        format!(
                            "`{label}` is not a duration ({error}); write it like \"24h\", \"15m\", \"30s\" or \"1500ms\""
                        ),
                    );
                    None
                }
            },
        }
    };
    let ttl = duration(&options.ttl, "ttl");
    let lease = duration(&options.lease, "lease");

    errors.extend(whole_type_errors);
    let mut errors = errors.into_iter();
    if let Some(mut first) = errors.next() {
        for error in errors {
            first.combine(error);
        }
        return Err(first);
    }
    let (Some(shape), Some(output)) = (shape, output) else {
        return Err(syn::Error::new(
            function.sig.ident.span(),
            "`#[idempotent]` cannot expand this function",
        ));
    };
    Ok(Plan {
        krate: options
            .krate
            .as_ref()
            .map(|krate| krate.value.clone())
            .unwrap_or_else(|| syn::parse_quote!(::idempotency)),
        name,
        version,
        key: options.key.as_ref().map(|key| &key.value),
        store: options.store.as_ref().map(|store| &store.value),
        ttl,
        lease,
        policy: options.on_in_progress.as_ref().map(|policy| policy.value),
        store_errors: options.store_errors.is_some(),
        transaction: transaction.map(|(argument, _)| argument),
        hashed,
        shape,
        output,
        result_parts,
        output_may_vary: function
            .sig
            .generics
            .params
            .iter()
            .any(|param| !matches!(param, syn::GenericParam::Lifetime(_)))
            || function.sig.receiver().is_some(),
    })
}

/// Types that cannot be `Result<T, E>` under any alias.
fn check_output(output: &Type, fail: &mut impl FnMut(Span, String)) {
    let what = match output {
        Type::Path(_) | Type::Group(_) | Type::Paren(_) | Type::Macro(_) => return,
        Type::Tuple(tuple) if tuple.elems.is_empty() => "`()`",
        Type::ImplTrait(_) => "`impl Trait`",
        Type::Reference(_) => "a reference",
        Type::Never(_) => "`!`",
        _ => "this type",
    };
    fail(
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
