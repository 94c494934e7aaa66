//! The shared Synthea data sets, loaded through the API and through `bulkfhir load`, read back
//! exactly, with every Patient's compartment checked against an expectation computed here from
//! the raw NDJSON.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use serde_json::Value;

use crate::common::{BinaryServer, Dataset, TestServer, medium, small};

/// The Patient compartment paths of the types in these data sets, written out independently of
/// the server's generated table (FHIR R4 CompartmentDefinition/patient and the R4
/// SearchParameter expressions of each named parameter).
const COMPARTMENT_PATHS: &[(&str, &[&str])] = &[
    ("AllergyIntolerance", &["patient", "recorder", "asserter"]),
    ("CarePlan", &["subject", "activity.detail.performer"]),
    ("CareTeam", &["subject", "participant.member"]),
    ("Claim", &["patient", "payee.party"]),
    ("Condition", &["subject", "asserter"]),
    ("DiagnosticReport", &["subject"]),
    // bulkfhir extension (g10 expects implantable devices with the patient).
    ("Device", &["patient"]),
    ("Encounter", &["subject"]),
    ("ExplanationOfBenefit", &["patient", "payee.party"]),
    ("Group", &["member.entity"]),
    ("ImagingStudy", &["subject"]),
    ("Immunization", &["patient"]),
    ("MedicationRequest", &["subject"]),
    ("Observation", &["subject", "performer"]),
    ("Patient", &["link.other"]),
    ("Procedure", &["subject", "performer.actor"]),
];

fn references_at<'v>(value: &'v Value, path: &[&str], out: &mut Vec<&'v str>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| references_at(item, path, out)),
        Value::Object(map) => match path.split_first() {
            Some((first, rest)) => {
                if let Some(child) = map.get(*first) {
                    references_at(child, rest, out);
                }
            }
            None => {
                if let Some(reference) = map.get("reference").and_then(Value::as_str) {
                    out.push(reference);
                }
            }
        },
        _ => {}
    }
}

