//! `$viewdefinition-export` (SQL on FHIR v2): the rows of one or more ViewDefinitions as files,
//! on the same export engine, jobs, snapshot and files as `$export`, with the operation's own
//! answers: kick-off `202` with a `Parameters` body, status `202` while it runs and `303 See
//! Other` to the result once it has ended, the result a `Parameters` resource listing each
//! view's files (or the failure's `OperationOutcome`).
//!
//! - `POST [base]/$viewdefinition-export`, `POST [base]/ViewDefinition/$viewdefinition-export`
//! - `GET|DELETE [base]/$viewdefinition-export/status/{job}`
//! - `GET [base]/$viewdefinition-export/result/{job}`
//! - files: `GET [base]/$export-file/{job}/{view}-{n}.csv|ndjson`

use axum::{
    extract::{Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use bulkfhir_export::{KickoffContext, StatusView, ViewExport};
use bulkfhir_model::{
    ErrorKind, Instant, ResourceId,
    export::{ExportLevel, ExportRequest},
    tabular::TabularFormat,
};
use bulkfhir_store::{JobId, JobStatus};
use serde_json::{Value, json};

use super::{
    FhirPath,
    export::{
        cancel_job, file_links, forget_polls, header_text, parse_job_id, refused_kickoff,
        set_header,
    },
    json_response,
    view_reference::stored_view,
};
use crate::{
    AppState,
    auth::Caller,
    extract::{BaseUrl, optional_fhir_body},
    outcome::ApiError,
};

/// A view as the kick-off gives it.
enum GivenView {
    /// `viewResource`.
    Inline(Value),
    /// `viewReference`.
    Stored(String),
}

/// What a kick-off asked.
struct Kickoff {
    /// Each view's output name, if given, and the view.
    views: Vec<(Option<String>, GivenView)>,
    format: TabularFormat,
    client_tracking_id: Option<String>,
    patients: Vec<ResourceId>,
    group: Option<ResourceId>,
    since: Option<Instant>,
}

pub(super) async fn kickoff(
    State(state): State<AppState>,
    BaseUrl(base): BaseUrl,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let prefer = header_text(request.headers(), "prefer");
    if !prefer.split(',').any(|t| t.trim() == "respond-async") {
        return Err(ApiError::invalid(
            "$viewdefinition-export is asynchronous: send the header Prefer: respond-async",
        ));
    }
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().path().to_owned(), |pq| pq.as_str().to_owned());
    if request.uri().query().is_some_and(|q| !q.is_empty()) {
        return Err(ApiError::invalid(
            "$viewdefinition-export takes its parameters in the Parameters body, not the query",
        ));
    }
    let Some(body) = optional_fhir_body(request, &state).await? else {
        return Err(ApiError::invalid(
            "POST a Parameters resource with at least one view (name and viewResource)",
        ));
    };
    let asked = parse_kickoff(&body)?;
    // Stored views are read now: the job keeps the views as they were at its kick-off.
    let mut resolved = Vec::with_capacity(asked.views.len());
    for (index, (name, given)) in asked.views.into_iter().enumerate() {
        let view = match given {
            GivenView::Inline(view) => view,
            GivenView::Stored(reference) => {
                stored_view(&state, &caller, &base, &reference, "view.viewReference").await?
            }
        };
        // The output is named by `name`, else the ViewDefinition's `name`, else `view_{n}`.
        let name = name
            .or_else(|| view["name"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("view_{}", index + 1));
        resolved.push((name, view));
    }
    let level = match (&asked.group, asked.patients.is_empty()) {
        (Some(group), _) => ExportLevel::Group(group.clone()),
        (None, false) => ExportLevel::Patient,
        (None, true) => ExportLevel::System,
    };
    let export_request =
        ExportRequest { since: asked.since, patients: asked.patients, ..ExportRequest::at(level) };
    let views = ViewExport {
        views: resolved,
        format: asked.format,
        client_tracking_id: asked.client_tracking_id.clone(),
    };
    let context = KickoffContext {
        lenient: false,
        separate_status: false,
        request_url: format!(
            "{base}{}",
            path_and_query.strip_prefix("/fhir").unwrap_or(&path_and_query)
        ),
        base_url: base.clone(),
        requester: caller.client_id().map(str::to_owned),
        bound: caller.export_bound(),
    };
    let job_id = match state.exports.kickoff_views(export_request, views, context).await {
        Ok(job_id) => job_id,
        Err(error) => return refused_kickoff(&state, error),
    };
    let mut parameters = vec![
        json!({"name": "exportId", "valueString": job_id.to_string()}),
        json!({"name": "status", "valueCode": "accepted"}),
    ];
    if let Some(tracking) = &asked.client_tracking_id {
        parameters.push(json!({"name": "clientTrackingId", "valueString": tracking}));
    }
    let body = json!({"resourceType": "Parameters", "parameter": parameters});
    let mut response = json_response(StatusCode::ACCEPTED, body.to_string());
    set_header(
        &mut response,
        header::CONTENT_LOCATION.as_str(),
        &format!("{base}/$viewdefinition-export/status/{job_id}"),
    );
    Ok(response)
}

/// `GET …/status/{job}`: 202 while it runs, 303 to the result once it has ended.
pub(super) async fn status(
    State(state): State<AppState>,
    BaseUrl(base): BaseUrl,
    caller: Caller,
    FhirPath(job): FhirPath<String>,
) -> Result<Response, ApiError> {
    let job_id = view_job(&state, &caller, &job).await?;
    let report = state.exports.status(&job_id, None, &caller.job_access()).await?;
    match report.view {
        StatusView::InProgress { percent, text, retry_after } => {
            let status = if percent == 0 && text == "queued" { "accepted" } else { "in-progress" };
            let body = json!({"resourceType": "Parameters", "parameter": [
                {"name": "exportId", "valueString": job_id.to_string()},
                {"name": "status", "valueCode": status},
                {"name": "estimatedTimeRemaining", "valueInteger": retry_after.as_secs()},
            ]});
            let mut response = json_response(StatusCode::ACCEPTED, body.to_string());
            set_header(
                &mut response,
                header::RETRY_AFTER.as_str(),
                &retry_after.as_secs().max(1).to_string(),
            );
            let progress: String = format!("{percent}%: {text}")
                .chars()
                .filter(|c| c.is_ascii() && !c.is_ascii_control())
                .take(99)
                .collect();
            set_header(&mut response, "x-progress", &progress);
            Ok(response)
        }
        StatusView::Completed { .. } | StatusView::Failed { .. } | StatusView::Partial { .. } => {
            forget_polls(&state, &job_id);
            let mut response = StatusCode::SEE_OTHER.into_response();
            set_header(
                &mut response,
                header::LOCATION.as_str(),
                &format!("{base}/$viewdefinition-export/result/{job_id}"),
            );
            Ok(response)
        }
        StatusView::Expired { .. } => Err(ApiError::new(
            ErrorKind::Gone,
            format!("export {job_id} expired; its files were deleted"),
        )),
    }
}

/// `DELETE …/status/{job}`: cancels it and deletes its files.
pub(super) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    FhirPath(job): FhirPath<String>,
) -> Result<Response, ApiError> {
    let job_id = view_job(&state, &caller, &job).await?;
    cancel_job(&state, &caller, &job_id).await
}

/// `GET …/result/{job}`: each view's files, or why it failed.
pub(super) async fn result(
    State(state): State<AppState>,
    caller: Caller,
    FhirPath(job): FhirPath<String>,
) -> Result<Response, ApiError> {
    let job_id = view_job(&state, &caller, &job).await?;
    let view = state.exports.job(&job_id, &caller.job_access()).await?;
    let record = &view.record;
    match record.status {
        JobStatus::Accepted | JobStatus::InProgress => {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("export {job_id} has not ended yet: poll its status URL"),
            ));
        }
        JobStatus::Error => {
            let message =
                record.error_message.clone().unwrap_or_else(|| "the export failed".into());
            return Err(ApiError::new(ErrorKind::Internal, format!("export failed: {message}")));
        }
        JobStatus::Cancelled => {
            return Err(ApiError::new(ErrorKind::NotFound, format!("no export job {job_id}")));
        }
        JobStatus::Completed if record.files_deleted => {
            return Err(ApiError::new(
                ErrorKind::Gone,
                format!("export {job_id} expired; its files were deleted"),
            ));
        }
        JobStatus::Completed => {}
    }
    let Some(manifest) = &view.manifest else {
        return Err(ApiError::new(ErrorKind::Internal, "a completed export without a manifest"));
    };
    let links = file_links(&state, &job_id, manifest, &view.request, record.expires_at).await?;
    let base = &view.request.base_url;
    let url = |name: &str| match links.signed.as_ref().and_then(|s| s.get(name)) {
        Some(signed) => signed.clone(),
        None => format!("{base}/$export-file/{job_id}/{name}"),
    };
    let mut parameters = vec![json!({"name": "exportId", "valueString": job_id.to_string()})];
    if let Some(tracking) = &view.request.client_tracking_id {
        parameters.push(json!({"name": "clientTrackingId", "valueString": tracking}));
    }
    if let Some(format) = &view.request.view_format {
        parameters.push(json!({"name": "_format", "valueCode": format}));
    }
    parameters
        .push(json!({"name": "exportStartTime", "valueInstant": record.request_time.to_fhir()}));
    if let Some(finished) = record.finished_at {
        parameters.push(json!({"name": "exportEndTime", "valueInstant": finished.to_fhir()}));
        let seconds = (finished.as_micros() - record.request_time.as_micros()).max(0) / 1_000_000;
        parameters.push(json!({"name": "exportDuration", "valueInteger": seconds}));
    }
    // One output per view, in request order, even when it has no rows (no location then).
    for stored in &view.request.views {
        let mut parts = vec![json!({"name": "name", "valueString": stored.name})];
        for file in manifest.files.iter().filter(|f| f.resource_type == stored.name) {
            parts.push(json!({"name": "location", "valueUri": url(&file.name)}));
        }
        parameters.push(json!({"name": "output", "part": parts}));
    }
    let body = json!({"resourceType": "Parameters", "parameter": parameters});
    let mut response = json_response(StatusCode::OK, body.to_string());
    if let Some(expires) = record.expires_at {
        set_header(&mut response, header::EXPIRES.as_str(), &expires.to_http_date());
    }
    Ok(response)
}

