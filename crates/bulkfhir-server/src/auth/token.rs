//! `POST [base]/auth/token`: SMART Backend Services' client-credentials grant (App Launch 2.2,
//! client-confidential-asymmetric), answered in RFC 6749's JSON.

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bulkfhir_auth::{AuthError, Grant, OAuthError, assertion};
use bulkfhir_model::Instant;
use http_body_util::BodyExt;
use serde_json::json;

use super::{AuthSettings, now_seconds};
use crate::{AppState, extract::BaseUrl};

/// The `client_assertion_type` SMART requires.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The largest token request read.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The token endpoint's URL for the API at `base`.
pub(crate) fn token_url(base: &str) -> String {
    format!("{base}/auth/token")
}

pub(crate) async fn issue(
    State(state): State<AppState>,
    BaseUrl(base): BaseUrl,
    request: Request,
) -> Response {
    let Some(auth) = state.config.auth.clone() else {
        return error_response(&AuthError {
            code: OAuthError::InvalidRequest,
            message: "authorization is off on this server (--auth none): no token is needed".into(),
        });
    };
    match grant(&auth, &token_url(&base), request).await {
        Ok(body) => {
            let mut response = (StatusCode::OK, body.to_string()).into_response();
            no_store(&mut response);
            response
        }
        Err(error) => {
            tracing::info!(error = error.code.code(), reason = %error.message, "token request refused");
            error_response(&error)
        }
    }
}

fn invalid(code: OAuthError, message: impl Into<String>) -> AuthError {
    AuthError { code, message: message.into() }
}

async fn grant(
    auth: &AuthSettings,
    token_url: &str,
    request: Request,
) -> Result<serde_json::Value, AuthError> {
    let form_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if form_type.as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(invalid(
            OAuthError::InvalidRequest,
            "a token request is application/x-www-form-urlencoded",
        ));
    }
    let body = http_body_util::Limited::new(request.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
        .map_err(|_| {
            invalid(
                OAuthError::InvalidRequest,
                "the request body is unreadable or larger than 64 KiB",
            )
        })?
        .to_bytes();
    let mut form = std::collections::HashMap::new();
    for (name, value) in form_urlencoded::parse(&body) {
        if form.insert(name.clone().into_owned(), value.into_owned()).is_some() {
            return Err(invalid(
                OAuthError::InvalidRequest,
                format!("parameter '{name}' is repeated"),
            ));
        }
    }
    let param = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    match param("grant_type") {
        Some("client_credentials") => {}
        Some(_) => {
            return Err(invalid(
                OAuthError::UnsupportedGrantType,
                "this server supports grant_type=client_credentials only",
            ));
        }
        None => return Err(invalid(OAuthError::InvalidRequest, "grant_type is missing")),
    }
    if param("client_assertion_type") != Some(JWT_BEARER) {
        return Err(invalid(
            OAuthError::InvalidRequest,
            format!("client_assertion_type must be {JWT_BEARER}"),
        ));
    }
    let assertion = param("client_assertion")
        .ok_or_else(|| invalid(OAuthError::InvalidRequest, "client_assertion is missing"))?;
    let scope =
        param("scope").ok_or_else(|| invalid(OAuthError::InvalidScope, "scope is missing"))?;

    let claimed = assertion::peek(assertion)?;
    let unknown = || invalid(OAuthError::InvalidClient, "the client is not registered");
    let client = auth
        .clients
        .client(&claimed.client_id)
        .await
        .map_err(|_| invalid(OAuthError::InvalidClient, "the client registry is unavailable"))?
        .ok_or_else(unknown)?;
    // SMART: a `jku` is used only when it is the JWKS URL the client registered.
    if let Some(jku) = &claimed.jku
        && client.jwks_url.as_deref() != Some(jku.as_str())
    {
        return Err(invalid(
            OAuthError::InvalidClient,
            "the assertion's jku is not the JWKS URL this client registered",
        ));
    }
    let keys = match (&client.jwks, &client.jwks_url) {
        (Some(jwks), _) => serde_json::from_str(jwks).map_err(|_| {
            invalid(OAuthError::InvalidClient, "the client's registered JWKS is unusable")
        })?,
        (None, Some(url)) => auth.jwks.keys(url, claimed.kid.as_deref()).await?,
        (None, None) => return Err(invalid(OAuthError::InvalidClient, "the client has no keys")),
    };
    let now = now_seconds();
    let verified = assertion::verify_assertion(assertion, &client.id, &keys, token_url, now)?;
    let expires = Instant::from_micros(
        i64::try_from(verified.expires_at)
            .unwrap_or(i64::MAX / 1_000_000)
            .saturating_mul(1_000_000),
    );
    let first_use = auth
        .clients
        .use_jti(&client.id, &verified.jti, expires, Instant::now())
        .await
        .map_err(|_| invalid(OAuthError::InvalidClient, "the replay cache is unavailable"))?;
    if !first_use {
        return Err(invalid(
            OAuthError::InvalidClient,
            "client_assertion's jti was used before: every assertion needs a new one",
        ));
    }
    let asked =
        Grant::parse(scope).map_err(|e| invalid(OAuthError::InvalidScope, e.to_string()))?;
    let registered = Grant::parse(&client.scope).map_err(|_| {
        invalid(OAuthError::InvalidClient, "the client's registered scope is unusable")
    })?;
    let granted = Grant::intersect(&asked, &registered);
    if granted.is_empty() {
        return Err(invalid(
            OAuthError::InvalidScope,
            "none of the requested scopes is allowed for this client",
        ));
    }
    let (token, lifetime) = auth.signer.issue_in(
        auth.tenant(),
        &client.id,
        &granted,
        now,
        bulkfhir_auth::MAX_TOKEN_SECONDS,
    )?;
    tracing::info!(client_id = %client.id, scope = %granted.to_scope_string(), "access token issued");
    Ok(json!({
        "access_token": token,
        "token_type": "bearer",
        "expires_in": lifetime,
        "scope": granted.to_scope_string(),
    }))
}

/// RFC 6749 §5.2: `{"error": ..., "error_description": ...}`, 400 or 401.
fn error_response(error: &AuthError) -> Response {
    let status = StatusCode::from_u16(error.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({"error": error.code.code(), "error_description": error.message});
    let mut response = (status, body.to_string()).into_response();
    no_store(&mut response);
    if status == StatusCode::UNAUTHORIZED {
        // RFC 6749 asks for a challenge naming the scheme the client used; with assertions
        // in the body there is no HTTP scheme, so the `Bearer` one of this server is named.
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="bulkfhir""#),
        );
    }
    response
}

fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}
