//! End-to-end tests of [`generate_to_dir`] output.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde_json::Value;

use crate::output::ResourceType;
use crate::{GenerateError, GenerateOptions, GenerateStats, generate_to_dir};

fn generate(dir: &Path, patients: u64, seed: u64) -> GenerateStats {
    generate_to_dir(&GenerateOptions { patients, seed }, dir, &mut |_| {}).unwrap()
}

/// All generated resources by type name, parsed.
fn load(dir: &Path) -> BTreeMap<String, Vec<Value>> {
    let mut all = BTreeMap::new();
    for ty in ResourceType::ALL {
        let text = std::fs::read_to_string(dir.join(format!("{}.ndjson", ty.name()))).unwrap();
        let resources = text
            .lines()
            .map(|line| {
                serde_json::from_str::<Value>(line)
                    .unwrap_or_else(|e| panic!("{}: {e}: {line}", ty.name()))
            })
            .collect();
        all.insert(ty.name().to_owned(), resources);
    }
    all
}

fn collect_references<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "reference" {
                    out.push(v.as_str().expect("reference is a string"));
                } else {
                    collect_references(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_references(v, out)),
        _ => {}
    }
}

fn walk_strings<'a>(value: &'a Value, key: &str, f: &mut impl FnMut(&str, &'a str)) {
    match value {
        Value::Object(map) => map.iter().for_each(|(k, v)| walk_strings(v, k, f)),
        Value::Array(items) => items.iter().for_each(|v| walk_strings(v, key, f)),
        Value::String(s) => f(key, s),
        _ => {}
    }
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

#[test]
fn deterministic_per_seed() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let stats_a = generate(a.path(), 25, 7);
    let stats_b = generate(b.path(), 25, 7);
    generate(c.path(), 25, 8);
    assert_eq!(stats_a, stats_b);
    let (fa, fb, fc) = (files(a.path()), files(b.path()), files(c.path()));
    assert_eq!(fa.len(), ResourceType::ALL.len());
    assert!(fa == fb, "same seed must give byte-identical files");
    for name in ["Patient.ndjson", "Encounter.ndjson", "Observation.ndjson", "Claim.ndjson"] {
        assert_ne!(fa[name], fc[name], "{name} must differ for a different seed");
    }
}

#[test]
fn patients_are_independent_of_population_size() {
    // With the same shared providers (here: one organization), a patient's
    // resources depend only on (seed, index), not on how many patients follow.
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    generate(a.path(), 5, 3);
    generate(b.path(), 9, 3);
    for ty in ["Patient", "Observation", "Claim"] {
        let small = std::fs::read_to_string(a.path().join(format!("{ty}.ndjson"))).unwrap();
        let large = std::fs::read_to_string(b.path().join(format!("{ty}.ndjson"))).unwrap();
        assert!(large.starts_with(&small), "{ty}");
    }
}

#[test]
fn resources_are_valid_and_references_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let stats = generate(dir.path(), 40, 11);
    let all = load(dir.path());

    let mut ids: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (ty, resources) in &all {
        let (count, bytes) = stats.per_type[ty];
        assert_eq!(resources.len() as u64, count, "{ty} count");
        let len = std::fs::metadata(dir.path().join(format!("{ty}.ndjson"))).unwrap().len();
        assert_eq!(len, bytes, "{ty} bytes");
        for r in resources {
            assert_eq!(r["resourceType"].as_str(), Some(ty.as_str()));
            let id = r["id"].as_str().expect("id");
            assert!(!id.is_empty() && id.len() <= 64);
            assert!(r.get("meta").is_none(), "{ty} must not carry meta");
            assert!(ids.entry(ty).or_default().insert(id), "duplicate {ty}/{id}");
        }
    }
    assert_eq!(stats.resources, all.values().map(|v| v.len() as u64).sum::<u64>());
    assert_eq!(stats.bytes, stats.per_type.values().map(|v| v.1).sum::<u64>());

    let mut refs = Vec::new();
    for resources in all.values() {
        for r in resources {
            collect_references(r, &mut refs);
        }
    }
    assert!(refs.len() > 10_000);
    for reference in refs {
        let (ty, id) =
            reference.split_once('/').unwrap_or_else(|| panic!("not Type/id: {reference}"));
        assert!(ids.get(ty).is_some_and(|set| set.contains(id)), "dangling reference {reference}");
    }
}

