//! The R4 element model the evaluator types navigation with, when asked to ([`super::Env::typed`]).
//!
//! The table is generated from the R4 StructureDefinition snapshots (`cargo xtask
//! gen-search-params`; `docs/definitions.md`): for every resource, data type and backbone
//! element, each element's JSON names and their FHIR types. The type of a backbone element is its
//! path (`Observation.component`), which is where its own children are listed; an element with a
//! `contentReference` has the path it refers to (`Questionnaire.item.item` is a
//! `Questionnaire.item`). The types the server stores from outside R4 ([`crate::IG_TYPES`]) have
//! the elements their search parameters read ([`IG_ELEMENTS`]); their other elements are
//! navigated untyped.

use std::sync::LazyLock;

use rustc_hash::FxHashMap;

use super::{BinOp, Call, Expr, is_subtype};
use crate::generated::search_params::{R4_ELEMENTS, Spellings, TypeElements};

/// The element model of the IG types, in the shape of [`R4_ELEMENTS`]: SQL on FHIR v2's
/// `ViewDefinition` (its StructureDefinition types `name`, `version` as `string`, `resource`,
/// `status` as `code` and `url` as `uri`).
#[rustfmt::skip]
static IG_ELEMENTS: &[(&str, TypeElements)] = &[
    ("ViewDefinition", &[
        ("name", &[("name", "string")]),
        ("resource", &[("resource", "code")]),
        ("status", &[("status", "code")]),
        ("url", &[("url", "uri")]),
        ("version", &[("version", "string")]),
    ]),
];

/// The JSON names and FHIR types of element `name` of `ty` (a type name or a backbone element
/// path): one pair for a plain element, one per type for a choice element (`value` →
/// `valueQuantity`, `valueString`, ...). `None` when the model has no such element.
pub(crate) fn element(ty: &str, name: &str) -> Option<Spellings> {
    // Hashed once from both tables: a lookup per navigation step is on the `_typeFilter` path.
    static INDEX: LazyLock<FxHashMap<(&str, &str), Spellings>> = LazyLock::new(|| {
        R4_ELEMENTS
            .iter()
            .chain(IG_ELEMENTS)
            .flat_map(|(ty, children)| children.iter().map(|(name, s)| ((*ty, *name), *s)))
            .collect()
    });
    let index: &FxHashMap<(&str, &str), Spellings> = &INDEX;
    index.get(&(ty, name)).copied()
}

/// The FHIR types `expr`, evaluated on a resource of type `root` with typed navigation, can
/// give, found with the model and without data: paths, `|` unions, `where()`, and the type
/// filters `ofType()`, `as()` and `as`. `None` when the expression does anything else or
/// navigates to an element the model does not know (the caller then assumes any type).
pub(crate) fn result_types(expr: &Expr, root: &str) -> Option<Vec<&'static str>> {
    let children = |types: Vec<&'static str>, name: &str| {
        let mut out = Vec::new();
        for ty in types {
            out.extend(element(ty, name)?.iter().map(|(_, t)| *t));
        }
        Some(out)
    };
    let only = |types: Vec<&'static str>, wanted: &str| {
        types.into_iter().filter(|t| *t == wanted || is_subtype(t, wanted)).collect()
    };
    match expr {
        Expr::Member(name)
            if name == root || matches!(name.as_str(), "Resource" | "DomainResource") =>
        {
            let root = crate::ResourceType::parse(root).ok()?;
            Some(vec![root.as_str()])
        }
        Expr::Member(name) => {
            let root = crate::ResourceType::parse(root).ok()?;
            children(vec![root.as_str()], name)
        }
        Expr::Path(base, name) => children(result_types(base, root)?, name),
        Expr::Binary(BinOp::Union, left, right) => {
            let mut types = result_types(left, root)?;
            types.extend(result_types(right, root)?);
            Some(types)
        }
        Expr::Invoke(base, call) => match call.as_ref() {
            Call::Where(_) => result_types(base, root),
            Call::OfType(ty) | Call::As(ty) => Some(only(result_types(base, root)?, ty)),
            _ => None,
        },
        Expr::As(base, ty) => Some(only(result_types(base, root)?, ty)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{element, result_types};
    use crate::fhirpath::parse;

    #[test]
    fn result_types_follow_paths_unions_and_casts() {
        let types = |expr: &str, root: &str| result_types(&parse(expr, &[]).unwrap(), root);
        assert_eq!(types("Observation.code", "Observation"), Some(vec!["CodeableConcept"]));
        assert_eq!(
            types("Observation.value.ofType(Quantity) | Observation.component.code", "Observation"),
            Some(vec!["Quantity", "CodeableConcept"])
        );
        assert_eq!(types("(Observation.value as Quantity)", "Observation"), Some(vec!["Quantity"]));
        assert_eq!(
            types("Observation.subject.where(resolve() is Patient)", "Observation"),
            Some(vec!["Reference"])
        );
        assert_eq!(types("Resource.id", "Patient"), Some(vec!["id"]));
        assert_eq!(types("ViewDefinition.status", "ViewDefinition"), Some(vec!["code"]));
        assert_eq!(types("Observation.code.first()", "Observation"), None);
        assert_eq!(types("Observation.nothing", "Observation"), None);
    }

    #[test]
    fn elements_choices_backbones_and_content_references_are_typed() {
        assert_eq!(element("Observation", "code"), Some(&[("code", "CodeableConcept")][..]));
        let value = element("Observation", "value").unwrap();
        assert!(value.contains(&("valueQuantity", "Quantity")));
        assert!(value.contains(&("valueDateTime", "dateTime")));
        assert_eq!(
            element("Observation", "component"),
            Some(&[("component", "Observation.component")][..])
        );
        assert_eq!(
            element("Observation.component", "code"),
            Some(&[("code", "CodeableConcept")][..])
        );
        assert_eq!(
            element("Questionnaire.item", "item"),
            Some(&[("item", "Questionnaire.item")][..])
        );
        assert_eq!(element("HumanName", "given"), Some(&[("given", "string")][..]));
        assert_eq!(element("Patient", "id"), Some(&[("id", "id")][..]));
        assert_eq!(element("Observation", "valueQuantity"), None);
        assert_eq!(element("Observation", "nothing"), None);
        assert_eq!(element("NoSuchType", "code"), None);
        // No type or element is listed twice (the index would keep only one).
        use crate::generated::search_params::R4_ELEMENTS;
        assert!(R4_ELEMENTS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(R4_ELEMENTS.iter().all(|(_, c)| c.windows(2).all(|w| w[0].0 < w[1].0)));
        assert!(super::IG_ELEMENTS.iter().all(|(ty, _)| R4_ELEMENTS.iter().all(|(t, _)| t != ty)));
    }
}
