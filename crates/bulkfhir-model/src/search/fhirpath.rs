//! The FHIRPath subset of the R4 search parameter expressions, evaluated over a parsed resource.
//!
//! The generator (`cargo xtask gen-search-params`) has already reduced each expression to
//! [`Step`]s against the R4 StructureDefinitions: dotted paths (with choice elements spelled out
//! as their JSON names, so `Observation.effective` is `effectiveDateTime`, `effectivePeriod`, …),
//! `|` unions (one step list per alternative), `as X` / `.as(X)` / `.ofType(X)`,
//! `.where(resolve() is X)` and `.where(field = 'literal')`. Arrays flatten at every step. Anything
//! else made the generator mark the parameter unsupported, so it never reaches this module.

use sonic_rs::{JsonContainerTrait, JsonValueTrait, Value};

use super::value::split_reference;
use crate::generated::search_params::Step;

/// One value selected by an expression, with the FHIR type the definitions give it there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node<'a> {
    pub(crate) value: &'a Value,
    pub(crate) fhir_type: &'static str,
}

/// Appends to `out` every node the alternatives `paths` select in `root`, in document order per
/// alternative. `scratch` is reused between calls to avoid allocations.
pub(crate) fn evaluate<'a>(
    root: &'a Value,
    paths: &'static [&'static [Step]],
    out: &mut Vec<Node<'a>>,
    scratch: &mut Vec<Node<'a>>,
) {
    for steps in paths {
        let mut current = vec![Node { value: root, fhir_type: "Resource" }];
        for step in *steps {
            scratch.clear();
            apply(step, &current, root, scratch);
            std::mem::swap(&mut current, scratch);
            if current.is_empty() {
                break;
            }
        }
        out.extend(current);
    }
}

fn apply<'a>(step: &Step, input: &[Node<'a>], root: &'a Value, out: &mut Vec<Node<'a>>) {
    match step {
        Step::Child(keys) => {
            for node in input {
                if !node.value.is_object() {
                    continue;
                }
                for &(key, fhir_type) in *keys {
                    let Some(child) = node.value.get(key) else { continue };
                    match child.as_array() {
                        Some(items) => out.extend(
                            items
                                .iter()
                                .filter(|item| !item.is_null())
                                .map(|value| Node { value, fhir_type }),
                        ),
                        None if child.is_null() => {}
                        None => out.push(Node { value: child, fhir_type }),
                    }
                }
            }
        }
        Step::ResolveIs(resource_type) => out.extend(
            input
                .iter()
                .filter(|node| reference_target_type(node.value, root) == Some(resource_type)),
        ),
        Step::WhereEq(field, literal) => out.extend(
            input
                .iter()
                .filter(|node| node.value.get(field).and_then(|v| v.as_str()) == Some(literal)),
        ),
    }
}

/// The resource type a Reference points at, as `resolve() is X` needs it: from a literal
/// `reference` (`Type/id`, an absolute URL ending in it, or `#id` of a contained resource), else
/// from `Reference.type`. `None` when it cannot be told (`urn:uuid:…` without a `type`).
pub(crate) fn reference_target_type<'a>(reference: &'a Value, root: &'a Value) -> Option<&'a str> {
    if let Some(literal) = reference.get("reference").and_then(|v| v.as_str()) {
        if let Some(local_id) = literal.strip_prefix('#') {
            let contained = root.get("contained").and_then(|c| c.as_array())?;
            return contained
                .iter()
                .find(|r| r.get("id").and_then(|v| v.as_str()) == Some(local_id))
                .and_then(|r| r.get("resourceType"))
                .and_then(|v| v.as_str());
        }
        if let Some((resource_type, _)) = split_reference(literal) {
            return Some(resource_type);
        }
    }
    // `type` is a URI: `Patient` or `http://hl7.org/fhir/StructureDefinition/Patient`.
    let declared = reference.get("type").and_then(|v| v.as_str())?;
    let name = declared.rsplit('/').next().unwrap_or(declared);
    crate::ResourceType::parse(name).ok().map(|t| t.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(json: &str, paths: &'static [&'static [Step]]) -> Vec<String> {
        let root: Value = sonic_rs::from_str(json).unwrap();
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        evaluate(&root, paths, &mut out, &mut scratch);
        out.iter().map(|n| format!("{}:{}", n.fhir_type, n.value)).collect()
    }

    #[test]
    fn paths_flatten_arrays_and_expand_choices() {
        static PATHS: &[&[Step]] = &[
            &[Step::Child(&[("name", "HumanName")]), Step::Child(&[("given", "string")])],
            &[Step::Child(&[("valueQuantity", "Quantity"), ("valueString", "string")])],
        ];
        let json = r#"{"name":[{"given":["A","B"]},{"family":"F"},{"given":["C",null]}],
                       "valueString":"s"}"#;
        assert_eq!(
            select(json, PATHS),
            [r#"string:"A""#, r#"string:"B""#, r#"string:"C""#, r#"string:"s""#]
        );
        assert!(select(r#"{"name":"not an object"}"#, PATHS).is_empty());
    }

    #[test]
    fn where_filters_keep_matching_nodes() {
        static EMAIL: &[&[Step]] =
            &[&[Step::Child(&[("telecom", "ContactPoint")]), Step::WhereEq("system", "email")]];
        let json = r#"{"telecom":[{"system":"phone","value":"1"},{"system":"email","value":"e"}]}"#;
        assert_eq!(select(json, EMAIL), [r#"ContactPoint:{"system":"email","value":"e"}"#]);

        static PATIENT: &[&[Step]] =
            &[&[Step::Child(&[("subject", "Reference")]), Step::ResolveIs("Patient")]];
        for (subject, kept) in [
            (r#"{"reference":"Patient/1"}"#, true),
            (r#"{"reference":"http://x/fhir/Patient/1/_history/2"}"#, true),
            (r#"{"reference":"Group/1"}"#, false),
            (r##"{"reference":"#p"}"##, true),
            (r##"{"reference":"#g"}"##, false),
            (r#"{"reference":"urn:uuid:1","type":"Patient"}"#, true),
            (
                r#"{"identifier":{"value":"1"},"type":"http://hl7.org/fhir/StructureDefinition/Patient"}"#,
                true,
            ),
            (r#"{"reference":"urn:uuid:1"}"#, false),
        ] {
            let json = format!(
                r#"{{"contained":[{{"resourceType":"Patient","id":"p"}},{{"resourceType":"Group","id":"g"}}],
                    "subject":{subject}}}"#
            );
            assert_eq!(select(&json, PATIENT).len(), usize::from(kept), "{subject}");
        }
    }
}
