//! The official SQL on FHIR v2 conformance suite (vendored in `testdata/sql-on-fhir/tests`, see its
//! README) against [`bulkfhir_model::view`].
//!
//! Every test of every file runs. A test with `expect` passes when the view parses, every resource
//! of the file runs without error, and the rows (as objects keyed by column name) equal the
//! expected rows as a multiset (no test of the suite asks for an order); numbers compare by value.
//! `expectColumns` compares the column names in order; `expectCount` the number of rows;
//! `expectError` passes only when parsing or running the view fails.
//!
//! The run writes the upstream test-report JSON (`test_report/test-report.schema.json` of
//! FHIR/sql-on-fhir-v2: `{"<file>.json": {"tests": [{"name", "result": {"passed"}}]}}`, tests in
//! file order) to `$CARGO_TARGET_TMPDIR/sql-on-fhir-test-report.json`, prints its path and the
//! pass count, and fails unless exactly the tests in [`KNOWN_FAILURES`] fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use bulkfhir_model::view::ViewDefinition;
use serde_json::{Map, Value, json};

/// Tests expected to fail: (file, test title, why). A listed test that passes fails the run too.
const KNOWN_FAILURES: &[(&str, &str, &str)] = &[];

/// How many tests the vendored suite holds (FHIR/sql-on-fhir-v2 at 49fc1adf).
const SUITE_SIZE: usize = 134;

fn suite_dir() -> PathBuf {
    manifest_dir().join("../../testdata/sql-on-fhir/tests")
}

/// JSON equality where numbers compare by value (`5` equals `5.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64().is_some() && x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Whether `actual` is a permutation of `expected`.
fn same_rows(expected: &[Value], actual: &[Value]) -> bool {
    if expected.len() != actual.len() {
        return false;
    }
    let mut used = vec![false; actual.len()];
    expected.iter().all(|e| {
        let found =
            actual.iter().enumerate().find(|(i, a)| !used[*i] && same(e, a)).map(|(i, _)| i);
        found.map(|i| used[i] = true).is_some()
    })
}

/// Runs the view over every resource: the column names and the rows as objects, or the error.
fn run(view: &Value, resources: &[Value]) -> Result<(Vec<String>, Vec<Value>), String> {
    let view = ViewDefinition::parse(view).map_err(|e| e.to_string())?;
    let names: Vec<String> = view.columns().iter().map(|c| c.name.clone()).collect();
    let mut rows = Vec::new();
    for resource in resources {
        let found = view.rows(resource).map_err(|e| e.to_string());
        // The same rows (or the same error) from the resource parsed as the export engine
        // parses it: only the top-level elements the view can read.
        let text = serde_json::to_vec(resource).map_err(|e| e.to_string())?;
        let projected = view.parse_resource(&text).map_err(|e| e.to_string())?;
        assert_eq!(
            found,
            view.rows(&projected).map_err(|e| e.to_string()),
            "a view over the elements it reads (kept: {:?}) must give what it gives over the whole resource",
            view.reads()
        );
        for row in found? {
            assert_eq!(row.len(), names.len(), "a row must hold one value per column");
            let object: Map<String, Value> = names.iter().cloned().zip(row).collect();
            rows.push(Value::Object(object));
        }
    }
    Ok((names, rows))
}

/// Whether `test` passes, and a line on what happened when it does not. The error an
/// `expectError` test gets is printed, to show it fails for the right reason.
fn check(test: &Value, resources: &[Value]) -> Result<(), String> {
    let outcome = run(&test["view"], resources);
    if test.get("expectError").and_then(Value::as_bool) == Some(true) {
        return match outcome {
            Err(e) => {
                println!(
                    "  expected error in '{}': {e}",
                    test["title"].as_str().unwrap_or_default()
                );
                Ok(())
            }
            Ok((_, rows)) => {
                Err(format!("expected an error, got {} rows: {}", rows.len(), json!(rows)))
            }
        };
    }
    let (names, rows) = outcome.map_err(|e| format!("unexpected error: {e}"))?;
    let mut checked = false;
    if let Some(expected) = test.get("expectColumns") {
        checked = true;
        let expected: Vec<String> =
            serde_json::from_value(expected.clone()).expect("expectColumns is a list of strings");
        if expected != names {
            return Err(format!("columns {names:?}, expected {expected:?}"));
        }
    }
    if let Some(expected) = test.get("expect") {
        checked = true;
        let expected = expected.as_array().expect("expect is an array");
        if !same_rows(expected, &rows) {
            return Err(format!("rows {}, expected {}", json!(rows), json!(expected)));
        }
    }
    if let Some(expected) = test.get("expectCount") {
        checked = true;
        if expected.as_u64() != Some(rows.len() as u64) {
            return Err(format!("{} rows, expected {expected}", rows.len()));
        }
    }
    if !checked {
        return Err("the test has no expect, expectColumns, expectCount or expectError".to_owned());
    }
    Ok(())
}

#[test]
fn sql_on_fhir_v2_conformance_suite() {
    let dir = suite_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();

    let mut report = Map::new();
    let mut total = 0;
    let mut passed = 0;
    let mut unexpected = Vec::new();
    let mut seen_known = Vec::new();
    for path in &files {
        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        let suite: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let resources =
            suite["resources"].as_array().unwrap_or_else(|| panic!("{file}: no resources"));
        let tests = suite["tests"].as_array().unwrap_or_else(|| panic!("{file}: no tests"));
        let mut entries = Vec::new();
        for test in tests {
            let name = test["title"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: a test has no title"))
                .to_owned();
            let result = check(test, resources);
            total += 1;
            let known = KNOWN_FAILURES.iter().find(|(f, t, _)| *f == file && *t == name);
            if known.is_some() {
                seen_known.push((file.clone(), name.clone()));
            }
            match (&result, known) {
                (Ok(()), None) => passed += 1,
                (Ok(()), Some(_)) => {
                    passed += 1;
                    unexpected
                        .push(format!("{file} / {name}: passes but is listed in KNOWN_FAILURES"));
                }
                (Err(why), None) => unexpected.push(format!("{file} / {name}: {why}")),
                (Err(why), Some((_, _, reason))) => {
                    println!("known failure {file} / {name} ({reason}): {why}")
                }
            }
            entries.push(json!({"name": name, "result": {"passed": result.is_ok()}}));
        }
        report.insert(file, json!({ "tests": entries }));
    }
    for (file, name, _) in KNOWN_FAILURES {
        if !seen_known.iter().any(|(f, t)| f == file && t == name) {
            unexpected.push(format!("{file} / {name}: listed in KNOWN_FAILURES but no such test"));
        }
    }

    let report_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sql-on-fhir-test-report.json");
    std::fs::write(
        &report_path,
        serde_json::to_string_pretty(&Value::Object(report)).unwrap() + "\n",
    )
    .unwrap();
    println!("test report: {}", report_path.display());
    println!("{passed} of {total} passed");

    assert_eq!(files.len(), 22, "the vendored suite has 22 files");
    assert_eq!(total, SUITE_SIZE, "the vendored suite has {SUITE_SIZE} tests");
    assert!(
        unexpected.is_empty(),
        "{} unexpected result(s):\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
}

/// This crate's folder, as cargo tells the running test; the path compiled in is only the
/// fallback (a build cache reused from another checkout points at a folder that may be gone).
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")), Into::into)
}
