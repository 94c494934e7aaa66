//! An export killed with SIGKILL half-way resumes after a restart from its checkpoints.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use serde_json::Value;

use crate::common::{BinaryServer, body_json};

fn run(args: &[&str], dir_arg: &Path) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .args(args)
        .arg(dir_arg)
        .output()
        .expect("run bulkfhir");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "bulkfhir {args:?} failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn line_counts(dir: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if let Some(type_name) = name.strip_suffix(".ndjson") {
            let n =
                std::fs::read_to_string(&path).unwrap().lines().filter(|l| !l.is_empty()).count();
            counts.insert(type_name.to_owned(), n);
        }
    }
    counts
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default()
}

/// Every resource of an export, by type, read from its manifest's files; asserts that each file
/// holds as many lines as the manifest says and that no resource comes twice.
async fn read_export(
    client: &reqwest::Client,
    manifest: &Value,
) -> (BTreeMap<String, BTreeSet<String>>, BTreeSet<String>) {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut listed = BTreeSet::new();
    for item in manifest["output"].as_array().unwrap() {
        let url = item["url"].as_str().unwrap();
        listed.insert(url.rsplit('/').next().unwrap().to_owned());
        let text = client.get(url).send().await.unwrap().text().await.unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(item["count"].as_u64().unwrap() as usize, lines.len());
        for line in lines {
            let resource: Value = serde_json::from_str(line).unwrap();
            let ids =
                seen.entry(resource["resourceType"].as_str().unwrap().to_owned()).or_default();
            assert!(
                ids.insert(resource["id"].as_str().unwrap().to_owned()),
                "{line:.80} exported twice"
            );
        }
    }
    (seen, listed)
}

