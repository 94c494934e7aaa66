//! Running it as a service, with the real binary: metrics, health, JSON logs, graceful shutdown.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use serde_json::Value;

use crate::common::{Dataset, TestServer, body_json, medium, small, wait_until_serving};

/// `bulkfhir serve` on a free port, its log in a file, stopped (SIGKILL) on drop unless
/// [`Served::terminate`] ended it.
struct Served {
    base: String,
    port: u16,
    child: Option<std::process::Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Served {
    async fn start(data_dir: &Path, port: u16, log: &Path, extra: &[&str]) -> Self {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data_dir)
            .args(if extra.contains(&"--auth") { &[][..] } else { &["--auth", "none"][..] })
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
            .spawn()
            .expect("start bulkfhir serve");
        Served::wait(port, child).await
    }

    async fn wait(port: u16, mut child: std::process::Child) -> Self {
        let base = format!("http://127.0.0.1:{port}/fhir");
        if let Err(status) = wait_until_serving(&base, &mut child).await {
            panic!("bulkfhir serve exited with {status}");
        }
        Served { base, port, child: Some(child) }
    }

    /// SIGTERM, then the exit status (at most `within`).
    async fn terminate(mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        let mut child = self.child.take().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let started = std::time::Instant::now();
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            if started.elapsed() > within {
                let _ = child.kill();
                panic!("bulkfhir serve did not exit within {within:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A data directory with `dataset` loaded (what `bulkfhir load` does).
async fn loaded_dir(dataset: &Dataset) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = bulkfhir_store_embedded::EmbeddedStore::open(dir.path()).unwrap();
    let files = bulkfhir_store::loader::collect_files(std::slice::from_ref(&dataset.dir)).unwrap();
    bulkfhir_store::loader::load_files(&store, files, Default::default(), &|_| {}).await.unwrap();
    dir
}

async fn kickoff(client: &reqwest::Client, base: &str, query: &str) -> String {
    crate::export::kick(&TestServer::client_only(base, client.clone()), query).await
}

/// Polls the job resource until it has `status`.
async fn wait_job(client: &reqwest::Client, base: &str, job_id: &str, status: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let response = client.get(format!("{base}/BulkDataExport/{job_id}")).send().await.unwrap();
        let job = body_json(response).await;
        if job["status"] == status {
            return job;
        }
        assert!(std::time::Instant::now() < deadline, "job never reached {status}: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of a Prometheus series whose name and labels match (0 when absent).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels.iter().all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value.parse::<f64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_an_export_wrote_on_a_private_listener() {
    let data = loaded_dir(small()).await;
    let log = data.path().join("server.log");
    let metrics_port = free_port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let server =
        Served::start(data.path(), free_port(), &log, &["--metrics-listen", &metrics_listen]).await;
    let client = reqwest::Client::new();
    let scrape = async || {
        let response = client.get(format!("http://{metrics_listen}/metrics")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        response.text().await.unwrap()
    };
    // Not on the public listener.
    let public = client.get(format!("http://127.0.0.1:{}/metrics", server.port)).send().await;
    assert_eq!(public.unwrap().status().as_u16(), 404);

    let before = scrape().await;
    let labels = [("level", "system"), ("format", "ndjson")];
    let status_url = kickoff(&client, &server.base, "$export").await;
    let during = scrape().await;
    let job_id = status_url.rsplit('/').next().unwrap().to_owned();
    wait_job(&client, &server.base, &job_id, "completed").await;
    let manifest = body_json(client.get(&status_url).send().await.unwrap()).await;
    let after = scrape().await;

    let n_resources: f64 = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["count"].as_f64().unwrap())
        .sum();
    assert_eq!(n_resources, small().count() as f64);
    let written = |text: &str| sample(text, "bulkfhir_export_resources_total", &labels);
    assert_eq!(written(&before), 0.0);
    assert!(written(&during) <= n_resources);
    assert_eq!(written(&after), n_resources, "the counter moved by exactly what was exported");
    let n_files = manifest["output"].as_array().unwrap().len() as f64;
    assert_eq!(sample(&after, "bulkfhir_export_files_total", &labels), n_files);
    assert!(sample(&after, "bulkfhir_export_bytes_total", &labels) > n_resources * 100.0);
    assert_eq!(sample(&after, "bulkfhir_export_jobs", &[("state", "completed")]), 1.0);
    assert_eq!(sample(&after, "bulkfhir_export_queue_depth", &[]), 0.0);
    assert_eq!(sample(&after, "bulkfhir_export_lease_claims_total", &[]), 1.0);
    assert_eq!(
        sample(&after, "bulkfhir_export_jobs_ended_total", &[("outcome", "completed")]),
        1.0
    );
    let kickoffs = [("route", "/fhir/$export"), ("method", "GET"), ("status", "202")];
    assert_eq!(sample(&after, "bulkfhir_http_requests_total", &kickoffs), 1.0);
    assert!(after.contains("bulkfhir_http_request_duration_seconds_bucket"));
    assert!(
        sample(&after, "bulkfhir_store_operation_duration_seconds_count", &[("operation", "scan")])
            > 0.0
    );
    assert!(sample(&after, "bulkfhir_export_unit_duration_seconds_count", &[]) > 0.0);
    // The status poll was counted under its route template, not its job id.
    assert!(after.contains("route=\"/fhir/$export-status/{job}\""), "{after}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer_for_a_load_balancer() {
    let server = TestServer::start().await;
    let root = server.base.trim_end_matches("/fhir").to_owned();
    let healthz = server.client.get(format!("{root}/healthz")).send().await.unwrap();
    assert_eq!(healthz.status().as_u16(), 200);
    // The runner goes round its loop at start; readiness follows within a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = server.client.get(format!("{root}/readyz")).send().await.unwrap();
        let status = response.status().as_u16();
        let body = body_json(response).await;
        if status == 200 {
            assert_eq!(body["status"], "ready");
            for check in ["store", "output", "runner"] {
                assert_eq!(body["checks"][check]["status"], "ok", "{body}");
            }
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Cheap enough to call every second: 200 calls well within a few seconds.
    let started = std::time::Instant::now();
    for _ in 0..200 {
        let response = server.client.get(format!("{root}/readyz")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_export_exits_zero_and_the_restarted_server_completes_it_exactly_once() {
    let dataset = medium();
    let data = loaded_dir(dataset).await;
    let log = data.path().join("server.log");
    let port = free_port();
    // Small files: many checkpoints, so SIGTERM lands mid-export.
    let extra =
        ["--export-file-resources", "100", "--export-parallelism", "1", "--log-format", "json"];
    let server = Served::start(data.path(), port, &log, &extra).await;
    let client = reqwest::Client::new();
    let status_url = kickoff(&client, &server.base, "$export").await;
    let job_id = status_url.rsplit('/').next().unwrap().to_owned();
    // Wait until some files are finished, then stop.
    let job_dir = data.path().join("exports").join("jobs").join(&job_id);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n_files = std::fs::read_dir(&job_dir).map_or(0, |d| d.count());
        if n_files >= 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no file was finished");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (exit, took) = server.terminate(Duration::from_secs(40)).await;
    assert!(exit.success(), "exit status {exit:?} after SIGTERM");
    assert!(took < Duration::from_secs(35), "{took:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    // JSON logs: every line an object; the lines about this export carry its job id.
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let about_export: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["fields"]["message"].as_str().is_some_and(|m| m.contains("export file finished"))
        })
        .collect();
    assert!(!about_export.is_empty(), "{text}");
    for line in &about_export {
        assert_eq!(line["span"]["job_id"], job_id.as_str(), "{line}");
    }
    assert!(text.contains("paused for shutdown"), "{text}");

    // Restart on the same port: the same status URL completes, every resource exactly once.
    let server = Served::start(data.path(), port, &log, &extra).await;
    wait_job(&client, &server.base, &job_id, "completed").await;
    let manifest = body_json(client.get(&status_url).send().await.unwrap()).await;
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in manifest["output"].as_array().unwrap() {
        let body = client.get(item["url"].as_str().unwrap()).send().await.unwrap();
        for line in body.text().await.unwrap().lines() {
            let resource: Value = serde_json::from_str(line).unwrap();
            got.entry(resource["resourceType"].as_str().unwrap().to_owned())
                .or_default()
                .push(resource["id"].as_str().unwrap().to_owned());
        }
    }
    for (type_name, lines) in &dataset.lines {
        let ids = got.get(type_name).cloned().unwrap_or_default();
        let unique: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{type_name}: each resource once");
        assert_eq!(ids.len(), lines.len(), "{type_name}: every resource");
    }
    let finished = text.lines().filter(|l| l.contains("export completed")).count();
    assert_eq!(finished, 0, "the first run did not complete it");
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().filter(|l| l.contains("\"export completed\"")).count(), 1);
}

/// Starts `bulkfhir serve --config FILE` (plus `extra`, with `envs`) and returns its base URL
/// from the file's `listen`.
async fn serve_with_config(
    config: &Path,
    port: u16,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Served {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"));
    // A global flag first: the file is found wherever `--config` stands.
    command
        .args(["--log-format", "text", "serve", "--config"])
        .arg(config)
        .args(extra)
        .env_remove("BULKFHIR_BASE_URL")
        .env("BULKFHIR_AUTH", "none")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (name, value) in envs {
        command.env(name, value);
    }
    let child = command.spawn().expect("start bulkfhir serve --config");
    Served::wait(port, child).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_file_sets_serve_and_flags_and_environment_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("bulkfhir.toml");
    std::fs::write(
        &config,
        format!(
            "# bulkfhir\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nbase-url = \"http://file.example/fhir\"\nallowed-hosts = [\"127.0.0.1:{port}\"]\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .args(["config", "check"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));

    let client = reqwest::Client::new();
    // The base URL the server hands out, whatever it is.
    let location = async |base: &str| {
        let handle = TestServer::client_only(base, client.clone());
        let query = "$export?_type=Patient";
        let (status, headers, _) =
            crate::export::kick_raw(&handle, reqwest::Method::GET, query, &[], None).await;
        assert_eq!(status, 202);
        let url = headers["content-location"].to_str().unwrap();
        url.split("/$export-status/").next().unwrap().to_owned()
    };
    // The file alone.
    let server = serve_with_config(&config, port, &[], &[]).await;
    assert_eq!(location(&server.base).await, "http://file.example/fhir");
    let _ = server.terminate(Duration::from_secs(40)).await;
    // The environment beats the file.
    let env = [("BULKFHIR_BASE_URL", "http://env.example/fhir")];
    let server = serve_with_config(&config, port, &[], &env).await;
    assert_eq!(location(&server.base).await, "http://env.example/fhir");
    let _ = server.terminate(Duration::from_secs(40)).await;
    // A flag beats both.
    let flag = ["--base-url", "http://flag.example/fhir"];
    let server = serve_with_config(&config, port, &flag, &env).await;
    assert_eq!(location(&server.base).await, "http://flag.example/fhir");
    let _ = server.terminate(Duration::from_secs(40)).await;

    // Unknown keys and invalid values are reported with their lines, and stop `serve`.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"nowhere\"\n\nmax-running-exports = \"many\"\nlisten_port = 1\n",
    )
    .unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2));
    let report = String::from_utf8_lossy(&check.stdout);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 3, "{report}");
    assert!(lines[0].contains("bad.toml:1: 'listen'"), "{report}");
    assert!(lines[1].contains("bad.toml:3: 'max-running-exports'"), "{report}");
    assert!(lines[2].contains("bad.toml:4: unknown key 'listen_port'"), "{report}");
    let serve = std::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(serve.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&serve.stderr).contains("bad.toml:4: unknown key"));
}

/// Headless Chromium: the page's DOM after it ran for a moment (`--dump-dom`), or a screenshot.
pub(crate) fn chromium(url: &str, profile: &Path, output: Option<&Path>) -> String {
    let mut command = std::process::Command::new("chromium");
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=900,1000",
    ]);
    command.arg("--virtual-time-budget=2500");
    command.arg(format!("--user-data-dir={}", profile.display()));
    match output {
        Some(png) => command.arg(format!("--screenshot={}", png.display())),
        None => command.arg("--dump-dom"),
    };
    let result = command.arg(url).stdin(std::process::Stdio::null()).output().unwrap_or_else(|e| {
        panic!("run chromium ({e}); `bash .ci/run` installs it (Debian package chromium)")
    });
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    String::from_utf8_lossy(&result.stdout).into_owned()
}

/// The `data-*` attributes of the job card of `job_id` in a dumped DOM.
fn card_attributes(dom: &str, job_id: &str) -> Option<BTreeMap<String, String>> {
    let at = dom.find(&format!("data-job-id=\"{job_id}\""))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let mut attributes = BTreeMap::new();
    for part in dom[start..end].split("\" ") {
        if let Some((name, value)) = part.split_once("=\"") {
            let name = name.rsplit(' ').next().unwrap_or(name);
            attributes.insert(name.to_owned(), value.trim_end_matches('"').to_owned());
        }
    }
    Some(attributes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_page_shows_progress_rising_and_a_finished_jobs_files_in_a_real_browser() {
    let dataset = small();
    let data = loaded_dir(dataset).await;
    let log = data.path().join("server.log");
    // One resource per file: a few thousand files, so the export runs for seconds.
    let extra = ["--export-file-resources", "1", "--export-parallelism", "1"];
    let server = Served::start(data.path(), free_port(), &log, &extra).await;
    let client = reqwest::Client::new();
    let status_url = kickoff(&client, &server.base, "$export").await;
    let job_id = status_url.rsplit('/').next().unwrap().to_owned();
    let page = format!("{}/$export-jobs", server.base);
    let profile = tempfile::tempdir().unwrap();
    // Screenshots land in BULKFHIR_SCREENSHOT_DIR when set (to refresh docs/), else here.
    let shots = std::env::var_os("BULKFHIR_SCREENSHOT_DIR")
        .map_or_else(|| data.path().to_owned(), std::path::PathBuf::from);

    let mut running: Vec<u64> = Vec::new();
    let mut most_samples = 0;
    let mut shot_taken = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let dom = chromium(&page, profile.path(), None);
        let card = card_attributes(&dom, &job_id).unwrap_or_else(|| panic!("no card: {dom}"));
        match card["data-status"].as_str() {
            "in-progress" => {
                running.push(card["data-resources"].parse().unwrap());
                most_samples = most_samples.max(card["data-samples"].parse::<usize>().unwrap());
                assert!(dom.contains(">Cancel<"), "a running job can be cancelled");
                assert!(dom.contains("<canvas"), "a running job has its rate plot");
                if most_samples >= 6 && !shot_taken {
                    chromium(&page, profile.path(), Some(&shots.join("export-page-running.png")));
                    shot_taken = true;
                }
            }
            "completed" => break,
            _ => {}
        }
        assert!(std::time::Instant::now() < deadline, "the export did not finish");
    }
    // The page saw the job running, its resource count rising.
    assert!(running.len() >= 2, "seen running {} times", running.len());
    assert!(running.windows(2).all(|w| w[0] <= w[1]), "{running:?}");
    assert!(running.last() > running.first(), "progress rose: {running:?}");
    assert!(most_samples >= 3, "the plot had {most_samples} samples");

    // Finished: every file, with its count, adding up to the data set.
    let dom = chromium(&page, profile.path(), None);
    let card = card_attributes(&dom, &job_id).unwrap();
    assert_eq!(card["data-status"], "completed");
    assert_eq!(card["data-resources"], dataset.count().to_string());
    let file_counts: Vec<u64> = dom
        .split("data-file-count=\"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].parse().unwrap())
        .collect();
    assert_eq!(file_counts.len(), dataset.count(), "one row per file");
    assert_eq!(file_counts.iter().sum::<u64>(), dataset.count() as u64);
    chromium(&page, profile.path(), Some(&shots.join("export-page-finished.png")));
    assert!(shots.join("export-page-finished.png").is_file());
}
