//! Bulk Data `$export` end to end: kick-off, status, manifest, files, cancel, expiry, limits,
//! and the content of system, Patient and Group exports checked against the raw NDJSON.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Read,
    time::Duration,
};

use bulkfhir_export::ExportConfig;
use reqwest::{Method, header::HeaderMap};
use serde_json::{Value, json};

use crate::common::{
    COMPARTMENT_PATHS, Dataset, TestServer, assert_outcome, body_json, expected_compartments,
    medium, small, test_export_config,
};

const FHIR_JSON: &str = "application/fhir+json";

/// Sends a kick-off with the required headers (plus `extra`); returns status, headers, body.
pub(crate) async fn kick_raw(
    server: &TestServer,
    method: Method,
    path: &str,
    extra: &[(&str, &str)],
    body: Option<String>,
) -> (u16, HeaderMap, Value) {
    let mut request = server.client.request(method, server.url(path));
    let has = |name: &str| extra.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !has("accept") {
        request = request.header("accept", FHIR_JSON);
    }
    if !has("prefer") {
        request = request.header("prefer", "respond-async");
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.header("content-type", FHIR_JSON).body(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, body_json(response).await)
}

/// Kicks off and returns the status URL.
pub(crate) async fn kick(server: &TestServer, path: &str) -> String {
    let (status, headers, body) = kick_raw(server, Method::GET, path, &[], None).await;
    assert_eq!(status, 202, "kick-off {path}: {body}");
    let location = headers["content-location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&server.base), "absolute Content-Location: {location}");
    location
}

/// Polls like a well-behaved client until the manifest arrives.
pub(crate) async fn wait_manifest(server: &TestServer, status_url: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let response = server.client.get(status_url).send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = body_json(response).await;
        match status {
            202 => {
                let progress = headers["x-progress"].to_str().unwrap();
                assert!(progress.len() < 100, "X-Progress under 100 characters: {progress}");
                let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(retry >= 1);
            }
            200 => {
                assert_eq!(headers["content-type"], "application/json");
                assert!(headers.contains_key("expires"));
                return body;
            }
            other => panic!("status poll answered {other}: {body}"),
        }
        assert!(std::time::Instant::now() < deadline, "export did not finish");
        // Retry-After is 1 s in the tests; polling faster than half of it earns a 429.
        tokio::time::sleep(Duration::from_millis(550)).await;
    }
}

/// Downloads one file and returns its lines (gunzipped when the server says gzip).
async fn download(server: &TestServer, url: &str) -> Vec<String> {
    let response = server.client.get(url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "GET {url}");
    assert_eq!(response.headers()["content-type"], "application/fhir+ndjson");
    let gzip = response.headers().get("content-encoding").is_some_and(|v| v == "gzip");
    let bytes = response.bytes().await.unwrap();
    let text = if gzip {
        let mut out = String::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut out).unwrap();
        out
    } else {
        String::from_utf8(bytes.to_vec()).unwrap()
    };
    assert!(text.ends_with('\n'), "NDJSON ends with a newline");
    text.lines().map(str::to_owned).collect()
}

/// Every output line by type, checking `count` against the lines and one type per file.
pub(crate) async fn output_by_type(
    server: &TestServer,
    manifest: &Value,
    array: &str,
) -> BTreeMap<String, Vec<Value>> {
    let mut by_type: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for item in manifest[array].as_array().unwrap() {
        let type_name = item["type"].as_str().unwrap().to_owned();
        let lines = download(server, item["url"].as_str().unwrap()).await;
        assert_eq!(
            item["count"].as_u64().unwrap() as usize,
            lines.len(),
            "count of {}",
            item["url"]
        );
        assert!(!lines.is_empty(), "no empty files are listed");
        for line in lines {
            let resource: Value = serde_json::from_str(&line).unwrap();
            if array == "output" {
                assert_eq!(resource["resourceType"], type_name.as_str(), "one type per file");
            }
            by_type.entry(type_name.clone()).or_default().push(resource);
        }
    }
    by_type
}

fn ids(resources: &[Value]) -> BTreeSet<String> {
    let list: Vec<String> =
        resources.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    let set: BTreeSet<String> = list.iter().cloned().collect();
    assert_eq!(set.len(), list.len(), "every resource exactly once");
    set
}

