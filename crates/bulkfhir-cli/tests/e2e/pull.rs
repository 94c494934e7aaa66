//! `bulkfhir pull`, the client, against bulkfhir's own server (directly, and through a loopback
//! proxy that counts requests and delivers files slowly, as a far server does) and against
//! loopback servers that misbehave.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

use crate::common::{BinaryServer, Dataset, body_json, bulkfhir_ok, medium};

/// Runs `bulkfhir pull ARGS` to the end.
async fn pull(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .arg("pull")
        .args(args)
        .output()
        .await
        .expect("run bulkfhir pull")
}

/// A resource with the server's `meta.versionId` and `meta.lastUpdated` taken out (and `meta`,
/// if nothing else was in it): what a pulled resource must equal of the loaded one.
fn without_server_meta(mut resource: Value) -> Value {
    if let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            resource.as_object_mut().unwrap().remove("meta");
        }
    }
    resource
}

/// The resources of every `*.ndjson` file directly in `out`, by type and id; a resource pulled
/// twice fails.
fn pulled(out: &Path) -> BTreeMap<String, BTreeMap<String, Value>> {
    let mut all: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for entry in std::fs::read_dir(out).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "ndjson") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let resource: Value = serde_json::from_str(line).unwrap();
            let (t, id) =
                (resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
            let previous = all
                .entry(t.to_owned())
                .or_default()
                .insert(id.to_owned(), without_server_meta(resource.clone()));
            assert!(previous.is_none(), "{t}/{id} pulled twice");
        }
    }
    all
}

fn expected(dataset: &Dataset) -> BTreeMap<String, BTreeMap<String, Value>> {
    dataset
        .lines
        .iter()
        .map(|(t, lines)| {
            let by_id = lines
                .iter()
                .map(|line| {
                    let resource: Value = serde_json::from_str(line).unwrap();
                    (resource["id"].as_str().unwrap().to_owned(), without_server_meta(resource))
                })
                .collect();
            (t.clone(), by_id)
        })
        .collect()
}

