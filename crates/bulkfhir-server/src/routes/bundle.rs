//! `POST [base]` with a transaction or batch Bundle.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use bulkfhir_auth::Action;
use bulkfhir_store::bundle::{BundleOptions, EntryInteraction, process};

use super::json_response;
use crate::{
    AppState,
    auth::Caller,
    extract::{FhirBody, ReturnPreference, return_preference},
    outcome::ApiError,
};

pub(super) async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    FhirBody(body): FhirBody,
) -> Result<Response, ApiError> {
    // Bundle entries are checked against whole-type permissions: a granular scope's query is
    // not evaluated entry by entry.
    let authorize = |resource_type, interaction| {
        let action = match interaction {
            EntryInteraction::Create => Action::Create,
            EntryInteraction::Read => Action::Read,
            EntryInteraction::Update => Action::Update,
            EntryInteraction::Delete => Action::Delete,
        };
        caller.require_all(resource_type, action).map_err(|e| e.message().to_owned())
    };
    let options = BundleOptions {
        return_resources: return_preference(&headers) == ReturnPreference::Representation
            && headers.contains_key("prefer"),
        authorize: Some(&authorize),
    };
    let response = process(state.store.as_ref(), &body, options).await?;
    Ok(json_response(StatusCode::OK, response))
}
