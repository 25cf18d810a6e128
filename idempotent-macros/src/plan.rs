//! The validated plan: everything `check.rs` decided, and all that `expand.rs` reads.

use syn::{Block, Expr, ExprAsync, Ident, ItemFn, Path, Stmt, Type};

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
    /// The function has type or const parameters, or a receiver (its impl may be generic):
    /// the output type can differ between instantiations that share the namespace.
    pub(crate) output_may_vary: bool,
    pub(crate) mode: Mode<'a>,
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

/// Where the call is recorded.
pub(crate) enum Mode<'a> {
    /// Through an `Idempotency` executor: `executor = …`, else the process default.
    Executor {
        executor: Option<&'a Expr>,
        /// The output's `T`, when its value may be kept and replayed by clone.
        keep_by_clone: Option<&'a Type>,
    },
    /// `transaction = tx`: in the caller's SQL transaction, through the `SqlStore` `store`.
    Transaction {
        transaction: &'a Ident,
        store: &'a Expr,
    },
}
