//! `$viewdefinition-run` (SQL on FHIR v2, R4 mode: system level, `ViewDefinition/$run`, and
//! `ViewDefinition/{id}/$run` for a stored view): a ViewDefinition, posted or stored, applied
//! at once to resources posted with it or to the server's data, the rows answered as JSON,
//! NDJSON or CSV. A preview: at most [`MAX_ROWS`] rows; bulk runs are `$viewdefinition-export`.
//!
//! On the server's data, `patient` keeps one patient's compartment and `group` (repeatable) the
//! compartments of the Groups' patient members, as a Group export has them; both together keep
//! the patient if it is a member. They filter the server's data only: with posted `resource`s
//! they are refused. `source` (an external data source) is refused: the server runs views over
//! its own data or what the request carries, and fetches nothing from elsewhere.

use axum::{
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use bulkfhir_auth::Action;
use std::collections::BTreeSet;

use bulkfhir_export::group_patients;
use bulkfhir_model::{
    Instant, ResourceId, ResourceType,
    tabular::{self, TabularFormat},
    view::ViewDefinition,
};
use bulkfhir_store::{ScanOptions, Snapshot};
use serde_json::{Value, json};

use crate::{
    AppState,
    auth::{Caller, Narrowing},
    extract::{BaseUrl, optional_fhir_body},
    outcome::ApiError,
    routes::{FhirPath, parse_type, view_reference::stored_view},
};

/// The most rows one run answers (and the default of `_limit`).
pub(crate) const MAX_ROWS: usize = 10_000;
/// Resources read per store page.
const PAGE: usize = 500;

/// What a run was asked.
struct RunRequest {
    /// `viewResource`.
    view: Option<Value>,
    /// `viewReference`.
    reference: Option<String>,
    format: Option<TabularFormat>,
    header: bool,
    limit: usize,
    resources: Vec<Value>,
    patient: Option<ResourceId>,
    /// `group`, each a Group id.
    groups: Vec<ResourceId>,
    since: Option<Instant>,
}

/// `POST [base]/$viewdefinition-run` and `POST [base]/ViewDefinition/$run`.
pub(super) async fn run(
    State(state): State<AppState>,
    BaseUrl(base): BaseUrl,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    run_view(state, &base, caller, request, None).await
}

/// `POST [base]/ViewDefinition/{id}/$run`: the stored view, which the parameters must not name.
pub(super) async fn run_stored(
    State(state): State<AppState>,
    BaseUrl(base): BaseUrl,
    caller: Caller,
    FhirPath(id): FhirPath<String>,
    request: Request,
) -> Result<Response, ApiError> {
    run_view(state, &base, caller, request, Some(format!("ViewDefinition/{id}"))).await
}

async fn run_view(
    state: AppState,
    base: &str,
    caller: Caller,
    request: Request,
    instance: Option<String>,
) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    let query = request.uri().query().map(str::to_owned).unwrap_or_default();
    let body = optional_fhir_body(request, &state).await?;
    let mut run = match (body, &instance) {
        (Some(body), _) => parse_run(Some(&body), &query)?,
        // The stored view's run needs no body: its parameters may all be in the query.
        (None, Some(_)) => parse_run(None, &query)?,
        (None, None) => {
            return Err(ApiError::invalid(
                "POST a Parameters resource with the view as viewResource (a ViewDefinition) \
                 or viewReference (a stored one)",
            ));
        }
    };
    let format = match run.format {
        Some(format) => format,
        None => format_from_accept(&headers)?,
    };
    let definition = match (run.view.take(), run.reference.take(), instance) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "ViewDefinition/[id]/$run runs that stored view: give neither viewResource nor \
                 viewReference",
            ));
        }
        (Some(_), Some(_), None) => {
            return Err(ApiError::invalid("give viewResource or viewReference, not both")
                .at("viewReference"));
        }
        (Some(view), None, None) => view,
        (None, Some(reference), None) => {
            stored_view(&state, &caller, base, &reference, "viewReference").await?
        }
        (None, None, Some(reference)) => {
            stored_view(&state, &caller, base, &reference, "ViewDefinition").await?
        }
        (None, None, None) => {
            return Err(ApiError::invalid(
                "viewResource (an inline ViewDefinition) or viewReference (a stored one) is \
                 required",
            )
            .at("viewResource"));
        }
    };
    let view = ViewDefinition::parse(&definition)
        .map_err(|e| ApiError::invalid(format!("the ViewDefinition is not valid: {e}")))?;
    let names: Vec<&str> = view.columns().iter().map(|c| c.name.as_str()).collect();
    let mut rows: Vec<Vec<Value>> = Vec::new();
    if !run.resources.is_empty() && (run.patient.is_some() || !run.groups.is_empty()) {
        let name = if run.patient.is_some() { "patient" } else { "group" };
        return Err(ApiError::invalid(format!(
            "{name} filters the server's data; it cannot be given with resource parameters"
        ))
        .at(name));
    }
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
    let first_seq = match run.since {
        Some(since) => state.store.seq_at(since).await?,
        None => 0,
    };
    let scan = Scan { state, view, resource_type, run, narrowing, snapshot, first_seq };
    if run.groups.is_empty() {
        return scan.rows(run.patient.as_ref(), rows).await;
    }
    // The Groups' members, as a Group export has them (the Groups read as of the same snapshot).
    caller.narrowing(ResourceType::GROUP, Action::Read)?;
    let mut members = BTreeSet::new();
    for group in &run.groups {
        members.extend(group_patients(state.store.as_ref(), snapshot, group).await?);
    }
    if let Some(patient) = &run.patient {
        members.retain(|member| member == patient);
    }
    for member in &members {
        scan.rows(Some(member), rows).await?;
        if rows.len() >= run.limit {
            break;
        }
    }
    Ok(())
}

