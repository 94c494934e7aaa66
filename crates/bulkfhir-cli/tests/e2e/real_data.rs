//! The shared Synthea data sets, loaded through the API and through `bulkfhir load`, read back
//! exactly, with every Patient's compartment checked against an expectation computed here from
//! the raw NDJSON.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use serde_json::Value;

use crate::common::{
    BinaryServer, COMPARTMENT_PATHS, Dataset, TestServer, expected_compartments, medium, small,
};

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
pub(crate) async fn medium_loaded_through_transaction_bundles_reads_back_exactly() {
    let dataset = medium();
    assert_eq!(dataset.count(), 38_473);
    let server = TestServer::start().await;
    load_through_bundles(&server, dataset, "transaction", 300).await;
    verify_store_holds(&server.base, dataset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn small_loaded_through_batch_bundles_reads_back_exactly() {
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
    // An empty store and no server on it: bulk mode, its key index built at the end.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("loading in bulk mode"), "{stderr}");
    assert!(stderr.contains("built the key index"), "{stderr}");
    let server = BinaryServer::start(data_dir.path()).await;
    verify_store_holds(&server.base, dataset).await;

    // With the server running, a second load shares the store: no bulk mode, and each
    // resource it holds again gets its next version.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .args(["load", "--data-dir"])
        .arg(data_dir.path())
        .arg(dataset.dir.join("Patient.ndjson"))
        .output()
        .expect("run bulkfhir load");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "second load failed: {stderr}");
    assert!(!stderr.contains("bulk mode"), "{stderr}");
    let patient: Value = serde_json::from_str(&dataset.lines["Patient"][0]).unwrap();
    let id = patient["id"].as_str().unwrap();
    let read: Value =
        reqwest::get(format!("{}/Patient/{id}", server.base)).await.unwrap().json().await.unwrap();
    assert_eq!(read["meta"]["versionId"], "2");
}
