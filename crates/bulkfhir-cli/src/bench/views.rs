//! SQL on FHIR view exports (`$viewdefinition-export`) against the plain export of the same
//! type in the same run: a Patient demographics view and an Observation view (code, value,
//! unit, effective time, subject key), as NDJSON, CSV and Parquet.

use std::time::SystemTime;

use serde_json::{Value, json};

use super::{
    fairness::finish,
    scenarios::{Http, delete_export},
    time_to_data::kick,
};

/// One measured view export (medians over the runs).
#[derive(Debug, Clone)]
pub(crate) struct ViewRow {
    pub(crate) name: &'static str,
    pub(crate) format: &'static str,
    pub(crate) resource_type: &'static str,
    pub(crate) rows: u64,
    pub(crate) wall_s: f64,
    /// The plain `$export?_type=` of the view's type on the same server: resources, seconds.
    pub(crate) plain_resources: u64,
    pub(crate) plain_wall_s: f64,
}

fn patient_view() -> Value {
    json!({
        "resourceType": "ViewDefinition", "name": "patient_demographics", "status": "active",
        "resource": "Patient",
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()"},
            {"name": "gender", "path": "gender"},
            {"name": "birth_date", "path": "birthDate"},
            {"name": "family", "path": "name.where(use = 'official').family.first()"},
            {"name": "given", "path": "name.where(use = 'official').given.first()"}
        ]}]
    })
}

fn observation_view() -> Value {
    json!({
        "resourceType": "ViewDefinition", "name": "observations", "status": "active",
        "resource": "Observation",
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()", "type": "id"},
            {"name": "code", "path": "code.coding.first().code", "type": "code"},
            {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
            {"name": "unit", "path": "value.ofType(Quantity).unit", "type": "string"},
            {"name": "effective", "path": "effective.ofType(dateTime)", "type": "dateTime"},
            {"name": "subject", "path": "subject.getReferenceKey(Patient)", "type": "string"}
        ]}]
    })
}

/// Each view export `runs` times.
pub(crate) async fn measure(http: &Http, runs: usize) -> anyhow::Result<Vec<ViewRow>> {
    let cases = [
        ("patient_demographics", "ndjson", "Patient", patient_view()),
        ("observations", "ndjson", "Observation", observation_view()),
        ("observations", "csv", "Observation", observation_view()),
        ("observations", "parquet", "Observation", observation_view()),
    ];
    let mut out = Vec::new();
    for (name, format, resource_type, view) in cases {
        let body = json!({"resourceType": "Parameters", "parameter": [
            {"name": "view", "part": [
                {"name": "name", "valueString": name},
                {"name": "viewResource", "resource": view}
            ]},
            {"name": "_format", "valueCode": format}
        ]})
        .to_string();
        let (mut walls, mut rows) = (Vec::new(), 0);
        for run in 1..=runs {
            let sent = SystemTime::now();
            let kicked = kick(http, "$viewdefinition-export", Some(&body)).await?;
            let (wall, count) = finish(http, &kicked, sent).await?;
            eprintln!(
                "bench: view {name} ({format}) run {run}/{runs}: {count} rows in {wall:.3} s"
            );
            delete_export(http, &kicked.status_url).await?;
            walls.push(wall);
            rows = count;
        }
        let (mut plain_walls, mut plain_resources) = (Vec::new(), 0);
        for _ in 0..runs {
            let sent = SystemTime::now();
            let kicked = kick(http, &format!("$export?_type={resource_type}"), None).await?;
            let (wall, count) = finish(http, &kicked, sent).await?;
            delete_export(http, &kicked.status_url).await?;
            plain_walls.push(wall);
            plain_resources = count;
        }
        out.push(ViewRow {
            name,
            format,
            resource_type,
            rows,
            wall_s: super::median(&walls),
            plain_resources,
            plain_wall_s: super::median(&plain_walls),
        });
    }
    Ok(out)
}
