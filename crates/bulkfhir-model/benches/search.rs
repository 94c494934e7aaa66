//! Throughput of `_typeFilter` evaluation against a plain copy of the same NDJSON lines.
//!
//! Run with `cargo bench -p bulkfhir-model --bench search`. Reads the Observations of the shared
//! medium Synthea set (`testdata/synthea/medium.tar.xz`, unpacked to a temporary directory) and
//! reports resources/s for: copying every line (what an unfiltered export does per resource),
//! a ~10 %-selective code filter (the byte pre-check rejects most lines unparsed), and, for
//! reference, filters the pre-check cannot help (every line is parsed).

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant as Clock};

use bulkfhir_model::Instant;
use bulkfhir_model::search::SearchQuery;

/// How long each measurement runs (repeating the data set).
const MEASURE_FOR: Duration = Duration::from_secs(3);

fn main() {
    let lines = observations();
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    println!("{} Observations, {:.1} MB, medium.tar.xz", lines.len(), bytes as f64 / 1e6);

    let copy_rate = measure(&lines, |line, out| {
        out.extend_from_slice(line);
        out.push(b'\n');
        true
    });
    println!("plain copy:                                      {:>10.0} resources/s", copy_rate.0);

    let filters = [
        "Observation?code=http://loinc.org|85354-9,http://loinc.org|2339-0,http://loinc.org|6299-2",
        "Observation?code=85354-9&date=ge2015",
        "Observation?date=ge2019-01-01",
        "Observation?value-quantity=gt100&status=final",
    ];
    for (idx, filter) in filters.iter().enumerate() {
        let query = SearchQuery::parse_type_filter(filter, Instant::now()).expect("valid filter");
        let (rate, kept) = measure(&lines, |line, out| {
            let keep = query.matches(line).expect("valid resource");
            if keep {
                out.extend_from_slice(line);
                out.push(b'\n');
            }
            keep
        });
        let share = kept as f64 / lines.len() as f64 * 100.0;
        println!(
            "{filter}\n    keeps {share:>5.1} %:                                {rate:>10.0} resources/s, {:.2}× the copy",
            rate / copy_rate.0
        );
        if idx == 0 {
            println!("RATIO (10 %-selective filter / plain copy) = {:.2}", rate / copy_rate.0);
        }
    }
}

/// Runs `step` over all lines repeatedly for [`MEASURE_FOR`]; returns resources/s and how many
/// lines one pass kept.
fn measure(lines: &[Vec<u8>], mut step: impl FnMut(&[u8], &mut Vec<u8>) -> bool) -> (f64, usize) {
    let mut out = Vec::with_capacity(1 << 24);
    let (mut n_done, mut kept_per_pass) = (0_usize, 0);
    let start = Clock::now();
    while start.elapsed() < MEASURE_FOR {
        let mut kept = 0;
        for line in lines {
            kept += usize::from(step(black_box(line), &mut out));
            if out.len() > 1 << 23 {
                black_box(&out);
                out.clear();
            }
        }
        kept_per_pass = kept;
        n_done += lines.len();
    }
    black_box(&out);
    (n_done as f64 / start.elapsed().as_secs_f64(), kept_per_pass)
}

/// The Observation lines of the medium set. Missing data is an error, not a skip.
fn observations() -> Vec<Vec<u8>> {
    let archive =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/synthea/medium.tar.xz");
    assert!(archive.is_file(), "vendored data missing: {}", archive.display());
    let target = std::env::temp_dir().join(format!("bulkfhir-search-bench-{}", std::process::id()));
    std::fs::create_dir_all(&target).expect("temp dir");
    let status = std::process::Command::new("tar")
        .arg("-xJf")
        .arg(&archive)
        .arg("-C")
        .arg(&target)
        .arg("Observation.ndjson")
        .status()
        .expect("run tar");
    assert!(status.success(), "unpack {}", archive.display());
    let text = std::fs::read(target.join("Observation.ndjson")).expect("read Observation.ndjson");
    std::fs::remove_dir_all(&target).expect("remove temp dir");
    text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect()
}
