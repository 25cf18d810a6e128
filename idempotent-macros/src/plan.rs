//! The validated plan: everything `check.rs` decided, and all that `expand.rs` reads.

use syn::{Block, Expr, ExprAsync, Ident, ItemFn, Path, Stmt, Type, TypePath};

use crate::attr::Policy;

pub(crate) struct Plan<'a> {
    /// The function as written: its attributes, visibility and signature are copied through.
    pub(crate) function: &'a ItemFn,
    pub(crate) shape: Shape<'a>,
    /// `crate = …`, else `::idempotency`.
    pub(crate) krate: Path,
    pub(crate) namespace: Namespace<'a>,
    pub(crate) version: u32,
    pub(crate) key: Option<&'a Expr>,
    /// The arguments hashed into the fingerprint, in order.
    pub(crate) hashed: Vec<&'a Ident>,
    pub(crate) ttl: Option<Duration<'a>>,
    pub(crate) lease: Option<Duration<'a>>,
    pub(crate) max_run: Option<Duration<'a>>,
    pub(crate) policy: Option<Policy>,
    pub(crate) store_errors: bool,
    /// The body's output type `R`.
    pub(crate) output: &'a Type,
    /// `T` and `E` when `R` is written `Result<T, E>`.
    pub(crate) result_parts: Option<(&'a Type, &'a Type)>,
    /// Whether the replayed output type can differ between instantiations that share the
    /// namespace (then its name goes into the fingerprint).
    pub(crate) instantiation: Instantiation<'a>,
    pub(crate) mode: Mode<'a>,
}

/// What the fingerprint needs to know about the replayed output type (`T` of `Result<T, E>`,
/// or the whole output when errors are stored too).
pub(crate) enum Instantiation<'a> {
    /// It names no type that can differ between instantiations: it stays out.
    Fixed,
    /// It mentions a generic parameter of the function, `Self`, or something the macro cannot
    /// look into: its name goes in.
    Varies(&'a Type),
    /// Its named types are fixed unless one is a parameter of the `impl` around the function:
    /// each is compared at run time with the name it is written with, and the output type's
    /// name goes in when one differs.
    Check {
        named: &'a Type,
        /// The paths named without generic arguments, each with its written name.
        names: Vec<(&'a TypePath, String)>,
    },
}

/// How the function is written.
pub(crate) enum Shape<'a> {
    /// `async fn … -> R { body }`
    Async { body: &'a Block },
    /// A method already rewritten by `#[async_trait]`: `fn … -> Pin<Box<dyn Future<Output =
    /// R> + Send + 'async_trait>> { setup; Box::pin(async move { body }) }`.
    AsyncTrait {
        setup: &'a [Stmt],
        future: &'a ExprAsync,
    },
}

/// The namespace of the function's keys.
pub(crate) enum Namespace<'a> {
    /// `name = "…"`, its value.
    Named(String),
    /// The module path and the function's name.
    Path(&'a Ident),
}

/// A duration option.
pub(crate) enum Duration<'a> {
    /// A literal, parsed at compile time.
    Nanos(u64),
    /// An expression of type `Duration`, evaluated per call.
    Expr(&'a Expr),
}

/// How the expansion names the output's `T` for the `Obtained` probe.
#[derive(Clone, Copy)]
pub(crate) enum Told<'a> {
    /// Written `Result<T, E>`: `T` itself.
    Ok(&'a Type),
    /// Another spelling of a `Result` (`anyhow::Result<T>`, an alias): the whole return
    /// type, projected through `__private::IdempotentReturn::Ok`.
    Projected(&'a Type),
}

/// Where the call is recorded.
pub(crate) enum Mode<'a> {
    /// Through an `Idempotency` executor: `executor = …`, else the process default.
    Executor {
        executor: Option<&'a Expr>,
        /// The output's `T`, when its value may be kept and replayed by clone.
        keep_by_clone: Option<&'a Type>,
        /// The output's `T`, when it can be named: an `Obtained<U>` is told how it was
        /// obtained.
        told: Option<Told<'a>>,
    },
    /// `transaction = tx`: in the caller's SQL transaction, through the `SqlStore` `store`.
    Transaction {
        transaction: &'a Ident,
        store: &'a Expr,
    },
}
