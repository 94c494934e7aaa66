//! Real Bulk Data clients, unmodified, from their registries, against the server on loopback:
//! Cumulus's `smart-fetch` (PyPI) and Medplum's CLI (npm). What they download must equal the
//! loaded data, computed here from the raw NDJSON.
//!
//! `bash .ci/run` installs both into `~/.cache/bulkfhir/clients` (or `$BULKFHIR_CLIENTS_DIR`):
//! `venv/bin/smart-fetch` (`pip install smart-fetch==1.0.3`) and
//! `npm/node_modules/.bin/medplum` (`npm install @medplum/cli@4.3.13`, the newest that runs on
//! Node.js 20). A missing client fails these tests: a skipped check must never pass.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Read,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;

use crate::{
    common::{
        COMPARTMENT_PATHS, Dataset, TestServer, expected_compartments, small, test_export_config,
    },
    export::supporting_references,
};

/// Asserts equal id sets by type; a failure lists what is missing and extra, type by type.
fn assert_same(
    got: &BTreeMap<String, BTreeSet<String>>,
    want: &BTreeMap<String, BTreeSet<String>>,
    what: &str,
) {
    let mut report = Vec::new();
    for type_name in got.keys().chain(want.keys()).collect::<BTreeSet<_>>() {
        let empty = BTreeSet::new();
        let (g, w) = (got.get(type_name).unwrap_or(&empty), want.get(type_name).unwrap_or(&empty));
        let missing: Vec<_> = w.difference(g).take(3).collect();
        let extra: Vec<_> = g.difference(w).take(3).collect();
        if !missing.is_empty() || !extra.is_empty() {
            report.push(format!(
                "{type_name}: {} missing (e.g. {missing:?}), {} extra (e.g. {extra:?})",
                w.difference(g).count(),
                g.difference(w).count()
            ));
        }
    }
    assert!(report.is_empty(), "{what}:\n{}", report.join("\n"));
}

/// Asserts that `output` holds `want` (compartment resources by type) plus the resources
/// outside the compartment that its compartment resources reference (of `types` only, when the
/// export named them with `_type`).
fn assert_compartments_plus_supporting(
    output: &BTreeMap<String, Vec<Value>>,
    mut want: BTreeMap<String, BTreeSet<String>>,
    types: Option<&[&str]>,
    what: &str,
) {
    let compartment: Vec<&str> = COMPARTMENT_PATHS.iter().map(|(t, _)| *t).collect();
    let exported = output
        .iter()
        .filter(|(t, _)| compartment.contains(&t.as_str()))
        .flat_map(|(_, resources)| resources.iter().cloned());
    for (type_name, ids) in supporting_references(exported) {
        if types.is_none_or(|t| t.contains(&type_name.as_str())) {
            want.insert(type_name, ids);
        }
    }
    assert_same(&ids_by_type(output), &want, what);
}

fn clients_dir() -> PathBuf {
    match std::env::var_os("BULKFHIR_CLIENTS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/bulkfhir/clients")
        }
    }
}

fn client(relative: &str, install: &str) -> PathBuf {
    let path = clients_dir().join(relative);
    assert!(
        path.is_file(),
        "{} is missing: run `bash .ci/run` once (it installs the interop clients), or {install}",
        path.display()
    );
    path
}

/// Runs a client to completion (at most 3 minutes); panics with its output when it fails.
async fn run(program: &Path, args: &[&str], envs: &[(&str, &Path)]) {
    let mut command = tokio::process::Command::new(program);
    command.args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
    for (name, value) in envs {
        command.env(name, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(180), command.output())
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} did not finish in 3 minutes", program.display()))
        .unwrap();
    assert!(
        output.status.success(),
        "{} {args:?} failed ({}):\n{}\n{}",
        program.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every resource in the NDJSON files (plain or gzip) directly in `dir`, as type → id → resource.
fn read_downloads(dir: &Path) -> BTreeMap<String, Vec<Value>> {
    let mut by_type: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut n_files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = if name.ends_with(".ndjson.gz") {
            let mut text = String::new();
            flate2::read::MultiGzDecoder::new(std::fs::File::open(&path).unwrap())
                .read_to_string(&mut text)
                .unwrap();
            text
        } else if name.ends_with(".ndjson") && name != "log.ndjson" {
            std::fs::read_to_string(&path).unwrap()
        } else {
            continue;
        };
        n_files += 1;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let resource: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name}: a line is not JSON ({e}): {line}"));
            let type_name = resource["resourceType"].as_str().unwrap().to_owned();
            by_type.entry(type_name).or_default().push(resource);
        }
    }
    assert!(n_files > 0, "no files downloaded into {}", dir.display());
    by_type
}

fn ids_by_type(output: &BTreeMap<String, Vec<Value>>) -> BTreeMap<String, BTreeSet<String>> {
    output
        .iter()
        .map(|(t, resources)| {
            let ids: BTreeSet<String> =
                resources.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
            assert_eq!(ids.len(), resources.len(), "each {t} once");
            (t.clone(), ids)
        })
        .collect()
}

