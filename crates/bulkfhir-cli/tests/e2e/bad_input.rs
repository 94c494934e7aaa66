//! Every bad input gets a 4xx OperationOutcome and leaves the store unchanged.

use reqwest::Method;

use crate::common::{TestServer, assert_outcome, body_json};
use bulkfhir_server::ServerConfig;

async fn send_raw(
    server: &TestServer,
    method: Method,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let response = server
        .client
        .request(method, server.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, body_json(response).await)
}

#[tokio::test]
async fn malformed_and_misaddressed_resources_are_refused_and_nothing_is_stored() {
    let server =
        TestServer::start_with(ServerConfig { max_body_bytes: 4096, ..ServerConfig::default() })
            .await;
    let json = "application/fhir+json";
    let cases: Vec<(Method, &str, &str, Vec<u8>, u16)> = vec![
        (Method::POST, "Patient", json, b"{\"resourceType\":".to_vec(), 400),
        (Method::POST, "Patient", json, b"[1,2]".to_vec(), 400),
        (Method::POST, "Patient", json, b"\"just a string\"".to_vec(), 400),
        (Method::POST, "Patient", json, b"{\"resourceType\":\"Patient\"} trailing".to_vec(), 400),
        (Method::POST, "Patient", json, b"\xff\xfe".to_vec(), 400),
        (Method::POST, "Patient", json, b"".to_vec(), 400),
        (Method::POST, "Patient", json, b"{\"resourceType\":\"Nope\"}".to_vec(), 400),
        (Method::POST, "Patient", json, b"{\"resourceType\":\"Observation\"}".to_vec(), 400),
        (Method::POST, "Patient", json, b"{\"name\":[]}".to_vec(), 400),
        (Method::POST, "Nope", json, b"{\"resourceType\":\"Nope\"}".to_vec(), 404),
        (
            Method::PUT,
            "Patient/a",
            json,
            b"{\"resourceType\":\"Patient\",\"id\":\"b\"}".to_vec(),
            400,
        ),
        (Method::PUT, "Patient/a", json, b"{\"resourceType\":\"Patient\"}".to_vec(), 400),
        (
            Method::PUT,
            "Patient/bad$id",
            json,
            b"{\"resourceType\":\"Patient\",\"id\":\"bad$id\"}".to_vec(),
            400,
        ),
        (
            Method::PUT,
            "Patient/a",
            json,
            b"{\"resourceType\":\"Patient\",\"id\":\"a\",\"id\":\"a\"}".to_vec(),
            400,
        ),
        (
            Method::PUT,
            "Patient/a",
            json,
            b"{\"resourceType\":\"Patient\",\"id\":\"a\",\"meta\":3}".to_vec(),
            400,
        ),
        (
            Method::PUT,
            "Patient/a",
            "text/plain",
            b"{\"resourceType\":\"Patient\",\"id\":\"a\"}".to_vec(),
            415,
        ),
        (Method::PUT, "Patient/a", "application/x-www-form-urlencoded", b"a=b".to_vec(), 415),
        (
            Method::PUT,
            "Patient/a",
            json,
            format!("{{\"resourceType\":\"Patient\",\"id\":\"a\",\"x\":\"{}\"}}", "y".repeat(5000))
                .into_bytes(),
            413,
        ),
        (Method::PATCH, "Patient/a", json, b"{}".to_vec(), 405),
        (Method::GET, "Patient/a/_history/x", json, Vec::new(), 404),
        (Method::GET, "Patient?nope=x", json, Vec::new(), 400),
        (Method::GET, "Patient?birthdate=notadate", json, Vec::new(), 400),
        (Method::GET, "Observation?subject.name=x", json, Vec::new(), 400),
        (Method::GET, "Patient?_count=abc", json, Vec::new(), 400),
        (Method::GET, "Patient?_page=garbage", json, Vec::new(), 400),
        (Method::GET, "Patient/a", json, Vec::new(), 404),
        (Method::GET, "not/a/fhir/path/at/all", json, Vec::new(), 404),
        (Method::GET, "Patient/p1/Organization", json, Vec::new(), 400),
    ];
    for (method, path, content_type, body, expected) in cases {
        let (status, outcome) = send_raw(&server, method.clone(), path, content_type, body).await;
        assert!(
            status == expected,
            "{method} {path}: expected {expected}, got {status}: {outcome}"
        );
        assert_outcome(status, expected, &outcome);
    }
    let oversized_chunked = server
        .client
        .post(server.url("Patient"))
        .header("content-type", json)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(
            [vec![b' '; 3000], vec![b' '; 3000]].map(Ok::<_, std::io::Error>),
        )))
        .send()
        .await
        .unwrap();
    let status = oversized_chunked.status().as_u16();
    assert_outcome(status, 413, &body_json(oversized_chunked).await);
    let xml = server
        .client
        .get(server.url("metadata"))
        .header("accept", "application/fhir+xml")
        .send()
        .await
        .unwrap();
    let status = xml.status().as_u16();
    assert_outcome(status, 406, &body_json(xml).await);

    assert!(server.list_all("Patient").await.is_empty(), "nothing was stored");
    assert!(server.list_all("Observation").await.is_empty(), "nothing was stored");
}
