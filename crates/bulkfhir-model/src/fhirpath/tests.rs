//! Tests of what the search parameters need of the evaluator: typed navigation by the R4 model,
//! `Resource.` as a prefix, and `resolve()`. The rest of the language is tested through views
//! (`view/tests.rs` and the SQL on FHIR suite) and through search (`search/tests.rs`).

use serde_json::{Value, json};

use super::{Env, Item, evaluate, parse};

/// `(type, value)` of each item `expr` gives on `resource`, typed or not.
fn typed_eval(expr: &str, resource: &Value, typed: bool) -> Vec<(Option<&'static str>, Value)> {
    let parsed = parse(expr, &[]).unwrap();
    let env = Env { resource, constants: &[], row_index: 0, typed };
    let ty = resource["resourceType"].as_str().and_then(|t| crate::ResourceType::parse(t).ok());
    let focus = Item::borrowed(resource, if typed { ty.map(|t| t.as_str()) } else { None });
    evaluate(&parsed, focus, &env)
        .unwrap()
        .into_iter()
        .map(|item| (item.ty, item.value.into_owned()))
        .collect()
}

#[test]
fn typed_navigation_follows_the_model() {
    let observation = json!({
        "resourceType": "Observation",
        "code": {"coding": [{"system": "s", "code": "c"}]},
        "effectiveDateTime": "2020-01-01",
        "component": [{"code": {"text": "t"}, "valueQuantity": {"value": 1}}],
        "contained": [{"resourceType": "Patient", "id": "p"}],
        "subject": {"reference": "#p"},
        "nothing": {"code": "x"}
    });
    let types = |expr: &str, typed: bool| -> Vec<Option<&str>> {
        typed_eval(expr, &observation, typed).into_iter().map(|(t, _)| t).collect()
    };
    assert_eq!(types("Observation.code", true), [Some("CodeableConcept")]);
    assert_eq!(types("Observation.code.coding.code", true), [Some("code")]);
    assert_eq!(types("Observation.effective", true), [Some("dateTime")]);
    assert_eq!(types("Observation.component", true), [Some("Observation.component")]);
    assert_eq!(types("Observation.component.value", true), [Some("Quantity")]);
    assert_eq!(types("Observation.contained", true), [Some("Patient")]);
    assert_eq!(types("Resource.contained.id", true), [Some("id")]);
    // An element the model does not have is navigated untyped.
    assert_eq!(types("Observation.nothing.code", true), [None]);
    // Views navigate untyped, as before: only choice suffixes type a value.
    assert_eq!(types("Observation.code", false), [None]);
    assert_eq!(types("Observation.effective", false), [Some("dateTime")]);
}

#[test]
fn resolve_finds_contained_resources_and_target_types() {
    let resource = |subject: Value| {
        json!({
            "resourceType": "Observation",
            "contained": [{"resourceType": "Patient", "id": "p", "gender": "female"}],
            "subject": subject
        })
    };
    let is_patient = "Observation.subject.where(resolve() is Patient)";
    for (subject, kept) in [
        (json!({"reference": "Patient/1"}), true),
        (json!({"reference": "http://x/fhir/Patient/1/_history/2"}), true),
        (json!({"reference": "Group/1"}), false),
        (json!({"reference": "#p"}), true),
        (json!({"reference": "#missing"}), false),
        (json!({"reference": "urn:uuid:1", "type": "Patient"}), true),
        (json!({"type": "http://hl7.org/fhir/StructureDefinition/Patient"}), true),
        (json!({"reference": "urn:uuid:1"}), false),
        (json!({"reference": "Nope/1"}), false),
    ] {
        for typed in [true, false] {
            let found = typed_eval(is_patient, &resource(subject.clone()), typed);
            assert_eq!(found.len(), usize::from(kept), "{subject} typed={typed}");
        }
    }
    // A contained target is the resource itself; any other is a stand-in with nothing in it.
    let contained = typed_eval(
        "Observation.subject.resolve().gender",
        &resource(json!({"reference": "#p"})),
        true,
    );
    assert_eq!(contained, [(Some("code"), json!("female"))]);
    let elsewhere = typed_eval(
        "Observation.subject.resolve().gender",
        &resource(json!({"reference": "Patient/1"})),
        true,
    );
    assert!(elsewhere.is_empty());
}
