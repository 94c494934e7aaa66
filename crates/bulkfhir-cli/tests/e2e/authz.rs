//! Authorization end to end, on the real binary with `--auth smart`: the token endpoint with
//! ES384 and RS384 keys (inline and at a `jwks_url` served here on loopback), every way a token
//! or an assertion can be wrong, scopes bounding REST, export and SQL on FHIR views (a granular
//! scope checked against the raw NDJSON), jobs only their owner reaches, and a restart that keeps
//! clients, the signing key and the replay cache.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use base64::Engine;
use bulkfhir_auth::{
    Algorithm, Grant, TokenSigner,
    keys::{ClientAssertion, sign_assertion},
};
use reqwest::{Client, Method, header::HeaderMap};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    auth::{bulkfhir, stdout},
    common::{BinaryServer, assert_outcome, body_json, small},
};

const FHIR_JSON: &str = "application/fhir+json";

pub(crate) fn succeeded(output: Output) -> String {
    stdout(&output)
}

/// A client key made by `bulkfhir client keygen`.
pub(crate) struct Key {
    alg: Algorithm,
    kid: String,
    pem: String,
    jwks: PathBuf,
}

pub(crate) fn keygen(dir: &Path, alg: Algorithm) -> Key {
    let name = if alg == Algorithm::RS384 { "rs384" } else { "es384" };
    let out = dir.join(format!("{name}-{}", uuid::Uuid::new_v4()));
    let text = succeeded(bulkfhir(
        &["client", "keygen", "--alg", name, "--out", out.to_str().unwrap()],
        dir,
    ));
    let kid = text.lines().next().unwrap().split(' ').nth(2).unwrap().to_owned();
    let pem = std::fs::read_to_string(out.join("private-key.pem")).unwrap();
    Key { alg, kid, pem, jwks: out.join("jwks.json") }
}

pub(crate) fn register(data: &Path, name: &str, keys: (&str, &str), scope: &str) -> String {
    let (flag, value) = keys;
    let args = ["client", "add", "--name", name, flag, value, "--scope", scope];
    succeeded(bulkfhir(&args, data)).trim().to_owned()
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

pub(crate) fn fresh_jti() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A well-formed assertion for `client` with `key`, valid `seconds` from now.
pub(crate) fn assertion(
    key: &Key,
    client: &str,
    token_url: &str,
    seconds: u64,
    jti: &str,
) -> String {
    let claims = ClientAssertion {
        alg: key.alg,
        kid: Some(&key.kid),
        client_id: client,
        token_url,
        now: now(),
        seconds,
        jti,
    };
    sign_assertion(&key.pem, &claims).unwrap()
}

/// An assertion with any header and claims, signed with `key` (PEM, or an HMAC secret).
fn crafted(
    alg: jsonwebtoken::Algorithm,
    kid: &str,
    jku: Option<&str>,
    key: &[u8],
    claims: Value,
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(kid.to_owned());
    header.jku = jku.map(str::to_owned);
    let key = match alg {
        jsonwebtoken::Algorithm::ES384 => jsonwebtoken::EncodingKey::from_ec_pem(key).unwrap(),
        jsonwebtoken::Algorithm::RS384 => jsonwebtoken::EncodingKey::from_rsa_pem(key).unwrap(),
        _ => jsonwebtoken::EncodingKey::from_secret(key),
    };
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn claims(client: &str, aud: &str, exp: u64) -> Value {
    json!({"iss": client, "sub": client, "aud": aud, "exp": exp, "jti": fresh_jti()})
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) async fn token_request(
    http: &Client,
    token_url: &str,
    form: &[(&str, &str)],
) -> (u16, HeaderMap, Value) {
    let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let response = http
        .post(token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.json().await.unwrap_or(Value::Null))
}

fn grant_form<'a>(assertion: &'a str, scope: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", assertion),
        ("scope", scope),
    ]
}

