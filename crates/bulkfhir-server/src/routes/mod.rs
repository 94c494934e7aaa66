//! Routes, grouped by area: `crud` (instance interactions and history), `bundle`
//! (transaction/batch), `search` (type listing, Patient compartment), `export` (Bulk Data
//! kick-off, status, cancel, files), `jobs` (export jobs as resources), `metadata`.

mod bundle;
mod crud;
pub(crate) mod export;
mod jobs;
mod page;
mod search;
mod view;
mod view_export;
mod view_reference;

use std::any::Any;

use axum::{
    Router,
    extract::{FromRequestParts, Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use bulkfhir_model::{
    ErrorKind, Instant, ResourceId, ResourceType,
    outcome::{Issue, OperationOutcome},
};
use serde::de::DeserializeOwned;
use tower_http::{
    catch_panic::CatchPanicLayer, timeout::RequestBodyTimeoutLayer, trace::TraceLayer,
};

use crate::{
    AppState, auth,
    capability::capability_statement,
    extract::{BaseUrl, check_accept, check_host, request_host},
    outcome::{ApiError, FHIR_JSON, outcome_response},
};

pub(crate) fn router(state: AppState) -> Router {
    fhir_routes(&state)
        // A tenant's requests are measured by its own router, under its own route names.
        .route("/fhir/t/{tenant}", any(crate::tenant::dispatch))
        .route("/fhir/t/{tenant}/{*rest}", any(crate::tenant::dispatch))
        // The FHIR routes only: probes and scrapers address a node by its IP.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), check_host_header))
        .merge(crate::ops::routes(state.config.metrics_on_api_listener))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(RequestBodyTimeoutLayer::new(state.config.limits.body_read_timeout))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// One tenant's FHIR API at `/fhir/...`: the outer router has checked the host and set the
/// timeouts, and rewrote `/fhir/t/{tenant}/...` to this.
pub(crate) fn tenant_router(state: AppState) -> Router {
    fhir_routes(&state)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The FHIR API of one tenant, measured.
fn fhir_routes(state: &AppState) -> Router<AppState> {
    let started = Instant::now();
    let secured = state.config.auth.is_some();
    Router::new()
        .route("/fhir", post(bundle::submit))
        .route("/fhir/", post(bundle::submit))
        .route("/fhir/$export", get(export::kickoff_system).post(export::kickoff_system))
        .route("/fhir/Patient/$export", get(export::kickoff_patient).post(export::kickoff_patient))
        .route("/fhir/Group/{id}/$export", get(export::kickoff_group).post(export::kickoff_group))
        .route("/fhir/$export-status/{job}", get(export::status).delete(export::cancel))
        .route("/fhir/$export-file/{job}/{name}", get(export::download))
        .route("/fhir/$viewdefinition-run", post(view::run))
        .route("/fhir/$viewdefinition-export", post(view_export::kickoff))
        .route("/fhir/ViewDefinition/$viewdefinition-export", post(view_export::kickoff))
        .route(
            "/fhir/$viewdefinition-export/status/{job}",
            get(view_export::status).delete(view_export::cancel),
        )
        .route("/fhir/$viewdefinition-export/result/{job}", get(view_export::result))
        .route("/fhir/ViewDefinition/$run", post(view::run))
        .route("/fhir/ViewDefinition/{id}/$run", post(view::run_stored))
        .route("/fhir/BulkDataExport", get(jobs::search))
        .route("/fhir/BulkDataExport/{id}", get(jobs::read))
        .route("/fhir/{type}", get(search::list_type).post(crud::create))
        .route("/fhir/{type}/{id}", get(crud::read).put(crud::update).delete(crud::delete))
        .route("/fhir/{type}/{id}/{sub}", get(instance_subpath))
        .route("/fhir/{type}/{id}/_history/{version}", get(crud::vread))
        // Every route above needs an access token when authorization is on; the ones below
        // are how a client finds out how to get one.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .route(
            "/fhir/metadata",
            get(move |base: BaseUrl, headers: HeaderMap| metadata(base, headers, started, secured)),
        )
        .route("/fhir/.well-known/smart-configuration", get(auth::discovery::smart_configuration))
        .route("/fhir/auth/token", post(auth::token::issue))
        // A static page with no data in it; its requests carry the token it is given.
        .route("/fhir/$export-jobs", get(page::export_jobs))
        .route_layer(axum::middleware::from_fn(crate::ops::measure))
}

/// Refuses a request whose `Host` is not a valid `host[:port]`, or not allowed, before any
/// handler could copy it into a URL or a stored job.
async fn check_host_header(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(host) = request_host(request.headers(), request.uri())
        && let Err(error) = check_host(host, &state.config.allowed_hosts)
    {
        return error.into_response();
    }
    next.run(request).await
}

async fn metadata(
    BaseUrl(base): BaseUrl,
    headers: HeaderMap,
    started: Instant,
    secured: bool,
) -> Result<Response, ApiError> {
    check_accept(&headers, &[])?;
    let mut statement = capability_statement(&base, started);
    if secured {
        statement["rest"][0]["security"] = auth::discovery::rest_security(&base);
    }
    Ok(json_response(StatusCode::OK, statement.to_string().into_bytes()))
}

/// `[type]/[id]/_history` or a compartment search `Patient/[id]/[type]`.
async fn instance_subpath(
    state: State<AppState>,
    base: BaseUrl,
    caller: auth::Caller,
    FhirPath((type_name, id, sub)): FhirPath<(String, String, String)>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    if sub == "_history" {
        crud::history(state, base, caller, type_name, id, request).await
    } else if type_name == "Patient" {
        search::compartment(state, base, caller, id, sub, request).await
    } else {
        Err(ApiError::new(ErrorKind::NotFound, format!("no route for {type_name}/{id}/{sub}")))
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(ErrorKind::NotFound, format!("no FHIR endpoint at {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(ErrorKind::Unsupported, format!("{method} is not supported on {}", uri.path()))
        .with_status(StatusCode::METHOD_NOT_ALLOWED)
}

fn panic_response(_panic: Box<dyn Any + Send + 'static>) -> Response {
    let incident = uuid::Uuid::new_v4();
    tracing::error!(%incident, "a request handler panicked");
    outcome_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        OperationOutcome::single(Issue::error(
            ErrorKind::Internal,
            format!("internal error; incident {incident}"),
        )),
    )
}

/// Path parameters, with bad percent-encoding refused as an OperationOutcome.
pub(crate) struct FhirPath<T>(pub(crate) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for FhirPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| FhirPath(value))
            .map_err(|rejection| ApiError::invalid(format!("bad path: {}", rejection.body_text())))
    }
}

pub(crate) fn parse_type(type_name: &str) -> Result<ResourceType, ApiError> {
    ResourceType::parse(type_name)
        .map_err(|e| ApiError::new(ErrorKind::NotFound, format!("{e}: no such endpoint")))
}

pub(crate) fn parse_id(id: &str) -> Result<ResourceId, ApiError> {
    ResourceId::parse(id).map_err(ApiError::from)
}

/// A response with a FHIR JSON body.
pub(crate) fn json_response(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let mut response = (status, body.into()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}