fn dataset_resources(dataset: &Dataset, type_name: &str) -> Vec<Value> {
    dataset
        .lines
        .get(type_name)
        .into_iter()
        .flatten()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The types smart-fetch asks for by default, and its default Observation filter's categories.
const SMART_FETCH_TYPES: &[&str] = &[
    "AllergyIntolerance",
    "Condition",
    "Device",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "EpisodeOfCare",
    "Immunization",
    "MedicationDispense",
    "MedicationRequest",
    "Observation",
    "Patient",
    "Procedure",
    "ServiceRequest",
    "Specimen",
];
const SMART_FETCH_CATEGORIES: &[&str] = &[
    "social-history",
    "vital-signs",
    "imaging",
    "laboratory",
    "survey",
    "exam",
    "procedure",
    "therapy",
    "activity",
];

/// Whether a resource passes smart-fetch's default `_typeFilter` (Observations by category).
fn passes_smart_fetch_filter(resource: &Value) -> bool {
    if resource["resourceType"] != "Observation" {
        return true;
    }
    let categories = resource["category"].as_array().into_iter().flatten();
    categories
        .flat_map(|c| c["coding"].as_array().into_iter().flatten())
        .any(|coding| coding["code"].as_str().is_some_and(|c| SMART_FETCH_CATEGORIES.contains(&c)))
}

fn group_id(dataset: &Dataset) -> String {
    let group: Value = serde_json::from_str(&dataset.lines["Group"][0]).unwrap();
    group["id"].as_str().unwrap().to_owned()
}

/// What a Patient or Group export of every patient in `dataset` holds for `types` (all types
/// when None), before supporting resources: each patient's compartment, filtered.
fn compartments_of_all(
    dataset: &Dataset,
    types: Option<&[&str]>,
    keep: impl Fn(&Value) -> bool,
) -> BTreeMap<String, BTreeSet<String>> {
    let by_id: BTreeMap<(String, String), Value> = dataset
        .lines
        .iter()
        .flat_map(|(t, lines)| {
            lines.iter().map(move |l| {
                let v: Value = serde_json::from_str(l).unwrap();
                ((t.clone(), v["id"].as_str().unwrap().to_owned()), v)
            })
        })
        .collect();
    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for compartment in expected_compartments(dataset).into_values() {
        for (type_name, ids) in compartment {
            if types.is_some_and(|t| !t.contains(&type_name.as_str())) {
                continue;
            }
            for id in ids {
                if keep(&by_id[&(type_name.clone(), id.clone())]) {
                    want.entry(type_name.clone()).or_default().insert(id);
                }
            }
        }
    }
    want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_fetch_pulls_exactly_the_loaded_data_at_system_and_group_level() {
    let smart_fetch = client("venv/bin/smart-fetch", "pip install smart-fetch==1.0.3");
    let dataset = small();
    let server = TestServer::start_loaded(dataset, test_export_config()).await;
    let work = tempfile::tempdir().unwrap();

    // System level, with its default types and its default Observation filter, whose inner
    // query arrives percent-encoded (`category=social-history%2Cvital-signs...`).
    let system_dir = work.path().join("system");
    run(&smart_fetch, &["bulk", "--fhir-url", &server.base, system_dir.to_str().unwrap()], &[])
        .await;
    let got = ids_by_type(&read_downloads(&system_dir));
    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for type_name in SMART_FETCH_TYPES {
        for resource in dataset_resources(dataset, type_name) {
            if passes_smart_fetch_filter(&resource) {
                want.entry((*type_name).to_owned())
                    .or_default()
                    .insert(resource["id"].as_str().unwrap().to_owned());
            }
        }
    }
    assert!(want["Observation"].len() > 100, "the filter keeps Observations");
    assert_same(&got, &want, "smart-fetch, system level");

    // Group level: the members' compartments for those types, filtered, plus the resources
    // outside the compartment that they reference.
    let group_dir = work.path().join("group");
    let group = group_id(dataset);
    run(
        &smart_fetch,
        &["bulk", "--fhir-url", &server.base, "--group", &group, group_dir.to_str().unwrap()],
        &[],
    )
    .await;
    let output = read_downloads(&group_dir);
    let want = compartments_of_all(dataset, Some(SMART_FETCH_TYPES), passes_smart_fetch_filter);
    assert!(want["Observation"].len() > 100);
    assert_compartments_plus_supporting(
        &output,
        want,
        Some(SMART_FETCH_TYPES),
        "smart-fetch, Group level",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn medplum_cli_exports_exactly_the_loaded_data_at_every_level() {
    let medplum = client("npm/node_modules/.bin/medplum", "npm install @medplum/cli@4.3.13");
    let dataset = small();
    let server = TestServer::start_loaded(dataset, test_export_config()).await;
    let work = tempfile::tempdir().unwrap();
    // An empty HOME: no stored Medplum profile or login is read.
    let home = work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let export = async |name: &str, extra: &[&str]| {
        let dir = work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec![
            "bulk",
            "export",
            "--base-url",
            server.base.trim_end_matches("fhir"),
            "--fhir-url-path",
            "fhir",
            "-d",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run(&medplum, &args, &[("HOME", &home)]).await;
        read_downloads(&dir)
    };

    // System level, every type: the data set exactly.
    let got = ids_by_type(&export("system", &[]).await);
    let want: BTreeMap<String, BTreeSet<String>> = dataset
        .lines
        .keys()
        .map(|t| {
            let ids = dataset_resources(dataset, t)
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect();
            (t.clone(), ids)
        })
        .collect();
    assert_same(&got, &want, "medplum, system level");

    // Patient level, every type: every compartment plus supporting resources.
    let output = export("patient", &["-e", "Patient"]).await;
    let want = compartments_of_all(dataset, None, |_| true);
    assert_compartments_plus_supporting(&output, want, None, "medplum, Patient level");

    // Group level with `_type` in the query of a bodiless POST.
    let group = format!("Group/{}", group_id(dataset));
    let types = ["Patient", "Observation", "Encounter"];
    let output = export("group", &["-e", &group, "-t", &types.join(",")]).await;
    let want = compartments_of_all(dataset, Some(&types), |_| true);
    assert_compartments_plus_supporting(&output, want, Some(&types), "medplum, Group level");
}
