//! SQL on FHIR `$viewdefinition-run` over HTTP on the medium set: rows of two views checked
//! against rows computed here from the raw NDJSON, the same rows as JSON, NDJSON and CSV,
//! posted resources, `_limit`, `patient`, `group`, and bad requests answered with an
//! OperationOutcome.

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
            csv_objects(&text)
        }
    }
}

/// The rows of one run as a set of JSON texts.
async fn row_set(server: &TestServer, parameters: Value, format: &str) -> BTreeSet<String> {
    rows(run(server, parameters).await, format).await.iter().map(Value::to_string).collect()
}

/// The rows of a CSV text with a header line, as JSON objects of strings (null for empty).
fn csv_objects(text: &str) -> Vec<Value> {
    let mut lines = csv_lines(text).into_iter();
    let header = lines.next().unwrap();
    lines
        .map(|cells| {
            let object: serde_json::Map<String, Value> = header
                .iter()
                .zip(cells)
                .map(|(h, c)| (h.clone(), if c.is_empty() { Value::Null } else { json!(c) }))
                .collect();
            Value::Object(object)
        })
        .collect()
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

    // `group`: the compartments of the Groups' patient members. The medium set's Group has every
    // patient; a second one, stored here, has three of them and one that is inactive.
    let group_of =
        |id: &str| json!({"name": "group", "valueReference": {"reference": format!("Group/{id}")}});
    let id_of = |p: &Value| p["id"].as_str().unwrap().to_owned();
    let small: Vec<String> = patients[5..8].iter().map(id_of).collect();
    let mut member: Vec<Value> =
        small.iter().map(|id| json!({"entity": {"reference": format!("Patient/{id}")}})).collect();
    member.push(json!({"entity": {"reference": format!("Patient/{}", id_of(&patients[9]))}, "inactive": true}));
    let group = json!({"resourceType": "Group", "id": "three", "type": "person", "actual": true, "member": member});
    let (status, _, _) =
        server.send_json(reqwest::Method::PUT, "Group/three", &group.to_string()).await;
    assert_eq!(status, 201, "store Group/three");
    let in_small: Vec<Value> =
        patients.iter().filter(|p| small.contains(&id_of(p))).cloned().collect();
    let got =
        row_set(&server, parameters(&patient_view(), "json", &[group_of("three")]), "json").await;
    assert_eq!(got, expected_patients(&in_small), "the Group's active members");
    let want: BTreeSet<String> =
        small.iter().flat_map(|id| expected_observations(&observations, Some(id))).collect();
    let got =
        row_set(&server, parameters(&observation_view(), "ndjson", &[group_of("three")]), "ndjson")
            .await;
    assert_eq!(got, want, "the members' Observations");
    // Two Groups: their union (here, every patient); with `patient`: that patient if a member.
    let everyone = dataset.lines["Group"][0].clone();
    let everyone =
        serde_json::from_str::<Value>(&everyone).unwrap()["id"].as_str().unwrap().to_owned();
    let got = row_set(
        &server,
        parameters(&patient_view(), "json", &[group_of("three"), group_of(&everyone)]),
        "json",
    )
    .await;
    assert_eq!(got, expected_patients(&patients), "two Groups");
    let as_patient = |id: &str| json!({"name": "patient", "valueReference": {"reference": format!("Patient/{id}")}});
    let got = row_set(
        &server,
        parameters(&observation_view(), "json", &[group_of("three"), as_patient(&small[1])]),
        "json",
    )
    .await;
    assert_eq!(got, expected_observations(&observations, Some(&small[1])), "a member");
    let got = row_set(
        &server,
        parameters(
            &observation_view(),
            "json",
            &[group_of("three"), as_patient(&id_of(&patients[9]))],
        ),
        "json",
    )
    .await;
    assert!(got.is_empty(), "an inactive member is not a member: {got:?}");
    // A Group that does not exist; `group` with posted resources; `source`.
    let response = run(&server, parameters(&patient_view(), "json", &[group_of("nope")])).await;
    let status = response.status().as_u16();
    assert_outcome(status, 404, &body_json(response).await);
    let mut with_resource = posted[..1].to_vec();
    with_resource.push(group_of("three"));
    let response = run(&server, parameters(&patient_view(), "json", &with_resource)).await;
    let status = response.status().as_u16();
    assert_outcome(status, 400, &body_json(response).await);
    let source = json!({"name": "source", "valueString": "s3://elsewhere/data"});
    let response = run(&server, parameters(&patient_view(), "json", &[source])).await;
    let status = response.status().as_u16();
    let outcome = body_json(response).await;
    assert_outcome(status, 400, &outcome);
    assert!(outcome.to_string().contains("fetches no data from elsewhere"), "{outcome}");
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
            404,
        ),
        (
            json!({"resourceType": "Parameters", "parameter": [
                {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/x"}},
                {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/y"}}]}),
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

/// `$viewdefinition-export` kick-off parameters: `views` as (output name, view), the format,
/// and more parameters.
pub(crate) fn export_parameters(views: &[(&str, Value)], format: &str, extra: &[Value]) -> Value {
    let mut list: Vec<Value> = views
        .iter()
        .map(|(name, view)| {
            json!({"name": "view", "part": [
                {"name": "name", "valueString": name},
                {"name": "viewResource", "resource": view}
            ]})
        })
        .collect();
    list.push(json!({"name": "_format", "valueCode": format}));
    list.extend(extra.iter().cloned());
    json!({"resourceType": "Parameters", "parameter": list})
}

/// `POST [base]/$viewdefinition-export` with `parameters`, as an asynchronous request.
async fn post_view_export(
    http: &reqwest::Client,
    base: &str,
    parameters: &Value,
) -> reqwest::Response {
    http.post(format!("{base}/$viewdefinition-export"))
        .header("content-type", "application/fhir+json")
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .body(parameters.to_string())
        .send()
        .await
        .unwrap()
}

/// Kicks off a view export at `base`; its status URL.
pub(crate) async fn kick_view_export(
    http: &reqwest::Client,
    base: &str,
    parameters: &Value,
) -> String {
    let response = post_view_export(http, base, parameters).await;
    let status = response.status().as_u16();
    let location =
        response.headers().get("content-location").map(|v| v.to_str().unwrap().to_owned());
    let body = body_json(response).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["resourceType"], "Parameters");
    assert_eq!(body["parameter"][1]["valueCode"], "accepted", "{body}");
    let location = location.unwrap();
    assert!(location.ends_with(body["parameter"][0]["valueString"].as_str().unwrap()));
    location
}

/// Polls a view export's status as Retry-After says until the 303, follows it, and returns the
/// result `Parameters` (with `client`, which must not follow redirects itself).
pub(crate) async fn view_export_result(http: &reqwest::Client, status_url: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let result_url = loop {
        let response = http.get(status_url).send().await.unwrap();
        match response.status().as_u16() {
            303 => break response.headers()["location"].to_str().unwrap().to_owned(),
            202 => {
                let retry: u64 =
                    response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(response.headers().contains_key("x-progress"));
                let body = body_json(response).await;
                assert_eq!(body["resourceType"], "Parameters", "{body}");
                tokio::time::sleep(std::time::Duration::from_secs(retry)).await;
            }
            other => panic!("status {other}: {}", body_json(response).await),
        }
        assert!(std::time::Instant::now() < deadline, "the view export did not finish");
    };
    let response = http.get(&result_url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers().contains_key("expires"));
    body_json(response).await
}

/// Each output's rows, by output name: NDJSON lines as JSON text, CSV rows as JSON objects of
/// strings (header checked to be each file's first line).
pub(crate) async fn view_export_rows(
    http: &reqwest::Client,
    result: &Value,
    format: &str,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out = std::collections::BTreeMap::new();
    for parameter in result["parameter"].as_array().unwrap() {
        if parameter["name"] != "output" {
            continue;
        }
        let parts = parameter["part"].as_array().unwrap();
        let name = parts[0]["valueString"].as_str().unwrap().to_owned();
        let rows: &mut Vec<String> = out.entry(name.clone()).or_default();
        for part in &parts[1..] {
            assert_eq!(part["name"], "location");
            let url = part["valueUri"].as_str().unwrap();
            assert!(
                url.contains(&format!("/{name}-")) && url.ends_with(&format!(".{format}")),
                "{url}"
            );
            let text = http.get(url).send().await.unwrap().text().await.unwrap();
            if format == "csv" {
                rows.extend(csv_objects(&text).iter().map(Value::to_string));
            } else {
                rows.extend(
                    text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap().to_string()),
                );
            }
        }
    }
    out
}

fn as_csv_rows(rows: &BTreeSet<String>) -> BTreeSet<String> {
    rows.iter()
        .map(|row| {
            let row: serde_json::Map<String, Value> = serde_json::from_str(row).unwrap();
            Value::Object(row.iter().map(|(k, v)| (k.clone(), as_csv_cell(v))).collect())
                .to_string()
        })
        .collect()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_export_writes_exactly_the_rows_of_each_view_as_csv_and_ndjson() {
    let dataset = medium();
    let server = TestServer::start_loaded(dataset, test_export_config()).await;
    let http = no_redirects();
    let patients = resources(dataset, "Patient");
    let observations = resources(dataset, "Observation");
    let views = [("patients", patient_view()), ("observations", observation_view())];
    let want_patients = expected_patients(&patients);
    let want_observations = expected_observations(&observations, None);

    // NDJSON: exactly the rows computed from the raw data, each once.
    let status =
        kick_view_export(&http, &server.base, &export_parameters(&views, "ndjson", &[])).await;
    let result = view_export_result(&http, &status).await;
    assert_eq!(result["parameter"][0]["name"], "exportId");
    let names: Vec<&str> = result["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "output")
        .map(|p| p["part"][0]["valueString"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["patients", "observations"], "one output per view, in request order");
    let rows = view_export_rows(&http, &result, "ndjson").await;
    let set = |name: &str| -> BTreeSet<String> { rows[name].iter().cloned().collect() };
    assert_eq!(rows["patients"].len(), patients.len(), "each Patient once");
    assert_eq!(set("patients"), want_patients);
    assert_eq!(rows["observations"].len(), observations.len(), "each Observation once");
    assert_eq!(set("observations"), want_observations);

    // CSV: the same rows, a header on every file.
    let tracking = json!({"name": "clientTrackingId", "valueString": "nightly-42"});
    let status =
        kick_view_export(&http, &server.base, &export_parameters(&views, "csv", &[tracking])).await;
    let result = view_export_result(&http, &status).await;
    assert!(
        result["parameter"].as_array().unwrap().iter().any(|p| p["valueString"] == "nightly-42")
    );
    let rows = view_export_rows(&http, &result, "csv").await;
    assert_eq!(
        rows["patients"].iter().cloned().collect::<BTreeSet<_>>(),
        as_csv_rows(&want_patients)
    );
    assert_eq!(rows["observations"].len(), observations.len());
    assert_eq!(
        rows["observations"].iter().cloned().collect::<BTreeSet<_>>(),
        as_csv_rows(&want_observations)
    );

    // One patient: that patient's rows only.
    let patient = patients[0]["id"].as_str().unwrap();
    let one =
        json!({"name": "patient", "valueReference": {"reference": format!("Patient/{patient}")}});
    let status =
        kick_view_export(&http, &server.base, &export_parameters(&views[1..], "ndjson", &[one]))
            .await;
    let rows = view_export_rows(&http, &view_export_result(&http, &status).await, "ndjson").await;
    assert_eq!(
        rows["observations"].iter().cloned().collect::<BTreeSet<_>>(),
        expected_observations(&observations, Some(patient))
    );

    // _since: only what changed after it.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut changed = observations[3].clone();
    changed["status"] = json!("amended");
    let id = changed["id"].as_str().unwrap().to_owned();
    let (code, _, _) = server
        .send_json(reqwest::Method::PUT, &format!("Observation/{id}"), &changed.to_string())
        .await;
    assert_eq!(code, 200);
    let since = json!({"name": "_since", "valueInstant": since});
    let status =
        kick_view_export(&http, &server.base, &export_parameters(&views, "ndjson", &[since])).await;
    let rows = view_export_rows(&http, &view_export_result(&http, &status).await, "ndjson").await;
    assert!(rows["patients"].is_empty(), "no Patient changed");
    assert_eq!(
        rows["observations"],
        vec![expected_observations(&[changed], None).into_iter().next().unwrap()]
    );

    // Cancel: 202, then the status URL is gone.
    let status =
        kick_view_export(&http, &server.base, &export_parameters(&views, "ndjson", &[])).await;
    let response = http.delete(&status).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let response = http.get(&status).send().await.unwrap();
    let code = response.status().as_u16();
    assert_outcome(code, 404, &body_json(response).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_view_exports_are_refused_before_any_job_exists() {
    let server = TestServer::start().await;
    let http = no_redirects();
    let bad_view = json!({"resourceType": "ViewDefinition", "resource": "Patient", "status": "active",
        "select": [{"column": [{"name": "x", "path": "name.family"}, {"name": "x", "path": "id"}]}]});
    let cases = [
        export_parameters(&[("bad", bad_view)], "ndjson", &[]),
        export_parameters(&[("a", patient_view()), ("a", patient_view())], "ndjson", &[]),
        export_parameters(&[("has space", patient_view())], "ndjson", &[]),
        export_parameters(&[("p", patient_view())], "json", &[]),
        export_parameters(&[("p", patient_view())], "xlsx", &[]),
        export_parameters(
            &[("p", patient_view())],
            "ndjson",
            &[json!({"name": "source", "valueString": "s3://x"})],
        ),
        json!({"resourceType": "Parameters", "parameter": [{"name": "_format", "valueCode": "csv"}]}),
        json!({"resourceType": "Parameters", "parameter": [{"name": "view", "part": [
            {"name": "viewResource", "resource": patient_view()},
            {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/p"}}]}]}),
    ];
    for parameters in cases {
        let response = post_view_export(&http, &server.base, &parameters).await;
        let code = response.status().as_u16();
        assert_outcome(code, 400, &body_json(response).await);
    }
    let (_, jobs) = server.get("BulkDataExport").await;
    assert_eq!(jobs["total"], 0, "no job was created: {jobs}");
    // A plain export's job is not a view export's.
    let response = http
        .get(server.url("$export?_type=Patient"))
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    let job = response.headers()["content-location"]
        .to_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let response =
        http.get(server.url(&format!("$viewdefinition-export/status/{job}"))).send().await.unwrap();
    let code = response.status().as_u16();
    assert_outcome(code, 404, &body_json(response).await);
}

/// Rows of a Parquet file as JSON objects (column name → value; nulls kept).
fn parquet_rows(bytes: bytes::Bytes) -> Vec<Value> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(bytes).unwrap();
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let names: Vec<String> = schema.columns().iter().map(|c| c.name().to_owned()).collect();
    reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            let row = row.unwrap();
            let mut object = serde_json::Map::new();
            for name in &names {
                object.insert(name.clone(), Value::Null);
            }
            for (name, field) in row.get_column_iter() {
                use parquet::record::Field;
                let value = match field {
                    Field::Null => Value::Null,
                    Field::Str(text) => json!(text),
                    Field::Long(n) => json!(n),
                    Field::Double(n) => json!(n),
                    Field::Bool(b) => json!(b),
                    other => panic!("a column of an unexpected Parquet type: {other:?}"),
                };
                object.insert(name.clone(), value);
            }
            Value::Object(object)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_view_export_reads_back_with_typed_columns_and_exactly_the_rows() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let dataset = medium();
    let server = TestServer::start_loaded(dataset, test_export_config()).await;
    let http = no_redirects();
    let observations = resources(dataset, "Observation");
    let mut typed = observation_view();
    let types = ["id", "code", "decimal", "string", "dateTime", "string"];
    for (column, type_name) in
        typed["select"][0]["column"].as_array_mut().unwrap().iter_mut().zip(types)
    {
        column["type"] = json!(type_name);
    }
    let views = [("patients", patient_view()), ("observations", typed)];
    let status =
        kick_view_export(&http, &server.base, &export_parameters(&views, "parquet", &[])).await;
    let result = view_export_result(&http, &status).await;
    let mut got: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    let mut count = 0;
    for parameter in
        result["parameter"].as_array().unwrap().iter().filter(|p| p["name"] == "output")
    {
        let parts = parameter["part"].as_array().unwrap();
        let name = parts[0]["valueString"].as_str().unwrap().to_owned();
        for part in &parts[1..] {
            let url = part["valueUri"].as_str().unwrap();
            assert!(url.ends_with(".parquet"), "{url}");
            let bytes = http.get(url).send().await.unwrap().bytes().await.unwrap();
            assert_eq!(&bytes[..4], b"PAR1", "a Parquet file");
            // The schema: the view's columns, in order, typed from the view.
            let reader = SerializedFileReader::new(bytes.clone()).unwrap();
            let schema = reader.metadata().file_metadata().schema_descr_ptr();
            let physical: Vec<String> = schema
                .columns()
                .iter()
                .map(|c| format!("{}:{}", c.name(), c.physical_type()))
                .collect();
            if name == "observations" {
                assert_eq!(
                    physical,
                    [
                        "id:BYTE_ARRAY",
                        "code:BYTE_ARRAY",
                        "value:DOUBLE",
                        "unit:BYTE_ARRAY",
                        "effective:BYTE_ARRAY",
                        "subject:BYTE_ARRAY"
                    ]
                );
            }
            for row in parquet_rows(bytes) {
                count += 1;
                assert!(
                    got.entry(name.clone()).or_default().insert(row.to_string()),
                    "a row twice"
                );
            }
        }
    }
    assert_eq!(got["patients"], expected_patients(&resources(dataset, "Patient")));
    // Decimals come back as doubles.
    let want: BTreeSet<String> = expected_observations(&observations, None)
        .iter()
        .map(|row| {
            let mut row: Value = serde_json::from_str(row).unwrap();
            if let Some(value) = row["value"].as_f64() {
                row["value"] = json!(value);
            }
            row.to_string()
        })
        .collect();
    assert_eq!(got["observations"], want);
    assert_eq!(count, observations.len() + resources(dataset, "Patient").len());
}

/// `PUT [base]/ViewDefinition/{id}` with `view`; the status.
async fn put_view(server: &TestServer, id: &str, view: &Value) -> (u16, Value) {
    let mut view = view.clone();
    view["id"] = json!(id);
    let response = server
        .client
        .put(server.url(&format!("ViewDefinition/{id}")))
        .header("content-type", "application/fhir+json")
        .body(view.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, body_json(response).await)
}

fn reference_parameters(reference: &str, extra: &[Value]) -> Value {
    let mut list = vec![
        json!({"name": "viewReference", "valueReference": {"reference": reference}}),
        json!({"name": "_format", "valueCode": "json"}),
    ];
    list.extend(extra.iter().cloned());
    json!({"resourceType": "Parameters", "parameter": list})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_view_definitions_run_and_export_by_reference() {
    let dataset = medium();
    let server = TestServer::start_loaded(dataset, test_export_config()).await;
    let observations = resources(dataset, "Observation");
    let patients = resources(dataset, "Patient");
    let patient = patients[0]["id"].as_str().unwrap();
    let one_patient =
        [json!({"name": "patient", "valueReference": {"reference": format!("Patient/{patient}")}})];
    let want = expected_observations(&observations, Some(patient));

    // Stored like any resource; a ViewDefinition that could not run is refused when written.
    let mut view = observation_view();
    view["url"] = json!("http://example.org/views/observations");
    view["version"] = json!("1.0");
    let (status, stored) = put_view(&server, "obs", &view).await;
    assert_eq!(status, 201, "{stored}");
    assert_eq!(stored["meta"]["versionId"], "1");
    let mut bad = observation_view();
    bad["select"][0]["column"][0]["name"] = json!("bad name!");
    let (status, outcome) = put_view(&server, "bad", &bad).await;
    assert_outcome(status, 400, &outcome);
    assert!(outcome.to_string().contains("bad name!"), "{outcome}");
    let found = |query: &str| {
        let url = server.url(&format!("ViewDefinition?{query}"));
        let client = server.client.clone();
        async move {
            let bundle = body_json(client.get(url).send().await.unwrap()).await;
            assert_eq!(bundle["type"], "searchset", "{bundle}");
            bundle["entry"].as_array().map_or(0, Vec::len)
        }
    };
    assert_eq!(found("name=observations").await, 1);
    assert_eq!(found("url=http://example.org/views/observations").await, 1);
    assert_eq!(found("status=active").await, 1);
    assert_eq!(found("name=nothing").await, 0);
    // The CapabilityStatement's ViewDefinition entry, as SQL on FHIR's capability rules ask.
    let (_, metadata) = server.get("metadata").await;
    let entry = metadata["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "ViewDefinition")
        .unwrap()
        .clone();
    let operations: Vec<&str> = entry["operation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(operations, ["$viewdefinition-export", "$run"]);
    assert!(entry["searchParam"].as_array().unwrap().iter().any(|p| p["name"] == "url"));

    // `$viewdefinition-run` by reference, in each form the server resolves, and at the
    // instance level: the rows of the stored view.
    let absolute = format!("{}/ViewDefinition/obs", server.base);
    for reference in [
        "ViewDefinition/obs",
        "ViewDefinition/obs/_history/1",
        absolute.as_str(),
        "http://example.org/views/observations",
        "http://example.org/views/observations|1.0",
    ] {
        let got = row_set(&server, reference_parameters(reference, &one_patient), "json").await;
        assert_eq!(got, want, "rows by {reference}");
    }
    let instance = server
        .client
        .post(server.url("ViewDefinition/obs/$run"))
        .header("content-type", "application/fhir+json")
        .body(
            json!({"resourceType": "Parameters", "parameter": [
                {"name": "_format", "valueCode": "json"}, one_patient[0].clone()]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let got: BTreeSet<String> = rows(instance, "json").await.iter().map(Value::to_string).collect();
    assert_eq!(got, want, "rows of ViewDefinition/obs/$run");
    // With no body at all: the parameters in the query.
    let query = format!("ViewDefinition/obs/$run?_format=json&patient=Patient/{patient}");
    let bare = server.client.post(server.url(&query)).send().await.unwrap();
    let got: BTreeSet<String> = rows(bare, "json").await.iter().map(Value::to_string).collect();
    assert_eq!(got, want, "rows of ViewDefinition/obs/$run with the parameters in the query");

    // What does not resolve, or resolves to more than one view, is refused with the reason;
    // nothing is fetched from another server.
    let mut second = view.clone();
    second["version"] = json!("2.0");
    assert_eq!(put_view(&server, "obs2", &second).await.0, 201);
    for (reference, want_status, says) in [
        ("ViewDefinition/missing", 404, "missing"),
        ("ViewDefinition/obs/_history/9", 404, "9"),
        ("http://example.org/views/observations|3.0", 404, "3.0"),
        ("http://example.org/views/observations", 400, "2.0"),
        ("http://elsewhere.example/fhir/ViewDefinition/obs", 404, "elsewhere"),
        ("Patient/obs", 400, "Patient/obs"),
    ] {
        let response = run(&server, reference_parameters(reference, &[])).await;
        let status = response.status().as_u16();
        let outcome = body_json(response).await;
        assert_outcome(status, want_status, &outcome);
        assert!(outcome.to_string().contains(says), "{reference}: {outcome}");
    }
    let both = reference_parameters(
        "ViewDefinition/obs",
        &[json!({"name": "viewResource", "resource": observation_view()})],
    );
    let response = run(&server, both).await;
    let status = response.status().as_u16();
    assert_outcome(status, 400, &body_json(response).await);

    // `$viewdefinition-export` by reference: the output is named after the stored view, and
    // holds every Observation's row once.
    let http = no_redirects();
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "view", "part": [
            {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/obs"}}]},
        {"name": "_format", "valueCode": "ndjson"}]});
    let status = kick_view_export(&http, &server.base, &parameters).await;
    let result = view_export_result(&http, &status).await;
    let rows = view_export_rows(&http, &result, "ndjson").await;
    assert_eq!(rows.keys().collect::<Vec<_>>(), ["observations"]);
    assert_eq!(rows["observations"].len(), observations.len());
    assert_eq!(
        rows["observations"].iter().cloned().collect::<BTreeSet<_>>(),
        expected_observations(&observations, None)
    );
    let missing = json!({"resourceType": "Parameters", "parameter": [
        {"name": "view", "part": [
            {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/missing"}}]}]});
    let response = post_view_export(&http, &server.base, &missing).await;
    let status = response.status().as_u16();
    assert_outcome(status, 404, &body_json(response).await);
}
