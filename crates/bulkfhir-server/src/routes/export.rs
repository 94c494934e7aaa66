//! Bulk Data `$export` on the FHIR Asynchronous Request Pattern: kick-off, status, cancel,
//! file download.

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use bulkfhir_export::{FileKind, KickoffContext, ManifestDoc, StatusView};
use bulkfhir_model::{
    ErrorKind, Instant,
    export::{ExportLevel, KickoffInput, parse_kickoff},
    outcome::{Issue, OperationOutcome},
};
use bulkfhir_store::JobId;
use futures::TryStreamExt;
use serde_json::{Value, json};

use super::{FhirPath, parse_id};
use crate::{
    AppState,
    auth::Caller,
    extract::{BaseUrl, optional_fhir_body, query_pairs},
    outcome::{ApiError, outcome_response},
};

/// The media type of NDJSON files.
const NDJSON: &str = "application/fhir+ndjson";

pub(super) async fn kickoff_system(
    state: State<AppState>,
    base: BaseUrl,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    kickoff(state, base, caller, ExportLevel::System, request).await
}

pub(super) async fn kickoff_patient(
    state: State<AppState>,
    base: BaseUrl,
    caller: Caller,
    request: Request,
) -> Result<Response, ApiError> {
    kickoff(state, base, caller, ExportLevel::Patient, request).await
}

pub(super) async fn kickoff_group(
    state: State<AppState>,
    base: BaseUrl,
    caller: Caller,
    FhirPath(group_id): FhirPath<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let group_id = parse_id(&group_id)?;
    kickoff(state, base, caller, ExportLevel::Group(group_id), request).await
}

async fn kickoff(
    State(state): State<AppState>,
    BaseUrl(base): BaseUrl,
    caller: Caller,
    level: ExportLevel,
    request: Request,
) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    let accept = header_text(&headers, header::ACCEPT.as_str());
    if !accept
        .split(',')
        .any(|media| media.split(';').next().is_some_and(|m| m.trim() == "application/fhir+json"))
    {
        return Err(ApiError::invalid(
            "a Bulk Data kick-off needs the header Accept: application/fhir+json",
        ));
    }
    let prefer = header_text(&headers, "prefer");
    let prefer_tokens: Vec<&str> = prefer.split(',').map(str::trim).collect();
    if !prefer_tokens.contains(&"respond-async") {
        return Err(ApiError::invalid(
            "a Bulk Data kick-off needs the header Prefer: respond-async",
        ));
    }
    let lenient = prefer_tokens.contains(&"handling=lenient");
    let separate_status = prefer_tokens.contains(&"separate-export-status");
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().path().to_owned(), |pq| pq.as_str().to_owned());
    let query = query_pairs(request.uri().query());
    // A POST with an empty body (Medplum's CLI sends no body and no Content-Type, with the
    // parameters in the query) is the GET form; a body must be a `Parameters` resource.
    let body = if request.method() == Method::POST {
        optional_fhir_body(request, &state).await?
    } else {
        None
    };
    let input =
        KickoffInput { level, query: &query, body: body.as_deref(), lenient, now: Instant::now() };
    let export_request = parse_kickoff(&input).map_err(|e| {
        let error = ApiError::invalid(e.message);
        match e.parameter {
            Some(parameter) => error.at(parameter),
            None => error,
        }
    })?;
    let request_url =
        format!("{base}{}", path_and_query.strip_prefix("/fhir").unwrap_or(&path_and_query));
    let context = KickoffContext {
        lenient,
        separate_status,
        request_url,
        base_url: base.clone(),
        requester: caller.client_id().map(str::to_owned),
        bound: caller.export_bound(),
    };
    let job_id = match state.exports.kickoff(export_request, context).await {
        Ok(job_id) => job_id,
        Err(error) => return refused_kickoff(&state, error),
    };
    let status_url = format!("{base}/$export-status/{job_id}");
    let mut response = outcome_response(
        StatusCode::ACCEPTED,
        OperationOutcome::single(Issue::information(format!("export accepted; poll {status_url}"))),
    );
    if let Ok(value) = HeaderValue::from_str(&status_url) {
        response.headers_mut().insert(header::CONTENT_LOCATION, value);
    }
    if separate_status {
        set_header(&mut response, "preference-applied", "respond-async, separate-export-status");
    }
    Ok(response)
}

pub(super) fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",")
}