/// One run's reading of the server's data.
struct Scan<'a> {
    state: &'a AppState,
    view: &'a ViewDefinition,
    resource_type: ResourceType,
    run: &'a RunRequest,
    narrowing: Narrowing,
    snapshot: Snapshot,
    /// Versions after this one (`_since`).
    first_seq: u64,
}

impl Scan<'_> {
    /// Appends the rows of the resources of the view's type (in `patient`'s compartment, if
    /// given), until `run.limit` rows.
    async fn rows(
        &self,
        patient: Option<&ResourceId>,
        rows: &mut Vec<Vec<Value>>,
    ) -> Result<(), ApiError> {
        let Scan { state, view, resource_type, run, snapshot, .. } = *self;
        let mut after_seq = self.first_seq;
        loop {
            let options = ScanOptions::live(after_seq, PAGE);
            let page = match patient {
                Some(patient) => {
                    state.store.scan_compartment(snapshot, patient, resource_type, options).await?
                }
                None => state.store.scan(snapshot, resource_type, options).await?,
            };
            for resource in &page.resources {
                if !self.narrowing.admits(&resource.body) {
                    continue;
                }
                // Only the elements the view can read are built: the rows are the same.
                let value = view.parse_resource(&resource.body).map_err(|e| {
                    ApiError::new(
                        bulkfhir_model::ErrorKind::Internal,
                        format!(
                            "{}/{} is not readable JSON: {e}",
                            resource.resource_type, resource.id
                        ),
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

/// The operation's parameters: from the `Parameters` body, if any; `_format`, `_limit`,
/// `header`, `_since` and `patient` also from the query string.
fn parse_run(body: Option<&[u8]>, query: &str) -> Result<RunRequest, ApiError> {
    let parameters: Value = match body {
        Some(body) => serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid(format!("the body is not JSON: {e}")))?,
        None => json!({"resourceType": "Parameters"}),
    };
    if parameters["resourceType"] != "Parameters" {
        return Err(ApiError::invalid("the body must be a Parameters resource"));
    }
    let mut run = RunRequest {
        view: None,
        reference: None,
        format: None,
        header: true,
        limit: MAX_ROWS,
        resources: Vec::new(),
        patient: None,
        groups: Vec::new(),
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
            "viewResource" => {
                if !value.is_object() || run.view.is_some() {
                    return Err(ApiError::invalid("give one viewResource, a ViewDefinition")
                        .at("viewResource"));
                }
                run.view = Some(value.clone());
            }
            "viewReference" => match reference_text(&value) {
                Some(reference) if run.reference.is_none() => run.reference = Some(reference),
                _ => {
                    return Err(ApiError::invalid(
                        "give one viewReference, a Reference to a stored ViewDefinition",
                    )
                    .at("viewReference"));
                }
            },
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
            "patient" => run.patient = Some(reference_id(&value, "Patient", "patient")?),
            "_since" => {
                let since = text()?;
                run.since = Some(
                    Instant::parse_fhir(&since)
                        .map_err(|e| ApiError::invalid(format!("_since: {e}")).at("_since"))?,
                );
            }
            "group" => run.groups.push(reference_id(&value, "Group", "group")?),
            "source" => {
                return Err(ApiError::invalid(
                    "source is not supported: this server runs views over its own data or the \
                     resources posted with the request, and fetches no data from elsewhere",
                )
                .at("source"));
            }
            other => {
                return Err(ApiError::invalid(format!("unknown parameter '{other}'")).at(other));
            }
        }
    }
    Ok(run)
}

/// The id of parameter `name`, a reference to a `resource_type` (a `valueReference`, or its
/// text: `Type/[id]` or the bare id).
fn reference_id(value: &Value, resource_type: &str, name: &str) -> Result<ResourceId, ApiError> {
    let reference = match value {
        Value::Number(_) | Value::Bool(_) => Some(value.to_string()),
        _ => reference_text(value),
    }
    .ok_or_else(|| ApiError::invalid(format!("parameter {name} has no usable value")).at(name))?;
    let id = reference.strip_prefix(resource_type).and_then(|r| r.strip_prefix('/'));
    ResourceId::parse(id.unwrap_or(&reference)).map_err(|_| {
        ApiError::invalid(format!("{name} '{reference}' is not {resource_type}/[id]")).at(name)
    })
}

/// A `valueReference`'s `reference`, or the text of a query parameter.
fn reference_text(value: &Value) -> Option<String> {
    match value {
        Value::Object(o) => o.get("reference").and_then(Value::as_str).map(str::to_owned),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}
