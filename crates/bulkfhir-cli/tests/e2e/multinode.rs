//! Several `bulkfhir serve` nodes on one PostgreSQL and one shared export folder: one export is
//! kicked off on node A and polled on node B, its parts are run by every node, and a node killed
//! with SIGKILL half-way loses nothing: the manifest holds every resource exactly once.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use bulkfhir_store_postgres::testing::TestCluster;
use serde_json::Value;

use crate::common::{BinaryServer, TestServer, body_json, bulkfhir_ok};

/// Rows of a query, one string per row (columns joined by `|`), through psql.
fn psql(url: &str, query: &str) -> Vec<String> {
    let output =
        std::process::Command::new("psql").args([url, "-qtAc", query]).output().expect("run psql");
    assert!(output.status.success(), "{query}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect()
}

/// The first column of every row `sql` returns.
async fn first_column<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    db: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<T> {
    db.query(sql, params).await.unwrap().iter().map(|row| row.get(0)).collect()
}

fn line_counts(dir: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if let Some(type_name) = name.strip_suffix(".ndjson") {
            let text = std::fs::read_to_string(&path).unwrap();
            counts.insert(type_name.to_owned(), text.lines().filter(|l| !l.is_empty()).count());
        }
    }
    counts
}

/// Generates `patients` patients into `work/generated` and loads them into the database at
/// `url`; the resources per type.
fn generate_and_load(
    work: &Path,
    url: &str,
    patients: &str,
    seed: &str,
) -> BTreeMap<String, usize> {
    let generated = work.join("generated");
    let out = generated.to_str().unwrap();
    bulkfhir_ok(&["generate", "--patients", patients, "--seed", seed, "--out", out]);
    let expected = line_counts(&generated);
    let total: usize = expected.values().sum();
    let loader = work.join("loader");
    let loaded =
        bulkfhir_ok(&["load", "--database", url, "--data-dir", loader.to_str().unwrap(), out]);
    assert!(loaded.contains(&format!("loaded {total} resources")), "{loaded}");
    expected
}

/// The export folder every node shares, created in `work`, and its `--export-store` URL.
fn shared_folder(work: &Path) -> (std::path::PathBuf, String) {
    let shared = work.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let store = format!("file://{}", shared.display());
    (shared, store)
}

/// Kicks off a system export on the node at `base`: its status URL and job id.
async fn kick_off(client: &reqwest::Client, base: &str) -> (String, String) {
    let status =
        crate::export::kick(&TestServer::client_only(base, client.clone()), "$export").await;
    let job_id = status.rsplit('/').next().unwrap().to_owned();
    (status, job_id)
}