/// A refused kick-off: 429 with `Retry-After` when the queue is full, else the error.
pub(super) fn refused_kickoff(
    state: &AppState,
    error: bulkfhir_export::ExportError,
) -> Result<Response, ApiError> {
    if error.kind() != ErrorKind::TooManyRequests {
        return Err(error.into());
    }
    let mut response = ApiError::from(error).into_response();
    let retry = state.exports.config().retry_after.as_secs().max(1).to_string();
    set_header(&mut response, header::RETRY_AFTER.as_str(), &retry);
    Ok(response)
}

pub(super) fn parse_job_id(text: &str) -> Result<JobId, ApiError> {
    JobId::parse(text)
        .ok_or_else(|| ApiError::new(ErrorKind::NotFound, format!("no export job {text}")))
}

pub(super) async fn status(
    State(state): State<AppState>,
    caller: Caller,
    FhirPath(job): FhirPath<String>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let job_id = parse_job_id(&job)?;
    let mut page = None;
    for (name, value) in query_pairs(uri.query()) {
        match name.as_str() {
            "page" => {
                let number = value.parse::<u32>().ok().filter(|n| *n >= 1);
                page = Some(number.ok_or_else(|| {
                    ApiError::invalid(format!("page '{value}' is not a page number"))
                })?);
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "the status URL takes no parameter '{other}'"
                )));
            }
        }
    }
    let report = state.exports.status(&job_id, page, &caller.job_access()).await?;
    let response = match job_status(&state, &job_id, report.view, page.is_some()).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    if report.separate_status && response.status() != StatusCode::TOO_MANY_REQUESTS {
        return Ok(separate(response));
    }
    Ok(response)
}

/// How a manifest's files are reached: URLs signed by their bucket (no token), or this server's
/// download URLs (a token when authorization is on).
pub(super) struct FileLinks {
    pub(super) signed: Option<std::collections::HashMap<String, String>>,
    pub(super) requires_access_token: bool,
}

/// Signed URLs when the server is set to hand them out and the job's store can sign.
pub(super) async fn file_links(
    state: &AppState,
    job_id: &JobId,
    manifest: &ManifestDoc,
    request: &bulkfhir_export::StoredRequest,
    expires_at: Option<Instant>,
) -> Result<FileLinks, ApiError> {
    if state.config.signed_file_urls {
        let names: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
        let signed = state.exports.signed_file_urls(job_id, request, &names, expires_at).await?;
        if signed.is_some() {
            return Ok(FileLinks { signed, requires_access_token: false });
        }
    }
    Ok(FileLinks { signed: None, requires_access_token: state.config.auth.is_some() })
}

/// The manifest JSON for a manifest (or partial-manifest page), with absolute URLs.
fn manifest_json(
    manifest: &ManifestDoc,
    base_url: &str,
    job_id: &JobId,
    links: &FileLinks,
) -> Value {
    let requires_access_token = links.requires_access_token;
    let url = |name: &str| match links.signed.as_ref().and_then(|s| s.get(name)) {
        Some(signed) => signed.clone(),
        None => format!("{base_url}/$export-file/{job_id}/{name}"),
    };
    let organized = manifest.organized_by.is_some();
    let items = |kind: FileKind| -> Vec<Value> {
        manifest
            .files
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| {
                // With organizeOutputBy, output items carry no type (files mix types).
                let mut item = if organized && kind == FileKind::Output {
                    json!({"url": url(&f.name), "count": f.count})
                } else {
                    json!({"type": f.resource_type, "url": url(&f.name), "count": f.count})
                };
                if let Some(next) = &f.continues_in {
                    item["continuesInFile"] = json!(url(next));
                }
                item
            })
            .collect()
    };
    let mut body = json!({
        "transactionTime": manifest.transaction_time,
        "request": manifest.request,
        "requiresAccessToken": requires_access_token,
        "output": items(FileKind::Output),
        "deleted": items(FileKind::Deleted),
        "error": items(FileKind::Error),
    });
    if let Some(organized_by) = &manifest.organized_by {
        body["outputOrganizedBy"] = json!(organized_by);
    }
    body
}

/// `X-Progress`: visible ASCII, under 100 characters.
fn progress_text(percent: u8, text: &str) -> String {
    format!("{percent}%: {text}")
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .take(99)
        .collect()
}

