//! Throughput of a SQL on FHIR view over stored resources: the resource parsed whole against
//! the resource parsed as the export engine parses it (only the elements the view can read).
//!
//! Run with `cargo bench -p bulkfhir-model --bench view`. Reads the Observations of the vendored
//! medium Synthea set and reports resources/s for the bench's Observation view (code, value,
//! unit, effective time, subject key) written as CSV, both ways, and their ratio in one run.

mod common;

use common::{measure, observations};

use bulkfhir_model::tabular;
use bulkfhir_model::view::ViewDefinition;
use serde_json::json;

fn main() {
    let lines = observations();
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    println!("{} Observations, {:.1} MB, medium.tar.xz", lines.len(), bytes as f64 / 1e6);
    let view = ViewDefinition::parse(&json!({
        "resourceType": "ViewDefinition", "name": "observations", "resource": "Observation",
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()"},
            {"name": "code", "path": "code.coding.first().code"},
            {"name": "value", "path": "value.ofType(Quantity).value"},
            {"name": "unit", "path": "value.ofType(Quantity).unit"},
            {"name": "effective", "path": "effective.ofType(dateTime)"},
            {"name": "subject", "path": "subject.getReferenceKey(Patient)"}
        ]}]
    }))
    .expect("valid view");
    assert!(view.reads().is_some(), "the view reads only a few elements");

    let run = |parse: &dyn Fn(&[u8]) -> serde_json::Value| {
        measure(&lines, |line, out| {
            let parsed = parse(line);
            let rows = view.rows_borrowed(&parsed).expect("rows");
            rows.iter().for_each(|row| tabular::csv_row(row, out));
            !rows.is_empty()
        })
    };
    let (whole, rows) = run(&|line| serde_json::from_slice(line).expect("a resource"));
    println!("view, parsed whole:           {whole:>10.0} resources/s ({rows} rows per pass)");
    let (projected, _) = run(&|line| view.parse_resource(line).expect("a resource"));
    println!("view, parsed as it reads:     {projected:>10.0} resources/s");
    println!("RATIO (parsed as it reads / parsed whole) = {:.2}", projected / whole);
}
