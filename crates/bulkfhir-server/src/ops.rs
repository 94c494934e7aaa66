//! What an operator calls, outside the FHIR API: `GET /healthz` (the process answers),
//! `GET /readyz` (store reachable, output writable, export runner alive) and `GET /metrics`
//! (Prometheus text), plus the middleware that measures every FHIR request.

use std::{
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use bulkfhir_export::telemetry;
use bulkfhir_store::JobStatus;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;

use crate::AppState;

/// Requests by `route` (the route template, such as `/fhir/{type}/{id}`), `method` and `status`.
pub const HTTP_REQUESTS: &str = "bulkfhir_http_requests_total";
/// Request latency in seconds by `route` and `method`, until the response head.
pub const HTTP_SECONDS: &str = "bulkfhir_http_request_duration_seconds";

/// Histogram buckets (seconds) for every histogram: HTTP latencies, store calls, unit runs.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 1800.0,
];

/// The process's Prometheus recorder, installed on first use. `None` when another recorder
/// was installed first (then `/metrics` answers 404).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets(BUCKETS).ok()?;
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(error) => {
                    tracing::warn!(%error, "no metrics: a recorder is installed already");
                    None
                }
            }
        })
        .clone()
}

/// Counts and times a request (a `route_layer`, so the route template is known).
pub(crate) async fn measure(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(HTTP_SECONDS, "route" => route.clone(), "method" => method.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(HTTP_REQUESTS, "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}

/// The operator's routes; `with_metrics` adds `/metrics` (off when it has a listener of its own).
pub(crate) fn routes(with_metrics: bool) -> Router<AppState> {
    let router = Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz));
    if with_metrics { router.route("/metrics", get(render_metrics)) } else { router }
}

/// `/metrics` alone, for a separate (private) listen address.
pub(crate) fn metrics_router(state: AppState) -> Router {
    Router::new().route("/metrics", get(render_metrics)).with_state(state)
}

async fn healthz() -> Response {
    json_answer(StatusCode::OK, json!({"status": "ok"}))
}

/// The last output probe: a write per call would be too much for a load balancer calling
/// every second, so a successful probe is trusted for this long.
const OUTPUT_PROBE_TTL: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub(crate) struct ReadyCache {
    output_ok_at: Mutex<Option<Instant>>,
}

async fn readyz(State(state): State<AppState>) -> Response {
    let timeout = Duration::from_secs(2);
    let store = match tokio::time::timeout(timeout, state.store.snapshot()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer within 2 s".to_owned()),
    };
    let cached = state
        .ready
        .output_ok_at
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .is_some_and(|at| at.elapsed() < OUTPUT_PROBE_TTL);
    let output = if cached {
        Ok(())
    } else {
        match tokio::time::timeout(timeout, state.exports.probe_output()).await {
            Ok(Ok(())) => {
                *state
                    .ready
                    .output_ok_at
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
                Ok(())
            }
            Ok(Err(error)) => Err(error.describe()),
            Err(_) => Err("no answer within 2 s".to_owned()),
        }
    };
    let runner = if state.exports.runner_alive() { Ok(()) } else { Err("not running".to_owned()) };
    let check = |result: &Result<(), String>| match result {
        Ok(()) => json!({"status": "ok"}),
        Err(message) => json!({"status": "failing", "message": message}),
    };
    let ready = store.is_ok() && output.is_ok() && runner.is_ok();
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "checks": {"store": check(&store), "output": check(&output), "runner": check(&runner)},
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json_answer(status, body)
}

fn json_answer(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let json = header::HeaderValue::from_static("application/json");
    response.headers_mut().insert(header::CONTENT_TYPE, json);
    response
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = state.metrics.clone() else {
        return crate::outcome::ApiError::new(
            bulkfhir_model::ErrorKind::NotFound,
            "metrics are not recorded in this process",
        )
        .into_response();
    };
    // Job states come from the job store at each scrape, so they are right across restarts
    // and nodes.
    match state.exports.job_counts().await {
        Ok(counts) => {
            let all = [
                JobStatus::Accepted,
                JobStatus::InProgress,
                JobStatus::Completed,
                JobStatus::Error,
                JobStatus::Cancelled,
            ];
            for status in all {
                let n = counts.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
                metrics::gauge!(telemetry::JOBS, "state" => status.as_str()).set(n as f64);
                if status == JobStatus::Accepted {
                    metrics::gauge!(telemetry::QUEUE_DEPTH).set(n as f64);
                }
            }
        }
        Err(error) => tracing::warn!(error = %error, "metrics: could not count export jobs"),
    }
    handle.run_upkeep();
    let mut response = handle.render().into_response();
    let text = header::HeaderValue::from_static("text/plain; version=0.0.4");
    response.headers_mut().insert(header::CONTENT_TYPE, text);
    response
}
