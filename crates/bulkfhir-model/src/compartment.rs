//! Patient compartment membership, by the FHIR R4 Patient CompartmentDefinition.
//!
//! The definition (generated from the R4 definitions, see `docs/definitions.md`) names, per
//! resource type, the search parameters whose reference to a Patient puts a resource in that
//! patient's compartment; the generator reduced each parameter's expression to element paths.
//!
//! One deliberate extension: `Device.patient`. R4 leaves Device out of the compartment, but the
//! ONC (g)(10) checker expects a patient's implantable devices in a Patient or Group export, and a
//! Device whose `patient` is the patient is that patient's data.

use serde_json::Value;

use crate::{
    ModelError, ResourceId, ResourceType,
    generated::r4::{CompartmentEntry, PATIENT_COMPARTMENT},
    json::RawMembers,
    prepare::ResourceRef,
};

/// Types added to the R4 compartment definition (see the module docs).
const EXTENSIONS: &[CompartmentEntry] =
    &[CompartmentEntry { resource_type: "Device", params: &["patient"], paths: &[&["patient"]] }];

/// The element paths at which a Patient reference puts a resource of `resource_type` in that
/// patient's compartment, or `None` when the type is never in the compartment.
pub fn paths_for(resource_type: ResourceType) -> Option<&'static [&'static [&'static str]]> {
    entry(resource_type).map(|e| e.paths)
}

/// The compartment's search parameter codes for `resource_type` (e.g. `subject`, `performer`).
pub fn params_for(resource_type: ResourceType) -> Option<&'static [&'static str]> {
    entry(resource_type).map(|e| e.params)
}

/// Every type whose resources can be in a Patient compartment (Patient included), sorted.
pub fn compartment_types() -> Vec<ResourceType> {
    let mut types: Vec<ResourceType> = PATIENT_COMPARTMENT
        .iter()
        .chain(EXTENSIONS)
        .filter_map(|e| ResourceType::parse(e.resource_type).ok())
        .chain(std::iter::once(ResourceType::PATIENT))
        .collect();
    types.sort();
    types.dedup();
    types
}

/// Whether resources of `resource_type` can be in a Patient compartment (Patient itself included).
pub fn is_compartment_type(resource_type: ResourceType) -> bool {
    resource_type == ResourceType::PATIENT || entry(resource_type).is_some()
}

fn entry(resource_type: ResourceType) -> Option<&'static CompartmentEntry> {
    PATIENT_COMPARTMENT
        .binary_search_by(|e| e.resource_type.cmp(resource_type.as_str()))
        .ok()
        .map(|idx| &PATIENT_COMPARTMENT[idx])
        .or_else(|| EXTENSIONS.iter().find(|e| e.resource_type == resource_type.as_str()))
}

/// The patients a resource references at its compartment paths (sorted, unique).
///
/// Only the top-level members a path starts with are parsed, so types outside the compartment
/// cost nothing and others cost a parse of a few small members.
pub(crate) fn referenced_patients(
    resource_type: ResourceType,
    members: &RawMembers<'_>,
) -> Result<Vec<ResourceId>, ModelError> {
    let Some(paths) = paths_for(resource_type) else {
        return Ok(Vec::new());
    };
    let mut patients = Vec::new();
    for path in paths {
        let Some((first, rest)) = path.split_first() else { continue };
        let Some(raw) = members.get(first) else { continue };
        let value: Value = serde_json::from_str(raw.get())
            .map_err(|e| ModelError::Json(format!("member '{first}': {e}")))?;
        collect_patient_refs(&value, rest, &mut patients);
    }
    patients.sort();
    patients.dedup();
    Ok(patients)
}

fn collect_patient_refs(value: &Value, path: &[&str], out: &mut Vec<ResourceId>) {
    match value {
        Value::Array(items) => {
            for item in items {
                collect_patient_refs(item, path, out);
            }
        }
        Value::Object(object) => match path.split_first() {
            Some((next, rest)) => {
                if let Some(child) = object.get(*next) {
                    collect_patient_refs(child, rest, out);
                }
            }
            None => {
                let reference = object.get("reference").and_then(Value::as_str);
                if let Some(target) = reference.and_then(ResourceRef::parse)
                    && target.resource_type == ResourceType::PATIENT
                {
                    out.push(target.id);
                }
            }
        },
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PreparedResource;

    fn patients_of(json: &str) -> Vec<String> {
        let prepared = PreparedResource::parse(json.as_bytes()).unwrap();
        let own = prepared.id().cloned().unwrap_or_else(|| ResourceId::parse("self").unwrap());
        prepared.compartment_patients(&own).iter().map(|id| id.to_string()).collect()
    }

    #[test]
    fn membership_follows_the_compartment_definition() {
        assert_eq!(
            patients_of(
                r#"{"resourceType":"Observation","subject":{"reference":"Patient/a"},
                "performer":[{"reference":"Practitioner/x"},{"reference":"Patient/b"}],
                "focus":[{"reference":"Patient/c"}]}"#
            ),
            ["a", "b"]
        );
        assert_eq!(
            patients_of(
                r#"{"resourceType":"Patient","id":"p","link":[{"other":{"reference":"Patient/q"}}]}"#
            ),
            ["p", "q"]
        );
        assert_eq!(
            patients_of(
                r#"{"resourceType":"Group","member":[{"entity":{"reference":"Patient/m"}}]}"#
            ),
            ["m"]
        );
        assert_eq!(
            patients_of(r#"{"resourceType":"Encounter","subject":{"reference":"Group/g"}}"#),
            Vec::<String>::new()
        );
        assert_eq!(
            patients_of(
                r#"{"resourceType":"Practitioner","id":"x","extension":[{"valueReference":{"reference":"Patient/a"}}]}"#
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            patients_of(r#"{"resourceType":"Device","patient":{"reference":"Patient/d"}}"#),
            ["d"]
        );
        assert!(is_compartment_type(ResourceType::PATIENT));
        // The 66 R4 entries (Patient among them) plus the Device extension.
        assert_eq!(compartment_types().len(), 66 + 1);
        assert!(!is_compartment_type(ResourceType::parse("Organization").unwrap()));
    }
}