/// v3 `separate-export-status`: the HTTP status describes the status request itself (200), and
/// the job's state moves to `X-Export-Status`.
fn separate(mut response: Response) -> Response {
    let job_status = response.status();
    let line = format!("{} {}", job_status.as_u16(), job_status.canonical_reason().unwrap_or(""));
    *response.status_mut() = StatusCode::OK;
    set_header(&mut response, "x-export-status", line.trim_end());
    response
}

/// The status answer for a job's state, in the plain async-pattern form.
async fn job_status(
    state: &AppState,
    job_id: &JobId,
    view: StatusView,
    is_page: bool,
) -> Result<Response, ApiError> {
    let job_id = job_id.clone();
    // Polls faster than half of what the last answer told (or of the configured Retry-After,
    // when that is less: a client polling once a second is never refused) get 429.
    let patience = state.exports.config().retry_after;
    match view {
        StatusView::Partial {
            page,
            request,
            next,
            complete,
            percent,
            text,
            retry_after,
            expires_at,
        } => {
            let links = file_links(state, &job_id, &page, &request, expires_at).await?;
            let mut body = manifest_json(&page, &request.base_url, &job_id, &links);
            if let Some(next) = next {
                let url = format!("{}/$export-status/{job_id}?page={next}", request.base_url);
                body["link"] = json!([{"relation": "next", "url": url}]);
            }
            if complete {
                // Nothing left to rate-limit: do not keep an entry per finished job.
                forget_polls(state, &job_id);
            } else if !is_page {
                let mut polls =
                    state.polls.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                polls.insert(job_id.clone(), (std::time::Instant::now(), retry_after));
            }
            let status = if complete { StatusCode::OK } else { StatusCode::ACCEPTED };
            let mut response = (status, body.to_string()).into_response();
            set_header(&mut response, header::CONTENT_TYPE.as_str(), "application/json");
            if complete {
                if let Some(expires) = expires_at {
                    set_header(&mut response, header::EXPIRES.as_str(), &expires.to_http_date());
                }
            } else {
                let retry = retry_after.as_secs().max(1).to_string();
                set_header(&mut response, header::RETRY_AFTER.as_str(), &retry);
                set_header(&mut response, "x-progress", &progress_text(percent, &text));
            }
            Ok(response)
        }
        StatusView::InProgress { percent, text, retry_after } => {
            let now = std::time::Instant::now();
            let too_fast = {
                let mut polls =
                    state.polls.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let too_fast = !is_page
                    && polls.get(&job_id).is_some_and(|(last, told)| {
                        now.duration_since(*last) < (*told).min(patience) / 2
                    });
                if !too_fast {
                    if polls.len() > 10_000 {
                        polls.retain(|_, (last, _)| {
                            now.duration_since(*last) < std::time::Duration::from_secs(3600)
                        });
                    }
                    polls.insert(job_id.clone(), (now, retry_after));
                }
                too_fast
            };
            let retry = retry_after.as_secs().max(1).to_string();
            if too_fast {
                let mut response = ApiError::new(
                    ErrorKind::TooManyRequests,
                    format!("polled faster than Retry-After ({retry} s); slow down"),
                )
                .into_response();
                set_header(&mut response, header::RETRY_AFTER.as_str(), &retry);
                return Ok(response);
            }
            let mut response = StatusCode::ACCEPTED.into_response();
            set_header(&mut response, header::RETRY_AFTER.as_str(), &retry);
            set_header(&mut response, "x-progress", &progress_text(percent, &text));
            Ok(response)
        }
        StatusView::Completed { manifest, request, expires_at } => {
            forget_polls(state, &job_id);
            let links = file_links(state, &job_id, &manifest, &request, expires_at).await?;
            let body = manifest_json(&manifest, &request.base_url, &job_id, &links);
            let mut response = (StatusCode::OK, body.to_string()).into_response();
            set_header(&mut response, header::CONTENT_TYPE.as_str(), "application/json");
            if let Some(expires) = expires_at {
                set_header(&mut response, header::EXPIRES.as_str(), &expires.to_http_date());
            }
            Ok(response)
        }
        StatusView::Failed { message } => {
            forget_polls(state, &job_id);
            Ok(outcome_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                OperationOutcome::single(Issue::error(ErrorKind::Internal, message)),
            ))
        }
        StatusView::Expired { at } => {
            forget_polls(state, &job_id);
            let when = at.map_or_else(String::new, |t| format!(" at {t}"));
            Err(ApiError::new(
                ErrorKind::Gone,
                format!("export {job_id} expired{when}; its files were deleted"),
            ))
        }
    }
}

