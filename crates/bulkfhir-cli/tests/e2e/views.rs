//! SQL on FHIR `$viewdefinition-run` over HTTP on the medium set: rows of two views checked
//! against rows computed here from the raw NDJSON, the same rows as JSON, NDJSON and CSV,
//! posted resources, `_limit`, `patient`, and bad requests answered with an OperationOutcome.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::common::{Dataset, TestServer, assert_outcome, body_json, medium, test_export_config};

fn patient_view() -> Value {
    json!({
        "resourceType": "ViewDefinition",
        "name": "patient_demographics",
        "status": "active",
        "resource": "Patient",
        "select": [
            {"column": [
                {"name": "id", "path": "getResourceKey()"},
                {"name": "gender", "path": "gender"},
                {"name": "birth_date", "path": "birthDate"}
            ]},
            {"column": [{"name": "family", "path": "name.where(use = 'official').family.first()"}]}
        ]
    })
}

fn observation_view() -> Value {
    json!({
        "resourceType": "ViewDefinition",
        "name": "observations",
        "status": "active",
        "resource": "Observation",
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()"},
            {"name": "code", "path": "code.coding.first().code"},
            {"name": "value", "path": "value.ofType(Quantity).value"},
            {"name": "unit", "path": "value.ofType(Quantity).unit"},
            {"name": "effective", "path": "effective.ofType(dateTime)"},
            {"name": "subject", "path": "subject.getReferenceKey(Patient)"}
        ]}]
    })
}

