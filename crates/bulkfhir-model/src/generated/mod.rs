//! Tables generated from the FHIR R4 definitions by `cargo xtask gen-r4-tables`.
//! See docs/definitions.md; do not edit `r4.rs` by hand.

pub(crate) mod r4;
pub(crate) mod search_params;

#[cfg(test)]
mod tests {
    use super::r4::{CompartmentEntry, PATIENT_COMPARTMENT, RESOURCE_TYPES};

    fn entry(resource_type: &str) -> &'static CompartmentEntry {
        let index = PATIENT_COMPARTMENT
            .binary_search_by(|e| e.resource_type.cmp(resource_type))
            .unwrap_or_else(|_| panic!("{resource_type} not in the Patient compartment"));
        &PATIENT_COMPARTMENT[index]
    }

    fn has_path(resource_type: &str, path: &[&str]) -> bool {
        entry(resource_type).paths.contains(&path)
    }

    #[test]
    fn resource_types_are_sorted_unique_and_complete() {
        assert!(RESOURCE_TYPES.windows(2).all(|w| w[0] < w[1]), "not sorted or not unique");
        // R4 ResourceType code system: 148 codes minus the abstract Resource and DomainResource.
        assert_eq!(RESOURCE_TYPES.len(), 146);
        for t in [
            "Patient",
            "Observation",
            "Bundle",
            "Parameters",
            "Binary",
            "OperationOutcome",
            "Group",
            "Provenance",
        ] {
            assert!(RESOURCE_TYPES.binary_search(&t).is_ok(), "{t} missing");
        }
        for t in ["Resource", "DomainResource", "SubscriptionStatus"] {
            assert!(RESOURCE_TYPES.binary_search(&t).is_err(), "{t} should not be listed");
        }
    }

    #[test]
    fn patient_compartment_is_sorted_and_consistent() {
        assert!(
            PATIENT_COMPARTMENT.windows(2).all(|w| w[0].resource_type < w[1].resource_type),
            "not sorted or not unique"
        );
        assert_eq!(PATIENT_COMPARTMENT.len(), 66);
        for e in PATIENT_COMPARTMENT {
            assert!(RESOURCE_TYPES.binary_search(&e.resource_type).is_ok(), "{}", e.resource_type);
            assert!(!e.params.is_empty() && !e.paths.is_empty(), "{e:?}");
            assert!(e.paths.iter().all(|p| !p.is_empty() && !p.contains(&"")), "{e:?}");
        }
    }

    #[test]
    fn patient_compartment_spot_checks() {
        assert!(has_path("Observation", &["subject"]));
        assert!(has_path("Observation", &["performer"]));
        assert_eq!(entry("Encounter").params, ["patient"]);
        assert!(has_path("Encounter", &["subject"]));
        assert!(has_path("Group", &["member", "entity"]));
        assert!(has_path("Patient", &["link", "other"]));
        assert!(has_path("Appointment", &["participant", "actor"]));
        assert_eq!(entry("Provenance").paths, [&["target"][..]]);
        // Invoice `subject` and `patient` both reduce to `subject`: deduplicated.
        assert_eq!(entry("Invoice").paths, [&["subject"][..], &["recipient"][..]]);
        // Not in the R4 Patient compartment (spec 9.1).
        for t in ["Task", "Device", "Medication", "Location", "Organization", "Practitioner"] {
            assert!(PATIENT_COMPARTMENT.iter().all(|e| e.resource_type != t), "{t}");
        }
    }
}
