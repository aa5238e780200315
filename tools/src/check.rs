//! Checking a component against the `buildpack` world before it is installed.
//!
//! The component's own world is decoded from its binary (`wit-component`) and compared with
//! the built-in contract: every export the world has (`detect`, `compile`, `release`) must be
//! there with the same type, every import must be one the host provides (the runtime's own
//! list, [`dea::buildpack::wasm::ALLOWED_IMPORTS`]), and functions it imports from
//! `dea:buildpack/host` must have the contract's types. Types are compared
//! structurally, as the component model links them; messages print them as WIT.

use crate::contract;
use dea::buildpack::store::{ComponentCheck, ComponentCheckError};
use std::fmt;
use wit_parser::{Function, Resolve, Type, TypeDefKind, TypeId, WorldId, WorldItem, WorldKey};

/// Why a file could not be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    #[error(
        "this is a core WebAssembly module, not a component: make one with `dea buildpack componentize`"
    )]
    CoreModule,
    #[error(transparent)]
    Contract(#[from] contract::ContractError),
}

/// One way a component differs from the buildpack world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    MissingExport {
        name: String,
        expected: String,
    },
    ExportType {
        name: String,
        found: String,
        expected: String,
    },
    ExportNotAFunction {
        name: String,
    },
    UnknownImport {
        name: String,
    },
    ImportType {
        interface: String,
        function: String,
        found: String,
        expected: String,
    },
    UnknownHostFunction {
        interface: String,
        function: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::MissingExport { name, expected } => write!(
                f,
                "missing export `{name}`: the buildpack world expects {expected}"
            ),
            Problem::ExportType {
                name,
                found,
                expected,
            } => write!(
                f,
                "export `{name}` has type {found}, the buildpack world expects {expected}"
            ),
            Problem::ExportNotAFunction { name } => {
                write!(f, "export `{name}` is not a function")
            }
            Problem::UnknownImport { name } => write!(
                f,
                "imports `{name}`, which the host does not provide to buildpacks"
            ),
            Problem::ImportType {
                interface,
                function,
                found,
                expected,
            } => write!(
                f,
                "imports `{function}` from `{interface}` as {found}, the host provides {expected}"
            ),
            Problem::UnknownHostFunction {
                interface,
                function,
            } => write!(
                f,
                "imports `{function}` from `{interface}`, which the host does not provide"
            ),
        }
    }
}

/// What a check found.
#[derive(Debug, Clone)]
pub struct Report {
    /// Interfaces and functions the component imports, as WIT names.
    pub imports: Vec<String>,
    /// What it exports.
    pub exports: Vec<String>,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the component in `bytes` against the built-in buildpack world.
pub fn check(bytes: &[u8]) -> Result<Report, CheckError> {
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(CheckError::CoreModule);
    }
    let decoded =
        wit_component::decode(bytes).map_err(|e| CheckError::NotAComponent(format!("{e:#}")))?;
    let wit_component::DecodedWasm::Component(found, found_world) = decoded else {
        return Err(CheckError::NotAComponent(
            "it is a WIT package, not a component".into(),
        ));
    };
    let (expected, expected_world) = contract::resolve()?;
    let found = Side {
        resolve: &found,
        world: found_world,
    };
    let expected = Side {
        resolve: &expected,
        world: expected_world,
    };
    let mut problems = check_exports(&found, &expected);
    problems.extend(check_imports(&found, &expected));
    Ok(Report {
        imports: found.names(|w| &w.imports),
        exports: found.names(|w| &w.exports),
        problems,
    })
}

/// [`check`] as the installed-buildpack store asks for it: `dea buildpacks add` refuses a wasm
/// buildpack whose component does not implement the buildpack world, naming each problem.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorldCheck;

impl ComponentCheck for WorldCheck {
    fn problems(&self, component: &[u8]) -> Result<Vec<String>, ComponentCheckError> {
        let report = check(component)?;
        Ok(report.problems.iter().map(ToString::to_string).collect())
    }
}

