//! The benchmark harness at its quick size, as CI runs it: it must finish and every export
//! count must be right. Timings are printed, never checked.

use serde_json::Value;

#[test]
fn the_benchmark_harness_runs_at_the_quick_size_with_correct_counts() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("bench-results.json");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .args([
            "bench",
            "--resources",
            "100000",
            "--runs",
            "1",
            "--latency-secs",
            "3",
            "--work-dir",
        ])
        .arg(work.path().join("work"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run bulkfhir bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{stdout}");
    let results: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(results["failures"], serde_json::json!([]));
    let scenarios = results["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios.iter().map(|s| s["name"].as_str().unwrap()).collect();
    for expected in [
        "system",
        "system-gzip",
        "type-observation",
        "type-filter-10pct",
        "patient",
        "group-10pct",
        "since-1pct",
    ] {
        assert!(names.contains(&expected), "scenario {expected} ran: {names:?}");
    }
    assert!(scenarios.iter().all(|s| s["resources"].as_u64().unwrap() > 0));
    assert!(results["resources"].as_u64().unwrap() >= 100_000);
    // The download line: both passes ran, and gzip on the wire is much smaller.
    let download = &results["download"];
    let identity = download["identity_bytes"].as_u64().unwrap();
    assert!(identity > 0 && download["gzip_wire_bytes"].as_u64().unwrap() * 3 < identity);
    assert!(download["gzip_mb_per_s"].as_f64().unwrap() > 0.0);
    // The authorization line: both sides ran, with tokens and without.
    let auth = &results["authorization"];
    for side in ["status_polls_per_s_on", "status_polls_per_s_off"] {
        let rates = auth[side].as_array().unwrap();
        assert!(!rates.is_empty() && rates.iter().all(|r| r.as_f64().unwrap() > 0.0), "{auth}");
    }
    assert_eq!(auth["kickoff_on"]["samples"], auth["kickoff_off"]["samples"], "{auth}");
}