fn node_id(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("node-id")).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_export_and_a_killed_node_loses_nothing() {
    let work = tempfile::tempdir().unwrap();
    let url = TestCluster::get().database();
    // 160 patients (about 60,000 resources) in CI; BULKFHIR_MULTINODE_PATIENTS=2674 makes it
    // the million.
    let patients =
        std::env::var("BULKFHIR_MULTINODE_PATIENTS").unwrap_or_else(|_| "160".to_owned());
    // At the large size there is time to let node C finish a part before it is killed, so
    // that every node's work is in the manifest.
    let all_three = patients != "160";
    let expected = generate_and_load(work.path(), &url, &patients, "11");
    let total: usize = expected.values().sum();

    // Three nodes, each with a data directory of its own, on one database and one folder.
    let (shared, store) = shared_folder(work.path());
    let flags = [
        "--database",
        &url,
        "--export-store",
        &store,
        "--export-file-resources",
        "500",
        "--export-key-range",
        "10000",
        "--export-parallelism",
        "2",
        "--export-lease-secs",
        "3",
        // Helpers join within 0.1 s: the CI-sized export takes a couple of seconds.
        "--export-poll-ms",
        "100",
    ];
    let dirs: Vec<_> = ["a", "b", "c"].iter().map(|n| work.path().join(n)).collect();
    let a = BinaryServer::start_with(&dirs[0], None, &flags).await;
    let b = BinaryServer::start_with(&dirs[1], None, &flags).await;
    let c = BinaryServer::start_with(&dirs[2], None, &flags).await;
    let ids: Vec<String> = dirs.iter().map(|d| node_id(d)).collect();

    // Kick off on A, poll on B.
    let client = reqwest::Client::new();
    let (status_on_a, job_id) = kick_off(&client, &a.base).await;
    let status_on_b = status_on_a.replace(&a.base, &b.base);
    assert_ne!(status_on_a, status_on_b);
    let units = psql(&url, &format!("SELECT count(*) FROM export_unit WHERE job_id = '{job_id}'"));
    let unit_count: usize = units[0].parse().unwrap();
    assert!(unit_count >= 10, "the export has {unit_count} parts; the test needs many");

    // Wait until node C is half-way through a part (it has checkpointed a file of it), then
    // kill it with SIGKILL.
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let c_prefix = format!("{}/%", ids[2]);
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    let orphaned: Vec<i32> = loop {
        let status: String = db
            .query_one("SELECT status FROM export_job WHERE id = $1", &[&job_id])
            .await
            .unwrap()
            .get(0);
        assert!(
            status == "accepted" || status == "in-progress",
            "the export must still run when node C is killed: {status}"
        );
        let halfway = first_column::<i32>(
            &db,
            "SELECT idx FROM export_unit WHERE job_id = $1 AND NOT done
               AND checkpoint IS NOT NULL AND lease_owner LIKE $2",
            &[&job_id, &c_prefix],
        )
        .await;
        let c_finished: i64 = db
            .query_one(
                "SELECT count(*) FROM export_unit WHERE job_id = $1 AND done AND lease_owner LIKE $2",
                &[&job_id, &c_prefix],
            )
            .await
            .unwrap()
            .get(0);
        if !halfway.is_empty() && (c_finished > 0 || !all_three) {
            c.kill();
            // C may have finished one of them between the query and its death (a few ms): the
            // parts C left half-way are those still not done now that it cannot write.
            let left = first_column::<i32>(
                &db,
                "SELECT idx FROM export_unit WHERE job_id = $1 AND idx = ANY($2) AND NOT done",
                &[&job_id, &halfway],
            )
            .await;
            assert!(!left.is_empty(), "C finished every part it held just before the kill");
            break left;
        }
        assert!(std::time::Instant::now() < deadline, "node C never ran a part of the export");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let killed_at = std::time::Instant::now();

    // B answers the status and, when it is done, the manifest.
    let manifest = loop {
        let response = client.get(&status_on_b).send().await.unwrap();
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
        assert!(std::time::Instant::now() < deadline, "the export did not finish");
        let wait = retry_after.expect("202 carries Retry-After");
        tokio::time::sleep(Duration::from_secs(wait)).await;
    };
    assert_eq!(manifest["error"], serde_json::json!([]));

    // Every resource exactly once, each file served by node B.
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut listed = BTreeSet::new();
    for item in manifest["output"].as_array().unwrap() {
        let url_on_b = item["url"].as_str().unwrap().replace(&a.base, &b.base);
        listed.insert(url_on_b.rsplit('/').next().unwrap().to_owned());
        let response = client.get(&url_on_b).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{url_on_b}");
        let text = response.text().await.unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(item["count"].as_u64().unwrap() as usize, lines.len(), "{url_on_b}");
        for line in lines {
            let resource: Value = serde_json::from_str(line).unwrap();
            let type_ids =
                seen.entry(resource["resourceType"].as_str().unwrap().to_owned()).or_default();
            assert!(
                type_ids.insert(resource["id"].as_str().unwrap().to_owned()),
                "{line:.80} exported twice"
            );
        }
    }
    let counts: BTreeMap<String, usize> =
        seen.iter().map(|(t, ids)| (t.clone(), ids.len())).collect();
    assert_eq!(counts, expected, "every generated resource, exactly once");
    let job_dir = shared.join("jobs").join(&job_id);
    let on_disk: BTreeSet<String> = std::fs::read_dir(&job_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(on_disk, listed, "the shared folder holds the manifest's files and nothing else");

    // The parts were run by more than one node, and what C was half-way through was finished
    // by a survivor, from C's checkpoint.
    let owners = first_column::<String>(
        &db,
        "SELECT lease_owner FROM export_unit WHERE job_id = $1 AND done",
        &[&job_id],
    )
    .await;
    let finishers: BTreeSet<&str> = owners.iter().filter_map(|o| o.split('/').next()).collect();
    eprintln!(
        "{total} resources; {unit_count} parts finished by nodes {finishers:?} of {ids:?}; C held {orphaned:?}; \
         done {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    assert!(
        finishers.len() >= if all_three { 3 } else { 2 },
        "parts were run by {finishers:?} only"
    );
    assert!(finishers.iter().all(|f| ids.iter().any(|id| id == f)));
    for idx in &orphaned {
        let owner: String = db
            .query_one(
                "SELECT lease_owner FROM export_unit WHERE job_id = $1 AND idx = $2 AND done",
                &[&job_id, idx],
            )
            .await
            .unwrap()
            .get(0);
        assert!(!owner.starts_with(&format!("{}/", ids[2])), "part {idx} finished by {owner}");
    }
    drop((a, b));
}

/// With authorization on, nodes sharing a database share the clients registered and the key
/// that signs access tokens: a token one node issued is accepted by every other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_by_one_node_is_accepted_by_another() {
    let work = tempfile::tempdir().unwrap();
    let url = TestCluster::get().database();
    let keys = work.path().join("keys");
    bulkfhir_ok(&["client", "keygen", "--out", keys.to_str().unwrap()]);
    let admin_dir = work.path().join("admin");
    let jwks = keys.join("jwks.json");
    let id = bulkfhir_ok(&[
        "client",
        "add",
        "--database",
        &url,
        "--data-dir",
        admin_dir.to_str().unwrap(),
        "--name",
        "nightly",
        "--jwks",
        jwks.to_str().unwrap(),
        "--scope",
        "system/*.rs",
    ])
    .trim()
    .to_owned();
    let flags = ["--auth", "smart", "--database", &url];
    let a = BinaryServer::start_with(&work.path().join("a"), None, &flags).await;
    let b = BinaryServer::start_with(&work.path().join("b"), None, &flags).await;
    let key = keys.join("private-key.pem");
    let token = bulkfhir_ok(&[
        "client",
        "token",
        "--base-url",
        &a.base,
        "--client-id",
        &id,
        "--key",
        key.to_str().unwrap(),
    ])
    .trim()
    .to_owned();
    let client = reqwest::Client::new();
    for base in [&a.base, &b.base] {
        let response = client
            .get(format!("{base}/Patient?_count=1"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{base}: {}", body_json(response).await);
    }
    let anonymous = client.get(format!("{}/Patient", b.base)).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401, "and node B still checks tokens");
}

/// Nodes hear of each other's work at once (PostgreSQL `LISTEN`/`NOTIFY`), not at their next
/// poll: with polls a minute apart, node B starts on the parts of an export kicked off on node A
/// within seconds. Without the notifications it could not start before the minute is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_helps_with_another_nodes_export_as_soon_as_it_is_kicked_off() {
    let work = tempfile::tempdir().unwrap();
    let url = TestCluster::get().database();
    generate_and_load(work.path(), &url, "60", "7");
    let (_, store) = shared_folder(work.path());
    let flags = [
        "--database",
        &url,
        "--export-store",
        &store,
        "--export-file-resources",
        "200",
        "--export-key-range",
        "2000",
        "--export-parallelism",
        "1",
        "--export-poll-ms",
        "60000",
    ];
    let dirs: Vec<_> = ["a", "b"].iter().map(|n| work.path().join(n)).collect();
    let a = BinaryServer::start_with(&dirs[0], None, &flags).await;
    let b = BinaryServer::start_with(&dirs[1], None, &flags).await;
    let b_id = node_id(&dirs[1]);
    // Both runners have looked once at start-up and now wait a minute, or for a notification.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let kicked_off = std::time::Instant::now();
    let (_, job_id) = kick_off(&reqwest::Client::new(), &a.base).await;
    let by_b = format!(
        "SELECT count(*) FROM export_unit WHERE job_id = '{job_id}' AND lease_owner LIKE '{b_id}/%'"
    );
    loop {
        if psql(&url, &by_b)[0] != "0" {
            break;
        }
        assert!(
            kicked_off.elapsed() < Duration::from_secs(20),
            "node B took no part of A's export within 20 s (it polls every 60 s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("node B joined {:.2} s after the kick-off", kicked_off.elapsed().as_secs_f64());
    drop((a, b));
}