/// The real `bulkfhir serve` with authorization on, over `dataset` loaded with `bulkfhir load`,
/// small files; one client registered for everything, its key for the pulls, and a token of its
/// own for the tests' REST writes.
struct Authed {
    server: BinaryServer,
    data: std::path::PathBuf,
    id: String,
    key: std::path::PathBuf,
    token: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Authed {
    async fn start(dataset: &Dataset) -> Authed {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let keys = dir.path().join("keys");
        let data_arg = data.to_str().unwrap();
        bulkfhir_ok(&["client", "keygen", "--out", keys.to_str().unwrap()]);
        let jwks = keys.join("jwks.json");
        let id = bulkfhir_ok(&[
            "client",
            "add",
            "--data-dir",
            data_arg,
            "--name",
            "lake",
            "--jwks",
            jwks.to_str().unwrap(),
            "--scope",
            "system/*.cruds",
        ])
        .trim()
        .to_owned();
        bulkfhir_ok(&["load", "--data-dir", data_arg, dataset.dir.to_str().unwrap()]);
        let flags = [
            "--auth",
            "smart",
            "--export-file-resources",
            "700",
            "--export-key-range",
            "2000",
            "--export-poll-ms",
            "50",
        ];
        let server = BinaryServer::start_with(&data, None, &flags).await;
        let key = keys.join("private-key.pem");
        let token = bulkfhir_ok(&[
            "client",
            "token",
            "--base-url",
            &server.base,
            "--client-id",
            &id,
            "--key",
            key.to_str().unwrap(),
            "--scope",
            "system/*.cruds",
        ])
        .trim()
        .to_owned();
        Authed { server, data, id, key, token, http: reqwest::Client::new(), _dir: dir }
    }

    fn base(&self) -> &str {
        &self.server.base
    }

    /// `--client-id ID --key KEY`.
    fn key_args(&self) -> [&str; 4] {
        ["--client-id", &self.id, "--key", self.key.to_str().unwrap()]
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let url = format!("{}/{path}", self.base());
        let response = self.http.get(url).bearer_auth(&self.token).send().await.unwrap();
        (response.status().as_u16(), body_json(response).await)
    }

    async fn send_json(&self, method: reqwest::Method, path: &str, body: &str) -> u16 {
        let url = format!("{}/{path}", self.base());
        let mut request = self.http.request(method, url).bearer_auth(&self.token);
        if !body.is_empty() {
            request = request.header("content-type", "application/fhir+json").body(body.to_owned());
        }
        request.send().await.unwrap().status().as_u16()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_pull_of_medium_equals_the_loaded_data() {
    let dataset = medium();
    let server = Authed::start(dataset).await;
    let out = tempfile::tempdir().unwrap();
    let mut args = vec![server.base(), "--out", out.path().to_str().unwrap(), "--parallel", "3"];
    args.extend(server.key_args());
    let output = pull(&args).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(pulled(out.path()), expected(dataset), "every loaded resource, once, as loaded");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).unwrap()).unwrap();
    assert!(manifest["output"].as_array().unwrap().len() > 10, "many files");
    let state: Value =
        serde_json::from_slice(&std::fs::read(out.path().join(".bulkfhir-pull.json")).unwrap())
            .unwrap();
    assert_eq!(state["complete"], true);
    assert_eq!(state["last_transaction_time"], manifest["transactionTime"]);
    assert!(
        std::fs::read_dir(out.path())
            .unwrap()
            .all(|e| { !e.unwrap().file_name().to_string_lossy().ends_with(".part") })
    );
}

/// What the proxy saw: GETs by path.
#[derive(Default)]
struct Seen {
    requests: Mutex<BTreeMap<String, usize>>,
}

struct Proxy {
    upstream: String,
    client: reqwest::Client,
    seen: Seen,
}

/// Forwards every request to the real server; an export file's body arrives in two halves a
/// moment apart, as over a slow network.
async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    *proxy
        .seen
        .requests
        .lock()
        .unwrap()
        .entry(format!("{} {}", request.method(), request.uri().path()))
        .or_default() += 1;
    let mut builder =
        proxy.client.request(request.method().clone(), format!("{}{path}", proxy.upstream));
    for (name, value) in request.headers() {
        builder = builder.header(name, value);
    }
    let body = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap();
    let answer = builder.body(body).send().await.unwrap();
    let status = answer.status();
    let mut headers = HeaderMap::new();
    for (name, value) in answer.headers() {
        if name != header::TRANSFER_ENCODING {
            headers.insert(name.clone(), value.clone());
        }
    }
    let bytes = answer.bytes().await.unwrap();
    if !path.contains("$export-file") || bytes.len() < 2 {
        return (status, headers, bytes).into_response();
    }
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    let (first, rest) = (Bytes::copy_from_slice(first), Bytes::copy_from_slice(rest));
    let halves = futures::stream::unfold(0, move |step| {
        let (first, rest) = (first.clone(), rest.clone());
        async move {
            match step {
                0 => Some((Ok::<_, std::io::Error>(first), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    Some((Ok(rest), 2))
                }
                _ => None,
            }
        }
    });
    (status, headers, Body::from_stream(halves)).into_response()
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_killed_half_way_resumes_the_same_job_and_fetches_no_file_twice() {
    let dataset = medium();
    let server = Authed::start(dataset).await;
    let origin = server.base().trim_end_matches("/fhir").to_owned();
    let proxy =
        Arc::new(Proxy { upstream: origin, client: reqwest::Client::new(), seen: Seen::default() });
    let base = format!(
        "{}/fhir",
        serve(Router::new().fallback(forward).with_state(Arc::clone(&proxy))).await
    );
    let out = tempfile::tempdir().unwrap();
    let mut args = vec!["pull", &base, "--out", out.path().to_str().unwrap(), "--parallel", "1"];
    args.extend(server.key_args());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .args(&args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it while a file is half-way down, after a few are complete.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (done_before, part) = loop {
        let names: Vec<String> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let done = names.iter().filter(|n| n.ends_with(".ndjson")).count();
        let part = names.iter().find(|n| n.ends_with(".part")).cloned();
        if done >= 3
            && let Some(part) =
                part.filter(|p| std::fs::metadata(out.path().join(p)).is_ok_and(|m| m.len() > 0))
        {
            child.kill().unwrap();
            child.wait().unwrap();
            break (done, part);
        }
        assert!(child.try_wait().unwrap().is_none(), "the pull ended before it could be killed");
        assert!(std::time::Instant::now() < deadline, "the pull never got going");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let output = pull(&args[1..]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("resuming"));
    assert_eq!(pulled(out.path()), expected(dataset), "every loaded resource, once, as loaded");

    let requests = proxy.seen.requests.lock().unwrap().clone();
    let kickoffs = requests.get("GET /fhir/$export").copied().unwrap_or(0);
    assert_eq!(kickoffs, 1, "the rerun went on with the same job: {requests:?}");
    let files: Vec<(&String, &usize)> =
        requests.iter().filter(|(k, _)| k.contains("$export-file")).collect();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(files.len(), manifest["output"].as_array().unwrap().len());
    let twice: Vec<_> = files.iter().filter(|(_, n)| **n > 1).collect();
    // Only the file that was half-way down was asked for again (with Range, for the rest).
    assert!(
        twice.len() <= 1 && twice.iter().all(|(_, n)| **n == 2),
        "{twice:?} (part file {part}, {done_before} done)"
    );
}

/// A server that kicks off every export and then misbehaves in the way its path says.
async fn bad_server() -> String {
    async fn kickoff(
        State(origin): State<Arc<String>>,
        axum::extract::Path(case): axum::extract::Path<String>,
    ) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_LOCATION,
            HeaderValue::from_str(&format!("{origin}/{case}/status")).unwrap(),
        );
        (StatusCode::ACCEPTED, headers).into_response()
    }
    async fn status(
        State(origin): State<Arc<String>>,
        axum::extract::Path(case): axum::extract::Path<String>,
    ) -> Response {
        if case == "never" {
            return (
                StatusCode::ACCEPTED,
                [
                    (header::RETRY_AFTER, "1"),
                    (header::HeaderName::from_static("x-progress"), "forever"),
                ],
            )
                .into_response();
        }
        let url = if case == "relative" {
            "files/Patient.ndjson".to_owned()
        } else {
            format!("{origin}/{case}/file")
        };
        let manifest = json!({
            "transactionTime": "2026-01-01T00:00:00Z",
            "request": format!("{origin}/{case}/fhir/$export"),
            "requiresAccessToken": false,
            "output": [{"type": "Patient", "url": url, "count": 2}],
            "error": []
        });
        axum::Json(manifest).into_response()
    }
    async fn file(axum::extract::Path(case): axum::extract::Path<String>) -> Response {
        let ndjson = "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Patient\",\"id\":\"b\"}\n";
        match case.as_str() {
            "html" => {
                ([(header::CONTENT_TYPE, "text/html")], "<html><body>Please log in</body></html>")
                    .into_response()
            }
            "gzip" => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut encoder, ndjson.as_bytes()).unwrap();
                let mut gz = encoder.finish().unwrap();
                gz.truncate(gz.len() - 10);
                (
                    [
                        (header::CONTENT_ENCODING, "gzip"),
                        (header::CONTENT_TYPE, "application/fhir+ndjson"),
                    ],
                    gz,
                )
                    .into_response()
            }
            "fail" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
            _ => ([(header::CONTENT_TYPE, "application/fhir+ndjson")], ndjson).into_response(),
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = Arc::new(format!("http://{}", listener.local_addr().unwrap()));
    let router = Router::new()
        .route("/{case}/fhir/$export", get(kickoff))
        .route("/{case}/status", get(status))
        .route("/{case}/file", get(file))
        .with_state(Arc::clone(&origin));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    origin.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_server_gets_a_clear_message_and_nothing_half_written_looks_complete() {
    let origin = bad_server().await;
    for (case, message) in [
        ("relative", "not an absolute http(s) URL"),
        ("html", "not NDJSON"),
        ("gzip", "gzip stream is truncated"),
        ("fail", "kept failing"),
        ("never", "did not finish within 2 s"),
        ("fine", ""),
    ] {
        let out = tempfile::tempdir().unwrap();
        let output = pull(&[
            &format!("{origin}/{case}/fhir"),
            "--out",
            out.path().to_str().unwrap(),
            "--retries",
            "1",
            "--max-wait-secs",
            "2",
        ])
        .await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let complete: Vec<String> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".ndjson"))
            .collect();
        if case == "fine" {
            assert!(output.status.success(), "{stderr}");
            assert_eq!(complete, ["Patient.1.ndjson"]);
            continue;
        }
        assert_eq!(output.status.code(), Some(1), "{case}: {stderr}");
        assert!(stderr.contains(message), "{case}: {stderr}");
        assert!(complete.is_empty(), "{case}: {complete:?} looks complete");
    }
}

/// Every live resource of a bulkfhir store, by type and id, with its stored bytes.
async fn contents(data_dir: &Path) -> BTreeMap<(String, String), Vec<u8>> {
    use bulkfhir_store::{ResourceStore, ScanOptions};
    let store = bulkfhir_store_embedded::EmbeddedStore::open(data_dir).unwrap();
    let snapshot = store.snapshot().await.unwrap();
    let mut all = BTreeMap::new();
    for resource_type in bulkfhir_model::ResourceType::all() {
        let mut after = 0;
        loop {
            let page =
                store.scan(snapshot, resource_type, ScanOptions::live(after, 5000)).await.unwrap();
            for r in &page.resources {
                all.insert((r.resource_type.to_string(), r.id.to_string()), r.body.to_vec());
            }
            match page.next {
                Some(next) => after = next,
                None => break,
            }
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successive_since_last_pulls_keep_a_replica_equal_to_the_source() {
    let dataset = crate::common::small();
    let server = Authed::start(dataset).await;
    let (out, replica) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (out_arg, replica_arg) = (out.path().to_str().unwrap(), replica.path().to_str().unwrap());
    let mut args = vec![server.base(), "--out", out_arg, "--into", replica_arg];
    args.extend(server.key_args());
    let first = pull(&args).await;
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let source = contents(&server.data).await;
    assert_eq!(source.len(), dataset.count());
    assert!(contents(replica.path()).await == source, "the first pull makes an exact copy");

    let observations: Vec<String> = dataset.lines["Observation"]
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_str().unwrap().to_owned())
        .collect();
    let conditions: Vec<String> = dataset.lines["Condition"]
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_str().unwrap().to_owned())
        .collect();
    for round in 0..3_usize {
        // Updates (one resource twice), deletions, a resource created and deleted within the
        // round, and new resources.
        for id in &observations[round * 5..round * 5 + 5] {
            let (_, current) = server.get(&format!("Observation/{id}")).await;
            let mut changed = current.clone();
            changed["status"] = json!(if round % 2 == 0 { "amended" } else { "final" });
            let path = format!("Observation/{id}");
            let status = server.send_json(reqwest::Method::PUT, &path, &changed.to_string()).await;
            assert_eq!(status, 200);
        }
        let twice = &observations[round * 5];
        let (_, again) = server.get(&format!("Observation/{twice}")).await;
        let mut again = again.clone();
        again["issued"] = json!(format!("2026-0{}-01T00:00:00Z", round + 1));
        let path = format!("Observation/{twice}");
        assert_eq!(server.send_json(reqwest::Method::PUT, &path, &again.to_string()).await, 200);
        for id in &conditions[round * 3..round * 3 + 3] {
            let status =
                server.send_json(reqwest::Method::DELETE, &format!("Condition/{id}"), "").await;
            assert!(status == 200 || status == 204, "{status}");
        }
        let brief = format!("Patient/brief-{round}");
        let body = json!({"resourceType": "Patient", "id": format!("brief-{round}")}).to_string();
        assert_eq!(server.send_json(reqwest::Method::PUT, &brief, &body).await, 201);
        assert!(matches!(server.send_json(reqwest::Method::DELETE, &brief, "").await, 200 | 204));
        for i in 0..2 {
            let id = format!("new-{round}-{i}");
            let body = json!({"resourceType": "Patient", "id": id, "active": true}).to_string();
            let status =
                server.send_json(reqwest::Method::PUT, &format!("Patient/{id}"), &body).await;
            assert_eq!(status, 201);
        }

        let next = pull(&[args.clone(), vec!["--since-last"]].concat()).await;
        let stdout = String::from_utf8_lossy(&next.stdout);
        assert!(next.status.success(), "{}", String::from_utf8_lossy(&next.stderr));
        assert!(stdout.contains("applied 7 resources and 4 deletions"), "round {round}: {stdout}");
        let source = contents(&server.data).await;
        let copy = contents(replica.path()).await;
        let differ: Vec<_> =
            source.keys().chain(copy.keys()).filter(|k| source.get(*k) != copy.get(*k)).collect();
        assert!(differ.is_empty(), "round {round}: the replica differs at {differ:?}");
    }
}

/// With authorization on: the client finds the token endpoint, signs its assertion, sends the
/// token with every request, and downloads files that need it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_with_smart_backend_services_gets_everything() {
    let dataset = crate::common::small();
    let server = Authed::start(dataset).await;
    let dir = tempfile::tempdir().unwrap();
    let anonymous =
        pull(&[server.base(), "--out", dir.path().join("refused").to_str().unwrap()]).await;
    assert!(!anonymous.status.success());
    assert!(String::from_utf8_lossy(&anonymous.stderr).contains("401"), "{anonymous:?}");
    let out = dir.path().join("out");
    let mut args = vec![server.base(), "--out", out.to_str().unwrap()];
    args.extend(server.key_args());
    let output = pull(&args).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["requiresAccessToken"], true);
    assert_eq!(pulled(&out), expected(dataset));