/// A resolve and the world in it.
struct Side<'a> {
    resolve: &'a Resolve,
    world: WorldId,
}

impl Side<'_> {
    fn names(
        &self,
        items: impl Fn(&wit_parser::World) -> &wit_parser::IndexMap<WorldKey, WorldItem>,
    ) -> Vec<String> {
        items(&self.resolve.worlds[self.world])
            .iter()
            .filter(|(_, item)| !matches!(item, WorldItem::Type { .. }))
            .map(|(key, _)| self.resolve.name_world_key(key))
            .collect()
    }

    fn func(&self, func: &Function) -> String {
        show_func(self.resolve, func)
    }
}

fn check_exports(found: &Side<'_>, expected: &Side<'_>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let exports = &found.resolve.worlds[found.world].exports;
    for (key, item) in &expected.resolve.worlds[expected.world].exports {
        let WorldItem::Function(want) = item else {
            continue;
        };
        let name = expected.resolve.name_world_key(key);
        let item = exports
            .iter()
            .find(|(k, _)| found.resolve.name_world_key(k) == name);
        match item {
            None => problems.push(Problem::MissingExport {
                name,
                expected: expected.func(want),
            }),
            Some((_, WorldItem::Function(have))) => {
                if !same_func(found.resolve, have, expected.resolve, want) {
                    problems.push(Problem::ExportType {
                        found: explain(found, have, expected, want),
                        expected: expected.func(want),
                        name,
                    });
                }
            }
            Some(_) => problems.push(Problem::ExportNotAFunction { name }),
        }
    }
    problems
}

/// The found signature, with the definitions of named types that differ in shape but not in
/// name (so `error` vs `error` says what each one is).
fn explain(found: &Side<'_>, have: &Function, expected: &Side<'_>, want: &Function) -> String {
    let shown = found.func(have);
    if shown != expected.func(want) {
        return shown;
    }
    let mut notes = Vec::new();
    let pairs = have
        .params
        .iter()
        .map(|p| p.ty)
        .zip(want.params.iter().map(|p| p.ty))
        .chain(have.result.into_iter().zip(want.result));
    for (a, b) in pairs {
        collect_named_differences(found.resolve, a, expected.resolve, b, &mut notes);
    }
    if notes.is_empty() {
        shown
    } else {
        format!("{shown} (where {})", notes.join("; "))
    }
}

fn collect_named_differences(
    ra: &Resolve,
    a: Type,
    rb: &Resolve,
    b: Type,
    notes: &mut Vec<String>,
) {
    let (Type::Id(ia), Type::Id(ib)) = (a, b) else {
        return;
    };
    let (da, db) = (&ra.types[dealias(ra, ia)], &rb.types[dealias(rb, ib)]);
    if same_type(ra, a, rb, b) {
        return;
    }
    if let (Some(name), Some(_)) = (&da.name, &db.name) {
        notes.push(format!(
            "this component's `{name}` is {}, the world's is {}",
            show_def(ra, &da.kind),
            show_def(rb, &db.kind)
        ));
        return;
    }
    let children = |kind: &TypeDefKind| -> Vec<Type> {
        match kind {
            TypeDefKind::Option(t) | TypeDefKind::List(t) => vec![*t],
            TypeDefKind::Result(res) => res.ok.into_iter().chain(res.err).collect(),
            TypeDefKind::Tuple(t) => t.types.clone(),
            _ => Vec::new(),
        }
    };
    for (x, y) in children(&da.kind).into_iter().zip(children(&db.kind)) {
        collect_named_differences(ra, x, rb, y, notes);
    }
}

