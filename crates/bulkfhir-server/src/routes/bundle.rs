//! `POST [base]` with a transaction or batch Bundle.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use bulkfhir_store::bundle::{BundleOptions, process};

use super::json_response;
use crate::{
    AppState,
    extract::{FhirBody, ReturnPreference, return_preference},
    outcome::ApiError,
};

pub(super) async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    FhirBody(body): FhirBody,
) -> Result<Response, ApiError> {
    let options = BundleOptions {
        return_resources: return_preference(&headers) == ReturnPreference::Representation
            && headers.contains_key("prefer"),
    };
    let response = process(state.store.as_ref(), &body, options).await?;
    Ok(json_response(StatusCode::OK, response))
}
