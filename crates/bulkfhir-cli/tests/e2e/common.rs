//! The test server and the vendored Synthea data sets.

use std::{
    cell::Cell,
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use bulkfhir_app::{App, Authorization, ServeOptions};
use bulkfhir_export::ExportConfig;
use bulkfhir_server::ServerConfig;
use serde_json::Value;

thread_local! {
    /// Whether test servers started on this thread keep their data in PostgreSQL.
    static ON_POSTGRES: Cell<bool> = const { Cell::new(false) };
}

/// Test servers started on PostgreSQL so far, in the whole process.
static POSTGRES_SERVERS: AtomicUsize = AtomicUsize::new(0);

/// Runs `tests` (plain `#[tokio::test]` functions, each on a runtime of its own on this
/// thread) with every [`TestServer`] they start keeping its resources, jobs and clients in a
/// new database of a real PostgreSQL. A test that started no server on PostgreSQL fails this,
/// so that a test which moved its server elsewhere is not counted as run on PostgreSQL.
pub(crate) fn on_postgres(tests: &[(&str, fn())]) {
    for (name, test) in tests {
        eprintln!("on PostgreSQL: {name}");
        let before = POSTGRES_SERVERS.load(Ordering::SeqCst);
        ON_POSTGRES.with(|on| on.set(true));
        let outcome = std::panic::catch_unwind(test);
        ON_POSTGRES.with(|on| on.set(false));
        if let Err(panic) = outcome {
            eprintln!("on PostgreSQL: {name} failed");
            std::panic::resume_unwind(panic);
        }
        assert!(
            POSTGRES_SERVERS.load(Ordering::SeqCst) > before,
            "{name} started no server on PostgreSQL"
        );
    }
}

/// A new PostgreSQL database when this thread's servers run on PostgreSQL.
fn test_database() -> Option<String> {
    ON_POSTGRES.with(Cell::get).then(|| {
        POSTGRES_SERVERS.fetch_add(1, Ordering::SeqCst);
        bulkfhir_store_postgres::testing::TestCluster::get().database()
    })
}

/// A server on an ephemeral loopback port with its own data directory.
pub(crate) struct TestServer {
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    _data_dir: Option<tempfile::TempDir>,
    shutdown: Option<tokio_util::sync::CancellationToken>,
    pub(crate) data_path: PathBuf,
}

impl TestServer {
    pub(crate) async fn start() -> Self {
        Self::start_with(ServerConfig::default()).await
    }

    pub(crate) async fn start_with(config: ServerConfig) -> Self {
        Self::start_full(config, test_export_config()).await
    }

    pub(crate) async fn start_full(server: ServerConfig, export: ExportConfig) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), server, export).await
    }

    /// A server over `dataset`, loaded straight into the store first (what `bulkfhir load` does).
    pub(crate) async fn start_loaded(dataset: &Dataset, export: ExportConfig) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let database = test_database();
        {
            let stores =
                bulkfhir_app::Stores::open(data_dir.path(), database.as_deref()).await.unwrap();
            let files =
                bulkfhir_store::loader::collect_files(std::slice::from_ref(&dataset.dir)).unwrap();
            let report = bulkfhir_store::loader::load_files(
                stores.resources.as_ref(),
                files,
                Default::default(),
                &|_| {},
            )
            .await
            .unwrap();
            assert_eq!(report.loaded as usize, dataset.count());
            assert_eq!(report.n_rejected, 0);
        }
        Self::start_on(data_dir, ServerConfig::default(), export, database).await
    }

    pub(crate) async fn start_in(
        data_dir: tempfile::TempDir,
        server: ServerConfig,
        export: ExportConfig,
    ) -> Self {
        let database = test_database();
        Self::start_on(data_dir, server, export, database).await
    }

    /// A server in `data_dir` on the embedded store, or on `database` when given.
    async fn start_on(
        data_dir: tempfile::TempDir,
        server: ServerConfig,
        export: ExportConfig,
        database: Option<String>,
    ) -> Self {
        // Quiet unless TEST_LOG=1.
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("info").try_init();
        }
        let data_path = data_dir.path().to_owned();
        let app = App::open(ServeOptions {
            data_dir: data_path.clone(),
            server,
            export,
            authorization: Authorization::Off,
            export_store: None,
            database,
        })
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(app.serve(listener, shutdown.clone()));
        TestServer {
            base: format!("http://{address}/fhir"),
            client: reqwest::Client::new(),
            _data_dir: Some(data_dir),
            shutdown: Some(shutdown),
            data_path,
        }
    }

    /// A handle that talks to a server started elsewhere (the real binary, say).
    pub(crate) fn client_only(base: &str, client: reqwest::Client) -> Self {
        TestServer {
            base: base.to_owned(),
            client,
            _data_dir: None,
            shutdown: None,
            data_path: PathBuf::new(),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, body_json(response).await)
    }

    pub(crate) async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &str,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        self.send_bytes(method, path, body.as_bytes().to_vec()).await
    }

    /// Sends `body` (any bytes, even invalid UTF-8) as `application/fhir+json`.
    pub(crate) async fn send_bytes(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let response = self
            .client
            .request(method, self.url(path))
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, body_json(response).await)
    }

    /// Every resource of a type, through the paged listing.
    pub(crate) async fn list_all(&self, path: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut url = self.url(&format!("{path}?_count=1000"));
        loop {
            let response = self.client.get(&url).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200, "GET {url}");
            let page = body_json(response).await;
            assert_eq!(page["type"], "searchset");
            for entry in page["entry"].as_array().unwrap() {
                out.push(entry["resource"].clone());
            }
            let next = page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next");
            match next {
                Some(link) => url = link["url"].as_str().unwrap().to_owned(),
                None => return out,
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(token) = self.shutdown.take() {
            token.cancel();
        }
    }
}

