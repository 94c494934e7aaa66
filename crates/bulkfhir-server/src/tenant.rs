//! Tenants in the URL: `[server]/fhir/t/{tenant}/...` is the FHIR API of one tenant, with the
//! same routes as the default tenant's `/fhir/...`.
//!
//! A tenant is a whole [`AppState`] of its own (its store, jobs, clients, export files), found
//! through a [`TenantDirectory`] the wiring provides. This module only routes: it takes the
//! tenant's name off the path, asks the directory for its state, and hands the request, with
//! the path rewritten to `/fhir/...`, to that state's router. No handler knows tenants exist,
//! so nothing of one tenant can be reached through another's state.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::{Request, State},
    http::{StatusCode, Uri, uri::PathAndQuery},
    response::{IntoResponse, Response},
};
use bulkfhir_model::{ErrorKind, TenantName};
use futures::future::BoxFuture;
use tower::ServiceExt;

use crate::{AppState, outcome::ApiError};

/// Where the server finds tenants' states.
pub trait TenantDirectory: Send + Sync + std::fmt::Debug {
    /// The state that serves `tenant`, opened on first use; `Ok(None)` when there is no such
    /// tenant. The error says why an existing tenant cannot be opened now.
    fn open<'a>(
        &'a self,
        tenant: &'a TenantName,
    ) -> BoxFuture<'a, Result<Option<AppState>, String>>;
}

/// The directory and the routers of the tenants opened so far, each with the settings it was
/// built for (a tenant closed and opened again comes back with new ones).
#[derive(Debug)]
pub(crate) struct Tenants {
    directory: Arc<dyn TenantDirectory>,
    routers: Mutex<HashMap<TenantName, (Arc<crate::ServerConfig>, Router)>>,
}

impl Tenants {
    pub(crate) fn new(directory: Arc<dyn TenantDirectory>) -> Self {
        Tenants { directory, routers: Mutex::default() }
    }

    /// The tenant's router: the directory is asked every time (it knows whether the tenant
    /// still exists), the router is built once per opening.
    async fn router(&self, tenant: &TenantName) -> Result<Option<Router>, String> {
        let lock = || self.routers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(state) = self.directory.open(tenant).await? else {
            lock().remove(tenant);
            return Ok(None);
        };
        if let Some((config, router)) = lock().get(tenant)
            && Arc::ptr_eq(config, &state.config)
        {
            return Ok(Some(router.clone()));
        }
        let config = Arc::clone(&state.config);
        let router = crate::routes::tenant_router(state);
        lock().insert(tenant.clone(), (config, router.clone()));
        Ok(Some(router))
    }
}

/// `/fhir/t/{tenant}` and everything under it.
pub(crate) async fn dispatch(State(state): State<AppState>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let not_found = || {
        ApiError::new(ErrorKind::NotFound, format!("no FHIR endpoint at {path}")).into_response()
    };
    let Some(tenants) = &state.tenants else { return not_found() };
    let Some(after) = path.strip_prefix("/fhir/t/") else { return not_found() };
    let (name, rest) = after.split_once('/').map_or((after, ""), |(name, rest)| (name, rest));
    let Ok(tenant) = TenantName::parse(name) else { return not_found() };
    let router = match tenants.router(&tenant).await {
        Ok(Some(router)) => router,
        Ok(None) => return not_found(),
        Err(reason) => {
            tracing::warn!(%tenant, %reason, "a tenant could not be opened");
            return ApiError::new(
                ErrorKind::Unavailable,
                format!("the tenant '{tenant}' cannot be served now; try again later"),
            )
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
            .into_response();
        }
    };
    let inner = if rest.is_empty() { "/fhir".to_owned() } else { format!("/fhir/{rest}") };
    let inner = match request.uri().query() {
        Some(query) => format!("{inner}?{query}"),
        None => inner,
    };
    let Ok(path_and_query) = PathAndQuery::try_from(inner) else { return not_found() };
    let mut parts = request.uri().clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    let Ok(uri) = Uri::from_parts(parts) else { return not_found() };
    // A fresh request with the same method, headers and body: the outer route's path
    // parameters (in the extensions) must not reach the tenant's handlers.
    let (parts, body) = request.into_parts();
    let mut inner = Request::new(body);
    *inner.method_mut() = parts.method;
    *inner.uri_mut() = uri;
    *inner.version_mut() = parts.version;
    *inner.headers_mut() = parts.headers;
    match router.oneshot(inner).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