pub(super) fn forget_polls(state: &AppState, job_id: &JobId) {
    state.polls.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(job_id);
}

pub(super) fn set_header(response: &mut Response, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) =
        (header::HeaderName::try_from(name), HeaderValue::from_str(value))
    {
        response.headers_mut().insert(name, value);
    }
}

pub(super) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    FhirPath(job): FhirPath<String>,
) -> Result<Response, ApiError> {
    let job_id = parse_job_id(&job)?;
    cancel_job(&state, &caller, &job_id).await
}

/// Cancels `job_id` (202): its files are deleted; polls of it are forgotten.
pub(super) async fn cancel_job(
    state: &AppState,
    caller: &Caller,
    job_id: &JobId,
) -> Result<Response, ApiError> {
    state.exports.cancel(job_id, &caller.job_access()).await?;
    forget_polls(state, job_id);
    Ok(outcome_response(
        StatusCode::ACCEPTED,
        OperationOutcome::single(Issue::information(format!(
            "export {job_id} cancelled; its files are being deleted"
        ))),
    ))
}

/// A parsed `Range: bytes=...` header (a single range; anything else is served whole).
enum ByteRange {
    From(u64),
    FromTo(u64, u64),
    Suffix(u64),
}

fn parse_range(headers: &HeaderMap) -> Option<ByteRange> {
    let text = headers.get(header::RANGE)?.to_str().ok()?;
    let spec = text.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    match (start.trim(), end.trim()) {
        ("", suffix) => suffix.parse().ok().map(ByteRange::Suffix),
        (start, "") => start.parse().ok().map(ByteRange::From),
        (start, end) => Some(ByteRange::FromTo(start.parse().ok()?, end.parse().ok()?)),
    }
}

/// What a client's `Accept-Encoding` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GzipAcceptance {
    /// No `Accept-Encoding` header: any content coding is acceptable (RFC 9110 §12.5.3).
    NotSaid,
    /// `gzip` (or `*`) with a non-zero weight.
    Accepted,
    /// The header is there and does not accept gzip (`identity`, `gzip;q=0`, `br`, …).
    Refused,
}

fn gzip_acceptance(headers: &HeaderMap) -> GzipAcceptance {
    let mut values = headers.get_all(header::ACCEPT_ENCODING).iter().peekable();
    if values.peek().is_none() {
        return GzipAcceptance::NotSaid;
    }
    let (mut gzip, mut star) = (None, None);
    for item in values.filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')) {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let weight = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match coding.as_str() {
            "gzip" | "x-gzip" => gzip = Some(weight),
            "*" => star = Some(weight),
            _ => {}
        }
    }
    match gzip.or(star) {
        Some(weight) if weight > 0.0 => GzipAcceptance::Accepted,
        _ => GzipAcceptance::Refused,
    }
}

/// How a file goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WireCoding {
    /// The stored bytes as they are (with `Content-Encoding: gzip` for a stored gzip file).
    Stored,
    /// A plain file compressed on the fly for a client that accepts gzip.
    Compress,
    /// A gzip file decompressed on the fly for a client that does not accept gzip.
    Decompress,
}

/// Chooses the wire coding. A `Range` is served on the stored bytes, so a ranged request for a
/// plain file is not compressed (a range of an on-the-fly encoding has no stable meaning); a
/// stored gzip file that has to be decompressed is sent whole (200), since its decoded length is
/// not known without reading it, and a server may ignore `Range`.
fn wire_coding(stored_gzip: bool, acceptance: GzipAcceptance, ranged: bool) -> WireCoding {
    match (stored_gzip, acceptance) {
        (true, GzipAcceptance::Refused) => WireCoding::Decompress,
        (false, GzipAcceptance::Accepted) if !ranged => WireCoding::Compress,
        _ => WireCoding::Stored,
    }
}

