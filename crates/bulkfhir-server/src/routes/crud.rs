//! Instance interactions: create, read, vread, update, delete, history.

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};
use bulkfhir_auth::Action;
use bulkfhir_model::{
    ErrorKind, PreparedResource, ResourceId,
    outcome::{Issue, OperationOutcome},
};
use bulkfhir_store::{Atomicity, StoredResource, WriteOp, WriteOutcome, bundle::parse_etag};

use super::{FhirPath, json_response, parse_id, parse_type};
use crate::{
    AppState,
    auth::{Caller, Narrowing},
    extract::{BaseUrl, FhirBody, ReturnPreference, check_accept, query_pairs, return_preference},
    outcome::{ApiError, outcome_response},
};

pub(super) async fn read(
    State(state): State<AppState>,
    caller: Caller,
    FhirPath((type_name, id)): FhirPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_accept(&headers, &[])?;
    let (resource_type, id) = (parse_type(&type_name)?, parse_id(&id)?);
    let narrowing = caller.narrowing(resource_type, Action::Read)?;
    let stored = state.store.read(resource_type, &id).await?;
    if !narrowing.admits(&stored.body) {
        return Err(out_of_scope(&type_name, &id));
    }
    Ok(resource_response(StatusCode::OK, &stored))
}

pub(super) async fn vread(
    State(state): State<AppState>,
    caller: Caller,
    FhirPath((type_name, id, version)): FhirPath<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_accept(&headers, &[])?;
    let (resource_type, id) = (parse_type(&type_name)?, parse_id(&id)?);
    let version = version.parse::<u64>().map_err(|_| {
        ApiError::new(ErrorKind::NotFound, format!("'{version}' is not a version number"))
    })?;
    let narrowing = caller.narrowing(resource_type, Action::Read)?;
    let stored = state.store.vread(resource_type, &id, version).await?;
    if !narrowing.admits(&stored.body) {
        return Err(out_of_scope(&type_name, &id));
    }
    Ok(resource_response(StatusCode::OK, &stored))
}

pub(super) async fn create(
    State(state): State<AppState>,
    BaseUrl(base): BaseUrl,
    caller: Caller,
    FhirPath(type_name): FhirPath<String>,
    headers: HeaderMap,
    FhirBody(body): FhirBody,
) -> Result<Response, ApiError> {
    let resource_type = parse_type(&type_name)?;
    if headers.contains_key("if-none-exist") {
        return Err(ApiError::new(
            ErrorKind::Unsupported,
            "conditional create (If-None-Exist) is not supported",
        )
        .with_status(StatusCode::BAD_REQUEST));
    }
    let narrowing = caller.narrowing(resource_type, Action::Create)?;
    let resource = prepare(&body, &type_name)?;
    check_written(&narrowing, &body)?;
    // FHIR create ignores a client id: the server assigns one.
    let id = ResourceId::new_random();
    let outcome = write_one(&state, WriteOp::Create { resource, id }).await?;
    debug_assert!(outcome.created);
    Ok(write_response(StatusCode::CREATED, &base, resource_type.as_str(), &outcome, &headers))
}

