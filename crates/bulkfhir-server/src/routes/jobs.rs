//! Export jobs as resources: `GET [base]/BulkDataExport/[id]` and `GET [base]/BulkDataExport?status=`.

use axum::{
    extract::{Request, State},
    http::StatusCode,
    response::Response,
};
use bulkfhir_export::{FileKind, JobView, LiveProgress};
use bulkfhir_model::ErrorKind;
use bulkfhir_store::{JobId, JobStatus};
use serde_json::{Value, json};

use super::{FhirPath, json_response};
use crate::{
    AppState,
    auth::Caller,
    extract::{BaseUrl, check_accept, query_pairs},
    outcome::ApiError,
};

pub(super) async fn read(
    State(state): State<AppState>,
    caller: Caller,
    FhirPath(id): FhirPath<String>,
) -> Result<Response, ApiError> {
    let job_id = JobId::parse(&id)
        .ok_or_else(|| ApiError::new(ErrorKind::NotFound, format!("no export job {id}")))?;
    let view = state.exports.job(&job_id, &caller.job_access()).await?;
    let live = state.exports.live_progress(&view.record.id);
    let secured = state.config.auth.is_some();
    Ok(json_response(
        StatusCode::OK,
        render(&view, live, secured, state.tenant.as_ref()).to_string(),
    ))
}

pub(super) async fn search(
    State(state): State<AppState>,
    BaseUrl(base): BaseUrl,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let query = query_pairs(request.uri().query());
    check_accept(request.headers(), &query)?;
    let (mut status, mut count) = (None, 50usize);
    for (name, value) in &query {
        match name.as_str() {
            "status" => {
                status = Some(JobStatus::parse(value).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "status '{value}' is not one of accepted, in-progress, completed, error, cancelled"
                    ))
                    .at("status")
                })?);
            }
            "_count" => {
                count = value
                    .parse::<usize>()
                    .map_err(|_| ApiError::invalid(format!("_count '{value}' is not a number")))?
                    .clamp(1, state.config.max_page_size);
            }
            "_format" => {}
            other => {
                return Err(ApiError::invalid(format!(
                    "BulkDataExport search supports status and _count, not '{other}'"
                )));
            }
        }
    }
    let views = state.exports.search(status, &caller.job_access(), count).await?;
    let secured = state.config.auth.is_some();
    let entries: Vec<Value> = views
        .iter()
        .map(|v| {
            let live = state.exports.live_progress(&v.record.id);
            json!({"fullUrl": format!("{base}/BulkDataExport/{}", v.record.id), "resource": render(v, live, secured, state.tenant.as_ref()), "search": {"mode": "match"}})
        })
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len(), "entry": entries});
    Ok(json_response(StatusCode::OK, bundle.to_string()))
}

/// The job as a `BulkDataExport` resource (the shape of the Medplum and Aidbox seeds), with the
/// tenant it belongs to unless that is the default one.
fn render(
    view: &JobView,
    live: Option<LiveProgress>,
    requires_access_token: bool,
    tenant: Option<&bulkfhir_model::TenantName>,
) -> Value {
    let record = &view.record;
    let request = &view.request;
    let base = &request.base_url;
    let files = |kind: FileKind| -> Vec<Value> {
        view.manifest
            .iter()
            .flat_map(|m| m.files.iter())
            .filter(|f| f.kind == kind)
            .map(|f| {
                json!({"type": f.resource_type, "url": format!("{base}/$export-file/{}/{}", record.id, f.name), "count": f.count, "bytes": f.bytes})
            })
            .collect()
    };
    let mut resource = json!({
        "resourceType": "BulkDataExport",
        "id": record.id.to_string(),
        "status": record.status.as_str(),
        "requestTime": record.request_time.to_fhir(),
        "transactionTime": record.snapshot.time.to_fhir(),
        "request": request.request_url,
        "requiresAccessToken": requires_access_token,
        "parameters": {
            "level": request.level,
            "groupId": request.group_id,
            "patients": request.patients,
            "types": request.types,
            "since": request.since,
            "outputFormat": if request.gzip { "application/fhir+ndjson+gzip" } else { "application/fhir+ndjson" },
        },
        "storage": {"type": "local"},
        "progress": {"percent": record.progress_percent, "text": record.progress_text},
        "output": files(FileKind::Output),
        "deleted": files(FileKind::Deleted),
        "error": files(FileKind::Error),
        "filesDeleted": record.files_deleted,
    });
    // A job running in this process reports its counters as they are now; the stored
    // progress lags by a heartbeat.
    if let Some(live) = live.filter(|l| l.units_total > 0) {
        // `[ms since the epoch, resources written]` once a second: what the export page plots.
        let samples: Vec<Value> =
            live.samples.iter().map(|(at, n)| json!([at.as_micros() / 1000, n])).collect();
        resource["progress"] = json!({
            "percent": live.percent(),
            "text": record.progress_text,
            "resources": live.resources,
            "unitsDone": live.units_done,
            "unitsTotal": live.units_total,
            "samples": samples,
        });
    }
    if let Some(requester) = &record.requester {
        resource["requester"] = json!({"display": requester});
    }
    if let Some(tenant) = tenant {
        resource["tenant"] = json!(tenant.as_str());
    }
    if let Some(expires) = record.expires_at {
        resource["expires"] = json!(expires.to_fhir());
    }
    if let Some(finished) = record.finished_at {
        resource["finishedTime"] = json!(finished.to_fhir());
    }
    if let Some(message) = &record.error_message {
        resource["errorMessage"] = json!(message);
    }
    resource
}
