//! Request extractors that turn HTTP input into checked values, refusing with an
//! `OperationOutcome` (never axum's plain-text rejections).

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderMap, StatusCode, Uri, header, request::Parts},
};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::{AppState, outcome::ApiError};

/// A request body that declared a FHIR JSON media type and fits the size limit.
#[derive(Debug)]
pub(crate) struct FhirBody(pub(crate) Bytes);

impl FromRequest<AppState> for FhirBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        check_json_content_type(request.headers())?;
        read_body(request, state.config.max_body_bytes).await.map(FhirBody)
    }
}

/// The body of a request that may have none: `None` when it is empty, else the body, which
/// must then declare a FHIR JSON media type. A declared `Content-Type` must be a FHIR JSON one
/// even for an empty body.
pub(crate) async fn optional_fhir_body(
    request: Request,
    state: &AppState,
) -> Result<Option<Bytes>, ApiError> {
    let type_check = check_json_content_type(request.headers());
    if type_check.is_err() && request.headers().contains_key(header::CONTENT_TYPE) {
        return type_check.map(|()| None);
    }
    let body = read_body(request, state.config.max_body_bytes).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    type_check.map(|()| Some(body))
}

/// Reads a whole request body of at most `limit` bytes.
async fn read_body(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            bulkfhir_model::ErrorKind::TooLarge,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let body = Limited::new(request.into_body(), limit);
    match body.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(error) if caused_by_timeout(error.as_ref()) => Err(ApiError::new(
            bulkfhir_model::ErrorKind::Invalid,
            "the request body stalled: no data arrived within the body read timeout",
        )
        .with_status(StatusCode::REQUEST_TIMEOUT)),
        Err(error) => Err(ApiError::invalid(format!("could not read the request body: {error}"))),
    }
}

/// Whether the body read timeout layer ended this body read.
fn caused_by_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        current = error.source();
    }
    false
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let unsupported = |got: &str| {
        ApiError::invalid(format!(
            "Content-Type '{got}' is not supported; send application/fhir+json"
        ))
        .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported("(none)"));
    };
    let text = value.to_str().map_err(|_| unsupported("(not text)"))?;
    let media_type = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match media_type.as_str() {
        "application/fhir+json" | "application/json" | "application/json+fhir" => Ok(()),
        _ => Err(unsupported(text)),
    }
}

/// The absolute base URL of the FHIR API for this request, without a trailing slash.
#[derive(Debug, Clone)]
pub(crate) struct BaseUrl(pub(crate) String);

impl FromRequestParts<AppState> for BaseUrl {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let tenant_path = state.tenant.as_ref().map(|t| format!("/t/{t}")).unwrap_or_default();
        if let Some(base) = &state.config.public_base_url {
            return Ok(BaseUrl(format!("{}{tenant_path}", base.trim_end_matches('/'))));
        }
        // The host check middleware has refused invalid and unlisted hosts already; check again
        // so that this extractor is safe on its own.
        let host = request_host(&parts.headers, &parts.uri)
            .ok_or_else(|| ApiError::invalid("request has no Host header"))?;
        check_host(host, &state.config.allowed_hosts)?;
        let scheme = if state.config.tls.is_some() { "https" } else { "http" };
        Ok(BaseUrl(format!("{scheme}://{host}/fhir{tenant_path}")))
    }
}

/// The request's host: its `Host` header, or the authority of an absolute-form URI.
pub(crate) fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    match headers.get(header::HOST) {
        Some(value) => Some(value.to_str().unwrap_or("\u{fffd}")),
        None => uri.authority().map(|a| a.as_str()),
    }
}

