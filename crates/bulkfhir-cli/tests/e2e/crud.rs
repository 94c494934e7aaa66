//! Create, read, vread, update (If-Match), delete, history, metadata.

use reqwest::Method;
use serde_json::json;

use crate::common::{TestServer, assert_outcome};

#[tokio::test]
pub(crate) async fn metadata_describes_a_fhir_r4_server() {
    let server = TestServer::start().await;
    let (status, body) = server.get("metadata").await;
    assert_eq!(status, 200);
    assert_eq!(body["resourceType"], "CapabilityStatement");
    assert_eq!(body["fhirVersion"], "4.0.1");
    assert_eq!(body["implementation"]["url"], server.base);
    let resources = body["rest"][0]["resource"].as_array().unwrap();
    // The 146 R4 resource types, and SQL on FHIR's ViewDefinition.
    assert_eq!(resources.len(), 147);
    assert!(resources.iter().any(|r| r["type"] == "ViewDefinition"));
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let codes: Vec<&str> = patient["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"vread") && codes.contains(&"history-instance"));
    assert_eq!(body["rest"][0]["interaction"], json!([{"code": "transaction"}, {"code": "batch"}]));
    assert_eq!(
        body["rest"][0]["operation"][0]["definition"],
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
    );
    assert_eq!(
        patient["operation"][0]["definition"],
        "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
    );
    let observation = resources.iter().find(|r| r["type"] == "Observation").unwrap();
    let code = observation["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "code")
        .unwrap();
    assert_eq!(code["type"], "token", "the _typeFilter-usable search parameters are listed");
    let group = resources.iter().find(|r| r["type"] == "Group").unwrap();
    let names: Vec<&str> = group["operation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["export", "group-export"]);
}

#[tokio::test]
pub(crate) async fn a_resource_lives_through_create_update_delete_and_history() {
    let server = TestServer::start().await;
    let (status, headers, created) = server
        .send_json(Method::POST, "Patient", r#"{"resourceType":"Patient","id":"ignored","name":[{"family":"Smith"}],"multipleBirthInteger":2}"#)
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_ne!(id, "ignored", "create assigns the id");
    assert_eq!(created["meta"]["versionId"], "1");
    let location = headers["location"].to_str().unwrap();
    assert_eq!(location, format!("{}/Patient/{id}/_history/1", server.base));
    assert_eq!(headers["etag"], "W/\"1\"");
    assert!(headers.contains_key("last-modified"));

    let (status, read) = server.get(&format!("Patient/{id}")).await;
    assert_eq!((status, &read), (200, &created));

    let update = json!({"resourceType":"Patient","id":id,"name":[{"family":"Jones"}]}).to_string();
    let response = server
        .client
        .put(server.url(&format!("Patient/{id}")))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"1\"")
        .body(update.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let stale = server
        .client
        .put(server.url(&format!("Patient/{id}")))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"1\"")
        .body(update)
        .send()
        .await
        .unwrap();
    let status = stale.status().as_u16();
    assert_outcome(status, 412, &crate::common::body_json(stale).await);

    let (status, v1) = server.get(&format!("Patient/{id}/_history/1")).await;
    assert_eq!((status, v1["name"][0]["family"].as_str()), (200, Some("Smith")));
    let (status, v2) = server.get(&format!("Patient/{id}")).await;
    assert_eq!(
        (status, v2["meta"]["versionId"].as_str(), v2["name"][0]["family"].as_str()),
        (200, Some("2"), Some("Jones"))
    );

    let (status, _, deleted) = server.send_json(Method::DELETE, &format!("Patient/{id}"), "").await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["resourceType"], "OperationOutcome");
    let (status, gone) = server.get(&format!("Patient/{id}")).await;
    assert_outcome(status, 410, &gone);
    let (status, _, again) = server.send_json(Method::DELETE, &format!("Patient/{id}"), "").await;
    assert_eq!(status, 200, "deleting twice is fine: {again}");

    let (status, history) = server.get(&format!("Patient/{id}/_history")).await;
    assert_eq!(status, 200);
    assert_eq!(history["type"], "history");
    let methods: Vec<&str> = history["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["DELETE", "PUT", "POST"]);

    // An update brings it back as version 4 (201: created again).
    let (status, _, revived) = server
        .send_json(
            Method::PUT,
            &format!("Patient/{id}"),
            &json!({"resourceType":"Patient","id":id}).to_string(),
        )
        .await;
    assert_eq!((status, revived["meta"]["versionId"].as_str()), (201, Some("4")));
}

#[tokio::test]
pub(crate) async fn put_with_a_client_id_creates_and_prefer_minimal_returns_no_body() {
    let server = TestServer::start().await;
    let response = server
        .client
        .put(server.url("Organization/org-1"))
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .body(r#"{"resourceType":"Organization","id":"org-1","name":"Acme"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(response.headers()["etag"], "W/\"1\"");
    assert!(response.bytes().await.unwrap().is_empty());
    let (status, org) = server.get("Organization/org-1").await;
    assert_eq!((status, org["name"].as_str()), (200, Some("Acme")));
}

#[tokio::test]
pub(crate) async fn decimals_and_unicode_are_stored_exactly() {
    let server = TestServer::start().await;
    let body = r#"{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"Größe \"x\""},"valueQuantity":{"value":1.50,"unit":"kg"},"component":[{"valueQuantity":{"value":1e2}}]}"#;
    let (status, _, _) = server.send_json(Method::PUT, "Observation/o1", body).await;
    assert_eq!(status, 201);
    let text =
        server.client.get(server.url("Observation/o1")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(r#""valueQuantity":{"value":1.50,"unit":"kg"}"#), "{text}");
    assert!(text.contains(r#""value":1e2"#), "{text}");
    assert!(text.contains(r#""text":"Größe \"x\"""#), "{text}");
}

#[tokio::test]
pub(crate) async fn the_type_listing_pages_through_a_stable_snapshot() {
    let server = TestServer::start().await;
    for i in 0..25 {
        let (status, _, _) = server
            .send_json(
                Method::PUT,
                &format!("Condition/c{i}"),
                &format!(r#"{{"resourceType":"Condition","id":"c{i}"}}"#),
            )
            .await;
        assert_eq!(status, 201);
    }
    let (status, first) = server.get("Condition?_count=10").await;
    assert_eq!(status, 200);
    assert_eq!(first["entry"].as_array().unwrap().len(), 10);
    // A write after the first page does not show up in later pages of the same listing.
    server
        .send_json(Method::PUT, "Condition/late", r#"{"resourceType":"Condition","id":"late"}"#)
        .await;
    let mut ids: Vec<String> = first["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    let mut next = first["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .map(|l| l["url"].as_str().unwrap().to_owned());
    while let Some(url) = next {
        let page: serde_json::Value =
            server.client.get(&url).send().await.unwrap().json().await.unwrap();
        ids.extend(
            page["entry"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["resource"]["id"].as_str().unwrap().to_owned()),
        );
        next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 25);
    assert!(!ids.contains(&"late".to_owned()));
    assert_eq!(server.list_all("Condition").await.len(), 26);
}