    // The same key as a private JWK (as other tools keep keys): d from the PKCS#8 key (an
    // RFC 5915 ECPrivateKey inside), x, y and kid from the registered JWKS.
    let pem = std::fs::read_to_string(&server.key).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
    // PKCS#8: SEQUENCE { INTEGER, SEQUENCE, OCTET STRING { SEQUENCE { INTEGER, OCTET STRING d … } } }
    let children = |der: &[u8]| -> Vec<Vec<u8>> {
        let (mut rest, mut out) = (der, Vec::new());
        while rest.len() >= 2 {
            let (len, header) = if rest[1] < 0x80 {
                (usize::from(rest[1]), 2)
            } else {
                let n = usize::from(rest[1] & 0x7f);
                (rest[2..2 + n].iter().fold(0, |a, b| a * 256 + usize::from(*b)), 2 + n)
            };
            out.push(rest[header..header + len].to_vec());
            rest = &rest[header + len..];
        }
        out
    };
    let pkcs8 = children(&children(&der)[0]);
    let ec = children(&children(&pkcs8[2])[0]);
    let jwks = server.key.with_file_name("jwks.json");
    let mut jwk: Value =
        serde_json::from_slice::<Value>(&std::fs::read(&jwks).unwrap()).unwrap()["keys"][0].clone();
    jwk["d"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&ec[1]));
    let jwk_file = dir.path().join("private-jwk.json");
    std::fs::write(&jwk_file, jwk.to_string()).unwrap();
    let again = dir.path().join("again");
    let output = pull(&[
        server.base(),
        "--out",
        again.to_str().unwrap(),
        "--client-id",
        &server.id,
        "--key",
        jwk_file.to_str().unwrap(),
    ])
    .await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(pulled(&again), expected(dataset));
}