/// Refuses a `Host` that is not `host[:port]` (a DNS name, an IPv4 address or a bracketed IPv6
/// address, and a port of at most 65535), or that is not in a non-empty allow-list.
pub(crate) fn check_host(host: &str, allowed: &[String]) -> Result<(), ApiError> {
    if !is_valid_host(host) {
        let shown: String = host.chars().take(100).filter(|c| !c.is_control()).collect();
        return Err(ApiError::invalid(format!(
            "the Host header '{shown}' is not a valid host[:port]"
        )));
    }
    if !allowed.is_empty() && !allowed.iter().any(|a| a.eq_ignore_ascii_case(host)) {
        return Err(ApiError::invalid(format!(
            "this server does not answer for the host '{host}' (see --allowed-hosts)"
        )));
    }
    Ok(())
}

fn is_valid_host(host: &str) -> bool {
    if host.is_empty() || host.len() > 261 {
        return false;
    }
    let port_ok = |port: &str| {
        !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|n| n <= 65535)
    };
    if let Some(rest) = host.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else { return false };
        return inside.parse::<std::net::Ipv6Addr>().is_ok()
            && (after.is_empty() || after.strip_prefix(':').is_some_and(port_ok));
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    // One trailing dot (`example.org.`) is allowed; every label is non-empty.
    let name = name.strip_suffix('.').unwrap_or(name);
    port.is_none_or(port_ok)
        && !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                // `_` is not in DNS host names, but container service names use it.
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The `Prefer: return=` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReturnPreference {
    Minimal,
    Representation,
    OperationOutcome,
}

/// Reads `Prefer: return=...`; representation when absent or unknown.
pub(crate) fn return_preference(headers: &HeaderMap) -> ReturnPreference {
    let values = headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok());
    for token in values.flat_map(|v| v.split(',')) {
        match token.trim() {
            "return=minimal" => return ReturnPreference::Minimal,
            "return=OperationOutcome" => return ReturnPreference::OperationOutcome,
            "return=representation" => return ReturnPreference::Representation,
            _ => {}
        }
    }
    ReturnPreference::Representation
}

/// The query string's parameters, decoded, in order.
pub(crate) fn query_pairs(parts_query: Option<&str>) -> Vec<(String, String)> {
    parts_query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Refuses requests that only accept formats other than JSON (`Accept` or `_format`).
pub(crate) fn check_accept(
    headers: &HeaderMap,
    query: &[(String, String)],
) -> Result<(), ApiError> {
    let not_acceptable = |what: &str| {
        ApiError::new(
            bulkfhir_model::ErrorKind::Unsupported,
            format!("{what} is not available; this server speaks application/fhir+json"),
        )
        .with_status(StatusCode::NOT_ACCEPTABLE)
    };
    if let Some((_, format)) = query.iter().find(|(k, _)| k == "_format") {
        let format = format.to_ascii_lowercase();
        if !format.contains("json") {
            return Err(not_acceptable(&format!("_format={format}")));
        }
    }
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let acceptable = accept.split(',').any(|range| {
        let media = range.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        media.is_empty() || media == "*/*" || media == "application/*" || media.contains("json")
    });
    if acceptable { Ok(()) } else { Err(not_acceptable(&format!("Accept: {accept}"))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_checked_for_syntax_and_against_the_allow_list() {
        for good in [
            "localhost",
            "127.0.0.1:8080",
            "fhir.example.org",
            "fhir.example.org.",
            "[::1]:80",
            "[2001:db8::1]",
            "a-b.c",
            "fhir_server:8080",
        ] {
            assert!(is_valid_host(good), "{good}");
        }
        for bad in [
            "",
            "\"><script>",
            "evil.example/path",
            "user@host",
            "host:",
            "host:99999",
            "host:8a",
            "-a.b",
            "a..b",
            "a..b.",
            ".",
            "[::1]x",
            "[::1",
            "[nope]:80",
            "a b",
            ":80",
        ] {
            assert!(!is_valid_host(bad), "{bad}");
        }
        let allowed = vec!["fhir.example.org".to_owned(), "127.0.0.1:8080".to_owned()];
        assert!(check_host("FHIR.example.org", &allowed).is_ok());
        assert!(check_host("127.0.0.1:8080", &allowed).is_ok());
        assert!(check_host("evil.example", &allowed).is_err());
        assert!(check_host("evil.example", &[]).is_ok());
    }
}
