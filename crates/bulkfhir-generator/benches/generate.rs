//! Generation throughput, plus the type mix compared with Synthea.
//!
//! `cargo bench -p bulkfhir-generator` generates `BULKFHIR_GEN_PATIENTS`
//! patients (default 2700, just over one million resources) with seed
//! `BULKFHIR_GEN_SEED` (default 1) into a scratch directory under the
//! system temp dir, prints resources/s and MB/s and a per-type table next
//! to Synthea's 100-patient "medium" sample, then deletes the output
//! (set `BULKFHIR_GEN_KEEP=1` to keep it).

use std::time::Instant;

use bulkfhir_generator::{GenerateOptions, generate_to_dir};

/// Synthea 2.5 "medium" sample (100 patients): `(type, count, bytes)`.
const SYNTHEA_MEDIUM: [(&str, u64, u64); 13] = [
    ("Claim", 6083, 8_182_380),
    ("Condition", 639, 461_823),
    ("DiagnosticReport", 897, 1_347_213),
    ("Encounter", 3697, 3_873_262),
    ("ExplanationOfBenefit", 3697, 18_410_598),
    ("Group", 1, 7467),
    ("Immunization", 1287, 633_740),
    ("MedicationRequest", 2386, 1_663_335),
    ("Observation", 16_315, 11_962_388),
    ("Organization", 203, 199_640),
    ("Patient", 100, 261_976),
    ("Practitioner", 203, 113_836),
    ("Procedure", 2351, 1_444_182),
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let patients = env_u64("BULKFHIR_GEN_PATIENTS", 2700);
    let seed = env_u64("BULKFHIR_GEN_SEED", 1);
    let dir = std::env::temp_dir().join(format!("bulkfhir-gen-bench-{}", std::process::id()));
    let opts = GenerateOptions { patients, seed };

    let started = Instant::now();
    let stats = generate_to_dir(&opts, &dir, &mut |_| {})?;
    let secs = started.elapsed().as_secs_f64();
    if std::env::var_os("BULKFHIR_GEN_KEEP").is_none() {
        std::fs::remove_dir_all(&dir)?;
    } else {
        eprintln!("kept output in {}", dir.display());
    }

    println!(
        "{patients} patients: {} resources, {:.1} MB in {secs:.2} s = {:.0} resources/s, {:.1} MB/s",
        stats.resources,
        stats.bytes as f64 / 1e6,
        stats.resources as f64 / secs,
        stats.bytes as f64 / 1e6 / secs,
    );
    println!();
    println!(
        "| type | per patient (gen) | per patient (Synthea) | avg bytes (gen) | avg bytes (Synthea) | size ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (ty, &(count, bytes)) in &stats.per_type {
        let per_patient = count as f64 / patients.max(1) as f64;
        let avg = if count == 0 { 0.0 } else { bytes as f64 / count as f64 };
        match SYNTHEA_MEDIUM.iter().find(|(t, _, _)| t == ty) {
            Some(&(_, s_count, s_bytes)) => {
                let s_avg = s_bytes as f64 / s_count as f64;
                println!(
                    "| {ty} | {per_patient:.2} | {:.2} | {avg:.0} | {s_avg:.0} | {:.2} |",
                    s_count as f64 / 100.0,
                    avg / s_avg
                );
            }
            None => println!("| {ty} | {per_patient:.2} | - | {avg:.0} | - | - |"),
        }
    }
    let total: u64 = SYNTHEA_MEDIUM.iter().map(|t| t.1).sum();
    println!(
        "| total | {:.1} | {:.1} (384.7 incl. types not generated) | {:.0} | {:.0} | |",
        stats.resources as f64 / patients.max(1) as f64,
        total as f64 / 100.0,
        stats.bytes as f64 / stats.resources.max(1) as f64,
        SYNTHEA_MEDIUM.iter().map(|t| t.2).sum::<u64>() as f64 / total as f64,
    );
    Ok(())
}