fn check_imports(found: &Side<'_>, expected: &Side<'_>) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (key, item) in &found.resolve.worlds[found.world].imports {
        let name = found.resolve.name_world_key(key);
        let id = match item {
            WorldItem::Type { .. } => continue,
            WorldItem::Function(_) => {
                problems.push(Problem::UnknownImport { name });
                continue;
            }
            WorldItem::Interface { id, .. } => *id,
        };
        if !dea::buildpack::wasm::ALLOWED_IMPORTS
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            problems.push(Problem::UnknownImport { name });
            continue;
        }
        // The contract's own interfaces are checked here; WASI ones by the linker at load.
        let Some(want) = contract_interface(expected, &name) else {
            if name.starts_with("dea:buildpack/") {
                problems.push(Problem::UnknownImport { name });
            }
            continue;
        };
        let want = &expected.resolve.interfaces[want];
        for (function, have) in &found.resolve.interfaces[id].functions {
            match want.functions.get(function) {
                None => problems.push(Problem::UnknownHostFunction {
                    interface: name.clone(),
                    function: function.clone(),
                }),
                Some(want) if !same_func(found.resolve, have, expected.resolve, want) => problems
                    .push(Problem::ImportType {
                        interface: name.clone(),
                        function: function.clone(),
                        found: found.func(have),
                        expected: expected.func(want),
                    }),
                Some(_) => {}
            }
        }
    }
    problems
}

/// The contract interface a `dea:buildpack/...` import names, for any 0.1.x version.
fn contract_interface(expected: &Side<'_>, name: &str) -> Option<wit_parser::InterfaceId> {
    let (path, version) = name.split_once('@').unwrap_or((name, ""));
    let compatible = version.is_empty() || version.starts_with("0.1.");
    expected.resolve.worlds[expected.world]
        .imports
        .iter()
        .find_map(|(key, item)| match item {
            WorldItem::Interface { id, .. } if compatible => {
                let full = expected.resolve.name_world_key(key);
                (full.split_once('@').map_or(full.as_str(), |(p, _)| p) == path).then_some(*id)
            }
            _ => None,
        })
}

fn dealias(resolve: &Resolve, mut id: TypeId) -> TypeId {
    while let TypeDefKind::Type(Type::Id(next)) = &resolve.types[id].kind {
        id = *next;
    }
    id
}

/// `Type::Id` aliases of primitives resolved to the primitive.
fn resolved(resolve: &Resolve, ty: Type) -> Type {
    match ty {
        Type::Id(id) => match &resolve.types[dealias(resolve, id)].kind {
            TypeDefKind::Type(t) => *t,
            _ => Type::Id(dealias(resolve, id)),
        },
        t => t,
    }
}

fn same_func(ra: &Resolve, a: &Function, rb: &Resolve, b: &Function) -> bool {
    a.params.len() == b.params.len()
        && a.params
            .iter()
            .zip(&b.params)
            .all(|(x, y)| x.name == y.name && same_type(ra, x.ty, rb, y.ty))
        && same_opt(ra, a.result, rb, b.result)
}

fn same_opt(ra: &Resolve, a: Option<Type>, rb: &Resolve, b: Option<Type>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => same_type(ra, x, rb, y),
        _ => false,
    }
}