#[test]
fn group_lists_every_patient() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 30, 5);
    let all = load(dir.path());
    let groups = &all["Group"];
    assert_eq!(groups.len(), 1);
    let group = &groups[0];
    assert_eq!(group["id"], "all-patients");
    assert_eq!(group["type"], "person");
    assert_eq!(group["actual"], true);
    assert_eq!(group["quantity"], 30);
    let members: HashSet<String> = group["member"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["entity"]["reference"].as_str().unwrap().to_owned())
        .collect();
    let patients: HashSet<String> =
        all["Patient"].iter().map(|p| format!("Patient/{}", p["id"].as_str().unwrap())).collect();
    assert_eq!(members.len(), 30);
    assert_eq!(members, patients);
}

#[test]
fn large_group_is_streamed_intact() {
    let dir = tempfile::tempdir().unwrap();
    let world = crate::world::World::new(1, 3000);
    let mut out = crate::output::Output::create(dir.path()).unwrap();
    world.write_group(&mut crate::json::Json::default(), &mut out).unwrap();
    out.finish().unwrap();
    let text = std::fs::read_to_string(dir.path().join("Group.ndjson")).unwrap();
    assert_eq!(text.lines().count(), 1);
    let group: Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(group["member"].as_array().unwrap().len(), 3000);
}

#[test]
fn type_mix_matches_synthea() {
    let dir = tempfile::tempdir().unwrap();
    let stats = generate(dir.path(), 100, 1);
    let per_patient = |ty: &str| stats.per_type[ty].0 as f64 / 100.0;
    // (type, Synthea "medium" resources per patient); allow ±30%.
    for (ty, synthea) in [
        ("Encounter", 36.97),
        ("Observation", 163.15),
        ("Condition", 6.39),
        ("Procedure", 23.51),
        ("MedicationRequest", 23.86),
        ("Immunization", 12.87),
        ("DiagnosticReport", 8.97),
        ("Claim", 60.83),
        ("ExplanationOfBenefit", 36.97),
    ] {
        let got = per_patient(ty);
        assert!(
            (synthea * 0.7..synthea * 1.3).contains(&got),
            "{ty}: {got:.2} per patient vs {synthea}"
        );
    }
    assert_eq!(per_patient("Patient"), 1.0);
    assert_eq!(stats.per_type["Group"].0, 1);
    assert_eq!(stats.per_type["Organization"].0, 5);
    assert_eq!(stats.per_type["Location"].0, 5);
    assert_eq!(stats.per_type["Practitioner"].0, 10);
    // Synthea's medium sample has 38,473 resources for 100 patients.
    assert!((30_000..47_000).contains(&stats.resources), "{} resources", stats.resources);
}

#[test]
fn shared_resources_have_a_minimum_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let stats = generate(dir.path(), 0, 1);
    for ty in ["Organization", "Location", "Group"] {
        assert_eq!(stats.per_type[ty].0, 1, "{ty}");
    }
    assert_eq!(stats.per_type["Practitioner"].0, 2);
    assert_eq!(stats.per_type["Patient"].0, 0);
    let all = load(dir.path());
    assert_eq!(all["Group"][0]["quantity"], 0);
    assert_eq!(all["Group"][0]["member"].as_array().map(Vec::len), Some(0));
}