/// patient id → type → ids in that patient's compartment.
fn expected_compartments(
    dataset: &Dataset,
) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut expected: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for patient_line in &dataset.lines["Patient"] {
        let patient: Value = serde_json::from_str(patient_line).unwrap();
        let id = patient["id"].as_str().unwrap().to_owned();
        expected.entry(id.clone()).or_default().entry("Patient".into()).or_default().insert(id);
    }
    for (type_name, paths) in COMPARTMENT_PATHS {
        for line in dataset.lines.get(*type_name).into_iter().flatten() {
            let resource: Value = serde_json::from_str(line).unwrap();
            let mut references = Vec::new();
            for path in *paths {
                references_at(&resource, &path.split('.').collect::<Vec<_>>(), &mut references);
            }
            for reference in references {
                if let Some(patient_id) = reference.strip_prefix("Patient/") {
                    expected
                        .entry(patient_id.to_owned())
                        .or_default()
                        .entry((*type_name).to_owned())
                        .or_default()
                        .insert(resource["id"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    expected
}

/// The stored text without the `meta` the server added: must equal the loaded line.
fn without_stamped_meta(stored: &str) -> String {
    let start = stored.find(r#","meta":{"versionId":""#).expect("stamped meta");
    let end = start + stored[start..].find('}').expect("meta end") + 1;
    format!("{}{}", &stored[..start], &stored[end..])
}

async fn verify_store_holds(base: &str, dataset: &Dataset) {
    let client = reqwest::Client::new();
    let server = TestServer::client_only(base, client.clone());
    // Every resource, through the listing, equal in content.
    for (type_name, lines) in &dataset.lines {
        let stored = server.list_all(type_name).await;
        assert_eq!(stored.len(), lines.len(), "{type_name}: count");
        let by_id: BTreeMap<&str, &Value> =
            stored.iter().map(|r| (r["id"].as_str().unwrap(), r)).collect();
        for line in lines {
            let mut expected: Value = serde_json::from_str(line).unwrap();
            let id = expected["id"].as_str().unwrap().to_owned();
            let mut actual =
                (*by_id.get(id.as_str()).unwrap_or_else(|| panic!("{type_name}/{id} missing")))
                    .clone();
            let meta = actual.as_object_mut().unwrap().remove("meta").expect("meta stamped");
            assert_eq!(meta["versionId"], "1");
            assert!(meta["lastUpdated"].as_str().is_some());
            expected.as_object_mut().unwrap().remove("meta");
            assert_eq!(actual, expected, "{type_name}/{id} content");
        }
        // Byte-exact for a sample, through read.
        for line in lines.iter().step_by(25) {
            let id =
                serde_json::from_str::<Value>(line).unwrap()["id"].as_str().unwrap().to_owned();
            let text = client
                .get(format!("{base}/{type_name}/{id}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert_eq!(without_stamped_meta(&text), *line, "{type_name}/{id} bytes");
        }
    }
    // Every Patient's compartment, for every compartment type in the data.
    let types: Vec<&str> = COMPARTMENT_PATHS
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| dataset.lines.contains_key(*t))
        .collect();
    let expected = expected_compartments(dataset);
    assert_eq!(expected.len(), dataset.lines["Patient"].len());
    for (patient_id, by_type) in &expected {
        for type_name in &types {
            let members: BTreeSet<String> = server
                .list_all(&format!("Patient/{patient_id}/{type_name}"))
                .await
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect();
            let want = by_type.get(*type_name).cloned().unwrap_or_default();
            assert_eq!(members, want, "compartment of Patient/{patient_id}, {type_name}");
        }
    }
}

async fn load_through_bundles(
    server: &TestServer,
    dataset: &Dataset,
    kind: &str,
    per_bundle: usize,
) {
    let mut entries = Vec::new();
    for (type_name, lines) in &dataset.lines {
        for line in lines {
            let id =
                serde_json::from_str::<Value>(line).unwrap()["id"].as_str().unwrap().to_owned();
            entries.push(format!(
                r#"{{"fullUrl":"{type_name}/{id}","resource":{line},"request":{{"method":"PUT","url":"{type_name}/{id}"}}}}"#
            ));
        }
    }
    for chunk in entries.chunks(per_bundle) {
        let bundle =
            format!(r#"{{"resourceType":"Bundle","type":"{kind}","entry":[{}]}}"#, chunk.join(","));
        let (status, _, response) = server.send_json(Method::POST, "", &bundle).await;
        assert_eq!(status, 200, "{response}");
        let entries = response["entry"].as_array().unwrap();
        assert_eq!(entries.len(), chunk.len());
        assert!(entries.iter().all(|e| e["response"]["status"] == "201 Created"), "{response}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn medium_loaded_through_transaction_bundles_reads_back_exactly() {
    let dataset = medium();
    assert_eq!(dataset.count(), 38_473);
    let server = TestServer::start().await;
    load_through_bundles(&server, dataset, "transaction", 300).await;
    verify_store_holds(&server.base, dataset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_loaded_through_batch_bundles_reads_back_exactly() {
    let dataset = small();
    assert_eq!(dataset.count(), 3_782);
    let server = TestServer::start().await;
    load_through_bundles(&server, dataset, "batch", 500).await;
    verify_store_holds(&server.base, dataset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn medium_loaded_with_bulkfhir_load_reads_back_exactly() {
    let dataset = medium();
    let data_dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .args(["load", "--data-dir"])
        .arg(data_dir.path())
        .arg(&dataset.dir)
        .output()
        .expect("run bulkfhir load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bulkfhir load failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("loaded 38473 resources from 18 files"), "{stdout}");
    let server = BinaryServer::start(data_dir.path()).await;
    verify_store_holds(&server.base, dataset).await;
}
