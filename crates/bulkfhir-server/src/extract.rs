//! Request extractors that turn HTTP input into checked values, refusing with an
//! `OperationOutcome` (never axum's plain-text rejections).

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderMap, StatusCode, header, request::Parts},
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
        let limit = state.config.max_body_bytes;
        check_json_content_type(request.headers())?;
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
            Ok(collected) => Ok(FhirBody(collected.to_bytes())),
            Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
            Err(error) => {
                Err(ApiError::invalid(format!("could not read the request body: {error}")))
            }
        }
    }
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
        if let Some(base) = &state.config.public_base_url {
            return Ok(BaseUrl(base.trim_end_matches('/').to_owned()));
        }
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .ok_or_else(|| ApiError::invalid("request has no Host header"))?;
        Ok(BaseUrl(format!("http://{host}/fhir")))
    }
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