/// The job, which must be a view export the caller may see (else 404, as for no job).
async fn view_job(state: &AppState, caller: &Caller, job: &str) -> Result<JobId, ApiError> {
    let job_id = parse_job_id(job)?;
    let view = state.exports.job(&job_id, &caller.job_access()).await?;
    if view.request.views.is_empty() {
        return Err(ApiError::new(ErrorKind::NotFound, format!("no view export {job_id}")));
    }
    Ok(job_id)
}

/// The operation's parameters, from its `Parameters` body.
fn parse_kickoff(body: &[u8]) -> Result<Kickoff, ApiError> {
    let parameters: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body is not JSON: {e}")))?;
    if parameters["resourceType"] != "Parameters" {
        return Err(ApiError::invalid("the body must be a Parameters resource"));
    }
    let mut asked = Kickoff {
        views: Vec::new(),
        format: TabularFormat::Ndjson,
        client_tracking_id: None,
        patients: Vec::new(),
        group: None,
        since: None,
    };
    let list = parameters["parameter"].as_array().map(Vec::as_slice).unwrap_or_default();
    for parameter in list {
        let name = parameter["name"].as_str().unwrap_or_default();
        let text = |keys: &[&str]| {
            keys.iter().find_map(|k| parameter[*k].as_str()).map(str::to_owned).ok_or_else(|| {
                ApiError::invalid(format!("parameter {name} has no {} value", keys.join(" or ")))
                    .at(name)
            })
        };
        let reference = |type_name: &str| -> Result<ResourceId, ApiError> {
            let reference = parameter["valueReference"]["reference"].as_str().unwrap_or_default();
            let id = reference.strip_prefix(&format!("{type_name}/")).unwrap_or_default();
            ResourceId::parse(id).map_err(|_| {
                ApiError::invalid(format!(
                    "{name} '{reference}' is not a {type_name}/[id] reference"
                ))
                .at(name)
            })
        };
        match name {
            "view" => asked.views.push(parse_view(parameter)?),
            "_format" => {
                let code = text(&["valueCode", "valueString"])?;
                asked.format = match TabularFormat::parse(&code) {
                    Some(TabularFormat::Json) | None => {
                        return Err(ApiError::invalid(format!(
                            "_format '{code}' is not supported: csv, ndjson or parquet"
                        ))
                        .at("_format"));
                    }
                    Some(format) => format,
                };
            }
            "clientTrackingId" => asked.client_tracking_id = Some(text(&["valueString"])?),
            "patient" => asked.patients.push(reference("Patient")?),
            "group" => {
                if asked.group.is_some() {
                    return Err(ApiError::invalid("one group at a time is supported").at("group"));
                }
                asked.group = Some(reference("Group")?);
            }
            "_since" => {
                let since = text(&["valueInstant", "valueDateTime", "valueString"])?;
                asked.since = Some(
                    Instant::parse_fhir(&since)
                        .map_err(|e| ApiError::invalid(format!("_since: {e}")).at("_since"))?,
                );
            }
            "source" => {
                return Err(ApiError::invalid(
                    "source is not supported: views run on this server's data",
                )
                .at("source"));
            }
            other => {
                return Err(ApiError::invalid(format!("unknown parameter '{other}'")).at(other));
            }
        }
    }
    if asked.views.is_empty() {
        return Err(ApiError::invalid("give at least one view").at("view"));
    }
    Ok(asked)
}

/// One `view` parameter: its output name, if given, and its `viewResource` or `viewReference`
/// (exactly one).
fn parse_view(parameter: &Value) -> Result<(Option<String>, GivenView), ApiError> {
    let mut name = None;
    let mut given = None;
    for part in parameter["part"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let view = match part["name"].as_str().unwrap_or_default() {
            "name" => {
                name = part["valueString"].as_str().map(str::to_owned);
                continue;
            }
            "viewResource" => {
                Some(part["resource"].clone()).filter(Value::is_object).map(GivenView::Inline)
            }
            "viewReference" => part["valueReference"]["reference"]
                .as_str()
                .map(|r| GivenView::Stored(r.to_owned())),
            other => {
                return Err(ApiError::invalid(format!("unknown part '{other}' of view")).at("view"));
            }
        };
        if given.is_some() || view.is_none() {
            return Err(ApiError::invalid(
                "a view needs one viewResource (a ViewDefinition) or one viewReference (a \
                 Reference to a stored one)",
            )
            .at("view"));
        }
        given = view;
    }
    let Some(given) = given else {
        return Err(ApiError::invalid("a view needs a viewResource or a viewReference")
            .at("view.viewResource"));
    };
    Ok((name, given))
}
