//! Transaction and batch Bundles.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestServer, assert_outcome};

async fn post_bundle(server: &TestServer, bundle: &Value) -> (u16, Value) {
    let (status, _, body) = server.send_json(Method::POST, "", &bundle.to_string()).await;
    (status, body)
}

#[tokio::test]
pub(crate) async fn a_transaction_assigns_ids_and_rewrites_urn_references() {
    let server = TestServer::start().await;
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:obs", "resource": {"resourceType": "Observation", "status": "final",
                "subject": {"reference": "urn:uuid:pat"}, "valueQuantity": {"value": 2.50}},
             "request": {"method": "POST", "url": "Observation"}},
            {"fullUrl": "urn:uuid:pat", "resource": {"resourceType": "Patient", "name": [{"family": "Urn"}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:org", "resource": {"resourceType": "Organization", "id": "org1"},
             "request": {"method": "PUT", "url": "Organization/org1"}},
            {"resource": {"resourceType": "Practitioner", "id": "pr1", "meta": {"profile": ["http://x"]},
                "extension": [{"url": "http://e", "valueReference": {"reference": "urn:uuid:org"}}]},
             "request": {"method": "PUT", "url": "Practitioner/pr1"}}
        ]
    });
    // Sent as text: a serde_json Value would turn the decimal 2.50 into 2.5 before it left.
    let text = bundle.to_string().replace(r#""value":2.5}"#, r#""value":2.50}"#);
    assert!(text.contains("2.50"));
    let (status, _, response) = server.send_json(Method::POST, "", &text).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["type"], "transaction-response");
    let entries = response["entry"].as_array().unwrap();
    let statuses: Vec<&str> =
        entries.iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["201 Created", "201 Created", "201 Created", "201 Created"]);
    let patient_location = entries[1]["response"]["location"].as_str().unwrap();
    let patient_id = patient_location.split('/').nth(1).unwrap();
    let obs_id = entries[0]["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap();

    let (status, obs) = server.get(&format!("Observation/{obs_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(obs["subject"]["reference"], format!("Patient/{patient_id}"));
    let text = server
        .client
        .get(server.url(&format!("Observation/{obs_id}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(r#""value":2.50"#), "decimals stay exact: {text}");
    let (_, practitioner) = server.get("Practitioner/pr1").await;
    assert_eq!(practitioner["extension"][0]["valueReference"]["reference"], "Organization/org1");
    assert_eq!(practitioner["meta"]["profile"][0], "http://x");

    let (status, compartment) = server.get(&format!("Patient/{patient_id}/Observation")).await;
    assert_eq!(status, 200);
    assert_eq!(compartment["entry"][0]["resource"]["id"], obs_id);
}

#[tokio::test]
pub(crate) async fn a_transaction_with_one_bad_entry_changes_nothing() {
    let server = TestServer::start().await;
    let good = |id: &str| json!({"resource": {"resourceType": "Patient", "id": id}, "request": {"method": "PUT", "url": format!("Patient/{id}")}});
    let bad_entries = vec![
        json!({"resource": {"resourceType": "Nope", "id": "x"}, "request": {"method": "PUT", "url": "Patient/x"}}),
        json!({"resource": {"resourceType": "Patient", "id": "y"}, "request": {"method": "PUT", "url": "Patient/z"}}),
        json!({"resource": {"resourceType": "Patient", "id": "y"}, "request": {"method": "PUT", "url": "Patient/y", "ifMatch": "W/\"3\""}}),
        json!({"resource": {"resourceType": "Patient"}, "request": {"method": "PATCH", "url": "Patient/y"}}),
        json!({"resource": {"resourceType": "Patient"}}),
        json!({"resource": {"resourceType": "Observation", "subject": {"reference": "urn:uuid:missing"}}, "request": {"method": "POST", "url": "Observation"}}),
        json!({"resource": {"resourceType": "Patient", "id": "a"}, "request": {"method": "PUT", "url": "Patient/a"}}),
        json!({"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient?identifier=x"}}),
        json!({"request": {"method": "PUT", "url": "Patient/q"}}),
    ];
    for (case, bad) in bad_entries.into_iter().enumerate() {
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [good("a"), good("b"), bad]});
        let (status, outcome) = post_bundle(&server, &bundle).await;
        let expected = if case == 2 { 412 } else { 400 };
        assert_outcome(status, expected, &outcome);
        assert_eq!(
            outcome["issue"][0]["expression"][0], "Bundle.entry[2]",
            "case {case}: {outcome}"
        );
    }
    assert!(
        server.list_all("Patient").await.is_empty(),
        "nothing of any failed transaction was stored"
    );
}

#[tokio::test]
pub(crate) async fn malformed_bundles_are_refused() {
    let server = TestServer::start().await;
    for body in [
        json!({"resourceType": "Patient"}),
        json!({"resourceType": "Bundle", "type": "collection", "entry": []}),
        json!({"resourceType": "Bundle"}),
        json!({"resourceType": "Bundle", "type": "transaction", "entry": {"not": "an array"}}),
        json!({"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": 5}}]}),
        json!([]),
    ] {
        let (status, outcome) = post_bundle(&server, &body).await;
        assert_outcome(status, 400, &outcome);
    }
}

#[tokio::test]
pub(crate) async fn a_batch_reports_each_entry_and_keeps_the_good_ones() {
    let server = TestServer::start().await;
    let bundle = json!({
        "resourceType": "Bundle", "type": "batch",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "a"}, "request": {"method": "PUT", "url": "Patient/a"}},
            {"resource": {"resourceType": "Nope"}, "request": {"method": "POST", "url": "Nope"}},
            {"resource": {"resourceType": "Patient", "id": "b"}, "request": {"method": "PUT", "url": "Patient/b", "ifMatch": "W/\"9\""}},
            {"request": {"method": "GET", "url": "Patient/a"}},
            {"request": {"method": "DELETE", "url": "Patient/zzz"}},
            {"request": {"method": "GET", "url": "Patient/missing"}}
        ]
    });
    let (status, response) = post_bundle(&server, &bundle).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["type"], "batch-response");
    let statuses: Vec<&str> = response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "400 Bad Request",
            "412 Precondition Failed",
            "200 OK",
            "200 OK",
            "404 Not Found"
        ]
    );
    assert_eq!(response["entry"][1]["response"]["outcome"]["resourceType"], "OperationOutcome");
    assert_eq!(response["entry"][3]["resource"]["id"], "a");
    let ids: Vec<String> = server
        .list_all("Patient")
        .await
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["a"]);
}

#[tokio::test]
pub(crate) async fn a_transaction_can_delete_and_read() {
    let server = TestServer::start().await;
    server.send_json(Method::PUT, "Patient/old", r#"{"resourceType":"Patient","id":"old"}"#).await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": "Patient/new"}},
        {"resource": {"resourceType": "Patient", "id": "new"}, "request": {"method": "PUT", "url": "Patient/new"}},
        {"request": {"method": "DELETE", "url": "Patient/old"}}
    ]});
    let (status, response) = post_bundle(&server, &bundle).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["entry"][0]["resource"]["id"], "new", "GET runs after the writes");
    let (status, gone) = server.get("Patient/old").await;
    assert_outcome(status, 410, &gone);
}
