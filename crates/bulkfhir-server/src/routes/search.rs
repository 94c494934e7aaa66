//! Searches: a paged listing of a type (`GET [base]/[type]`) and Patient compartment search
//! (`GET [base]/Patient/[id]/[type]`), both read from one snapshot so that paging is stable.

use axum::{
    extract::{Request, State},
    http::StatusCode,
    response::Response,
};
use bulkfhir_auth::Action;
use bulkfhir_model::{ErrorKind, Instant, ResourceType, compartment, search::SearchQuery};
use bulkfhir_store::{ScanOptions, ScanPage, Snapshot};

use super::{FhirPath, json_response, parse_id, parse_type};
use crate::{
    AppState,
    auth::Caller,
    extract::{BaseUrl, check_accept, query_pairs},
    outcome::ApiError,
};

const DEFAULT_COUNT: usize = 50;

/// `_count`, the `_page` continuation token, and the search parameters.
struct Paging {
    count: usize,
    snapshot: Option<Snapshot>,
    after_seq: u64,
    /// Search parameters in request order (only where search is allowed).
    search: Vec<(String, String)>,
}

fn parse_paging(
    state: &AppState,
    request: &Request,
    allow_search: bool,
) -> Result<Paging, ApiError> {
    let query = query_pairs(request.uri().query());
    check_accept(request.headers(), &query)?;
    let mut paging =
        Paging { count: DEFAULT_COUNT, snapshot: None, after_seq: 0, search: Vec::new() };
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
            _ if allow_search => paging.search.push((name.clone(), value.clone())),
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
    caller: Caller,
    FhirPath(type_name): FhirPath<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let resource_type = parse_type(&type_name)?;
    let narrowing = caller.narrowing(resource_type, Action::Search)?;
    let paging = parse_paging(&state, &request, true)?;
    let query = if paging.search.is_empty() {
        None
    } else {
        let parsed = SearchQuery::parse(resource_type, &paging.search, Instant::now());
        Some(parsed.map_err(|e| {
            let error = ApiError::invalid(e.message);
            match e.parameter {
                Some(parameter) => error.at(parameter),
                None => error,
            }
        })?)
    };
    let snapshot = match paging.snapshot {
        Some(snapshot) => snapshot,
        None => state.store.snapshot().await?,
    };
    let page = if query.is_none() && narrowing.is_none() {
        let options = ScanOptions::live(paging.after_seq, paging.count);
        state.store.scan(snapshot, resource_type, options).await?
    } else {
        let filter = |body: &[u8]| {
            narrowing.admits(body)
                && query.as_ref().is_none_or(|q| q.matches(body).unwrap_or(false))
        };
        search_page(&state, snapshot, resource_type, &filter, paging.after_seq, paging.count)
            .await?
    };
    // Links repeat the search parameters; `searchset` appends _count and _page.
    let search_params: String =
        form_urlencoded::Serializer::new(String::new()).extend_pairs(&paging.search).finish();
    let path = if search_params.is_empty() {
        format!("{base}/{type_name}?")
    } else {
        format!("{base}/{type_name}?{search_params}&")
    };
    Ok(searchset(&base, &path, paging.count, snapshot, &page))
}

pub(super) async fn compartment(
    State(state): State<AppState>,
    BaseUrl(base): BaseUrl,
    caller: Caller,
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
    let narrowing = caller.narrowing(resource_type, Action::Search)?;
    let paging = parse_paging(&state, &request, false)?;
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
    let mut page = state
        .store
        .scan_compartment(
            snapshot,
            &patient,
            resource_type,
            ScanOptions::live(paging.after_seq, paging.count),
        )
        .await?;
    // A narrowed page may be short; `next` still continues after the last resource read.
    page.resources.retain(|r| narrowing.admits(&r.body));
    let path = format!("{base}/Patient/{patient}/{type_name}?");
    Ok(searchset(&base, &path, paging.count, snapshot, &page))
}

/// Scans from `after_seq` until `count` resources match, the scan budget is spent, or the type
/// ends. A page may hold fewer than `count` entries; `next` then continues the scan.
async fn search_page(
    state: &AppState,
    snapshot: Snapshot,
    resource_type: ResourceType,
    filter: &(dyn Fn(&[u8]) -> bool + Sync),
    after_seq: u64,
    count: usize,
) -> Result<ScanPage, ApiError> {
    const SCAN_BUDGET: usize = 50_000;
    let mut out = ScanPage::default();
    let (mut after, mut scanned) = (after_seq, 0usize);
    loop {
        let page =
            state.store.scan(snapshot, resource_type, ScanOptions::live(after, 1000)).await?;
        scanned += page.resources.len();
        for resource in page.resources {
            after = resource.seq;
            if filter(&resource.body) {
                out.resources.push(resource);
                if out.resources.len() >= count {
                    out.next = Some(after);
                    return Ok(out);
                }
            }
        }
        match page.next {
            Some(next) if scanned < SCAN_BUDGET => after = next,
            Some(next) => {
                out.next = Some(next);
                return Ok(out);
            }
            None => return Ok(out),
        }
    }
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
        format!(r#"{{"relation":"self","url":"{path}_count={count}"}}"#).as_bytes(),
    );
    if let Some(next) = page.next {
        let token = format!("{}-{}-{next}", snapshot.seq, snapshot.time.as_micros());
        out.extend_from_slice(
            format!(r#",{{"relation":"next","url":"{path}_count={count}&_page={token}"}}"#)
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
