//! Code generation from the validated [`Plan`]; nothing is decided here. Generated code names
//! only `<crate>::__private::…` and `::core::…`.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{Expr, Ident, LitStr, Type};

use crate::attr::Policy;
use crate::plan::{Duration, Instantiation, Mode, Namespace, Plan, Shape, Told};

pub(crate) fn expand(plan: &Plan<'_>) -> TokenStream {
    let common = Common::new(plan);
    let body = |block: TokenStream| {
        let call = match plan.mode {
            Mode::Executor {
                executor,
                keep_by_clone,
                told,
            } => through_executor(&common, executor, keep_by_clone, told, block),
            Mode::Transaction { transaction, store } => {
                in_transaction(&common, transaction, store, block)
            }
        };
        let prelude = &common.prelude;
        quote!(#prelude #call)
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
/// arguments, the key, the output type's name for the fingerprint (where instantiations can
/// differ) and the per-call options.
struct Common<'a> {
    private: TokenStream,
    /// The body's output type `R`.
    output: &'a Type,
    /// The `static` site and the bound checks.
    prelude: TokenStream,
    /// Fills `__idempotency_args` with the hashed arguments.
    hashing: TokenStream,
    key: TokenStream,
    output_type: TokenStream,
    /// Applied to the prepared call; empty when there are none.
    options: TokenStream,
}

impl<'a> Common<'a> {
    fn new(plan: &Plan<'a>) -> Self {
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
        let output_type = match &plan.instantiation {
            Instantiation::Fixed => quote!(::core::option::Option::None),
            Instantiation::Varies(named) => {
                quote!(::core::option::Option::Some(::core::any::type_name::<#named>()))
            }
            Instantiation::Check { named, names } => {
                let names = names.iter().map(|(path, written)| {
                    quote_spanned!(path.span()=> (::core::any::type_name::<#path>(), #written))
                });
                quote! {
                    #private::output_type(
                        &__IDEMPOTENCY_SITE,
                        ::core::any::type_name::<#named>(),
                        || [#(#names),*],
                    )
                }
            }
        };
        let options = call_options(plan, &private);
        Common {
            private,
            output,
            prelude,
            hashing,
            key,
            output_type,
            options,
        }
    }

    /// `<crate>::__private::<prepare>(site, target, arguments, key, output type)`: the first
    /// step of a call, through an executor or in a transaction alike.
    fn prepare(&self, prepare: &str, target: TokenStream) -> TokenStream {
        let Common {
            private,
            key,
            output_type,
            ..
        } = self;
        let prepare = Ident::new(prepare, Span::call_site());
        quote! {
            #private::#prepare(
                &__IDEMPOTENCY_SITE,
                #target,
                __idempotency_args.finish(),
                #key,
                #output_type,
            )
        }
    }
}

/// The per-call options, applied to the prepared call: `ttl`, `lease`, `max_run` and
/// `on_in_progress` as
/// one `CallOptions` value, then `store_errors`. Empty when there are none.
fn call_options(plan: &Plan<'_>, private: &TokenStream) -> TokenStream {
    let duration = |duration: &Duration<'_>| match duration {
        Duration::Nanos(nanos) => quote!(#private::Duration::from_nanos(#nanos)),
        Duration::Expr(expr) => quote_spanned!(expr.span()=> #expr),
    };
    let mut set = TokenStream::new();
    if let Some(ttl) = &plan.ttl {
        let ttl = duration(ttl);
        set.extend(quote!(.ttl(#ttl)));
    }
    if let Some(lease) = &plan.lease {
        let lease = duration(lease);
        set.extend(quote!(.lease(#lease)));
    }
    if let Some(max_run) = &plan.max_run {
        let max_run = duration(max_run);
        set.extend(quote!(.max_run(#max_run)));
    }
    if let Some(policy) = plan.policy {
        let policy = match policy {
            Policy::Wait => quote!(Wait),
            Policy::Reject => quote!(Reject),
        };
        set.extend(quote!(.on_in_progress(#private::InProgressPolicy::#policy)));
    }
    let mut options = TokenStream::new();
    if !set.is_empty() {
        options.extend(quote!(.options(#private::CallOptions::new() #set)));
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
    common: &Common<'_>,
    executor: Option<&Expr>,
    keep_by_clone: Option<&Type>,
    told: Option<Told<'_>>,
    block: TokenStream,
) -> TokenStream {
    let Common {
        private,
        output,
        hashing,
        options,
        ..
    } = common;
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
    // The autoref pick again: an `Obtained<U>` output is told how it was obtained.
    let told = told.map(|told| match told {
        Told::Ok(ok) => quote!(#ok),
        Told::Projected(output) => quote!(<#output as #private::IdempotentReturn>::Ok),
    });
    let teller = match told {
        Some(ok) => quote! {
            {
                #[allow(unused_imports)]
                use #private::{TellNothing as _, TellObtained as _};
                (&#private::Probe::<#ok>::new()).__idempotency_teller()
            }
        },
        None => quote!(::core::option::Option::None),
    };
    let prepare = common.prepare("prepare", executor);
    quote! {
        let __idempotency_rest = match {
            #hashing
            #private::start(
                #prepare #configure,
                #keeper,
                #teller,
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
    common: &Common<'_>,
    transaction: &Ident,
    store: &Expr,
    block: TokenStream,
) -> TokenStream {
    let Common {
        private,
        output,
        hashing,
        options,
        ..
    } = common;
    let prepare = common.prepare(
        "prepare_in_transaction",
        quote_spanned!(store.span()=> &(#store)),
    );
    quote! {
        #hashing
        let __idempotency_call = match #prepare {
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
        let __idempotency_output: #output = __idempotency_owner.scope(async {
            let __idempotency_output: #output = #block;
            __idempotency_output
        })
        .await;
        __idempotency_owner.finish(&mut *#transaction, __idempotency_output).await
    }
}