/// Export settings for tests: quick polling and short leases, real file sizes.
pub(crate) fn test_export_config() -> ExportConfig {
    ExportConfig {
        poll_interval: std::time::Duration::from_millis(50),
        retry_after: std::time::Duration::from_secs(1),
        // Small key ranges: every system export in the tests reads large types in parts.
        key_range_span: 2_000,
        ..ExportConfig::default()
    }
}

pub(crate) async fn body_json(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.unwrap();
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!("response is not JSON ({e}): {}", String::from_utf8_lossy(&bytes))
    })
}

/// Asserts an OperationOutcome with an error issue.
pub(crate) fn assert_outcome(status: u16, expected: u16, body: &Value) {
    assert_eq!(status, expected, "status; body: {body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert!(body["issue"][0]["severity"].as_str().is_some(), "{body}");
    assert!(body["issue"][0]["code"].as_str().is_some(), "{body}");
}

/// The Synthea samples vendored in the repository (`testdata/synthea`, Apache-2.0; see its
/// README). Missing data fails the test: a skipped check must never pass.
pub(crate) fn synthea_dir() -> PathBuf {
    let dir = manifest_dir().join("../../testdata/synthea");
    assert!(
        dir.join("small.tar.xz").is_file(),
        "the vendored Synthea data is missing at {}",
        dir.display()
    );
    dir
}

/// A data set unpacked once per test process: type → lines.
pub(crate) struct Dataset {
    pub(crate) dir: PathBuf,
    pub(crate) lines: BTreeMap<String, Vec<String>>,
}

impl Dataset {
    pub(crate) fn count(&self) -> usize {
        self.lines.values().map(Vec::len).sum()
    }
}

/// Unpacks `name.tar.xz` into a cache folder shared by test runs, named by a hash of the
/// archive's bytes (a fresh clone has new modification times but the same bytes), so that runs
/// neither repeat the work nor leave copies behind: copies of other versions of the archive are
/// removed, and a run unpacks into a private folder and renames it into place (a concurrent run
/// that won the race is used instead).
fn unpack(name: &str) -> Dataset {
    use std::hash::{Hash, Hasher};
    let archive = synthea_dir().join(format!("{name}.tar.xz"));
    let bytes = std::fs::read(&archive).unwrap();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    let key = format!("{name}-{}-{:016x}", bytes.len(), hasher.finish());
    let cache = std::env::temp_dir().join("bulkfhir-test-data");
    let target = cache.join(&key);
    for entry in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        let other_version = file.starts_with(&format!("{name}-")) && file != key;
        if other_version {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    if !target.is_dir() {
        let staging = cache.join(format!(".{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).unwrap();
        let status = std::process::Command::new("tar")
            .arg("-xJf")
            .arg(&archive)
            .arg("-C")
            .arg(&staging)
            .status()
            .expect("run tar");
        assert!(status.success(), "unpack {}", archive.display());
        if std::fs::rename(&staging, &target).is_err() {
            assert!(target.is_dir(), "move the unpacked {name} into {}", target.display());
            std::fs::remove_dir_all(&staging).unwrap();
        }
    }
    let mut lines = BTreeMap::new();
    for entry in std::fs::read_dir(&target).unwrap() {
        let path = entry.unwrap().path();
        let Some(type_name) = path.file_name().unwrap().to_str().unwrap().strip_suffix(".ndjson")
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        lines.insert(
            type_name.to_owned(),
            text.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect(),
        );
    }
    Dataset { dir: target, lines }
}

pub(crate) fn small() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| unpack("small"))
}

pub(crate) fn medium() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| unpack("medium"))
}

