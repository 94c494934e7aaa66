//! Interoperability and hardening found by outside clients and a hostile tester: each test talks
//! HTTP (raw bytes where a client library would refuse to send the request) to a real server.

use std::{io::Read, time::Duration};

use bulkfhir_server::{ConnectionLimits, ServerConfig};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    common::{
        TestServer, assert_outcome, body_json, small, test_export_config, wait_until_serving,
    },
    export::{kick, kick_raw, wait_manifest},
};

/// `host:port` of a test server.
fn address(server: &TestServer) -> String {
    server.base.trim_start_matches("http://").trim_end_matches("/fhir").to_owned()
}

/// Sends `request` as raw bytes and reads the answer until the server closes the connection
/// (or 10 s pass); returns the status, the head and the body.
async fn raw(server: &TestServer, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(address(server)).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
    let _ = read.await;
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    (status, head, answer[split + 4..].to_vec())
}

fn outcome_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// A `Basic` resource whose objects and arrays nest `levels` deep.
fn nested_basic(id: &str, levels: usize) -> String {
    let pairs = (levels - 2) / 2;
    let mut text =
        format!(r#"{{"resourceType":"Basic","id":"{id}","code":{{"text":"deep"}},"extension":["#);
    text.push_str(&r#"{"x":["#.repeat(pairs));
    text.push_str(&"]}".repeat(pairs));
    text.push_str("]}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn over_deep_json_is_refused_at_every_write_path_and_what_is_stored_exports() {
    let server = TestServer::start().await;
    let deep = nested_basic("deep", 100_000);
    for (method, path) in [(Method::POST, "Basic"), (Method::PUT, "Basic/deep")] {
        let (status, _, body) = server.send_json(method, path, &deep).await;
        assert_outcome(status, 400, &body);
        let text = body["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(text.contains("deeper than 100 levels"), "{text}");
    }
    // Just over the limit, inside a transaction and a batch Bundle.
    let over = nested_basic("over", 102);
    for kind in ["transaction", "batch"] {
        let bundle = format!(
            r#"{{"resourceType":"Bundle","type":"{kind}","entry":[{{"resource":{over},"request":{{"method":"PUT","url":"Basic/over"}}}}]}}"#
        );
        let (status, _, body) = server.send_json(Method::POST, "", &bundle).await;
        if kind == "transaction" {
            assert_outcome(status, 400, &body);
        } else {
            assert_eq!(status, 200, "{body}");
            let entry_status = body["entry"][0]["response"]["status"].as_str().unwrap();
            assert!(entry_status.starts_with("400"), "{body}");
        }
        assert!(body.to_string().contains("deeper than 100 levels"), "{body}");
    }
    assert_eq!(server.get("Basic/over").await.0, 404);
    // At the limit: stored, and a _typeFilter evaluates it (it used to drop deep resources
    // silently) and exports it.
    let at_limit = nested_basic("at-limit", 100);
    let (status, _, body) = server.send_json(Method::PUT, "Basic/at-limit", &at_limit).await;
    assert_eq!(status, 201, "{body}");
    let manifest = wait_manifest(
        &server,
        &kick(&server, "$export?_type=Basic&_typeFilter=Basic%3F_id%3Dat-limit").await,
    )
    .await;
    assert_eq!(manifest["output"][0]["count"], 1, "{manifest}");
    assert_eq!(manifest["error"], json!([]), "{manifest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_load_refuses_over_deep_lines_with_their_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("Basic.ndjson");
    let lines = [nested_basic("ok", 20), nested_basic("too-deep", 5_000)];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .args(["load", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stdout}{stderr}");
    // Exactly the second line is rejected, with its place and the limit.
    assert!(stderr.contains("rejected 1 lines:"), "{stdout}{stderr}");
    let rejection = format!("{}:2: ", file.display());
    let line =
        stderr.lines().find(|l| l.contains(&rejection)).unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("deeper than 100 levels"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_kickoff_without_a_body_takes_its_parameters_from_the_query() {
    let server = TestServer::start_loaded(small(), test_export_config()).await;
    // Medplum's CLI: POST, no body, no Content-Type, `_type` in the query.
    let response = server
        .client
        .post(server.url("$export?_type=Patient"))
        .header("accept", "application/fhir+json, */*; q=0.1")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let status_url = response.headers()["content-location"].to_str().unwrap().to_owned();
    let manifest = wait_manifest(&server, &status_url).await;
    let types: Vec<&str> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Patient"], "{manifest}");
    // An empty body with a JSON Content-Type is the same; so is the Patient level.
    let (status, _, body) =
        kick_raw(&server, Method::POST, "Patient/$export?_type=Patient", &[], Some(String::new()))
            .await;
    assert_eq!(status, 202, "{body}");
    // A body still needs a FHIR JSON type, and a Parameters body with query parameters is
    // still refused.
    let response = server
        .client
        .post(server.url("$export"))
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .body("_type=Patient")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    let parameters =
        r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Patient"}]}"#;
    let (status, _, body) =
        kick_raw(&server, Method::POST, "$export?_type=Patient", &[], Some(parameters.to_owned()))
            .await;
    assert_outcome(status, 400, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_finished_export_answers_its_manifest_on_the_first_poll() {
    let server = TestServer::start_loaded(small(), test_export_config()).await;
    let status_url = kick(&server, "$export?_type=Patient").await;
    let job_id = status_url.rsplit('/').next().unwrap();
    // Wait through the job resource, never touching the status URL.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, job) = server.get(&format!("BulkDataExport/{job_id}")).await;
        assert_eq!(status, 200, "{job}");
        if job.to_string().contains("completed") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "export did not finish: {job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..2 {
        let response = server.client.get(&status_url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "no artificial 202 on any poll");
        let manifest = body_json(response).await;
        assert_eq!(manifest["output"][0]["type"], "Patient");
    }
}

/// Downloads `url` with `accept_encoding` (and `range`); returns status, Content-Encoding, the
/// bytes as sent and the bytes decoded.
async fn fetch(
    server: &TestServer,
    url: &str,
    accept_encoding: Option<&str>,
    range: Option<&str>,
) -> (u16, Option<String>, Vec<u8>, Vec<u8>) {
    let mut request = server.client.get(url);
    if let Some(value) = accept_encoding {
        request = request.header("accept-encoding", value);
    }
    if let Some(value) = range {
        request = request.header("range", value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let encoding =
        response.headers().get("content-encoding").map(|v| v.to_str().unwrap().to_owned());
    let sent = response.bytes().await.unwrap().to_vec();
    let decoded = if encoding.as_deref() == Some("gzip") && status == 200 {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&sent[..]).read_to_end(&mut out).unwrap();
        out
    } else {
        sent.clone()
    };
    (status, encoding, sent, decoded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_negotiate_gzip_both_ways_and_keep_ranges_exact() {
    let server = TestServer::start_loaded(small(), test_export_config()).await;
    let plain = wait_manifest(&server, &kick(&server, "$export?_type=Observation").await).await;
    let plain_url = plain["output"][0]["url"].as_str().unwrap().to_owned();
    let (status, encoding, identity, _) = fetch(&server, &plain_url, None, None).await;
    assert_eq!((status, encoding), (200, None));
    assert!(identity.len() > 100_000);
    // A client that accepts gzip gets the plain file compressed (much smaller on the wire).
    let (status, encoding, sent, decoded) =
        fetch(&server, &plain_url, Some("gzip, deflate"), None).await;
    assert_eq!((status, encoding.as_deref()), (200, Some("gzip")));
    assert_eq!(decoded, identity);
    assert!(sent.len() * 4 < identity.len(), "{} of {}", sent.len(), identity.len());
    // With a Range the stored bytes are served, exactly that range.
    let (status, encoding, sent, _) =
        fetch(&server, &plain_url, Some("gzip"), Some("bytes=100-199")).await;
    assert_eq!((status, encoding), (206, None));
    assert_eq!(sent, identity[100..200]);
    // `identity` and `gzip;q=0` refuse gzip.
    for refusing in ["identity", "gzip;q=0"] {
        let (status, encoding, sent, _) = fetch(&server, &plain_url, Some(refusing), None).await;
        assert_eq!((status, encoding), (200, None), "{refusing}");
        assert_eq!(sent, identity);
    }

    // A gzip-format export: gzip for clients that accept it (or say nothing), decompressed for
    // clients that ask for identity.
    let gz = wait_manifest(
        &server,
        &kick(
            &server,
            "$export?_type=Observation&_outputFormat=application%2Ffhir%2Bndjson%2Bgzip",
        )
        .await,
    )
    .await;
    let gz_url = gz["output"][0]["url"].as_str().unwrap().to_owned();
    for accepted in [None, Some("gzip")] {
        let (status, encoding, _, decoded) = fetch(&server, &gz_url, accepted, None).await;
        assert_eq!((status, encoding.as_deref()), (200, Some("gzip")), "{accepted:?}");
        assert_eq!(decoded, identity, "{accepted:?}");
    }
    let (status, encoding, sent, _) = fetch(&server, &gz_url, Some("identity"), None).await;
    assert_eq!((status, encoding), (200, None));
    assert_eq!(sent, identity, "decompressed on the fly");
    // A range of a stored gzip file is a range of its gzip bytes, labelled as such.
    let (_, _, whole_gz, _) = fetch(&server, &gz_url, Some("gzip"), None).await;
    let (status, encoding, sent, _) =
        fetch(&server, &gz_url, Some("gzip"), Some("bytes=10-")).await;
    assert_eq!((status, encoding.as_deref()), (206, Some("gzip")));
    assert_eq!(sent, whole_gz[10..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_headers_are_validated_before_they_reach_a_url() {
    let config = ServerConfig {
        allowed_hosts: vec!["fhir.example.org".to_owned(), "127.0.0.1".to_owned()],
        ..ServerConfig::default()
    };
    let allow_listed = TestServer::start_with(config).await;
    let open = TestServer::start().await;
    let kickoff = |host: &str| {
        format!(
            "GET /fhir/$export HTTP/1.1\r\nHost: {host}\r\nAccept: application/fhir+json\r\nPrefer: respond-async\r\nConnection: close\r\n\r\n"
        )
        .into_bytes()
    };
    for bad in ["\"><script>", "evil.example/x", "a b", "host:99999"] {
        let (status, _, body) = raw(&open, &kickoff(bad)).await;
        let outcome = outcome_of(&body);
        assert_outcome(status, 400, &outcome);
        assert!(outcome.to_string().contains("not a valid host"), "{outcome}");
    }
    // Without an allow-list any valid host goes into the URLs (production sets --base-url).
    let (status, head, _) = raw(&open, &kickoff("fhir.example.org:8443")).await;
    assert_eq!(status, 202);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-location: http://fhir.example.org:8443/fhir/$export-status/"),
        "{head}"
    );
    // With one, only the listed hosts are answered.
    let (status, _, body) = raw(&allow_listed, &kickoff("evil.example")).await;
    assert_outcome(status, 400, &outcome_of(&body));
    let (status, head, _) = raw(&allow_listed, &kickoff("FHIR.example.org")).await;
    assert_eq!(status, 202, "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_hyper_cannot_parse_get_operation_outcomes() {
    let server = TestServer::start().await;
    let long_query =
        format!("GET /fhir/Patient?name={} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100 * 1024));
    let mut many_headers = String::from("GET /fhir/metadata HTTP/1.1\r\nHost: x\r\n");
    for idx in 0..2_000 {
        many_headers.push_str(&format!("X-H{idx}: v\r\n"));
    }
    many_headers.push_str("\r\n");
    let two_lengths = "POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}";
    let mut raw_ff = b"GET /fhir/Pat".to_vec();
    raw_ff.push(0xFF);
    raw_ff.extend_from_slice(b"ient HTTP/1.1\r\nHost: x\r\n\r\n");
    for (request, expected) in [
        (long_query.into_bytes(), 414),
        (many_headers.into_bytes(), 431),
        (two_lengths.as_bytes().to_vec(), 400),
        (raw_ff, 400),
        (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), 400),
    ] {
        let (status, head, body) = raw(&server, &request).await;
        assert_eq!(status, expected, "{head}");
        assert!(
            head.to_ascii_lowercase().contains("content-type: application/fhir+json"),
            "{head}"
        );
        assert_outcome(status, expected, &outcome_of(&body));
    }
    // The server is still fine.
    assert_eq!(server.get("metadata").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_connections_are_capped() {
    let config = ServerConfig {
        limits: ConnectionLimits {
            max_connections: 3,
            header_read_timeout: Duration::from_secs(1),
            body_read_timeout: Duration::from_secs(1),
            ..ConnectionLimits::default()
        },
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(config).await;
    // Partial headers: closed once the header timeout passes.
    let started = std::time::Instant::now();
    let mut partial = TcpStream::connect(address(&server)).await.unwrap();
    partial.write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let mut sink = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(10), partial.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "a half-sent head is not held open");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A connection that sends nothing at all is closed too.
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(address(&server)).await.unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "a silent connection is not held open");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A body that stops arriving: 408 with an OperationOutcome.
    let mut stalled = TcpStream::connect(address(&server)).await.unwrap();
    stalled
        .write_all(b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n{\"resour")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("OperationOutcome"), "{text}");
    // Three idle connections fill the cap; the fourth gets 503 and is closed.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(address(&server)).await.unwrap();
        stream.write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        idle.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, head, body) =
        raw(&server, b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 503, "{head}");
    assert_outcome(status, 503, &outcome_of(&body));
    drop(idle);
    // Once they are gone (closed by the header timeout at the latest), requests are served.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) =
            raw(&server, b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "connections were not freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `bulkfhir serve` in a mount namespace of its own in which `mount_at` is a tmpfs of `size`
/// (a full disk, without touching the machine's); its log goes to `log`. Needs root or user
/// namespaces (`unshare`); CI runs as root.
struct SmallDiskServer {
    base: String,
    child: std::process::Child,
}

impl SmallDiskServer {
    async fn start(
        data_dir: &std::path::Path,
        mount_at: &std::path::Path,
        size: &str,
        log: &std::path::Path,
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o "size=$1" tmpfs "$2" && shift 2 && exec "$@""#)
            .arg("sh")
            .arg(size)
            .arg(mount_at)
            .arg(env!("CARGO_BIN_EXE_bulkfhir"))
            .args([
                "serve",
                "--auth",
                "none",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(log).unwrap())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("run unshare (util-linux)");
        let mut server = SmallDiskServer { base: format!("http://127.0.0.1:{port}/fhir"), child };
        if let Err(status) = wait_until_serving(&server.base, &mut server.child).await {
            panic!(
                "bulkfhir serve on a tmpfs exited with {status} (mounting needs root or user namespaces): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        server
    }
}

impl Drop for SmallDiskServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls a status URL until the job ends; returns the final status and body.
async fn final_status(client: &reqwest::Client, status_url: &str) -> (u16, Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let response = client.get(status_url).send().await.unwrap();
        let status = response.status().as_u16();
        let body = body_json(response).await;
        if status != 202 && status != 429 {
            return (status, body);
        }
        assert!(std::time::Instant::now() < deadline, "export did not end");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_export_disk_fails_the_job_with_its_cause_and_frees_its_space_at_once() {
    let data_dir = tempfile::tempdir().unwrap();
    {
        let store = bulkfhir_store_embedded::EmbeddedStore::open(data_dir.path()).unwrap();
        let files = bulkfhir_store::loader::collect_files(&[small().dir.clone()]).unwrap();
        bulkfhir_store::loader::load_files(&store, files, Default::default(), &|_| {})
            .await
            .unwrap();
    }
    let exports = data_dir.path().join("exports");
    std::fs::create_dir_all(&exports).unwrap();
    let log = data_dir.path().join("server.log");
    // 1 MiB for export files; every type of `small` is about 4.8 MB.
    let server = SmallDiskServer::start(data_dir.path(), &exports, "1m", &log).await;
    let client = reqwest::Client::new();
    let handle = TestServer::client_only(&server.base, client.clone());
    let (status, outcome) = final_status(&client, &kick(&handle, "$export").await).await;
    assert_outcome(status, 500, &outcome);
    let text = outcome["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(text.contains("storage full (no space left on the device)"), "{text}");
    assert!(!text.contains(&data_dir.path().display().to_string()), "no server paths: {text}");
    // The failed job's files are gone at once: the next (small) export fits.
    let (status, manifest) =
        final_status(&client, &kick(&handle, "$export?_type=Patient").await).await;
    assert_eq!(status, 200, "{manifest}");
    assert_eq!(manifest["output"][0]["count"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_says_storage_full_and_does_not_flood_the_log() {
    let parent = tempfile::tempdir().unwrap();
    let data_dir = parent.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let log = parent.path().join("server.log");
    let server = SmallDiskServer::start(&data_dir, &data_dir, "3m", &log).await;
    let client = reqwest::Client::new();
    let padding = "x".repeat(8_000);
    let handle = TestServer::client_only(&server.base, client.clone());
    let put_padded = async |id: &str| -> (u16, Value) {
        let body = format!(
            r#"{{"resourceType":"Patient","id":"{id}","text":{{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">{padding}</div>"}}}}"#
        );
        let (status, _, outcome) =
            handle.send_json(Method::PUT, &format!("Patient/{id}"), &body).await;
        (status, outcome)
    };
    let mut full_at = None;
    for idx in 0..2_000 {
        let (status, outcome) = put_padded(&format!("p{idx}")).await;
        if status != 201 {
            assert_outcome(status, 503, &outcome);
            let text = outcome["issue"][0]["diagnostics"].as_str().unwrap();
            assert!(text.contains("storage full"), "{text}");
            full_at = Some(idx);
            break;
        }
    }
    let full_at = full_at.expect("a 3 MiB store fills up");
    // Keep writing (and failing) for two seconds: the checkpoint thread keeps failing too.
    let until = std::time::Instant::now() + Duration::from_secs(2);
    let mut n_refused = 0;
    while std::time::Instant::now() < until {
        n_refused += u32::from(put_padded("more").await.0 == 503);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(n_refused > 10, "{n_refused}");
    // Reads still work.
    let response = client.get(format!("{}/Patient/p0", server.base)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let text = std::fs::read_to_string(&log).unwrap();
    let n_checkpoint_lines = text.lines().filter(|l| l.contains("WAL checkpoint")).count();
    // The checkpoint thread did fail (the test exercises it), and said so once, not every 50 ms.
    assert!(
        (1..=2).contains(&n_checkpoint_lines),
        "{n_checkpoint_lines} checkpoint lines after {full_at} writes:\n{text}"
    );
}

/// A seeded xorshift stream, so a failure can be replayed.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound as u64) as usize
    }
}

/// One fuzzed write: a Basic resource nested to an extreme depth, with large or tricky strings,
/// sometimes broken.
fn fuzzed_resource(rng: &mut Xorshift, id: &str) -> Vec<u8> {
    let depth = [0, 1, 50, 97, 98, 99, 100, 101, 127, 128, 129, 500, 5_000, 100_000][rng.next(14)];
    let leaf = match rng.next(5) {
        0 => serde_json::to_string(&"[{".repeat(rng.next(10_000))).unwrap(),
        1 => serde_json::to_string(&"x".repeat(rng.next(2_000_000))).unwrap(),
        2 => r#""\"\\\u0000\ud83d\ude00""#.to_owned(),
        3 => "1.50e-300".to_owned(),
        _ => "{}".to_owned(),
    };
    let mut text = format!(r#"{{"resourceType":"Basic","id":"{id}","extension":"#);
    for idx in 0..depth {
        text.push_str(if idx % 2 == 0 { "[" } else { r#"{"x":"# });
    }
    text.push_str(&leaf);
    for idx in (0..depth).rev() {
        text.push(if idx % 2 == 0 { ']' } else { '}' });
    }
    text.push('}');
    let mut bytes = text.into_bytes();
    match rng.next(6) {
        0 => {
            let at = rng.next(bytes.len());
            bytes.truncate(at);
        }
        1 => {
            let at = rng.next(bytes.len());
            bytes[at] = rng.next(256) as u8;
        }
        _ => {}
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn fuzzed_writes_never_get_a_5xx_and_everything_stored_exports() {
    let server = TestServer::start().await;
    let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
    let mut stored = std::collections::BTreeSet::new();
    for idx in 0..150 {
        let id = format!("f{idx}");
        let body = fuzzed_resource(&mut rng, &id);
        let (method, path) = if idx % 2 == 0 {
            (Method::PUT, format!("Basic/{id}"))
        } else {
            (Method::POST, "Basic".to_owned())
        };
        let (status, _, body) = server.send_bytes(method, &path, body).await;
        assert!(status < 500, "write {idx}: {status} {body}");
        if status == 201 {
            stored.insert(body["id"].as_str().unwrap().to_owned());
        } else {
            assert_outcome(status, status, &body);
        }
    }
    assert!(stored.len() > 20 && stored.len() < 150, "{} stored", stored.len());
    // Every stored resource is evaluated by a _typeFilter and exported, and parses again.
    let manifest = wait_manifest(
        &server,
        &kick(&server, "$export?_type=Basic&_typeFilter=Basic%3F_lastUpdated%3Dgt2000-01-01").await,
    )
    .await;
    assert_eq!(manifest["error"], json!([]), "{manifest}");
    let mut exported = std::collections::BTreeSet::new();
    for item in manifest["output"].as_array().unwrap() {
        let text = server.client.get(item["url"].as_str().unwrap()).send().await.unwrap();
        for line in text.text().await.unwrap().lines() {
            let resource: Value = serde_json::from_str(line).unwrap();
            exported.insert(resource["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(exported, stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn group_patients_that_are_not_members_are_reported_under_lenient_handling() {
    let dataset = small();
    let server = TestServer::start_loaded(dataset, test_export_config()).await;
    let group: Value = serde_json::from_str(&dataset.lines["Group"][0]).unwrap();
    let group_id = group["id"].as_str().unwrap();
    let member = group["member"][0]["entity"]["reference"].as_str().unwrap();
    let body = format!(
        r#"{{"resourceType":"Parameters","parameter":[{{"name":"_type","valueString":"Patient"}},{{"name":"patient","valueReference":{{"reference":"{member}"}}}},{{"name":"patient","valueReference":{{"reference":"Patient/stranger"}}}}]}}"#
    );
    let path = format!("Group/{group_id}/$export");
    // Strict: refused, naming the outsider.
    let (status, _, outcome) =
        kick_raw(&server, Method::POST, &path, &[], Some(body.clone())).await;
    assert_outcome(status, 400, &outcome);
    assert!(outcome.to_string().contains("Patient/stranger"), "{outcome}");
    // Lenient: the member is exported, the outsider reported in the error file.
    let lenient = [("prefer", "respond-async, handling=lenient")];
    let (status, headers, body) =
        kick_raw(&server, Method::POST, &path, &lenient, Some(body)).await;
    assert_eq!(status, 202, "{body}");
    let manifest = wait_manifest(&server, headers["content-location"].to_str().unwrap()).await;
    assert_eq!(manifest["output"][0]["count"], 1, "{manifest}");
    let errors = crate::export::output_by_type(&server, &manifest, "error").await;
    let text = serde_json::to_string(&errors).unwrap();
    assert!(text.contains("Patient/stranger is not a member"), "{text}");
}