pub(super) async fn download(
    State(state): State<AppState>,
    caller: Caller,
    FhirPath((job, name)): FhirPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job_id = parse_job_id(&job)?;
    let access = caller.job_access();
    let whole = state.exports.open_file(&job_id, &name, None, &access).await?;
    // The token in hand must still cover the file's type (scopes can narrow between kick-off
    // and download).
    if let Some(type_name) = &whole.resource_type
        && let Ok(resource_type) = bulkfhir_model::ResourceType::parse(type_name)
    {
        caller.require(resource_type, bulkfhir_auth::Action::Search)?;
    }
    let size = whole.total_size;
    let coding =
        wire_coding(whole.gzip, gzip_acceptance(&headers), headers.contains_key(header::RANGE));
    let range = if coding == WireCoding::Decompress { None } else { parse_range(&headers) };
    let resolved = match range {
        None => None,
        Some(ByteRange::From(start)) => Some(start..size),
        Some(ByteRange::FromTo(start, end)) => Some(start..end.saturating_add(1).min(size)),
        Some(ByteRange::Suffix(n)) => Some(size.saturating_sub(n)..size),
    };
    let (download, status, content_range) = match resolved {
        None => (whole, StatusCode::OK, None),
        Some(r) if r.start >= size || r.start >= r.end => {
            let mut response = ApiError::new(
                ErrorKind::Invalid,
                format!("range not satisfiable for a file of {size} bytes"),
            )
            .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
            .into_response();
            set_header(&mut response, header::CONTENT_RANGE.as_str(), &format!("bytes */{size}"));
            return Ok(response);
        }
        Some(r) => {
            drop(whole);
            let content_range = format!("bytes {}-{}/{size}", r.start, r.end - 1);
            (
                state.exports.open_file(&job_id, &name, Some(r), &access).await?,
                StatusCode::PARTIAL_CONTENT,
                Some(content_range),
            )
        }
    };
    let stored = download.body.map_err(std::io::Error::other);
    let body = match coding {
        WireCoding::Stored => Body::from_stream(stored),
        WireCoding::Compress => {
            let reader = tokio_util::io::StreamReader::new(stored);
            let encoder = async_compression::tokio::bufread::GzipEncoder::with_quality(
                reader,
                async_compression::Level::Fastest,
            );
            Body::from_stream(tokio_util::io::ReaderStream::with_capacity(encoder, 64 * 1024))
        }
        WireCoding::Decompress => {
            let reader = tokio_util::io::StreamReader::new(stored);
            let mut decoder = async_compression::tokio::bufread::GzipDecoder::new(reader);
            decoder.multiple_members(true);
            Body::from_stream(tokio_util::io::ReaderStream::with_capacity(decoder, 64 * 1024))
        }
    };
    let mut response = (status, body).into_response();
    set_header(&mut response, header::CONTENT_TYPE.as_str(), NDJSON);
    set_header(&mut response, header::VARY.as_str(), "accept-encoding");
    if coding != WireCoding::Decompress {
        set_header(&mut response, header::ACCEPT_RANGES.as_str(), "bytes");
    }
    match coding {
        WireCoding::Stored if download.gzip => {
            set_header(&mut response, header::CONTENT_ENCODING.as_str(), "gzip");
        }
        WireCoding::Compress => {
            set_header(&mut response, header::CONTENT_ENCODING.as_str(), "gzip");
        }
        _ => {}
    }
    if coding == WireCoding::Stored && content_range.is_none() {
        set_header(&mut response, header::CONTENT_LENGTH.as_str(), &size.to_string());
    }
    if let Some(content_range) = content_range {
        set_header(&mut response, header::CONTENT_RANGE.as_str(), &content_range);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acceptance(value: Option<&str>) -> GzipAcceptance {
        let mut headers = HeaderMap::new();
        if let Some(value) = value {
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
        }
        gzip_acceptance(&headers)
    }

    #[test]
    fn accept_encoding_is_negotiated() {
        assert_eq!(acceptance(None), GzipAcceptance::NotSaid);
        for accepted in ["gzip", "gzip, deflate", "br;q=1, GZIP;q=0.5", "*", "identity, *;q=0.1"] {
            assert_eq!(acceptance(Some(accepted)), GzipAcceptance::Accepted, "{accepted}");
        }
        for refused in ["identity", "gzip;q=0", "br", "", "*;q=0", "gzip;q=0, *"] {
            assert_eq!(acceptance(Some(refused)), GzipAcceptance::Refused, "{refused}");
        }
        use GzipAcceptance::*;
        assert_eq!(wire_coding(false, Accepted, false), WireCoding::Compress);
        assert_eq!(wire_coding(false, Accepted, true), WireCoding::Stored);
        assert_eq!(wire_coding(false, NotSaid, false), WireCoding::Stored);
        assert_eq!(wire_coding(true, Refused, true), WireCoding::Decompress);
        assert_eq!(wire_coding(true, NotSaid, false), WireCoding::Stored);
        assert_eq!(wire_coding(true, Accepted, true), WireCoding::Stored);
    }
}
