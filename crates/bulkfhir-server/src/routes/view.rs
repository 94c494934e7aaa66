//! `$viewdefinition-run` (SQL on FHIR v2, R4 mode: system level, and `ViewDefinition/$run`):
//! a ViewDefinition applied at once to resources posted with it or to the server's data, the
//! rows answered as JSON, NDJSON or CSV. A preview: at most [`MAX_ROWS`] rows; bulk runs are
//! `$viewdefinition-export`.

use axum::{
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use bulkfhir_auth::Action;
use bulkfhir_model::{
    Instant, ResourceId,
    tabular::{self, TabularFormat},
    view::ViewDefinition,
};
use bulkfhir_store::ScanOptions;
use serde_json::Value;

use crate::{
    AppState, auth::Caller, extract::optional_fhir_body, outcome::ApiError, routes::parse_type,
};

/// The most rows one run answers (and the default of `_limit`).
pub(crate) const MAX_ROWS: usize = 10_000;
/// Resources read per store page.
const PAGE: usize = 500;

/// What a run was asked.
struct RunRequest {
    view: Value,
    format: Option<TabularFormat>,
    header: bool,
    limit: usize,
    resources: Vec<Value>,
    patient: Option<ResourceId>,
    since: Option<Instant>,
}

pub(super) async fn run(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    let query = request.uri().query().map(str::to_owned).unwrap_or_default();
    let body = optional_fhir_body(request, &state).await?;
    let Some(body) = body else {
        return Err(ApiError::invalid(
            "POST a Parameters resource with the view as viewResource (a ViewDefinition)",
        ));
    };
    let run = parse_run(&body, &query)?;
    let format = match run.format {
        Some(format) => format,
        None => format_from_accept(&headers)?,
    };
    let view = ViewDefinition::parse(&run.view)
        .map_err(|e| ApiError::invalid(format!("the ViewDefinition is not valid: {e}")))?;
    let names: Vec<&str> = view.columns().iter().map(|c| c.name.as_str()).collect();
    let mut rows: Vec<Vec<Value>> = Vec::new();
    if run.resources.is_empty() {
        server_rows(&state, &caller, &view, &run, &mut rows).await?;
    } else {
        for resource in &run.resources {
            if rows.len() >= run.limit {
                break;
            }
            let produced = view
                .rows(resource)
                .map_err(|e| ApiError::invalid(format!("the view cannot run: {e}")))?;
            rows.extend(produced);
        }
    }
    rows.truncate(run.limit);
    let mut out = Vec::new();
    match format {
        TabularFormat::Csv => {
            if run.header {
                tabular::csv_header(&names, &mut out);
            }
            rows.iter().for_each(|row| tabular::csv_row(row, &mut out));
        }
        TabularFormat::Ndjson => {
            rows.iter().for_each(|row| tabular::ndjson_row(&names, row, &mut out))
        }
        TabularFormat::Json | TabularFormat::Parquet => {
            out.push(b'[');
            for (i, row) in rows.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                tabular::json_object(&names, row, &mut out);
            }
            out.push(b']');
        }
    }
    let mut response = (StatusCode::OK, out).into_response();
    if let Ok(value) = format.media_type().parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    Ok(response)
}

/// The rows of the server's resources of the view's type, as of now, that the caller may read.
async fn server_rows(
    state: &AppState,
    caller: &Caller,
    view: &ViewDefinition,
    run: &RunRequest,
    rows: &mut Vec<Vec<Value>>,
) -> Result<(), ApiError> {
    let resource_type = parse_type(view.resource()).map_err(|_| {
        ApiError::invalid(format!(
            "the view's resource '{}' is not an R4 resource type",
            view.resource()
        ))
    })?;
    let narrowing = caller.narrowing(resource_type, Action::Search)?;
    let snapshot = state.store.snapshot().await?;
    let mut after_seq = match run.since {
        Some(since) => state.store.seq_at(since).await?,
        None => 0,
    };
    loop {
        let options = ScanOptions::live(after_seq, PAGE);
        let page = match &run.patient {
            Some(patient) => {
                state.store.scan_compartment(snapshot, patient, resource_type, options).await?
            }
            None => state.store.scan(snapshot, resource_type, options).await?,
        };
        for resource in &page.resources {
            if !narrowing.admits(&resource.body) {
                continue;
            }
            let value: Value = serde_json::from_slice(&resource.body).map_err(|e| {
                ApiError::new(
                    bulkfhir_model::ErrorKind::Internal,
                    format!("{}/{} is not readable JSON: {e}", resource.resource_type, resource.id),
                )
            })?;
            let produced = view.rows(&value).map_err(|e| {
                ApiError::invalid(format!(
                    "the view cannot run on {}/{}: {e}",
                    resource.resource_type, resource.id
                ))
            })?;
            rows.extend(produced);
            if rows.len() >= run.limit {
                return Ok(());
            }
        }
        match page.next {
            Some(next) => after_seq = next,
            None => return Ok(()),
        }
    }
}

