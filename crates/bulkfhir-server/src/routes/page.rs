//! `GET [base]/$export-jobs`: a page for people who wait for exports. One embedded HTML file
//! (no build step, no CDN) that polls `GET [base]/BulkDataExport` every second and draws the
//! jobs, a progress bar and a resources-per-second plot for each running one, the files of
//! finished ones, and a cancel button. The page itself holds no data and needs no token; with
//! authorization on, it sends the access token it was opened with (`#token=...`, a fragment the
//! server never sees) on each of its requests, which are authorized like any other.

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

const PAGE: &str = include_str!("export_jobs.html");

pub(super) async fn export_jobs() -> Response {
    let mut response = PAGE.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    // Only this page's own inline script and style, and requests to this server.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
