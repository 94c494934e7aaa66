//! Tenants end to end, on the real binary: `bulkfhir tenant add|list|remove`, `load --tenant`,
//! the same Synthea set in two tenants with the same ids and different edits exported at every
//! level in both at once, each result exactly its own tenant's data; the cross-tenant
//! authorization cases (all 404); views run over each tenant's own data, and a ViewDefinition
//! stored in one tenant unknown to the other; and removal refused while a tenant's export is
//! queued.

use std::collections::{BTreeMap, BTreeSet};

use bulkfhir_auth::Algorithm;
use reqwest::{Client, Method};
use serde_json::{Value, json};

use crate::{
    auth::bulkfhir,
    authz::{
        Key, call, get, get_token, jwks_arg, keygen, kick as kick_with_token, manifest, succeeded,
    },
    common::{BinaryServer, Dataset, TestServer, assert_outcome, medium, small},
    export::{kick, output_by_type},
};

const FHIR_JSON: &str = "application/fhir+json";

fn ids_of(dataset: &Dataset, type_name: &str) -> BTreeSet<String> {
    dataset.lines[type_name]
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["id"].as_str().unwrap().to_owned())
        .collect()
}

fn resource(dataset: &Dataset, type_name: &str, id: &str) -> Value {
    dataset.lines[type_name]
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|r| r["id"] == id)
        .unwrap()
}