/// Structural equality, as component-model linking checks it (names of types do not matter,
/// names of fields and cases do).
fn same_type(ra: &Resolve, a: Type, rb: &Resolve, b: Type) -> bool {
    let (a, b) = (resolved(ra, a), resolved(rb, b));
    let (Type::Id(ia), Type::Id(ib)) = (a, b) else {
        return a == b;
    };
    use TypeDefKind as K;
    match (&ra.types[ia].kind, &rb.types[ib].kind) {
        (K::Record(x), K::Record(y)) => {
            x.fields.len() == y.fields.len()
                && x.fields
                    .iter()
                    .zip(&y.fields)
                    .all(|(f, g)| f.name == g.name && same_type(ra, f.ty, rb, g.ty))
        }
        (K::Variant(x), K::Variant(y)) => {
            x.cases.len() == y.cases.len()
                && x.cases
                    .iter()
                    .zip(&y.cases)
                    .all(|(c, d)| c.name == d.name && same_opt(ra, c.ty, rb, d.ty))
        }
        (K::Enum(x), K::Enum(y)) => {
            x.cases.len() == y.cases.len()
                && x.cases.iter().zip(&y.cases).all(|(c, d)| c.name == d.name)
        }
        (K::Flags(x), K::Flags(y)) => {
            x.flags.len() == y.flags.len()
                && x.flags.iter().zip(&y.flags).all(|(c, d)| c.name == d.name)
        }
        (K::Tuple(x), K::Tuple(y)) => {
            x.types.len() == y.types.len()
                && x.types
                    .iter()
                    .zip(&y.types)
                    .all(|(s, t)| same_type(ra, *s, rb, *t))
        }
        (K::Option(x), K::Option(y)) | (K::List(x), K::List(y)) => same_type(ra, *x, rb, *y),
        (K::Result(x), K::Result(y)) => {
            same_opt(ra, x.ok, rb, y.ok) && same_opt(ra, x.err, rb, y.err)
        }
        (K::FixedLengthList(x, n), K::FixedLengthList(y, m)) => n == m && same_type(ra, *x, rb, *y),
        (K::Map(k1, v1), K::Map(k2, v2)) => {
            same_type(ra, *k1, rb, *k2) && same_type(ra, *v1, rb, *v2)
        }
        (K::Future(x), K::Future(y)) | (K::Stream(x), K::Stream(y)) => same_opt(ra, *x, rb, *y),
        // Resources are nominal: the same name is the best a static check can say.
        (K::Resource, K::Resource) => ra.types[ia].name == rb.types[ib].name,
        (K::Handle(x), K::Handle(y)) => match (x, y) {
            (wit_parser::Handle::Own(s), wit_parser::Handle::Own(t))
            | (wit_parser::Handle::Borrow(s), wit_parser::Handle::Borrow(t)) => {
                same_type(ra, Type::Id(*s), rb, Type::Id(*t))
            }
            _ => false,
        },
        _ => false,
    }
}

fn show_func(resolve: &Resolve, func: &Function) -> String {
    let params: Vec<String> = func
        .params
        .iter()
        .map(|p| format!("{}: {}", p.name, show(resolve, p.ty)))
        .collect();
    match func.result {
        Some(ty) => format!("func({}) -> {}", params.join(", "), show(resolve, ty)),
        None => format!("func({})", params.join(", ")),
    }
}

/// A type as WIT writes it at a use site: named types by name, anonymous ones spelled out.
fn show(resolve: &Resolve, ty: Type) -> String {
    let id = match ty {
        Type::Bool => return "bool".into(),
        Type::U8 => return "u8".into(),
        Type::U16 => return "u16".into(),
        Type::U32 => return "u32".into(),
        Type::U64 => return "u64".into(),
        Type::S8 => return "s8".into(),
        Type::S16 => return "s16".into(),
        Type::S32 => return "s32".into(),
        Type::S64 => return "s64".into(),
        Type::F32 => return "f32".into(),
        Type::F64 => return "f64".into(),
        Type::Char => return "char".into(),
        Type::String => return "string".into(),
        Type::ErrorContext => return "error-context".into(),
        Type::Id(id) => id,
    };
    let def = &resolve.types[id];
    if let Some(name) = &def.name {
        return name.clone();
    }
    show_def(resolve, &def.kind)
}

fn show_opt(resolve: &Resolve, ty: Option<Type>) -> String {
    ty.map_or_else(|| "_".to_string(), |t| show(resolve, t))
}

