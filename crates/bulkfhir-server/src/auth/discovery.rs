//! `GET [base]/.well-known/smart-configuration` and the CapabilityStatement's
//! `rest.security`: what a client needs to find the token endpoint, true to what it does.

use axum::{
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bulkfhir_auth::ADMIN_SCOPE;
use bulkfhir_model::ErrorKind;
use serde_json::{Value, json};

use super::token::token_url;
use crate::{AppState, extract::BaseUrl, outcome::ApiError};

/// Scopes worth naming to a client (any type may replace `*`, and v2 letters combine).
fn scopes_supported() -> Value {
    json!([
        "system/*.rs",
        "system/*.read",
        "system/*.cruds",
        "system/*.write",
        "system/*.*",
        "system/Patient.rs",
        "system/Observation.rs?category=laboratory",
        ADMIN_SCOPE
    ])
}

pub(crate) async fn smart_configuration(
    State(state): State<AppState>,
    BaseUrl(base): BaseUrl,
) -> Result<Response, ApiError> {
    if state.config.auth.is_none() {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            "authorization is off on this server (--auth none): there is no token endpoint",
        ));
    }
    let body = json!({
        "token_endpoint": token_url(&base),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": scopes_supported(),
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    });
    let mut response = (StatusCode::OK, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// `CapabilityStatement.rest.security` when authorization is on.
pub(crate) fn rest_security(base: &str) -> Value {
    json!({
        "cors": false,
        "service": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR"
            }],
            "text": "SMART Backend Services (client-confidential-asymmetric, RS384 or ES384)"
        }],
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": "token", "valueUri": token_url(base)}]
        }],
        "description": format!(
            "Every request but metadata, .well-known/smart-configuration and the token endpoint needs an access token (Authorization: Bearer). Clients are registered by the operator (bulkfhir client add); scopes: SMART v1 and v2 system scopes, granular ones included; {ADMIN_SCOPE} lets a client see every export job."
        ),
    })
}
