//! Code generation. Generated code names only `<crate>::__private::…` and `::core::…`.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{ItemFn, LitStr};

use crate::attr::{Options, Policy};
use crate::check::{DurationPlan, Plan, Shape, check};

pub(crate) fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(error) => return with_error(error, item),
    };
    let options: Options = match syn::parse2(args) {
        Ok(options) => options,
        Err(error) => return with_error(error, item),
    };
    match check(&options, &function) {
        Ok(plan) => generate(&function, &plan),
        Err(error) => with_error(error, item),
    }
}

/// The error, plus the function unchanged, so the IDE and later errors stay sane.
fn with_error(error: syn::Error, item: TokenStream) -> TokenStream {
    let mut tokens = error.to_compile_error();
    tokens.extend(item);
    tokens
}

fn duration(krate: &syn::Path, plan: &DurationPlan<'_>) -> TokenStream {
    match plan {
        DurationPlan::Nanos(nanos) => quote!(#krate::__private::Duration::from_nanos(#nanos)),
        DurationPlan::Expr(expr) => quote_spanned!(expr.span()=> #expr),
    }
}

fn generate(function: &ItemFn, plan: &Plan<'_>) -> TokenStream {
    let krate = &plan.krate;
    let private = quote!(#krate::__private);
    let output = plan.output;

    let namespace = match &plan.name {
        Some(name) => LitStr::new(name, function.sig.ident.span()).into_token_stream(),
        None => {
            let ident = function.sig.ident.to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #ident))
        }
    };
    let version = plan.version;

    let executor = match plan.store {
        Some(store) => quote_spanned!(store.span()=> #private::executor(&(#store))),
        None => quote!(#private::default_idempotency()),
    };
    let pushes = plan.hashed.iter().map(|argument| {
        quote_spanned!(argument.span()=> #private::push_arg(&mut __idempotency_args, &#argument);)
    });
    let key = match plan.key {
        Some(key) => {
            quote_spanned!(key.span()=> ::core::option::Option::Some(#private::key_digest(&(#key))))
        }
        None => quote!(::core::option::Option::None),
    };

    let mut options = TokenStream::new();
    if let Some(ttl) = &plan.ttl {
        let ttl = duration(krate, ttl);
        options.extend(quote!(.ttl(#ttl)));
    }
    if let Some(lease) = &plan.lease {
        let lease = duration(krate, lease);
        options.extend(quote!(.lease(#lease)));
    }
    match plan.policy {
        Some(Policy::Reject) => {
            options.extend(quote!(.on_in_progress(#private::InProgressPolicy::Reject)))
        }
        Some(Policy::Wait) => {
            options.extend(quote!(.on_in_progress(#private::InProgressPolicy::Wait)))
        }
        None => {}
    }
    if plan.store_errors {
        options.extend(quote!(.store_errors()));
    }

    // Per-call options, applied to the prepared call (nothing when there are none).
    let configure = if options.is_empty() {
        TokenStream::new()
    } else {
        quote!(.map(|__idempotency_call| __idempotency_call #options))
    };

    // Bounds checked where the user wrote the types, so errors point there.
    let result_check = quote_spanned!(output.span()=> #private::assert_result::<#output>(););
    let assertions = plan.result_parts.map(|(ok, err)| {
        let ok_check = quote_spanned!(ok.span()=> #private::assert_output::<#ok>(););
        let err_check = if plan.store_errors {
            quote_spanned!(err.span()=> #private::assert_stored_error::<#err>();)
        } else {
            quote_spanned!(err.span()=> #private::assert_error::<#err>();)
        };
        quote!(#ok_check #err_check)
    });

    // Instantiations of a generic function (or of a method in a possibly generic impl) share
    // one namespace: their output type goes into the fingerprint (see `__private::identify`).
    let output_type = if plan.output_may_vary {
        quote!(::core::option::Option::Some(::core::any::type_name::<#output>()))
    } else {
        quote!(::core::option::Option::None)
    };
    // A `Clone` output is replayed from the typed value an in-process store keeps (picked by
    // autoref in `__private::Probe`). The pick cannot test `T: 'static`, so it is made only
    // for a free function without generic parameters whose output type names no lifetime,
    // reference, `Self`, `impl` or `dyn`. An elided lifetime hidden in the output type
    // (`Cow<str>`) is inferred as `'static` in the probe's expression, and the keeper then
    // coerces to the function's lifetime by variance.
    let keeper = match plan.result_parts {
        Some((ok, _)) if keeps_values(function, ok) => quote! {
            {
                #[allow(unused_imports)]
                use #private::{KeepByClone as _, KeepByDecoding as _};
                (&#private::Probe::<#ok>::new()).__idempotency_keeper()
            }
        },
        _ => quote!(::core::option::Option::None),
    };
    let hashing = quote! {
        let mut __idempotency_args = #private::DigestBuilder::new();
        #(#pushes)*
    };
    let prelude = quote! {
        static __IDEMPOTENCY_SITE: #private::Site = #private::Site::new(#namespace, #version);
        #result_check
        #assertions
    };
    let body = |block: TokenStream| match (plan.transaction, plan.store) {
        // The caller's SQL transaction: claim in it, run the body inline (it keeps using the
        // transaction), record the result in it. No closure, so the body may borrow freely.
        (Some(transaction), Some(store)) => {
            let store = quote_spanned!(store.span()=> &(#store));
            quote! {
                #prelude
                #hashing
                let __idempotency_call = match #private::prepare_in_transaction(
                    &__IDEMPOTENCY_SITE,
                    #store,
                    __idempotency_args.finish(),
                    #key,
                    #output_type,
                ) {
                    ::core::result::Result::Ok(__idempotency_call) => __idempotency_call #options,
                    ::core::result::Result::Err(__idempotency_error) => {
                        return ::core::result::Result::Err(::core::convert::From::from(__idempotency_error));
                    }
                };
                let __idempotency_owner = match __idempotency_call.claim(&mut *#transaction).await {
                    ::core::result::Result::Ok(#private::Claimed::Replayed(__idempotency_replayed)) => {
                        return __idempotency_replayed;
                    }
                    ::core::result::Result::Ok(#private::Claimed::Owned(__idempotency_owner)) => __idempotency_owner,
                    ::core::result::Result::Err(__idempotency_error) => {
                        return ::core::result::Result::Err(::core::convert::From::from(__idempotency_error));
                    }
                };
                let __idempotency_output: #output = async {
                    let __idempotency_output: #output = #block;
                    __idempotency_output
                }
                .await;
                __idempotency_owner.finish(&mut *#transaction, __idempotency_output).await
            }
        }
        // The call is prepared and started without an await: a replay from an in-process
        // store returns here, and only the boxed rest of any other call is held across the
        // await, so the function's future is little more than its arguments. (The `let`
        // ends the temporaries' storage before the await.)
        _ => quote! {
            #prelude
            let __idempotency_rest = match {
                #hashing
                #private::start(
                    #private::prepare(
                        &__IDEMPOTENCY_SITE,
                        #executor,
                        __idempotency_args.finish(),
                        #key,
                        #output_type,
                    )
                    #configure,
                    #keeper,
                    move || async move {
                        let __idempotency_output: #output = #block;
                        __idempotency_output
                    },
                )
            } {
                ::core::result::Result::Ok(__idempotency_answer) => return __idempotency_answer,
                ::core::result::Result::Err(__idempotency_rest) => __idempotency_rest,
            };
            __idempotency_rest.await
        },
    };

    let attrs = &function.attrs;
    let vis = &function.vis;
    let sig = &function.sig;
    match &plan.shape {
        Shape::Async => {
            let block = &function.block;
            let body = body(quote!(#block));
            quote! {
                #(#attrs)*
                #vis #sig {
                    #body
                }
            }
        }
        Shape::AsyncTrait { future } => {
            let inner = &future.block;
            let statements = &function.block.stmts[..function.block.stmts.len() - 1];
            let body = body(quote!(#inner));
            quote! {
                #(#attrs)*
                #vis #sig {
                    #(#statements)*
                    ::std::boxed::Box::pin(async move { #body })
                }
            }
        }
    }
}

/// Whether `#[idempotent]` on `function`, whose output is `Result<ok, _>`, replays a kept
/// value for a `Clone` output (see the comment where it is used).
fn keeps_values(function: &ItemFn, ok: &syn::Type) -> bool {
    if !function.sig.generics.params.is_empty() || function.sig.receiver().is_some() {
        return false;
    }
    keepable(ok.to_token_stream())
}

/// The type names no lifetime, reference, `Self`, `impl` or `dyn` (so it is `'static` unless a
/// named type hides an elided lifetime parameter).
fn keepable(tokens: TokenStream) -> bool {
    tokens.into_iter().all(|token| match token {
        proc_macro2::TokenTree::Punct(punct) => !matches!(punct.as_char(), '\'' | '&'),
        proc_macro2::TokenTree::Ident(ident) => {
            !(ident == "Self" || ident == "impl" || ident == "dyn")
        }
        proc_macro2::TokenTree::Group(group) => keepable(group.stream()),
        proc_macro2::TokenTree::Literal(_) => true,
    })
}