fn resources(dataset: &Dataset, type_name: &str) -> Vec<Value> {
    dataset.lines[type_name].iter().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The patient view's rows computed from the raw resources, as JSON text (comparable in sets).
fn expected_patients(patients: &[Value]) -> BTreeSet<String> {
    patients
        .iter()
        .map(|p| {
            let family = p["name"]
                .as_array()
                .and_then(|names| names.iter().find(|n| n["use"] == "official"))
                .and_then(|n| n.get("family"))
                .cloned()
                .unwrap_or(Value::Null);
            json!({"id": p["id"], "gender": p["gender"], "birth_date": p["birthDate"], "family": family})
                .to_string()
        })
        .collect()
}

fn expected_observations(observations: &[Value], subject: Option<&str>) -> BTreeSet<String> {
    observations
        .iter()
        .filter(|o| subject.is_none_or(|s| o["subject"]["reference"] == format!("Patient/{s}")))
        .map(|o| {
            let quantity = o.get("valueQuantity");
            let subject = o["subject"]["reference"]
                .as_str()
                .and_then(|r| r.strip_prefix("Patient/"))
                .map_or(Value::Null, |id| json!(id));
            json!({
                "id": o["id"],
                "code": o["code"]["coding"][0]["code"],
                "value": quantity.map_or(Value::Null, |q| q["value"].clone()),
                "unit": quantity.map_or(Value::Null, |q| q["unit"].clone()),
                "effective": o.get("effectiveDateTime").cloned().unwrap_or(Value::Null),
                "subject": subject,
            })
            .to_string()
        })
        .collect()
}

async fn run(server: &TestServer, parameters: Value) -> reqwest::Response {
    server
        .client
        .post(server.url("$viewdefinition-run"))
        .header("content-type", "application/fhir+json")
        .body(parameters.to_string())
        .send()
        .await
        .unwrap()
}

fn parameters(view: &Value, format: &str, extra: &[Value]) -> Value {
    let mut list = vec![
        json!({"name": "viewResource", "resource": view}),
        json!({"name": "_format", "valueCode": format}),
    ];
    list.extend(extra.iter().cloned());
    json!({"resourceType": "Parameters", "parameter": list})
}

/// Rows of a JSON, NDJSON or CSV answer as JSON object texts, CSV cells read back as strings
/// (so CSV is compared after turning the expected values into their CSV text).
async fn rows(response: reqwest::Response, format: &str) -> Vec<Value> {
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    let text = response.text().await.unwrap();
    match format {
        "json" => {
            assert_eq!(content_type, "application/json");
            serde_json::from_str::<Vec<Value>>(&text).unwrap()
        }
        "ndjson" => {
            assert_eq!(content_type, "application/x-ndjson");
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
        }
        _ => {
            assert!(content_type.starts_with("text/csv"), "{content_type}");
            let mut reader = csv_lines(&text).into_iter();
            let header = reader.next().unwrap();
            reader
                .map(|cells| {
                    let object: serde_json::Map<String, Value> = header
                        .iter()
                        .zip(cells)
                        .map(|(h, c)| {
                            (h.clone(), if c.is_empty() { Value::Null } else { json!(c) })
                        })
                        .collect();
                    Value::Object(object)
                })
                .collect()
        }
    }
}

/// The rows of one run as a set of JSON texts.
async fn row_set(server: &TestServer, parameters: Value, format: &str) -> BTreeSet<String> {
    rows(run(server, parameters).await, format).await.iter().map(Value::to_string).collect()
}

/// A small RFC 4180 reader: quoted fields with doubled quotes and embedded line breaks.
fn csv_lines(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    rows
}

/// A value as CSV renders it, read back as text.
fn as_csv_cell(value: &Value) -> Value {
    match value {
        Value::Null => Value::Null,
        Value::String(s) if s.is_empty() => Value::Null,
        Value::String(s) => json!(s),
        other => json!(other.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_run_on_the_server_gives_exactly_the_rows_computed_from_the_raw_data() {
    let dataset = medium();
    let server = TestServer::start_loaded(dataset, test_export_config()).await;
    let patients = resources(dataset, "Patient");
    let observations = resources(dataset, "Observation");
    assert!(observations.len() > MAX_ROWS, "the medium set needs more than one run");

    let want = expected_patients(&patients);
    let got = row_set(&server, parameters(&patient_view(), "json", &[]), "json").await;
    assert_eq!(got, want, "Patient rows");
    let ndjson = row_set(&server, parameters(&patient_view(), "ndjson", &[]), "ndjson").await;
    assert_eq!(ndjson, want, "NDJSON gives the same rows");
    let csv = row_set(&server, parameters(&patient_view(), "csv", &[]), "csv").await;
    let want_csv: BTreeSet<String> = want
        .iter()
        .map(|row| {
            let row: serde_json::Map<String, Value> = serde_json::from_str(row).unwrap();
            Value::Object(row.iter().map(|(k, v)| (k.clone(), as_csv_cell(v))).collect())
                .to_string()
        })
        .collect();
    assert_eq!(csv, want_csv, "CSV gives the same rows");

    // Observations: more than one run holds. A run without `_limit` stops at the most rows a
    // run gives, each of them right; one run per patient gives them all.
    let want = expected_observations(&observations, None);
    let got = row_set(&server, parameters(&observation_view(), "ndjson", &[]), "ndjson").await;
    assert_eq!(got.len(), MAX_ROWS);
    assert!(got.is_subset(&want), "Observation rows");
    let mut all = BTreeSet::new();
    for patient in &patients {
        let reference = format!("Patient/{}", patient["id"].as_str().unwrap());
        let extra = [json!({"name": "patient", "valueReference": {"reference": reference}})];
        let rows =
            rows(run(&server, parameters(&observation_view(), "ndjson", &extra)).await, "ndjson")
                .await;
        for row in rows {
            assert!(all.insert(row.to_string()), "a row twice: {row}");
        }
    }
    assert_eq!(all, want, "Observation rows, patient by patient");

    // One patient's compartment; a limit; resources posted with the view instead of the store.
    let patient = patients[0]["id"].as_str().unwrap();
    let extra =
        [json!({"name": "patient", "valueReference": {"reference": format!("Patient/{patient}")}})];
    let got = row_set(&server, parameters(&observation_view(), "json", &extra), "json").await;
    assert_eq!(got, expected_observations(&observations, Some(patient)), "one patient's rows");
    let limited = rows(
        run(
            &server,
            parameters(
                &observation_view(),
                "json",
                &[json!({"name": "_limit", "valueInteger": 7})],
            ),
        )
        .await,
        "json",
    )
    .await;
    assert_eq!(limited.len(), 7);
    let posted: Vec<Value> = patients[..3]
        .iter()
        .map(|p| json!({"name": "resource", "resource": p}))
        .chain([json!({"name": "resource", "resource": observations[0]})])
        .collect();
    let got = row_set(&server, parameters(&patient_view(), "json", &posted), "json").await;
    assert_eq!(got, expected_patients(&patients[..3]), "posted resources, of the view's type only");
}

/// The most rows one run answers (the server's documented bound).
const MAX_ROWS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_view_runs_get_an_operation_outcome() {
    let server = TestServer::start().await;
    let bad_name = json!({"resourceType": "ViewDefinition", "resource": "Patient", "status": "active",
        "select": [{"column": [{"name": "bad name!", "path": "id"}]}]});
    let bad_function = json!({"resourceType": "ViewDefinition", "resource": "Patient", "status": "active",
        "select": [{"column": [{"name": "x", "path": "nosuchfunction()"}]}]});
    let cases: Vec<(Value, u16)> = vec![
        (parameters(&bad_name, "json", &[]), 400),
        (parameters(&bad_function, "json", &[]), 400),
        (parameters(&patient_view(), "parquet", &[]), 400),
        (parameters(&patient_view(), "json", &[json!({"name": "_limit", "valueInteger": 0})]), 400),
        (parameters(&patient_view(), "json", &[json!({"name": "bogus", "valueString": "x"})]), 400),
        (
            json!({"resourceType": "Parameters", "parameter": [{"name": "viewReference", "valueReference": {"reference": "ViewDefinition/x"}}]}),
            400,
        ),
        (json!({"resourceType": "Parameters", "parameter": []}), 400),
        (json!({"resourceType": "Patient"}), 400),
    ];
    for (body, want) in cases {
        let response = run(&server, body).await;
        let status = response.status().as_u16();
        let outcome = body_json(response).await;
        assert_outcome(status, want, &outcome);
    }
    let response = server
        .client
        .post(server.url("$viewdefinition-run"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_outcome(status, 415, &body_json(response).await);
}
