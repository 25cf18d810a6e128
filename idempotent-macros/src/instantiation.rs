//! Part of the check stage: whether the replayed output type can differ between instantiations
//! of the function, which share one namespace. Only then does its name go into the fingerprint
//! (see `__private::identify`); a type that cannot vary stays out of it, so moving or renaming
//! it changes no fingerprint.
//!
//! The macro sees the function, not the `impl` around it, so a type written `T` or `Receipt`
//! may be a parameter of the impl. Such names (the types named without generic arguments) are
//! checked at run time instead: each is compared with the type it resolves to
//! (`core::any::type_name`), and a name that resolves to a type of another name is a generic
//! parameter (or an alias, or a `use … as`: those are treated alike, which costs only
//! stability, never safety).

use syn::{Expr, GenericArgument, Ident, ItemFn, Lit, PathArguments, Type, TypePath};

use crate::plan::Instantiation;

/// What the fingerprint needs to know about `named`, the type a replay decodes (`T` of
/// `Result<T, E>`, or the whole output when errors are stored too or the parts are unknown).
pub(crate) fn instantiation<'a>(function: &ItemFn, named: &'a Type) -> Instantiation<'a> {
    let parameters: Vec<&Ident> = function
        .sig
        .generics
        .params
        .iter()
        .filter_map(|param| match param {
            syn::GenericParam::Type(param) => Some(&param.ident),
            syn::GenericParam::Const(param) => Some(&param.ident),
            syn::GenericParam::Lifetime(_) => None,
        })
        .collect();
    let mut names = Vec::new();
    match walk(named, &parameters, &mut names) {
        Err(Varies) => Instantiation::Varies(named),
        Ok(()) if names.is_empty() => Instantiation::Fixed,
        Ok(()) => Instantiation::Check { named, names },
    }
}

/// The type mentions a generic parameter of the function, `Self`, or something the macro
/// cannot look into (a macro, `impl Trait`, a qualified path).
struct Varies;

/// Collects the paths named without generic arguments (`Receipt`, `billing::Receipt`, `T`,
/// `T::Out`) with the name each is written with.
fn walk<'a>(
    ty: &'a Type,
    parameters: &[&Ident],
    names: &mut Vec<(&'a TypePath, String)>,
) -> Result<(), Varies> {
    match ty {
        Type::Path(path) if path.qself.is_none() => {
            let segments = &path.path.segments;
            let first = segments.first().ok_or(Varies)?;
            let rooted = path.path.leading_colon.is_some();
            if !rooted && (first.ident == "Self" || parameters.contains(&&first.ident)) {
                return Err(Varies);
            }
            let last = segments.last().ok_or(Varies)?;
            if segments.iter().all(|segment| segment.arguments.is_none()) {
                // A single all-capitals name may be a const parameter of the impl (`N`), which
                // `type_name` cannot take.
                let name = last.ident.to_string();
                if segments.len() == 1 && !rooted {
                    if is_shouting(&name) {
                        return Err(Varies);
                    }
                    if PRIMITIVES.contains(&name.as_str()) {
                        return Ok(());
                    }
                }
                names.push((path, name));
                return Ok(());
            }
            // With generic arguments: the path itself is a type constructor (a generic
            // parameter takes none), unless it starts at a parameter (`T::Out<u8>`, written
            // with a capital where a module would not be).
            if segments.len() > 1 && !rooted && starts_with_capital(&first.ident) {
                return Err(Varies);
            }
            for segment in segments {
                match &segment.arguments {
                    PathArguments::None => {}
                    PathArguments::AngleBracketed(arguments) => {
                        for argument in &arguments.args {
                            match argument {
                                GenericArgument::Type(ty) => walk(ty, parameters, names)?,
                                GenericArgument::Lifetime(_) => {}
                                GenericArgument::Const(expr) => literal(expr)?,
                                _ => return Err(Varies),
                            }
                        }
                    }
                    PathArguments::Parenthesized(_) => return Err(Varies),
                }
            }
            Ok(())
        }
        Type::Tuple(tuple) => tuple
            .elems
            .iter()
            .try_for_each(|ty| walk(ty, parameters, names)),
        Type::Array(array) => {
            literal(&array.len)?;
            walk(&array.elem, parameters, names)
        }
        Type::Slice(slice) => walk(&slice.elem, parameters, names),
        Type::Reference(reference) => walk(&reference.elem, parameters, names),
        Type::Paren(paren) => walk(&paren.elem, parameters, names),
        Type::Group(group) => walk(&group.elem, parameters, names),
        _ => Err(Varies),
    }
}