/// A server with its own token endpoint whose tokens live 61 s: with the client's 60 s margin,
/// every request needs a fresh token. It counts token requests and refuses requests without a
/// bearer token, and (when the manifest says files need no token) file requests with one.
async fn token_server(requires_token: bool) -> (String, Arc<Mutex<Vec<String>>>) {
    #[derive(Clone)]
    struct Ctx {
        origin: Arc<String>,
        log: Arc<Mutex<Vec<String>>>,
        requires_token: bool,
    }
    fn bearer(headers: &HeaderMap) -> Option<String> {
        headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
            .map(str::to_owned)
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = Arc::new(format!("http://{}", listener.local_addr().unwrap()));
    let log = Arc::new(Mutex::new(Vec::new()));
    let ctx = Ctx { origin: Arc::clone(&origin), log: Arc::clone(&log), requires_token };
    let router = Router::new()
        .route(
            "/fhir/.well-known/smart-configuration",
            get(|State(ctx): State<Ctx>| async move {
                axum::Json(json!({"token_endpoint": format!("{}/token", ctx.origin)}))
            }),
        )
        .route(
            "/token",
            axum::routing::post(|State(ctx): State<Ctx>| async move {
                let mut log = ctx.log.lock().unwrap();
                let n = log.iter().filter(|l| l.starts_with("token")).count();
                log.push(format!("token t{n}"));
                axum::Json(json!({"access_token": format!("t{n}"), "token_type": "bearer", "expires_in": 61, "scope": "system/*.rs"}))
            }),
        )
        .route(
            "/fhir/$export",
            get(|State(ctx): State<Ctx>, headers: HeaderMap| async move {
                let Some(token) = bearer(&headers) else { return StatusCode::UNAUTHORIZED.into_response() };
                ctx.log.lock().unwrap().push(format!("kickoff {token}"));
                let location = format!("{}/status", ctx.origin);
                (StatusCode::ACCEPTED, [(header::CONTENT_LOCATION, location)]).into_response()
            }),
        )
        .route(
            "/status",
            get(|State(ctx): State<Ctx>, headers: HeaderMap| async move {
                let Some(token) = bearer(&headers) else { return StatusCode::UNAUTHORIZED.into_response() };
                let polls = {
                    let mut log = ctx.log.lock().unwrap();
                    log.push(format!("poll {token}"));
                    log.iter().filter(|l| l.starts_with("poll")).count()
                };
                if polls < 3 {
                    return (StatusCode::ACCEPTED, [(header::RETRY_AFTER, "1")]).into_response();
                }
                axum::Json(json!({
                    "transactionTime": "2026-01-01T00:00:00Z",
                    "request": format!("{}/fhir/$export", ctx.origin),
                    "requiresAccessToken": ctx.requires_token,
                    "output": [{"type": "Patient", "url": format!("{}/file", ctx.origin), "count": 1}],
                    "error": []
                }))
                .into_response()
            }),
        )
        .route(
            "/file",
            get(|State(ctx): State<Ctx>, headers: HeaderMap| async move {
                let token = bearer(&headers);
                ctx.log.lock().unwrap().push(format!("file {}", token.as_deref().unwrap_or("-")));
                if token.is_some() != ctx.requires_token {
                    return StatusCode::FORBIDDEN.into_response();
                }
                ([(header::CONTENT_TYPE, "application/fhir+ndjson")], "{\"resourceType\":\"Patient\",\"id\":\"p\"}\n").into_response()
            }),
        )
        .with_state(ctx);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("{origin}/fhir"), log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_renewed_before_they_expire_and_sent_to_files_only_when_required() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    bulkfhir_ok(&["client", "keygen", "--out", keys.to_str().unwrap()]);
    let key = keys.join("private-key.pem");
    for requires_token in [true, false] {
        let (base, log) = token_server(requires_token).await;
        let out = dir.path().join(format!("out-{requires_token}"));
        let output = pull(&[
            &base,
            "--out",
            out.to_str().unwrap(),
            "--client-id",
            "c",
            "--key",
            key.to_str().unwrap(),
        ])
        .await;
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let log = log.lock().unwrap().clone();
        // The polls come a second apart and a token is good for one second more than the
        // margin: it was renewed during the polling, and each request carried the newest.
        let tokens = log.iter().filter(|l| l.starts_with("token")).count();
        assert!(tokens >= 3, "renewed while polling: {log:?}");
        let mut newest = "";
        for line in &log {
            let (what, token) = line.split_once(' ').unwrap();
            match what {
                "token" => newest = token,
                "file" if !requires_token => assert_eq!(token, "-", "{log:?}"),
                _ => assert_eq!(token, newest, "{what} with an older token: {log:?}"),
            }
        }
        let file_request = log.iter().find(|l| l.starts_with("file")).unwrap();
        assert_eq!(
            file_request.ends_with(" -"),
            !requires_token,
            "a token only when needed: {log:?}"
        );
    }
}
