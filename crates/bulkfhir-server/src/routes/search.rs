//! Searches: a paged listing of a type (`GET [base]/[type]`) and Patient compartment search
//! (`GET [base]/Patient/[id]/[type]`), both read from one snapshot so that paging is stable.

use axum::{
    extract::{Request, State},
    http::StatusCode,
    response::Response,
};
use bulkfhir_model::{ErrorKind, Instant, ResourceType, compartment};
use bulkfhir_store::{ScanOptions, ScanPage, Snapshot};

use super::{FhirPath, json_response, parse_id, parse_type};
use crate::{
    AppState,
    extract::{BaseUrl, check_accept, query_pairs},
    outcome::ApiError,
};

const DEFAULT_COUNT: usize = 50;

/// `_count` and the `_page` continuation token.
struct Paging {
    count: usize,
    snapshot: Option<Snapshot>,
    after_seq: u64,
}

fn parse_paging(state: &AppState, request: &Request) -> Result<Paging, ApiError> {
    let query = query_pairs(request.uri().query());
    check_accept(request.headers(), &query)?;
    let mut paging = Paging { count: DEFAULT_COUNT, snapshot: None, after_seq: 0 };
    for (name, value) in &query {
        match name.as_str() {
            "_count" => {
                paging.count = value
                    .parse::<usize>()
                    .map_err(|_| ApiError::invalid(format!("_count '{value}' is not a number")))?
                    .clamp(1, state.config.max_page_size);
            }
            "_page" => {
                let bad = || {
                    ApiError::invalid(format!("_page '{value}' is not a token this server issued"))
                };
                let mut parts = value.split('-').map(|p| p.parse::<u64>());
                let (Some(Ok(seq)), Some(Ok(time)), Some(Ok(after)), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(bad());
                };
                let time = i64::try_from(time).map_err(|_| bad())?;
                paging.snapshot = Some(Snapshot { seq, time: Instant::from_micros(time) });
                paging.after_seq = after;
            }
            "_format" => {}
            other => {
                return Err(ApiError::new(
                    ErrorKind::Unsupported,
                    format!(
                        "search parameter '{other}' is not supported yet; this endpoint lists resources page by page (_count, _page)"
                    ),
                )
                .with_status(StatusCode::BAD_REQUEST));
            }
        }
    }
    Ok(paging)
}

pub(super) async fn list_type(
    State(state): State<AppState>,
    BaseUrl(base): BaseUrl,
    FhirPath(type_name): FhirPath<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let resource_type = parse_type(&type_name)?;
    let paging = parse_paging(&state, &request)?;
    let snapshot = match paging.snapshot {
        Some(snapshot) => snapshot,
        None => state.store.snapshot().await?,
    };
    let page = state
        .store
        .scan(snapshot, resource_type, ScanOptions::live(paging.after_seq, paging.count))
        .await?;
    let path = format!("{base}/{type_name}");
    Ok(searchset(&base, &path, paging.count, snapshot, &page))
}

pub(super) async fn compartment(
    State(state): State<AppState>,
    BaseUrl(base): BaseUrl,
    patient_id: String,
    type_name: String,
    request: Request,
) -> Result<Response, ApiError> {
    let patient = parse_id(&patient_id)?;
    let resource_type = parse_type(&type_name)?;
    if !compartment::is_compartment_type(resource_type) {
        return Err(ApiError::invalid(format!(
            "{resource_type} is not in the Patient compartment"
        )));
    }
    let paging = parse_paging(&state, &request)?;
    let snapshot = match paging.snapshot {
        Some(snapshot) => snapshot,
        None => state.store.snapshot().await?,
    };
    // The patient must exist (or have existed): an unknown id is a 404, not an empty page.
    if let Err(error) = state.store.read(ResourceType::PATIENT, &patient).await
        && error.kind() == ErrorKind::NotFound
    {
        return Err(error.into());
    }
    let page = state
        .store
        .scan_compartment(
            snapshot,
            &patient,
            resource_type,
            ScanOptions::live(paging.after_seq, paging.count),
        )
        .await?;
    let path = format!("{base}/Patient/{patient}/{type_name}");
    Ok(searchset(&base, &path, paging.count, snapshot, &page))
}

fn searchset(
    base: &str,
    path: &str,
    count: usize,
    snapshot: Snapshot,
    page: &ScanPage,
) -> Response {
    let mut out =
        Vec::with_capacity(page.resources.iter().map(|r| r.body.len() + 128).sum::<usize>() + 512);
    out.extend_from_slice(br#"{"resourceType":"Bundle","type":"searchset","link":["#);
    out.extend_from_slice(
        format!(r#"{{"relation":"self","url":"{path}?_count={count}"}}"#).as_bytes(),
    );
    if let Some(next) = page.next {
        let token = format!("{}-{}-{next}", snapshot.seq, snapshot.time.as_micros());
        out.extend_from_slice(
            format!(r#",{{"relation":"next","url":"{path}?_count={count}&_page={token}"}}"#)
                .as_bytes(),
        );
    }
    out.extend_from_slice(br#"],"entry":["#);
    for (idx, resource) in page.resources.iter().enumerate() {
        if idx > 0 {
            out.push(b',');
        }
        out.extend_from_slice(
            format!(
                r#"{{"fullUrl":"{base}/{}/{}","resource":"#,
                resource.resource_type, resource.id
            )
            .as_bytes(),
        );
        out.extend_from_slice(&resource.body);
        out.extend_from_slice(br#","search":{"mode":"match"}}"#);
    }
    out.extend_from_slice(b"]}");
    json_response(StatusCode::OK, out)
}