pub(super) async fn update(
    State(state): State<AppState>,
    BaseUrl(base): BaseUrl,
    caller: Caller,
    FhirPath((type_name, id)): FhirPath<(String, String)>,
    headers: HeaderMap,
    FhirBody(body): FhirBody,
) -> Result<Response, ApiError> {
    let resource_type = parse_type(&type_name)?;
    let id = parse_id(&id)?;
    let narrowing = caller.narrowing(resource_type, Action::Update)?;
    let resource = prepare(&body, &type_name)?;
    check_written(&narrowing, &body)?;
    check_current(&state, &narrowing, resource_type, &id).await?;
    match resource.id() {
        Some(body_id) if *body_id == id => {}
        Some(body_id) => {
            return Err(ApiError::invalid(format!(
                "resource id '{body_id}' does not match the URL id '{id}'"
            ))
            .at(format!("{type_name}.id")));
        }
        None => {
            return Err(ApiError::invalid("an update must carry the resource id")
                .at(format!("{type_name}.id")));
        }
    }
    let if_match = if_match(&headers)?;
    let outcome = write_one(&state, WriteOp::Update { resource, id, if_match }).await?;
    let status = if outcome.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(write_response(status, &base, &type_name, &outcome, &headers))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    FhirPath((type_name, id)): FhirPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (resource_type, id) = (parse_type(&type_name)?, parse_id(&id)?);
    let narrowing = caller.narrowing(resource_type, Action::Delete)?;
    check_current(&state, &narrowing, resource_type, &id).await?;
    let if_match = if_match(&headers)?;
    let outcome = write_one(&state, WriteOp::Delete { resource_type, id, if_match }).await?;
    let message = match outcome.seq {
        Some(_) => format!("deleted {type_name}/{} (version {})", outcome.id, outcome.version),
        None => format!("{type_name}/{} was already deleted or never existed", outcome.id),
    };
    let mut response =
        outcome_response(StatusCode::OK, OperationOutcome::single(Issue::information(message)));
    if outcome.seq.is_some() {
        set_version_headers(response.headers_mut(), outcome.version, outcome.last_updated);
    }
    Ok(response)
}