fn dataset_ids(dataset: &Dataset, type_name: &str) -> BTreeSet<String> {
    dataset.lines[type_name]
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts that `output` holds exactly `want` (compartment resources by type) plus the
/// supporting resources those exported compartment resources reference, each once.
pub(crate) fn assert_compartments_plus_supporting(
    output: &BTreeMap<String, Vec<Value>>,
    mut want: BTreeMap<String, BTreeSet<String>>,
    compartment_types: &[&str],
) {
    let exported_compartment = output
        .iter()
        .filter(|(t, _)| compartment_types.contains(&t.as_str()))
        .flat_map(|(_, resources)| resources.iter().cloned());
    for (type_name, ids_wanted) in supporting_references(exported_compartment) {
        want.insert(type_name, ids_wanted);
    }
    let got: BTreeMap<String, BTreeSet<String>> =
        output.iter().map(|(t, r)| (t.clone(), ids(r))).collect();
    assert_eq!(got, want);
}

/// The references from `resources` to types outside the compartment: what a Patient or Group
/// export adds as supporting resources.
pub(crate) fn supporting_references(
    resources: impl Iterator<Item = Value>,
) -> BTreeMap<String, BTreeSet<String>> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(reference)) = map.get("reference") {
                    out.push(reference.clone());
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let compartment: BTreeSet<&str> = COMPARTMENT_PATHS.iter().map(|(t, _)| *t).collect();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for resource in resources {
        let mut references = Vec::new();
        walk(&resource, &mut references);
        for reference in references {
            if let Some((type_name, id)) = reference.split_once('/')
                && !compartment.contains(type_name)
                && type_name != "Group"
                && type_name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            {
                out.entry(type_name.to_owned()).or_default().insert(id.to_owned());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_system_export_of_medium_returns_every_resource_exactly_once() {
    let dataset = medium();
    let server = TestServer::start_loaded(dataset, test_export_config()).await;
    let status_url = kick(&server, "$export").await;
    let manifest = wait_manifest(&server, &status_url).await;
    assert_eq!(manifest["request"], server.url("$export"));
    assert_eq!(manifest["requiresAccessToken"], false);
    assert!(manifest["transactionTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(manifest["error"], json!([]));
    assert_eq!(manifest["deleted"], json!([]));
    let output = output_by_type(&server, &manifest, "output").await;
    assert_eq!(output.keys().collect::<Vec<_>>(), dataset.lines.keys().collect::<Vec<_>>());
    for (type_name, resources) in &output {
        assert_eq!(ids(resources), dataset_ids(dataset, type_name), "{type_name}");
    }
    // The job is a resource too.
    let job_id = status_url.rsplit('/').next().unwrap();
    let (status, job) = server.get(&format!("BulkDataExport/{job_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(job["status"], "completed");
    assert_eq!(job["transactionTime"], manifest["transactionTime"]);
    assert_eq!(
        job["output"].as_array().unwrap().len(),
        manifest["output"].as_array().unwrap().len()
    );
    let (status, search) = server.get("BulkDataExport?status=completed").await;
    assert_eq!(status, 200);
    assert_eq!(search["entry"][0]["resource"]["id"], job_id);
    let (status, search) = server.get("BulkDataExport?status=in-progress").await;
    assert_eq!((status, search["entry"].as_array().unwrap().len()), (200, 0));

    // _type: exactly those types.
    let status_url = kick(&server, "$export?_type=Patient,Observation&_type=Condition").await;
    let manifest = wait_manifest(&server, &status_url).await;
    let output = output_by_type(&server, &manifest, "output").await;
    assert_eq!(
        output.keys().map(String::as_str).collect::<Vec<_>>(),
        ["Condition", "Observation", "Patient"]
    );
    assert_eq!(ids(&output["Observation"]), dataset_ids(dataset, "Observation"));

    // gzip: the same content, compressed.
    let status_url = kick(
        &server,
        "$export?_type=Observation,Patient&_outputFormat=application%2Ffhir%2Bndjson%2Bgzip",
    )
    .await;
    let manifest = wait_manifest(&server, &status_url).await;
    for item in manifest["output"].as_array().unwrap() {
        assert!(item["url"].as_str().unwrap().ends_with(".ndjson.gz"));
    }
    let zipped = output_by_type(&server, &manifest, "output").await;
    assert_eq!(zipped["Observation"], output["Observation"]);
    assert_eq!(zipped["Patient"], output["Patient"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn since_returns_exactly_the_changes_and_lists_the_deletions() {
    let dataset = small();
    let server = TestServer::start_loaded(dataset, test_export_config()).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = bulkfhir_model::Instant::now().to_fhir();
    let observations: Vec<Value> = dataset.lines["Observation"]
        .iter()
        .take(6)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let conditions: Vec<Value> = dataset.lines["Condition"]
        .iter()
        .take(2)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Update three observations, delete three others and two conditions, create one.
    for obs in &observations[..3] {
        let mut changed = obs.clone();
        changed["status"] = json!("amended");
        let id = obs["id"].as_str().unwrap();
        let (status, _, _) =
            server.send_json(Method::PUT, &format!("Observation/{id}"), &changed.to_string()).await;
        assert_eq!(status, 200);
    }
    let mut deleted = BTreeSet::new();
    for resource in observations[3..].iter().chain(&conditions) {
        let path = format!(
            "{}/{}",
            resource["resourceType"].as_str().unwrap(),
            resource["id"].as_str().unwrap()
        );
        let (status, _, _) = server.send_json(Method::DELETE, &path, "").await;
        assert_eq!(status, 200);
        deleted.insert(path);
    }
    let (status, _, created) = server
        .send_json(
            Method::POST,
            "Observation",
            r#"{"resourceType":"Observation","status":"final","code":{"text":"new"}}"#,
        )
        .await;
    assert_eq!(status, 201);
    let status_url = kick(&server, &format!("$export?_since={}", since.replace('+', "%2B"))).await;
    let manifest = wait_manifest(&server, &status_url).await;
    let output = output_by_type(&server, &manifest, "output").await;
    assert_eq!(output.keys().map(String::as_str).collect::<Vec<_>>(), ["Observation"]);
    let mut expected: BTreeSet<String> =
        observations[..3].iter().map(|o| o["id"].as_str().unwrap().to_owned()).collect();
    expected.insert(created["id"].as_str().unwrap().to_owned());
    assert_eq!(ids(&output["Observation"]), expected);
    assert!(
        output["Observation"].iter().all(|o| o["id"] == created["id"] || o["status"] == "amended")
    );
    let deletions = output_by_type(&server, &manifest, "deleted").await;
    let listed: BTreeSet<String> = deletions["Bundle"]
        .iter()
        .map(|bundle| {
            assert_eq!(bundle["resourceType"], "Bundle");
            assert_eq!(bundle["type"], "transaction");
            assert_eq!(bundle["entry"][0]["request"]["method"], "DELETE");
            bundle["entry"][0]["request"]["url"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(listed, deleted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn patient_and_group_exports_hold_exactly_the_compartments_and_their_references() {
    let dataset = medium();
    let server = TestServer::start_loaded(dataset, test_export_config()).await;
    let expected = expected_compartments(dataset);
    let compartment_types: Vec<&str> = COMPARTMENT_PATHS
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| dataset.lines.contains_key(*t))
        .collect();

    // Patient level: every resource in some patient's compartment (the Group of all patients
    // is in their compartments too), plus the supporting resources they reference.
    let status_url = kick(&server, "Patient/$export").await;
    let manifest = wait_manifest(&server, &status_url).await;
    let output = output_by_type(&server, &manifest, "output").await;
    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for by_type in expected.values() {
        for (type_name, members) in by_type {
            want.entry(type_name.clone()).or_default().extend(members.iter().cloned());
        }
    }
    assert_compartments_plus_supporting(&output, want, &compartment_types);

    // Group level: five members (one inactive member and one missing patient are not exported).
    let patients: Vec<&String> = expected.keys().collect();
    let mut members: Vec<Value> = patients[..5]
        .iter()
        .map(|p| json!({"entity": {"reference": format!("Patient/{p}")}}))
        .collect();
    members.push(
        json!({"entity": {"reference": format!("Patient/{}", patients[5])}, "inactive": true}),
    );
    members.push(json!({"entity": {"reference": "Patient/does-not-exist"}}));
    let group = json!({"resourceType": "Group", "id": "five", "type": "person", "actual": true, "member": members});
    let (status, _, _) = server.send_json(Method::PUT, "Group/five", &group.to_string()).await;
    assert_eq!(status, 201);
    let status_url = kick(&server, "Group/five/$export").await;
    let manifest = wait_manifest(&server, &status_url).await;
    let output = output_by_type(&server, &manifest, "output").await;
    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for patient in &patients[..5] {
        for (type_name, members) in &expected[*patient] {
            if type_name != "Group" {
                want.entry(type_name.clone()).or_default().extend(members.iter().cloned());
            }
        }
    }
    // The new Group is in its members' compartments too (Group.member is a compartment param).
    want.entry("Group".into()).or_default().insert("five".into());
    for patient in &patients[..5] {
        if expected[*patient].contains_key("Group") {
            want.get_mut("Group").unwrap().extend(expected[*patient]["Group"].iter().cloned());
        }
    }
    assert_compartments_plus_supporting(&output, want, &compartment_types);
    let errors = output_by_type(&server, &manifest, "error").await;
    let diagnostics: Vec<&str> = errors["OperationOutcome"]
        .iter()
        .map(|o| o["issue"][0]["diagnostics"].as_str().unwrap())
        .collect();
    assert!(diagnostics.iter().any(|d| d.contains("Patient/does-not-exist")), "{diagnostics:?}");

    // An unknown Group is a 404 at kick-off.
    let (status, _, outcome) =
        kick_raw(&server, Method::GET, "Group/nope/$export", &[], None).await;
    assert_outcome(status, 404, &outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn an_export_sees_the_versions_current_at_its_transaction_time() {
    let dataset = small();
    let server = TestServer::start_loaded(dataset, test_export_config()).await;
    let status_url = kick(&server, "$export?_type=Observation,Condition").await;
    // Change and delete resources while the export runs: none of it may show.
    let writer = {
        let server_base = server.base.clone();
        let observations = dataset.lines["Observation"].clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for (i, line) in observations.iter().enumerate().take(400) {
                let mut obs: Value = serde_json::from_str(line).unwrap();
                let id = obs["id"].as_str().unwrap().to_owned();
                let request = if i % 4 == 0 {
                    client.delete(format!("{server_base}/Observation/{id}"))
                } else {
                    obs["status"] = json!("entered-in-error");
                    client
                        .put(format!("{server_base}/Observation/{id}"))
                        .header("content-type", FHIR_JSON)
                        .body(obs.to_string())
                };
                assert!(request.send().await.unwrap().status().is_success());
            }
        })
    };
    let manifest = wait_manifest(&server, &status_url).await;
    writer.await.unwrap();
    let transaction_time = manifest["transactionTime"].as_str().unwrap();
    let output = output_by_type(&server, &manifest, "output").await;
    assert_eq!(
        ids(&output["Observation"]),
        dataset_ids(dataset, "Observation"),
        "deleted-later resources are still there"
    );
    for resource in output.values().flatten() {
        assert_eq!(resource["meta"]["versionId"], "1", "the version current at transactionTime");
        assert_ne!(resource["status"], "entered-in-error");
        assert!(resource["meta"]["lastUpdated"].as_str().unwrap() <= transaction_time);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn bad_kickoffs_get_an_operation_outcome() {
    let server = TestServer::start().await;
    server.send_json(Method::PUT, "Patient/p1", r#"{"resourceType":"Patient","id":"p1"}"#).await;
    type Case<'a> = (Method, &'a str, Vec<(&'a str, &'a str)>, Option<&'a str>, u16);
    let cases: Vec<Case<'_>> = vec![
        (Method::GET, "$export", vec![("accept", "application/json")], None, 400),
        (Method::GET, "$export", vec![("prefer", "return=minimal")], None, 400),
        (Method::GET, "$export?_since=yesterday", vec![], None, 400),
        (Method::GET, "$export?_since=2999-01-01T00:00:00Z", vec![], None, 400),
        (Method::GET, "$export?_outputFormat=text%2Fcsv", vec![], None, 400),
        (Method::GET, "$export?_type=Observation,Nope", vec![], None, 400),
        (Method::GET, "$export?_type=", vec![], None, 400),
        (Method::GET, "$export?bogus=1", vec![], None, 400),
        (Method::GET, "Group/nope/$export", vec![], None, 404),
        (Method::GET, "Group/bad$id/$export", vec![], None, 400),
        (Method::POST, "$export", vec![], Some("{not json"), 400),
        (Method::POST, "$export", vec![], Some(r#"{"resourceType":"Patient"}"#), 400),
        (
            Method::POST,
            "$export",
            vec![],
            Some(r#"{"resourceType":"Parameters","parameter":[{"name":"_since"}]}"#),
            400,
        ),
        (
            Method::POST,
            "$export",
            vec![],
            Some(
                r#"{"resourceType":"Parameters","parameter":[{"name":"patient","valueReference":{"reference":"Patient/p1"}}]}"#,
            ),
            400,
        ),
        (
            Method::POST,
            "Patient/$export",
            vec![],
            Some(
                r#"{"resourceType":"Parameters","parameter":[{"name":"patient","valueReference":{"reference":"Observation/p1"}}]}"#,
            ),
            400,
        ),
    ];
    for (method, path, headers, body, expected) in cases {
        let (status, _, outcome) =
            kick_raw(&server, method.clone(), path, &headers, body.map(str::to_owned)).await;
        assert!(
            status == expected,
            "{method} {path} {headers:?}: expected {expected}, got {status}: {outcome}"
        );
        assert_outcome(status, expected, &outcome);
    }
    // Lenient: unknown types are dropped and reported in the manifest's error file.
    let (output, diagnostics) = lenient_export(&server, "$export?_type=Patient,Nope").await;
    assert_eq!(output.keys().map(String::as_str).collect::<Vec<_>>(), ["Patient"]);
    assert!(diagnostics[0].contains("Nope"), "{diagnostics:?}");
    // A POST with a Parameters body works.
    let body = r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Patient"},{"name":"patient","valueReference":{"reference":"Patient/p1"}}]}"#;
    let (status, headers, _) =
        kick_raw(&server, Method::POST, "Patient/$export", &[], Some(body.to_owned())).await;
    assert_eq!(status, 202);
    let manifest = wait_manifest(&server, headers["content-location"].to_str().unwrap()).await;
    assert_eq!(
        manifest["request"],
        server.url("Patient/$export"),
        "a POST's request URL has no parameters"
    );
    let output = output_by_type(&server, &manifest, "output").await;
    assert_eq!(ids(&output["Patient"]), BTreeSet::from(["p1".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn status_cancel_files_and_limits_follow_the_async_pattern() {
    let export = ExportConfig { max_resources_per_file: 500, ..test_export_config() };
    let server = TestServer::start_loaded(small(), export).await;
    let status_url = kick(&server, "$export").await;
    // Polling faster than Retry-After allows earns a 429.
    let first = server.client.get(&status_url).send().await.unwrap();
    assert_eq!(first.status().as_u16(), 202);
    let second = server.client.get(&status_url).send().await.unwrap();
    assert_eq!(second.status().as_u16(), 429);
    assert!(second.headers().contains_key("retry-after"));
    assert_outcome(429, 429, &body_json(second).await);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let manifest = wait_manifest_after_first(&server, &status_url).await;
    let observation_files: Vec<&Value> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "Observation")
        .collect();
    assert_eq!(observation_files.len(), 3, "1369 Observations at 500 per file");
    let url = observation_files[0]["url"].as_str().unwrap();
    assert!(url.ends_with("/Observation-1.ndjson"));

    // Range requests.
    let ranged = server.client.get(url).header("range", "bytes=0-9").send().await.unwrap();
    assert_eq!(ranged.status().as_u16(), 206);
    assert!(ranged.headers()["content-range"].to_str().unwrap().starts_with("bytes 0-9/"));
    assert_eq!(ranged.bytes().await.unwrap().as_ref(), b"{\"resource");
    let beyond = server.client.get(url).header("range", "bytes=999999999-").send().await.unwrap();
    assert_eq!(beyond.status().as_u16(), 416);
    let unknown =
        server.client.get(url.replace("Observation-1", "Observation-9")).send().await.unwrap();
    let status = unknown.status().as_u16();
    assert_outcome(status, 404, &body_json(unknown).await);

    // Cancel (here: after completion): 202, then 404 for the status URL and its files.
    let cancelled = server.client.delete(&status_url).send().await.unwrap();
    let status = cancelled.status().as_u16();
    assert_eq!(status, 202, "{}", body_json(cancelled).await);
    let after_cancel = server.client.get(&status_url).send().await.unwrap();
    let code = after_cancel.status().as_u16();
    assert_outcome(code, 404, &body_json(after_cancel).await);
    let file = server.client.get(url).send().await.unwrap();
    let code = file.status().as_u16();
    assert_outcome(code, 404, &body_json(file).await);
    let again = server.client.delete(&status_url).send().await.unwrap();
    let code = again.status().as_u16();
    assert_outcome(code, 404, &body_json(again).await);
    let job_id = status_url.rsplit('/').next().unwrap();
    let job_dir = server.data_path.join("exports/jobs").join(job_id);
    assert!(std::fs::read_dir(&job_dir).map_or(true, |mut d| d.next().is_none()), "files deleted");

    // Cancel while running.
    let status_url = kick(&server, "$export").await;
    let cancelled = server.client.delete(&status_url).send().await.unwrap();
    assert_eq!(cancelled.status().as_u16(), 202);
    let gone = server.client.get(&status_url).send().await.unwrap();
    assert_eq!(gone.status().as_u16(), 404);
    let job_id = status_url.rsplit('/').next().unwrap();
    let job_dir = server.data_path.join("exports/jobs").join(job_id);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&job_dir).is_ok_and(|mut d| d.next().is_some()) {
        assert!(std::time::Instant::now() < deadline, "a cancelled export's files are deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, job) = server.get(&format!("BulkDataExport/{job_id}")).await;
    assert_eq!(job["status"], "cancelled");
}

/// As `wait_manifest`, for a job already polled once.
async fn wait_manifest_after_first(server: &TestServer, status_url: &str) -> Value {
    loop {
        let response = server.client.get(status_url).send().await.unwrap();
        match response.status().as_u16() {
            202 => tokio::time::sleep(Duration::from_millis(550)).await,
            200 => return body_json(response).await,
            other => panic!("status {other}: {}", body_json(response).await),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_full_queue_answers_429_and_expired_files_are_swept() {
    // A node that runs no export keeps the first one queued, so the queue is surely full.
    let queue_only =
        ExportConfig { max_active_jobs: 1, max_running_jobs: 0, ..test_export_config() };
    let server = TestServer::start_loaded(small(), queue_only).await;
    kick(&server, "$export").await;
    let (status, headers, outcome) = kick_raw(&server, Method::GET, "$export", &[], None).await;
    assert_outcome(status, 429, &outcome);
    assert!(headers.contains_key("retry-after"));

    let export = ExportConfig {
        retention: Duration::from_secs(2),
        sweep_interval: Duration::from_millis(100),
        ..test_export_config()
    };
    let server = TestServer::start_loaded(small(), export).await;
    let status_url = kick(&server, "$export").await;
    let manifest = wait_manifest(&server, &status_url).await;
    let url = manifest["output"][0]["url"].as_str().unwrap().to_owned();
    // After retention the sweeper deletes the files and the status says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let response = server.client.get(&status_url).send().await.unwrap();
        if response.status().as_u16() == 410 {
            assert_outcome(410, 410, &body_json(response).await);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "expired export still served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let file = server.client.get(&url).send().await.unwrap();
    let code = file.status().as_u16();
    assert_outcome(code, 410, &body_json(file).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn until_returns_the_versions_current_at_that_instant() {
    let server = TestServer::start().await;
    let put = |id: &'static str, status: &'static str| {
        let body = json!({"resourceType": "Observation", "id": id, "status": status, "code": {"text": "x"}}).to_string();
        let server = &server;
        async move {
            let (code, _, _) =
                server.send_json(Method::PUT, &format!("Observation/{id}"), &body).await;
            assert!(code == 200 || code == 201);
        }
    };
    put("u1", "preliminary").await;
    put("u2", "preliminary").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let until = bulkfhir_model::Instant::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    put("u1", "final").await;
    let (code, _, _) = server.send_json(Method::DELETE, "Observation/u2", "").await;
    assert_eq!(code, 200);
    put("u3", "final").await;

    let query = format!("$export?_type=Observation&_until={}", until.to_fhir());
    let manifest = wait_manifest(&server, &kick(&server, &query).await).await;
    let transaction_time =
        bulkfhir_model::Instant::parse_fhir(manifest["transactionTime"].as_str().unwrap()).unwrap();
    assert_eq!(transaction_time, until, "transactionTime is _until");
    let output = output_by_type(&server, &manifest, "output").await;
    let got: BTreeMap<String, (String, String)> = output["Observation"]
        .iter()
        .map(|o| {
            let id = o["id"].as_str().unwrap().to_owned();
            (
                id,
                (
                    o["meta"]["versionId"].as_str().unwrap().to_owned(),
                    o["status"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    let want: BTreeMap<String, (String, String)> = [
        ("u1".to_owned(), ("1".to_owned(), "preliminary".to_owned())),
        ("u2".to_owned(), ("1".to_owned(), "preliminary".to_owned())),
    ]
    .into();
    assert_eq!(got, want, "the versions current at _until; nothing created later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn separate_export_status_moves_the_job_state_into_a_header() {
    let server = TestServer::start().await;
    server.send_json(Method::PUT, "Patient/p1", r#"{"resourceType":"Patient","id":"p1"}"#).await;
    let (status, headers, _) = kick_raw(
        &server,
        Method::GET,
        "$export",
        &[("prefer", "respond-async, separate-export-status")],
        None,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(headers["preference-applied"], "respond-async, separate-export-status");
    let status_url = headers["content-location"].to_str().unwrap().to_owned();
    let mut seen = Vec::new();
    let manifest = loop {
        let response = server.client.get(&status_url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "the status request itself succeeded");
        let job_status = response.headers()["x-export-status"].to_str().unwrap().to_owned();
        let body = body_json(response).await;
        seen.push(job_status.clone());
        if job_status == "200 OK" {
            break body;
        }
        assert_eq!(job_status, "202 Accepted");
        tokio::time::sleep(Duration::from_millis(550)).await;
    };
    assert_eq!(seen[0], "202 Accepted");
    assert_eq!(manifest["output"][0]["type"], "Patient");
    let unknown = server
        .client
        .get(server.url("$export-status/01a20c6d-8f96-7550-8e2c-7faeda410dda"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404, "an unknown job is a failed status request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn partial_manifests_chain_every_file_once_and_never_change() {
    let export = ExportConfig {
        max_resources_per_file: 150,
        files_per_manifest_page: 20,
        ..test_export_config()
    };
    let dataset = medium();
    let server = TestServer::start_loaded(dataset, export).await;
    let status_url = kick(&server, "$export?allowPartialManifests=true").await;
    // Page URLs are not throttled: watch page 1 closely until the first files are listed.
    let first_page = loop {
        let response = server.client.get(format!("{status_url}?page=1")).send().await.unwrap();
        let status = response.status().as_u16();
        let is_json =
            response.headers().get("content-type").is_some_and(|v| v == "application/json");
        let body = body_json(response).await;
        if is_json {
            break (status, body);
        }
        assert_eq!(status, 202, "before any file is finished: plain 202");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(first_page.0, 202, "a partial manifest arrives while the export still runs");
    // page URL → the first body seen for it (without `link`).
    let mut frozen: BTreeMap<String, Value> = BTreeMap::new();
    let mut saw_partial_202 = true;
    let check_page =
        |url: &str, mut body: Value, frozen: &mut BTreeMap<String, Value>| -> Option<String> {
            let next = body["link"][0]["url"].as_str().map(str::to_owned);
            if let Some(link) = body.get("link") {
                assert_eq!(link[0]["relation"], "next");
            }
            body.as_object_mut().unwrap().remove("link");
            let first = frozen.entry(url.to_owned()).or_insert_with(|| body.clone());
            assert_eq!(*first, body, "a returned manifest page never changes: {url}");
            next
        };
    // The page seen mid-run is the same page 1 the status URL serves from now on.
    check_page(&status_url, first_page.1.clone(), &mut frozen);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let response = server.client.get(&status_url).send().await.unwrap();
        let status = response.status().as_u16();
        let is_json =
            response.headers().get("content-type").is_some_and(|v| v == "application/json");
        let body = body_json(response).await;
        if is_json {
            saw_partial_202 |= status == 202;
            // Follow the chain as far as it goes now, re-checking every page.
            let mut url = status_url.clone();
            let mut page = body.clone();
            while let Some(next) = check_page(&url, page, &mut frozen) {
                let response = server.client.get(&next).send().await.unwrap();
                assert!(matches!(response.status().as_u16(), 200 | 202));
                page = body_json(response).await;
                url = next;
            }
        }
        if status == 200 {
            break;
        }
        assert_eq!(status, 202, "{body}");
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(550)).await;
    }
    // Together the pages list every file once, and the files hold every resource once.
    let mut names = BTreeSet::new();
    let mut per_type: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for page in frozen.values() {
        for item in page["output"].as_array().unwrap() {
            let url = item["url"].as_str().unwrap();
            assert!(names.insert(url.to_owned()), "{url} listed twice");
            let lines = download(&server, url).await;
            assert_eq!(item["count"].as_u64().unwrap() as usize, lines.len());
            for line in lines {
                let resource: Value = serde_json::from_str(&line).unwrap();
                let ids = per_type.entry(item["type"].as_str().unwrap().to_owned()).or_default();
                assert!(ids.insert(resource["id"].as_str().unwrap().to_owned()));
            }
        }
    }
    for (type_name, ids) in &per_type {
        assert_eq!(*ids, dataset_ids(dataset, type_name), "{type_name}");
    }
    assert_eq!(per_type.len(), dataset.lines.len());
    assert!(saw_partial_202);
    assert!(frozen.len() >= 10, "{} pages of at most 20 files", frozen.len());
    assert!(frozen.values().all(|p| p["output"].as_array().unwrap().len() <= 20));
    // A page of an export without partial manifests does not exist.
    let plain = kick(&server, "$export?_type=Patient").await;
    let response = server.client.get(format!("{plain}?page=1")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);
}

/// Kicks off with `Prefer: handling=lenient` and returns the output and the error file's
/// diagnostics.
async fn lenient_export(
    server: &TestServer,
    path: &str,
) -> (BTreeMap<String, Vec<Value>>, Vec<String>) {
    let lenient = [("prefer", "respond-async, handling=lenient")];
    let (status, headers, body) = kick_raw(server, Method::GET, path, &lenient, None).await;
    assert_eq!(status, 202, "{path}: {body}");
    let manifest = wait_manifest(server, headers["content-location"].to_str().unwrap()).await;
    let output = output_by_type(server, &manifest, "output").await;
    let errors = output_by_type(server, &manifest, "error").await;
    let diagnostics = errors["OperationOutcome"]
        .iter()
        .map(|o| o["issue"][0]["diagnostics"].as_str().unwrap().to_owned())
        .collect();
    (output, diagnostics)
}

/// The first resource of `type_name` in the data set whose `field.reference` is `Patient/{patient}`.
fn first_of(dataset: &Dataset, type_name: &str, field: &str, patient: &str) -> String {
    dataset.lines[type_name]
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r[field]["reference"] == format!("Patient/{patient}"))
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn provenance_follows_k17_and_include_associated_data() {
    let dataset = small();
    let server = TestServer::start_loaded(dataset, test_export_config()).await;
    let patients: Vec<String> = dataset_ids(dataset, "Patient").into_iter().collect();
    let (p1, p2) = (&patients[0], &patients[1]);
    let obs1 = first_of(dataset, "Observation", "subject", p1);
    let enc1 = first_of(dataset, "Encounter", "subject", p1);
    let cond2 = first_of(dataset, "Condition", "subject", p2);
    let org = dataset_ids(dataset, "Organization").into_iter().next().unwrap();
    let provenance = [
        ("prov-a", format!("Observation/{obs1}"), "2020-01-01T00:00:00Z"),
        ("prov-b", format!("Organization/{org}"), "2020-01-01T00:00:00Z"),
        ("prov-c", format!("Encounter/{enc1}"), "2020-01-01T00:00:00Z"),
        ("prov-d", format!("Encounter/{enc1}"), "2021-01-01T00:00:00Z"),
        ("prov-e", format!("Condition/{cond2}"), "2020-01-01T00:00:00Z"),
    ];
    for (id, target, recorded) in &provenance {
        let body = json!({"resourceType": "Provenance", "id": id, "target": [{"reference": target}], "recorded": recorded,
            "agent": [{"who": {"display": "test"}}]});
        let (status, _, _) =
            server.send_json(Method::PUT, &format!("Provenance/{id}"), &body.to_string()).await;
        assert_eq!(status, 201);
    }
    let group = json!({"resourceType": "Group", "id": "g2", "type": "person", "actual": true,
        "member": [{"entity": {"reference": format!("Patient/{p2}")}}]});
    server.send_json(Method::PUT, "Group/g2", &group.to_string()).await;
    let provenance_of = |path: String| {
        let server = &server;
        async move {
            let manifest = wait_manifest(server, &kick(server, &path).await).await;
            let output = output_by_type(server, &manifest, "output").await;
            output.get("Provenance").map(|p| ids(p)).unwrap_or_default()
        }
    };
    let set = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<BTreeSet<String>>();
    // K17 at Patient level: Provenance whose target is in a patient's compartment.
    assert_eq!(
        provenance_of("Patient/$export?_type=Observation,Encounter,Condition,Provenance".into())
            .await,
        set(&["prov-a", "prov-c", "prov-d", "prov-e"])
    );
    // ...and only targets among the returned types.
    assert_eq!(
        provenance_of("Patient/$export?_type=Encounter,Provenance".into()).await,
        set(&["prov-c", "prov-d"])
    );
    // Group: only the members' compartments.
    assert_eq!(provenance_of("Group/g2/$export".into()).await, set(&["prov-e"]));
    // System level without the parameter: every Provenance.
    assert_eq!(
        provenance_of("$export?_type=Provenance".into()).await,
        set(&["prov-a", "prov-b", "prov-c", "prov-d", "prov-e"])
    );
    // includeAssociatedData: the Provenance of the returned resources, all or the newest.
    assert_eq!(
        provenance_of(
            "$export?_type=Encounter&includeAssociatedData=RelevantProvenanceResources".into()
        )
        .await,
        set(&["prov-c", "prov-d"])
    );
    assert_eq!(
        provenance_of(
            "$export?_type=Encounter&includeAssociatedData=LatestProvenanceResources".into()
        )
        .await,
        set(&["prov-d"])
    );
    assert_eq!(
        provenance_of("$export?_type=Encounter&includeAssociatedData=LatestProvenanceResources,RelevantProvenanceResources".into()).await,
        set(&["prov-c", "prov-d"]),
        "conflicting values: the least restrictive wins"
    );
    let (status, _, outcome) =
        kick_raw(&server, Method::GET, "$export?includeAssociatedData=_custom", &[], None).await;
    assert_outcome(status, 400, &outcome);
    let (_, diagnostics) =
        lenient_export(&server, "$export?_type=Patient&includeAssociatedData=_custom").await;
    assert!(diagnostics[0].contains("_custom"), "{diagnostics:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn elements_trim_to_the_listed_and_mandatory_elements_byte_exact() {
    let dataset = small();
    let server = TestServer::start_loaded(dataset, test_export_config()).await;
    let query = "$export?_type=Patient,Observation,Condition,Encounter&_elements=Patient.birthDate,Observation.value,Condition.code";
    let manifest = wait_manifest(&server, &kick(&server, query).await).await;
    let output = output_by_type(&server, &manifest, "output").await;
    // Written out here from the R4 definitions: what each type keeps besides resourceType/id/meta.
    let keep: BTreeMap<&str, Vec<&str>> = [
        ("Patient", vec!["birthDate", "_birthDate"]),
        ("Observation", vec!["status", "_status", "code"]),
        ("Condition", vec!["subject", "code"]),
    ]
    .into();
    for (type_name, lines) in &dataset.lines {
        let Some(exported) = output.get(type_name) else { continue };
        let by_id: BTreeMap<&str, &Value> =
            exported.iter().map(|r| (r["id"].as_str().unwrap(), r)).collect();
        for line in lines {
            let original: Value = serde_json::from_str(line).unwrap();
            let got = by_id[original["id"].as_str().unwrap()];
            let Some(kept) = keep.get(type_name.as_str()) else {
                // Encounter: no item applies, so it is exported whole and untagged.
                let mut whole = got.clone();
                whole.as_object_mut().unwrap().remove("meta");
                assert_eq!(whole, original);
                continue;
            };
            let mut want = serde_json::Map::new();
            for (key, value) in original.as_object().unwrap() {
                let is_value =
                    type_name == "Observation" && key.starts_with("value") && key.len() > 5;
                if key == "resourceType"
                    || key == "id"
                    || key == "implicitRules"
                    || key == "modifierExtension"
                    || kept.contains(&key.as_str())
                    || is_value
                {
                    want.insert(key.clone(), value.clone());
                }
            }
            let mut trimmed = got.as_object().unwrap().clone();
            let meta = trimmed.remove("meta").unwrap();
            let subsetted: Vec<&Value> = meta["tag"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["code"] == "SUBSETTED")
                .collect();
            assert_eq!(subsetted.len(), 1, "one SUBSETTED tag");
            assert_eq!(
                subsetted[0]["system"],
                "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
            );
            assert_eq!(
                Value::Object(trimmed),
                Value::Object(want),
                "{type_name}/{}",
                original["id"]
            );
        }
    }
    // A typed choice name or an unknown element is a 400.
    for bad in [
        "_elements=Observation.valueQuantity",
        "_elements=Patient.nope",
        "_elements=Observation.code.text",
    ] {
        let (status, _, outcome) =
            kick_raw(&server, Method::GET, &format!("$export?{bad}"), &[], None).await;
        assert_outcome(status, 400, &outcome);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn organize_output_by_patient_puts_each_compartment_resource_in_its_patients_block_once()
 {
    let export = ExportConfig { max_resources_per_file: 300, ..test_export_config() };
    let dataset = small();
    let server = TestServer::start_loaded(dataset, export).await;
    let expected = expected_compartments(dataset);
    let manifest =
        wait_manifest(&server, &kick(&server, "Patient/$export?organizeOutputBy=Patient").await)
            .await;
    assert_eq!(manifest["outputOrganizedBy"], "Patient");
    let items = manifest["output"].as_array().unwrap().clone();
    assert!(items.iter().all(|i| i.get("type").is_none()), "organized output items carry no type");

    let header_of = |line: &str| -> Option<String> {
        let value: Value = serde_json::from_str(line).unwrap();
        (value["resourceType"] == "Parameters").then(|| {
            assert_eq!(value["parameter"][0]["name"], "header");
            value["parameter"][0]["valueReference"]["reference"].as_str().unwrap().to_owned()
        })
    };
    // (type, id) → the patients whose blocks hold it.
    let mut placed: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut blocks_seen = BTreeSet::new();
    let mut continued = 0;
    for (idx, item) in items.iter().enumerate() {
        let lines = download(&server, item["url"].as_str().unwrap()).await;
        assert_eq!(
            item["count"].as_u64().unwrap() as usize,
            lines.iter().filter(|l| header_of(l).is_none()).count()
        );
        let first_header = header_of(&lines[0]).expect("every file starts with a block header");
        if let Some(next_url) = item.get("continuesInFile") {
            continued += 1;
            let next = items
                .iter()
                .find(|i| i["url"] == *next_url)
                .expect("continuesInFile names a listed file");
            let next_lines = download(&server, next["url"].as_str().unwrap()).await;
            let last_header = lines.iter().rev().find_map(|l| header_of(l)).unwrap();
            assert_eq!(
                header_of(&next_lines[0]).unwrap(),
                last_header,
                "the continuation repeats the header"
            );
        }
        let mut current = first_header;
        // True right after the header of a block seen for the first time.
        let mut block_start = false;
        for (line_idx, line) in lines.iter().enumerate() {
            if let Some(header) = header_of(line) {
                let fresh_block = blocks_seen.insert(header.clone());
                let continuation =
                    line_idx == 0 && idx > 0 && items[idx - 1].get("continuesInFile").is_some();
                assert!(
                    fresh_block || continuation,
                    "a block appears once, or continues in the next file"
                );
                current = header;
                block_start = fresh_block;
                continue;
            }
            let resource: Value = serde_json::from_str(line).unwrap();
            let key = (
                resource["resourceType"].as_str().unwrap().to_owned(),
                resource["id"].as_str().unwrap().to_owned(),
            );
            if block_start {
                assert_eq!(format!("{}/{}", key.0, key.1), current, "the Patient leads its block");
                block_start = false;
            }
            placed.entry(key).or_default().push(current.clone());
        }
    }
    assert!(continued > 0, "some block was too big for one file and continued");
    let compartment_types: BTreeSet<&str> = COMPARTMENT_PATHS.iter().map(|(t, _)| *t).collect();
    let mut n_compartment = 0;
    for by_type in expected.values() {
        for (type_name, ids) in by_type {
            for id in ids {
                let blocks = &placed[&(type_name.clone(), id.clone())];
                assert_eq!(blocks.len(), 1, "{type_name}/{id} exactly once: {blocks:?}");
                let owner_is_member = expected.iter().any(|(p, t)| {
                    format!("Patient/{p}") == blocks[0]
                        && t.get(type_name).is_some_and(|set| set.contains(id))
                });
                assert!(
                    owner_is_member,
                    "{type_name}/{id} sits in the block of a patient whose compartment holds it"
                );
                n_compartment += 1;
            }
        }
    }
    assert!(n_compartment > 0);
    for ((type_name, id), blocks) in &placed {
        if compartment_types.contains(type_name.as_str()) {
            assert_eq!(blocks.len(), 1, "{type_name}/{id}");
        }
    }
    // _typeFilter applies inside blocks too.
    let query = "Patient/$export?organizeOutputBy=Patient&_type=Patient,Observation&_typeFilter=Observation%3Fcode%3D8302-2";
    let manifest = wait_manifest(&server, &kick(&server, query).await).await;
    let mut heights = 0;
    for item in manifest["output"].as_array().unwrap() {
        for line in download(&server, item["url"].as_str().unwrap()).await {
            let resource: Value = serde_json::from_str(&line).unwrap();
            if resource["resourceType"] == "Observation" {
                assert_eq!(resource["code"]["coding"][0]["code"], "8302-2");
                heights += 1;
            }
        }
    }
    let want = dataset.lines["Observation"].iter().filter(|l| l.contains("\"8302-2\"")).count();
    assert_eq!(heights, want);
    for bad in ["$export?organizeOutputBy=Patient", "Patient/$export?organizeOutputBy=Encounter"] {
        let (status, _, outcome) = kick_raw(&server, Method::GET, bad, &[], None).await;
        assert_outcome(status, 400, &outcome);
    }
}
