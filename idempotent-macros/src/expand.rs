//! Code generation from the validated [`Plan`]; nothing is decided here. Generated code names
//! only `<crate>::__private::…` and `::core::…`.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{Expr, Ident, LitStr, Type};

use crate::attr::Policy;
use crate::plan::{Duration, Mode, Namespace, Plan, Shape};

pub(crate) fn expand(plan: &Plan<'_>) -> TokenStream {
    let common = Common::new(plan);
    let body = |block: TokenStream| match plan.mode {
        Mode::Executor {
            executor,
            keep_by_clone,
        } => through_executor(plan, &common, executor, keep_by_clone, block),
        Mode::Transaction { transaction, store } => {
            in_transaction(plan, &common, transaction, store, block)
        }
    };

    let attrs = &plan.function.attrs;
    let vis = &plan.function.vis;
    let sig = &plan.function.sig;
    match plan.shape {
        Shape::Async { body: block } => {
            let body = body(block.to_token_stream());
            quote! {
                #(#attrs)*
                #vis #sig {
                    #body
                }
            }
        }
        Shape::AsyncTrait { setup, future } => {
            let body = body(future.block.to_token_stream());
            quote! {
                #(#attrs)*
                #vis #sig {
                    #(#setup)*
                    ::std::boxed::Box::pin(async move { #body })
                }
            }
        }
    }
}

/// What both expansions share: the call site, the bound checks, the hashing of the
/// arguments, the key, the output type for the fingerprint and the per-call options.
struct Common {
    private: TokenStream,
    /// The `static` site and the bound checks.
    prelude: TokenStream,
    /// Fills `__idempotency_args` with the hashed arguments.
    hashing: TokenStream,
    key: TokenStream,
    output_type: TokenStream,
    /// Applied to the prepared call; empty when there are none.
    options: TokenStream,
}

impl Common {
    fn new(plan: &Plan<'_>) -> Self {
        let krate = &plan.krate;
        let private = quote!(#krate::__private);
        let output = plan.output;

        let namespace = match &plan.namespace {
            Namespace::Named(name) => {
                LitStr::new(name, plan.function.sig.ident.span()).into_token_stream()
            }
            Namespace::Path(ident) => {
                let ident = ident.to_string();
                quote!(::core::concat!(::core::module_path!(), "::", #ident))
            }
        };
        let version = plan.version;

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
        let prelude = quote! {
            static __IDEMPOTENCY_SITE: #private::Site = #private::Site::new(#namespace, #version);
            #result_check
            #assertions
        };

        let pushes = plan.hashed.iter().map(|argument| {
            quote_spanned!(argument.span()=> #private::push_arg(&mut __idempotency_args, &#argument);)
        });
        let hashing = quote! {
            let mut __idempotency_args = #private::DigestBuilder::new();
            #(#pushes)*
        };

        let key = match plan.key {
            Some(key) => {
                quote_spanned!(key.span()=> ::core::option::Option::Some(#private::key_digest(&(#key))))
            }
            None => quote!(::core::option::Option::None),
        };
        let output_type = if plan.output_may_vary {
            quote!(::core::option::Option::Some(::core::any::type_name::<#output>()))
        } else {
            quote!(::core::option::Option::None)
        };
        let options = call_options(plan, &private);
        Common {
            private,
            prelude,
            hashing,
            key,
            output_type,
            options,
        }
    }
}

/// The per-call options as builder calls.
fn call_options(plan: &Plan<'_>, private: &TokenStream) -> TokenStream {
    let duration = |duration: &Duration<'_>| match duration {
        Duration::Nanos(nanos) => quote!(#private::Duration::from_nanos(#nanos)),
        Duration::Expr(expr) => quote_spanned!(expr.span()=> #expr),
    };
    let mut options = TokenStream::new();
    if let Some(ttl) = &plan.ttl {
        let ttl = duration(ttl);
        options.extend(quote!(.ttl(#ttl)));
    }
    if let Some(lease) = &plan.lease {
        let lease = duration(lease);
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
    options
}

/// Through an `Idempotency` executor. The call is prepared and started without an await: a
/// replay from an in-process store returns here, and only the boxed rest of any other call is
/// held across the await, so the function's future is little more than its arguments. (The
/// `let` ends the temporaries' storage before the await.)
fn through_executor(
    plan: &Plan<'_>,
    common: &Common,
    executor: Option<&Expr>,
    keep_by_clone: Option<&Type>,
    block: TokenStream,
) -> TokenStream {
    let Common {
        private,
        prelude,
        hashing,
        key,
        output_type,
        options,
    } = common;
    let output = plan.output;
    let executor = match executor {
        Some(executor) => quote_spanned!(executor.span()=> #private::executor(&(#executor))),
        None => quote!(#private::default_idempotency()),
    };
    let configure = if options.is_empty() {
        TokenStream::new()
    } else {
        quote!(.map(|__idempotency_call| __idempotency_call #options))
    };
    // The autoref pick of `__private::Probe`: a `Clone` output is kept, others decoded.
    let keeper = match keep_by_clone {
        Some(ok) => quote! {
            {
                #[allow(unused_imports)]
                use #private::{KeepByClone as _, KeepByDecoding as _};
                (&#private::Probe::<#ok>::new()).__idempotency_keeper()
            }
        },
        None => quote!(::core::option::Option::None),
    };
    quote! {
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
    }
}

/// `transaction = tx`: claim in the caller's SQL transaction, run the body inline (it keeps
/// using the transaction), record the result in it. No closure, so the body may borrow freely.
fn in_transaction(
    plan: &Plan<'_>,
    common: &Common,
    transaction: &Ident,
    store: &Expr,
    block: TokenStream,
) -> TokenStream {
    let Common {
        private,
        prelude,
        hashing,
        key,
        output_type,
        options,
    } = common;
    let output = plan.output;
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
