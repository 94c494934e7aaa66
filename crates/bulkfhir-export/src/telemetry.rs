//! The engine's metrics, through the `metrics` facade (the binary installs a Prometheus
//! recorder; without one every call is a no-op). Names are constants so that the server's
//! `/metrics` docs and the tests name the same series.

/// Resources written to finished files, by `level` (system, patient, group) and `format`
/// (ndjson, ndjson-gzip).
pub const RESOURCES_WRITTEN: &str = "bulkfhir_export_resources_total";
/// Bytes of finished files as stored, by `level` and `format`.
pub const BYTES_WRITTEN: &str = "bulkfhir_export_bytes_total";
/// Finished files, by `level` and `format`.
pub const FILES_WRITTEN: &str = "bulkfhir_export_files_total";
/// How long each unit (a type, a key range, a batch of members) ran, in seconds, by `outcome`.
pub const UNIT_SECONDS: &str = "bulkfhir_export_unit_duration_seconds";
/// Jobs this node claimed.
pub const LEASE_CLAIMS: &str = "bulkfhir_export_lease_claims_total";
/// Claims that took a job over from another runner (an expired lease, or a restarted node).
pub const LEASE_TAKEOVERS: &str = "bulkfhir_export_lease_takeovers_total";
/// Lease renewals (heartbeats) that failed.
pub const HEARTBEAT_FAILURES: &str = "bulkfhir_export_heartbeat_failures_total";
/// Jobs that ended on this node, by `outcome` (completed, failed, cancelled, paused).
pub const JOBS_ENDED: &str = "bulkfhir_export_jobs_ended_total";
/// Jobs in the job store by `state` (set at each scrape by the server).
pub const JOBS: &str = "bulkfhir_export_jobs";
/// Jobs waiting for a runner (set at each scrape by the server).
pub const QUEUE_DEPTH: &str = "bulkfhir_export_queue_depth";

/// Records one finished file.
pub(crate) fn file_written(level: &'static str, format: &'static str, resources: u64, bytes: u64) {
    let labels = [("level", level), ("format", format)];
    metrics::counter!(RESOURCES_WRITTEN, &labels).increment(resources);
    metrics::counter!(BYTES_WRITTEN, &labels).increment(bytes);
    metrics::counter!(FILES_WRITTEN, &labels).increment(1);
}

/// The `level` label of a stored request's level.
pub(crate) fn level_label(level: &str) -> &'static str {
    match level {
        "system" => "system",
        "patient" => "patient",
        _ => "group",
    }
}