#[test]
fn clinical_content_is_consistent() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 30, 21);
    let all = load(dir.path());
    let by_id = |ty: &str| -> HashMap<String, &Value> {
        all[ty].iter().map(|r| (format!("{ty}/{}", r["id"].as_str().unwrap()), r)).collect()
    };
    let observations = by_id("Observation");
    let encounters = by_id("Encounter");
    let organizations = by_id("Organization");
    let practitioners = by_id("Practitioner");
    let locations = by_id("Location");

    let mut categories = HashSet::new();
    for obs in &all["Observation"] {
        let category = obs["category"][0]["coding"][0]["code"].as_str().unwrap();
        categories.insert(category.to_owned());
        assert_eq!(obs["code"]["coding"][0]["system"], "http://loinc.org");
        assert!(obs["effectiveDateTime"].is_string());
        let encounter = encounters[obs["encounter"]["reference"].as_str().unwrap()];
        assert_eq!(encounter["subject"]["reference"], obs["subject"]["reference"]);
        if let Some(q) = obs.get("valueQuantity") {
            assert_eq!(q["system"], "http://unitsofmeasure.org");
            assert!(q["value"].is_number() && q["unit"].is_string() && q["code"].is_string());
        } else {
            assert!(obs.get("valueCodeableConcept").is_some() || obs.get("component").is_some());
        }
    }
    for needed in ["vital-signs", "laboratory"] {
        assert!(categories.contains(needed), "{needed}");
    }

    for report in &all["DiagnosticReport"] {
        let results = report["result"].as_array().unwrap();
        assert!(!results.is_empty());
        for result in results {
            let obs = observations[result["reference"].as_str().unwrap()];
            assert_eq!(
                obs["subject"], report["subject"],
                "report results belong to the same patient"
            );
            assert_eq!(obs["category"][0]["coding"][0]["code"], "laboratory");
        }
    }

    for enc in &all["Encounter"] {
        let prac =
            practitioners[enc["participant"][0]["individual"]["reference"].as_str().unwrap()];
        let org = organizations[enc["serviceProvider"]["reference"].as_str().unwrap()];
        let loc = locations[enc["location"][0]["location"]["reference"].as_str().unwrap()];
        // Practitioners work at (share the address of) the encounter's organization,
        // and the location is managed by it.
        assert_eq!(prac["address"], org["address"]);
        assert_eq!(loc["managingOrganization"]["reference"], enc["serviceProvider"]["reference"]);
    }

    for med in &all["MedicationRequest"] {
        assert_eq!(
            med["medicationCodeableConcept"]["coding"][0]["system"],
            "http://www.nlm.nih.gov/research/umls/rxnorm"
        );
        assert!(med["requester"]["reference"].as_str().unwrap().starts_with("Practitioner/"));
    }
    for imm in &all["Immunization"] {
        assert_eq!(imm["vaccineCode"]["coding"][0]["system"], "http://hl7.org/fhir/sid/cvx");
    }
    for cond in &all["Condition"] {
        assert_eq!(cond["code"]["coding"][0]["system"], "http://snomed.info/sct");
    }
    for claim in all["Claim"].iter().chain(&all["ExplanationOfBenefit"]) {
        assert!(claim["provider"]["reference"].as_str().unwrap().starts_with("Organization/"));
        assert!(claim["patient"]["reference"].as_str().unwrap().starts_with("Patient/"));
        let mut refs = Vec::new();
        collect_references(claim, &mut refs);
        let enc = refs
            .iter()
            .find(|r| r.starts_with("Encounter/"))
            .expect("claim references its encounter");
        assert_eq!(encounters[*enc]["subject"]["reference"], claim["patient"]["reference"]);
    }
    for eob in &all["ExplanationOfBenefit"] {
        assert!(
            eob["careTeam"][0]["provider"]["reference"]
                .as_str()
                .unwrap()
                .starts_with("Practitioner/")
        );
    }
    for patient in &all["Patient"] {
        for key in [
            "name",
            "gender",
            "birthDate",
            "address",
            "telecom",
            "identifier",
            "maritalStatus",
            "communication",
        ] {
            assert!(patient.get(key).is_some(), "Patient.{key}");
        }
        let div = patient["text"]["div"].as_str().unwrap();
        assert!(
            div.starts_with("<div xmlns=\"http://www.w3.org/1999/xhtml\">")
                && div.ends_with("</div>")
        );
        let mrn = patient["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["type"]["coding"][0]["code"] == "MR");
        assert!(mrn, "Patient has an MRN");
    }
}

#[test]
fn dates_lie_before_the_reference_date() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 30, 4);
    let all = load(dir.path());
    let mut dates = 0;
    for resources in all.values() {
        for r in resources {
            walk_strings(r, "", &mut |key, s| {
                let b = s.as_bytes();
                let is_date = b.len() >= 10
                    && b[4] == b'-'
                    && b[7] == b'-'
                    && b[..4].iter().all(u8::is_ascii_digit);
                if is_date {
                    dates += 1;
                    assert!(&s[..10] < "2026-01-01" && &s[..4] > "1900", "{key}: {s}");
                }
            });
        }
    }
    assert!(dates > 1000);
}

#[test]
fn progress_is_reported_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut calls = Vec::new();
    let stats = generate_to_dir(&GenerateOptions { patients: 60, seed: 2 }, dir.path(), &mut |n| {
        calls.push(n)
    })
    .unwrap();
    assert!(
        calls.len() >= 2 && (calls.len() as u64) < stats.resources / 1000,
        "{} calls",
        calls.len()
    );
    assert!(calls.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(calls.last().copied(), Some(stats.resources));
}

#[test]
fn io_errors_are_reported_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err =
        generate_to_dir(&GenerateOptions { patients: 1, seed: 1 }, &file, &mut |_| {}).unwrap_err();
    let GenerateError::Io { path, .. } = &err;
    assert_eq!(path, &file);
    assert!(err.to_string().starts_with("write "));
}
