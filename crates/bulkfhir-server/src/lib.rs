//! The HTTP edge of bulkfhir: the FHIR REST API on axum.
//!
//! Handlers are thin: they extract input into model types (`extract`), call one store or
//! workflow function, and map the result to a response. Every error becomes an
//! `OperationOutcome` in one place ([`outcome`]). Only this crate (and the CLI that wires it)
//! names axum; backends arrive as `Arc<dyn ResourceStore>`.
#![warn(missing_docs)]

mod auth;
mod capability;
mod extract;
mod listener;
mod ops;
pub mod outcome;
mod routes;
mod tenant;
mod tls;

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::Router;
use bulkfhir_export::ExportService;
use bulkfhir_store::{JobId, ResourceStore};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use auth::AuthSettings;
pub use listener::ConnectionLimits;
pub use ops::{HTTP_REQUESTS, HTTP_SECONDS, metrics_handle};
pub use tenant::TenantDirectory;
pub use tls::{TlsError, TlsSettings};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The largest request body accepted, in bytes (a larger one gets 413).
    pub max_body_bytes: usize,
    /// The public base URL (e.g. `https://fhir.example.org/fhir`); when unset, absolute URLs
    /// are built from the request's `Host` header as `http://HOST/fhir` (`https://` with
    /// [`ServerConfig::tls`]). Production servers set it, so that no request header ever goes
    /// into a URL the server hands out.
    pub public_base_url: Option<String>,
    /// The `Host` header values (`host` or `host:port`, compared case-insensitively) this server
    /// answers; empty: any syntactically valid one. Others get 400.
    pub allowed_hosts: Vec<String>,
    /// Connection limits and slow-client timeouts.
    pub limits: ConnectionLimits,
    /// Serve `GET /metrics` on the API's listener (false when it has a listener of its own).
    pub metrics_on_api_listener: bool,
    /// The most resources one search page returns.
    pub max_page_size: usize,
    /// SMART Backend Services authorization; `None` (`--auth none`): every request is allowed.
    pub auth: Option<Arc<AuthSettings>>,
    /// Manifests list URLs signed by the bucket the files are in (S3, GCS, Azure), which need
    /// no token, instead of this server's download URLs; local files keep the latter.
    pub signed_file_urls: bool,
    /// Serve the API over HTTPS with this certificate and key (None: plain HTTP, for a
    /// deployment behind a TLS-terminating proxy). The metrics-only listener stays plain HTTP.
    pub tls: Option<TlsSettings>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 32 * 1024 * 1024,
            public_base_url: None,
            allowed_hosts: Vec::new(),
            limits: ConnectionLimits::default(),
            metrics_on_api_listener: true,
            max_page_size: 1000,
            auth: None,
            signed_file_urls: false,
            tls: None,
        }
    }
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The resource store.
    pub store: Arc<dyn ResourceStore>,
    /// Bulk Data export.
    pub exports: ExportService,
    /// Settings.
    pub config: Arc<ServerConfig>,
    /// When each running export was last polled and the `Retry-After` that poll was told, to
    /// answer 429 to clients that poll faster than they were told.
    pub(crate) polls: Arc<Mutex<HashMap<JobId, (std::time::Instant, std::time::Duration)>>>,
    /// The Prometheus recorder's handle, when this process records metrics.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub(crate) ready: Arc<ops::ReadyCache>,
    /// The tenant this state serves (`None`: the default tenant at `/fhir`).
    pub tenant: Option<bulkfhir_model::TenantName>,
    /// The other tenants, at `/fhir/t/{tenant}` (on the default tenant's state only).
    pub(crate) tenants: Option<Arc<tenant::Tenants>>,
}

impl AppState {
    /// State over `store` and `exports` with `config`.
    pub fn new(
        store: Arc<dyn ResourceStore>,
        exports: ExportService,
        config: ServerConfig,
    ) -> Self {
        AppState {
            store,
            exports,
            config: Arc::new(config),
            polls: Arc::default(),
            metrics: ops::metrics_handle(),
            ready: Arc::default(),
            tenant: None,
            tenants: None,
        }
    }

    /// This state serves `tenant`: its URLs are under `/fhir/t/{tenant}`.
    pub fn in_tenant(mut self, tenant: bulkfhir_model::TenantName) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Serve the tenants `directory` knows at `/fhir/t/{tenant}` beside this (default) one.
    pub fn with_tenants(mut self, directory: Arc<dyn TenantDirectory>) -> Self {
        self.tenants = Some(Arc::new(tenant::Tenants::new(directory)));
        self
    }
}

/// The complete application router (FHIR API under `/fhir`).
pub fn router(state: AppState) -> Router {
    routes::router(state)
}

/// Serves `state` on `listener` until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    let tls = state.config.tls.as_ref().map(|tls| TlsAcceptor::from(tls.server_config()));
    let scheme = if tls.is_some() { "https" } else { "http" };
    match local {
        Some(address) => {
            tracing::info!(%address, "serving the FHIR API at {scheme}://{address}/fhir")
        }
        None => tracing::info!(scheme, "serving the FHIR API"),
    }
    let limits = state.config.limits.clone();
    listener::serve(listener, router(state), limits, tls, shutdown).await
}

/// Serves only `GET /metrics` on `listener` (a private address) until `shutdown` completes.
pub async fn serve_metrics(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.config.limits.clone();
    listener::serve(listener, ops::metrics_router(state), limits, None, shutdown).await
}
