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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_killed_half_way_completes_after_restart_with_every_resource_once() {
    let work = tempfile::tempdir().unwrap();
    let generated = work.path().join("generated");
    let data = work.path().join("data");
    run(&["generate", "--patients", "560", "--seed", "7", "--out"], &generated);
    let expected = line_counts(&generated);
    let total: usize = expected.values().sum();
    assert!(total >= 200_000, "a multi-file export of at least 200,000 resources ({total})");
    run(&["load", "--data-dir", data.to_str().unwrap()], &generated);

    let flags = ["--export-file-resources", "5000"];
    let server = BinaryServer::start_with(&data, None, &flags).await;
    let port = server.port();
    let client = reqwest::Client::new();
    let response = client
        .get(format!("{}/$export", server.base))
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let status_url = response.headers()["content-location"].to_str().unwrap().to_owned();
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
            "the export must still run when it is killed: {status}"
        );
        if finished >= 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the export never started writing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before_kill: BTreeMap<String, std::time::SystemTime> = files_in(&job_dir)
        .into_iter()
        .filter(|f| f.ends_with(".ndjson"))
        .filter_map(|f| {
            Some((f.clone(), std::fs::metadata(job_dir.join(&f)).ok()?.modified().ok()?))
        })
        .collect();
    server.kill();

    let server = BinaryServer::start_with(&data, Some(port), &flags).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let manifest = loop {
        let response = client.get(&status_url).send().await.unwrap();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match response.status().as_u16() {
            200 => break body_json(response).await,
            202 => {}
            other => panic!("status {other}: {}", body_json(response).await),
        }
        assert!(std::time::Instant::now() < deadline, "the resumed export did not finish");
        // Poll as the server asks.
        tokio::time::sleep(Duration::from_secs(retry_after.expect("202 carries Retry-After")))
            .await;
    };

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
    let counts: BTreeMap<String, usize> =
        seen.iter().map(|(t, ids)| (t.clone(), ids.len())).collect();
    assert_eq!(counts, expected, "every resource exactly once");
    assert_eq!(manifest["error"], serde_json::json!([]));
    assert_eq!(files_in(&job_dir), listed, "no file that the manifest does not list");
    // It resumed rather than started over: files checkpointed before the kill were kept as they
    // were (the newest one may have finished just before its checkpoint, and is then rewritten).
    let kept = before_kill
        .iter()
        .filter(|(name, modified)| {
            std::fs::metadata(job_dir.join(name)).and_then(|m| m.modified()).ok()
                == Some(**modified)
        })
        .count();
    assert!(
        kept + 1 >= before_kill.len() && kept >= 1,
        "kept {kept} of {} files finished before the kill",
        before_kill.len()
    );
    drop(server);
}