/// Runs `bulkfhir ARGS` to the end; its stdout, or a failed test with its stderr.
pub(crate) fn bulkfhir_ok(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .args(args)
        .output()
        .expect("run bulkfhir");
    assert!(
        output.status.success(),
        "bulkfhir {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The real `bulkfhir serve` binary on a loopback port, killed on drop.
pub(crate) struct BinaryServer {
    pub(crate) base: String,
    child: std::process::Child,
}

impl BinaryServer {
    pub(crate) async fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, None, &[]).await
    }

    /// Starts `bulkfhir serve` with no flags but the address and data directory: authorization
    /// as shipped.
    pub(crate) async fn start_as_shipped(data_dir: &Path, port: Option<u16>) -> Self {
        Self::spawn(data_dir, port, &[]).await
    }

    /// Starts `bulkfhir serve` on `port` (a free one when None) with extra flags; without an
    /// `--auth` among them, with `--auth none`.
    pub(crate) async fn start_with(data_dir: &Path, port: Option<u16>, extra: &[&str]) -> Self {
        let mut args = Vec::new();
        if !extra.contains(&"--auth") {
            args.extend(["--auth", "none"]);
        }
        args.extend(extra);
        Self::spawn(data_dir, port, &args).await
    }

    async fn spawn(data_dir: &Path, port: Option<u16>, extra: &[&str]) -> Self {
        let port = port.unwrap_or_else(|| {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        });
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start bulkfhir serve");
        let mut server = BinaryServer { base: format!("http://127.0.0.1:{port}/fhir"), child };
        if let Err(status) = wait_until_serving(&server.base, &mut server.child).await {
            panic!("bulkfhir serve exited with {status}");
        }
        server
    }
}

/// Waits (at most 60 s) until the server at `base`, run by `child`, answers `/metadata`; the
/// exit status if the process ends first.
pub(crate) async fn wait_until_serving(
    base: &str,
    child: &mut std::process::Child,
) -> Result<(), std::process::ExitStatus> {
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(format!("{base}/metadata")).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(status);
        }
        assert!(std::time::Instant::now() < deadline, "bulkfhir serve did not come up at {base}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

impl BinaryServer {
    pub(crate) fn port(&self) -> u16 {
        self.base.trim_end_matches("/fhir").rsplit(':').next().and_then(|p| p.parse().ok()).unwrap()
    }

    /// SIGKILL: no shutdown, no flush, no lease release.
    pub(crate) fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Patient compartment paths of the types in these data sets, written out independently of
/// the server's generated table (FHIR R4 CompartmentDefinition/patient and the R4
/// SearchParameter expressions of each named parameter).
pub(crate) const COMPARTMENT_PATHS: &[(&str, &[&str])] = &[
    ("AllergyIntolerance", &["patient", "recorder", "asserter"]),
    ("CarePlan", &["subject", "activity.detail.performer"]),
    ("CareTeam", &["subject", "participant.member"]),
    ("Claim", &["patient", "payee.party"]),
    ("Condition", &["subject", "asserter"]),
    ("DiagnosticReport", &["subject"]),
    // bulkfhir extension (g10 expects implantable devices with the patient).
    ("Device", &["patient"]),
    ("Encounter", &["subject"]),
    ("ExplanationOfBenefit", &["patient", "payee.party"]),
    ("Group", &["member.entity"]),
    ("ImagingStudy", &["subject"]),
    ("Immunization", &["patient"]),
    ("MedicationRequest", &["subject"]),
    ("Observation", &["subject", "performer"]),
    ("Patient", &["link.other"]),
    ("Procedure", &["subject", "performer.actor"]),
];

pub(crate) fn references_at<'v>(value: &'v Value, path: &[&str], out: &mut Vec<&'v str>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| references_at(item, path, out)),
        Value::Object(map) => match path.split_first() {
            Some((first, rest)) => {
                if let Some(child) = map.get(*first) {
                    references_at(child, rest, out);
                }
            }
            None => {
                if let Some(reference) = map.get("reference").and_then(Value::as_str) {
                    out.push(reference);
                }
            }
        },
        _ => {}
    }
}

/// patient id → type → ids in that patient's compartment.
pub(crate) fn expected_compartments(
    dataset: &Dataset,
) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut expected: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for patient_line in &dataset.lines["Patient"] {
        let patient: Value = serde_json::from_str(patient_line).unwrap();
        let id = patient["id"].as_str().unwrap().to_owned();
        expected.entry(id.clone()).or_default().entry("Patient".into()).or_default().insert(id);
    }
    for (type_name, paths) in COMPARTMENT_PATHS {
        for line in dataset.lines.get(*type_name).into_iter().flatten() {
            let resource: Value = serde_json::from_str(line).unwrap();
            let mut references = Vec::new();
            for path in *paths {
                references_at(&resource, &path.split('.').collect::<Vec<_>>(), &mut references);
            }
            for reference in references {
                if let Some(patient_id) = reference.strip_prefix("Patient/") {
                    expected
                        .entry(patient_id.to_owned())
                        .or_default()
                        .entry((*type_name).to_owned())
                        .or_default()
                        .insert(resource["id"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    expected
}

/// This crate's folder, as cargo tells the running test; the path compiled in is only the
/// fallback (a build cache reused from another checkout points at a folder that may be gone).
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")), Into::into)
}