/// Asks for a token; asserts the RFC 6749 error, or returns the token response.
async fn expect_token_error(
    http: &Client,
    token_url: &str,
    assertion: &str,
    scope: &str,
    status: u16,
    error: &str,
) {
    let (got, headers, body) = token_request(http, token_url, &grant_form(assertion, scope)).await;
    assert_eq!((got, body["error"].as_str()), (status, Some(error)), "{body}");
    assert!(body["error_description"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    assert_eq!(headers["cache-control"], "no-store");
}

pub(crate) async fn get_token(
    http: &Client,
    token_url: &str,
    key: &Key,
    client: &str,
    scope: &str,
) -> Value {
    let signed = assertion(key, client, token_url, 240, &fresh_jti());
    let (status, headers, body) = token_request(http, token_url, &grant_form(&signed, scope)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["token_type"], "bearer");
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!((1..=300).contains(&expires_in), "{body}");
    body
}

/// One request with an optional bearer token.
pub(crate) async fn call(
    http: &Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> (u16, HeaderMap, Value) {
    let mut request = http.request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
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

pub(crate) async fn get(http: &Client, url: &str, token: Option<&str>) -> (u16, HeaderMap, Value) {
    call(http, Method::GET, url, token, &[], None).await
}

pub(crate) async fn kick(
    http: &Client,
    url: &str,
    token: &str,
    lenient: bool,
) -> (u16, HeaderMap, Value) {
    let prefer = if lenient { "respond-async, handling=lenient" } else { "respond-async" };
    call(http, Method::GET, url, Some(token), &[("accept", FHIR_JSON), ("prefer", prefer)], None)
        .await
}

/// Polls as `Retry-After` says until the manifest arrives.
pub(crate) async fn manifest(http: &Client, status_url: &str, token: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (status, headers, body) = get(http, status_url, Some(token)).await;
        match status {
            200 => return body,
            202 | 429 => {
                let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                tokio::time::sleep(Duration::from_secs(retry)).await;
            }
            other => panic!("status answered {other}: {body}"),
        }
        assert!(std::time::Instant::now() < deadline, "the export did not finish");
    }
}

pub(crate) async fn download_lines(http: &Client, url: &str, token: &str) -> Vec<Value> {
    let response = http.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "GET {url}");
    let text = response.text().await.unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every output resource of a manifest, by type.
pub(crate) async fn outputs(
    http: &Client,
    manifest: &Value,
    token: &str,
) -> std::collections::BTreeMap<String, Vec<Value>> {
    let mut by_type = std::collections::BTreeMap::<String, Vec<Value>>::new();
    for item in manifest["output"].as_array().unwrap() {
        let lines = download_lines(http, item["url"].as_str().unwrap(), token).await;
        by_type.entry(item["type"].as_str().unwrap().to_owned()).or_default().extend(lines);
    }
    by_type
}

pub(crate) fn ids(resources: &[Value]) -> BTreeSet<String> {
    resources.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
}

/// Whether an Observation has a category coding with code `laboratory` (any system): what
/// the token search `category=laboratory` means.
fn is_lab(observation: &Value) -> bool {
    observation["category"].as_array().into_iter().flatten().any(|c| {
        c["coding"].as_array().into_iter().flatten().any(|coding| coding["code"] == "laboratory")
    })
}

/// A loopback HTTP server that answers every request with `body`, counting them.
async fn serve_jwks(body: String) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = socket.read(&mut buffer).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, hits)
}

fn signing_secret(data: &Path) -> Vec<u8> {
    std::fs::read(data.join("token-signing.key")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dataset = small();
    succeeded(bulkfhir(&["load", dataset.dir.to_str().unwrap()], &data));

    // Three clients: `full` (ES384, inline JWKS), `lab` (RS384, JWKS at a URL; patients and
    // laboratory Observations only), `admin` (ES384, sees every job).
    let full_key = keygen(dir.path(), Algorithm::ES384);
    let lab_key = keygen(dir.path(), Algorithm::RS384);
    let admin_key = keygen(dir.path(), Algorithm::ES384);
    let (jwks_url, jwks_hits) = serve_jwks(std::fs::read_to_string(&lab_key.jwks).unwrap()).await;
    let full = register(&data, "full", ("--jwks", jwks_arg(&full_key)), "system/*.cruds");
    let lab = register(
        &data,
        "lab",
        ("--jwks-url", &jwks_url),
        "system/Patient.rs system/Observation.rs?category=laboratory",
    );
    let admin =
        register(&data, "admin", ("--jwks", jwks_arg(&admin_key)), "system/*.rs bulkfhir/admin");

    let server = BinaryServer::start_with(&data, None, &["--auth", "smart"]).await;
    let base = server.base.clone();
    let token_url = format!("{base}/auth/token");
    let http = Client::new();

    // Discovery needs no token and names the token endpoint.
    let (status, _, config) =
        get(&http, &format!("{base}/.well-known/smart-configuration"), None).await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["token_endpoint"], token_url.as_str());
    assert_eq!(config["token_endpoint_auth_methods_supported"], json!(["private_key_jwt"]));
    assert_eq!(
        config["token_endpoint_auth_signing_alg_values_supported"],
        json!(["RS384", "ES384"])
    );
    for capability in ["client-confidential-asymmetric", "permission-v1", "permission-v2"] {
        assert!(config["capabilities"].as_array().unwrap().contains(&json!(capability)));
    }
    let (status, _, metadata) = get(&http, &format!("{base}/metadata"), None).await;
    assert_eq!(status, 200);
    let security = &metadata["rest"][0]["security"];
    assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    assert_eq!(security["extension"][0]["extension"][0]["valueUri"], token_url.as_str());

    // The positive paths: ES384 with an inline JWKS, RS384 from a jwks_url.
    let full_token = get_token(&http, &token_url, &full_key, &full, "system/*.cruds").await;
    assert_eq!(full_token["scope"], "system/*.cruds");
    let full_token = full_token["access_token"].as_str().unwrap().to_owned();
    // A v1 request is answered in v1 words (what the SMART Bulk Data Tester compares).
    let v1 = get_token(&http, &token_url, &full_key, &full, "system/*.read").await;
    assert_eq!(v1["scope"], "system/*.read");
    let lab_token =
        get_token(&http, &token_url, &lab_key, &lab, "system/*.rs system/Condition.rs").await;
    // The intersection of what was asked and what is registered.
    assert_eq!(
        lab_token["scope"], "system/Patient.rs system/Observation.rs?category=laboratory",
        "{lab_token}"
    );
    let lab_token = lab_token["access_token"].as_str().unwrap().to_owned();
    assert!(jwks_hits.load(Ordering::SeqCst) >= 1, "the JWKS URL was fetched");
    let admin_token =
        get_token(&http, &token_url, &admin_key, &admin, "system/*.rs bulkfhir/admin").await;
    assert!(admin_token["scope"].as_str().unwrap().contains("bulkfhir/admin"));
    let admin_token = admin_token["access_token"].as_str().unwrap().to_owned();

    // Every bad assertion is refused with its RFC 6749 code.
    let scope = "system/*.rs";
    let exp = now() + 120;
    let header_none = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let alg_none =
        format!("{header_none}.{}.", b64(claims(&full, &token_url, exp).to_string().as_bytes()));
    expect_token_error(&http, &token_url, &alg_none, scope, 401, "invalid_client").await;
    let public_jwks = std::fs::read(&full_key.jwks).unwrap();
    let hs256 = crafted(
        jsonwebtoken::Algorithm::HS256,
        &full_key.kid,
        None,
        &public_jwks,
        claims(&full, &token_url, exp),
    );
    expect_token_error(&http, &token_url, &hs256, scope, 401, "invalid_client").await;
    let es = jsonwebtoken::Algorithm::ES384;
    let pem = full_key.pem.as_bytes();
    let wrong_aud = crafted(
        es,
        &full_key.kid,
        None,
        pem,
        claims(&full, "https://elsewhere.example/token", exp),
    );
    expect_token_error(&http, &token_url, &wrong_aud, scope, 401, "invalid_client").await;
    let far = crafted(es, &full_key.kid, None, pem, claims(&full, &token_url, now() + 3_600));
    expect_token_error(&http, &token_url, &far, scope, 401, "invalid_client").await;
    let expired = crafted(es, &full_key.kid, None, pem, claims(&full, &token_url, now() - 120));
    expect_token_error(&http, &token_url, &expired, scope, 401, "invalid_client").await;
    let unknown_kid = crafted(es, "no-such-kid", None, pem, claims(&full, &token_url, exp));
    expect_token_error(&http, &token_url, &unknown_kid, scope, 401, "invalid_client").await;
    let other_key =
        crafted(es, &full_key.kid, None, admin_key.pem.as_bytes(), claims(&full, &token_url, exp));
    expect_token_error(&http, &token_url, &other_key, scope, 401, "invalid_client").await;
    let unregistered = crafted(es, &full_key.kid, None, pem, claims("nobody", &token_url, exp));
    expect_token_error(&http, &token_url, &unregistered, scope, 401, "invalid_client").await;
    let jku = crafted(
        es,
        &full_key.kid,
        Some("https://keys.evil.example/jwks.json"),
        pem,
        claims(&full, &token_url, exp),
    );
    expect_token_error(&http, &token_url, &jku, scope, 401, "invalid_client").await;
    let once = assertion(&full_key, &full, &token_url, 120, &fresh_jti());
    let (status, _, _) = token_request(&http, &token_url, &grant_form(&once, scope)).await;
    assert_eq!(status, 200);
    expect_token_error(&http, &token_url, &once, scope, 401, "invalid_client").await;
    let fresh = assertion(&full_key, &full, &token_url, 120, &fresh_jti());
    expect_token_error(&http, &token_url, &fresh, "system/Nope.rs", 400, "invalid_scope").await;
    let fresh = assertion(&lab_key, &lab, &token_url, 120, &fresh_jti());
    expect_token_error(&http, &token_url, &fresh, "system/Condition.rs", 400, "invalid_scope")
        .await;
    let fresh = assertion(&full_key, &full, &token_url, 120, &fresh_jti());
    let mut form = grant_form(&fresh, scope);
    form[0].1 = "password";
    let (status, _, body) = token_request(&http, &token_url, &form).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unsupported_grant_type")));
    let response = http
        .post(&token_url)
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);

    // Bearer tokens: missing, malformed, expired, signed by another key, alg none, tampered.
    let probe = format!("{base}/Patient?_count=1");
    let secret = signing_secret(&data);
    let full_grant = Grant::parse("system/*.cruds").unwrap();
    let (expired_token, _) =
        TokenSigner::new(&secret).unwrap().issue(&full, &full_grant, now() - 400, 300).unwrap();
    let (foreign_token, _) =
        TokenSigner::new(&[9u8; 32]).unwrap().issue(&full, &full_grant, now(), 300).unwrap();
    let none_token = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(json!({"iss": "bulkfhir", "sub": full, "scope": "system/*.cruds", "iat": now(), "exp": now() + 300}).to_string().as_bytes())
    );
    let mut parts: Vec<String> = lab_token.split('.').map(str::to_owned).collect();
    parts[1] = b64(json!({"iss": "bulkfhir", "sub": lab, "scope": "system/*.cruds", "iat": now(), "exp": now() + 300}).to_string().as_bytes());
    let tampered = parts.join(".");
    let (status, headers, body) = get(&http, &probe, None).await;
    assert_outcome(status, 401, &body);
    assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    for bad in [
        "garbage",
        expired_token.as_str(),
        foreign_token.as_str(),
        none_token.as_str(),
        tampered.as_str(),
    ] {
        let (status, headers, body) = get(&http, &probe, Some(bad)).await;
        assert_outcome(status, 401, &body);
        assert!(headers["www-authenticate"].to_str().unwrap().contains("invalid_token"));
        // Nothing of the token comes back.
        assert!(!body.to_string().contains(bad), "{body}");
    }
    let response = http
        .get(&probe)
        .header("authorization", format!("Basic {}", b64(b"a:b")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let (status, _, _) = get(&http, &probe, Some(&full_token)).await;
    assert_eq!(status, 200);

    // Scopes bound REST: the lab client cannot touch Condition, write anything, or see a
    // non-laboratory Observation.
    let observations: Vec<Value> =
        dataset.lines["Observation"].iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let lab_ids: BTreeSet<String> =
        ids(&observations.iter().filter(|o| is_lab(o)).cloned().collect::<Vec<_>>());
    let other =
        observations.iter().find(|o| !is_lab(o)).unwrap()["id"].as_str().unwrap().to_owned();
    let one_lab = lab_ids.iter().next().unwrap().clone();
    assert!(lab_ids.len() > 10 && lab_ids.len() < observations.len());
    let (status, _, body) =
        get(&http, &format!("{base}/Condition?_count=1"), Some(&lab_token)).await;
    assert_outcome(status, 403, &body);
    let (status, _, body) =
        get(&http, &format!("{base}/Observation/{other}"), Some(&lab_token)).await;
    assert_outcome(status, 404, &body);
    let (status, _, _) =
        get(&http, &format!("{base}/Observation/{one_lab}"), Some(&lab_token)).await;
    assert_eq!(status, 200);
    let (status, _, body) =
        get(&http, &format!("{base}/Observation/{other}/_history"), Some(&lab_token)).await;
    assert_outcome(status, 404, &body);
    let mut searched = BTreeSet::new();
    let mut url = format!("{base}/Observation?_count=500");
    loop {
        let (status, _, page) = get(&http, &url, Some(&lab_token)).await;
        assert_eq!(status, 200, "{page}");
        for entry in page["entry"].as_array().unwrap() {
            searched.insert(entry["resource"]["id"].as_str().unwrap().to_owned());
        }
        match page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") {
            Some(next) => url = next["url"].as_str().unwrap().to_owned(),
            None => break,
        }
    }
    assert_eq!(
        searched, lab_ids,
        "a search under the granular scope lists the laboratory Observations"
    );
    let patient =
        json!({"resourceType": "Patient", "id": "authz-probe", "active": true}).to_string();
    let (status, _, body) = call(
        &http,
        Method::PUT,
        &format!("{base}/Patient/authz-probe"),
        Some(&lab_token),
        &[],
        Some(patient.clone()),
    )
    .await;
    assert_outcome(status, 403, &body);
    let some_patient = dataset.lines["Patient"][0].clone();
    let patient_id =
        serde_json::from_str::<Value>(&some_patient).unwrap()["id"].as_str().unwrap().to_owned();
    let (status, _, body) = call(
        &http,
        Method::DELETE,
        &format!("{base}/Patient/{patient_id}"),
        Some(&lab_token),
        &[],
        None,
    )
    .await;
    assert_outcome(status, 403, &body);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": "authz-probe"}, "request": {"method": "PUT", "url": "Patient/authz-probe"}}
    ]});
    let (status, _, body) =
        call(&http, Method::POST, &base, Some(&lab_token), &[], Some(bundle.to_string())).await;
    assert_outcome(status, 403, &body);
    // Nothing was written or deleted.
    let (status, _, _) =
        get(&http, &format!("{base}/Patient/authz-probe"), Some(&full_token)).await;
    assert_eq!(status, 404);
    let (status, _, _) =
        get(&http, &format!("{base}/Patient/{patient_id}"), Some(&full_token)).await;
    assert_eq!(status, 200);

    // Scopes bound export: a _type outside them is 403, or dropped and reported when lenient.
    let (status, _, body) =
        kick(&http, &format!("{base}/$export?_type=Condition"), &lab_token, false).await;
    assert_outcome(status, 403, &body);
    let (status, headers, body) =
        kick(&http, &format!("{base}/$export?_type=Condition,Patient"), &lab_token, true).await;
    assert_eq!(status, 202, "{body}");
    let lenient = manifest(&http, headers["content-location"].to_str().unwrap(), &lab_token).await;
    let types: BTreeSet<&str> =
        lenient["output"].as_array().unwrap().iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(types, BTreeSet::from(["Patient"]));
    let mut notes = String::new();
    for item in lenient["error"].as_array().unwrap() {
        for line in download_lines(&http, item["url"].as_str().unwrap(), &lab_token).await {
            notes.push_str(&line.to_string());
        }
    }
    assert!(notes.contains("Condition"), "the dropped type is reported: {notes}");

    // The granular scope narrows a whole-system export exactly as the raw data says.
    let (status, headers, body) = kick(&http, &format!("{base}/$export"), &lab_token, false).await;
    assert_eq!(status, 202, "{body}");
    let lab_status = headers["content-location"].to_str().unwrap().to_owned();
    let lab_manifest = manifest(&http, &lab_status, &lab_token).await;
    assert_eq!(lab_manifest["requiresAccessToken"], true);
    let exported = outputs(&http, &lab_manifest, &lab_token).await;
    assert_eq!(exported.keys().map(String::as_str).collect::<Vec<_>>(), ["Observation", "Patient"]);
    assert_eq!(ids(&exported["Observation"]), lab_ids, "exactly the laboratory Observations");
    assert_eq!(exported["Observation"].len(), lab_ids.len(), "each once");
    assert_eq!(exported["Patient"].len(), dataset.lines["Patient"].len());
    let lab_file = lab_manifest["output"][0]["url"].as_str().unwrap().to_owned();
    let (status, headers, body) = get(&http, &lab_file, None).await;
    assert_outcome(status, 401, &body);
    assert!(headers.contains_key("www-authenticate"));

    // Views see what the scope lets the client search: `$viewdefinition-run` and
    // `$viewdefinition-export` of an Observation view give exactly the laboratory ones, and a
    // view over a type outside the scope is refused.
    let view_of = |resource: &str| {
        json!({"resourceType": "ViewDefinition", "name": "ids", "status": "active",
            "resource": resource, "select": [{"column": [{"name": "id", "path": "getResourceKey()"}]}]})
    };
    let run_body = |resource: &str| {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "viewResource", "resource": view_of(resource)},
            {"name": "_format", "valueCode": "json"}]})
        .to_string()
    };
    let run_url = format!("{base}/$viewdefinition-run");
    let (status, _, rows) =
        call(&http, Method::POST, &run_url, Some(&lab_token), &[], Some(run_body("Observation")))
            .await;
    assert_eq!(status, 200, "{rows}");
    let run_ids: BTreeSet<String> =
        rows.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(run_ids, lab_ids, "a run sees the laboratory Observations only");
    let (status, _, body) =
        call(&http, Method::POST, &run_url, Some(&lab_token), &[], Some(run_body("Condition")))
            .await;
    assert_outcome(status, 403, &body);
    let (status, _, body) =
        call(&http, Method::POST, &run_url, None, &[], Some(run_body("Patient"))).await;
    assert_outcome(status, 401, &body);
    let mut bearer = reqwest::header::HeaderMap::new();
    bearer.insert("authorization", format!("Bearer {lab_token}").parse().unwrap());
    let lab_http = Client::builder()
        .default_headers(bearer)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let parameters =
        crate::views::export_parameters(&[("ids", view_of("Observation"))], "ndjson", &[]);
    let status_url = crate::views::kick_view_export(&lab_http, &base, &parameters).await;
    let result = crate::views::view_export_result(&lab_http, &status_url).await;
    let rows = crate::views::view_export_rows(&lab_http, &result, "ndjson").await;
    let export_ids: Vec<String> = rows["ids"]
        .iter()
        .map(|row| serde_json::from_str::<Value>(row).unwrap()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(export_ids.len(), lab_ids.len(), "each laboratory Observation once");
    assert_eq!(export_ids.into_iter().collect::<BTreeSet<_>>(), lab_ids, "a view export too");
    // Another client cannot follow the lab client's view export.
    let (status, _, body) = get(&http, &status_url, Some(&full_token)).await;
    assert_outcome(status, 404, &body);

    // Jobs belong to their client: another client gets 404 for everything of it.
    let (status, headers, body) = kick(
        &http,
        &format!("{base}/$export?_type=Patient&allowPartialManifests=true"),
        &full_token,
        false,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let full_status = headers["content-location"].to_str().unwrap().to_owned();
    let full_manifest = manifest(&http, &full_status, &full_token).await;
    let job_id = full_status.rsplit('/').next().unwrap().to_owned();
    let full_file = full_manifest["output"][0]["url"].as_str().unwrap().to_owned();
    for url in [
        full_status.clone(),
        format!("{full_status}?page=1"),
        full_file.clone(),
        format!("{base}/BulkDataExport/{job_id}"),
    ] {
        let (status, _, body) = get(&http, &url, Some(&lab_token)).await;
        assert_outcome(status, 404, &body);
        assert!(!body.to_string().contains("forbidden"), "{body}");
    }
    let (status, _, body) =
        call(&http, Method::DELETE, &full_status, Some(&lab_token), &[], None).await;
    assert_outcome(status, 404, &body);
    let (status, _, search) = get(&http, &format!("{base}/BulkDataExport"), Some(&lab_token)).await;
    assert_eq!(status, 200);
    let seen: Vec<&str> = search["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert!(!seen.contains(&job_id.as_str()) && !seen.is_empty(), "{seen:?}");
    // The owner's own lab job, seen by the full client: 404 too (it is not an administrator).
    let (status, _, body) = get(&http, &lab_file, Some(&full_token)).await;
    assert_outcome(status, 404, &body);
    // An administrator sees every job.
    let (status, _, _) =
        get(&http, &format!("{base}/BulkDataExport/{job_id}"), Some(&admin_token)).await;
    assert_eq!(status, 200);
    let (status, _, search) =
        get(&http, &format!("{base}/BulkDataExport?_count=100"), Some(&admin_token)).await;
    assert_eq!(status, 200);
    assert!(search["entry"].as_array().unwrap().len() >= 3, "{search}");
    // The refused DELETE changed nothing: the job is still complete for its owner.
    let (status, _, again) = get(&http, &full_status, Some(&full_token)).await;
    assert_eq!(status, 200);
    assert_eq!(again["output"], full_manifest["output"]);

    // The export page: without a token it says how to give one; with the admin's token (in
    // the fragment, which the server never sees) it shows every job.
    let profile = tempfile::tempdir().unwrap();
    let page = format!("{base}/$export-jobs");
    let dom = crate::operations::chromium(&page, profile.path(), None);
    assert!(dom.contains("needs an access token"), "{dom}");
    let dom =
        crate::operations::chromium(&format!("{page}#token={admin_token}"), profile.path(), None);
    assert!(dom.contains(&format!("data-job-id=\"{job_id}\"")), "{dom}");
    assert!(!dom.contains(&admin_token), "the token does not stay in the page");

    // File names that climb out of the job folder: never served.
    let files = format!("{base}/$export-file/{job_id}");
    let node_id = std::fs::read_to_string(data.join("node-id")).unwrap();
    for name in [
        "..%2F..%2Fnode-id",
        "%2e%2e%2f%2e%2e%2fnode-id",
        "%2Fetc%2Fpasswd",
        "..",
        "%2e%2e",
        "..%5C..%5Cnode-id",
    ] {
        let (status, _, body) = get(&http, &format!("{files}/{name}"), Some(&full_token)).await;
        assert!(status == 404 || status == 400, "{name}: {status} {body}");
        let text = body.to_string();
        assert!(!text.contains(node_id.trim()) && !text.contains("root:"), "{name}: {body}");
    }
}

/// The path of a key's JWKS, as the `--jwks` argument.
pub(crate) fn jwks_arg(key: &Key) -> &str {
    key.jwks.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_clients_signing_key_and_replay_cache() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = keygen(dir.path(), Algorithm::ES384);
    let client = register(&data, "nightly", ("--jwks", key.jwks.to_str().unwrap()), "system/*.rs");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // As shipped: authorization is on without any flag.
    let server = BinaryServer::start_as_shipped(&data, Some(port)).await;
    let base = server.base.clone();
    let token_url = format!("{base}/auth/token");
    let http = Client::new();
    let probe = format!("{base}/Patient?_count=1");
    let (status, _, _) = get(&http, &probe, None).await;
    assert_eq!(status, 401, "a token is needed by default");
    let used = assertion(&key, &client, &token_url, 240, &fresh_jti());
    let (status, _, body) =
        token_request(&http, &token_url, &grant_form(&used, "system/*.rs")).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let secret = signing_secret(&data);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("token-signing.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the signing key is readable by its owner only");
    }
    drop(server);

    let server = BinaryServer::start_as_shipped(&data, Some(port)).await;
    assert_eq!(signing_secret(&data), secret, "the signing key survives the restart");
    let (status, _, body) = get(&http, &probe, Some(&token)).await;
    assert_eq!(status, 200, "a token issued before the restart still works: {body}");
    expect_token_error(&http, &token_url, &used, "system/*.rs", 401, "invalid_client").await;
    get_token(&http, &token_url, &key, &client, "system/*.rs").await;
    // A token that expires in a few seconds works until then, and not after.
    let grant = Grant::parse("system/*.rs").unwrap();
    let (short, _) =
        TokenSigner::new(&secret).unwrap().issue(&client, &grant, now() - 297, 300).unwrap();
    let (status, _, _) = get(&http, &probe, Some(&short)).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, _, body) = get(&http, &probe, Some(&short)).await;
    assert_outcome(status, 401, &body);
    // A removed client's tokens stop working (at once here: this one was never used, so no
    // registration check is cached).
    let leaving = register(&data, "leaving", ("--jwks", key.jwks.to_str().unwrap()), "system/*.rs");
    let token = get_token(&http, &token_url, &key, &leaving, "system/*.rs").await;
    succeeded(bulkfhir(&["client", "remove", &leaving], &data));
    let (status, _, body) = get(&http, &probe, token["access_token"].as_str()).await;
    assert_outcome(status, 401, &body);
    drop(server);

    // `--auth none` is refused off loopback without the loud flag.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .args(["serve", "--auth", "none", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--auth none"), "{refused:?}");
}