/// A type's definition, one level deep.
fn show_def(resolve: &Resolve, kind: &TypeDefKind) -> String {
    use TypeDefKind as K;
    let list = |items: Vec<String>| items.join(", ");
    match kind {
        K::Record(r) => format!(
            "record {{ {} }}",
            list(
                r.fields
                    .iter()
                    .map(|f| format!("{}: {}", f.name, show(resolve, f.ty)))
                    .collect()
            )
        ),
        K::Variant(v) => format!(
            "variant {{ {} }}",
            list(
                v.cases
                    .iter()
                    .map(|c| match c.ty {
                        Some(t) => format!("{}({})", c.name, show(resolve, t)),
                        None => c.name.clone(),
                    })
                    .collect()
            )
        ),
        K::Enum(e) => format!(
            "enum {{ {} }}",
            list(e.cases.iter().map(|c| c.name.clone()).collect())
        ),
        K::Flags(f) => format!(
            "flags {{ {} }}",
            list(f.flags.iter().map(|c| c.name.clone()).collect())
        ),
        K::Tuple(t) => format!(
            "tuple<{}>",
            list(t.types.iter().map(|t| show(resolve, *t)).collect())
        ),
        K::Option(t) => format!("option<{}>", show(resolve, *t)),
        K::List(t) => format!("list<{}>", show(resolve, *t)),
        K::FixedLengthList(t, n) => format!("list<{}, {n}>", show(resolve, *t)),
        K::Map(k, v) => format!("map<{}, {}>", show(resolve, *k), show(resolve, *v)),
        K::Result(r) => match (r.ok, r.err) {
            (None, None) => "result".into(),
            (Some(ok), None) => format!("result<{}>", show(resolve, ok)),
            (ok, Some(_)) => format!(
                "result<{}, {}>",
                show_opt(resolve, ok),
                show_opt(resolve, r.err)
            ),
        },
        K::Future(t) => format!("future<{}>", show_opt(resolve, *t)),
        K::Stream(t) => format!("stream<{}>", show_opt(resolve, *t)),
        K::Type(t) => show(resolve, *t),
        K::Resource => "resource".into(),
        K::Handle(wit_parser::Handle::Own(id)) => show(resolve, Type::Id(*id)),
        K::Handle(wit_parser::Handle::Borrow(id)) => {
            format!("borrow<{}>", show(resolve, Type::Id(*id)))
        }
        K::Unknown => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(wit: &str) -> (Resolve, WorldId) {
        let mut resolve = Resolve::default();
        let pkg = resolve.push_str("test.wit", wit).expect("test WIT parses");
        let world = resolve.select_world(&[pkg], None).expect("one world");
        (resolve, world)
    }

    fn compare(wit: &str) -> Vec<String> {
        let (found, fw) = world(wit);
        let (expected, ew) = contract::resolve().expect("contract");
        check_exports(
            &Side {
                resolve: &found,
                world: fw,
            },
            &Side {
                resolve: &expected,
                world: ew,
            },
        )
        .iter()
        .map(ToString::to_string)
        .collect()
    }

    const TYPES: &str = "
        interface types {
            variant error { unsupported(string), failed(string), io(string), denied(string) }
            record detection { name: string, version: option<string> }
            record release-info {
                process-types: list<tuple<string, string>>,
                config-vars: list<tuple<string, string>>,
                addons: list<string>,
            }
        }";

    #[test]
    fn a_world_of_the_same_shape_under_other_names_matches() {
        let wit = format!(
            "package other:names; {TYPES}
            world w {{
                use types.{{error, detection, release-info}};
                export detect: func() -> result<option<detection>, error>;
                export compile: func() -> result<_, error>;
                export release: func() -> result<release-info, error>;
            }}"
        );
        assert_eq!(compare(&wit), Vec::<String>::new());
    }

    #[test]
    fn a_different_result_and_a_missing_export_are_named() {
        let wit = format!(
            "package other:names; {TYPES}
            world w {{
                use types.{{error}};
                export detect: func() -> result<bool, error>;
                export compile: func() -> result<_, error>;
            }}"
        );
        assert_eq!(
            compare(&wit),
            [
                "export `detect` has type func() -> result<bool, error>, the buildpack world expects func() -> result<option<detection>, error>",
                "missing export `release`: the buildpack world expects func() -> result<release-info, error>",
            ]
        );
    }

    #[test]
    fn a_same_named_type_of_another_shape_is_spelled_out() {
        let wit = "package other:names;
            interface types { variant error { failed(string) } }
            world w {
                use types.{error};
                export compile: func() -> result<_, error>;
            }";
        let problems = compare(wit);
        assert!(
            problems.iter().any(|p| p.starts_with("export `compile` has type func() -> result<_, error> (where this component's `error` is variant { failed(string) }, the world's is variant { unsupported(string), failed(string), io(string), denied(string) })")),
            "{problems:?}"
        );
    }
}