/// The format an `Accept` header asks for; JSON when it names none of them (or anything).
fn format_from_accept(headers: &HeaderMap) -> Result<TabularFormat, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("*/*");
    for item in accept.split(',') {
        let media = item.split(';').next().unwrap_or_default().trim();
        if let Some(format) = TabularFormat::parse(media).filter(|f| *f != TabularFormat::Parquet) {
            return Ok(format);
        }
        if media == "*/*" || media == "application/*" || media == "application/fhir+json" {
            return Ok(TabularFormat::Json);
        }
    }
    Err(ApiError::invalid(format!(
        "Accept '{accept}' names no format of this operation: give _format json, ndjson or csv"
    ))
    .with_status(StatusCode::NOT_ACCEPTABLE))
}

/// The operation's parameters: from the `Parameters` body, `_format`, `_limit`, `header`,
/// `_since` and `patient` also from the query string.
fn parse_run(body: &[u8], query: &str) -> Result<RunRequest, ApiError> {
    let parameters: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body is not JSON: {e}")))?;
    if parameters["resourceType"] != "Parameters" {
        return Err(ApiError::invalid("the body must be a Parameters resource"));
    }
    let mut run = RunRequest {
        view: Value::Null,
        format: None,
        header: true,
        limit: MAX_ROWS,
        resources: Vec::new(),
        patient: None,
        since: None,
    };
    let mut pairs: Vec<(String, Value)> = Vec::new();
    for parameter in parameters["parameter"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let name = parameter["name"].as_str().unwrap_or_default().to_owned();
        let value = parameter
            .as_object()
            .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value") || *k == "resource"))
            .map(|(_, v)| v.clone())
            .unwrap_or(Value::Null);
        pairs.push((name, value));
    }
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        pairs.push((name.into_owned(), Value::String(value.into_owned())));
    }
    for (name, value) in pairs {
        let text = || match &value {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(ApiError::invalid(format!("parameter {name} has no usable value")).at(&name)),
        };
        match name.as_str() {
            "viewResource" => run.view = value.clone(),
            "viewReference" => {
                return Err(ApiError::invalid(
                    "viewReference is not supported yet: post the ViewDefinition inline as viewResource",
                )
                .at("viewReference"));
            }
            "_format" => {
                let code = text()?;
                run.format = match TabularFormat::parse(&code) {
                    Some(TabularFormat::Parquet) | None => {
                        return Err(ApiError::invalid(format!(
                            "_format '{code}' is not supported here: json, ndjson or csv (Parquet files come from $viewdefinition-export)"
                        ))
                        .at("_format"));
                    }
                    format => format,
                };
            }
            "header" => {
                run.header = match text()?.as_str() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(ApiError::invalid(format!(
                            "header '{other}' is not a boolean"
                        ))
                        .at("header"));
                    }
                }
            }
            "_limit" => {
                let limit = text()?
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_ROWS).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid(format!(
                            "_limit must be a whole number from 1 to {MAX_ROWS}"
                        ))
                        .at("_limit")
                    })?;
                run.limit = limit;
            }
            "resource" => {
                if !value.is_object() {
                    return Err(
                        ApiError::invalid("a resource parameter holds no resource").at("resource")
                    );
                }
                run.resources.push(value.clone());
            }
            "patient" => {
                let reference = match &value {
                    Value::Object(o) => {
                        o.get("reference").and_then(Value::as_str).unwrap_or_default().to_owned()
                    }
                    _ => text()?,
                };
                let id = reference.strip_prefix("Patient/").unwrap_or(&reference);
                run.patient = Some(ResourceId::parse(id).map_err(|_| {
                    ApiError::invalid(format!("patient '{reference}' is not Patient/[id]"))
                        .at("patient")
                })?);
            }
            "_since" => {
                let since = text()?;
                run.since = Some(
                    Instant::parse_fhir(&since)
                        .map_err(|e| ApiError::invalid(format!("_since: {e}")).at("_since"))?,
                );
            }
            "group" | "source" => {
                return Err(ApiError::invalid(format!(
                    "{name} is not supported by this server yet"
                ))
                .at(&name));
            }
            other => {
                return Err(ApiError::invalid(format!("unknown parameter '{other}'")).at(other));
            }
        }
    }
    if run.view.is_null() {
        return Err(ApiError::invalid("viewResource (an inline ViewDefinition) is required")
            .at("viewResource"));
    }
    Ok(run)
}