fn ids(resources: Option<&Vec<Value>>) -> BTreeSet<String> {
    resources
        .map(|list| list.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// One tenant's edits, and what its data is after them.
struct Edits {
    birth_date: &'static str,
    deleted: Option<String>,
    created: Option<String>,
    members: Vec<String>,
}

async fn apply(server: &TestServer, dataset: &Dataset, patient: &str, edits: &Edits) {
    let mut edited = resource(dataset, "Patient", patient);
    edited["birthDate"] = json!(edits.birth_date);
    let (status, _, _) =
        server.send_json(Method::PUT, &format!("Patient/{patient}"), &edited.to_string()).await;
    assert_eq!(status, 200, "update Patient/{patient} at {}", server.base);
    if let Some(id) = &edits.deleted {
        let response =
            server.client.delete(server.url(&format!("Observation/{id}"))).send().await.unwrap();
        assert!(response.status().is_success(), "delete Observation/{id}");
    }
    if let Some(id) = &edits.created {
        let observation = json!({
            "resourceType": "Observation", "id": id, "status": "final",
            "code": {"text": "only here"}, "subject": {"reference": format!("Patient/{patient}")}
        });
        let (status, _, _) = server
            .send_json(Method::PUT, &format!("Observation/{id}"), &observation.to_string())
            .await;
        assert_eq!(status, 201, "create Observation/{id}");
    }
    let members: Vec<Value> = edits
        .members
        .iter()
        .map(|p| json!({"entity": {"reference": format!("Patient/{p}")}}))
        .collect();
    let group = json!({"resourceType": "Group", "id": "cohort", "type": "person", "actual": true, "member": members});
    let (status, _, _) = server.send_json(Method::PUT, "Group/cohort", &group.to_string()).await;
    assert_eq!(status, 201, "create Group/cohort");
}

/// Every exported resource of a finished kick-off at `path`, by type, with each file URL
/// checked to be the tenant's.
async fn export(server: &TestServer, path: &str) -> (Value, BTreeMap<String, Vec<Value>>) {
    let status_url = kick(server, path).await;
    // As a client honouring Retry-After (the binary's is 2 s, faster polls get 429).
    let manifest = loop {
        let response = server.client.get(&status_url).send().await.unwrap();
        match response.status().as_u16() {
            200 => break response.json::<Value>().await.unwrap(),
            202 => {
                let retry: u64 =
                    response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                tokio::time::sleep(std::time::Duration::from_secs(retry)).await;
            }
            other => {
                panic!("status {status_url} answered {other}: {}", response.text().await.unwrap())
            }
        }
    };
    for item in
        manifest["output"].as_array().unwrap().iter().chain(manifest["deleted"].as_array().unwrap())
    {
        let url = item["url"].as_str().unwrap();
        assert!(
            url.starts_with(&format!("{}/$export-file/", server.base)),
            "{url} is not under {}",
            server.base
        );
    }
    let output = output_by_type(server, &manifest, "output").await;
    (manifest, output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_with_the_same_ids_export_exactly_their_own_data() {
    isolation(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_with_the_same_ids_export_exactly_their_own_data_on_postgres() {
    isolation(Some(bulkfhir_store_postgres::testing::TestCluster::get().database())).await;
}

/// `bulkfhir ARGS` on `data`, and on `database` when given.
fn cli(args: &[&str], data: &std::path::Path, database: Option<&str>) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"));
    command.args(args).env("BULKFHIR_DATA_DIR", data);
    if let Some(url) = database {
        command.env("BULKFHIR_DATABASE", url);
    }
    command.output().expect("run bulkfhir")
}

/// Two tenants, the same data set with different edits, every export level in both at once.
async fn isolation(database: Option<String>) {
    let db = database.as_deref();
    let dataset = medium();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for tenant in ["acme", "beta"] {
        let text = succeeded(cli(&["tenant", "add", tenant], &data, db));
        assert!(text.contains(&format!("/fhir/t/{tenant}")), "{text}");
        succeeded(cli(&["load", "--tenant", tenant, dataset.dir.to_str().unwrap()], &data, db));
    }
    assert_eq!(succeeded(cli(&["tenant", "list"], &data, db)), "acme\nbeta\n");
    assert!(succeeded(cli(&["tenant", "add", "acme"], &data, db)).contains("exists already"));
    let refused = cli(&["tenant", "add", "Not_A_Name"], &data, db);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("invalid tenant name"));
    let refused = cli(&["load", "--tenant", "nope", dataset.dir.to_str().unwrap()], &data, db);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("there is no tenant 'nope'"));
    // The default tenant holds another data set, which must not appear in either tenant.
    let generated = dir.path().join("generated");
    succeeded(cli(
        &["generate", "--patients", "5", "--out", generated.to_str().unwrap()],
        &data,
        db,
    ));
    succeeded(cli(&["load", generated.to_str().unwrap()], &data, db));

    let server = match db {
        Some(url) => BinaryServer::start_with(&data, None, &["--database", url]).await,
        None => BinaryServer::start(&data).await,
    };
    let http = Client::new();
    let acme = TestServer::client_only(&format!("{}/t/acme", server.base), http.clone());
    let beta = TestServer::client_only(&format!("{}/t/beta", server.base), http.clone());
    let default = TestServer::client_only(&server.base, http.clone());

    let patients: Vec<String> = ids_of(dataset, "Patient").into_iter().collect();
    let observations: Vec<String> = ids_of(dataset, "Observation").into_iter().collect();
    let patient = patients[0].clone();
    let acme_edits = Edits {
        birth_date: "1900-01-01",
        deleted: Some(observations[0].clone()),
        created: None,
        members: patients[..3].to_vec(),
    };
    let beta_edits = Edits {
        birth_date: "1911-11-11",
        deleted: None,
        created: Some("beta-only".to_owned()),
        members: patients[3..6].to_vec(),
    };
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    apply(&acme, dataset, &patient, &acme_edits).await;
    apply(&beta, dataset, &patient, &beta_edits).await;

    // Reads: the same id, each tenant's own version; unknown tenants and names are 404.
    let (status, acme_patient) = acme.get(&format!("Patient/{patient}")).await;
    assert_eq!((status, acme_patient["birthDate"].as_str()), (200, Some("1900-01-01")));
    let (status, beta_patient) = beta.get(&format!("Patient/{patient}")).await;
    assert_eq!((status, beta_patient["birthDate"].as_str()), (200, Some("1911-11-11")));
    assert_eq!(acme_patient["meta"]["versionId"], "2");
    let (status, _) = default.get(&format!("Patient/{patient}")).await;
    assert_eq!(status, 404, "the default tenant holds generated data only");
    let (status, _) = beta.get(&format!("Observation/{}", observations[0])).await;
    assert_eq!(status, 200, "deleted in acme only");
    let (status, _) = acme.get("Observation/beta-only").await;
    assert_eq!(status, 404, "created in beta only");
    for path in
        ["t/nope/metadata", "t/nope/Patient", "t/Acme/Patient", "t/a_b/$export", "t/acme-/Patient"]
    {
        let (status, body) = default.get(path).await;
        assert_outcome(status, 404, &body);
    }
    let (status, history) = acme.get(&format!("Patient/{patient}/_history")).await;
    assert_eq!((status, history["entry"].as_array().map(Vec::len)), (200, Some(2)), "{history}");

    // Every export level in both tenants at once.
    let system = "$export?_type=Patient,Observation,Group";
    let since_path = format!("$export?_since={since}");
    let (
        acme_system,
        beta_system,
        acme_patients,
        beta_patients,
        acme_group,
        beta_group,
        acme_since,
        beta_since,
    ) = tokio::join!(
        export(&acme, system),
        export(&beta, system),
        export(&acme, "Patient/$export?_type=Patient"),
        export(&beta, "Patient/$export?_type=Patient"),
        export(&acme, "Group/cohort/$export?_type=Patient"),
        export(&beta, "Group/cohort/$export?_type=Patient"),
        export(&acme, &since_path),
        export(&beta, &since_path),
    );
    let all_patients: BTreeSet<String> = patients.iter().cloned().collect();
    let mut acme_observations = ids_of(dataset, "Observation");
    acme_observations.remove(&observations[0]);
    let mut beta_observations = ids_of(dataset, "Observation");
    beta_observations.insert("beta-only".to_owned());
    for (name, (_, output), observations, birth_date) in [
        ("acme", &acme_system, &acme_observations, "1900-01-01"),
        ("beta", &beta_system, &beta_observations, "1911-11-11"),
    ] {
        assert_eq!(ids(output.get("Patient")), all_patients, "{name}: Patient");
        assert_eq!(&ids(output.get("Observation")), observations, "{name}: Observation");
        assert_eq!(output["Patient"].len(), all_patients.len(), "{name}: each Patient once");
        let edited = output["Patient"].iter().find(|p| p["id"] == patient.as_str()).unwrap();
        assert_eq!(edited["birthDate"], birth_date, "{name}: its own edit");
        // Every other resource is byte-for-byte what was loaded.
        let unchanged = output["Patient"].iter().find(|p| p["id"] == patients[1].as_str()).unwrap();
        let mut loaded = resource(dataset, "Patient", &patients[1]);
        loaded["meta"] = unchanged["meta"].clone();
        assert_eq!(unchanged, &loaded, "{name}: an unedited Patient");
    }
    assert_eq!(ids(acme_patients.1.get("Patient")), all_patients);
    assert_eq!(ids(beta_patients.1.get("Patient")), all_patients);
    let members = |edits: &Edits| edits.members.iter().cloned().collect::<BTreeSet<String>>();
    assert_eq!(ids(acme_group.1.get("Patient")), members(&acme_edits), "acme's Group/cohort");
    assert_eq!(ids(beta_group.1.get("Patient")), members(&beta_edits), "beta's Group/cohort");

    // _since: exactly each tenant's own changes, and only its own deletion.
    let changed = |output: &BTreeMap<String, Vec<Value>>| -> BTreeSet<String> {
        output
            .iter()
            .flat_map(|(t, list)| {
                list.iter().map(move |r| format!("{t}/{}", r["id"].as_str().unwrap()))
            })
            .collect()
    };
    let want: BTreeSet<String> = [format!("Patient/{patient}"), "Group/cohort".to_owned()].into();
    assert_eq!(changed(&acme_since.1), want, "acme's changes since {since}");
    let mut want_beta = want.clone();
    want_beta.insert("Observation/beta-only".to_owned());
    assert_eq!(changed(&beta_since.1), want_beta, "beta's changes since {since}");
    let acme_deleted = output_by_type(&acme, &acme_since.0, "deleted").await;
    let listed: Vec<&Value> = acme_deleted.values().flatten().collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["entry"][0]["request"]["url"], format!("Observation/{}", observations[0]));
    assert!(beta_since.0["deleted"].as_array().unwrap().is_empty(), "beta deleted nothing");

    // Jobs are the tenant's own: four in each, none of the other's; status and file URLs moved
    // to the other tenant are 404.
    for (own, other) in [(&acme, &beta), (&beta, &acme)] {
        let (status, bundle) = own.get("BulkDataExport").await;
        assert_eq!(status, 200, "{bundle}");
        assert_eq!(bundle["total"], 4, "{bundle}");
        let (_, theirs) = other.get("BulkDataExport").await;
        let their_ids: BTreeSet<&str> = theirs["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"]["id"].as_str().unwrap())
            .collect();
        for entry in bundle["entry"].as_array().unwrap() {
            assert_eq!(entry["resource"]["tenant"].as_str(), own.base.rsplit('/').next());
            let id = entry["resource"]["id"].as_str().unwrap();
            assert!(!their_ids.contains(id));
            let (status, body) = other.get(&format!("BulkDataExport/{id}")).await;
            assert_outcome(status, 404, &body);
            let (status, body) = other.get(&format!("$export-status/{id}")).await;
            assert_outcome(status, 404, &body);
        }
    }
    let file = acme_system.0["output"][0]["url"].as_str().unwrap().replace("/t/acme/", "/t/beta/");
    let response = http.get(&file).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404, "{file}");
    // The default tenant saw no export and no edit.
    let (_, jobs) = default.get("BulkDataExport").await;
    assert_eq!(jobs["total"], 0, "{jobs}");
    assert!(
        jobs["entry"]
            .as_array()
            .is_none_or(|e| e.iter().all(|e| e["resource"].get("tenant").is_none()))
    );
    // Each tenant's files are in its own folder.
    for tenant in ["acme", "beta"] {
        let folder = data.join("exports/t").join(tenant).join("jobs");
        assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 4, "{}", folder.display());
    }
    // Views: a run reads its own tenant's data (the edited birth dates, the tenant's Group), a
    // ViewDefinition stored in one tenant is its own, and the other tenant cannot reference it.
    let view = json!({"resourceType": "ViewDefinition", "id": "dates", "name": "dates",
        "status": "active", "resource": "Patient",
        "select": [{"column": [{"name": "id", "path": "getResourceKey()"},
                               {"name": "birth_date", "path": "birthDate"}]}]});
    let run = |server: &TestServer, parameters: Vec<Value>| {
        let body = json!({"resourceType": "Parameters", "parameter": parameters}).to_string();
        let request = server
            .client
            .post(server.url("$viewdefinition-run"))
            .header("content-type", "application/fhir+json")
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let inline = || json!({"name": "viewResource", "resource": view});
    let of_patient =
        json!({"name": "patient", "valueReference": {"reference": format!("Patient/{patient}")}});
    for (server, edits) in [(&acme, &acme_edits), (&beta, &beta_edits)] {
        let (status, rows) = run(server, vec![inline(), of_patient.clone()]).await;
        assert_eq!(status, 200, "{rows}");
        assert_eq!(
            rows,
            json!([{"id": patient, "birth_date": edits.birth_date}]),
            "{}",
            server.base
        );
        let cohort = json!({"name": "group", "valueReference": {"reference": "Group/cohort"}});
        let (status, rows) = run(server, vec![inline(), cohort]).await;
        assert_eq!(status, 200, "{rows}");
        let ids: BTreeSet<String> =
            rows.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
        assert_eq!(ids, edits.members.iter().cloned().collect(), "{}'s cohort", server.base);
    }
    let (status, _, _) =
        acme.send_json(Method::PUT, "ViewDefinition/dates", &view.to_string()).await;
    assert_eq!(status, 201, "store the view in acme");
    let by_reference = || json!({"name": "viewReference", "valueReference": {"reference": "ViewDefinition/dates"}});
    let (status, rows) = run(&acme, vec![by_reference(), of_patient.clone()]).await;
    assert_eq!((status, rows[0]["birth_date"].as_str()), (200, Some("1900-01-01")), "{rows}");
    let (status, outcome) = run(&beta, vec![by_reference(), of_patient.clone()]).await;
    assert_outcome(status, 404, &outcome);
    let (status, outcome) = beta.get("ViewDefinition/dates").await;
    assert_outcome(status, 404, &outcome);

    // Removal takes the tenant's store (folder or schema) and files, and leaves the other. On
    // PostgreSQL it may happen while nodes serve the tenant: within seconds they answer 404 for
    // it (503 until they notice, never a 500) and go on serving the others. The embedded store waits for the server.
    if db.is_none() {
        drop(server);
        let text = succeeded(cli(&["tenant", "remove", "beta"], &data, db));
        assert!(text.contains("tenant beta removed, with "), "{text}");
    } else {
        let text = succeeded(cli(&["tenant", "remove", "beta"], &data, db));
        assert!(text.contains("tenant beta removed, with "), "{text}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let (status, body) = beta.get("Patient?_count=1").await;
            // 503 (try again) while the node has not noticed yet; never a 500.
            assert!([200, 503, 404].contains(&status), "{status}: {body}");
            if status == 404 {
                assert_outcome(status, 404, &body);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "tenant beta is still served");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let (status, body) = acme.get(&format!("Patient/{patient}")).await;
        assert_eq!(status, 200, "{body}");
        drop(server);
    }
    assert_eq!(succeeded(cli(&["tenant", "list"], &data, db)), "acme\n");
    assert!(!data.join("exports/t/beta").exists());
    let refused = cli(&["client", "list", "--tenant", "beta"], &data, db);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("there is no tenant 'beta'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_tenant_takes_everything_of_it_and_waits_for_its_exports() {
    let dataset = small();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for tenant in ["gone", "kept"] {
        succeeded(bulkfhir(&["tenant", "add", tenant], &data));
        succeeded(bulkfhir(&["load", "--tenant", tenant, dataset.dir.to_str().unwrap()], &data));
    }
    {
        let server = BinaryServer::start(&data).await;
        let gone = TestServer::client_only(&format!("{}/t/gone", server.base), Client::new());
        let (_, output) = export(&gone, "$export?_type=Patient").await;
        assert_eq!(ids(output.get("Patient")), ids_of(dataset, "Patient"));
        // A running server holds the embedded tenant open: removal waits for it to stop.
        let refused = bulkfhir(&["tenant", "remove", "gone"], &data);
        assert!(!refused.status.success());
        assert!(String::from_utf8_lossy(&refused.stderr).contains("another `bulkfhir serve`"));
    }
    // A queued export (a job no runner has claimed) holds the tenant unless --force.
    {
        let stores = bulkfhir_app::Stores::open_in(&data, None, Some("gone")).await.unwrap();
        let snapshot = stores.resources.snapshot().await.unwrap();
        let job = bulkfhir_store::NewJob {
            id: bulkfhir_store::JobId::new(),
            requester: None,
            request: "{}".into(),
            plan: "{}".into(),
            units: vec!["{}".into()],
            request_time: snapshot.time,
            snapshot,
        };
        stores.jobs.create(job, 100).await.unwrap();
    }
    let refused = bulkfhir(&["tenant", "remove", "gone"], &data);
    let message = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        !refused.status.success() && message.contains("1 export(s) queued or running"),
        "{message}"
    );
    let text = succeeded(bulkfhir(&["tenant", "remove", "gone", "--force"], &data));
    assert!(text.contains("tenant gone removed, with 1 export file(s)"), "{text}");
    assert_eq!(succeeded(bulkfhir(&["tenant", "list"], &data)), "kept\n");
    assert!(!data.join("tenants/gone").exists() && !data.join("exports/t/gone").exists());

    let server = BinaryServer::start(&data).await;
    let http = Client::new();
    let (status, _, body) = get(&http, &format!("{}/t/gone/Patient", server.base), None).await;
    assert_outcome(status, 404, &body);
    let kept = TestServer::client_only(&format!("{}/t/kept", server.base), http.clone());
    let (status, bundle) = kept.get("Patient?_count=1").await;
    assert_eq!((status, bundle["entry"].as_array().map(Vec::len)), (200, Some(1)), "{bundle}");
    // Re-adding the name makes a new, empty tenant.
    succeeded(bulkfhir(&["tenant", "add", "gone"], &data));
    let again = TestServer::client_only(&format!("{}/t/gone", server.base), http.clone());
    let (status, bundle) = again.get("Patient").await;
    assert_eq!(status, 200, "{bundle}");
    assert!(bundle["entry"].as_array().is_none_or(Vec::is_empty), "{bundle}");
}

fn register_in(
    data: &std::path::Path,
    tenant: Option<&str>,
    name: &str,
    key: &Key,
    scope: &str,
) -> String {
    let mut args = vec!["client", "add", "--name", name, "--jwks", jwks_arg(key), "--scope", scope];
    if let Some(tenant) = tenant {
        args.extend(["--tenant", tenant]);
    }
    succeeded(bulkfhir(&args, data)).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_one_tenant_gets_404_for_everything_of_another() {
    let dataset = small();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for tenant in ["acme", "beta"] {
        succeeded(bulkfhir(&["tenant", "add", tenant], &data));
        succeeded(bulkfhir(&["load", "--tenant", tenant, dataset.dir.to_str().unwrap()], &data));
    }
    let key = keygen(dir.path(), Algorithm::ES384);
    let acme_client = register_in(&data, Some("acme"), "acme", &key, "system/*.cruds");
    let beta_client = register_in(&data, Some("beta"), "beta", &key, "system/*.cruds");
    let plain = register_in(&data, None, "plain", &key, "system/*.cruds");
    let operator = register_in(&data, None, "operator", &key, "system/*.rs bulkfhir/tenants");
    // Clients are listed per tenant.
    let listed = succeeded(bulkfhir(&["client", "list", "--tenant", "acme"], &data));
    assert!(listed.contains(&acme_client) && !listed.contains(&beta_client), "{listed}");

    let server = BinaryServer::start_with(&data, None, &["--auth", "smart"]).await;
    let http = Client::new();
    let acme = format!("{}/t/acme", server.base);
    let beta = format!("{}/t/beta", server.base);
    let token = |base: &str| format!("{base}/auth/token");
    let (status, config) = {
        let (status, _, body) =
            get(&http, &format!("{acme}/.well-known/smart-configuration"), None).await;
        (status, body)
    };
    assert_eq!((status, config["token_endpoint"].as_str()), (200, Some(token(&acme).as_str())));

    let acme_token = get_token(&http, &token(&acme), &key, &acme_client, "system/*.cruds").await;
    let acme_token = acme_token["access_token"].as_str().unwrap().to_owned();
    let beta_token = get_token(&http, &token(&beta), &key, &beta_client, "system/*.cruds").await;
    let beta_token = beta_token["access_token"].as_str().unwrap().to_owned();
    let plain_token = get_token(&http, &token(&server.base), &key, &plain, "system/*.cruds").await;
    let plain_token = plain_token["access_token"].as_str().unwrap().to_owned();
    let operator_token =
        get_token(&http, &token(&server.base), &key, &operator, "system/*.rs bulkfhir/tenants")
            .await;
    assert_eq!(operator_token["scope"], "system/*.rs bulkfhir/tenants");
    let operator_token = operator_token["access_token"].as_str().unwrap().to_owned();

    // A client is unknown at another tenant's token endpoint.
    let signed =
        crate::authz::assertion(&key, &acme_client, &token(&beta), 240, &crate::authz::fresh_jti());
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", signed.as_str()),
        ("scope", "system/*.rs"),
    ];
    let (status, _, body) = crate::authz::token_request(&http, &token(&beta), &form).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{body}");

    // Beta's own export, and a Patient of beta.
    let (status, headers, body) =
        kick_with_token(&http, &format!("{beta}/$export?_type=Patient"), &beta_token, false).await;
    assert_eq!(status, 202, "{body}");
    let beta_status = headers["content-location"].to_str().unwrap().to_owned();
    let beta_manifest = manifest(&http, &beta_status, &beta_token).await;
    let beta_file = beta_manifest["output"][0]["url"].as_str().unwrap().to_owned();
    let job = beta_status.rsplit('/').next().unwrap().to_owned();
    let patient = ids_of(dataset, "Patient").into_iter().next().unwrap();
    let patient_json = resource(dataset, "Patient", &patient).to_string();

    // Everything of beta with a token of acme, of the default tenant, or none of the two: 404.
    let cases: Vec<(Method, String, Option<String>)> = vec![
        (Method::GET, format!("{beta}/$export"), None),
        (Method::GET, format!("{beta}/Patient/$export"), None),
        (Method::GET, beta_status.clone(), None),
        (Method::DELETE, beta_status.clone(), None),
        (Method::GET, beta_file.clone(), None),
        (Method::GET, format!("{beta}/Patient/{patient}"), None),
        (Method::GET, format!("{beta}/Patient?_count=5"), None),
        (Method::GET, format!("{beta}/Patient/{patient}/_history"), None),
        (Method::PUT, format!("{beta}/Patient/{patient}"), Some(patient_json.clone())),
        (
            Method::POST,
            format!("{beta}/Observation"),
            Some(
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
                    .to_string(),
            ),
        ),
        (Method::DELETE, format!("{beta}/Patient/{patient}"), None),
        (Method::GET, format!("{beta}/BulkDataExport"), None),
        (Method::GET, format!("{beta}/BulkDataExport/{job}"), None),
    ];
    for token in [&acme_token, &plain_token] {
        for (method, url, body) in &cases {
            let headers: Vec<(&str, &str)> = if url.contains("$export?") || url.ends_with("$export")
            {
                vec![("accept", FHIR_JSON), ("prefer", "respond-async")]
            } else {
                vec![]
            };
            let (status, _, outcome) =
                call(&http, method.clone(), url, Some(token), &headers, body.clone()).await;
            assert_outcome(status, 404, &outcome);
        }
    }
    // Acme's token at the default tenant is just as unknown.
    let (status, _, outcome) =
        get(&http, &format!("{}/Patient?_count=1", server.base), Some(&acme_token)).await;
    assert_outcome(status, 404, &outcome);
    // Nothing happened to beta: its job is complete, its Patient unchanged.
    let (status, _, body) = get(&http, &beta_status, Some(&beta_token)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) =
        get(&http, &format!("{beta}/Patient/{patient}"), Some(&beta_token)).await;
    assert_eq!((status, body["meta"]["versionId"].as_str()), (200, Some("1")), "{body}");

    // The operator's token (bulkfhir/tenants) reaches every tenant within its scopes.
    let (status, _, body) =
        get(&http, &format!("{beta}/Patient/{patient}"), Some(&operator_token)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) =
        kick_with_token(&http, &format!("{acme}/$export?_type=Patient"), &operator_token, false)
            .await;
    assert_eq!(status, 202, "{body}");
    let (status, _, outcome) = call(
        &http,
        Method::PUT,
        &format!("{acme}/Patient/{patient}"),
        Some(&operator_token),
        &[],
        Some(patient_json),
    )
    .await;
    assert_outcome(status, 403, &outcome);
    // The operator sees only its own job, not beta's client's.
    let (status, _, outcome) = get(&http, &beta_status, Some(&operator_token)).await;
    assert_outcome(status, 404, &outcome);
}
