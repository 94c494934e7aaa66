//! The CapabilityStatement served at `GET [base]/metadata`: it states what this server really
//! does, no more.

use bulkfhir_model::{Instant, ResourceType, search};
use serde_json::{Value, json};

/// What the Bulk Data IG asks servers to document (v2 section "Server capability documentation").
const EXPORT_DOCUMENTATION: &str = "Bulk Data export (IG v2.0.0) on the asynchronous request pattern. \
Parameters: _outputFormat (application/fhir+ndjson, application/ndjson, ndjson; gzip forms such as application/fhir+ndjson+gzip give .ndjson.gz files), \
_since, _until, _type, patient (POST, Patient and Group level), _typeFilter (the search parameters listed per resource type), _elements, includeAssociatedData (LatestProvenanceResources, RelevantProvenanceResources), organizeOutputBy=Patient, allowPartialManifests; others are refused with 400, or ignored and reported under Prefer: handling=lenient. \
Every resource type listed here is exportable. \
Files hold at most 100,000 resources (configurable) and one type each; they expire 24 hours after completion (configurable). \
Resources are exported in their version current at transactionTime, which is taken at kick-off; with _since, deletions after _since are listed in 'deleted'. \
Patient and Group exports use the FHIR R4 Patient compartment (plus Device.patient) and add the resources outside it that exported resources reference (Practitioner, Organization, Location, Medication...). \
Group membership is read at kick-off, inactive members are skipped and nested Groups followed. With _since, a patient who joined the Group after _since gets only the resources changed after _since (no earlier history).";

/// What the ViewDefinition entry says about stored views and references.
const VIEW_DOCUMENTATION: &str = "SQL on FHIR v2 ViewDefinitions are stored like other resources (a ViewDefinition that cannot run is refused when written) and searched by name, resource, status, url and version. viewReference accepts ViewDefinition/[id], ViewDefinition/[id]/_history/[version], an absolute URL on this server, and a canonical URL (url or url|version) of a stored ViewDefinition; nothing is fetched from other servers. $run runs at system level, at ViewDefinition/$run and at ViewDefinition/[id]/$run; $viewdefinition-export at system level and at ViewDefinition/$viewdefinition-export.";

/// The operation entries for a resource: the v3/Inferno name `export` and the v2/BDT name,
/// with the same definition (spec.md 13.5).
fn export_operations(v2_name: &str) -> Value {
    let definition = format!("http://hl7.org/fhir/uv/bulkdata/OperationDefinition/{v2_name}");
    json!([
        {"name": "export", "definition": definition, "documentation": EXPORT_DOCUMENTATION},
        {"name": v2_name, "definition": definition}
    ])
}

/// The search parameters of a type: `_count` for paging, then every parameter the search
/// evaluator supports, which are also the ones usable in `_typeFilter`.
fn search_params(resource_type: ResourceType) -> Value {
    let mut params = vec![
        json!({"name": "_count", "type": "number", "documentation": "Page size (paging runs over one snapshot)."}),
    ];
    params.extend(search::supported_params(resource_type).map(|(name, kind, documentation)| {
        json!({"name": name, "type": kind, "documentation": format!("Usable in search and in $export _typeFilter. {documentation}")})
    }));
    Value::Array(params)
}

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
                "searchParam": search_params(resource_type),
            });
            if resource_type == ResourceType::PATIENT {
                resource["documentation"] = json!(
                    "GET [base]/Patient/[id]/[type] lists the patient's compartment resources of that type (FHIR R4 Patient CompartmentDefinition)."
                );
                resource["operation"] = export_operations("patient-export");
            }
            if resource_type == ResourceType::GROUP {
                resource["operation"] = export_operations("group-export");
            }
            if resource_type == ResourceType::VIEW_DEFINITION {
                // SQL on FHIR v2's capability rules name the operations with their `$`.
                resource["profile"] = json!("https://sql-on-fhir.org/ig/StructureDefinition/ViewDefinition");
                resource["documentation"] = json!(VIEW_DOCUMENTATION);
                resource["operation"] = json!([
                    {"name": "$viewdefinition-export", "definition": "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-export"},
                    {"name": "$run", "definition": "http://sql-on-fhir.org/OperationDefinition/$run"}
                ]);
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
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "Resources are stored as sent (minified) with meta.versionId and meta.lastUpdated stamped by the server. Every error is an OperationOutcome.",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
            "operation": [{
                "name": "export",
                "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                "documentation": EXPORT_DOCUMENTATION
            }],
            "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"]
        }]
    })
}