/// Kicks off `path` (e.g. `$export`), waits until a few files are finished, kills the server
/// with SIGKILL, restarts it on the same port, and waits for the same status URL to complete.
/// Checks that nothing is listed or written twice, that no file outside the manifest remains,
/// and that the files finished before the kill were kept (it resumed rather than started over).
/// Returns every exported resource by type, and the restarted server.
async fn kill_and_resume(
    data: &Path,
    path: &str,
    flags: &[&str],
) -> (BTreeMap<String, BTreeSet<String>>, BinaryServer) {
    let server = BinaryServer::start_with(data, None, flags).await;
    let port = server.port();
    let client = reqwest::Client::new();
    let status_url = kickoff(&client, &server.base, path).await;
    let job_id = status_url.rsplit('/').next().unwrap().to_owned();
    let job_dir = data.join("exports/jobs").join(&job_id);

    // Kill it once a few files are finished and checkpointed, while it is still running.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let finished = files_in(&job_dir).iter().filter(|f| f.ends_with(".ndjson")).count();
        let job: Value = client
            .get(format!("{}/BulkDataExport/{job_id}", server.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let status = job["status"].as_str().unwrap();
        assert!(
            status == "accepted" || status == "in-progress",
            "{path}: the export must still run when it is killed: {status}"
        );
        if finished >= 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{path}: the export never started writing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before_kill = finished_files(&job_dir, ".ndjson");
    server.kill();

    let server = BinaryServer::start_with(data, Some(port), flags).await;
    let manifest = wait_for_manifest(&client, &status_url).await;
    let (seen, listed) = read_export(&client, &manifest).await;
    assert_eq!(files_in(&job_dir), listed, "{path}: no file that the manifest does not list");
    assert_resumed(path, &job_dir, &before_kill);
    (seen, server)
}

/// The finished files (ending in `extension`) in `job_dir`, with their modification times.
fn finished_files(job_dir: &Path, extension: &str) -> BTreeMap<String, std::time::SystemTime> {
    files_in(job_dir)
        .into_iter()
        .filter(|f| f.ends_with(extension))
        .filter_map(|f| {
            Some((f.clone(), std::fs::metadata(job_dir.join(&f)).ok()?.modified().ok()?))
        })
        .collect()
}

/// The export resumed rather than started over: files checkpointed before the kill were kept
/// as they were. Each unit running at the kill may have finished a file just before its
/// checkpoint, which is then rewritten: at most one per running unit (the server runs as many
/// units at once as the machine has cores).
fn assert_resumed(
    what: &str,
    job_dir: &Path,
    before_kill: &BTreeMap<String, std::time::SystemTime>,
) {
    let running_units = std::thread::available_parallelism().map_or(2, |n| n.get());
    let kept = before_kill
        .iter()
        .filter(|(name, modified)| {
            std::fs::metadata(job_dir.join(name)).and_then(|m| m.modified()).ok()
                == Some(**modified)
        })
        .count();
    assert!(
        kept + running_units >= before_kill.len() && kept >= 1,
        "{what}: kept {kept} of {} files finished before the kill",
        before_kill.len()
    );
}

/// Kicks off `path` under `base`; returns the status URL.
async fn kickoff(client: &reqwest::Client, base: &str, path: &str) -> String {
    let response = client
        .get(format!("{base}/{path}"))
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202, "kick-off of {path}");
    response.headers()["content-location"].to_str().unwrap().to_owned()
}

/// Polls a status URL as the server asks (Retry-After) until the manifest comes.
async fn wait_for_manifest(client: &reqwest::Client, status_url: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let response = client.get(status_url).send().await.unwrap();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match response.status().as_u16() {
            200 => {
                let manifest = body_json(response).await;
                assert_eq!(manifest["error"], serde_json::json!([]));
                return manifest;
            }
            202 => {}
            other => panic!("status {other}: {}", body_json(response).await),
        }
        assert!(std::time::Instant::now() < deadline, "the export did not finish");
        tokio::time::sleep(Duration::from_secs(retry_after.expect("202 carries Retry-After")))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_killed_half_way_completes_after_restart_with_every_resource_once() {
    let work = tempfile::tempdir().unwrap();
    let generated = work.path().join("generated");
    let data = work.path().join("data");
    run(&["generate", "--patients", "560", "--seed", "7", "--out"], &generated);
    let expected = line_counts(&generated);
    let total: usize = expected.values().sum();
    assert!(total >= 200_000, "a multi-file export of at least 200,000 resources ({total})");
    kill_a_bulk_load_then_load_again(&data, &generated);
    let flags = ["--export-file-resources", "5000"];

    // System level: every generated resource exactly once.
    let (seen, server) = kill_and_resume(&data, "$export", &flags).await;
    let counts: BTreeMap<String, usize> =
        seen.iter().map(|(t, ids)| (t.clone(), ids.len())).collect();
    assert_eq!(counts, expected, "every resource exactly once");
    drop(server);

    // Group level (members read in batches, small types scanned, a file ending inside a batch):
    // the killed and resumed export holds exactly what an uninterrupted one does.
    let (resumed, server) = kill_and_resume(&data, "Group/all-patients/$export", &flags).await;
    let client = reqwest::Client::new();
    let status_url = kickoff(&client, &server.base, "Group/all-patients/$export").await;
    let manifest = wait_for_manifest(&client, &status_url).await;
    let (uninterrupted, _) = read_export(&client, &manifest).await;
    assert_eq!(resumed, uninterrupted, "the resumed Group export equals an uninterrupted one");
    let in_group: usize = resumed.values().map(BTreeSet::len).sum();
    assert!(in_group * 10 >= total * 9, "the Group of every patient exports nearly everything");
    drop(server);

    // A view export ($viewdefinition-export, CSV) killed half-way: every Observation's row once.
    let rows = kill_and_resume_view(&data, &flags).await;
    assert_eq!(rows.len(), expected["Observation"], "one row per Observation");
}

/// Loads `generated` into the empty store at `data` in bulk mode, SIGKILLs the load once it
/// has committed some batches (before it built its key index), then loads everything again:
/// the second load's open builds the index, finds data, and loads in normal mode. The export
/// that follows checks that every resource is there exactly once.
fn kill_a_bulk_load_then_load_again(data: &Path, generated: &Path) {
    let database = data.join("bulkfhir.sqlite");
    let mut load = std::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .args(["load", "--batch-size", "2000", "--data-dir"])
        .arg(data)
        .arg(generated)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start bulkfhir load");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let written = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let wal = data.join("bulkfhir.sqlite-wal");
    while written(&database) + written(&wal) < 40 << 20 {
        assert!(load.try_wait().unwrap().is_none(), "the load ended before it was killed");
        assert!(std::time::Instant::now() < deadline, "the load wrote nothing");
        #[allow(clippy::disallowed_methods, reason = "polling a condition")]
        std::thread::sleep(Duration::from_millis(20));
    }
    load.kill().unwrap();
    load.wait().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .args(["load", "--data-dir"])
        .arg(data)
        .arg(generated)
        .output()
        .expect("run bulkfhir load again");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the second load failed: {stderr}");
    assert!(stderr.contains("built it now"), "the killed load's index, built at open: {stderr}");
    assert!(!stderr.contains("loading in bulk mode"), "the store holds data: {stderr}");
}

/// Kicks off a `$viewdefinition-export` of an Observation view (CSV), kills the server with
/// SIGKILL once a few files are finished, restarts it, and follows the same status URL to the
/// result. Checks that no file outside the result remains, that no row comes twice and that it
/// resumed from its checkpoints; returns the rows' ids.
async fn kill_and_resume_view(data: &Path, flags: &[&str]) -> BTreeSet<String> {
    let server = BinaryServer::start_with(data, None, flags).await;
    let port = server.port();
    let client =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let view = serde_json::json!({
        "resourceType": "ViewDefinition", "name": "obs", "status": "active",
        "resource": "Observation",
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()"},
            {"name": "code", "path": "code.coding.first().code"},
            {"name": "subject", "path": "subject.getReferenceKey(Patient)"}
        ]}]
    });
    let parameters = crate::views::export_parameters(&[("obs", view)], "csv", &[]);
    let status_url = crate::views::kick_view_export(&client, &server.base, &parameters).await;
    let job_id = status_url.rsplit('/').next().unwrap().to_owned();
    let job_dir = data.join("exports/jobs").join(&job_id);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let finished = files_in(&job_dir).iter().filter(|f| f.ends_with(".csv")).count();
        let response = client.get(&status_url).send().await.unwrap();
        assert_eq!(
            response.status().as_u16(),
            202,
            "the view export must still run when it is killed"
        );
        if finished >= 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the view export never started writing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before_kill = finished_files(&job_dir, ".csv");
    server.kill();

    let _server = BinaryServer::start_with(data, Some(port), flags).await;
    let result = crate::views::view_export_result(&client, &status_url).await;
    let mut listed = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for parameter in result["parameter"].as_array().unwrap() {
        if parameter["name"] != "output" {
            continue;
        }
        for part in parameter["part"].as_array().unwrap().iter().skip(1) {
            let url = part["valueUri"].as_str().unwrap();
            listed.insert(url.rsplit('/').next().unwrap().to_owned());
            let text = client.get(url).send().await.unwrap().text().await.unwrap();
            let mut lines = text.lines();
            assert_eq!(lines.next(), Some("id,code,subject"), "{url} starts with the header");
            for line in lines {
                let id = line.split(',').next().unwrap().to_owned();
                assert!(ids.insert(id), "{line} exported twice");
            }
        }
    }
    assert_eq!(files_in(&job_dir), listed, "no file that the result does not list");
    assert_resumed("the view export", &job_dir, &before_kill);
    ids
}