/// Names that are the same type wherever they are written (a generic parameter may shadow
/// them, but nobody names one `u64`), so they need no check at run time.
const PRIMITIVES: &[&str] = &[
    "bool", "char", "str", "String", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16",
    "i32", "i64", "i128", "isize", "f32", "f64",
];

/// A const argument the macro can see is fixed: a literal (`[u8; 32]`).
fn literal(expr: &Expr) -> Result<(), Varies> {
    match expr {
        Expr::Lit(literal) if matches!(literal.lit, Lit::Int(_)) => Ok(()),
        Expr::Group(group) => literal(&group.expr),
        Expr::Paren(paren) => literal(&paren.expr),
        Expr::Block(block) if block.block.stmts.len() == 1 => match &block.block.stmts[0] {
            syn::Stmt::Expr(expr, None) => literal(expr),
            _ => Err(Varies),
        },
        _ => Err(Varies),
    }
}

fn is_shouting(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn starts_with_capital(ident: &Ident) -> bool {
    ident
        .to_string()
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use syn::{ItemFn, Type, parse_quote};

    use super::instantiation;
    use crate::plan::Instantiation;

    /// `"fixed"`, `"varies"`, or the names checked at run time.
    fn decide(function: ItemFn, named: Type) -> String {
        match instantiation(&function, &named) {
            Instantiation::Fixed => "fixed".to_owned(),
            Instantiation::Varies(_) => "varies".to_owned(),
            Instantiation::Check { names, .. } => names
                .into_iter()
                .map(|(_, name)| name)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    #[test]
    fn parameters_of_the_function_and_self_vary() {
        let generic: ItemFn = parse_quote!(
            async fn f<Doc, const N: usize>() {}
        );
        assert_eq!(decide(generic.clone(), parse_quote!(Doc)), "varies");
        assert_eq!(
            decide(generic.clone(), parse_quote!(Vec<Option<Doc>>)),
            "varies"
        );
        assert_eq!(decide(generic.clone(), parse_quote!(Doc::Out)), "varies");
        assert_eq!(decide(generic.clone(), parse_quote!([u8; N])), "varies");
        assert_eq!(decide(generic, parse_quote!(u64)), "fixed");
        let method: ItemFn = parse_quote!(
            async fn f(&self) {}
        );
        assert_eq!(decide(method.clone(), parse_quote!(Self)), "varies");
        assert_eq!(decide(method, parse_quote!(Self::Output)), "varies");
    }

    #[test]
    fn what_the_macro_cannot_see_into_varies() {
        let function: ItemFn = parse_quote!(
            async fn f() {}
        );
        for ty in [
            parse_quote!(<Item as Tr>::Out),
            parse_quote!(my_type!()),
            parse_quote!(impl Serialize),
            parse_quote!(Item::Page<u8>),
            parse_quote!(Grid<{ SIZE }>),
            parse_quote!(N),
        ] {
            assert_eq!(decide(function.clone(), ty), "varies");
        }
    }

    #[test]
    fn named_types_are_checked_at_run_time_primitives_not() {
        let function: ItemFn = parse_quote!(
            async fn f(&self) {}
        );
        assert_eq!(decide(function.clone(), parse_quote!(u64)), "fixed");
        assert_eq!(decide(function.clone(), parse_quote!(())), "fixed");
        assert_eq!(decide(function.clone(), parse_quote!([u8; 32])), "fixed");
        assert_eq!(
            decide(function.clone(), parse_quote!(Vec<(String, u32)>)),
            "fixed"
        );
        assert_eq!(decide(function.clone(), parse_quote!(Receipt)), "Receipt");
        assert_eq!(
            decide(function.clone(), parse_quote!(billing::Receipt)),
            "Receipt"
        );
        assert_eq!(
            decide(
                function.clone(),
                parse_quote!(std::collections::HashMap<String, Item>)
            ),
            "Item"
        );
        assert_eq!(decide(function.clone(), parse_quote!(Item::Out)), "Out");
        assert_eq!(decide(function, parse_quote!(Cow<'static, Page>)), "Page");
    }
}
