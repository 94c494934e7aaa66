//! Throughput of `_typeFilter` evaluation against a plain copy of the same NDJSON lines.
//!
//! Run with `cargo bench -p bulkfhir-model --bench search`. Reads the Observations of the shared
//! medium Synthea set (`testdata/synthea/medium.tar.xz`, unpacked to a temporary directory) and
//! reports resources/s for: copying every line (what an unfiltered export does per resource),
//! a ~10 %-selective code filter (the byte pre-check rejects most lines unparsed), and, for
//! reference, filters the pre-check cannot help (every line is parsed).

mod common;

use common::{measure, observations};

use bulkfhir_model::Instant;
use bulkfhir_model::search::SearchQuery;

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
    // `SEARCH_BENCH_ONLY=text` runs only the filters that contain `text` (for profiling one).
    let only = std::env::var("SEARCH_BENCH_ONLY").ok();
    for (idx, filter) in filters.iter().enumerate() {
        if only.as_deref().is_some_and(|text| !filter.contains(text)) {
            continue;
        }
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
