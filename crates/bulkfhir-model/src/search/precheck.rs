//! A byte-level test that rejects most non-matching resources without parsing them.
//!
//! For each clause whose every value needs some exact text in the resource, the clause gives one
//! needle per value: a token `code` needs the JSON string `"code"`, `Type/id` needs `Type/id`,
//! and so on. A resource that contains none of a clause's needles cannot satisfy that clause.
//!
//! This is exact, not a heuristic: stored JSON keeps string escapes as the client wrote them, so
//! a value could hide behind `\uXXXX` (any character) or `\/` (a slash). Needles never contain
//! `"`, `\` or control characters (clauses with such values get no needle), so every other escape
//! decodes to a character no needle contains. When a needle is missing, the resource is rejected
//! only if it has no `\u`, and no `\/` when the needle has a `/`; otherwise it is parsed.
//! Clauses that are case- or accent-insensitive, negated (`:not`, `ne`), about absence
//! (`:missing`), or about ranges (dates, numbers) get no needle.

use memchr::memmem::Finder;

use super::query::{Clause, Test, UriMode};
use super::value::SystemMatch;

/// The needles of all pre-checkable clauses: the resource must contain one of each group.
#[derive(Debug, Clone)]
pub(crate) struct Precheck {
    groups: Vec<Group>,
}

#[derive(Debug, Clone)]
struct Group {
    needles: Vec<Finder<'static>>,
    has_slash: bool,
}

impl Precheck {
    pub(crate) fn build(clauses: &[Clause]) -> Precheck {
        let groups = clauses
            .iter()
            .filter_map(clause_needles)
            .map(|needles| Group {
                has_slash: needles.iter().any(|n| n.contains('/')),
                needles: needles.iter().map(|n| Finder::new(n.as_bytes()).into_owned()).collect(),
            })
            .collect();
        Precheck { groups }
    }

    /// Whether the clauses that have needles are pre-checked at all.
    #[cfg(test)]
    pub(crate) fn is_active(&self) -> bool {
        !self.groups.is_empty()
    }

    /// `false` only when `body` cannot match.
    pub(crate) fn may_match(&self, body: &[u8]) -> bool {
        let mut escapes = None;
        for group in &self.groups {
            if group.needles.iter().any(|finder| finder.find(body).is_some()) {
                continue;
            }
            let (unicode, slash) = *escapes.get_or_insert_with(|| escapes_in(body));
            if !(unicode || (slash && group.has_slash)) {
                return false;
            }
        }
        true
    }
}

/// Whether `body` has `\u` and `\/` escapes (or `\\u` / `\\/`, which only cost a parse).
fn escapes_in(body: &[u8]) -> (bool, bool) {
    if memchr::memchr(b'\\', body).is_none() {
        return (false, false);
    }
    (memchr::memmem::find(body, b"\\u").is_some(), memchr::memmem::find(body, b"\\/").is_some())
}

/// A quoted JSON string needle, or `None` when the text cannot be searched for verbatim.
fn quoted(text: &str) -> Option<String> {
    plain(text).map(|t| format!("\"{t}\""))
}

fn plain(text: &str) -> Option<String> {
    let searchable =
        !text.is_empty() && !text.chars().any(|c| c == '"' || c == '\\' || c.is_control());
    searchable.then(|| text.to_owned())
}

/// Whether the parameter's expression may end on a value of a type `pred` accepts (yes when
/// the model cannot tell).
fn may_end_on(clause: &Clause, pred: impl Fn(&str) -> bool) -> bool {
    clause.leaf_types.as_ref().is_none_or(|types| types.iter().any(|t| pred(t)))
}

/// One needle per OR-ed value, or `None` when some value (or the clause) has none.
fn clause_needles(clause: &Clause) -> Option<Vec<String>> {
    if clause.negate {
        return None;
    }
    let each =
        |values: &mut dyn Iterator<Item = Option<String>>| values.collect::<Option<Vec<_>>>();
    match &clause.test {
        Test::Token(values) => {
            // Booleans are not JSON strings, and a `string` target is case-insensitive.
            if may_end_on(clause, |ty| matches!(ty, "boolean" | "string")) {
                return None;
            }
            each(&mut values.iter().map(|v| match (&v.code, &v.system) {
                (Some(code), _) => quoted(code),
                (None, SystemMatch::Is(system)) => quoted(system),
                (None, _) => None,
            }))
        }
        Test::TokenOfType(values) => each(&mut values.iter().map(|[_, _, value]| quoted(value))),
        Test::ReferenceIdentifier(values) => {
            each(&mut values.iter().map(|v| match (&v.code, &v.system) {
                (Some(code), _) => quoted(code),
                (None, SystemMatch::Is(system)) => quoted(system),
                (None, _) => None,
            }))
        }
        Test::Reference { values, .. } => {
            // A canonical or uri target matches the bare text, so `123` rather than `/123`.
            let bare = may_end_on(clause, |ty| ty != "Reference");
            each(&mut values.iter().map(|v| match v {
                super::value::RefValue::Id(id) if bare => plain(id),
                other => plain(&other.needle()),
            }))
        }
        Test::String { mode: super::query::StringMode::Exact, values } => {
            each(&mut values.iter().map(|v| quoted(v)))
        }
        // Exact matches also `value|version`, so only the opening quote is certain.
        Test::Uri { mode: UriMode::Exact | UriMode::Below, values } => {
            each(&mut values.iter().map(|v| plain(v).map(|v| format!("\"{v}"))))
        }
        Test::Quantity(values) => {
            each(&mut values.iter().map(|v| v.code.as_deref().and_then(quoted)))
        }
        Test::Missing(_)
        | Test::TokenText(_)
        | Test::Date(_)
        | Test::Number(_)
        | Test::String { .. }
        | Test::Uri { .. } => None,
    }
}
