//! The CapabilityStatement served at `GET [base]/metadata`: it states what this server really
//! does, no more.

use bulkfhir_model::{Instant, ResourceType};
use serde_json::{Value, json};

/// Builds the CapabilityStatement for the API at `base`.
pub(crate) fn capability_statement(base: &str, started: Instant) -> Value {
    let interactions = json!([
        {"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "delete"},
        {"code": "create"}, {"code": "history-instance"}, {"code": "search-type"}
    ]);
    let resources: Vec<Value> = ResourceType::all()
        .map(|resource_type| {
            let mut resource = json!({
                "type": resource_type.as_str(),
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": false,
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "searchParam": [
                    {"name": "_count", "type": "number",
                     "documentation": "Page size. Search is a paged listing of the type in storage order; other search parameters are not supported yet."}
                ]
            });
            if resource_type == ResourceType::PATIENT {
                resource["documentation"] = json!(
                    "GET [base]/Patient/[id]/[type] lists the patient's compartment resources of that type (FHIR R4 Patient CompartmentDefinition)."
                );
            }
            resource
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": started.to_fhir(),
        "publisher": "bulkfhir",
        "kind": "instance",
        "software": {"name": "bulkfhir", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "bulkfhir FHIR R4 server", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "Resources are stored as sent (minified) with meta.versionId and meta.lastUpdated stamped by the server. Every error is an OperationOutcome.",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
            "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"]
        }]
    })
}