/// The README's "Securing it" walk-through, command for command: keygen, add, serve, `client
/// token`, then a kick-off, the manifest and a file with the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_ends_with_a_downloaded_export() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keys = dir.path().join("keys");
    succeeded(bulkfhir(&["client", "keygen", "--out", keys.to_str().unwrap()], &data));
    let jwks = keys.join("jwks.json");
    let id = succeeded(bulkfhir(
        &[
            "client",
            "add",
            "--name",
            "nightly",
            "--jwks",
            jwks.to_str().unwrap(),
            "--scope",
            "system/*.rs",
        ],
        &data,
    ))
    .trim()
    .to_owned();
    let patient = json!({"resourceType": "Patient", "id": "walk", "active": true});
    let ndjson = dir.path().join("patients.ndjson");
    std::fs::write(&ndjson, format!("{patient}\n")).unwrap();
    succeeded(bulkfhir(&["load", ndjson.to_str().unwrap()], &data));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}/fhir");
    let _server =
        BinaryServer::start_with(&data, Some(port), &["--auth", "smart", "--base-url", &base])
            .await;
    let key = keys.join("private-key.pem");
    let token = succeeded(bulkfhir(
        &[
            "client",
            "token",
            "--base-url",
            &base,
            "--client-id",
            &id,
            "--key",
            key.to_str().unwrap(),
        ],
        &data,
    ))
    .trim()
    .to_owned();
    let http = Client::new();
    let (status, headers, body) =
        kick(&http, &format!("{base}/$export?_type=Patient"), &token, false).await;
    assert_eq!(status, 202, "{body}");
    let manifest = manifest(&http, headers["content-location"].to_str().unwrap(), &token).await;
    assert_eq!(manifest["requiresAccessToken"], true);
    let lines = download_lines(&http, manifest["output"][0]["url"].as_str().unwrap(), &token).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["id"], "walk");
    // A wrong key is refused with the endpoint's reason.
    let other = dir.path().join("other");
    succeeded(bulkfhir(&["client", "keygen", "--out", other.to_str().unwrap()], &data));
    let refused = bulkfhir(
        &[
            "client",
            "token",
            "--base-url",
            &base,
            "--client-id",
            &id,
            "--key",
            other.join("private-key.pem").to_str().unwrap(),
        ],
        &data,
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("invalid_client"), "{refused:?}");
}