pub(super) async fn history(
    State(state): State<AppState>,
    BaseUrl(base): BaseUrl,
    caller: Caller,
    type_name: String,
    id: String,
    request: Request,
) -> Result<Response, ApiError> {
    let query = query_pairs(request.uri().query());
    check_accept(request.headers(), &query)?;
    let (resource_type, id) = (parse_type(&type_name)?, parse_id(&id)?);
    let mut count = 100usize;
    for (name, value) in &query {
        match name.as_str() {
            "_count" => {
                count = value
                    .parse::<usize>()
                    .map_err(|_| ApiError::invalid(format!("_count '{value}' is not a number")))?
                    .min(state.config.max_page_size);
            }
            "_format" => {}
            other => {
                return Err(ApiError::new(
                    ErrorKind::Unsupported,
                    format!("history parameter '{other}' is not supported"),
                )
                .with_status(StatusCode::BAD_REQUEST));
            }
        }
    }
    let narrowing = caller.narrowing(resource_type, Action::Read)?;
    let mut entries = state.store.history(resource_type, &id, count).await?;
    if !narrowing.is_none() {
        // Versions outside the scope are left out; so are deletions, which have no body to
        // match.
        entries.retain(|e| e.body.as_ref().is_some_and(|body| narrowing.admits(body)));
        if entries.is_empty() {
            return Err(out_of_scope(&type_name, &id));
        }
    }
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(br#"{"resourceType":"Bundle","type":"history","entry":["#);
    for (idx, entry) in entries.iter().enumerate() {
        if idx > 0 {
            out.push(b',');
        }
        let url = format!("{type_name}/{id}");
        let (method, status) = match (&entry.body, entry.version) {
            (None, _) => ("DELETE", "200 OK"),
            (Some(_), 1) => ("POST", "201 Created"),
            (Some(_), _) => ("PUT", "200 OK"),
        };
        out.extend_from_slice(format!(r#"{{"fullUrl":"{base}/{url}""#).as_bytes());
        if let Some(body) = &entry.body {
            out.extend_from_slice(b",\"resource\":");
            out.extend_from_slice(body);
        }
        out.extend_from_slice(
            format!(
                r#","request":{{"method":"{method}","url":"{url}"}},"response":{{"status":"{status}","etag":"W/\"{}\"","lastModified":"{}"}}}}"#,
                entry.version,
                entry.last_updated.to_fhir()
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"]}");
    Ok(json_response(StatusCode::OK, out))
}

/// What a narrowed read answers for a resource outside the scope: the same as for one that
/// does not exist.
fn out_of_scope(type_name: &str, id: &ResourceId) -> ApiError {
    ApiError::new(ErrorKind::NotFound, format!("{type_name}/{id} is not known"))
}

/// A written resource must be within the scope that allows the write.
fn check_written(narrowing: &Narrowing, body: &[u8]) -> Result<(), ApiError> {
    if narrowing.admits(body) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorKind::Forbidden,
            "the resource is outside what this client's scopes allow it to write",
        ))
    }
}

/// The current version of a resource an update or delete replaces must be within the scope
/// too (else a narrowed client could overwrite anything of the type).
async fn check_current(
    state: &AppState,
    narrowing: &Narrowing,
    resource_type: bulkfhir_model::ResourceType,
    id: &ResourceId,
) -> Result<(), ApiError> {
    if narrowing.is_none() {
        return Ok(());
    }
    match state.store.read(resource_type, id).await {
        Ok(current) if !narrowing.admits(&current.body) => {
            Err(out_of_scope(resource_type.as_str(), id))
        }
        Ok(_) => Ok(()),
        Err(error) if matches!(error.kind(), ErrorKind::NotFound | ErrorKind::Gone) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

fn prepare(body: &[u8], type_name: &str) -> Result<PreparedResource, ApiError> {
    let resource = PreparedResource::parse(body)?;
    if resource.resource_type().as_str() != type_name {
        return Err(ApiError::invalid(format!(
            "the body is a {} but the URL names {type_name}",
            resource.resource_type()
        ))
        .at("resourceType"));
    }
    Ok(resource)
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(header::IF_MATCH)
        .map(|value| {
            let text = value.to_str().map_err(|_| ApiError::invalid("If-Match is not text"))?;
            parse_etag(text).map_err(ApiError::invalid)
        })
        .transpose()
}

async fn write_one(state: &AppState, op: WriteOp) -> Result<WriteOutcome, ApiError> {
    let mut results =
        state.store.transact(vec![op], Atomicity::AllOrNothing).await.map_err(|error| {
            // A single write has no Bundle entry to point at.
            match error {
                bulkfhir_store::StoreError::OpFailed { source, .. } => ApiError::from(*source),
                other => ApiError::from(other),
            }
        })?;
    match results.pop() {
        Some(result) => result.map_err(ApiError::from),
        None => Err(ApiError::new(ErrorKind::Internal, "the store returned no outcome")),
    }
}

fn set_version_headers(
    headers: &mut HeaderMap,
    version: u64,
    last_updated: Option<bulkfhir_model::Instant>,
) {
    if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
        headers.insert(header::ETAG, etag);
    }
    if let Some(Ok(date)) = last_updated.map(|t| HeaderValue::from_str(&t.to_http_date())) {
        headers.insert(header::LAST_MODIFIED, date);
    }
}

fn resource_response(status: StatusCode, stored: &StoredResource) -> Response {
    let mut response = json_response(status, stored.body.clone());
    set_version_headers(response.headers_mut(), stored.version, Some(stored.last_updated));
    response
}

fn write_response(
    status: StatusCode,
    base: &str,
    type_name: &str,
    outcome: &WriteOutcome,
    request_headers: &HeaderMap,
) -> Response {
    let mut response = match return_preference(request_headers) {
        ReturnPreference::Minimal => json_response(status, Vec::new()),
        ReturnPreference::OperationOutcome => outcome_response(
            status,
            OperationOutcome::single(Issue::information(format!(
                "{type_name}/{} is now version {}",
                outcome.id, outcome.version
            ))),
        ),
        ReturnPreference::Representation => {
            json_response(status, outcome.body.clone().unwrap_or_default())
        }
    };
    set_version_headers(response.headers_mut(), outcome.version, outcome.last_updated);
    let location = format!("{base}/{type_name}/{}/_history/{}", outcome.id, outcome.version);
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}
